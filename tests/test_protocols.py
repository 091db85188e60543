"""The concrete classes satisfy the Protocol classes users may code against."""

from __future__ import annotations

from asgi_p2p import MessageConnection, MessageListener, Node
from asgi_p2p.protocols import P2PConnection, P2PListener, P2PSystem
from tests.harness import Harness


def _static_checks(ep: Node, conn: MessageConnection, listener: MessageListener) -> None:
    # mypy --strict checks these assignments: a signature drift fails the type check
    system: P2PSystem = ep
    connection: P2PConnection = conn
    incoming: P2PListener = listener
    del system, connection, incoming


def test_nodes_and_connections_implement_the_protocols(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        a = await net.endpoint("alice")
        b = await net.endpoint("bob")
        system: P2PSystem = b
        assert isinstance(a, P2PSystem)
        conn = await system.connect(a.node_addr())
        assert isinstance(conn, P2PConnection)
        listener = a.listen()
        assert isinstance(listener, P2PListener)
        await conn.send(b"via the protocol types")
        incoming = await listener.accept()
        assert isinstance(incoming, P2PConnection)
        assert await incoming.recv() == b"via the protocol types"
        assert system.local_node_id == b.node_id

    net.run(scenario)
