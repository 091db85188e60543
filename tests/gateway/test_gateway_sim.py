"""The gateway's HTTP/3 side on the simulator, calling the :class:`Gateway` ASGI app directly
(the HTTP/1.1 side is uvicorn's, tested in test_gateway.py): the pooled connection to a peer
that restarted, and one packet per request on a kept-alive connection."""

from __future__ import annotations

import asyncio
from typing import Any

from asgi_p2p import NetworkConfig, Node, SecretKey
from asgi_p2p.gateway.gateway import Gateway, Routing
from asgi_p2p.http import H3Server
from asgi_p2p.sim import Host, Simulation

KEY = SecretKey.from_seed("restarting peer behind a gateway")
SEEN: list[str] = []


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    SEEN.append(f"{scope['method']} {scope['path']} {body.decode()}".rstrip())
    text = f"{scope['method']} {scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(text))]})
    await send({"type": "http.response.body", "body": text})


async def _start(host: Host) -> tuple[Node, H3Server]:
    node = await Node.bind(KEY, host="0.0.0.0", port=4433, config=NetworkConfig(keepalive_interval=0), network=host)
    server = H3Server(app, node)
    await server.startup()
    return node, server


async def call(gateway: Gateway, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request through the gateway's ASGI app: (status, body)."""
    headers = [(b"host", b"gw")] + ([(b"content-length", b"%d" % len(body))] if body else [])
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
    }
    sent: list[dict[str, Any]] = []
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await asyncio.Event().wait()  # never: the client stays
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await gateway(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_a_get_on_a_dead_pooled_connection_is_sent_again(sim: Simulation) -> None:
    server_host, gateway_host = sim.host("server"), sim.host("gateway")
    sim.link(server_host, gateway_host, latency=0.02, loss=0.0)

    async def main() -> None:
        SEEN.clear()
        node, _server = await _start(server_host)
        gw_node = await Node.bind(host="0.0.0.0", config=NetworkConfig(keepalive_interval=0), network=gateway_host)
        gateway = Gateway(gw_node, Routing(target=node.node_addr()))
        assert await call(gateway, "GET", "/first") == (200, b"GET /first")
        sim.crash(server_host)  # gone without a word; the gateway's connection looks alive
        sim.restart(server_host)
        node2, server2 = await _start(server_host)
        assert await call(gateway, "GET", "/again") == (200, b"GET /again")
        # a POST is not idempotent and its body was read: not sent twice, a 502 that says why
        sim.crash(server_host)
        sim.restart(server_host)
        node3, server3 = await _start(server_host)
        status, text = await call(gateway, "POST", "/upload", b"data")
        assert status == 502 and b"unreachable" in text and b"reset" in text, text
        assert SEEN == ["GET /first", "GET /again"]
        assert await call(gateway, "POST", "/upload", b"data") == (200, b"POST /upload")  # a new connection
        await gw_node.close()
        for server in (server2, server3):
            await server.shutdown()
        for n in (node, node2, node3):
            await n.close(timeout=0.1)

    sim.run(main())


def test_the_ack_of_a_response_rides_with_the_next_request(sim: Simulation) -> None:
    """No ACK-only packet after each response: the next request carries it; alone, it still
    leaves within the ACK delay we announced (25 ms)."""
    server_host, gateway_host = sim.host("server"), sim.host("gateway")
    sim.link(server_host, gateway_host, latency=0.02, loss=0.0)

    async def main() -> None:
        node, server = await _start(server_host)
        gw_node = await Node.bind(host="0.0.0.0", config=NetworkConfig(keepalive_interval=0), network=gateway_host)
        gateway = Gateway(gw_node, Routing(target=node.node_addr()))
        assert await call(gateway, "GET", "/dial") == (200, b"GET /dial")
        await asyncio.sleep(0.1)  # the handshake's last packets are over
        (conn,) = gw_node.connections
        for i in range(3):
            before = conn.datagrams_sent
            assert await call(gateway, "GET", f"/{i}") == (200, f"GET /{i}".encode())
            assert conn.datagrams_sent == before + 1  # the request (carrying the previous ACK)
            await asyncio.sleep(0.005)  # an HTTP/1.1 client reads the response and sends the next request
            assert conn.datagrams_sent == before + 1
        await asyncio.sleep(0.03)
        assert conn.datagrams_sent == before + 2  # no next request: the ACK left on its own
        await gw_node.close()
        await server.shutdown()
        await node.close()

    sim.run(main())
