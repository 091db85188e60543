"""``asgi_p2p.gateway``: HTTP/1.1 clients reach peers through the gateway (uvicorn on loopback, real UDP)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import websockets

from asgi_p2p import SecretKey
from asgi_p2p.discovery import StaticDiscovery
from asgi_p2p.gateway.gateway import Routing
from asgi_p2p.identity import NodeAddr

from .conftest import gateway, peer, self_signed

pytestmark = pytest.mark.timeout(60)

BIG = 64 * 1024 * 1024  # a response no gateway may hold: the bound asserted below is 16 MiB
BOUND = 16 * 1024 * 1024


class PeerApp:
    """Tells who called and what arrived; echoes bodies and WebSocket messages; streams large bodies."""

    def __init__(self) -> None:
        self.sent = 0  # bytes of /big whose send() returned
        self.stalled = asyncio.Event()  # a send() of /big waited a whole second: the gateway pushes back
        self.received = 0  # bytes of /sink the app read
        self.read_body = asyncio.Event()  # /sink may read its body now
        self.read_4mib = asyncio.Event()  # /sink read 4 MiB
        self.requests: list[dict[str, Any]] = []
        self.upload_aborted = asyncio.Event()  # /echo got http.disconnect before the whole body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append({"path": scope["path"], "headers": headers})
        if scope["type"] == "websocket":
            assert (await receive())["type"] == "websocket.connect"
            if scope["path"] == "/flood":  # binary messages as fast as the gateway takes them
                await send({"type": "websocket.accept"})
                chunk = b"w" * 65536
                while self.sent < BIG:
                    task = asyncio.ensure_future(send({"type": "websocket.send", "bytes": chunk}))
                    done, _ = await asyncio.wait({task}, timeout=1.0)
                    if not done:
                        self.stalled.set()
                    await task
                    self.sent += len(chunk)
                return
            if scope["path"] == "/deny":
                await send({"type": "websocket.close", "code": 1000})  # before accept: HTTP 403
                return
            await send({"type": "websocket.accept", "subprotocol": (scope.get("subprotocols") or [None])[0]})
            while True:
                msg = await receive()
                if msg["type"] == "websocket.disconnect":
                    return
                if msg.get("text") == "close please":
                    await send({"type": "websocket.close", "code": 4001, "reason": "asked to"})
                    return
                await send({"type": "websocket.send", "text": msg.get("text"), "bytes": msg.get("bytes")})
        path = scope["path"]
        if path == "/etag":  # a conditional GET: 304 when the client has it
            fresh = headers.get("if-none-match") == '"v1"'
            etag = [(b"etag", b'"v1"')]
            await send({"type": "http.response.start", "status": 304 if fresh else 200, "headers": etag})
            await send({"type": "http.response.body", "body": b"" if fresh else b"v1 body"})
            return
        if path == "/never":  # no response: the app waits until the caller gives up
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        if path == "/big":
            length = [(b"content-length", str(BIG).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": length})
            chunk = b"x" * 65536
            while self.sent < BIG:
                task = asyncio.ensure_future(send({"type": "http.response.body", "body": chunk, "more_body": True}))
                done, _ = await asyncio.wait({task}, timeout=1.0)
                if not done:
                    self.stalled.set()
                await task
                self.sent += len(chunk)
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/sink":
            await self.read_body.wait()
            more = True
            while more:
                msg = await receive()
                self.received += len(msg.get("body", b""))
                if self.received >= 4 * 1024 * 1024:
                    self.read_4mib.set()
                more = msg.get("more_body", False)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": str(self.received).encode()})
            return
        if path == "/echo":
            digest = hashlib.sha256()
            more = True
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    self.upload_aborted.set()
                    return
                digest.update(msg.get("body", b""))
                more = msg.get("more_body", False)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": digest.hexdigest().encode()})
            return
        caller = scope["extensions"]["p2p"]["peer_id"]
        body = json.dumps(
            {"caller": str(caller), "path": path, "query": scope["query_string"].decode(), "headers": headers}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def local(url: str, host: str) -> httpx.AsyncClient:
    """A client of the gateway at ``url`` sending ``Host: host`` (as a browser does for *.localhost)."""
    return httpx.AsyncClient(base_url=url, headers={"host": host}, timeout=20)


async def test_host_style_reaches_the_peer_with_the_gateways_identity() -> None:
    app = PeerApp()
    async with peer(app) as p, gateway(Routing(), lookup=StaticDiscovery([p.node.node_addr()])) as gw:
        async with local(gw.url, f"{p.node_id}.localhost:{gw.port}") as client:
            r = await client.get(
                "/hello/world?x=1",
                headers={
                    "forwarded": "for=1.2.3.4",
                    "x-forwarded-for": "6.6.6.6",
                    "connection": "keep-alive, x-drop-me",
                    "x-drop-me": "1",
                    "x-keep-me": "2",
                },
            )
            assert r.status_code == 200
            seen = r.json()
            assert seen["caller"] == str(gw.gateway.endpoint.node_id)  # the peer's allow-list sees the gateway
            assert seen["path"] == "/hello/world" and seen["query"] == "x=1"
            # forged forwarding headers are replaced by the gateway's own
            assert "x-forwarded-for" not in seen["headers"]
            # a header the Connection header names is hop-by-hop: dropped; others pass
            assert "x-drop-me" not in seen["headers"] and seen["headers"]["x-keep-me"] == "2"
            assert seen["headers"]["forwarded"].startswith('for="127.0.0.1:')
            assert f'host="{p.node_id}.localhost"' in seen["headers"]["forwarded"]
            assert r.headers["content-length"] == str(len(r.content))
            # conditional requests pass through both ways
            r = await client.get("/etag")
            assert r.status_code == 200 and r.headers["etag"] == '"v1"'
            r = await client.get("/etag", headers={"if-none-match": '"v1"'})
            assert r.status_code == 304 and r.content == b""
            # a 5 MiB upload streams through (the peer hashes what arrives)
            payload = bytes(range(256)) * (5 * 4096)
            r = await client.post("/echo", content=payload)
            assert r.text == hashlib.sha256(payload).hexdigest()


async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async with peer(PeerApp()) as p, gateway(Routing(target=p.node.node_addr())) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        conn = h11.Connection(h11.CLIENT)
        try:
            for i in range(3):
                writer.write(conn.send(h11.Request(method="GET", target=f"/n{i}", headers=[("host", "x")])))
                writer.write(conn.send(h11.EndOfMessage()))
                body = b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await reader.read(65536))
                    elif isinstance(event, h11.Response):
                        assert event.status_code == 200
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                assert json.loads(body)["path"] == f"/n{i}"
                conn.start_next_cycle()  # the same TCP connection carries the next request
        finally:
            writer.close()


async def test_range_requests_pass_through() -> None:
    from apps.music import create_app

    async with peer(create_app()) as p, gateway(Routing(target=p.node.node_addr())) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
            tracks = (await client.get("/tracks")).json()
            url = tracks[0]["audio_url"]
            full = await client.get(url)
            r = await client.get(url, headers={"range": "bytes=100-199"})
            assert r.status_code == 206
            assert r.headers["content-range"] == f"bytes 100-199/{len(full.content)}"
            assert r.content == full.content[100:200]
            head = await client.head(url)
            assert head.status_code == 200 and head.content == b""


async def test_websocket_upgrade_becomes_extended_connect() -> None:
    app = PeerApp()
    async with peer(app) as p, gateway(Routing(), lookup=StaticDiscovery([p.node.node_addr()])) as gw:
        uri = f"ws://{p.node_id}.localhost:{gw.port}/chat?room=1"
        async with websockets.connect(uri, host="127.0.0.1", port=gw.port, subprotocols=["chat"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "chat"
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\x01binary")
            assert await ws.recv() == b"\x00\x01binary"
            await ws.send("close please")
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
        assert app.requests[-1]["path"] == "/chat"
        assert "sec-websocket-key" not in app.requests[-1]["headers"]
        # the peer refuses a handshake: the browser side gets the refusal, not an accepted socket
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(f"ws://{p.node_id}.localhost:{gw.port}/deny", host="127.0.0.1", port=gw.port):
                pass
        assert refused.value.response.status_code == 403
        # a node nobody can reach: 502 with the reason
        nobody = SecretKey.generate().node_id
        with pytest.raises(websockets.InvalidStatus) as unreachable:
            async with websockets.connect(f"ws://{nobody}.localhost:{gw.port}/", host="127.0.0.1", port=gw.port):
                pass
        assert unreachable.value.response.status_code == 502
        assert b"unreachable" in unreachable.value.response.body


async def test_errors_say_why_in_a_502() -> None:
    refusing = SecretKey.generate()
    async with peer(PeerApp(), allow=[SecretKey.generate().node_id]) as closed_peer:
        lookup = StaticDiscovery([closed_peer.node.node_addr()])
        async with gateway(Routing(), lookup=lookup) as gw, httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
            r = await client.get("/", headers={"host": f"{closed_peer.node_id}.localhost"})
            assert r.status_code == 502 and "not allowed" in r.text
            assert str(gw.gateway.endpoint.node_id) in r.text  # the id to add to the peer's allow-list
            # a node nobody knows an address of (and no relay): unreachable
            r = await client.get("/", headers={"host": f"{refusing.node_id}.localhost"})
            assert r.status_code == 502 and "unreachable" in r.text
            # a name no discovery source knows
            r = await client.get("/", headers={"host": "music.home.localhost"})
            assert r.status_code == 502 and "no such name" in r.text
            r = await client.get("/", headers={"host": "not_a_name!.localhost"})
            assert r.status_code == 502 and "no such name" in r.text
            # no node named at all: the gateway says how to name one
            r = await client.get("/", headers={"host": f"localhost:{gw.port}"})
            assert r.status_code == 404 and ".localhost" in r.text


async def test_a_bare_node_id_target_is_looked_up() -> None:
    async with peer(PeerApp()) as p:
        routing = Routing(target=NodeAddr(p.node_id))  # no address: the lookup knows it
        async with gateway(routing, lookup=StaticDiscovery([p.node.node_addr()])) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
                assert (await client.get("/bare")).json()["path"] == "/bare"


async def test_a_peer_slow_to_answer_is_a_504() -> None:
    async with peer(PeerApp()) as p, gateway(Routing(target=p.node.node_addr()), response_timeout=0.5) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
            r = await client.get("/never")
            assert r.status_code == 504 and "peer too slow" in r.text
            assert (await client.get("/after")).json()["path"] == "/after"


async def test_names_resolve_through_the_lookup() -> None:
    async with peer(PeerApp()) as p:
        lookup = StaticDiscovery([p.node.node_addr()], names={"music.home": p.node.node_addr()})
        async with gateway(Routing(), lookup=lookup) as gw, local(gw.url, "music.home.localhost") as client:
            r = await client.get("/by-name")
            assert r.status_code == 200 and r.json()["path"] == "/by-name"


async def test_host_header_cannot_reroute() -> None:
    app_a, app_b = PeerApp(), PeerApp()
    async with peer(app_a) as a, peer(app_b) as b:
        # a fixed target: the Host header names b, the request still goes to a
        async with gateway(Routing(target=a.node.node_addr())) as gw, local(gw.url, f"{b.node_id}.localhost") as client:
            r = await client.get("/x")
            assert r.status_code == 200 and app_a.requests and not app_b.requests
            assert not any(c.remote_node_id == b.node_id for c in gw.gateway.endpoint.connections)
        # routes restricted to a: b is refused before any packet goes to it, however it is named
        lookup = StaticDiscovery([a.node.node_addr(), b.node.node_addr()], names={"b": b.node.node_addr()})
        routing = Routing(only=frozenset({a.node_id}), path_style=True)
        async with gateway(routing, lookup=lookup) as gw, httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
            for host, path, reason in [
                (f"{b.node_id}.localhost", "/", "not routed"),
                ("b.localhost", "/", "not routed"),
                (f"localhost:{gw.port}", f"/{b.node_id}/", "not routed"),
                (f"{a.node_id}.localhost.{b.node_id}.localhost", "/", "no such name"),
            ]:
                r = await client.get(path, headers={"host": host})
                assert r.status_code == 502 and reason in r.text, (host, r.text)
            r = await client.get("/", headers={"host": f"{b.node_id}.localhost.evil.example"})
            assert r.status_code == 404
            assert not app_b.requests
            assert not any(c.remote_node_id == b.node_id for c in gw.gateway.endpoint.connections)
            # an absolute-form request target cannot name another node either
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(f"GET http://{b.node_id}.localhost/ HTTP/1.1\r\nHost: {a.node_id}.localhost\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            writer.close()
            assert head.startswith(b"HTTP/1.1 400") and not app_b.requests


async def test_path_style() -> None:
    app = PeerApp()
    async with peer(app) as p:
        routing = Routing(path_style=True, host_suffixes=("gw.example",))
        async with gateway(routing, lookup=StaticDiscovery([p.node.node_addr()])) as gw:
            async with local(gw.url, "gw.example") as client:
                r = await client.get(f"/{p.node_id}/tracks?q=1")
                assert r.status_code == 200 and r.json()["path"] == "/tracks" and r.json()["query"] == "q=1"
                assert r.json()["headers"]["x-forwarded-prefix"] == f"/{p.node_id}"
                r = await client.get(f"/{p.node_id}")
                assert r.status_code == 308 and r.headers["location"] == f"/{p.node_id}/"
            async with local(gw.url, f"{p.node_id}.gw.example") as client:  # host style under the public name
                assert (await client.get("/h")).json()["path"] == "/h"


async def test_a_slow_client_slows_the_peer_down() -> None:
    """The client stops reading a 64 MiB response: the peer's sends stall well below 16 MiB."""
    app = PeerApp()
    async with peer(app) as p, gateway(Routing(target=p.node.node_addr())) as gw:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", gw.port))
        try:
            await loop.sock_sendall(sock, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await loop.sock_recv(sock, 65536)).startswith(b"HTTP/1.1 200")
            await asyncio.wait_for(app.stalled.wait(), 30)  # the client reads nothing more
            assert app.sent < BOUND, f"the gateway let the peer send {app.sent} bytes to a client that reads none"
        finally:
            sock.close()


async def test_a_websocket_client_that_does_not_read_slows_the_peer_down() -> None:
    """The peer floods a WebSocket with 64 MiB; the client stops reading after the handshake."""
    app = PeerApp()
    async with peer(app) as p, gateway(Routing(target=p.node.node_addr())) as gw:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", gw.port))
        try:
            handshake = (
                "GET /flood HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await loop.sock_sendall(sock, handshake.encode())
            assert (await loop.sock_recv(sock, 1024)).startswith(b"HTTP/1.1 101")
            await asyncio.wait_for(app.stalled.wait(), 30)  # the client reads nothing more
            assert app.sent < BOUND, f"the gateway let the peer send {app.sent} bytes to a client that reads none"
        finally:
            sock.close()


async def test_a_client_gone_mid_upload_aborts_the_peers_request() -> None:
    app = PeerApp()
    async with peer(app) as p, gateway(Routing(target=p.node.node_addr())) as gw:
        _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" + b"z" * 1_000_000)
        await writer.drain()
        writer.close()  # gone after a tenth of the body
        await asyncio.wait_for(app.upload_aborted.wait(), 20)
        async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client:  # the gateway serves on
            assert (await client.post("/echo", content=b"abc")).text == hashlib.sha256(b"abc").hexdigest()


async def test_a_slow_peer_slows_the_client_down() -> None:
    """The peer does not read a request body: the client's upload stalls well below 16 MiB."""
    app = PeerApp()
    async with peer(app) as p, gateway(Routing(target=p.node.node_addr())) as gw:
        _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.transport.set_write_buffer_limits(high=65536)
        try:
            writer.write(f"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: {BIG}\r\n\r\n".encode())
            pushed = 0
            chunk = b"y" * 65536
            while pushed < BIG:
                writer.write(chunk)
                pushed += len(chunk)
                try:
                    await asyncio.wait_for(writer.drain(), 1.0)
                except TimeoutError:
                    break  # the gateway stopped taking bytes
            assert pushed < BOUND, f"the gateway took {pushed} bytes the peer did not read"
            app.read_body.set()  # the peer reads now: the upload goes on
            for _ in range(64):
                writer.write(chunk)
                pushed += len(chunk)
                await asyncio.wait_for(writer.drain(), 20)
            await asyncio.wait_for(app.read_4mib.wait(), 20)
        finally:
            writer.close()


async def test_a_public_gateway_reaches_only_nodes_that_opted_in() -> None:
    """A node open to any caller did not opt in; one whose allow-list names the gateway did."""
    gateway_key = SecretKey.generate()
    async with (
        peer(PeerApp()) as open_node,
        peer(PeerApp(), allow=[gateway_key.node_id]) as opted_in,
        peer(PeerApp(), allow=[SecretKey.generate().node_id]) as closed_node,
    ):
        lookup = StaticDiscovery([n.node.node_addr() for n in (open_node, opted_in, closed_node)])
        routing = Routing(path_style=True, host_suffixes=("gw.example",))
        async with (
            gateway(routing, lookup=lookup, key=gateway_key, opt_in=True) as gw,
            local(gw.url, "gw.example") as client,
        ):
            r = await client.get(f"/{opted_in.node_id}/x")
            assert r.status_code == 200 and r.json()["caller"] == str(gateway_key.node_id)
            r = await client.get(f"/{open_node.node_id}/x")
            assert r.status_code == 502 and "not opted in" in r.text
            assert not any(c.remote_node_id == open_node.node_id for c in gw.gateway.endpoint.connections)
            r = await client.get(f"/{closed_node.node_id}/x")
            assert r.status_code == 502 and "not allowed" in r.text


async def test_public_gateway_with_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    app = PeerApp()
    async with peer(app) as p:
        routing = Routing(path_style=True, host_suffixes=("gw.example",))
        async with gateway(
            routing, lookup=StaticDiscovery([p.node.node_addr()]), ssl_certfile=str(cert), ssl_keyfile=str(key)
        ) as gw:
            assert gw.url.startswith("https://")
            ctx = ssl.create_default_context(cafile=str(cert))
            ctx.check_hostname = False
            async with httpx.AsyncClient(base_url=gw.url, verify=ctx, headers={"host": "gw.example"}) as client:
                r = await client.get(f"/{p.node_id}/secure")
                assert r.status_code == 200 and r.json()["path"] == "/secure"
                assert "proto=https" in r.json()["headers"]["forwarded"]


def test_routing_rejects_bad_suffixes() -> None:
    with pytest.raises(ValueError, match="host suffix"):
        Routing(host_suffixes=("Bad_Suffix",))
    addr = NodeAddr(SecretKey.generate().node_id)
    with pytest.raises(ValueError, match="routed-to"):
        Routing(target=addr, only=frozenset({SecretKey.generate().node_id}))
