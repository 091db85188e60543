"""The access log: one line per request in uvicorn's shape, with the client's full node id.

Each case a user relies on: status and reason, the query string, refusals (413, 429,
431, 503), WebSocket accept / close / refusal, a response cut off by shutdown or by the
client (never logged as 200), and the record's fields for a JSON formatter.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from asgi_p2p.http import H3Server
from asgi_p2p.http.types import Receive, Scope, Send
from asgi_p2p.http.websocket import WebSocketRejected, websocket_connect

from .conftest import EndpointPair, Serve, wait_until

ACCESS = "asgi_p2p.http.access"


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    logging.getLogger(ACCESS).setLevel(logging.INFO)
    caplog.set_level(logging.INFO, logger=ACCESS)
    return caplog


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ACCESS]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        if scope["path"] == "/deny":
            await send({"type": "websocket.close"})
            return
        await send({"type": "websocket.accept"})
        msg = await receive()
        if msg["type"] == "websocket.receive":
            await send({"type": "websocket.close", "code": 1000})
        return
    if scope["path"] == "/hold":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass  # never completes: cut off by shutdown, or the client goes away
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 404 if scope["path"] == "/missing" else 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_request_lines_carry_the_full_node_id_query_and_reason(
    serve: Serve, access: pytest.LogCaptureFixture
) -> None:
    served = await serve(app, lifespan="off")
    client = str(served.pair.client.node_id)
    assert (await served.client.get("/items?page=2&q=a%20b")).status_code == 200
    assert (await served.client.post("/missing", content=b"x")).status_code == 404
    await wait_until(lambda: len(lines(access)) >= 2)
    assert lines(access) == [
        f'{client} - "GET /items?page=2&q=a%20b HTTP/3" 200 OK',
        f'{client} - "POST /missing HTTP/3" 404 Not Found',
    ]
    assert len(client) == 52
    record = next(r for r in access.records if r.name == ACCESS)
    assert (record.client, record.method, record.path, record.status, record.kind) == (  # type: ignore[attr-defined]
        client,
        "GET",
        "/items?page=2&q=a%20b",
        200,
        "http",
    )


async def test_refusals_are_logged_with_their_status(serve: Serve, access: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()

    async def holding(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/wait":
            await release.wait()
        await app(scope, receive, send)

    served = await serve(holding, lifespan="off", max_body_size=10, max_header_size=4096, limit_concurrency=1)
    client = str(served.pair.client.node_id)
    assert (await served.client.post("/up?x=1", content=b"y" * 100)).status_code == 413
    assert (await served.client.get("/big", headers={"x-big": "a" * 5000})).status_code == 431
    held = asyncio.create_task(served.client.get("/wait"))
    await wait_until(lambda: served.server.active_requests >= 1)
    assert (await served.client.get("/busy")).status_code == 503
    release.set()
    assert (await held).status_code == 200
    await wait_until(lambda: len(lines(access)) >= 4)
    assert lines(access) == [
        f'{client} - "POST /up?x=1 HTTP/3" 413 Content Too Large',
        f'{client} - "GET /big HTTP/3" 431 Request Header Fields Too Large',
        f'{client} - "GET /busy HTTP/3" 503 Service Unavailable',
        f'{client} - "GET /wait HTTP/3" 200 OK',
    ]


async def test_a_per_peer_429_is_logged_like_the_other_refusals(serve: Serve, access: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()

    async def holding(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/wait":
            await release.wait()
        await app(scope, receive, send)

    served = await serve(holding, lifespan="off", limit_peer_concurrency=1)
    client = str(served.pair.client.node_id)
    held = asyncio.create_task(served.client.get("/wait"))
    await wait_until(lambda: served.server.active_requests >= 1)
    limited = await served.client.get("/more?page=2")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    release.set()
    assert (await held).status_code == 200
    await wait_until(lambda: len(lines(access)) >= 2)
    assert lines(access) == [
        f'{client} - "GET /more?page=2 HTTP/3" 429 Too Many Requests',
        f'{client} - "GET /wait HTTP/3" 200 OK',
    ]
    assert served.server.requests_limited == 1


async def test_a_response_cut_by_shutdown_is_not_logged_as_200(
    endpoint_pair: EndpointPair, access: pytest.LogCaptureFixture
) -> None:
    from asgi_p2p.http import P2PTransport

    server = H3Server(app, endpoint_pair.server, lifespan="off", timeout_graceful_shutdown=0.2)
    await server.startup()
    transport = P2PTransport(endpoint_pair.client)
    transport.add_addr(endpoint_pair.server.node_addr())
    import httpx

    async with httpx.AsyncClient(transport=transport, base_url=f"https://{endpoint_pair.server.node_id}") as c:
        async with c.stream("GET", "/hold?n=1") as r:
            assert r.status_code == 200
            await server.shutdown()
    client = str(endpoint_pair.client.node_id)
    assert lines(access) == [f'{client} - "GET /hold?n=1 HTTP/3" - cut off by shutdown (after 200 OK)']
    record = next(r for r in access.records if r.name == ACCESS)
    assert record.status is None and record.outcome == "cut off by shutdown"  # type: ignore[attr-defined]


async def test_websocket_accept_close_and_refusal_lines(serve: Serve, access: pytest.LogCaptureFixture) -> None:
    served = await serve(app, lifespan="off")
    pair = served.pair
    client = str(pair.client.node_id)
    async with websocket_connect(pair.client, pair.server.node_addr(), "/chat?room=1") as wsock:
        await wsock.send("hi")
        with pytest.raises(Exception):  # noqa: B017 - the server closes after one message
            await wsock.receive()
    with pytest.raises(WebSocketRejected):
        async with websocket_connect(pair.client, pair.server.node_addr(), "/deny"):
            pass
    await wait_until(lambda: len(lines(access)) >= 3)
    assert lines(access) == [
        f'{client} - "WebSocket /chat?room=1" [accepted]',
        f'{client} - "WebSocket /chat?room=1" [closed 1000]',
        f'{client} - "WebSocket /deny" 403 Forbidden',
    ]


async def test_the_access_log_costs_nothing_when_disabled(serve: Serve, access: pytest.LogCaptureFixture) -> None:
    logging.getLogger(ACCESS).disabled = True
    try:
        served = await serve(app, lifespan="off", max_header_size=4096)
        assert (await served.client.get("/")).status_code == 200
        assert (await served.client.get("/big", headers={"x-big": "a" * 5000})).status_code == 431
    finally:
        logging.getLogger(ACCESS).disabled = False
    assert lines(access) == []


async def test_a_response_the_client_abandons_is_not_logged_as_200(
    serve: Serve, access: pytest.LogCaptureFixture
) -> None:
    served = await serve(app, lifespan="off")
    async with served.client.stream("GET", "/hold") as r:
        assert r.status_code == 200
        async for _ in r.aiter_raw():
            break  # the first bytes, then close the response before it completes
    await wait_until(lambda: len(lines(access)) >= 1)
    client = str(served.pair.client.node_id)
    [line] = lines(access)
    assert line == f'{client} - "GET /hold HTTP/3" - client stopped reading the response (after 200 OK)'
