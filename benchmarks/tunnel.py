"""A minimal WebSocket tunnel, the baseline of the WAN benchmark (benchmarks/wan.py).

It works as the system asgi-p2p replaces (the MoosicBox tunnel: packages/tunnel_server,
packages/tunnel_sender, packages/tunnel and packages/server/src/tunnel.rs of MoosicBox/MoosicBox) does:
a **tunnel server** on a public host accepts HTTP requests from clients and one WebSocket from a
**sender** inside the home; the sender keeps that WebSocket open (it dials out, so no port forwarding
is needed), forwards each request it receives over it to the local app over HTTP on 127.0.0.1, and
sends the response back as binary WebSocket messages, which the tunnel server streams to the client.

Wire format (MoosicBox's binary encoding):

* request, server -> sender: a text message, JSON ``{"type": "HTTP", "request_id", "method",
  "path", "query", "headers", "payload" (base64 body or null), "encoding": "BINARY"}``; or
  ``{"type": "ABORT", "request_id"}`` when the client went away;
* response, sender -> server: binary messages of at most ``PACKET_BYTES`` (64 KiB, MoosicBox's
  ``WS_MAX_PACKET_SIZE`` default) each, header included:
  ``request_id u64 | packet_id u32 (from 1) | last u8`` and, in packet 1 only,
  ``status u16 | headers length u32 | headers JSON``; then body bytes. ``last=1`` ends it. As
  MoosicBox's ``send_binary_stream``, the sender fills each packet before sending it (a packet leaves
  when it is full or the body ended), so a small response is one packet with ``last=1``.

What it models as the real system does: one WebSocket per sender; every request handled concurrently
on both ends (a task per request on the server and in the sender); responses routed on the server by
request id to the waiting client; the sender's packets written to the one WebSocket in turn.

Where it differs, each in the baseline's favour or without effect on the benchmark's workloads:

* the sender reaches the local app over keep-alive connections it reuses (h11, newest idle first);
  MoosicBox builds a new HTTP client, so a new TCP connection, per request
  (``switchy_http::Client::new()`` in ``TunnelSender::http_request``). It does not use httpx's pool:
  at 50 requests in flight that pool's per-request bookkeeping made this Python sender CPU-bound;
* the server looks no connection up in a database per request (MoosicBox's ``get_connection_id``);
* the server holds at most ``MAX_QUEUED_PACKETS`` packets per request (MoosicBox: unbounded): beyond,
  the WebSocket reader waits (a 10 MiB download is 161 packets, never near the bound);
* the sender writes packets in the order its requests produce them; MoosicBox's writer queue sends
  the shortest waiting message first, which lets small responses pass a download's queued packets
  (no effect when every request in flight is alike, as in each of the benchmark's phases);
* both ends are Python (asyncio, one process each); MoosicBox is Rust (actix-web, tokio, a worker
  thread per core), which costs far less CPU per request and per MB.

Subcommands (each prints ``ready`` on stdout once it serves; ``app`` and ``server`` add their port,
so ``--port 0`` works)::

    python benchmarks/tunnel.py app --port 8000                      # the app (uvicorn, 127.0.0.1)
    python benchmarks/tunnel.py server --host 0.0.0.0 --port 8080 [--certfile C --keyfile K]
    python benchmarks/tunnel.py sender --tunnel ws://HOST:8080/ws --local http://127.0.0.1:8000 [--cafile C]

Limits: request bodies up to 1 MiB (413 beyond); at most ``MAX_QUEUED_PACKETS`` response packets
wait per request on the server (the WebSocket reader then waits, which slows the whole tunnel,
as one TCP stream does); at most ``MAX_IN_FLIGHT`` requests in flight (503 beyond); the sender keeps
at most ``MAX_IDLE_LOCAL`` idle connections to the app. Needs the ``bench`` extra (uvicorn,
websockets; h11 comes with them).
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

# run as a script, this folder would be sys.path[0]: keep it off, benchmarks/http.py shadows the stdlib's
# `http`; the repository root goes on instead (for benchmarks.wan_app)
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]
if os.path.dirname(_HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(_HERE))

import argparse
import asyncio
import base64
import contextlib
import datetime
import ipaddress
import itertools
import json
import ssl
import struct
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HEADER = struct.Struct("!QIB")  # request_id, packet_id, last
FIRST = struct.Struct("!HI")  # status, length of the headers JSON
PACKET_BYTES = 64 * 1024  # a whole WebSocket message, header included (MoosicBox WS_MAX_PACKET_SIZE)
MAX_QUEUED_PACKETS = 256
MAX_IN_FLIGHT = 1000
MAX_REQUEST_BODY = 1024 * 1024
MAX_HEADERS_JSON = 64 * 1024
MAX_IDLE_LOCAL = 100
#: not forwarded in either direction (they describe one hop, not the message)
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "proxy-connection"}
)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class TunnelError(Exception):
    pass


# -- packets ---------------------------------------------------------------------------------


def encode_packet(
    request_id: int,
    packet_id: int,
    last: bool,
    data: bytes,
    status: int | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    head = HEADER.pack(request_id, packet_id, int(last))
    if packet_id == 1:
        if status is None or headers is None:
            raise ValueError("packet 1 carries the status and the headers")
        hj = json.dumps(headers).encode()
        head += FIRST.pack(status, len(hj)) + hj
    return head + data


def decode_packet(buf: bytes) -> tuple[int, int, bool, int | None, dict[str, str] | None, bytes]:
    """``(request_id, packet_id, last, status, headers, body)``; TunnelError if malformed."""
    if len(buf) < HEADER.size:
        raise TunnelError(f"packet of {len(buf)} bytes is shorter than its header")
    request_id, packet_id, last = HEADER.unpack_from(buf)
    if packet_id < 1 or last > 1:
        raise TunnelError(f"bad packet header: packet_id {packet_id}, last {last}")
    off = HEADER.size
    status = headers = None
    if packet_id == 1:
        if len(buf) < off + FIRST.size:
            raise TunnelError("first packet too short for status and headers")
        status, hlen = FIRST.unpack_from(buf, off)
        off += FIRST.size
        if hlen > MAX_HEADERS_JSON or len(buf) < off + hlen:
            raise TunnelError(f"bad headers length {hlen}")
        try:
            headers = json.loads(buf[off : off + hlen])
        except ValueError as exc:
            raise TunnelError(f"headers are not JSON: {exc}") from None
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise TunnelError("headers must be a JSON object of strings")
        off += hlen
    return request_id, packet_id, bool(last), status, headers, buf[off:]


# -- the tunnel server (public host) ------------------------------------------------------------


class TunnelServer:
    """ASGI app: ``/ws`` takes the sender's WebSocket, every other HTTP request goes through it."""

    def __init__(self) -> None:
        self.sender: Send | None = None
        self.send_lock = asyncio.Lock()
        self.pending: dict[int, asyncio.Queue[tuple[int, bool, int | None, dict[str, str] | None, bytes] | None]] = {}
        self.ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "websocket":
            await self._sender(scope, receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _to_sender(self, message: dict[str, Any]) -> None:
        if self.sender is None:
            raise TunnelError("no sender connected")
        async with self.send_lock:
            await self.sender({"type": "websocket.send", "text": json.dumps(message)})

    async def _sender(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        if scope["path"] != "/ws" or self.sender is not None:
            await send({"type": "websocket.close", "code": 1008})
            return
        self.sender = send
        await send({"type": "websocket.accept"})
        try:
            while True:
                msg = await receive()
                if msg["type"] == "websocket.disconnect":
                    return
                data = msg.get("bytes")
                if data is None:
                    continue
                try:
                    rid, pid, last, status, headers, body = decode_packet(data)
                except TunnelError as exc:
                    print(f"tunnel server: dropped a malformed packet: {exc}", file=sys.stderr)
                    continue
                queue = self.pending.get(rid)
                if queue is not None:  # else: the client is gone (aborted)
                    await queue.put((pid, last, status, headers, body))
        finally:
            self.sender = None
            for queue in list(self.pending.values()):
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytearray()
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            if len(body) > MAX_REQUEST_BODY:
                await _plain(send, 413, "request body too large for the tunnel\n")
                return
            if not msg.get("more_body"):
                break
        if self.sender is None:
            await _plain(send, 502, "no sender connected to the tunnel\n")
            return
        if len(self.pending) >= MAX_IN_FLIGHT:
            await _plain(send, 503, "too many requests in flight\n")
            return
        rid = next(self.ids)
        queue: asyncio.Queue[Any] = asyncio.Queue(MAX_QUEUED_PACKETS)
        self.pending[rid] = queue
        done = False
        try:
            headers = {
                k.decode("latin-1"): v.decode("latin-1")
                for k, v in scope["headers"]
                if k.decode("latin-1").lower() not in HOP_BY_HOP
            }
            await self._to_sender(
                {
                    "type": "HTTP",
                    "request_id": rid,
                    "method": scope["method"],
                    "path": scope["path"].lstrip("/"),
                    "query": scope["query_string"].decode("latin-1"),
                    "headers": headers,
                    "payload": base64.b64encode(body).decode() if body else None,
                    "encoding": "BINARY",
                }
            )
            expected = 1
            while True:
                item = await queue.get()
                if item is None:
                    if expected == 1:
                        await _plain(send, 502, "the sender went away\n")
                    return  # mid-body: the client sees a truncated response
                pid, last, status, rheaders, data = item
                if pid != expected:  # one WebSocket keeps order; anything else is a bug
                    raise TunnelError(f"request {rid}: packet {pid} where {expected} was due")
                if pid == 1:
                    assert status is not None and rheaders is not None
                    # uvicorn adds its own date and server headers
                    skip = HOP_BY_HOP | {"date", "server"}
                    raw = [(k.encode(), v.encode()) for k, v in rheaders.items() if k.lower() not in skip]
                    await send({"type": "http.response.start", "status": status, "headers": raw})
                await send({"type": "http.response.body", "body": data, "more_body": not last})
                expected += 1
                if last:
                    done = True
                    return
        finally:
            self.pending.pop(rid, None)
            if not done and self.sender is not None:
                with contextlib.suppress(Exception):
                    await self._to_sender({"type": "ABORT", "request_id": rid})


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- the sender (home) -----------------------------------------------------------------------


class LocalApp:
    """HTTP/1.1 to the local app (h11): idle keep-alive connections are reused, newest first."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"--local must be an http:// URL, got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.authority = parts.netloc
        self.idle: list[_LocalConn] = []

    async def connect(self) -> _LocalConn:
        while self.idle:
            conn = self.idle.pop()
            if not conn.reader.at_eof():
                return conn
            conn.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return _LocalConn(reader, writer)

    def release(self, conn: _LocalConn) -> None:
        """Keep ``conn`` for the next request if its exchange ended cleanly, else close it."""
        import h11

        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE and len(self.idle) < MAX_IDLE_LOCAL:
            conn.h11.start_next_cycle()
            self.idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class _LocalConn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h11

        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT)  # a response head of at most 16 KiB: packet 1 always has room

    def send(self, *events: Any) -> None:
        self.writer.write(b"".join(self.h11.send(e) or b"" for e in events))

    async def next_event(self) -> Any:
        import h11

        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(await self.reader.read(PACKET_BYTES))

    def close(self) -> None:
        self.writer.close()


async def run_sender(tunnel_url: str, local_url: str, cafile: str | None) -> None:
    from websockets.asyncio.client import connect

    ctx = ssl.create_default_context(cafile=cafile) if tunnel_url.startswith("wss:") else None
    local = LocalApp(local_url)
    async with connect(tunnel_url, ssl=ctx, compression=None, max_size=2 * PACKET_BYTES, open_timeout=30) as ws:
        print("ready", flush=True)
        aborted: dict[int, asyncio.Event] = {}
        tasks: set[asyncio.Task[None]] = set()
        try:
            async for message in ws:
                if not isinstance(message, str):
                    continue
                try:
                    req = json.loads(message)
                    kind, rid = req["type"], int(req["request_id"])
                except (ValueError, KeyError, TypeError) as exc:
                    print(f"sender: ignored a malformed request: {exc}", file=sys.stderr)
                    continue
                if kind == "ABORT":
                    if rid in aborted:
                        aborted[rid].set()
                elif kind == "HTTP" and len(tasks) < MAX_IN_FLIGHT:
                    stop = aborted[rid] = asyncio.Event()
                    task = asyncio.ensure_future(forward_request(ws, local, req, rid, stop))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    task.add_done_callback(lambda _t, rid=rid: aborted.pop(rid, None))
        finally:
            local.close()


async def forward_request(ws: Any, local: LocalApp, req: dict[str, Any], rid: int, stop: asyncio.Event) -> None:
    """Send the request to the local app and its response back in packets of at most ``PACKET_BYTES``,
    each filled before it is sent (MoosicBox's ``send_binary_stream``)."""
    import h11

    headers = {k: v for k, v in (req.get("headers") or {}).items() if k.lower() not in HOP_BY_HOP}
    headers["user-agent"] = "TUNNEL_SENDER"
    payload = base64.b64decode(req["payload"]) if req.get("payload") else b""
    target = "/" + str(req["path"]) + (f"?{req['query']}" if req.get("query") else "")
    conn: _LocalConn | None = None
    pid = 1
    try:
        conn = await local.connect()
        fields = [("host", local.authority), *headers.items(), ("content-length", str(len(payload)))]
        conn.send(h11.Request(method=req["method"], target=target, headers=fields), h11.Data(data=payload))
        conn.send(h11.EndOfMessage())
        await conn.writer.drain()
        resp = await conn.next_event()
        if not isinstance(resp, h11.Response):
            raise h11.RemoteProtocolError(f"expected a response, got {resp!r}")
        raw = {k.decode("latin-1"): v.decode("latin-1") for k, v in resp.headers}
        rheaders = {k: v for k, v in raw.items() if k.lower() not in HOP_BY_HOP}
        buf, last = bytearray(), False
        while not last:
            if pid == 1:
                head = bytearray(encode_packet(rid, 1, False, b"", resp.status_code, rheaders))
            else:
                head = bytearray(HEADER.pack(rid, pid, 0))
            room = PACKET_BYTES - len(head)
            while len(buf) < room:
                event = await conn.next_event()
                if isinstance(event, h11.Data):
                    buf += event.data
                elif isinstance(event, h11.EndOfMessage):
                    last = True
                    break
                else:
                    raise h11.RemoteProtocolError(f"unexpected {event!r} in a response body")
            if stop.is_set():
                return
            body, buf = bytes(buf[:room]), buf[room:]
            last = last and not buf
            head[HEADER.size - 1] = int(last)
            await ws.send(bytes(head) + body)
            pid += 1
        local.release(conn)
        conn = None
    except (OSError, h11.ProtocolError) as exc:
        with contextlib.suppress(Exception):
            if pid == 1:
                body = f"local app failed: {exc}\n".encode()
                await ws.send(encode_packet(rid, 1, True, body, 502, {"content-type": "text/plain"}))
            else:  # mid-body: end it here, so the client sees a short body, not a hang
                await ws.send(HEADER.pack(rid, pid, 1))
    finally:
        if conn is not None:
            conn.close()


# -- TLS for the tunnel server ------------------------------------------------------------------------


def make_certificate(ip: str, directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for ``ip`` (its own CA): ``(certfile, keyfile)`` in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"tunnel {ip}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "tunnel-cert.pem", directory / "tunnel-key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    keyfile.chmod(0o600)
    return certfile, keyfile


# -- processes ------------------------------------------------------------------------------------


async def serve_uvicorn(app: Any, host: str, port: int, **kw: Any) -> None:
    """Run ``app`` under uvicorn (no access log, no WebSocket compression); ``ready PORT`` once it listens."""
    import uvicorn
    from uvicorn.config import WS_PROTOCOLS

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        ws="websockets-sansio" if "websockets-sansio" in WS_PROTOCOLS else "websockets",
        ws_per_message_deflate=False,
        ws_max_size=2 * PACKET_BYTES,
        lifespan="on",
        **kw,
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    for _ in range(3000):  # up to 30 s
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if not server.started:
        task.cancel()
        raise TunnelError(f"uvicorn did not start on {host}:{port}")
    ports = [sock.getsockname()[1] for srv in server.servers for sock in srv.sockets]
    print(f"ready {ports[0] if ports else port}", flush=True)
    await task


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="A minimal WebSocket tunnel (the WAN benchmark's baseline).")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("app", help="serve benchmarks.wan_app:app on 127.0.0.1 (uvicorn)")
    a.add_argument("--port", type=int, default=8000)
    s = sub.add_parser("server", help="the tunnel server (public host)")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--certfile")
    s.add_argument("--keyfile")
    d = sub.add_parser("sender", help="the sender (home): dials the tunnel server, forwards to the local app")
    d.add_argument("--tunnel", required=True, help="ws://HOST:PORT/ws or wss://HOST:PORT/ws")
    d.add_argument("--local", default="http://127.0.0.1:8000")
    d.add_argument("--cafile", help="the tunnel server's certificate (wss)")
    args = p.parse_args(argv)
    if args.cmd == "app":
        from benchmarks.wan_app import app

        asyncio.run(serve_uvicorn(app, "127.0.0.1", args.port))
    elif args.cmd == "server":
        if (args.certfile is None) != (args.keyfile is None):
            p.error("--certfile and --keyfile go together")
        tls = {"ssl_certfile": args.certfile, "ssl_keyfile": args.keyfile} if args.certfile else {}
        asyncio.run(serve_uvicorn(TunnelServer(), args.host, args.port, **tls))
    else:
        if not args.tunnel.startswith(("ws://", "wss://")):
            p.error(f"--tunnel must be a ws:// or wss:// URL, got {args.tunnel!r}")
        asyncio.run(run_sender(args.tunnel, args.local, args.cafile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
