"""Datagram size probing in the PathProber (padded PINGs, RFC 8899), without sockets."""

from __future__ import annotations

import random

import pytest

from asgi_p2p.errors import ProtocolError
from asgi_p2p.identity import SecretKey
from asgi_p2p.net.base import Address
from asgi_p2p.paths.disco import MAX_DISCO_DATAGRAM, PING_SIZE, Ping, Pong, open_packet, seal
from asgi_p2p.paths.prober import PathProber, ProberConfig, Transmit

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

    def deliver(self, out: list[Transmit], to: PathProber, src: Address) -> None:
        for t in out:
            self.sizes_sent.append(len(t.data))
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
    # every probe larger than the result was tried size_probe_attempts times, then given up
    too_big = [s for s in wire.sizes_sent if s > mtu]
    assert len(too_big) == (0 if expected == 16384 else 2 * 3)
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
