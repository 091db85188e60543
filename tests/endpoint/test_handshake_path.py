"""The handshake's hot path: what the accepting side does first, and per-connection work shared.

A direct handshake validates its address as a live path, so no signed disco probe is
needed for it; the dialer's ``connect`` returns when HANDSHAKE_DONE arrives, and the
acceptor sends it before joining the peer's paths; a protocol that refuses the connection
still fails the dial with its reason; QUIC configurations are built once and shared
(aioquic only reads them), in a bounded cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest
from aioquic.quic.events import QuicEvent

from asgi_p2p import Endpoint, NetworkConfig, Node, SecretKey
from asgi_p2p.endpoint.connection import PeerConnection
from asgi_p2p.errors import ConnectionClosed, P2PError
from asgi_p2p.paths.peer import PeerPaths
from asgi_p2p.paths.prober import Transmit
from asgi_p2p.sim import Simulation

CONFIG = NetworkConfig(max_probe_datagram_size=0)


async def _pair(sim: Simulation) -> tuple[Node, Node]:
    a, b = sim.host("alice"), sim.host("bob")
    sim.link(a, b, latency=0.02, loss=0.0)
    nodes = []
    for name, host in (("alice", a), ("bob", b)):
        nodes.append(
            await Node.bind(
                SecretKey.from_seed(name),
                host="0.0.0.0",
                port=4433,
                config=CONFIG,
                network=host,
                rng=random.Random(name),
            )
        )
    return nodes[0], nodes[1]


def test_a_direct_handshake_makes_its_address_a_live_path_without_disco_probes(
    sim: Simulation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No relay: the dialed address carried the authenticated handshake both ways, so both
    sides take it as a live direct path at once, with the handshake's RTT, and no signed disco
    PING or PONG goes out for it (before, the dialer pinged at dial time, the acceptor dropped
    that after checking its signature, and each side pinged the other after the handshake)."""
    sent: list[tuple[str, int]] = []
    real = PeerPaths.service

    def service(self: PeerPaths) -> None:
        real_poll = self.prober.poll

        def poll(now: float) -> list[Transmit]:
            out = real_poll(now)
            sent.extend(t.addr for t in out if t.addr is not None)
            return out

        self.prober.poll = poll  # type: ignore[method-assign]
        try:
            real(self)
        finally:
            del self.prober.poll

    monkeypatch.setattr(PeerPaths, "service", service)

    async def main() -> None:
        alice, bob = await _pair(sim)
        conn = await bob.connect(alice.node_addr())
        inc = await alice.listen().accept()
        for node, peer in ((bob, alice), (alice, bob)):
            paths = node.peer_paths(peer.node_id)
            assert paths is not None
            path = paths.prober.current_path
            assert path.kind == "direct" and path.rtt is not None, path
            assert 0.03 <= path.rtt <= 0.06, path  # 40 ms round trip: the handshake's sample
        await conn.send(b"hello")
        assert await inc.recv() == b"hello"
        await asyncio.sleep(2)  # before any keepalive is due
        assert sent == [], f"disco packets sent for a path the handshake validated: {sent}"
        assert alice.dropped_disco == bob.dropped_disco == 0
        await conn.close()
        await bob.close()
        await alice.close()

    sim.run(main(), time_limit=60)


def test_a_dial_the_handshake_does_not_answer_on_still_probes_the_address(sim: Simulation) -> None:
    """The dial-time PING is only deferred: a dialed address where no handshake completes
    (nobody there) is still probed by the paths layer, from about a second into the dial."""

    async def main() -> None:
        alice, bob = await _pair(sim)
        target = alice.node_addr()
        await alice.close()  # nobody answers at that address now
        task = asyncio.ensure_future(bob.connect(target))
        await asyncio.sleep(0.5)
        paths = bob.peer_paths(alice.node_id)
        assert paths is not None
        assert all(p["pings"] == 0 for p in (st.stats for st in paths.prober._paths.values()))
        await asyncio.sleep(1.0)
        assert any(p.stats["pings"] > 0 for p in paths.prober._paths.values())
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, P2PError):
            await task
        await bob.close()

    sim.run(main(), time_limit=60)


class _Handler:
    def quic_event_received(self, event: QuicEvent) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        pass


def test_a_protocol_refusing_the_connection_fails_the_dial_with_its_reason(sim: Simulation) -> None:
    """The acceptor's handler is made before HANDSHAKE_DONE leaves: a refusal there still reaches
    the dialer as a failed ``connect`` naming the reason, never as a connection that opens and dies."""

    def refuse(conn: PeerConnection) -> _Handler:
        if conn.is_client:
            return _Handler()
        raise ConnectionClosed("test/refuse: this node takes no such connections")

    async def main() -> None:
        alice, bob = await _pair(sim)
        for ep in (alice, bob):
            ep.add_protocol("test/refuse", refuse)
        with pytest.raises(P2PError, match="this node takes no such connections"):
            await bob.connect_quic(alice.node_addr(), "test/refuse")
        assert not [c for c in bob.connections if c.alpn == "test/refuse"]
        # the endpoint keeps serving other protocols
        conn = await bob.connect(alice.node_addr())
        await conn.send(b"still here")
        assert await (await alice.listen().accept()).recv() == b"still here"
        await bob.close()
        await alice.close()

    sim.run(main(), time_limit=60)


def test_connections_share_their_quic_configuration(sim: Simulation) -> None:
    async def main() -> None:
        alice, bob = await _pair(sim)
        listener = alice.listen()
        dialed, accepted = [], []
        for _ in range(2):
            conn = await bob.connect(alice.node_addr())
            await conn.send(b"x")
            inc = await listener.accept()
            assert await inc.recv() == b"x"
            (qb,) = bob.connections
            (qa,) = alice.connections
            dialed.append(qb.quic.configuration)
            accepted.append(qa.quic.configuration)
            await conn.close()
            await asyncio.sleep(1)
        # the second dial resumes with the session ticket of the first: a shallow copy of the
        # shared configuration that holds the ticket, everything else the very same objects
        assert dialed[0].session_ticket is None and dialed[1].session_ticket is not None
        assert {k: v for k, v in vars(dialed[1]).items() if k != "session_ticket"} == {
            k: v for k, v in vars(dialed[0]).items() if k != "session_ticket"
        }
        assert dialed[1].certificate is dialed[0].certificate
        assert accepted[0] is accepted[1]
        assert dialed[0].is_client and not accepted[0].is_client
        assert dialed[0].server_name == str(alice.node_id)
        await bob.close()
        await alice.close()

    sim.run(main(), time_limit=60)


async def test_the_quic_configuration_cache_is_bounded() -> None:
    ep = await Endpoint.bind(SecretKey.from_seed("cache"), config=CONFIG)
    try:
        first = ep._quic_config(is_client=True, alpns=["a"], server_name="n0")
        assert ep._quic_config(is_client=True, alpns=["a"], server_name="n0") is first
        assert ep._quic_config(is_client=True, alpns=["b"], server_name="n0") is not first
        for i in range(1000):
            ep._quic_config(is_client=True, alpns=["a"], server_name=f"n{i}")
            assert len(ep._quic_configs) <= 256
    finally:
        await ep.close()
