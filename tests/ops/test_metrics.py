"""Metrics, health and per-peer limits over real UDP and TCP on 127.0.0.1, scraped over HTTP."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asgi_p2p import NetworkConfig, Node, SecretKey
from asgi_p2p.errors import InvalidConfiguration, P2PError
from asgi_p2p.http import H3Server, P2PTransport, WebSocketRejected, websocket_connect
from asgi_p2p.identity import NodeAddr
from asgi_p2p.ops import start_metrics_server
from asgi_p2p.ops.server import MetricsServer, parse_listen_address
from asgi_p2p.relay.server import RelayServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(metrics: MetricsServer) -> Samples:
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{metrics.url}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def get(metrics: MetricsServer, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"{metrics.url}{path}")


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        if scope["path"] == "/deny":
            await send({"type": "websocket.close"})
            return
        await send({"type": "websocket.accept"})
        scope["state"]["arrived"].put_nowait(None)
        message = await receive()
        await send({"type": "websocket.send", "text": message["text"]})
        await receive()  # websocket.disconnect
        return
    if scope["path"] == "/upload":
        while (message := await receive())["type"] == "http.request" and message.get("more_body"):
            pass
        if message["type"] == "http.disconnect":  # the server refused the body (413)
            return
    if scope["path"] == "/wait":
        scope["state"]["arrived"].put_nowait(None)
        await scope["state"]["release"].wait()
    status = 404 if scope["path"] == "/missing" else 200
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


async def startup_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``app`` with a lifespan startup that waits for ``startup_app.go`` and sets up the ``release`` event."""
    if scope["type"] == "lifespan":
        await receive()
        await startup_app.go.wait()  # type: ignore[attr-defined]
        scope["state"]["release"] = asyncio.Event()
        scope["state"]["arrived"] = asyncio.Queue()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await app(scope, receive, send)


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[Node, Node]]:
    server = await Node.bind(host="127.0.0.1")
    client = await Node.bind(host="127.0.0.1")
    try:
        yield server, client
    finally:
        await client.close()
        await server.close()


async def test_scrape_after_requests_counts_them_by_method_and_status(nodes: tuple[Node, Node]) -> None:
    server_node, client_node = nodes
    startup_app.go = asyncio.Event()  # type: ignore[attr-defined]
    startup_app.go.set()  # type: ignore[attr-defined]
    server = H3Server(startup_app, server_node)
    metrics = await start_metrics_server("127.0.0.1:0", endpoint=server_node, http=server)
    try:
        await server.startup()
        transport = P2PTransport(client_node)
        transport.add_addr(server_node.node_addr())
        async with httpx.AsyncClient(transport=transport) as client:
            base = f"https://{server_node.node_id}"
            for _ in range(3):
                assert (await client.get(f"{base}/")).status_code == 200
            assert (await client.get(f"{base}/missing")).status_code == 404
            assert (await client.post(f"{base}/", content=b"x" * 5000)).status_code == 200
            s = await scrape(metrics)
        assert value(s, "asgi_p2p_http_requests_total", method="GET", status="200") == 3
        assert value(s, "asgi_p2p_http_requests_total", method="GET", status="404") == 1
        assert value(s, "asgi_p2p_http_requests_total", method="POST", status="200") == 1
        assert value(s, "asgi_p2p_http_request_duration_seconds_count", method="GET") == 4
        assert 0 < value(s, "asgi_p2p_http_request_duration_seconds_sum", method="GET") < 10
        assert value(s, "asgi_p2p_http_requests_in_flight") == 0
        assert value(s, "asgi_p2p_http_refusals_total", status="429") == 0
        # the node: one direct connection with its RTT and datagram size, traffic both ways
        assert value(s, "asgi_p2p_connections", path="direct") == 1
        assert value(s, "asgi_p2p_connections", path="relay") == 0
        assert value(s, "asgi_p2p_connection_rtt_seconds_gcount", path="direct") == 1
        assert value(s, "asgi_p2p_connection_rtt_seconds_bucket", path="direct", le="+Inf") == 1
        assert 0 < value(s, "asgi_p2p_connection_rtt_seconds_gsum", path="direct") < 1
        assert value(s, "asgi_p2p_connection_datagram_size_bytes_gsum", path="direct") >= 1200
        assert value(s, "asgi_p2p_datagrams_total", direction="received", path="direct") >= 5
        assert value(s, "asgi_p2p_datagram_bytes_total", direction="received", path="direct") > 5000
        assert value(s, "asgi_p2p_datagrams_total", direction="sent", path="direct") >= 5
        assert value(s, "asgi_p2p_datagrams_total", direction="sent", path="relay") == 0
        assert value(s, "asgi_p2p_handshakes_total", outcome="accepted") == 1
        assert value(s, "asgi_p2p_handshakes_total", outcome="established") == 1
        assert value(s, "asgi_p2p_handshake_refusals_total", reason="not_allowed") == 0
        # the direct handshake proved the client's address: a live path without a disco probe
        assert value(s, "asgi_p2p_handshake_validated_paths_total") == 1
        assert value(s, "asgi_p2p_disco_rejected_total", reason="forged") == 0
        assert value(s, "process_cpu_seconds_total") > 0
        assert ("asgi_p2p_relay_connected", frozenset()) not in s  # no relay configured
    finally:
        await server.shutdown()
        await metrics.close()


async def test_readyz_follows_lifespan_startup_and_shutdown(nodes: tuple[Node, Node]) -> None:
    server_node, _ = nodes
    startup_app.go = asyncio.Event()  # type: ignore[attr-defined]
    server = H3Server(startup_app, server_node)
    metrics = await start_metrics_server(("127.0.0.1", 0), endpoint=server_node, http=server)
    try:
        starting = asyncio.ensure_future(server.startup())
        r = await get(metrics, "/readyz")
        assert r.status_code == 503
        assert r.text == "ok socket bound\nfailed lifespan started\n"
        assert (await get(metrics, "/healthz")).status_code == 200  # alive all along
        startup_app.go.set()  # type: ignore[attr-defined]
        await starting
        r = await get(metrics, "/readyz")
        assert (r.status_code, r.text) == (200, "ok socket bound\nok lifespan started\n")
        await server.shutdown()
        r = await get(metrics, "/readyz")
        assert r.status_code == 503 and "failed lifespan started" in r.text
        await server_node.close()
        r = await get(metrics, "/readyz")
        assert r.text == "failed socket bound\nfailed lifespan started\n"
        assert (await get(metrics, "/nothing")).status_code == 404
    finally:
        await metrics.close()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_readyz_waits_for_the_relay_and_relay_metrics_count_forwarding() -> None:
    relay_key = SecretKey.generate()
    port = _free_udp_port()
    url = f"p2p-relay://{relay_key.node_id}@127.0.0.1:{port}"
    a = await Node.bind(host="127.0.0.1", relay_url=url)
    b = await Node.bind(host="127.0.0.1", relay_url=url)
    relay: RelayServer | None = None
    node_metrics = await start_metrics_server("127.0.0.1:0", endpoint=a)
    relay_metrics: MetricsServer | None = None
    try:
        r = await get(node_metrics, "/readyz")
        assert r.status_code == 503 and f"failed relay {url} connected" in r.text
        assert value(await scrape(node_metrics), "asgi_p2p_relay_connected") == 0
        relay = await RelayServer.bind(relay_key, host="127.0.0.1", port=port)
        relay_metrics = await start_metrics_server("127.0.0.1:0", relay=relay)
        assert a.relay is not None and b.relay is not None
        await a.relay.wait_connected(20)
        await b.relay.wait_connected(20)
        r = await get(node_metrics, "/readyz")
        assert (r.status_code, r.text) == (200, f"ok socket bound\nok relay {url} connected\n")
        # a connection dialed through the relay only (no direct address)
        conn = await a.connect(NodeAddr(b.node_id, relay_url=url))
        await conn.send(b"through the relay")
        s = await scrape(relay_metrics)
        assert value(s, "asgi_p2p_relay_clients") == 2
        assert value(s, "asgi_p2p_relay_forwarded_packets_total") >= 2
        assert value(s, "asgi_p2p_relay_forwarded_bytes_total") >= 2 * 1200
        assert value(s, "asgi_p2p_relay_dropped_total", reason="rate_limited") == 0
        # the packets went on the relay's data plane (a's first one as a SEND frame, at least)
        assert value(s, "asgi_p2p_relay_plane_datagrams_total", event="received") >= 1
        assert value(s, "asgi_p2p_relay_plane_datagrams_total", event="dropped_unknown_token") == 0
        assert value(s, "asgi_p2p_relay_first_contacts_total", event="dropped_malformed") == 0
        assert value(s, "asgi_p2p_relay_client_connections_total", event="accepted") == 2
        assert value(s, "asgi_p2p_directory_records") == 0
        assert value(s, "asgi_p2p_handshakes_total", outcome="established") == 2  # the relay's own endpoint
        n = await scrape(node_metrics)
        assert value(n, "asgi_p2p_relay_connected") == 1
        assert value(n, "asgi_p2p_relay_link_events_total", event="connected") == 1
        assert value(n, "asgi_p2p_datagrams_total", direction="sent", path="relay") >= 1
        assert value(n, "asgi_p2p_datagram_bytes_total", direction="received", path="relay") > 0
        assert value(n, "asgi_p2p_connections", path="direct") + value(n, "asgi_p2p_connections", path="relay") == 1
    finally:
        await a.close()
        await b.close()
        await node_metrics.close()
        if relay_metrics is not None:
            await relay_metrics.close()
        if relay is not None:
            await relay.close()


async def test_429_per_peer_rate_with_retry_after_counted_and_logged(
    nodes: tuple[Node, Node], caplog: pytest.LogCaptureFixture
) -> None:
    server_node, client_node = nodes
    server = H3Server(app, server_node, limit_peer_rate=2.0, lifespan="off")  # bursts of 4
    metrics = await start_metrics_server("127.0.0.1:0", endpoint=server_node, http=server)
    try:
        await server.startup()
        transport = P2PTransport(client_node)
        transport.add_addr(server_node.node_addr())
        with caplog.at_level(logging.WARNING, logger="asgi_p2p.http"):
            async with httpx.AsyncClient(transport=transport) as client:
                responses = [await client.get(f"https://{server_node.node_id}/") for _ in range(6)]
        statuses = [r.status_code for r in responses]
        assert statuses[:4] == [200] * 4  # the burst
        assert 429 in statuses[4:]
        limited = [r for r in responses if r.status_code == 429]
        assert all(1 <= int(r.headers["retry-after"]) <= 2 for r in limited)
        assert server.requests_limited == len(limited)
        assert f"answering 429 to node {client_node.node_id}: more than 2 requests a second" in caplog.text
        s = await scrape(metrics)
        assert value(s, "asgi_p2p_http_refusals_total", status="429") == len(limited)
        assert value(s, "asgi_p2p_http_peer_limited_total") == len(limited)
        assert value(s, "asgi_p2p_http_requests_total", method="GET", status="200") == 6 - len(limited)
    finally:
        await server.shutdown()
        await metrics.close()


async def test_429_per_peer_concurrency_other_peers_still_served(nodes: tuple[Node, Node]) -> None:
    server_node, client_node = nodes
    startup_app.go = asyncio.Event()  # type: ignore[attr-defined]
    startup_app.go.set()  # type: ignore[attr-defined]
    server = H3Server(startup_app, server_node, limit_peer_concurrency=2)
    other = await Node.bind(host="127.0.0.1")
    try:
        await server.startup()
        release: asyncio.Event = server.lifespan.state["release"]
        clients = []
        for node in (client_node, other):
            transport = P2PTransport(node)
            transport.add_addr(server_node.node_addr())
            clients.append(httpx.AsyncClient(transport=transport))
        base = f"https://{server_node.node_id}"
        waiting = [asyncio.ensure_future(clients[0].get(f"{base}/wait")) for _ in range(2)]
        arrived: asyncio.Queue[None] = server.lifespan.state["arrived"]
        async with asyncio.timeout(10):
            for _ in waiting:
                await arrived.get()
        assert server.peer_requests[client_node.node_id] == 2
        third = await clients[0].get(f"{base}/")
        assert third.status_code == 429 and third.headers["retry-after"] == "1"
        assert (await clients[1].get(f"{base}/")).status_code == 200  # another peer is not limited
        release.set()
        assert [(await w).status_code for w in waiting] == [200, 200]
        assert (await clients[0].get(f"{base}/")).status_code == 200
        assert server.peer_requests == {}
        for c in clients:
            await c.aclose()
    finally:
        await server.shutdown()
        await other.close()


async def test_connections_per_node_id_are_limited_and_counted() -> None:
    server = await Node.bind(host="127.0.0.1", config=NetworkConfig(max_connections_per_node=1))
    key = SecretKey.generate()
    first = await Node.bind(key, host="127.0.0.1")
    second = await Node.bind(key, host="127.0.0.1")  # the same node id from another socket
    metrics = await start_metrics_server("127.0.0.1:0", endpoint=server)
    try:
        conn = await first.connect(server.node_addr())
        with pytest.raises(P2PError, match="max_connections_per_node=1"):
            c2 = await second.connect(server.node_addr())
            await c2.recv()  # the refusal may arrive just after the handshake
        s = await scrape(metrics)
        assert value(s, "asgi_p2p_handshake_refusals_total", reason="max_connections_per_node") == 1
        await conn.send(b"the first connection still works")
    finally:
        await metrics.close()
        for node in (first, second, server):
            await node.close()


def test_listen_address_is_loopback_unless_allowed() -> None:
    assert parse_listen_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen_address("[::1]:9464") == ("::1", 9464)
    assert parse_listen_address("localhost:0") == ("localhost", 0)
    for public in ("0.0.0.0:9464", "192.0.2.1:9464", "[::]:9464", "example.com:9464"):
        with pytest.raises(InvalidConfiguration, match=r"not a loopback address.*--metrics-allow-public"):
            parse_listen_address(public)
    assert parse_listen_address("0.0.0.0:9464", allow_public=True) == ("0.0.0.0", 9464)
    for bad, why in (
        ("9464", "HOST:PORT"),
        ("127.0.0.1:http", "port must be a number"),
        ("127.0.0.1:70000", "0..65535"),
        ("::1:9464", "brackets"),
    ):
        with pytest.raises(InvalidConfiguration, match=why):
            parse_listen_address(bad)


async def test_listener_answers_bad_requests_and_refuses_other_methods(nodes: tuple[Node, Node]) -> None:
    metrics = await start_metrics_server("127.0.0.1:0", endpoint=nodes[0])
    try:
        host, port = metrics.address
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 405 ")
        writer.close()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"nonsense\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
        writer.close()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"HEAD /healthz HTTP/1.1\r\n\r\n")
        answer = await reader.read()
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\n")  # no body
        writer.close()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /" + b"x" * 9000)  # an overlong head: closed without an answer
        assert await reader.read() == b""
        writer.close()
    finally:
        await metrics.close()


async def test_port_in_use_is_a_clear_error(nodes: tuple[Node, Node]) -> None:
    first = await start_metrics_server("127.0.0.1:0", endpoint=nodes[0])
    try:
        with pytest.raises(
            InvalidConfiguration, match=f"cannot listen on 127.0.0.1:{first.address[1]}: Address already in use"
        ):
            await start_metrics_server(f"127.0.0.1:{first.address[1]}", endpoint=nodes[0])
    finally:
        await first.close()


def test_limit_values_are_validated() -> None:
    with pytest.raises(InvalidConfiguration, match="limit_peer_rate must be"):
        H3Server(app, object(), limit_peer_rate=-1.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfiguration, match="limit_peer_concurrency must be"):
        H3Server(app, object(), limit_peer_concurrency=-3)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfiguration, match="max_connections_per_node must be"):
        NetworkConfig(max_connections_per_node=0)
    with pytest.raises(InvalidConfiguration, match="handshake_rate_per_address must be"):
        NetworkConfig(handshake_rate_per_address=float("inf"))


async def test_websockets_in_flight_and_body_refusals_are_counted(nodes: tuple[Node, Node]) -> None:
    server_node, client_node = nodes
    startup_app.go = asyncio.Event()  # type: ignore[attr-defined]
    startup_app.go.set()  # type: ignore[attr-defined]
    server = H3Server(startup_app, server_node, max_body_size=1000)
    metrics = await start_metrics_server("127.0.0.1:0", endpoint=server_node, http=server)
    try:
        await server.startup()
        arrived: asyncio.Queue[None] = server.lifespan.state["arrived"]
        addr = server_node.node_addr()
        async with websocket_connect(client_node, addr, "/chat") as ws:
            await asyncio.wait_for(arrived.get(), 10)
            s = await scrape(metrics)
            assert value(s, "asgi_p2p_http_websockets_in_flight") == 1
            assert value(s, "asgi_p2p_http_requests_in_flight") == 0
            await ws.send("echo")
            assert await ws.receive() == "echo"
        with pytest.raises(WebSocketRejected):
            async with websocket_connect(client_node, addr, "/deny"):
                pass
        transport = P2PTransport(client_node)
        transport.add_addr(addr)
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.post(f"https://{server_node.node_id}/", content=b"x" * 5000)
            assert r.status_code == 413

            async def streamed() -> AsyncIterator[bytes]:  # no content-length: the app starts reading
                for _ in range(5):
                    yield b"x" * 1000

            r = await client.post(f"https://{server_node.node_id}/upload", content=streamed())
            assert r.status_code == 413
        async with asyncio.timeout(10):
            while (s := await scrape(metrics))[("asgi_p2p_http_websockets_in_flight", frozenset())]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # the session's task ends just after the client saw the close
        assert value(s, "asgi_p2p_http_websockets_total", outcome="accepted") == 1
        assert value(s, "asgi_p2p_http_websockets_total", outcome="denied") == 1
        assert value(s, "asgi_p2p_http_refusals_total", status="413") == 1  # before the app
        assert value(s, "asgi_p2p_http_requests_total", method="POST", status="413") == 1  # while it read
        assert value(s, "asgi_p2p_http_refusals_total", status="431") == 0
    finally:
        await server.shutdown()
        await metrics.close()
