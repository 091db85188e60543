"""A client prepares its next resumed connection to a node while idle (real UDP): the dial
after a stateless reset, or of a returning client, then only writes the ClientHello."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from asgi_p2p import NetworkConfig, Node, SecretKey
from asgi_p2p.http import H3Server, P2PTransport

#: longer than the endpoint waits after a ticket arrived before preparing (0.25 s)
SETTLE = 0.6


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    early = dict(scope["headers"]).get(b"early-data") is not None
    body = f"{scope['path']} early={early}".encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]}
    )
    await send({"type": "http.response.body", "body": body})


async def _drop(node: Node) -> None:
    for conn in list(node.connections):
        conn.close(0, "test: come back later")
        await conn.wait_closed()


async def _returning_client() -> None:
    config = NetworkConfig(keepalive_interval=0)
    server_node = await Node.bind(SecretKey.from_seed("prepared server"), host="127.0.0.1", config=config)
    server = H3Server(app, server_node, lifespan="off")
    await server.startup()
    client_node = await Node.bind(host="127.0.0.1", config=config)
    try:
        transport = P2PTransport(client_node, addrs=[server_node.node_addr()])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{server_node.node_id}") as client:
            assert (await client.get("/first")).text == "/first early=False"
            await asyncio.sleep(SETTLE)  # the ticket came; the next connection is prepared meanwhile
            await _drop(client_node)
            assert client_node.prepared_dials_used == 0
            assert (await client.get("/again")).text == "/again early=True"  # resumed, 0-RTT
            assert client_node.prepared_dials_used == 1
            assert server_node.resumptions_accepted == 1 and server_node.early_data_accepted == 1

            # the connection prepared with a ticket the client no longer holds is not used
            await asyncio.sleep(SETTLE)
            await _drop(client_node)
            client_node.forget_session_tickets()
            assert (await client.get("/full")).text == "/full early=False"  # a full handshake
            assert client_node.prepared_dials_used == 1 and server_node.resumptions_accepted == 1
    finally:
        await client_node.close()
        await server.shutdown()
        await server_node.close()


def test_a_returning_client_dials_with_the_connection_it_prepared() -> None:
    asyncio.run(_returning_client())
