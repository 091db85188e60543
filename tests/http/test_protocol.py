"""HTTP/3 protocol behaviour with raw ASGI apps: trailers, 1xx, limits, lifespan, shutdown, errors,
and the regressions of hypercorn 0.18 listed in FACTS.md."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from aioquic.h3.events import HeadersReceived

from asgi_p2p.http import H3Server, LifespanFailed, P2PTransport, SyncP2PTransport
from asgi_p2p.http.types import Message, Receive, Scope, Send

from .conftest import EndpointPair, Serve, wait_until


async def _drain_body(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return bytes(body)
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return bytes(body)


def _simple(status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await _drain_body(receive)
        await send({"type": "http.response.start", "status": status, "headers": headers or []})
        await send({"type": "http.response.body", "body": body})

    return app


async def test_trailers(serve: Serve) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert "http.response.trailers" in scope["extensions"]
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"trailer", b"x-checksum")], "trailers": True}
        )
        await send({"type": "http.response.body", "body": b"part1", "more_body": True})
        await send({"type": "http.response.body", "body": b"part2", "more_body": False})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")], "more_trailers": False})

    served = await serve(app, lifespan="off")
    r = await asyncio.wait_for(served.client.get("/"), 5)  # hypercorn: trailers hang
    assert r.content == b"part1part2"
    assert r.extensions["trailers"] == [(b"x-checksum", b"abc")]


async def test_early_hints_then_final(serve: Serve) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.early_hint", "links": [b"</style.css>; rel=preload; as=style"]})
        await send({"type": "http.response.informational", "status": 100, "headers": []})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"final"})

    served = await serve(app, lifespan="off")
    r = await served.client.get("/")
    assert r.status_code == 200 and r.text == "final"
    interim = r.extensions["interim"]
    assert interim[0] == (103, [(b"link", b"</style.css>; rel=preload; as=style")])
    assert interim[1][0] == 100


async def test_head_204_304_with_content_length_keep_connection(serve: Serve) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        status = int(scope["path"].strip("/") or 200)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", b"11"), (b"etag", b'"x"')],
            }
        )
        await send({"type": "http.response.body", "body": b"hello world"})

    served = await serve(app, lifespan="off")
    r = await served.client.head("/")
    assert r.status_code == 200 and r.content == b"" and r.headers["etag"] == '"x"'
    assert (await served.client.get("/304")).status_code == 304
    assert (await served.client.get("/204")).status_code == 204
    r = await served.client.get("/")
    assert r.text == "hello world" and r.headers["content-length"] == "11"
    assert len([c for c in served.pair.client.connections if c.alpn == "h3"]) == 1


async def test_hop_by_hop_and_invalid_headers_are_dropped(serve: Serve) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"Connection", b"close"),
                    (b"keep-alive", b"5"),
                    (b"transfer-encoding", b"chunked"),
                    (b"X-Upper", b" padded "),
                    (b"x-bad", b"a\r\nb"),
                    (b"bad name", b"v"),
                    (b"upgrade", b"h2c"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"err"})

    served = await serve(app, lifespan="off")
    r = await served.client.get("/")
    assert r.status_code == 500
    assert "connection" not in r.headers and "keep-alive" not in r.headers
    assert "transfer-encoding" not in r.headers and "upgrade" not in r.headers
    assert r.headers["x-upper"] == "padded"
    assert "x-bad" not in r.headers
    assert (await served.client.get("/")).text == "err"


async def test_content_length_mismatch_resets_only_that_stream(serve: Serve, caplog: Any) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/short":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
            await send({"type": "http.response.body", "body": b"12345"})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    served = await serve(app, lifespan="off")
    with caplog.at_level(logging.CRITICAL, "asgi_p2p.http"), pytest.raises(httpx.RemoteProtocolError):
        await served.client.get("/short")
    assert (await served.client.get("/ok")).text == "ok"


async def test_app_returning_without_response(serve: Serve, caplog: Any) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/started":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"x", "more_body": True})

    served = await serve(app, lifespan="off")
    with caplog.at_level(logging.CRITICAL, "asgi_p2p.http"):
        assert (await served.client.get("/nothing")).status_code == 500
        with pytest.raises(httpx.RemoteProtocolError):
            await served.client.get("/started")


# -- limits ------------------------------------------------------------------------------------


async def test_header_size_limit_431(serve: Serve) -> None:
    served = await serve(_simple(200, b"ok"), lifespan="off", max_header_size=4096)
    r = await served.client.get("/", headers={"x-big": "a" * 5000})
    assert r.status_code == 431
    assert (await served.client.get("/")).text == "ok"


async def test_body_size_limit_413(serve: Serve) -> None:
    served = await serve(_simple(200, b"ok"), lifespan="off", max_body_size=100_000)
    r = await served.client.post("/", content=b"x" * 200_000)  # content-length known: refused at once
    assert r.status_code == 413

    async def stream() -> Any:
        for _ in range(50):
            yield b"y" * 10_000

    r = await served.client.post("/", content=stream())  # no content-length: refused while streaming
    assert r.status_code == 413
    assert (await served.client.post("/", content=b"z" * 1000)).text == "ok"


@pytest.mark.parametrize("value", ["+5", "1_0", "5, 5", "5,6", "0x10", "05x", "9" * 5000])
async def test_malformed_content_length_is_400_and_the_connection_stays(serve: Serve, value: str) -> None:
    """RFC 9110 section 8.6: digits only.  aioquic takes ``+5`` and ``1_0`` (``int()``) and closes
    the whole connection for ``5, 5`` or ``0x10``; the server answers each request 400 instead."""
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen.append(scope)
        await _simple(200, b"ok")(scope, receive, send)

    served = await serve(app, lifespan="off")
    assert (await served.client.get("/")).text == "ok"
    conns = len(served.pair.client.connections)

    async def body() -> Any:
        yield b"hello"

    r = await served.client.post("/", content=body(), headers={"content-length": value})
    assert r.status_code == 400
    assert "content-length" in r.text
    assert len(seen) == 1  # the app never saw it
    assert (await served.client.get("/")).text == "ok"  # same connection, still open
    assert len(served.pair.client.connections) == conns
    assert served.server.requests_rejected == 1


# -- request header and body timeouts -------------------------------------------------------


def _record_client_h3(served: Any) -> tuple[Any, list[Any]]:
    """The client's connection to the server, and every H3 event its handler sees from now on."""
    (cconn,) = served.pair.client.connections
    handler = cconn.handler
    seen: list[Any] = []
    original = handler._h3_event

    def record(event: Any) -> None:
        seen.append(event)
        original(event)

    handler._h3_event = record
    return cconn, seen


def _status_on(seen: list[Any], sid: int) -> bytes | None:
    for event in seen:
        if isinstance(event, HeadersReceived) and event.stream_id == sid:
            return dict(event.headers)[b":status"]
    return None


async def test_unfinished_header_section_is_answered_408(serve: Serve) -> None:
    served = await serve(_simple(200, b"ok"), lifespan="off", request_header_timeout=0.5)
    assert (await served.client.get("/")).text == "ok"
    cconn, seen = _record_client_h3(served)
    loop = asyncio.get_running_loop()
    sid = cconn.quic.get_next_available_stream_id()
    cconn.quic.send_stream_data(sid, b"\x01\x40\x64" + b"x" * 5)  # a HEADERS frame of 100 bytes: 5 of them
    cconn.schedule_transmit()
    started = loop.time()
    await wait_until(lambda: _status_on(seen, sid) is not None, timeout=10)
    assert _status_on(seen, sid) == b"408"
    assert loop.time() - started >= 0.5 - 0.05
    assert served.server.requests_timed_out == 1
    (sconn,) = served.server._connections
    assert sid not in sconn.streams  # forgotten: the server stopped reading it
    assert (await served.client.get("/")).text == "ok"  # the connection serves on


@pytest.mark.sim_only("waits minutes of virtual time")
@pytest.mark.parametrize(("timeout", "expect"), [(None, 10.0), (0, None)], ids=["default", "off"])
async def test_header_timeout_default_and_off(serve: Serve, timeout: float | None, expect: float | None) -> None:
    options = {} if timeout is None else {"request_header_timeout": timeout}
    served = await serve(_simple(200, b"ok"), lifespan="off", **options)
    assert (await served.client.get("/")).text == "ok"
    cconn, seen = _record_client_h3(served)
    loop = asyncio.get_running_loop()
    sid = cconn.quic.get_next_available_stream_id()
    cconn.quic.send_stream_data(sid, b"\x01\x40\x64")
    cconn.schedule_transmit()
    started = loop.time()
    if expect is None:
        await asyncio.sleep(300)
        assert _status_on(seen, sid) is None and served.server.requests_timed_out == 0
        cconn.quic.reset_stream(sid, 0x10C)
    else:
        await wait_until(lambda: _status_on(seen, sid) is not None, timeout=60)
        assert _status_on(seen, sid) == b"408"
        assert expect - 0.1 <= loop.time() - started <= expect + 1.0


async def test_stalled_request_body_is_answered_408(serve: Serve) -> None:
    got: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while True:
            msg = await receive()
            got.append(msg)
            if msg["type"] == "http.disconnect" or not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    served = await serve(app, lifespan="off", request_body_timeout=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def stalling_body() -> Any:
        yield b"a" * 10
        await wait_until(lambda: served.server.requests_timed_out == 1, timeout=10)
        yield b"b"

    r = await served.client.post("/", content=stalling_body())
    assert r.status_code == 408 and r.text == "Request Timeout"
    assert loop.time() - started >= 0.5 - 0.05
    assert got[0] == {"type": "http.request", "body": b"a" * 10, "more_body": True}
    assert got[-1] == {"type": "http.disconnect"}
    assert (await served.client.post("/", content=b"whole")).text == "ok"
    assert served.server.requests_timed_out == 1


async def test_body_timeout_spares_apps_waiting_for_disconnect_and_slow_readers(serve: Serve) -> None:
    """The timeout counts only while the app waits for body the peer has yet to send: not after
    the request ended (an app watching for http.disconnect while it streams), nor while the app
    does not read (then flow control, not the peer, holds the body back)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await asyncio.sleep(0.6)  # a slow reader
        await _drain_body(receive)
        watcher = asyncio.ensure_future(receive())  # waits for http.disconnect
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(3):
            await asyncio.sleep(0.3)
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
        assert not watcher.done()
        watcher.cancel()
        await send({"type": "http.response.body", "body": b"end"})

    served = await serve(app, lifespan="off", request_body_timeout=0.25)
    r = await served.client.post("/", content=b"y" * 100_000)
    assert r.status_code == 200 and r.text == "xxxend"
    assert served.server.requests_timed_out == 0


def test_request_timeouts_are_validated() -> None:
    from asgi_p2p import InvalidConfiguration

    endpoint: Any = object()
    for name in ("request_header_timeout", "request_body_timeout"):
        for bad in (float("nan"), float("inf"), -1.0, 1e9):
            with pytest.raises(InvalidConfiguration, match=f"{name} must be 0 \\(off\\) or a finite number"):
                H3Server(_simple(200, b""), endpoint, **{name: bad})


async def test_limit_concurrency_503(serve: Serve) -> None:
    release = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/hold":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    served = await serve(app, lifespan="off", limit_concurrency=2)
    held = [asyncio.create_task(served.client.get("/hold")) for _ in range(2)]
    await wait_until(lambda: served.server.active_requests >= 2)
    r = await served.client.get("/")
    assert r.status_code == 503
    release.set()
    assert [(await t).text for t in held] == ["ok", "ok"]
    assert (await served.client.get("/")).text == "ok"


# -- lifespan ------------------------------------------------------------------------------------


async def test_lifespan_startup_failure(endpoint_pair: EndpointPair) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})

    server = H3Server(app, endpoint_pair.server)
    with pytest.raises(LifespanFailed, match="database unreachable"):
        await server.startup()

    async def raising(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("no lifespan here")

    with pytest.raises(LifespanFailed):
        await H3Server(raising, endpoint_pair.server, lifespan="on").startup()
    # auto: an app that does not speak lifespan is served anyway
    auto = H3Server(raising, endpoint_pair.server, lifespan="auto")
    await auto.startup()
    await auto.shutdown()


async def test_lifespan_off_never_calls_lifespan(serve: Serve) -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    served = await serve(app, lifespan="off")
    assert (await served.client.get("/")).text == "ok"
    assert seen == ["http"]


# -- graceful shutdown -------------------------------------------------------------------------


async def test_graceful_shutdown_goaway(serve: Serve) -> None:
    started = asyncio.Event()
    finished: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            finished.append("lifespan-shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/slow":
            started.set()
            await asyncio.sleep(0.3)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})
        finished.append(scope["path"])

    served = await serve(app, timeout_graceful_shutdown=5)
    assert (await served.client.get("/warm")).text == "/warm"
    slow = asyncio.create_task(served.client.get("/slow"))
    await started.wait()
    shutdown = asyncio.create_task(served.server.shutdown())
    # the client learns of the GOAWAY and new requests are refused promptly
    cc = next(c.handler for c in served.pair.client.connections if c.alpn == "h3")
    for _ in range(200):
        if getattr(cc, "goaway_id", None) is not None:
            break
        await asyncio.sleep(0.005)
    assert getattr(cc, "goaway_id", None) is not None
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(httpx.ConnectError):
        await served.client.get("/new")
    assert loop.time() - t0 < 1.0
    # the in-flight request completes
    assert (await slow).text == "/slow"
    await shutdown
    assert finished == ["/warm", "/slow", "lifespan-shutdown"]
    # and the node refuses new HTTP/3 connections
    with pytest.raises(httpx.ConnectError):
        await served.client.get("/after")


async def test_shutdown_timeout_cancels_stuck_requests(serve: Serve) -> None:
    cancelled = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    served = await serve(app, lifespan="off", timeout_graceful_shutdown=0.2)
    req = asyncio.create_task(served.client.get("/"))
    await wait_until(lambda: served.server.active_requests > 0)
    await served.server.shutdown()
    assert cancelled.is_set()
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        await req


# -- client errors --------------------------------------------------------------------------------


async def test_peer_without_http_server_is_refused(endpoint_pair: EndpointPair) -> None:
    transport = P2PTransport(endpoint_pair.client)
    transport.add_addr(endpoint_pair.server.node_addr())
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"https://{endpoint_pair.server.node_id}/")


async def test_unknown_node_and_bad_host(endpoint_pair: EndpointPair) -> None:
    async with httpx.AsyncClient(transport=P2PTransport(endpoint_pair.client)) as client:
        with pytest.raises(httpx.ConnectError, match="no address"):
            await client.get(f"https://{endpoint_pair.server.node_id}/")
        with pytest.raises(httpx.ConnectError, match="not a node id"):
            await client.get("https://example.com/")


async def test_connect_timeout_to_silent_node(endpoint_pair: EndpointPair) -> None:
    silent = await endpoint_pair.new_endpoint()
    addr = silent.node_addr()
    await silent.close()
    transport = P2PTransport(endpoint_pair.client, addrs=[addr])
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5, connect=0.3)) as client:
        with pytest.raises(httpx.ConnectTimeout):
            await client.get(f"https://{addr.node_id}/")


async def test_connection_loss_mid_response_raises_read_error(serve: Serve) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await asyncio.sleep(30)

    served = await serve(app, lifespan="off", timeout_graceful_shutdown=0.1)
    async with served.client.stream("GET", "/") as r:
        it = r.aiter_bytes()
        assert await it.__anext__() == b"x"
        for conn in served.pair.server.connections:
            conn.close(0x100, "gone")
        # At 5% loss (simulator) the CONNECTION_CLOSE itself may be lost: then the client
        # learns of it by its idle timeout or its read timeout (both 30 s of virtual time).
        if served.pair.network == "udp":
            errors: tuple[type[Exception], ...] = (httpx.ReadError, httpx.RemoteProtocolError)
        else:
            errors = (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout)
        with pytest.raises(errors):
            await asyncio.wait_for(it.__anext__(), 5 if served.pair.network == "udp" else 60)


# -- hypercorn regressions ---------------------------------------------------------------------------


async def test_cancelled_requests_do_not_stop_the_listener(serve: Serve) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/hang":
            await asyncio.sleep(10)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    served = await serve(app, lifespan="off", timeout_graceful_shutdown=0.1)
    for _ in range(5):
        task = asyncio.create_task(served.client.get("/hang"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (await served.client.get("/")).text == "ok"
    other = await served.new_client()
    assert (await other.get("/")).text == "ok"
    await other.aclose()


async def test_slow_upload_reader_does_not_delay_other_connections(serve: Serve) -> None:
    release = asyncio.Event()
    stalled = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/upload":
            stalled.set()
            await release.wait()  # reads nothing until released: the uploader must be paced
            body = await _drain_body(receive)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": str(len(body)).encode()})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"pong"})

    served = await serve(app, lifespan="off")
    size = 2 * 1024 * 1024  # 8x the stream receive window
    upload = asyncio.create_task(served.client.post("/upload", content=b"u" * size))
    other = await served.new_client()
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(stalled.wait(), 10)
    t0 = loop.time()
    for _ in range(20):
        assert (await other.get("/ping")).text == "pong"
    elapsed = loop.time() - t0
    assert not upload.done()
    release.set()
    assert (await upload).text == str(size)
    if served.pair.network == "sim":  # virtual time: a deterministic bound
        assert elapsed < 2.0, f"20 requests on another connection took {elapsed:.2f}s while an upload was stalled"
    await other.aclose()


async def test_stalled_streams_do_not_delay_others_on_the_same_connection(serve: Serve) -> None:
    """A response nobody reads and an upload nobody reads each hold their stream's flow-control
    window; requests on the same connection still go through."""
    release = asyncio.Event()
    upload_started = asyncio.Event()
    size = 1024 * 1024  # 4x the stream windows: both streams stall on flow control

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/upload":
            upload_started.set()
            await release.wait()
            body = await _drain_body(receive)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": str(len(body)).encode()})
            return
        await _drain_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/big":
            piece = b"b" * 65536
            for _ in range(size // len(piece)):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    served = await serve(app, lifespan="off")
    client = served.client
    async with client.stream("GET", "/big") as big:  # headers are in; the body is not read yet
        upload = asyncio.create_task(client.post("/upload", content=b"u" * size))
        await asyncio.wait_for(upload_started.wait(), 10)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        rs = await asyncio.gather(*(client.get(f"/r{i}") for i in range(50)))
        elapsed = loop.time() - t0
        assert [r.text for r in rs] == [f"/r{i}" for i in range(50)]
        assert not upload.done()
        assert len([c for c in served.pair.client.connections if c.alpn == "h3"]) == 1
        release.set()
        assert (await upload).text == str(size)
        body = await big.aread()
    assert len(body) == size + len(b"/big")
    if served.pair.network == "sim":  # virtual time: a deterministic bound
        assert elapsed < 2.0, f"50 requests took {elapsed:.2f} virtual seconds next to two stalled streams"


# Not on the simulator: SyncP2PTransport runs its own event loop in a background thread and binds
# a real UDP socket, which the simulator's single virtual-time loop (no real I/O) cannot drive.
@pytest.mark.real_network("SyncP2PTransport owns a real event loop thread and a real UDP socket")
async def test_sync_transport(serve: Serve) -> None:
    served = await serve(_simple(200, b"sync ok", [(b"x-a", b"1")]), lifespan="off")
    addr = served.pair.server.node_addr()

    def blocking() -> tuple[int, str, str]:
        transport = SyncP2PTransport(addrs=[addr])
        try:
            with httpx.Client(transport=transport) as client:
                r = client.post(f"https://{addr.node_id}/", content=b"abc")
                with client.stream("GET", f"https://{addr.node_id}/") as s:
                    streamed = b"".join(s.iter_bytes()).decode()
                return r.status_code, r.text, streamed
        finally:
            transport.close()

    assert await asyncio.to_thread(blocking) == (200, "sync ok", "sync ok")


async def test_request_body_cancel_mid_upload_gives_disconnect(serve: Serve) -> None:
    got: list[Message] = []
    done = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            got.append({"type": msg["type"], "n": len(msg.get("body", b""))})
            if msg["type"] == "http.disconnect":
                done.set()
                return

    served = await serve(app, lifespan="off")
    first_chunk = asyncio.Event()

    async def body() -> Any:
        yield b"a" * 1000
        first_chunk.set()
        await asyncio.sleep(30)
        yield b"b"

    task = asyncio.create_task(served.client.post("/", content=body()))
    await first_chunk.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.wait_for(done.wait(), 5)
    assert got[-1]["type"] == "http.disconnect"
    assert got[0] == {"type": "http.request", "n": 1000}


async def test_plain_connect_is_refused_with_501(serve: Serve) -> None:
    served = await serve(_simple(200, b"ok"), lifespan="off")
    r = await served.client.request("CONNECT", "/")
    assert r.status_code == 501
    assert (await served.client.get("/")).text == "ok"


async def test_no_per_request_state_left_behind(serve: Serve) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/boom":
            raise RuntimeError("x")
        if scope["path"] == "/partial":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            raise RuntimeError("y")
        await _drain_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    served = await serve(app, lifespan="off")
    logging.getLogger("asgi_p2p.http").setLevel(logging.CRITICAL)
    try:
        for i in range(100):
            path = ("/", "/boom", "/partial", "/post")[i % 4]
            if path == "/post":
                await served.client.post(path, content=b"b" * 5000)
            elif path == "/partial":
                with pytest.raises(httpx.RemoteProtocolError):
                    await served.client.get(path)
            else:
                await served.client.get(path)
    finally:
        logging.getLogger("asgi_p2p.http").setLevel(logging.NOTSET)
    await asyncio.sleep(0.1)
    sconn = next(iter(served.server._connections))
    cconn = next(c for c in served.pair.client.connections if c.alpn == "h3")
    assert sconn.streams == {}
    assert cconn.handler is not None and cconn.handler.streams == {}  # type: ignore[attr-defined]
    assert sconn.h3.stream_count <= 4  # control and QPACK streams only
    assert cconn.handler.h3.stream_count <= 4  # type: ignore[attr-defined]
    assert sconn.conn.receive_windows[1] == {} and cconn.receive_windows[1] == {}


@pytest.mark.sim_only("it drops one chosen packet, which only the simulated network can do")
async def test_request_arriving_after_a_later_stream_is_served(serve: Serve) -> None:
    """Streams open in id order but their first packets can arrive in any order (loss,
    retransmission): a request whose first packet is lost must still be served."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await _drain_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    served = await serve(app, lifespan="off")
    pair = served.pair
    sim = pair.simulation
    client_host, server_host = pair.host(pair.client), pair.host(pair.server)
    sim.link(client_host, server_host, loss=0.0)  # only the packet dropped below is lost
    assert (await served.client.get("/warm-up")).text == "/warm-up"

    def dropped() -> int:
        return int(sim.stats()["drops"].get("partition", 0))

    before = dropped()
    sim.partition(client_host, server_host, oneway=True)
    first = asyncio.create_task(served.client.get("/first"))
    await wait_until(lambda: dropped() > before)  # the packet opening the first stream is gone
    sim.heal()
    second = await served.client.get("/second")  # the next stream id reaches the server first
    assert second.text == "/second"
    assert not first.done()
    r = await asyncio.wait_for(first, 5)  # retransmitted after the loss is detected
    assert r.text == "/first"
    assert r.extensions["p2p_stream_id"] < second.extensions["p2p_stream_id"]


async def test_trailers_announced_but_none_sent_end_the_stream(serve: Serve) -> None:
    """An app that sets ``trailers`` and then sends no trailer fields: the response ends cleanly
    (no empty HEADERS frame, which a QPACK decoder refuses) and the connection stays usable."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"body"})
        await send({"type": "http.response.trailers", "headers": []})

    served = await serve(app, lifespan="off")
    for _ in range(2):
        r = await asyncio.wait_for(served.client.get("/"), 5)
        assert r.status_code == 200 and r.content == b"body" and r.extensions["trailers"] == []


async def test_transmit_behind_queued_lets_a_new_task_write_first(serve: Serve) -> None:
    # what a request's task writes in its first step leaves in the transmit pass that was
    # already scheduled (a connection's SETTINGS, an ACK), not one datagram after it
    served = await serve(_simple(200, b"ok"), lifespan="off")
    assert (await served.client.get("/")).text == "ok"
    (sconn,) = served.server._connections
    conn = sconn.conn
    order: list[str] = []
    transmit = conn.transmit

    def counted() -> None:
        order.append("transmit")
        transmit()

    conn.transmit = counted  # type: ignore[method-assign]

    async def first_step() -> None:
        order.append("task")

    conn.schedule_transmit()
    task = asyncio.get_running_loop().create_task(first_step())
    conn.transmit_behind_queued()
    await task
    await wait_until(lambda: "transmit" in order, timeout=5)
    assert order == ["task", "transmit"]
    conn.schedule_transmit()  # without the call: the scheduled transmit runs first, as it was queued first
    task = asyncio.get_running_loop().create_task(first_step())
    await task
    await wait_until(lambda: len(order) == 4, timeout=5)
    assert order[2:] == ["transmit", "task"]
