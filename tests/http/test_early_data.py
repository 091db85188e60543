"""TLS session resumption and 0-RTT over HTTP/3, on the simulator (exact virtual time).

A returning client resumes with the ticket the server sealed (no certificates, one
round trip less), sends safe requests as early data (the app sees ``Early-Data: 1``),
never sends a POST early (a POST that came early anyway is answered 425 and sent again
after the handshake), and a restarted server (same key) accepts the tickets of its
previous life, so its clients get their next response within 2 round trips.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from asgi_p2p import AuthenticationFailed, NetworkConfig, Node, SecretKey
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.sim import Host, Simulation

LATENCY = 0.020  # one way: RTT 40 ms
RTT = 2 * LATENCY
KEY = SecretKey.from_seed("resuming server")
CLIENT_KEY = SecretKey.from_seed("returning client")

#: every request the apps saw: (method, path, early-data header or None)
SEEN: list[tuple[str, str, str | None]] = []


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    headers = dict(scope["headers"])
    early = headers.get(b"early-data")
    SEEN.append((scope["method"], scope["path"], early.decode() if early is not None else None))
    body = f"{scope['method']} {scope['path']} early={early is not None}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _config() -> NetworkConfig:
    return NetworkConfig(keepalive_interval=0)


async def _start_server(host: Host, allow: Any = None) -> tuple[Node, H3Server]:
    node = await Node.bind(KEY, host="0.0.0.0", port=4433, config=_config(), network=host, allow=allow)
    server = H3Server(app, node)
    await server.startup()
    return node, server


async def _timed(client: httpx.AsyncClient, method: str, path: str, **kw: Any) -> tuple[httpx.Response, float]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    response = await client.request(method, path, **kw)
    return response, loop.time() - t0


def _pair(sim: Simulation) -> tuple[Host, Host]:
    server_host, client_host = sim.host("server"), sim.host("client")
    sim.link(server_host, client_host, latency=LATENCY, loss=0.0)
    return server_host, client_host


async def _drop_connections(client_node: Node) -> None:
    for conn in list(client_node.connections):
        conn.close(0, "test: come back later")
        await conn.wait_closed()
    await asyncio.sleep(0.5)


def test_returning_client_resumes_and_sends_get_as_early_data(sim: Simulation) -> None:
    server_host, client_host = _pair(sim)

    async def main() -> None:
        SEEN.clear()
        node, server = await _start_server(server_host)
        client_node = await Node.bind(CLIENT_KEY, host="0.0.0.0", config=_config(), network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as client:
            first, fresh = await _timed(client, "GET", "/first")
            assert first.text == "GET /first early=False"
            assert node.resumptions_accepted == 0
            await _drop_connections(client_node)

            again, resumed = await _timed(client, "GET", "/again")
            assert again.text == "GET /again early=True"
            assert node.resumptions_accepted == 1 and node.early_data_accepted == 1
            # 0-RTT: the request rides with the ClientHello, the answer with the server's flight
            assert resumed == pytest.approx(RTT, abs=0.005), (resumed, fresh)
            assert fresh >= 2 * RTT
            (conn,) = [c for c in node.connections if c.remote_node_id == client_node.node_id]
            assert conn.remote_node_id == CLIENT_KEY.node_id  # the identity the ticket carried
            # the next request on the resumed connection is ordinary 1-RTT data
            later, _ = await _timed(client, "GET", "/later")
            assert later.text == "GET /later early=False"
        assert SEEN == [("GET", "/first", None), ("GET", "/again", "1"), ("GET", "/later", None)]
        await client_node.close()
        await server.shutdown()
        await node.close()

    sim.run(main())


def test_post_waits_for_the_handshake_on_a_resumed_connection(sim: Simulation) -> None:
    server_host, client_host = _pair(sim)

    async def main() -> None:
        SEEN.clear()
        node, server = await _start_server(server_host)
        client_node = await Node.bind(CLIENT_KEY, host="0.0.0.0", config=_config(), network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as client:
            assert (await client.get("/warm")).status_code == 200
            await _drop_connections(client_node)
            posted, took = await _timed(client, "POST", "/upload", content=b"data")
            assert posted.text == "POST /upload early=False"
            assert node.resumptions_accepted == 1
            assert took == pytest.approx(2 * RTT, abs=0.005)  # resumed handshake, then the request
            assert server.requests_too_early == 0
        await client_node.close()
        await server.shutdown()
        await node.close()

    sim.run(main())
