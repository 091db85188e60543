"""``ProxyApp`` served over HTTP/3 to a peer, in front of real HTTP/1.1 backends on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgi_p2p.errors import InvalidConfiguration
from asgi_p2p.gateway.proxy import ProxyApp, end_to_end, parse_backend
from asgi_p2p.http import WebSocketRejected, websocket_connect
from asgi_p2p.http.types import Receive, Scope, Send

from .conftest import ProxyFactory

MiB = 1024 * 1024


async def backend_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The backend: echoes what it got, streams, sends hop-by-hop fields, WebSocket echo."""
    if scope["type"] == "websocket":
        await receive()
        if scope["path"] == "/deny":
            await send({"type": "websocket.close", "code": 1008})
            return
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if "chat" in scope.get("subprotocols", []):
            accept["subprotocol"] = "chat"
        await send(accept)
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("text") == "who":
                ids = [v.decode() for k, v in scope["headers"] if k == b"x-p2p-peer-id"]
                await send({"type": "websocket.send", "text": ",".join(ids)})
                continue
            if msg.get("text") == "bye":
                await send({"type": "websocket.close", "code": 4001, "reason": "bye to you"})
                return
            if msg.get("text") is not None:
                await send({"type": "websocket.send", "text": "echo:" + msg["text"]})
            else:
                await send({"type": "websocket.send", "bytes": msg["bytes"][::-1]})
    path = scope["path"]
    if path == "/sha":
        h = hashlib.sha256()
        n = 0
        while True:
            msg = await receive()
            h.update(msg.get("body", b""))
            n += len(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        await _json(send, {"sha256": h.hexdigest(), "size": n})
    elif path == "/stream":
        total = int(dict(x.split("=") for x in scope["query_string"].decode().split("&"))["n"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"x/bytes")]})
        block = bytes(range(256)) * 256
        left = total
        while left:
            chunk = block[: min(left, len(block))]
            left -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/hop":
        headers = [(b"connection", b"x-drop"), (b"x-drop", b"1"), (b"keep-alive", b"timeout=5"), (b"x-keep", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})
    else:
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
        await _json(
            send,
            {
                "method": scope["method"],
                "path": path,
                "raw_path": scope["raw_path"].decode(),
                "headers": headers,
                "query": scope["query_string"].decode(),
            },
        )


async def _json(send: Send, obj: object) -> None:
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def header_map(pairs: list[list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in pairs:
        out.setdefault(k.lower(), []).append(v)
    return out


# -- what the backend sees -------------------------------------------------------------------


async def test_backend_sees_peer_id_forwarded_and_no_forgeries(backends: Any, proxied: ProxyFactory) -> None:
    backend = await backends(backend_app)
    p = await proxied(backend.url)
    r = await p.client.get(
        "/some%20path/x?a=1&b=%2F",
        headers={
            "X-P2P-Peer-Id": "forged",
            "Forwarded": 'for="_forged"',
            "X-Forwarded-For": "10.0.0.1",
            "X-Custom": "kept",
        },
    )
    assert r.status_code == 200
    seen = r.json()
    assert seen["raw_path"] == "/some%20path/x"
    assert seen["query"] == "a=1&b=%2F"
    h = header_map(seen["headers"])
    assert h["x-p2p-peer-id"] == [str(p.peer.node_id)]
    assert h["forwarded"] == [f'for="_{p.peer.node_id}";by="_{p.node.node_id}";host="{p.node.node_id}";proto=https']
    assert "x-forwarded-for" not in h
    assert h["x-custom"] == ["kept"]
    assert h["host"] == [backend.url.removeprefix("http://")]


async def test_response_hop_by_hop_fields_are_dropped(backends: Any, proxied: ProxyFactory) -> None:
    p = await proxied((await backends(backend_app)).url)
    r = await p.client.get("/hop")
    assert r.text == "ok"
    assert r.headers["x-keep"] == "2"
    assert "x-drop" not in r.headers and "keep-alive" not in r.headers and "connection" not in r.headers


def test_end_to_end_drops_connection_listed_fields() -> None:
    fields = [
        (b"Connection", b"close, X-Secret"),
        (b"X-Secret", b"s"),
        (b"TE", b"trailers"),
        (b"Accept", b"*/*"),
        (b"Upgrade", b"h2c"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Keep-Alive", b"5"),
    ]
    assert end_to_end(fields) == [("accept", "*/*")]


def test_peer_id_header_option_and_bad_backends() -> None:
    with pytest.raises(InvalidConfiguration, match="unix socket path must be absolute"):
        parse_backend("unix:relative.sock")
    with pytest.raises(InvalidConfiguration, match="expected http://HOST:PORT"):
        parse_backend("https://example.org")
    with pytest.raises(InvalidConfiguration, match="not a valid header name"):
        ProxyApp("http://127.0.0.1:1", peer_id_header="bad header")
    assert parse_backend("http://127.0.0.1:8000/app/")[0] == httpx.URL("http://127.0.0.1:8000/app")


async def test_path_prefix_and_unix_socket_backend(backends: Any, proxied: ProxyFactory, tmp_path: Path) -> None:
    backend = await backends(backend_app, uds=tmp_path / "b.sock")
    p = await proxied("http+unix://" + str(tmp_path / "b.sock").replace("/", "%2F") + "/base")
    assert (await p.client.get("/x")).json()["path"] == "/base/x"
    p2 = await proxied(backend.url)
    assert (await p2.client.get("/y?q=1")).json()["path"] == "/y"


# -- bodies stream both ways -------------------------------------------------------------------


async def test_streamed_upload_and_download(backends: Any, proxied: ProxyFactory) -> None:
    p = await proxied((await backends(backend_app)).url)
    data = bytes(range(256)) * (12 * 4096)  # 12 MiB

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 100_000):
            yield data[i : i + 100_000]

    for te in ({}, {"te": "trailers"}):  # httpx to the backend; h11 on a connection of its own
        r = await p.client.post("/sha", content=chunks(), headers=te)
        assert r.json() == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        r = await p.client.post("/sha", content=data[:1000], headers=te)
        assert r.json() == {"sha256": hashlib.sha256(data[:1000]).hexdigest(), "size": 1000}
        r = await p.client.get("/stream?n=5000000", headers=te)
        assert len(r.content) == 5_000_000
        assert r.content[:512] == bytes(range(256)) * 2


async def test_slow_reader_bounds_what_the_proxy_buffers(proxied: ProxyFactory) -> None:
    """A peer that stops reading stalls the backend within a bounded number of bytes (no 1 GB in memory)."""
    written = 0
    blocked = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n")
        block = b"x" * (256 * 1024)
        try:
            while written < 1 << 30:
                writer.write(block)
                written += len(block)
                if writer.transport.get_write_buffer_size() > 0:
                    # the kernel's socket buffer is full: wait; if it stays full, the proxy stopped reading
                    try:
                        await asyncio.wait_for(writer.drain(), 2.0)
                    except TimeoutError:
                        blocked.set()
                        await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(endless, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        p = await proxied(f"http://127.0.0.1:{port}")
        async with p.client.stream("GET", "/big") as r:
            it = r.aiter_raw()
            got = len(await anext(it))
            await asyncio.wait_for(blocked.wait(), 30)
            stalled_at = written
            assert stalled_at < 64 * MiB, f"the backend wrote {stalled_at / MiB:.1f} MiB to a peer that read nothing"
            async for chunk in it:  # reading again lets the backend go on
                got += len(chunk)
                if got > stalled_at + 4 * MiB:
                    break
            assert written > stalled_at
    finally:
        srv.close()


# -- failures ---------------------------------------------------------------------------------


async def raw_backend(behaviour: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await behaviour(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def malformed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 two hundred OK\r\n\r\n")
    await writer.drain()


async def oversized_header(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * (300 * 1024) + b"\r\ncontent-length: 2\r\n\r\nok")
    await writer.drain()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # never answers


async def mid_body_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n" + b"x" * 100_000)
    await writer.drain()


@pytest.mark.parametrize(
    ("behaviour", "status", "text"),
    [
        (malformed, 502, "malformed HTTP"),
        (oversized_header, 502, "malformed HTTP"),
        (silent, 504, "did not answer within 0.5s"),
    ],
    ids=["malformed", "oversized-header", "too-slow"],
)
async def test_bad_backend_gets_a_clear_error_and_the_proxy_keeps_serving(
    behaviour: Any, status: int, text: str, proxied: ProxyFactory, backends: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bad = await raw_backend(behaviour)
    good = await backends(backend_app)
    try:
        p = await proxied(f"http://127.0.0.1:{bad.sockets[0].getsockname()[1]}", timeout=0.5)
        ok = await proxied(good.url)
        with caplog.at_level(logging.WARNING, "asgi_p2p.gateway.proxy"):
            r = await p.client.get("/x")
        assert r.status_code == status
        assert text in r.text
        assert any(f"{status}: backend" in rec.getMessage() for rec in caplog.records)
        # the same proxy node keeps serving: another stream on the same connection, and other proxies
        assert (await p.client.get("/again")).status_code == status
        assert (await ok.client.get("/fine")).status_code == 200
    finally:
        bad.close()


async def test_backend_down_is_502(proxied: ProxyFactory) -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    p = await proxied(f"http://127.0.0.1:{port}")
    r = await p.client.get("/")
    assert r.status_code == 502
    assert "cannot connect to the backend" in r.text


async def test_backend_closing_mid_body_resets_the_stream(proxied: ProxyFactory, backends: Any) -> None:
    bad = await raw_backend(mid_body_close)
    try:
        p = await proxied(f"http://127.0.0.1:{bad.sockets[0].getsockname()[1]}")
        with pytest.raises(httpx.TransportError):
            async with p.client.stream("GET", "/") as r:
                assert r.status_code == 200
                await r.aread()
        assert p.proxy.aborted == 1
        with pytest.raises(httpx.TransportError):  # again, on the same connection
            await p.client.get("/")
    finally:
        bad.close()


# -- WebSocket: RFC 9220 on the peer side, HTTP/1.1 Upgrade to the backend ------------------------------


async def test_websocket_through_the_proxy(backends: Any, proxied: ProxyFactory) -> None:
    p = await proxied((await backends(backend_app)).url)
    forged = [("x-p2p-peer-id", "forged")]
    async with websocket_connect(p.peer, p.node.node_addr(), "/ws", subprotocols=["chat"], headers=forged) as ws:
        assert ws.subprotocol == "chat"
        await ws.send("who")
        assert await ws.receive() == str(p.peer.node_id)
        await ws.send("hi")
        assert await ws.receive() == "echo:hi"
        await ws.send(b"\x01\x02\x03")
        assert await ws.receive() == b"\x03\x02\x01"
        await ws.send("bye")
        with pytest.raises(Exception) as info:
            await ws.receive()
        assert getattr(info.value, "code", None) == 4001
    with pytest.raises(WebSocketRejected) as rejected:
        async with websocket_connect(p.peer, p.node.node_addr(), "/deny"):
            pass
    assert rejected.value.status == 403


async def test_backend_stalling_mid_body_resets_after_the_timeout(proxied: ProxyFactory) -> None:
    release = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 100)
        await writer.drain()
        await release.wait()

    bad = await raw_backend(stall)
    try:
        p = await proxied(f"http://127.0.0.1:{bad.sockets[0].getsockname()[1]}", timeout=0.5)
        with pytest.raises(httpx.TransportError):
            async with p.client.stream("GET", "/") as r:
                assert r.status_code == 200
                await r.aread()
        assert p.proxy.aborted == 1
    finally:
        release.set()
        bad.close()


async def test_slow_backend_reader_bounds_what_the_peer_can_push(proxied: ProxyFactory) -> None:
    """An upload to a backend that reads nothing stalls the peer within a bounded number of bytes."""
    produced = 0
    stalled = asyncio.Event()
    resume = asyncio.Event()

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await resume.wait()

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced
        block = b"u" * (256 * 1024)
        while produced < 1 << 30:
            yield block
            produced += len(block)

    async def watch() -> None:
        last = -1
        while produced != last:  # no progress for 2 s: the upload is stalled
            last = produced
            await asyncio.sleep(2.0)
        stalled.set()

    srv = await raw_backend(never_reads)
    try:
        p = await proxied(f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", timeout=30)
        upload = asyncio.ensure_future(p.client.post("/upload", content=endless()))
        watcher = asyncio.ensure_future(watch())
        await asyncio.wait_for(stalled.wait(), 60)
        assert produced < 64 * MiB, f"the peer pushed {produced / MiB:.1f} MiB into a backend that reads nothing"
        upload.cancel()
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await upload
    finally:
        resume.set()
        srv.close()


async def test_websocket_over_a_unix_socket_and_to_a_backend_that_is_down(
    backends: Any, proxied: ProxyFactory, tmp_path: Path
) -> None:
    backend = await backends(backend_app, uds=tmp_path / "ws.sock")
    p = await proxied(backend.url)
    async with websocket_connect(p.peer, p.node.node_addr(), "/ws?room=1") as ws:
        await ws.send("over uds")
        assert await ws.receive() == "echo:over uds"
    down = await proxied(f"unix:{tmp_path / 'nobody.sock'}")
    with pytest.raises(WebSocketRejected) as rejected:
        async with websocket_connect(down.peer, down.node.node_addr(), "/ws"):
            pass
    assert rejected.value.status == 502
    assert b"Bad Gateway" in rejected.value.body


async def test_a_trickle_is_passed_on_at_once(proxied: ProxyFactory) -> None:
    """Server-sent events: each piece reaches the peer before the backend sends the next one."""
    got_first = asyncio.Event()

    async def events(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"8\r\ndata: 1\n\r\n")
        await writer.drain()
        await got_first.wait()  # only once the peer has the first event
        writer.write(b"8\r\ndata: 2\n\r\n0\r\n\r\n")
        await writer.drain()

    srv = await raw_backend(events)
    try:
        p = await proxied(f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}")
        async with p.client.stream("GET", "/events") as r:
            assert "content-length" not in r.headers
            it = r.aiter_bytes()
            assert await asyncio.wait_for(anext(it), 10) == b"data: 1\n"
            got_first.set()
            assert b"".join([chunk async for chunk in it]) == b"data: 2\n"
    finally:
        srv.close()


async def chunked_with_trailers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n"
        b"trailer: x-checksum, x-rows\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: sha256=abc\r\nx-rows: 2\r\n\r\n"
    )
    await writer.drain()


async def cut_after_a_chunk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n5\r\nhello\r\n")
    await writer.drain()


async def test_backend_trailers_reach_a_peer_that_accepts_them(
    proxied: ProxyFactory, backends: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A chunked backend response's trailer fields become HTTP/3 trailers when the peer sent
    ``TE: trailers``; the backend is asked with ``TE: trailers`` too.  Errors on that path are
    the same 502 / 504 as on the pooled one."""
    requests: list[bytes] = []

    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await chunked_with_trailers(reader, writer)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            requests.append(await reader.readuntil(b"\r\n\r\n"))
            await recording(reader, writer)
        finally:
            writer.close()

    backend = await asyncio.start_server(handle, "127.0.0.1", 0)
    bad = await raw_backend(malformed)
    slow = await raw_backend(silent)
    cut = await raw_backend(cut_after_a_chunk)
    try:
        p = await proxied(f"http://127.0.0.1:{backend.sockets[0].getsockname()[1]}")
        async with p.client.stream("GET", "/t", headers={"te": "trailers"}) as r:
            body = b"".join([chunk async for chunk in r.aiter_bytes()])
        assert r.status_code == 200 and body == b"hello world"
        assert r.extensions["trailers"] == [(b"x-checksum", b"sha256=abc"), (b"x-rows", b"2")]
        head = requests[-1].lower()
        assert b"te: trailers" in head and b"x-p2p-peer-id: " + str(p.peer.node_id).encode() in head
        # without TE: trailers, the pooled (httpx) path: the body, no trailers
        r2 = await p.client.get("/t")
        assert r2.content == b"hello world" and r2.extensions["trailers"] == []
        # the same errors as the pooled path
        pb = await proxied(f"http://127.0.0.1:{bad.sockets[0].getsockname()[1]}")
        r3 = await pb.client.get("/x", headers={"te": "trailers"})
        assert r3.status_code == 502 and "malformed HTTP" in r3.text
        ps = await proxied(f"http://127.0.0.1:{slow.sockets[0].getsockname()[1]}", timeout=0.5)
        with caplog.at_level(logging.WARNING, "asgi_p2p.gateway.proxy"):
            r4 = await ps.client.get("/x", headers={"te": "trailers"})
        assert r4.status_code == 504 and "did not answer within 0.5s" in r4.text
        assert any("504: backend" in rec.getMessage() for rec in caplog.records)
        assert (await p.client.get("/again", headers={"te": "trailers"})).content == b"hello world"
        # cut mid-body: the peer's stream is reset, and the proxy serves on
        pc = await proxied(f"http://127.0.0.1:{cut.sockets[0].getsockname()[1]}")
        with caplog.at_level(logging.WARNING, "asgi_p2p.gateway.proxy"):
            with pytest.raises(httpx.RemoteProtocolError, match="reset"):
                await pc.client.get("/x", headers={"te": "trailers"})
        assert any("failed during the response" in rec.getMessage() for rec in caplog.records)
        assert (await p.client.get("/after", headers={"te": "trailers"})).content == b"hello world"
    finally:
        for server in (backend, bad, slow, cut):
            server.close()
