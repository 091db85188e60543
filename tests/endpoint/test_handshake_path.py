"""The handshake's hot path: what the accepting side does first, and per-connection work shared.

The dialer's ``connect`` returns when HANDSHAKE_DONE arrives, so the acceptor sends it
before joining the peer's paths (whose disco probes are each signed); a protocol that
refuses the connection still fails the dial with its reason; QUIC configurations are
built once and shared (aioquic only reads them), in a bounded cache.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from aioquic.quic.events import QuicEvent

from asgi_p2p import Endpoint, NetworkConfig, Node, SecretKey
from asgi_p2p.endpoint.connection import PeerConnection
from asgi_p2p.errors import ConnectionClosed, P2PError
from asgi_p2p.paths.peer import PeerPaths
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


def test_the_acceptor_sends_handshake_done_before_its_first_disco_probe(
    sim: Simulation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dialer holds HANDSHAKE_DONE (its connection is ready) before any disco packet of the
    acceptor reaches it: the acceptor's path probes no longer delay the dialer's ``connect``."""
    ready_at_disco: list[bool] = []
    dialer: list[Node] = []
    real = PeerPaths.disco_received

    def disco_received(self: PeerPaths, data: bytes, addr: tuple[str, int] | None) -> None:
        if dialer and self.router is dialer[0].router:
            ready_at_disco.append(any(c.is_connected for c in dialer[0].connections))
        real(self, data, addr)

    monkeypatch.setattr(PeerPaths, "disco_received", disco_received)

    async def main() -> None:
        alice, bob = await _pair(sim)
        dialer.append(bob)
        conn = await bob.connect(alice.node_addr())
        inc = await alice.listen().accept()
        await conn.send(b"hello")
        assert await inc.recv() == b"hello"
        await asyncio.sleep(2)  # the path's first probes and answers
        await conn.close()
        await bob.close()
        await alice.close()

    sim.run(main(), time_limit=60)
    assert ready_at_disco, "the acceptor sent no disco probe: nothing was checked"
    assert ready_at_disco[0], f"a disco packet reached the dialer before HANDSHAKE_DONE: {ready_at_disco}"


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
