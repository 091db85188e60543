"""A minimal WebSocket tunnel, the baseline of the WAN benchmark (benchmarks/wan.py).

It works as the system asgi-p2p replaces (the MoosicBox tunnel) does: a **tunnel server** on a
public host accepts HTTP requests from clients and one WebSocket from a **sender** inside the
home; the sender keeps that WebSocket open (it dials out, so no port forwarding is needed),
forwards each request it receives over it to the local app over HTTP on 127.0.0.1, and streams
the response back as binary WebSocket messages, which the tunnel server streams to the client.

Wire format (MoosicBox's binary encoding):

* request, server -> sender: a text message, JSON ``{"type": "HTTP", "request_id", "method",
  "path", "query", "headers", "payload" (base64 body or null), "encoding": "BINARY"}``; or
  ``{"type": "ABORT", "request_id"}`` when the client went away;
* response, sender -> server: binary messages of at most 32 KiB of body each:
  ``request_id u64 | packet_id u32 (from 1) | last u8`` and, in packet 1 only,
  ``status u16 | headers length u32 | headers JSON``; then body bytes. ``last=1`` ends it.

Subcommands (each prints ``ready`` on stdout once it serves; ``app`` and ``server`` add their port,
so ``--port 0`` works)::

    python benchmarks/tunnel.py app --port 8000                      # the app (uvicorn, 127.0.0.1)
    python benchmarks/tunnel.py server --host 0.0.0.0 --port 8080 [--certfile C --keyfile K]
    python benchmarks/tunnel.py sender --tunnel ws://HOST:8080/ws --local http://127.0.0.1:8000 [--cafile C]

Limits: request bodies up to 1 MiB (413 beyond); at most ``MAX_QUEUED_PACKETS`` response packets
wait per request on the server (the WebSocket reader then waits, which slows the whole tunnel,
as one TCP stream does); at most ``MAX_IN_FLIGHT`` requests in flight (503 beyond). Needs the
``bench`` extra (uvicorn, websockets).
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HEADER = struct.Struct("!QIB")  # request_id, packet_id, last
FIRST = struct.Struct("!HI")  # status, length of the headers JSON
PACKET_BYTES = 32 * 1024
MAX_QUEUED_PACKETS = 256
MAX_IN_FLIGHT = 1000
MAX_REQUEST_BODY = 1024 * 1024
MAX_HEADERS_JSON = 64 * 1024
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


async def run_sender(tunnel_url: str, local_url: str, cafile: str | None) -> None:
    import httpx
    from websockets.asyncio.client import connect

    ctx = ssl.create_default_context(cafile=cafile) if tunnel_url.startswith("wss:") else None
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with (
        connect(tunnel_url, ssl=ctx, compression=None, max_size=2 * PACKET_BYTES, open_timeout=30) as ws,
        httpx.AsyncClient(base_url=local_url, timeout=None, limits=limits) as http,
    ):
        print("ready", flush=True)
        aborted: dict[int, asyncio.Event] = {}
        tasks: set[asyncio.Task[None]] = set()
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
                task = asyncio.ensure_future(_forward(ws, http, req, rid, stop))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _t, rid=rid: aborted.pop(rid, None))


async def _forward(ws: Any, http: Any, req: dict[str, Any], rid: int, stop: asyncio.Event) -> None:
    """Send the request to the local app and its response back in packets of at most 32 KiB."""
    import httpx

    headers = {k: v for k, v in (req.get("headers") or {}).items() if k.lower() not in HOP_BY_HOP}
    headers["user-agent"] = "TUNNEL_SENDER"
    payload = base64.b64decode(req["payload"]) if req.get("payload") else None
    url = "/" + str(req["path"]) + (f"?{req['query']}" if req.get("query") else "")
    try:
        async with http.stream(req["method"], url, headers=headers, content=payload) as resp:
            rheaders = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
            pid, first = 1, True
            async for chunk in resp.aiter_raw(PACKET_BYTES):
                if stop.is_set():
                    return
                if first:
                    await ws.send(encode_packet(rid, 1, False, chunk, resp.status_code, rheaders))
                    first = False
                else:
                    await ws.send(encode_packet(rid, pid, False, chunk))
                pid += 1
            if first:
                await ws.send(encode_packet(rid, 1, True, b"", resp.status_code, rheaders))
            else:
                await ws.send(encode_packet(rid, pid, True, b""))
    except httpx.HTTPError as exc:
        body = f"local app failed: {exc}\n".encode()
        with contextlib.suppress(Exception):
            await ws.send(encode_packet(rid, 1, True, body, 502, {"content-type": "text/plain"}))


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
