"""A fresh client's first request leaves with its TLS Finished (issue 11, item 2).

On the simulator (exact virtual time): the first response takes two round trips from the
dial (handshake, then request with the Finished), not two and a half (waiting for
HANDSHAKE_DONE first); a server whose allow-list refuses the client makes that request
fail at once with an error that says so, and leaves no connection behind on either side.
"""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from asgi_p2p import NetworkConfig, Node, SecretKey
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.sim import Host, Simulation

LATENCY = 0.020  # one way: RTT 40 ms
RTT = 2 * LATENCY
CONFIG = NetworkConfig(keepalive_interval=0)


async def hello_app(scope: dict[str, object], receive: object, send: object) -> None:
    assert scope["type"] == "http"
    body = b"hello"
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]}
    )  # type: ignore[operator]
    await send({"type": "http.response.body", "body": body})  # type: ignore[operator]


def _hosts(sim: Simulation) -> tuple[Host, Host]:
    server_host, client_host = sim.host("server"), sim.host("client")
    sim.link(server_host, client_host, latency=LATENCY, loss=0.0)
    return server_host, client_host


async def _server(host: Host, allow: list[object] | None) -> tuple[Node, H3Server]:
    node = await Node.bind(
        SecretKey.from_seed("server"),
        host="0.0.0.0",
        port=4433,
        config=CONFIG,
        network=host,
        allow=allow,  # type: ignore[arg-type]
        rng=random.Random(1),
    )
    server = H3Server(hello_app, node)  # type: ignore[arg-type]
    await server.startup()
    return node, server


async def _client(host: Host) -> Node:
    return await Node.bind(
        SecretKey.from_seed("client"), host="0.0.0.0", port=5555, config=CONFIG, network=host, rng=random.Random(2)
    )


def test_the_first_response_takes_two_round_trips_from_a_fresh_client(sim: Simulation) -> None:
    server_host, client_host = _hosts(sim)

    async def main() -> None:
        node, server = await _server(server_host, None)
        client = await _client(client_host)
        transport = P2PTransport(client, addrs=[node.node_addr()])
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as http:
            t0 = loop.time()
            response = await http.get("/")
            took = loop.time() - t0
            assert response.status_code == 200 and response.content == b"hello"
            # Initial -> server's flight (1 RTT), Finished + request -> response (1 RTT); waiting for
            # HANDSHAKE_DONE before the request would add half a round trip
            assert 2 * RTT - 1e-6 <= took < 2.25 * RTT, took
            (conn,) = client.connections
            assert conn.is_confirmed
        await server.shutdown()
        await client.close()
        await node.close()

    sim.run(main(), time_limit=30)


def test_a_client_the_allow_list_refuses_gets_a_clear_error_on_its_first_request(sim: Simulation) -> None:
    """The request went out with the Finished, before the server checked the client's
    certificate against its allow-list: it fails at once with ConnectError naming the refusal,
    and neither side keeps a connection (no hang, no half-open connection)."""
    server_host, client_host = _hosts(sim)

    async def main() -> None:
        other = SecretKey.from_seed("someone else").node_id
        node, server = await _server(server_host, [other])
        client = await _client(client_host)
        transport = P2PTransport(client, addrs=[node.node_addr()])
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}", timeout=10) as http:
            for _attempt in range(2):  # and again: a new connection, refused the same way
                t0 = loop.time()
                with pytest.raises(httpx.ConnectError, match=r"refused.*not allowed to connect"):
                    await http.get("/")
                assert loop.time() - t0 < 3 * RTT
                await asyncio.sleep(0.5)
                assert client.connection_count == 0
                assert node.connection_count == 0
            assert node.handshaking == 0
        await server.shutdown()
        await client.close()
        await node.close()

    sim.run(main(), time_limit=30)
