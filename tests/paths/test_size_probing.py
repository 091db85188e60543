"""Datagram size probing (padded disco PINGs, RFC 8899 "DPLPMTUD-lite"): the one home of its tests.

The first half drives the PathProber alone (sans-I/O).  The second wires it into
endpoints on the simulator and on real UDP loopback: each side probes its own
sending direction on the connection's direct path and grows its QUIC datagrams to
the largest probed size the path carries; repeated loss of large packets falls
back to the base.
"""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from asgi_p2p import Endpoint, MessageConnection, NetworkConfig, Node, SecretKey
from asgi_p2p.endpoint.connection import PeerConnection
from asgi_p2p.errors import ProtocolError
from asgi_p2p.net.base import Address
from asgi_p2p.paths.disco import MAX_DISCO_DATAGRAM, PING_SIZE, Ping, Pong, open_packet, seal
from asgi_p2p.paths.prober import PathProber, ProberConfig, Transmit
from asgi_p2p.sim import Host, Simulation
from asgi_p2p.sim.network import HEADER_OVERHEAD

ALICE = SecretKey.from_seed("size-alice")
BOB = SecretKey.from_seed("size-bob")
MALLORY = SecretKey.from_seed("size-mallory")
T0 = 1_700_000_000.0
A_ADDR: Address = ("198.51.100.1", 4000)
B_ADDR: Address = ("203.0.113.2", 5000)
RTT = 0.02


def prober(key: SecretKey, peer: SecretKey, ceiling: int = 16384, **cfg: float) -> PathProber:
    config = ProberConfig(max_datagram_size=ceiling, **cfg)  # type: ignore[arg-type]
    return PathProber(key, peer.node_id, random.Random(key.node_id.to_bytes()), config=config, clock_offset=T0)


class Wire:
    """Alice and Bob on one direct path that carries datagrams of at most ``mtu`` bytes."""

    def __init__(self, mtu: int, ceiling: int = 16384) -> None:
        self.mtu = mtu
        self.alice = prober(ALICE, BOB, ceiling)
        self.bob = prober(BOB, ALICE, ceiling)
        self.now = 0.0
        self.sizes_sent: list[int] = []
        self.sent_at: list[tuple[float, Address, int]] = []  # (time, sender, size)

    def deliver(self, out: list[Transmit], to: PathProber, src: Address) -> None:
        for t in out:
            self.sizes_sent.append(len(t.data))
            self.sent_at.append((self.now, src, len(t.data)))
            if len(t.data) <= self.mtu:
                to.receive(t.data, src, self.now + RTT / 2)

    def run(self, until: float) -> None:
        self.alice.add_candidates([B_ADDR], self.now)
        while self.now < until:
            self.deliver(self.alice.poll(self.now), self.bob, A_ADDR)
            self.deliver(self.bob.poll(self.now), self.alice, B_ADDR)
            timers = [t for t in (self.alice.next_timer(), self.bob.next_timer()) if t is not None]
            self.now = max(self.now + RTT / 2, min(timers, default=until))


def test_padded_ping_round_trips_and_is_strict() -> None:
    ping = Ping.padded_to(bytes(12), 9000)
    data = seal(ping, ALICE, BOB.node_id, T0)
    assert len(data) == 9000 and PING_SIZE == len(seal(Ping(bytes(12)), ALICE, BOB.node_id, T0))
    assert open_packet(data, BOB.node_id, ALICE.node_id).message == ping
    pong = Pong(bytes(12), A_ADDR, 9000)
    assert open_packet(seal(pong, BOB, ALICE.node_id, T0), ALICE.node_id).message == pong
    with pytest.raises(ValueError):
        Ping.padded_to(bytes(12), MAX_DISCO_DATAGRAM + 1)
    with pytest.raises(ValueError):
        Pong(bytes(12), A_ADDR, 70000)
    # non-zero padding is malformed even when correctly signed (no covert payload in probes)
    head = bytearray(data[:-64])
    head[-1] = 1
    resigned = bytes(head) + ALICE.sign(b"asgi-p2p disco v1\x00" + BOB.node_id.to_bytes() + bytes(head))
    with pytest.raises(ProtocolError, match="padding must be zero"):
        open_packet(resigned, BOB.node_id, ALICE.node_id)


@pytest.mark.parametrize(("mtu", "expected"), [(1200, 1200), (1452, 1452), (5000, 4096), (9000, 8952), (20000, 16384)])
def test_search_ends_at_the_largest_step_the_path_carries(mtu: int, expected: int) -> None:
    wire = Wire(mtu)
    wire.run(until=20.0)
    assert wire.alice.current_path.kind == "direct"
    assert wire.alice.datagram_size() == expected
    assert wire.alice.datagram_size(B_ADDR) == expected
    assert wire.bob.datagram_size(A_ADDR) == expected  # Bob probed his own direction
    too_big = [(t, src) for t, src, s in wire.sent_at if s > mtu]
    if expected == 16384:
        assert too_big == []
    for sender in (A_ADDR, B_ADDR):
        # each search tried the size that does not pass size_probe_attempts times; searches
        # whose probes were lost are retried after 1, 2, 4, 8 s (size_retry_min doubling)
        times = [t for t, src in too_big if src == sender]
        searches = [times[i : i + 3] for i in range(0, len(times), 3)]
        assert all(len(s) == 3 for s in searches[:-1])  # the last one may still be going on
        gaps = [b[0] - a[-1] for a, b in itertools.pairwise(searches)]
        assert all(2.0**i <= gap < 2.0**i + 1 for i, gap in enumerate(gaps))
        if expected != 16384:
            assert 4 <= len(searches) <= 5  # at about 0, 2, 4.5, 9.5 and 18 s: not one per 120 s
    # PONGs stay small
    assert all(s <= 300 or s in (1452, 4096, 8952, 16384) for s in wire.sizes_sent)


def test_ceiling_not_a_step_is_tried_last_and_base_turns_probing_off() -> None:
    wire = Wire(mtu=65507, ceiling=6000)
    wire.run(until=10.0)
    assert wire.alice.datagram_size() == 6000
    off = Wire(mtu=65507, ceiling=1200)
    off.run(until=10.0)
    assert off.alice.datagram_size() == 1200 and max(off.sizes_sent) < 1200


def test_unsolicited_forged_and_mismatched_pongs_change_nothing() -> None:
    alice, bob = prober(ALICE, BOB), prober(BOB, ALICE)
    alice.add_candidates([B_ADDR], 0.0)
    for t in alice.poll(0.0):
        bob.receive(t.data, A_ADDR, 0.01)
    for t in bob.poll(0.01):
        if t.addr == A_ADDR and isinstance(open_packet(t.data, ALICE.node_id).message, Pong):
            alice.receive(t.data, B_ADDR, 0.02)
    assert alice.current_path.kind == "direct" and alice.datagram_size() == 1200
    (probe,) = [t for t in alice.poll(0.02) if len(t.data) > 1200]  # the first size probe: 1452
    ping = open_packet(probe.data, BOB.node_id).message
    assert isinstance(ping, Ping) and len(probe.data) == 1452
    now, shared = 0.03, T0 + 0.03
    alice.receive(seal(Pong(bytes(12), A_ADDR, 16384), BOB, ALICE.node_id, shared), B_ADDR, now)  # unsolicited
    alice.receive(seal(Pong(ping.tx_id, A_ADDR, 1452), MALLORY, ALICE.node_id, shared), B_ADDR, now)  # forged
    alice.receive(seal(Pong(ping.tx_id, A_ADDR, 65000), BOB, ALICE.node_id, shared), B_ADDR, now)  # wrong size
    alice.receive(seal(Pong(ping.tx_id, A_ADDR, 1452), BOB, ALICE.node_id, shared), A_ADDR, now)  # wrong source
    assert alice.datagram_size() == 1200  # nothing confirmed a size
    assert {"unknown-tx", "DiscoAuthError", "size-mismatch", "wrong-source"} == set(alice.rejected)
    # the genuine answer still counts (the refused copies did not burn it)
    alice.receive(seal(Pong(ping.tx_id, A_ADDR, 1452), BOB, ALICE.node_id, shared), B_ADDR, now)
    assert alice.datagram_size() == 1452
    # and a replay of it changes nothing more
    alice.receive(seal(Pong(ping.tx_id, A_ADDR, 1452), BOB, ALICE.node_id, shared), B_ADDR, now)
    assert alice.rejected["unknown-tx"] == 2


def test_black_hole_falls_back_then_search_and_research() -> None:
    wire = Wire(mtu=20000)
    wire.run(until=10.0)
    assert wire.alice.datagram_size() == 16384
    wire.mtu = 5000  # the path shrinks
    assert wire.alice.size_black_hole(B_ADDR, wire.now)
    assert wire.alice.datagram_size() == 1200
    assert not wire.alice.size_black_hole(B_ADDR, wire.now)  # already at the base
    wire.run(until=wire.now + 10.0)
    assert wire.alice.datagram_size() == 4096
    wire.mtu = 20000  # the path grows again: found by the periodic search upwards
    wire.run(until=wire.now + 130.0)
    assert wire.alice.datagram_size() == 16384


def test_expired_path_forgets_its_size() -> None:
    wire = Wire(mtu=20000)
    wire.run(until=10.0)
    assert wire.alice.datagram_size(B_ADDR) == 16384
    wire.mtu = 0  # the path dies
    wire.run(until=wire.now + 30.0)
    assert wire.alice.current_path.kind == "relay"
    assert wire.alice.datagram_size(B_ADDR) == 1200 and wire.alice.datagram_size() == 1200


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="max_datagram_size"):
        ProberConfig(max_datagram_size=1000)
    with pytest.raises(ValueError, match="base_datagram_size"):
        ProberConfig(base_datagram_size=70000, max_datagram_size=70000)


def test_on_demand_search_waits_for_a_request() -> None:
    alice = prober(ALICE, BOB, size_search_on_demand=True)
    bob = prober(BOB, ALICE)
    alice.add_candidates([B_ADDR], 0.0)
    now = 0.0
    for _ in range(50):  # the path goes live, but no size probe leaves
        for t in alice.poll(now):
            assert len(t.data) < 1200
            bob.receive(t.data, A_ADDR, now + RTT / 2)
        for t in bob.poll(now):
            if t.addr == A_ADDR and len(t.data) < 1200:
                alice.receive(t.data, B_ADDR, now + RTT)
        now += 0.1
    assert alice.current_path.kind == "direct" and alice.datagram_size() == 1200
    assert alice.request_size_search(now)
    assert not alice.request_size_search(now)  # already on
    assert any(len(t.data) == 1452 for t in alice.poll(now))


def test_suspected_path_fails_fast_unless_it_answers() -> None:
    wire = Wire(mtu=1452)
    wire.run(until=5.0)
    alice = wire.alice
    assert alice.current_path.kind == "direct"
    # answered: the suspicion is cleared and the path stays
    assert alice.suspect(B_ADDR, wire.now)
    assert not alice.suspect(B_ADDR, wire.now)  # already suspected
    wire.run(until=wire.now + 3.0)
    assert alice.current_path.kind == "direct"
    # unanswered: the path fails after suspect_timeout, long before path_timeout
    wire.mtu = 0
    start = wire.now
    assert alice.suspect(B_ADDR, start)
    sent_before = len(wire.sizes_sent)
    while alice.current_path.kind == "direct":
        wire.run(until=wire.now + 0.1)
    pings = [n for n in wire.sizes_sent[sent_before:] if n < 1200]
    assert len(pings) <= 5  # alice: three pings; bob: a keepalive and its PONG: no ping storm
    (event,) = [e for e in alice.pop_events() if e.new.kind == "relay"]
    assert event.reason == "path expired" and event.at - start < 1.1
    assert not alice.suspect(("192.0.2.1", 1), wire.now)  # not a candidate


def test_a_suspected_path_that_failed_is_reprobed_soon() -> None:
    wire = Wire(mtu=1452)
    wire.run(until=5.0)
    alice = wire.alice
    wire.mtu = 0
    start = wire.now
    assert alice.suspect(B_ADDR, start)
    wire.run(until=start + 1.5)
    assert alice.current_path.kind == "relay"
    wire.mtu = 1452  # a false alarm, or the path came back
    wire.run(until=start + 1.0 + alice.config.suspect_reprobe + 0.5)
    assert alice.current_path.kind == "direct"  # not after reprobe_interval (30 s)


# -- end to end: endpoints on the simulator and on real UDP ------------------------


async def _bind(name: str, host: Host, config: NetworkConfig | None = None) -> Endpoint:
    return await Node.bind(
        SecretKey.from_seed(name),
        host="0.0.0.0",
        port=4433,
        config=config or NetworkConfig(),
        network=host,
        rng=random.Random(name),
    )


def _quic(ep: Endpoint) -> PeerConnection:
    (conn,) = ep.connections
    return conn


async def _open(ea: Endpoint, eb: Endpoint) -> tuple[MessageConnection, MessageConnection]:
    """bob's message connection to alice, and alice's side of it, after one round trip."""
    conn = await eb.connect(ea.node_addr())
    await conn.send(b"hello")
    inc = await ea.listen().accept()
    assert await inc.recv() == b"hello"
    return conn, inc


async def _bulk(conn: MessageConnection, inc: MessageConnection, *, chunks: int = 20, size: int = 100_000) -> int:
    """``chunks`` messages of ``size`` bytes over ``conn``; returns the bytes ``inc`` got."""
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]

    async def sender() -> None:
        for _ in range(chunks):
            await conn.send(payload)

    task = asyncio.create_task(sender())
    got = 0
    for _ in range(chunks):
        msg = await inc.recv()
        assert msg == payload
        got += len(msg)
    await task
    return got


@pytest.mark.parametrize(("mtu", "expected"), [(1500, 1452), (5000 + HEADER_OVERHEAD, 4096), (65535, 16384)])
def test_connection_grows_to_the_largest_probed_size_the_path_carries(sim: Simulation, mtu: int, expected: int) -> None:
    a, b = sim.host("alice"), sim.host("bob")
    sim.link(a, b, latency=0.01, loss=0.0, mtu=mtu)

    async def main() -> tuple[int, int, int]:
        ea, eb = await _bind("alice", a), await _bind("bob", b)
        conn, inc = await _open(ea, eb)
        assert _quic(eb).datagram_size == 1200
        await asyncio.sleep(10)
        assert _quic(eb).datagram_size == 1200  # a short exchange does not pay for size probes
        await _bulk(conn, inc, chunks=2)  # bulk data starts the search (both sides send enough)
        await asyncio.sleep(10)  # virtual time: the size searches finish
        sizes = (_quic(eb).datagram_size, _quic(ea).datagram_size)
        got = await _bulk(conn, inc, chunks=5)
        await eb.close()
        await ea.close()
        return (*sizes, got)

    bob_size, alice_size, got = sim.run(main())
    assert bob_size == expected and alice_size == expected  # each side probed its own direction
    assert got == 500_000
    drops = sim.stats()["drops"]
    assert ("mtu" in drops) == (expected < 16384)  # larger probes were dropped by the link


def test_without_probing_the_size_stays_at_the_base(sim: Simulation) -> None:
    a, b = sim.host("alice"), sim.host("bob")
    sim.link(a, b, latency=0.01, loss=0.0, mtu=65535)

    async def main() -> int:
        config = NetworkConfig(max_probe_datagram_size=0)
        ea, eb = await _bind("alice", a, config), await _bind("bob", b, config)
        await _bulk(*await _open(ea, eb), chunks=2)
        await asyncio.sleep(5)
        return _quic(eb).datagram_size

    assert sim.run(main()) == 1200


def test_path_that_shrinks_mid_transfer_recovers(sim: Simulation) -> None:
    """Black hole: the MTU drops under a 16 KB flight; the transfer completes at a size that fits."""
    a, b = sim.host("alice"), sim.host("bob")
    link = sim.link(a, b, latency=0.01, loss=0.0, mtu=65535)

    async def main() -> tuple[int, int, int]:
        ea, eb = await _bind("alice", a), await _bind("bob", b)
        conn = await eb.connect(ea.node_addr())
        await conn.send(b"hello")
        inc = await ea.listen().accept()
        assert await inc.recv() == b"hello"
        await _bulk(conn, inc, chunks=2)
        await asyncio.sleep(10)
        before = _quic(eb).datagram_size
        payload = b"p" * 200_000

        async def sender() -> None:
            for _ in range(20):
                await conn.send(payload)

        task = asyncio.create_task(sender())
        got = 0
        for i in range(20):
            if i == 3:
                link.configure(mtu=1500)  # the path shrinks under the flight
            msg = await inc.recv()
            assert msg == payload
            got += len(msg)
        await task
        return before, _quic(eb).datagram_size, got

    before, after, got = sim.run(main(), time_limit=120)
    assert before == 16384
    assert got == 20 * 200_000  # the connection survived
    assert after == 1452  # black hole -> base size, then the search found what fits
    assert sim.stats()["drops"]["mtu"] > 0


def test_forged_and_unsolicited_pongs_change_nothing(sim: Simulation) -> None:
    a, b, m = sim.host("alice"), sim.host("bob"), sim.host("mallory")
    sim.link(a, b, latency=0.01, loss=0.0, mtu=1500)
    sim.link(m, a, latency=0.01, loss=0.0, mtu=65535)
    mallory = SecretKey.from_seed("mallory")

    async def main() -> tuple[int, int, int]:
        ea, eb = await _bind("alice", a), await _bind("bob", b)
        conn = await eb.connect(ea.node_addr())
        await conn.send(b"hello")
        inc = await ea.listen().accept()
        assert await inc.recv() == b"hello"
        await _bulk(conn, inc, chunks=2)
        sock = await m.bind("0.0.0.0", 999, lambda data, addr: None)
        peer = ea.peer_paths(eb.node_id)
        assert peer is not None
        now = peer.prober.clock_offset + asyncio.get_running_loop().time()
        dropped_before = ea.dropped_disco
        for i in range(200):  # PONGs "from bob" for probes alice never sent, in every size
            tx = random.Random(i).randbytes(12)
            sock.sendto(seal(Pong(tx, ea.local_address, 16384), mallory, ea.node_id, now), ea.local_address)
        # a PONG with bob's claimed identity but Mallory's signature
        forged = bytearray(seal(Pong(bytes(12), ea.local_address, 16384), mallory, ea.node_id, now))
        forged[7:39] = eb.node_id.to_bytes()
        sock.sendto(bytes(forged), ea.local_address)
        await asyncio.sleep(10)
        rejected = sum(peer.prober.rejected.values())
        return _quic(ea).datagram_size, rejected, ea.dropped_disco - dropped_before

    size, rejected, dropped = sim.run(main())
    assert size == 1452  # what the real path carries, not what the forgeries claim
    assert rejected >= 1  # the forgery claiming to be bob reached bob's prober and was refused
    assert dropped == 200  # Mallory has no connection: her packets are dropped before any crypto


async def _grown(conn: PeerConnection) -> None:
    """Return once the connection builds datagrams larger than 1200 bytes."""
    events = conn.path_events()  # subscribed from here on
    if conn.datagram_size > 1200:
        return
    async for event in events:
        if event.datagram_size > 1200:
            return


def test_datagram_size_grows_on_real_udp_loopback() -> None:
    async def main() -> tuple[int, int]:
        ea = await Node.bind(SecretKey.from_seed("alice"), config=NetworkConfig())
        eb = await Node.bind(SecretKey.from_seed("bob"), config=NetworkConfig())
        try:
            conn = await eb.connect(ea.node_addr())
            await conn.send(b"x" * 100_000)
            inc = await ea.listen().accept()
            assert len(await inc.recv()) == 100_000
            qa, qb = _quic(ea), _quic(eb)
            await asyncio.wait_for(_grown(qb), 10)  # bob sent bulk data: his direction grows
            await conn.send(b"y" * 500_000)
            assert await inc.recv() == b"y" * 500_000
            await inc.send(b"z" * 300_000)  # now alice sends bulk data too
            assert await conn.recv() == b"z" * 300_000
            await asyncio.wait_for(_grown(qa), 10)
            return qa.datagram_size, qb.datagram_size
        finally:
            await eb.close()
            await ea.close()

    sa, sb = asyncio.run(main())
    assert sa > 1200 and sb > 1200


def test_sim_links_drop_datagrams_above_their_mtu() -> None:
    sim = Simulation(seed=3, mtu=1500, latency=0.01, loss=0.0)
    with sim:
        a, b = sim.host("alice"), sim.host("bob")
        small = sim.link(a, b)
        assert small.mtu == 1500  # the simulation's default
        got: list[int] = []

        async def main() -> None:
            sa = await a.bind("0.0.0.0", 1, lambda data, addr: None)
            await b.bind("0.0.0.0", 2, lambda data, addr: got.append(len(data)))
            for size in (1200, 1472, 1473, 9000):
                sa.sendto(bytes(size), (b.address, 2))
            await asyncio.sleep(1)
            small.configure(mtu=65535)
            sa.sendto(bytes(9000), (b.address, 2))
            await asyncio.sleep(1)

        sim.run(main())
    assert got == [1200, 1472, 9000]  # 1472 + 28 header bytes = 1500 fits; 1473 does not
    assert sim.stats()["drops"] == {"mtu": 2}
    with pytest.raises(ValueError, match="mtu"):
        small.configure(mtu=10)


# -- a needed size (a relay connection's full-size packet) ----------------------------------


def _searches(wire: Wire, size: int) -> list[float]:
    """When alice sent ``size``-byte probes."""
    return [t for t, src, s in wire.sent_at if src == A_ADDR and s == size]


def test_a_needed_size_is_probed_first_and_found_below_the_first_step() -> None:
    """A 1400-byte path: the 1452 step never passes, but the needed 1264 does (first)."""
    plain = Wire(mtu=1400)
    plain.run(until=5.0)
    assert plain.alice.datagram_size() == 1200
    wire = Wire(mtu=1400)
    wire.alice.require_size(1264, 0.0)
    wire.run(until=5.0)
    assert wire.alice.datagram_size() == 1264
    big = [s for t, src, s in wire.sent_at if src == A_ADDR and s > 1200]
    assert big[0] == 1264  # before 1452
    # a needed size at or below the base is no need at all
    wire.alice.require_size(1200, wire.now)
    assert wire.alice.size_target is None


def test_a_needed_size_is_probed_even_with_probing_off() -> None:
    wire = Wire(mtu=1500, ceiling=1200)
    wire.alice.require_size(1264, 0.0)
    wire.run(until=5.0)
    assert wire.alice.datagram_size() == 1264
    assert max(s for t, src, s in wire.sent_at if src == A_ADDR) == 1264  # nothing larger


def test_below_a_needed_size_lost_probes_are_retried_at_most_every_size_retry_max() -> None:
    wire = Wire(mtu=1200)
    wire.alice.require_size(1264, 0.0)
    wire.run(until=120.0)
    assert wire.alice.datagram_size() == 1200
    times = _searches(wire, 1264)
    starts = [times[i] for i in range(0, len(times), 3)]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # 1, 2, 4, 8 s after each search's three probes, then every 15 s: bounded both ways
    assert all(gap <= 15.0 + 3 * 0.26 for gap in gaps)
    assert gaps[-1] >= 15.0
    assert 10 <= len(starts) <= 12 and len(times) <= 3 * len(starts)


def test_a_path_that_answers_again_after_a_silence_searches_the_needed_size_at_once() -> None:
    wire = Wire(mtu=1200)
    wire.alice.require_size(1264, 0.0)
    wire.run(until=40.0)  # the backoff has reached 15 s
    last = _searches(wire, 1264)[-1]
    wire.run(until=last + 0.5)  # that search ended: the next one is ~15 s away
    wire.mtu = 0  # an outage: a keepalive PING goes unanswered
    wire.run(until=last + 6.5)
    assert wire.alice.datagram_size() == 1200 and wire.alice.current_path.kind == "direct"
    wire.mtu = 1300  # healed: the next keepalive PONG shows it
    wire.run(until=last + 13.0)
    assert wire.alice.datagram_size() == 1264  # without the heal: not before last + 15.75


def test_a_suspected_black_hole_keeps_a_needed_size_the_path_still_carries() -> None:
    """Repeated probe timeouts on a lossy path are mostly loss: a relay connection that needs
    1264-byte datagrams keeps them (above: back to 1264, not the base) while probes check."""
    wire = Wire(mtu=1500)
    wire.alice.require_size(1264, 0.0)
    wire.run(until=5.0)
    assert wire.alice.datagram_size(B_ADDR) == 1452
    assert wire.alice.size_black_hole(B_ADDR, wire.now)  # above the need: down to the need
    assert wire.alice.datagram_size(B_ADDR) == 1264
    sent = len(_searches(wire, 1264))
    assert not wire.alice.size_black_hole(B_ADDR, wire.now)  # at the need: kept while checked
    assert wire.alice.datagram_size(B_ADDR) == 1264
    assert not wire.alice.size_black_hole(B_ADDR, wire.now)  # a second suspicion: same check
    wire.run(until=wire.now + 0.2)
    assert len(_searches(wire, 1264)) == sent + 1  # one probe of the needed size at once
    wire.run(until=wire.now + 5.0)
    assert wire.alice.datagram_size(B_ADDR) == 1452  # answered, and the search went on above it


def test_a_needed_size_the_path_lost_falls_to_the_base_after_the_check() -> None:
    wire = Wire(mtu=1500)
    wire.alice.require_size(1264, 0.0)
    wire.run(until=5.0)
    wire.alice.size_black_hole(B_ADDR, wire.now)
    assert wire.alice.datagram_size(B_ADDR) == 1264
    wire.mtu = 1250  # the path really shrank below the need
    checked_at = wire.now
    assert not wire.alice.size_black_hole(B_ADDR, wire.now)
    wire.run(until=wire.now + 0.8)  # three lost probes of 1264, 0.25 s apart
    assert [t - checked_at < 0.8 for t in _searches(wire, 1264)[-3:]] == [True] * 3
    assert wire.alice.datagram_size(B_ADDR) == 1200  # gone: the base (the relay says why)
    assert wire.alice.current_path.kind == "direct"  # the path itself still works
    wire.mtu = 1500
    wire.run(until=wire.now + 3.0)  # and the needed size's short backoff finds it again
    assert wire.alice.datagram_size(B_ADDR) >= 1264


def test_a_need_stated_again_searches_at_once_whatever_the_backoff() -> None:
    """A relay connection made again after an outage states its need again: the search must not
    wait out the backoff the outage built up (found by the swarm: a server's new relay connection
    stayed unusable 15 s after a partition healed)."""
    wire = Wire(mtu=1200)
    wire.alice.require_size(1264, 0.0)
    wire.run(until=40.0)  # lost probes: the backoff has reached 15 s
    last = _searches(wire, 1264)[-1]
    wire.run(until=last + 1.0)
    wire.mtu = 1300
    wire.alice.require_size(1264, wire.now)  # the new connection
    wire.run(until=wire.now + 1.0)
    assert wire.alice.datagram_size(B_ADDR) == 1264  # without it: not before last + 15 s


def test_a_padded_handshake_proves_the_needed_size_and_no_probe_of_it_leaves() -> None:
    """handshake_validated(..., size=1264): the path is live at 1264 at once, the owner's need
    (require_size) is met without a probe of it, and a search above it goes on from there."""
    alice = prober(ALICE, BOB, ceiling=1200, size_search_on_demand=True)
    alice.require_size(1264, 0.0)
    alice.handshake_validated(B_ADDR, 0.04, 0.0, size=1264)
    assert alice.datagram_size(B_ADDR) == 1264 and alice.current_path.kind == "direct"
    sent = [len(t.data) for t in alice.poll(0.0)]
    assert not any(size >= 1200 for size in sent)  # no size probe: nothing larger to search
    alice.handshake_validated(B_ADDR, 0.04, 1.0, size=1200)  # a smaller proof changes nothing
    assert alice.datagram_size(B_ADDR) == 1264
    # with a higher ceiling the search starts above the proven size
    carol = prober(ALICE, BOB, ceiling=1452, size_search_on_demand=True)
    carol.require_size(1264, 0.0)
    carol.handshake_validated(B_ADDR, 0.04, 0.0, size=1264)
    probes = [len(t.data) for t in carol.poll(0.0) if len(t.data) >= 1200]
    assert probes == [1452]
    # without a proof the needed size is probed first, as before
    dave = prober(ALICE, BOB, ceiling=1452, size_search_on_demand=True)
    dave.require_size(1264, 0.0)
    dave.handshake_validated(B_ADDR, 0.04, 0.0)
    assert dave.datagram_size(B_ADDR) == 1200
    assert [len(t.data) for t in dave.poll(0.0) if len(t.data) >= 1200] == [1264]
