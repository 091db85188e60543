"""Fair relaying: per-destination budgets, deficit round robin over sources, bounded queues.

Everything here drives the sans-I/O :class:`RelayRouter` on a virtual clock (1 ms ticks)
and measures what each source gets delivered.  The main cases run for both wire forms a
packet reaches the relay in (fixture ``wire``): a SEND frame, and a data plane datagram
(:meth:`RelayRouter.handle_packet`).
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from asgi_p2p.errors import InvalidConfiguration
from asgi_p2p.identity import NodeId, SecretKey
from asgi_p2p.relay.proto import (
    FORWARD_OVERHEAD,
    QUEUE_ENTRY_OVERHEAD,
    Error,
    ErrorCode,
    RelayLimits,
    RelayRouter,
    Send,
    parse_frame,
)

DST = SecretKey.from_seed("fair-dst").node_id
DST2 = SecretKey.from_seed("fair-dst-2").node_id
VICTIM = SecretKey.from_seed("fair-victim").node_id
FLOODERS = [SecretKey.from_seed(f"fair-flooder-{i}").node_id for i in range(8)]
TICK = 0.001
SIZE = 1100  # bytes per packet (a relayed QUIC packet)

#: the sources send freely; what is under test is the destination's budget
OPEN_SOURCES = {
    "packets_per_second": 1e6,
    "packet_burst": 1e6,
    "bytes_per_second": 1e9,
    "byte_burst": 1e9,
    "errors_per_second": 1e6,
    "error_burst": 1e6,
}


@dataclass
class Run:
    sent: Counter[tuple[NodeId, NodeId]] = field(default_factory=Counter)
    delivered: Counter[tuple[NodeId, NodeId]] = field(default_factory=Counter)
    refused: Counter[NodeId] = field(default_factory=Counter)
    delays: dict[NodeId, list[float]] = field(default_factory=dict)
    max_queued: int = 0
    max_queued_for: Counter[NodeId] = field(default_factory=Counter)

    def share(self, src: NodeId, dst: NodeId = DST) -> float:
        return self.delivered[src, dst] / self.sent[src, dst]


def simulate(
    r: RelayRouter,
    flows: list[tuple[NodeId, NodeId, float]],
    seconds: float,
    *,
    room: Callable[[NodeId], int] | None = None,
    start: float = 0.0,
    run: Run | None = None,
    wire: str = "frame",
) -> Run:
    """Send ``rate`` packets/s per (src, dst, rate) for ``seconds``; poll every tick."""
    run = run or Run()
    credit = [0.0] * len(flows)
    ticks = round(seconds / TICK)
    for tick in range(ticks):
        now = start + tick * TICK
        actions = []
        for i, (src, dst, rate) in enumerate(flows):
            credit[i] += rate * TICK
            while credit[i] >= 1:
                credit[i] -= 1
                run.sent[src, dst] += 1
                packet = struct.pack("!d", now) + bytes(SIZE - 8)
                if wire == "plane":
                    actions += r.handle_packet(src, dst, packet, now, room)
                else:
                    actions += r.handle_datagram(src, Send(dst, packet).encode(), now, room)
        actions += r.poll(now, room)
        for node, frame in actions:
            if frame[1] == 2:  # RECV: the source follows the header
                src = NodeId(frame[2:FORWARD_OVERHEAD])
                run.delivered[src, node] += 1
                (sent_at,) = struct.unpack_from("!d", frame, FORWARD_OVERHEAD)
                run.delays.setdefault(src, []).append(now - sent_at)
            else:
                error = parse_frame(frame)
                assert isinstance(error, Error)
                assert error.code == ErrorCode.RATE_LIMITED, error
                run.refused[node] += 1
        run.max_queued = max(run.max_queued, r.queued_bytes)
        for dst in {d for _, d, _ in flows}:
            run.max_queued_for[dst] = max(run.max_queued_for[dst], r.queued_for(dst))
    return run


@pytest.fixture(params=["frame", "plane"])
def wire(request: pytest.FixtureRequest) -> str:
    """How packets reach the relay: SEND frames, or data plane datagrams."""
    return str(request.param)


def make_router(**limits: float) -> RelayRouter:
    values: dict[str, float] = {**OPEN_SOURCES, "destination_packet_burst": 20, **limits}
    r = RelayRouter(RelayLimits(**values))  # type: ignore[arg-type]
    for node in (DST, DST2, VICTIM, *FLOODERS):
        r.register(node, 0.0, max_datagram_size=1264)
    return r


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def test_a_flooding_source_cannot_starve_a_second_source(wire: str) -> None:
    """10,000 packets/s from one source vs 250/s from another into a 1,000 packets/s destination."""
    r = make_router(destination_packets_per_second=1000)
    run = simulate(r, [(FLOODERS[0], DST, 10_000), (VICTIM, DST, 250)], 2.5, wire=wire)
    total = run.delivered[FLOODERS[0], DST] + run.delivered[VICTIM, DST]
    assert total <= 1000 * 2.5 + 20 + 1  # the destination's budget holds
    assert total >= 1000 * 2.5 * 0.98  # and is used (work conserving)
    # the victim sends below its fair share (500/s): it loses nothing, and waits little
    assert run.share(VICTIM) >= 0.99, run.share(VICTIM)
    assert p99(run.delays[VICTIM]) <= 0.01
    assert run.refused[FLOODERS[0]] > 0 and run.refused[VICTIM] == 0
    assert r.stats.dropped_destination_busy > 0


def test_two_flooding_sources_share_equally(wire: str) -> None:
    r = make_router(destination_packets_per_second=1000)
    run = simulate(r, [(FLOODERS[0], DST, 9_000), (VICTIM, DST, 1_500)], 2.5, wire=wire)
    a, v = run.delivered[FLOODERS[0], DST], run.delivered[VICTIM, DST]
    assert abs(a - v) <= 0.05 * (a + v), (a, v)  # max-min fair: ~500/s each whatever they send


def test_eight_flooders_and_a_light_source(wire: str) -> None:
    """The issue's case: eight clients flood one destination; a ninth still gets all its packets through."""
    r = make_router(destination_packets_per_second=4000)
    flows = [(f, DST, 2_000) for f in FLOODERS] + [(VICTIM, DST, 200)]
    run = simulate(r, flows, 3.0, wire=wire)
    assert run.share(VICTIM) >= 0.99, run.share(VICTIM)
    shares = [run.delivered[f, DST] for f in FLOODERS]
    assert max(shares) - min(shares) <= 0.05 * max(shares), shares  # the flooders split the rest evenly
    assert p99(run.delays[VICTIM]) <= 0.01


def test_destination_budget_caps_one_source(wire: str) -> None:
    """A single source may send 5,000 packets/s; its destination receives at most its own budget."""
    r = make_router(destination_packets_per_second=1000, destination_bytes_per_second=1e9)
    run = simulate(r, [(FLOODERS[0], DST, 5_000)], 2.0, wire=wire)
    assert 1000 * 2.0 * 0.97 <= run.delivered[FLOODERS[0], DST] <= 1000 * 2.0 + 20 + 1
    r2 = make_router(destination_bytes_per_second=200_000, destination_byte_burst=50_000)
    run2 = simulate(r2, [(FLOODERS[0], DST, 5_000)], 2.0, wire=wire)
    received = run2.delivered[FLOODERS[0], DST] * SIZE
    assert 200_000 * 2.0 * 0.95 <= received <= 200_000 * 2.0 + 50_000 + SIZE


def test_a_flooded_destination_does_not_slow_another() -> None:
    """One source floods DST; its own packets to DST2, and another source's, pass untouched."""
    r = make_router(destination_packets_per_second=1000)
    flows = [(FLOODERS[0], DST, 6_000), (FLOODERS[1], DST, 6_000), (FLOODERS[0], DST2, 300), (VICTIM, DST2, 300)]
    run = simulate(r, flows, 2.0)
    assert run.share(FLOODERS[0], DST2) == 1.0 and run.share(VICTIM, DST2) == 1.0
    assert max(run.delays[VICTIM]) == 0.0  # straight through: DST2's budget is not contended
    assert run.max_queued_for[DST2] == 0


def test_queues_are_bounded_and_memory_returns() -> None:
    limits = {"destination_queue_bytes": 40_000, "max_queued_bytes": 100_000}
    r = make_router(destination_packets_per_second=100, **limits)
    flows = [(f, DST, 2_000) for f in FLOODERS[:4]] + [(f, DST2, 2_000) for f in FLOODERS[4:]]
    run = simulate(r, flows, 1.0)
    assert run.max_queued_for[DST] <= 40_000 and run.max_queued_for[DST2] <= 40_000
    assert run.max_queued <= 100_000
    assert r.stats.dropped_destination_busy > 0
    # a third flooded destination finds the relay-wide bound (80 KB of 100 KB used)
    r.register(C := SecretKey.from_seed("fair-dst-3").node_id, 0.0, max_datagram_size=1264)
    simulate(r, [(VICTIM, C, 5_000)], 0.2, start=1.0, run=run)
    assert r.queued_bytes <= 100_000 and r.stats.dropped_relay_busy > 0
    # after the flood the queues drain at the destinations' rates, and their memory is returned
    now = 1.2
    while r.queued_bytes and now < 10:
        due = r.next_timer(now)
        assert due is not None and due >= now
        now = due
        r.poll(now)
    assert r.queued_bytes == 0 and r.queued_for(DST) == 0 and r.next_timer(now) is None


def test_each_waiting_packet_is_charged_its_size_plus_bookkeeping() -> None:
    r = make_router(destination_packets_per_second=1, destination_packet_burst=1)
    r.handle_datagram(VICTIM, Send(DST, bytes(100)).encode(), 0.0)  # spends the burst
    assert r.queued_bytes == 0
    r.handle_datagram(VICTIM, Send(DST, bytes(100)).encode(), 0.0)
    assert r.queued_for(DST) == r.queued_bytes == 100 + FORWARD_OVERHEAD + QUEUE_ENTRY_OVERHEAD
    assert r.next_timer(0.0) == pytest.approx(1.0)
    assert r.poll(0.5) == [] and len(r.poll(1.0)) == 1 and r.queued_bytes == 0


def test_next_timer_always_makes_progress() -> None:
    """Even when the destination's datagram size shrank below frames already waiting."""
    r = make_router(destination_packets_per_second=50, destination_bytes_per_second=30_000, destination_byte_burst=2000)
    for i in range(30):
        r.handle_datagram(FLOODERS[i % 3], Send(DST, bytes(100 + 35 * i)).encode(), 0.0)
    direct = r.stats.forwarded_packets  # within the bursts: straight through
    r.set_max_datagram_size(DST, 200)
    now, sent, steps = 0.0, 0, 0
    while r.queued_bytes:
        due = r.next_timer(now)
        assert due is not None and due > now  # never due at a time that sends nothing
        now = due
        out = r.poll(now)
        assert out  # due means something goes out
        sent += len(out)
        steps += 1
    assert 0 < direct < 30 and sent + direct == 30 and steps <= 30 and r.stats.forwarded_packets == 30


def test_a_full_connection_queues_fairly_instead_of_dropping() -> None:
    """``room`` 0 (the destination's DATAGRAM queue is full): packets wait, then go out in DRR order."""
    r = make_router()
    space = {"n": 0}

    def room(node: NodeId) -> int:
        return space["n"] if node == DST else 1_000_000

    for _ in range(20):
        r.handle_datagram(FLOODERS[0], Send(DST, bytes(SIZE)).encode(), 0.0, room)
    r.handle_datagram(VICTIM, Send(DST, bytes(SIZE)).encode(), 0.0, room)
    assert r.waiting_for_room and r.next_timer(0.0) is None
    space["n"] = 4
    out = [NodeId(frame[2:FORWARD_OVERHEAD]) for _, frame in r.poll(0.001, room)]
    assert out.count(VICTIM) == 1 and len(out) == 4  # the victim's one packet is among the next four
    space["n"] = 100
    assert len(r.poll(0.002, room)) == 17 and not r.waiting_for_room and r.queued_bytes == 0


def test_refusals_still_come_first_while_the_destination_is_contended() -> None:
    r = make_router(destination_packets_per_second=1, destination_packet_burst=1)
    r.handle_datagram(VICTIM, Send(DST, b"x").encode(), 0.0)
    r.handle_datagram(VICTIM, Send(DST, b"x").encode(), 0.0)  # waits
    r.set_max_datagram_size(DST, 100)
    ((node, frame),) = r.handle_datagram(VICTIM, Send(DST, bytes(200)).encode(), 0.0)
    error = parse_frame(frame)
    assert node == VICTIM and isinstance(error, Error) and error.code == ErrorCode.TOO_LARGE and error.fits == 66
    ((_, frame),) = r.handle_datagram(VICTIM, Send(SecretKey.from_seed("x").node_id, b"x").encode(), 0.0)
    assert parse_frame(frame).code == ErrorCode.UNKNOWN_DESTINATION  # type: ignore[union-attr]
    # the source's own rate limit is checked before anything is queued
    r2 = RelayRouter(RelayLimits(packets_per_second=1, packet_burst=1))
    r2.register(VICTIM, 0.0)
    r2.register(DST, 0.0)
    r2.handle_datagram(VICTIM, Send(DST, b"x").encode(), 0.0)
    ((_, frame),) = r2.handle_datagram(VICTIM, Send(DST, b"x").encode(), 0.0)
    limited = parse_frame(frame)
    assert isinstance(limited, Error) and limited.code == ErrorCode.RATE_LIMITED and "packets/s" in limited.message
    assert r2.queued_bytes == 0


def test_a_destination_leaving_frees_its_queue() -> None:
    r = make_router(destination_packets_per_second=1, destination_packet_burst=1)
    for _ in range(5):
        r.handle_datagram(VICTIM, Send(DST, bytes(500)).encode(), 0.0)
    assert r.queued_bytes > 0
    r.register(DST, 1.0, conn="new")  # reconnected: frames for the old connection are gone
    assert r.queued_bytes == 0 and r.next_timer(1.0) is None
    for _ in range(5):
        r.handle_datagram(VICTIM, Send(DST, bytes(500)).encode(), 1.0)
    assert r.unregister(DST)
    assert r.queued_bytes == 0 and r.poll(5.0) == []


@pytest.mark.parametrize(
    ("values", "setting", "message"),
    [
        ({"destination_packets_per_second": 0}, "destination_packets_per_second", r"in \(0, 1e\+15\], got 0"),
        ({"destination_packets_per_second": math.nan}, "destination_packets_per_second", r"got nan"),
        ({"destination_bytes_per_second": math.inf}, "destination_bytes_per_second", r"got inf"),
        ({"destination_byte_burst": -1.0}, "destination_byte_burst", r"bytes in \[1200, 1e\+15\], got -1"),
        (
            {"max_datagram_size": 1452, "destination_byte_burst": 1300.0},
            "destination_byte_burst",
            r"at least max_datagram_size \(1452\), so that a full packet can pass, got 1300",
        ),
        ({"destination_packet_burst": 0.5}, "destination_packet_burst", r"packets in \[1, 1e\+15\], got 0.5"),
        ({"destination_queue_bytes": 100}, "destination_queue_bytes", r"bytes in 1264\.\.17179869184, got 100"),
        ({"destination_queue_bytes": 3.5}, "destination_queue_bytes", r"a whole number of bytes .*got 3.5 \(float\)"),
        ({"max_queued_bytes": 1 << 40}, "max_queued_bytes", r"in 1264\.\.17179869184"),
        (
            {"max_datagram_size": 1452, "destination_queue_bytes": 1500},
            "destination_queue_bytes",
            r"at least max_datagram_size \+ 64 \(1516 bytes\), so that a full packet can wait, got 1500",
        ),
        (
            {"max_queued_bytes": 2000},
            "max_queued_bytes",
            r"at least destination_queue_bytes \(262144\), got 2000",
        ),
    ],
)
def test_destination_limits_validate(values: dict[str, float], setting: str, message: str) -> None:
    with pytest.raises(InvalidConfiguration, match=f"^RelayLimits.{setting} must be .*{message}") as info:
        RelayLimits(**values)  # type: ignore[arg-type]
    assert info.value.setting == setting
    assert isinstance(info.value, ValueError)  # what callers catch


def test_destination_limits_at_their_bounds_are_accepted() -> None:
    one = 1452 + QUEUE_ENTRY_OVERHEAD
    limits = RelayLimits(
        max_datagram_size=1452,
        byte_burst=1452,
        destination_byte_burst=1452,
        destination_packet_burst=1,
        destination_queue_bytes=one,
        max_queued_bytes=one,
    )
    assert limits.destination_queue_bytes == limits.max_queued_bytes == one
    assert RelayLimits(max_queued_bytes=1 << 34).max_queued_bytes == 1 << 34
