"""After a partition heals, a connection that backed off its probe timeouts recovers at once.

QUIC backs its probe timeout off exponentially while nothing is acknowledged: after
20 s of silence the next probe would be about as far away again, and data written
meanwhile waits behind a congestion window full of lost packets.  The endpoint caps
that backoff (a probe at least every ``_MAX_PROBE_INTERVAL`` seconds) and ends it as
soon as there is evidence the path works again: a new packet from the peer that
acknowledges nothing new, or the paths layer hearing the peer on the connection's
route (a disco PONG, the relay connecting again).
"""

from __future__ import annotations

import asyncio
import random

import pytest

from asgi_p2p import MessageConnection, NetworkConfig, Node, SecretKey
from asgi_p2p import aioquic_compat as hooks
from asgi_p2p.endpoint import connection
from asgi_p2p.endpoint.connection import PeerConnection
from asgi_p2p.net.base import Address
from asgi_p2p.paths.route import Route
from asgi_p2p.sim import Simulation

LATENCY = 0.030
PARTITION = 20.0


async def _bind(name: str, sim: Simulation) -> Node:
    return await Node.bind(
        SecretKey.from_seed(name),
        host="0.0.0.0",
        port=4433,
        config=NetworkConfig(keepalive_interval=0),  # nothing but the test's own traffic
        network=sim.host(name),
        rng=random.Random(name),
    )


def _conn(node: Node) -> PeerConnection:
    (conn,) = node.connections
    return conn


async def _lost_in_a_partition(sim: Simulation) -> tuple[Node, Node, MessageConnection, MessageConnection]:
    """Bob's message to alice is sent into a 20 s partition; returns at its end, before the heal."""
    alice, bob = await _bind("alice", sim), await _bind("bob", sim)
    to_alice = await bob.connect(alice.node_addr())
    at_alice = await alice.listen().accept()
    await to_alice.send(b"before")
    assert await at_alice.recv() == b"before"
    sim.partition("alice", "bob")
    await to_alice.send(b"during")  # lost, and so is every probe for it
    await asyncio.sleep(PARTITION)
    return alice, bob, to_alice, at_alice


def test_a_packet_from_the_peer_after_a_partition_ends_the_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "_MAX_PROBE_INTERVAL", 1000.0)  # QUIC's own backoff, uncapped
    with Simulation(seed=3, latency=LATENCY, loss=0.0) as sim:

        async def main() -> None:
            alice, bob, to_alice, at_alice = await _lost_in_a_partition(sim)
            loop = asyncio.get_running_loop()
            conn = _conn(bob)
            assert hooks.pto_count(conn.quic) >= 4
            deadline = conn.quic.get_timer()
            assert deadline is not None and deadline - loop.time() > 2.0  # the backoff's end
            sim.heal()
            healed = loop.time()
            await at_alice.send(b"after")  # alice has nothing outstanding: this leaves at once
            assert await asyncio.wait_for(at_alice.recv(), 10.0) == b"during"
            arrived = loop.time()
            assert arrived - healed < 4 * LATENCY + 0.05, arrived - healed  # about two round trips
            assert arrived < deadline
            assert conn.backoffs_ended == 1
            assert await to_alice.recv() == b"after"
            await bob.close()
            await alice.close()

        sim.run(main(), time_limit=120)


def test_without_news_an_uncapped_backoff_runs_its_course(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: nothing from alice after the heal and no cap: bob's message waits for his
    next probe timeout, seconds after the heal."""
    monkeypatch.setattr(connection, "_MAX_PROBE_INTERVAL", 1000.0)
    with Simulation(seed=3, latency=LATENCY, loss=0.0) as sim:

        async def main() -> None:
            alice, bob, _to_alice, at_alice = await _lost_in_a_partition(sim)
            loop = asyncio.get_running_loop()
            deadline = _conn(bob).quic.get_timer()
            assert deadline is not None and deadline - loop.time() > 2.0
            sim.heal()
            assert await asyncio.wait_for(at_alice.recv(), 30.0) == b"during"
            assert loop.time() >= deadline  # only the probe timeout's own probe got it there
            assert _conn(bob).backoffs_ended == 0
            await bob.close()
            await alice.close()

        sim.run(main(), time_limit=120)


def test_the_backoff_is_capped_so_a_healed_path_is_found_within_the_cap() -> None:
    cap = connection._MAX_PROBE_INTERVAL
    with Simulation(seed=3, latency=LATENCY, loss=0.0) as sim:

        async def main() -> None:
            alice, bob, _to_alice, at_alice = await _lost_in_a_partition(sim)
            loop = asyncio.get_running_loop()
            conn = _conn(bob)
            # a round of doubling probe timeouts ends at most cap seconds after its last probe:
            # a few rounds in 20 s, each a handful of probes (no probe storm either)
            assert PARTITION / (3 * cap) <= conn.backoffs_ended <= PARTITION / cap
            sim.heal()
            healed = loop.time()
            assert await asyncio.wait_for(at_alice.recv(), 30.0) == b"during"
            assert loop.time() - healed <= cap + 2 * LATENCY + 0.01
            await bob.close()
            await alice.close()

        sim.run(main(), time_limit=120)


def test_a_packet_through_the_relay_does_not_end_the_backoff_of_a_direct_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer's packet arriving through the relay while we send direct says nothing of the
    direct path: the backoff goes on (its probe timeouts are how the paths layer finds the
    direct path dead and falls back); the same packet on the direct path ends it."""
    monkeypatch.setattr(connection, "_MAX_PROBE_INTERVAL", 1000.0)
    with Simulation(seed=3, latency=LATENCY, loss=0.0) as sim:

        async def main() -> None:
            alice, bob, _to_alice, at_alice = await _lost_in_a_partition(sim)
            conn = _conn(bob)
            alice_route = _conn(alice).route
            captured: list[bytes] = []
            original_send = Route.send

            def capture(route: Route, datagrams: list[tuple[bytes, Address]]) -> None:
                if route is alice_route:
                    captured.extend(data for data, _addr in datagrams)
                original_send(route, datagrams)

            monkeypatch.setattr(Route, "send", capture)
            await at_alice.send(b"after")  # into the partition: only captured
            await asyncio.sleep(0.01)
            assert captured
            ptos = hooks.pto_count(conn.quic)
            assert ptos >= 4 and conn.route.direct is not None
            conn.datagram_received(captured[0], None)  # as if relayed
            assert conn.backoffs_ended == 0
            assert hooks.pto_count(conn.quic) == ptos
            # the same evidence on the direct path: the backoff ends
            await at_alice.send(b"again")
            await asyncio.sleep(0.01)
            conn.datagram_received(captured[-1], conn.route.direct)
            assert conn.backoffs_ended == 1
            assert hooks.pto_count(conn.quic) == 0
            await bob.close()
            await alice.close()

        sim.run(main(), time_limit=120)
