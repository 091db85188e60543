"""The dialer's first disco PING reaches the acceptor before the handshake names the dialer.

The acceptor has no paths for an unknown node, so that PING is not acted on; these tests
check it cannot be acted on *later* either: replayed by someone who saw it, from an
address of their choosing, once the connection exists.

A dial defers its PING to the address its handshake goes to (the handshake validates that
address), but pings a ticket's other addresses at once, and pings the dialed one too if the
handshake is slow: those PINGs reach the acceptor before the handshake names the dialer.
The tests take the deferral out (``_DIAL_PING_DEFER = 0``) so the dialed address is one.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from asgi_p2p import NetworkConfig, Node, NodeAddr, SecretKey
from asgi_p2p.net.base import Address
from asgi_p2p.paths import peer as peer_module
from asgi_p2p.paths import router as router_module
from asgi_p2p.paths.disco import Ping, is_disco, open_packet, peek_sender, seal
from asgi_p2p.paths.router import Router
from asgi_p2p.sim import Simulation


async def _bind(name: str, host: object) -> Node:
    return await Node.bind(
        SecretKey.from_seed(name),
        host="0.0.0.0",
        port=4433,
        config=NetworkConfig(),
        network=host,  # type: ignore[arg-type]
        rng=random.Random(name),
    )


@pytest.fixture(autouse=True)
def _ping_at_dial_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer_module, "_DIAL_PING_DEFER", 0.0)


def test_a_first_ping_dropped_before_the_handshake_cannot_be_replayed_after_it(sim: Simulation) -> None:
    a, b, m = sim.host("alice"), sim.host("bob"), sim.host("mallory")
    sim.link(a, b, latency=0.01, loss=0.0, mtu=1500)
    sim.link(a, m, latency=0.01, loss=0.0, mtu=1500)

    async def main() -> None:
        ea, eb = await _bind("alice", a), await _bind("bob", b)
        sock = a.sockets[4433]
        deliver = sock.receiver
        early: list[bytes] = []  # bob's disco packets that reached alice before she knew bob

        def tap(data: bytes, addr: Address) -> None:
            if is_disco(data) and peek_sender(data) == eb.node_id and ea.peer_paths(eb.node_id) is None:
                early.append(data)
            deliver(data, addr)

        sock.receiver = tap
        dropped = ea.dropped_disco
        conn = await eb.connect(NodeAddr(ea.node_id, [(a.address, 4433)]))
        inc = await ea.listen().accept()
        pings = [d for d in early if isinstance(open_packet(d, ea.node_id, eb.node_id).message, Ping)]
        assert pings, "bob's first PING should reach alice before the handshake completes"
        assert ea.dropped_disco > dropped  # ... and is not acted on then
        peer = ea.peer_paths(eb.node_id)
        assert peer is not None
        await asyncio.sleep(1.0)
        rejected = dict(peer.prober.rejected)
        msock = await m.bind("0.0.0.0", 6666, lambda data, addr: None)
        mallory: Address = (m.address, 6666)
        for ping in pings:  # well inside the 120 s freshness window
            msock.sendto(ping, (a.address, 4433))
        await asyncio.sleep(2.0)
        to_mallory = [e for e in sim.trace.events("deliver") if e.dst == mallory]
        after = peer.prober.rejected
        delta = {k: after[k] - rejected.get(k, 0) for k in after if after[k] != rejected.get(k, 0)}
        print(
            f"\nreplayed {len(pings)} first PING(s): alice sent mallory {len(to_mallory)} datagrams; rejected {delta}"
        )
        assert to_mallory == [], "alice answered a replayed first PING"
        assert mallory not in peer.prober.paths()
        assert delta == {"replay": len(pings)}, delta
        await conn.send(b"still fine")
        assert await inc.recv() == b"still fine"
        await eb.close()
        await ea.close()

    sim.run(main())


def test_packets_of_a_previous_connection_cannot_be_replayed_into_the_next(sim: Simulation) -> None:
    """A peer's paths go with its last connection; its next connection's prober still knows its old packets."""
    a, b, m = sim.host("alice"), sim.host("bob"), sim.host("mallory")
    sim.link(a, b, latency=0.01, loss=0.0, mtu=1500)
    sim.link(a, m, latency=0.01, loss=0.0, mtu=1500)

    async def main() -> None:
        ea, eb = await _bind("alice", a), await _bind("bob", b)
        sock = a.sockets[4433]
        deliver = sock.receiver
        pings: list[bytes] = []

        def tap(data: bytes, addr: Address) -> None:
            if is_disco(data) and peek_sender(data) == eb.node_id and ea.peer_paths(eb.node_id) is not None:
                if isinstance(open_packet(data, ea.node_id, eb.node_id).message, Ping):
                    pings.append(data)  # accepted by alice's prober for the first connection
            deliver(data, addr)

        sock.receiver = tap
        conn = await eb.connect(NodeAddr(ea.node_id, [(a.address, 4433)]))
        inc = await ea.listen().accept()
        await conn.send(b"one")
        assert await inc.recv() == b"one"
        await asyncio.sleep(6.0)  # a keepalive round: more PINGs
        sock.receiver = deliver
        captured = list(dict.fromkeys(pings))
        assert captured
        await conn.close()
        for _ in range(50):
            if ea.peer_paths(eb.node_id) is None:
                break
            await asyncio.sleep(0.1)
        assert ea.peer_paths(eb.node_id) is None  # the paths went with the connection
        # this time alice dials: her new paths for bob exist before any packet of his arrives
        conn = await ea.connect(NodeAddr(eb.node_id, [(b.address, 4433)]))
        inc = await eb.listen().accept()
        peer = ea.peer_paths(eb.node_id)
        assert peer is not None
        rejected = dict(peer.prober.rejected)
        msock = await m.bind("0.0.0.0", 6666, lambda data, addr: None)
        for ping in captured:
            msock.sendto(ping, (a.address, 4433))
        await asyncio.sleep(2.0)
        assert [e for e in sim.trace.events("deliver") if e.dst == (m.address, 6666)] == []
        after = peer.prober.rejected
        delta = {k: after[k] - rejected.get(k, 0) for k in after if after[k] != rejected.get(k, 0)}
        assert delta == {"replay": len(captured)}, delta
        await conn.send(b"two")
        assert await inc.recv() == b"two"
        await eb.close()
        await ea.close()

    sim.run(main())


# -- the router's bookkeeping of early packets, without a network -------------------------


def _router() -> Router:
    return Router(
        SecretKey.from_seed("router-alice"),
        NetworkConfig(),
        random.Random(1),
        deliver=lambda data, addr: None,
        deliver_relayed=lambda data, src: None,
    )


def test_early_packets_are_checked_within_a_budget() -> None:
    async def main() -> None:
        r = _router()
        now = asyncio.get_running_loop().time()
        forger = SecretKey.from_seed("forger")
        for i in range(500):  # "from" 500 nodes, all signed by someone else
            claimed = SecretKey.from_seed(f"claimed-{i}").node_id
            forged = bytearray(seal(Ping(bytes(12)), forger, r.node_id, now))
            forged[7:39] = claimed.to_bytes()
            r.datagram_received(bytes(forged), ("192.0.2.1", 1))
        assert r.dropped_disco == 500
        # the burst, plus what the budget refilled while the checks ran (real loop time)
        assert 350 <= r.unchecked_disco <= 500 - int(router_module.EARLY_DISCO_CHECK_BURST)
        assert r._seen_until == {}  # nothing forged is remembered
        await asyncio.sleep(0.1)  # 5 more checks
        genuine = SecretKey.from_seed("genuine")
        ping = seal(Ping(bytes(12)), genuine, r.node_id, now + 0.1)
        r.datagram_received(ping, ("192.0.2.1", 1))
        assert r._seen_until == {genuine.node_id: pytest.approx(now + 0.1, abs=0.001)}
        stale = seal(Ping(bytes(12)), genuine, r.node_id, now - 1000)
        r.datagram_received(stale, ("192.0.2.1", 1))  # outside the window: refused anyway later
        assert r._seen_until[genuine.node_id] == pytest.approx(now + 0.1, abs=0.001)

    asyncio.run(main())


def test_early_packets_are_remembered_for_a_bounded_number_of_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router_module, "MAX_SEEN_NODES", 8)

    async def main() -> None:
        r = _router()
        now = asyncio.get_running_loop().time()
        keys = [SecretKey.from_seed(f"early-{i}") for i in range(20)]
        for key in keys:
            r.datagram_received(seal(Ping(bytes(12)), key, r.node_id, now), ("192.0.2.1", 1))
        assert list(r._seen_until) == [k.node_id for k in keys[-8:]]  # the newest kept

    asyncio.run(main())
