"""The per-peer PathProber: probing, RTT, path choice, expiry, punching, keepalives, without sockets."""

from __future__ import annotations

import random

import pytest

from asgi_p2p.identity import SecretKey
from asgi_p2p.net.base import Address
from asgi_p2p.paths.disco import CallMeMaybe, Ping, Pong, open_packet, seal
from asgi_p2p.paths.prober import PathInfo, PathProber, PathState, ProberConfig, Transmit

ALICE = SecretKey.from_seed("disco-alice")
BOB = SecretKey.from_seed("disco-bob")
MALLORY = SecretKey.from_seed("disco-mallory")
T0 = 1_700_000_000.0  # shared clock at the start of each test
TX = bytes(range(12))


# -- PathProber ---------------------------------------------------------------------------

A_ADDR: Address = ("198.51.100.1", 4000)  # where Bob's packets reach Alice
B_ADDR: Address = ("203.0.113.2", 5000)  # where Alice's packets reach Bob
B_OTHER: Address = ("203.0.113.2", 5001)


def make(key: SecretKey = ALICE, peer: SecretKey = BOB, **cfg: float) -> PathProber:
    return PathProber(key, peer.node_id, random.Random(1), config=ProberConfig(**cfg), clock_offset=T0)  # type: ignore[arg-type]


def answer(transmits: list[Transmit], responder: PathProber, src: Address, now: float) -> list[Transmit]:
    """Deliver every transmit to ``responder`` as if from ``src``; return what it sends back."""
    for t in transmits:
        responder.receive(t.data, src, now)
    return responder.poll(now)


def pongs(transmits: list[Transmit]) -> list[Transmit]:
    return [t for t in transmits if isinstance(open_packet(t.data, ALICE.node_id).message, Pong)]


def establish(alice: PathProber, bob: PathProber, addr: Address, now: float, rtt: float) -> None:
    """Alice pings ``addr`` (reaching Bob); Bob's pong arrives ``rtt`` later."""
    out = [t for t in alice.poll(now) if t.addr == addr]
    assert out
    replies = pongs(answer(out, bob, A_ADDR, now))
    for t in replies:
        alice.receive(t.data, addr, now + rtt)


def test_starts_on_relay_and_pings_candidates() -> None:
    alice = make()
    assert alice.current_path == PathInfo("relay") and str(alice.current_path) == "relay"
    assert alice.next_timer() is None
    alice.add_candidates([B_ADDR, B_OTHER], now=0.0)
    out = alice.poll(0.0)
    assert sorted(t.addr for t in out if t.addr) == [B_ADDR, B_OTHER]
    assert all(isinstance(open_packet(t.data, BOB.node_id, ALICE.node_id).message, Ping) for t in out)
    assert alice.poll(0.1) == []  # nothing due until the retry
    assert alice.next_timer() == pytest.approx(0.5)


def test_pong_makes_path_live_with_rtt() -> None:
    alice, bob = make(), make(BOB, ALICE)
    alice.add_candidates([B_ADDR], 0.0)
    establish(alice, bob, B_ADDR, 0.0, rtt=0.03)
    path = alice.current_path
    assert path.kind == "direct" and path.addr == B_ADDR and path.rtt == pytest.approx(0.03)
    assert "direct 203.0.113.2:5000" in str(path)
    assert alice.reflexive_addr == A_ADDR  # Bob told Alice how he sees her
    (event,) = alice.pop_events()
    assert event.old.kind == "relay" and event.new.kind == "direct" and event.at == 0.03
    assert alice.pop_events() == []
    assert alice.paths()[B_ADDR][0] is PathState.LIVE


def test_forged_ping_and_pong_are_ignored() -> None:
    alice = make()
    alice.add_candidates([B_ADDR], 0.0)
    (ping,) = alice.poll(0.0)
    tx = open_packet(ping.data, BOB.node_id).message
    assert isinstance(tx, Ping)
    # Mallory answers the real tx_id and claims to be Bob; then claims Bob pings from her address
    alice.receive(seal(Pong(tx.tx_id, A_ADDR), MALLORY, ALICE.node_id, T0), B_ADDR, 0.01)
    forged = bytearray(seal(Ping(TX), MALLORY, ALICE.node_id, T0))
    forged[7:39] = BOB.node_id.to_bytes()
    alice.receive(bytes(forged), ("192.0.2.66", 1), 0.01)
    alice.receive(b"\x00P2PD garbage", ("192.0.2.66", 1), 0.01)
    assert alice.current_path.kind == "relay"
    assert ("192.0.2.66", 1) not in alice.paths()
    assert alice.poll(0.02) == []  # no pong sent to the forger
    assert alice.rejected["DiscoAuthError"] == 2 and alice.rejected["ProtocolError"] == 1


def test_replayed_packets_are_ignored() -> None:
    alice, bob = make(), make(BOB, ALICE)
    ping = seal(Ping(TX), BOB, ALICE.node_id, T0)
    alice.receive(ping, B_ADDR, 0.0)
    assert [t.addr for t in alice.poll(0.0)] == [B_ADDR, B_ADDR]  # a pong, and a ping of the new candidate
    alice.receive(ping, ("192.0.2.66", 9), 1.0)  # replayed from another address
    assert ("192.0.2.66", 9) not in alice.paths()
    assert alice.rejected["replay"] == 1
    # a replayed PONG does not confirm a path twice, nor a path it was not sent to
    alice.add_candidates([B_OTHER], 2.0)
    out = [t for t in alice.poll(2.0) if t.addr == B_OTHER]
    replies = pongs(answer(out, bob, A_ADDR, 2.0))
    alice.receive(replies[0].data, ("192.0.2.66", 9), 2.01)  # wrong source
    assert alice.rejected["wrong-source"] == 1
    alice.receive(replies[0].data, B_OTHER, 2.02)
    assert alice.current_path.addr == B_OTHER
    alice.receive(replies[0].data, B_OTHER, 2.03)
    assert alice.rejected["unknown-tx"] == 1  # answered already


def test_stale_and_future_timestamps_are_ignored() -> None:
    alice = make(max_clock_skew=30)
    alice.receive(seal(Ping(TX), BOB, ALICE.node_id, T0 - 31), B_ADDR, 0.0)
    alice.receive(seal(Ping(bytes(12)), BOB, ALICE.node_id, T0 + 31), B_ADDR, 0.0)
    assert alice.rejected["stale"] == 2 and alice.paths() == {}
    alice.receive(seal(Ping(TX), BOB, ALICE.node_id, T0 - 29), B_ADDR, 0.0)
    assert B_ADDR in alice.paths()


def test_ping_from_unknown_address_becomes_candidate() -> None:
    alice, bob = make(), make(BOB, ALICE)
    alice.add_candidates([B_ADDR], 0.0)  # the port Bob's NAT was expected to use
    bob.add_candidates([A_ADDR], 0.0)
    bob_ping = [t for t in bob.poll(0.0) if t.addr == A_ADDR]
    # Bob's NAT mapped him to B_OTHER instead: his ping arrives from there
    for t in bob_ping:
        alice.receive(t.data, B_OTHER, 0.01)
    assert alice.paths()[B_OTHER][0] is PathState.PROBING
    out = alice.poll(0.01)
    pong = [t for t in out if t.addr == B_OTHER and isinstance(open_packet(t.data, BOB.node_id).message, Pong)]
    assert pong and open_packet(pong[0].data, BOB.node_id).message.observed == B_OTHER  # type: ignore[union-attr]
    new_ping = [t for t in out if t.addr == B_OTHER and isinstance(open_packet(t.data, BOB.node_id).message, Ping)]
    assert new_ping  # Alice probes the new address herself
    for t in pongs(answer(new_ping, bob, A_ADDR, 0.01)):
        alice.receive(t.data, B_OTHER, 0.05)
    path = alice.current_path
    assert path.kind == "direct" and path.addr == B_OTHER and path.rtt == pytest.approx(0.04)


def test_a_ping_through_the_relay_gets_a_small_pong_signal_and_no_path_and_call_me_maybe_works() -> None:
    alice, bob = make(), make(BOB, ALICE)
    alice.receive(seal(Ping.padded_to(TX, 1400), BOB, ALICE.node_id, T0), None, 0.0)
    (pong,) = alice.poll(0.0)
    message = open_packet(pong.data, BOB.node_id).message
    assert pong.addr is None and not pong.relayed  # a signal
    assert isinstance(message, Pong) and message.size == 1400 and len(pong.data) < 200
    assert alice.paths() == {}
    cmm = bob.call_me_maybe([B_ADDR, B_OTHER], 0.0)
    assert cmm.addr is None
    alice.receive(cmm.data, None, 0.0)
    assert sorted(t.addr for t in alice.poll(0.0) if t.addr) == [B_ADDR, B_OTHER]


def _relay_probes(transmits: list[Transmit]) -> list[tuple[Transmit, int]]:
    return [(t, len(t.data)) for t in transmits if t.relayed]


def test_the_relayed_path_searches_sizes_up_to_the_relays_capacity() -> None:
    """Padded PINGs go as relayed packets, the peer's PONGs come back as signals; the confirmed
    size grows step by step to what our relay takes, and a PONG from an address does not count."""
    alice, bob = make(max_datagram_size=16384, size_search_on_demand=True), make(BOB, ALICE)
    alice.relay_capacity(1386, 0.0)
    assert _relay_probes(alice.poll(0.0)) == []  # no bulk data yet
    alice.request_size_search(0.0)
    ((probe, size),) = _relay_probes(alice.poll(0.0))
    assert size == 1386 and probe.addr is None  # 1452 does not fit: the capacity itself
    bob.receive(probe.data, B_ADDR, 0.01)  # (a copy from an address: answered there, not a relayed answer)
    direct_pong = [t for t in bob.poll(0.01) if t.addr == B_ADDR]
    alice.receive(direct_pong[0].data, B_ADDR, 0.02)
    assert alice.rejected["wrong-source"] == 1 and alice.relayed_datagram_size == 1200
    bob2 = make(BOB, ALICE)
    bob2.receive(probe.data, None, 0.01)
    (pong,) = bob2.poll(0.01)
    alice.receive(pong.data, None, 0.02)
    assert alice.relayed_datagram_size == 1386
    assert _relay_probes(alice.poll(0.02)) == []  # at the capacity: done
    assert alice.next_timer() is None or all(not t.relayed for t in alice.poll(10.0))
    # the connection's probe timeouts say large relayed packets stopped arriving: back to the base,
    # searched again a second later
    alice.relay_black_hole(10.0)
    assert alice.relayed_datagram_size == 1200 and _relay_probes(alice.poll(10.5)) == []
    assert [size for _, size in _relay_probes(alice.poll(11.0))] == [1386]


def test_relayed_probes_lost_or_refused_keep_the_size_and_search_again_later() -> None:
    alice = make(max_datagram_size=16384, size_search_on_demand=True, size_probe_attempts=2)
    alice.relay_capacity(4000, 0.0)
    alice.request_size_search(0.0)
    ((_, first),) = _relay_probes(alice.poll(0.0))
    assert first == 1452
    alice.relay_refused(1200, 0.01)  # the far side's relay connection carries 1200: a lost probe
    assert alice.relayed_datagram_size == 1200
    sent, now = [], 0.01
    while now < 4.0:
        sent += [(round(now, 2), size) for _, size in _relay_probes(alice.poll(now))]
        now += 0.05
    # a refused size is tried again after a short backoff (the relay grows its far leg in bulk),
    # here lost twice (0.25 s each): nothing above it is tried, and it again after a 2 s backoff
    assert sent == [(0.26, 1452), (0.51, 1452), (2.81, 1452), (3.11, 1452)]
    assert alice.relayed_datagram_size == 1200


def test_no_relayed_search_without_a_relayed_path_and_a_new_capacity_starts_afresh() -> None:
    alice, bob = make(max_datagram_size=16384, size_search_on_demand=True), make(BOB, ALICE)
    alice.request_size_search(0.0)
    assert _relay_probes(alice.poll(0.0)) == []  # no capacity given: no relayed path
    alice.relay_capacity(1386, 0.0)
    ((probe, _),) = _relay_probes(alice.poll(0.0))
    bob.receive(probe.data, None, 0.01)
    alice.receive(bob.poll(0.01)[0].data, None, 0.02)
    assert alice.relayed_datagram_size == 1386
    alice.relay_capacity(None, 0.03)  # (a direct path carries the packets now)
    assert alice.relayed_datagram_size == 1200 and alice.next_timer() is None
    alice.relay_capacity(1386, 0.04)  # back on the relay (a new relay connection): searched again
    assert [size for _, size in _relay_probes(alice.poll(0.04))] == [1386]


def test_best_rtt_wins_with_hysteresis() -> None:
    alice, bob = make(), make(BOB, ALICE)
    alice.add_candidates([B_ADDR, B_OTHER], 0.0)
    out = alice.poll(0.0)
    by_addr = {t.addr: t for t in out}
    for addr, rtt in ((B_ADDR, 0.050), (B_OTHER, 0.045)):
        for t in pongs(answer([by_addr[addr]], bob, A_ADDR, 0.0)):
            alice.receive(t.data, addr, rtt)
    assert alice.current_path.addr == B_ADDR  # 45 ms is not clearly better than 50 ms
    assert len(alice.pop_events()) == 1
    # keepalives: B_OTHER now answers in 10 ms; B_ADDR still in 50 ms
    now = 5.1
    for _ in range(3):
        by_addr = {t.addr: t for t in alice.poll(now)}
        assert set(by_addr) == {B_ADDR, B_OTHER}
        for addr, rtt in ((B_ADDR, 0.050), (B_OTHER, 0.010)):
            for t in pongs(answer([by_addr[addr]], bob, A_ADDR, now)):
                alice.receive(t.data, addr, now + rtt)
        now += 5.0
    assert alice.current_path.addr == B_OTHER
    (event,) = alice.pop_events()
    assert event.reason == "lower RTT" and event.old.addr == B_ADDR and event.new.addr == B_OTHER


def test_expiry_falls_back_to_relay_then_reprobe_recovers() -> None:
    alice, bob = make(path_timeout=15, reprobe_interval=30), make(BOB, ALICE)
    alice.add_candidates([B_ADDR], 0.0)
    establish(alice, bob, B_ADDR, 0.0, rtt=0.02)
    assert alice.current_path.kind == "direct"
    alice.pop_events()
    # the direct path dies: keepalive pings go unanswered
    now = 0.02
    while alice.current_path.kind == "direct":
        timer = alice.next_timer()
        assert timer is not None and timer > now
        now = timer
        assert all(t.addr == B_ADDR for t in alice.poll(now))
    assert now == pytest.approx(15.02)
    (event,) = alice.pop_events()
    assert event.new == PathInfo("relay") and event.reason == "path expired"
    assert alice.paths()[B_ADDR][0] is PathState.FAILED
    assert alice.poll(now + 1) == []
    # periodic re-probe while on the relay
    timer = alice.next_timer()
    assert timer == pytest.approx(now + 30)
    out = alice.poll(timer)
    assert [t.addr for t in out] == [B_ADDR]
    for t in pongs(answer(out, bob, A_ADDR, timer)):
        alice.receive(t.data, B_ADDR, timer + 0.02)
    assert alice.current_path.kind == "direct"
    assert [e.new.kind for e in alice.pop_events()] == ["direct"]


def test_failing_candidate_backs_off_then_gives_up_until_reprobe() -> None:
    alice = make(probe_interval=0.5, probe_backoff_max=2.0, probe_attempts=4)
    alice.add_candidates([B_ADDR], 0.0)
    sent_at = []
    now = 0.0
    for _ in range(10):
        if alice.poll(now):
            sent_at.append(now)
        timer = alice.next_timer()
        if timer is None or timer > 20:
            break
        now = timer
    assert sent_at == [0.0, 0.5, 1.5, 3.5]
    assert alice.paths()[B_ADDR][0] is PathState.FAILED
    alice.reprobe(now)
    assert [t.addr for t in alice.poll(now)] == [B_ADDR]


def test_fallback_to_another_live_path() -> None:
    alice, bob = make(), make(BOB, ALICE)
    alice.add_candidates([B_ADDR], 0.0)
    establish(alice, bob, B_ADDR, 0.0, rtt=0.01)
    alice.add_candidates([B_OTHER], 1.0)
    establish(alice, bob, B_OTHER, 1.0, rtt=0.05)
    assert alice.current_path.addr == B_ADDR
    now = 1.05
    for _ in range(6):  # only B_OTHER keeps answering
        now += 5.0
        out = [t for t in alice.poll(now) if t.addr == B_OTHER]
        for t in pongs(answer(out, bob, A_ADDR, now)):
            alice.receive(t.data, B_OTHER, now + 0.05)
    assert alice.current_path.addr == B_OTHER
    assert [e.new.kind for e in alice.pop_events()] == ["direct", "direct"]


def test_candidate_table_is_bounded_and_keeps_live_paths() -> None:
    alice, bob = make(max_candidates=2), make(BOB, ALICE)
    alice.add_candidates([B_ADDR], 0.0)
    establish(alice, bob, B_ADDR, 0.0, rtt=0.01)
    alice.add_candidates([(f"192.0.2.{i}", 1) for i in range(10)], 1.0)
    assert len(alice.paths()) == 2 and B_ADDR in alice.paths()
    assert alice.current_path.addr == B_ADDR
    with pytest.raises(ValueError, match="not an IP address"):
        alice.add_candidates([("bob.example", 1)], 1.0)


def test_simultaneous_open_both_sides_go_direct() -> None:
    """Both sides probe at once, as after a CALL_ME_MAYBE; a tiny two-node network in virtual time."""
    alice, bob = make(), make(BOB, ALICE)
    alice.add_candidates([B_ADDR], 0.0)
    bob.receive(alice.call_me_maybe([A_ADDR], 0.0).data, None, 0.0)
    now = 0.0
    for _ in range(20):
        for sender, receiver, src in ((alice, bob, A_ADDR), (bob, alice, B_ADDR)):
            for t in sender.poll(now):
                if t.addr is not None:
                    receiver.receive(t.data, src, now + 0.01)
        now += 0.01
    assert alice.current_path.addr == B_ADDR and bob.current_path.addr == A_ADDR
    assert alice.current_path.rtt == pytest.approx(0.02, abs=0.011)


def test_deterministic_given_seed() -> None:
    def run() -> list[bytes]:
        alice = PathProber(ALICE, BOB.node_id, random.Random(7), clock_offset=T0)
        alice.add_candidates([B_ADDR, B_OTHER], 0.0)
        return [t.data for t in alice.poll(0.0) + alice.poll(0.5)]

    assert run() == run()


# -- hole punching: lost signals, openers --------------------------------------------------


def _cmms(out: list[Transmit]) -> list[Transmit]:
    return [t for t in out if t.addr is None and isinstance(open_packet(t.data, BOB.node_id).message, CallMeMaybe)]


def test_call_me_maybe_is_repeated_until_a_direct_path_is_live() -> None:
    """Relay signals are unreliable: a lost CALL_ME_MAYBE must not leave the peer unpunched."""
    alice, bob = make(), make(BOB, ALICE)
    first = alice.call_me_maybe([A_ADDR], 0.0)
    assert first.addr is None
    sent = [0.0]
    now = 0.0
    while (t := alice.next_timer()) is not None and t < 100:
        now = t
        sent += [now for _ in _cmms(alice.poll(now))]
    # the first signal and 5 more on the probe schedule (0.5 s doubling), then it stops
    assert sent == pytest.approx([0.0, 0.5, 1.5, 3.5, 7.5, 15.5])
    # every copy is a fresh packet the peer accepts (not a replay)
    bob.add_candidates([], 0.0)
    # a direct path ends the repetition at once
    alice2 = make()
    alice2.call_me_maybe([A_ADDR], 0.0)
    alice2.add_candidates([B_ADDR], 0.0)
    establish(alice2, bob, B_ADDR, 0.0, rtt=0.03)
    assert _cmms(alice2.poll(0.6)) == []


def test_a_lost_call_me_maybe_is_made_up_for_by_the_next_one() -> None:
    alice, bob = make(), make(BOB, ALICE)
    alice.call_me_maybe([A_ADDR], 0.0)  # lost on the relay
    (again,) = _cmms(alice.poll(0.5))
    bob.receive(again.data, None, 0.55)
    out = bob.poll(0.55)
    assert [t.addr for t in out if t.addr is not None] == [A_ADDR]  # bob punches now
    assert bob.peer_call_me_maybe_at == 0.55


def test_punching_opens_with_a_low_ttl_ping_and_waits_for_the_peer() -> None:
    """The conntrack trap: full-TTL pings must not reach the peer's router before the peer opened."""
    alice = make(punch_ttl=2, punch_delay=0.1, punch_hold=3.0)
    alice.punching = True
    alice.add_candidates([B_ADDR], 0.0)
    (opener,) = alice.poll(0.0)
    assert opener.addr == B_ADDR and opener.ttl == 2
    # no CALL_ME_MAYBE from bob yet: full-TTL pings wait (up to punch_hold)
    assert alice.next_timer() == pytest.approx(3.0)
    assert alice.poll(1.0) == []
    # bob's CALL_ME_MAYBE says he is opening his side: open again, then full TTL after the delay
    alice.receive(seal(CallMeMaybe((B_ADDR,)), BOB, ALICE.node_id, T0 + 1.0), None, 1.0)
    (opener2,) = alice.poll(1.0)
    assert opener2.ttl == 2
    assert alice.poll(1.05) == []
    (full,) = alice.poll(1.1)
    assert full.addr == B_ADDR and full.ttl is None


def test_punching_without_a_call_me_maybe_goes_full_ttl_after_the_hold() -> None:
    alice = make(punch_ttl=2, punch_hold=3.0)
    alice.punching = True
    alice.add_candidates([B_ADDR], 0.0)
    assert [t.ttl for t in alice.poll(0.0)] == [2]
    assert [t.ttl for t in alice.poll(3.0)] == [None]


def test_no_openers_when_not_punching_or_when_the_peer_reached_us() -> None:
    alice = make(punch_ttl=2)
    alice.add_candidates([B_ADDR], 0.0)
    assert [t.ttl for t in alice.poll(0.0)] == [None]  # no relay: nobody to coordinate with
    alice = make(punch_ttl=2)
    alice.punching = True
    alice.receive(seal(Ping(TX), BOB, ALICE.node_id, T0), B_OTHER, 0.0)  # bob's ping got through our NAT
    out = alice.poll(0.0)
    assert {(t.addr, t.ttl) for t in out} == {(B_OTHER, None)}  # the pong and a full-TTL ping


def test_unanswered_for_measures_silence_since_the_first_unanswered_ping() -> None:
    alice, bob = make(), make(BOB, ALICE)
    alice.add_candidates([B_ADDR], 0.0)
    assert alice.unanswered_for(B_ADDR, 0.0) is None
    alice.poll(0.0)
    alice.poll(0.5)
    assert alice.unanswered_for(B_ADDR, 2.0) == pytest.approx(2.0)
    establish(alice, bob, B_ADDR, 2.0, rtt=0.01)
    assert alice.unanswered_for(B_ADDR, 3.0) is None


# -- transport traffic standing in for keepalives ---------------------------------------


def _run_until(prober: PathProber, end: float, now: float, traffic_every: float | None = None) -> list[Transmit]:
    """Drive ``prober``'s timers from ``now`` to ``end``; with ``traffic_every``, report
    authenticated transport packets on its current path at that period.  Returns every transmit."""
    out: list[Transmit] = []
    next_traffic = now if traffic_every else None
    while True:
        timer = prober.next_timer()
        step = min(t for t in (timer, next_traffic, end) if t is not None)
        if step >= end:
            return out
        now = step
        if next_traffic is not None and now >= next_traffic:
            current = prober.current_path
            if current.addr is not None:
                prober.transport_alive(current.addr, now)
            next_traffic = now + (traffic_every or 0.0)
        out += prober.poll(now)


def test_transport_traffic_stands_in_for_keepalive_pings() -> None:
    alice, bob = make(transport_quiet=15, path_timeout=25), make(BOB, ALICE)
    alice.add_candidates([B_ADDR], 0.0)
    establish(alice, bob, B_ADDR, 0.0, rtt=0.02)
    alice.pop_events()
    # QUIC packets every 10 s for 10 minutes: no ping goes out, and the path stays live
    # although no PONG arrives (it would expire after path_timeout without the traffic)
    sent = _run_until(alice, 600.0, 0.02, traffic_every=10.0)
    assert sent == []
    assert alice.current_path.kind == "direct" and alice.pop_events() == []
    # the last packet came at 590.02: pings resume transport_quiet later, and the path
    # expires path_timeout after that packet
    assert alice.next_timer() == pytest.approx(590.02 + 15)
    sent = _run_until(alice, 700.0, 600.0)
    assert [t.addr for t in sent][:1] == [B_ADDR]
    assert alice.current_path.kind == "relay"
    (event,) = alice.pop_events()
    assert event.reason == "path expired" and event.at == pytest.approx(590.02 + 25)


def test_transport_traffic_does_not_count_off_the_current_path_or_when_off() -> None:
    alice, bob = make(transport_quiet=15, path_timeout=25), make(BOB, ALICE)
    alice.add_candidates([B_ADDR], 0.0)
    establish(alice, bob, B_ADDR, 0.0, rtt=0.02)
    for t in range(1, 40):
        alice.transport_alive(B_OTHER, float(t))  # not the current path: ignored
    alice.poll(40.0)
    assert alice.current_path.kind == "relay"
    # without transport_quiet (the default) the traffic changes nothing: keepalive every 5 s
    plain, bob2 = make(), make(BOB, ALICE)
    plain.add_candidates([B_ADDR], 0.0)
    establish(plain, bob2, B_ADDR, 0.0, rtt=0.02)
    sent = _run_until(plain, 12.0, 0.02, traffic_every=1.0)
    assert [t.addr for t in sent] == [B_ADDR, B_ADDR]


def test_a_suspected_path_needs_a_real_pong() -> None:
    alice, bob = make(transport_quiet=15, path_timeout=25), make(BOB, ALICE)
    alice.add_candidates([B_ADDR], 0.0)
    establish(alice, bob, B_ADDR, 0.0, rtt=0.02)
    alice.pop_events()
    assert alice.suspect(B_ADDR, 1.0)
    # the peer's packets still arrive (it may not hear us): they do not clear the suspicion
    sent = _run_until(alice, 3.0, 1.0, traffic_every=0.1)
    assert sent and all(t.addr == B_ADDR for t in sent)
    assert alice.current_path.kind == "relay"
    (event,) = alice.pop_events()
    assert event.reason == "path expired"


def test_transport_quiet_must_leave_room_for_a_ping() -> None:
    with pytest.raises(ValueError, match="path_timeout"):
        ProberConfig(transport_quiet=15)  # default path_timeout 15 s
    with pytest.raises(ValueError, match="negative"):
        ProberConfig(transport_quiet=-1)
    assert ProberConfig(transport_quiet=15, path_timeout=20).transport_quiet == 15


def test_pop_answered_names_each_path_that_answered_once() -> None:
    alice, bob = make(), make(BOB, ALICE)
    assert alice.pop_answered() == []
    alice.add_candidates([B_ADDR], 0.0)
    establish(alice, bob, B_ADDR, 0.0, rtt=0.03)
    assert alice.pop_answered() == [B_ADDR]  # the PONG that made it live
    assert alice.pop_answered() == []  # popped
    establish(alice, bob, B_ADDR, 6.0, rtt=0.03)  # the keepalive round trip
    assert alice.pop_answered() == [B_ADDR]


def test_a_deadline_at_a_float_rounding_edge_is_due_once() -> None:
    """``sent + timeout`` can equal ``now`` while ``now - sent`` is still below ``timeout``:
    the timer must not stay due at that instant (found by the swarm: 10,000 loop passes)."""
    start = next(t / 1000 for t in range(1_000_000, 2_000_000) if (t / 1000 + 5.0) - t / 1000 < 5.0 and t % 7 == 0)
    alice = make()
    alice.add_candidates([B_ADDR], start)
    assert alice.poll(start)  # the first PING, unanswered
    for _ in range(20):
        due = alice.next_timer()
        assert due is not None
        alice.poll(due)
        after = alice.next_timer()
        assert after is None or after > due
        if due >= start + 5.0:
            break


# -- a peer that moved: the newest handshake-proven address wins --------------------------


def test_a_handshake_from_a_new_address_of_a_dialer_becomes_the_current_path_and_the_old_stays_until_it_fails() -> None:
    alice, bob = make(path_timeout=15), make(BOB, ALICE)
    alice.add_candidates([B_ADDR], 0.0)
    establish(alice, bob, B_ADDR, 0.0, rtt=0.010)
    assert alice.current_path.addr == B_ADDR
    alice.pop_events()
    # Bob moved and dialed us again from B_OTHER while his old connection is still up: that
    # handshake proves B_OTHER, and although its RTT is higher (not "clearly better"), the
    # newest proof wins: Bob is there now
    alice.handshake_validated(B_OTHER, 0.050, 1.0, newest=True)
    assert alice.current_path == PathInfo("direct", B_OTHER, 0.050)
    (event,) = alice.pop_events()
    assert event.old.addr == B_ADDR and event.new.addr == B_OTHER
    assert event.reason == "the peer dialed from a new address"
    # the old path is kept as a live candidate, pinged, and fails when it stops answering
    assert alice.paths()[B_ADDR][0] is PathState.LIVE
    now = 1.0
    pinged_old = False
    while alice.paths()[B_ADDR][0] is PathState.LIVE:
        timer = alice.next_timer()
        assert timer is not None and timer < 60
        now = timer
        for t in alice.poll(now):
            pinged_old |= t.addr == B_ADDR
            if t.addr == B_OTHER:  # Bob answers at his new address only
                for p in pongs(answer([t], bob, A_ADDR, now)):
                    alice.receive(p.data, B_OTHER, now + 0.050)
    assert pinged_old and alice.paths()[B_ADDR][0] is PathState.FAILED
    assert now == pytest.approx(0.010 + 15)  # its last PONG plus path_timeout
    assert alice.current_path.addr == B_OTHER and alice.pop_events() == []


def test_the_same_address_proven_again_changes_nothing_and_our_own_dial_keeps_rtt_choice() -> None:
    alice, bob = make(), make(BOB, ALICE)
    alice.add_candidates([B_ADDR], 0.0)
    establish(alice, bob, B_ADDR, 0.0, rtt=0.010)
    alice.pop_events()
    alice.handshake_validated(B_ADDR, 0.010, 1.0, newest=True)  # another connection, same address
    assert alice.current_path.addr == B_ADDR and alice.pop_events() == []
    # a handshake we dialed to B_OTHER (our choice, e.g. a second address of a server) is a
    # live path, but the RTT decides: 50 ms is not better than 10 ms
    alice.handshake_validated(B_OTHER, 0.050, 2.0)
    assert alice.paths()[B_OTHER][0] is PathState.LIVE
    assert alice.current_path.addr == B_ADDR and alice.pop_events() == []
    assert alice.live_address(B_OTHER) == B_OTHER and alice.live_address(("192.0.2.9", 1)) is None


def test_a_dialer_that_moves_back_to_a_live_old_address_is_followed_there() -> None:
    alice, bob = make(), make(BOB, ALICE)
    alice.add_candidates([B_ADDR], 0.0)
    establish(alice, bob, B_ADDR, 0.0, rtt=0.010)
    alice.handshake_validated(B_OTHER, 0.030, 1.0, newest=True)
    assert alice.current_path.addr == B_OTHER
    # both addresses live; Bob dials from B_ADDR again: it is current again
    alice.handshake_validated(B_ADDR, 0.010, 2.0, newest=True)
    assert alice.current_path.addr == B_ADDR
    assert [(e.old.addr, e.new.addr) for e in alice.pop_events()] == [
        (None, B_ADDR),
        (B_ADDR, B_OTHER),
        (B_OTHER, B_ADDR),
    ]


def test_the_first_handshake_of_a_peer_is_not_a_move() -> None:
    alice = make()
    alice.handshake_validated(B_ADDR, 0.020, 0.0, newest=True)
    (event,) = alice.pop_events()
    assert event.new.addr == B_ADDR and event.reason == "handshake on the direct path"
