"""Expose any local HTTP server to peers: an ASGI app forwarding to an HTTP/1.1 backend.

:class:`ProxyApp` is an ordinary ASGI 3 app, so :class:`~asgi_p2p.http.H3Server` serves it
to peers like any other (``asgi-p2p proxy URL`` does exactly that)::

    app = ProxyApp("http://127.0.0.1:8000")        # or ProxyApp("unix:/run/music.sock")
    server = H3Server(app, node)
    await server.startup()

Each peer request becomes one request to the backend over httpx (HTTP/1.1, pooled
keep-alive connections); each RFC 9220 WebSocket becomes an HTTP/1.1 Upgrade through the
``websockets`` client.  Bodies stream both ways chunk by chunk: the proxy reads the next
chunk from one side only after the other side took the previous one, so a large download
to a slow peer holds at most a few flow-control windows in memory.

What the backend sees:

- the peer's method, path, query and end-to-end headers; hop-by-hop headers (RFC 9110
  section 7.6.1: ``Connection`` and the fields it names, ``Keep-Alive``, ``Proxy-Connection``,
  ``TE``, ``Transfer-Encoding``, ``Upgrade``, plus ``Trailer``, ``Proxy-Authorization``) are
  dropped both ways;
- ``X-P2P-Peer-Id: <node id>``: the node id the peer proved in the TLS handshake (any such
  header the peer sends is removed first, so it cannot be forged);
- ``Forwarded: for="_<peer id>";by="_<our id>";host="<authority>";proto=https`` (RFC 7239,
  with node ids as obfuscated identifiers); a ``Forwarded`` or ``X-Forwarded-*`` header from
  the peer is removed, since the peer is the first hop;
- ``Host``: the backend's own host (``preserve_host=True`` passes the peer's authority).

Failures: backend unreachable -> ``502``, no response headers within ``timeout`` -> ``504``,
malformed or oversized response headers -> ``502`` (each with a one-line plain-text body and
a log line); a backend that fails after its response started (closes mid-body, stalls longer
than ``timeout``) resets the peer's stream.  One bad exchange never affects the others.

Response trailers: a peer request carrying ``TE: trailers`` goes to the backend on a
connection of its own, read with h11 (httpcore, under httpx, drops the trailer fields of a
chunked response); a chunked response that announces trailers (``Trailer``) reaches the peer
with them as HTTP/3 trailers.  Request trailers are not forwarded: ASGI has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

import httpcore
import httpx

from ..errors import InvalidConfiguration
from ..http.types import Message, Receive, Scope, Send

__all__ = ["DEFAULT_TIMEOUT", "PEER_ID_HEADER", "ProxyApp", "parse_backend"]

log = logging.getLogger("asgi_p2p.gateway.proxy")

#: the request header carrying the caller's proven node id to the backend
PEER_ID_HEADER = "x-p2p-peer-id"
#: seconds the backend may take to connect, to start its response, and between body chunks
DEFAULT_TIMEOUT = 60.0

#: RFC 9110 section 7.6.1 (plus fields defined hop-by-hop elsewhere); never forwarded
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
#: request headers the proxy sets itself (a peer's copy would be a forgery or is the first hop)
_SET_BY_PROXY = frozenset({"host", "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"})
#: a WebSocket client library makes these itself
_WS_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol", "sec-websocket-extensions"}
)
#: kernel receive buffer of each backend connection (bytes)
_RCVBUF = 4 * 1024 * 1024
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def parse_backend(url: str) -> tuple[httpx.URL, str | None]:
    """``(base URL, unix socket path or None)`` of a backend given as ``http://host:port[/prefix]``
    or ``unix:/path/to.sock`` (also ``http+unix://%2Fpath%2Fto.sock[/prefix]``)."""
    if url.startswith("unix:") and not url.startswith("unix://"):
        path = url[len("unix:") :]
        if not path.startswith("/"):
            raise InvalidConfiguration(f"backend {url!r}: the unix socket path must be absolute (unix:/run/app.sock)")
        return httpx.URL("http://localhost"), path
    parts = urlsplit(url)
    if parts.scheme == "http+unix":
        path = unquote(parts.netloc)
        if not path.startswith("/"):
            raise InvalidConfiguration(f"backend {url!r}: expected http+unix://%2Fabsolute%2Fpath.sock/")
        return httpx.URL("http://localhost" + parts.path.rstrip("/")), path
    if parts.scheme != "http" or not parts.hostname:
        raise InvalidConfiguration(
            f"backend {url!r}: expected http://HOST:PORT[/prefix] or unix:/path/to.sock (HTTP/1.1 without TLS)"
        )
    if parts.query or parts.fragment:
        raise InvalidConfiguration(f"backend {url!r}: no query or fragment allowed")
    try:
        return httpx.URL(url.rstrip("/")), None
    except httpx.InvalidURL as exc:
        raise InvalidConfiguration(f"backend {url!r}: {exc}") from None


def _connection_listed(headers: Iterable[tuple[bytes, bytes]]) -> set[str]:
    names: set[str] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            names.update(t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip())
    return names


def end_to_end(headers: Iterable[tuple[bytes, bytes]], *, drop: Iterable[str] = ()) -> list[tuple[str, str]]:
    """``headers`` (lower-cased names) without hop-by-hop fields, the fields ``Connection``
    names, and ``drop``."""
    items = list(headers)
    skip = HOP_BY_HOP | _connection_listed(items) | set(drop)
    out: list[tuple[str, str]] = []
    for raw_name, raw_value in items:
        name = raw_name.decode("latin-1").lower()
        if name in skip or name.startswith(":"):
            continue
        out.append((name, raw_value.decode("latin-1")))
    return out


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ProxyApp:
    """An ASGI app forwarding HTTP requests and WebSockets to one HTTP/1.1 ``backend``.

    ``backend``: ``http://HOST:PORT`` (optionally with a path prefix every request path is
    appended to) or ``unix:/path/to.sock``.  ``timeout``: seconds for connecting, for the
    response headers to start (else 504) and between body chunks either way.
    ``max_connections``: kept-alive backend connections at most (more requests wait for
    one, within ``timeout``).  ``peer_id_header``: the header naming the caller's node id
    (``None``: do not send one; any copy from the peer is removed all the same).
    ``forwarded``: add the RFC 7239 ``Forwarded`` header.  ``preserve_host``: send the
    peer's ``:authority`` as ``Host`` instead of the backend's.  ``max_message_size``:
    largest WebSocket message relayed (bytes).  ``coalesce_bytes``: response body read
    ahead of the peer at most (bytes), sent on as one chunk.
    """

    def __init__(
        self,
        backend: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = 100,
        peer_id_header: str | None = PEER_ID_HEADER,
        forwarded: bool = True,
        preserve_host: bool = False,
        max_message_size: int = 16 * 1024 * 1024,
        coalesce_bytes: int = 1024 * 1024,
    ) -> None:
        if not timeout > 0:
            raise InvalidConfiguration(f"timeout must be positive, got {timeout}")
        if max_connections < 1:
            raise InvalidConfiguration(f"max_connections must be at least 1, got {max_connections}")
        if peer_id_header is not None and not _TOKEN.match(peer_id_header):
            raise InvalidConfiguration(f"peer_id_header {peer_id_header!r} is not a valid header name")
        self.backend = backend
        self.base_url, self.uds = parse_backend(backend)
        self.timeout = timeout
        self.max_connections = max_connections
        self.peer_id_header = peer_id_header.lower() if peer_id_header else None
        self.forwarded = forwarded
        self.preserve_host = preserve_host
        self.max_message_size = max_message_size
        if coalesce_bytes < 1:
            raise InvalidConfiguration(f"coalesce_bytes must be positive, got {coalesce_bytes}")
        self.coalesce_bytes = coalesce_bytes
        self._client: httpx.AsyncClient | None = None
        #: requests answered 502 / 504 by the proxy itself, and exchanges cut off part-way
        self.bad_gateway = 0
        self.gateway_timeout = 0
        self.aborted = 0

    # -- the backend client ---------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        """The httpx client talking to the backend (made on first use)."""
        if self._client is None:
            transport = _BackendTransport(self.uds, self.max_connections)
            self._client = httpx.AsyncClient(
                transport=transport,
                timeout=httpx.Timeout(self.timeout),
                follow_redirects=False,
                trust_env=False,  # never route the backend through an HTTP_PROXY from the environment
            )
        return self._client

    async def aclose(self) -> None:
        """Close the backend connections (also done at ASGI lifespan shutdown)."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            raise RuntimeError(f"ProxyApp: unsupported scope type {kind!r}")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _peer(self, scope: Scope) -> tuple[str | None, str | None]:
        """(the caller's node id, our node id), when served by asgi-p2p."""
        p2p = scope.get("extensions", {}).get("p2p")
        peer = p2p.get("peer_id") if isinstance(p2p, dict) else None
        server = scope.get("server")
        ours = server[0] if server and p2p else None
        return peer, ours

    def _backend_headers(self, scope: Scope, *, drop: Iterable[str] = ()) -> tuple[list[tuple[str, str]], str]:
        """The request headers for the backend, and the peer's authority."""
        raw: list[tuple[bytes, bytes]] = list(scope.get("headers", ()))
        authority = ""
        for name, value in raw:
            if name.lower() == b"host":
                authority = value.decode("latin-1")
                break
        remove = set(_SET_BY_PROXY) | set(drop)
        if self.peer_id_header:
            remove.add(self.peer_id_header)
        remove.add(PEER_ID_HEADER)
        headers = end_to_end(raw, drop=remove)
        if self.preserve_host and authority:
            headers.insert(0, ("host", authority))
        peer, ours = self._peer(scope)
        if peer is not None and self.peer_id_header:
            headers.append((self.peer_id_header, peer))
        if self.forwarded:
            parts = []
            if peer is not None:
                parts.append(f"for={_quoted('_' + peer)}")
            elif scope.get("client"):
                parts.append(f"for={_quoted(str(scope['client'][0]))}")
            if ours is not None:
                parts.append(f"by={_quoted('_' + ours)}")
            if authority:
                parts.append(f"host={_quoted(authority)}")
            proto = "https" if scope.get("scheme") in ("https", "wss") else "http"
            parts.append(f"proto={proto}")
            headers.append(("forwarded", ";".join(parts)))
        return headers, authority

    def _target(self, scope: Scope) -> bytes:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        query: bytes = scope.get("query_string", b"")
        prefix = self.base_url.raw_path.split(b"?")[0].rstrip(b"/")
        return prefix + raw_path + (b"?" + query if query else b"")

    # -- HTTP ------------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        target = self._target(scope)
        if not target.startswith(b"/"):
            await _plain(send, 400, "bad request target\n")
            return
        headers, _ = self._backend_headers(scope)
        first = await receive()
        if first["type"] == "http.disconnect":
            return
        body: bytes = first.get("body", b"")
        content: bytes | AsyncIterator[bytes] | None
        if first.get("more_body", False):
            content = _request_body(body, receive)
        else:
            content = body if body or any(n == "content-length" for n, _ in headers) else None
        if _wants_trailers(scope):
            await self._http_with_trailers(send, method, target, headers, content)
            return
        try:
            url = self.base_url.copy_with(raw_path=target)
            request = self.client.build_request(method, url, headers=headers, content=content)
        except (httpx.InvalidURL, ValueError, UnicodeError) as exc:
            await _plain(send, 400, f"bad request: {exc}\n")
            return
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TimeoutException:
            self.gateway_timeout += 1
            log.warning(
                "504: backend %s did not answer %s %s within %gs", self.backend, method, _show(target), self.timeout
            )
            await _plain(send, 504, f"Gateway Timeout: the backend did not answer within {self.timeout:g}s\n")
            return
        except httpx.HTTPError as exc:
            if isinstance(exc, _PeerGone) or isinstance(exc.__cause__, _PeerGone):
                return
            self.bad_gateway += 1
            reason = _describe(exc)
            log.warning("502: backend %s failed on %s %s: %s", self.backend, method, _show(target), reason)
            await _plain(send, 502, f"Bad Gateway: {reason}\n")
            return
        try:
            await self._relay_response(response, send, method, target)
        finally:
            await response.aclose()

    async def _relay_response(self, response: httpx.Response, send: Send, method: str, target: bytes) -> None:
        raw = response.headers.raw
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in end_to_end(raw)]
        if response.headers.get("transfer-encoding") is not None:  # RFC 9112 6.3: chunked wins over a length
            headers = [(n, v) for n, v in headers if n != b"content-length"]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        buffer = _Coalescer(self.coalesce_bytes)
        reader = asyncio.ensure_future(buffer.fill(response.aiter_raw()))
        sent = 0
        try:
            while (chunk := await buffer.take()) is not None:
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if buffer.error is not None:
            self.aborted += 1
            log.warning(
                "backend %s failed after %d bytes of the response to %s %s: %s; resetting the peer's stream",
                self.backend,
                sent,
                method,
                _show(target),
                _describe(buffer.error),
            )
            return  # the response is incomplete: the server resets the stream
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- trailers (h11 directly) -----------------------------------------------------------------

    async def _http_with_trailers(
        self,
        send: Send,
        method: str,
        target: bytes,
        headers: list[tuple[str, str]],
        content: bytes | AsyncIterator[bytes] | None,
    ) -> None:
        """The exchange for a peer that accepts trailers (``TE: trailers``), on a backend connection
        of its own read with h11, which keeps the trailer fields of a chunked response (httpcore
        drops them); they reach the peer as HTTP/3 trailers.  Same limits, errors and backpressure
        as the pooled path; the connection is closed afterwards."""
        import h11

        fields = list(headers)
        if not any(n == "host" for n, _ in fields):  # (preserve_host put the peer's in)
            fields.insert(0, ("host", self.base_url.netloc.decode()))
        fields += [("te", "trailers"), ("connection", "te")]
        if isinstance(content, bytes):
            fields = [(n, v) for n, v in fields if n != "content-length"] + [("content-length", str(len(content)))]
        elif content is not None and not any(n == "content-length" for n, _ in fields):
            fields.append(("transfer-encoding", "chunked"))
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        writer: asyncio.StreamWriter | None = None
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    if self.uds is not None:
                        reader, writer = await asyncio.open_unix_connection(self.uds, limit=READ_SIZE)
                    else:
                        port = self.base_url.port or 80
                        reader, writer = await asyncio.open_connection(self.base_url.host, port, limit=READ_SIZE)
                writer.write(conn.send(h11.Request(method=method, target=target, headers=fields)))
                if isinstance(content, bytes):
                    if content:
                        writer.write(conn.send(h11.Data(data=content)))
                elif content is not None:
                    async for chunk in content:
                        writer.write(conn.send(h11.Data(data=chunk)))
                        async with asyncio.timeout(self.timeout):
                            await writer.drain()
                writer.write(conn.send(h11.EndOfMessage()))
                async with asyncio.timeout(self.timeout):
                    await writer.drain()
                    event = await _next_event(conn, reader)
                    while isinstance(event, h11.InformationalResponse):
                        event = await _next_event(conn, reader)
            except TimeoutError:
                self.gateway_timeout += 1
                log.warning(
                    "504: backend %s did not answer %s %s within %gs", self.backend, method, _show(target), self.timeout
                )
                await _plain(send, 504, f"Gateway Timeout: the backend did not answer within {self.timeout:g}s\n")
                return
            except _PeerGone:
                return
            except (OSError, h11.ProtocolError) as exc:
                self.bad_gateway += 1
                reason = f"cannot connect to the backend ({exc})" if writer is None else _describe_h11(exc)
                log.warning("502: backend %s failed on %s %s: %s", self.backend, method, _show(target), reason)
                await _plain(send, 502, f"Bad Gateway: {reason}\n")
                return
            assert isinstance(event, h11.Response)
            out = [(n, v) for n, v in end_to_end(event.headers)]
            chunked = any(n == b"transfer-encoding" for n, _ in event.headers)
            announced = any(n == b"trailer" for n, _ in event.headers)  # RFC 9110 6.6.2
            body_headers = [
                (n.encode("latin-1"), v.encode("latin-1")) for n, v in out if not (chunked and n == "content-length")
            ]
            trailers = chunked and announced and method != "HEAD"
            await send(
                {
                    "type": "http.response.start",
                    "status": event.status_code,
                    "headers": body_headers,
                    "trailers": trailers,
                }
            )
            while True:
                try:
                    async with asyncio.timeout(self.timeout):
                        event = await _next_event(conn, reader)
                except (TimeoutError, OSError, h11.ProtocolError) as exc:
                    self.aborted += 1
                    log.warning(
                        "backend %s failed during the response to %s %s: %s; resetting the peer's stream",
                        self.backend,
                        method,
                        _show(target),
                        "the backend stalled longer than the timeout" if isinstance(exc, TimeoutError) else exc,
                    )
                    return  # the response is incomplete: the server resets the stream
                if isinstance(event, h11.Data):
                    await send({"type": "http.response.body", "body": bytes(event.data), "more_body": True})
                elif isinstance(event, h11.EndOfMessage):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    if trailers:
                        fields_out = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in end_to_end(event.headers)]
                        await send({"type": "http.response.trailers", "headers": fields_out})
                    return
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    # -- WebSocket ---------------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        from websockets.asyncio.client import connect, unix_connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

        message = await receive()
        if message["type"] != "websocket.connect":
            return
        target = self._target(scope)
        headers, _ = self._backend_headers(scope, drop=_WS_HANDSHAKE)
        uri = "ws://" + self.base_url.netloc.decode("ascii") + target.decode("latin-1")
        subprotocols: list[Any] = list(scope.get("subprotocols", ()))
        options: dict[str, Any] = {
            "additional_headers": headers,
            "subprotocols": subprotocols or None,
            "open_timeout": self.timeout,
            "max_size": self.max_message_size,
            "compression": None,
            "user_agent_header": None,
            "proxy": None,
        }
        try:
            if self.uds is not None:
                opening = unix_connect(self.uds, uri, **options)
            else:
                opening = connect(uri, **options)
            backend = await opening
        except InvalidStatus as exc:
            status = exc.response.status_code
            log.info("backend %s refused the WebSocket to %s with %d", self.backend, _show(target), status)
            resp_headers = [
                (n.lower().encode("latin-1"), v.encode("latin-1"))
                for n, v in exc.response.headers.raw_items()
                if n.lower() not in HOP_BY_HOP and n.lower() != "content-length"
            ]
            await send({"type": "websocket.http.response.start", "status": status, "headers": resp_headers})
            await send({"type": "websocket.http.response.body", "body": bytes(exc.response.body or b"")})
            return
        except TimeoutError:
            self.gateway_timeout += 1
            log.warning(
                "504: backend %s did not accept the WebSocket to %s within %gs",
                self.backend,
                _show(target),
                self.timeout,
            )
            await _ws_deny(send, 504, f"Gateway Timeout: the backend did not answer within {self.timeout:g}s\n")
            return
        except (OSError, InvalidHandshake) as exc:
            self.bad_gateway += 1
            log.warning("502: backend %s failed on the WebSocket to %s: %s", self.backend, _show(target), exc)
            await _ws_deny(send, 502, f"Bad Gateway: {exc}\n")
            return
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if backend.subprotocol:
            accept["subprotocol"] = str(backend.subprotocol)
        await send(accept)

        async def peer_to_backend() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "websocket.receive":
                    text = msg.get("text")
                    await backend.send(text if text is not None else bytes(msg.get("bytes") or b""))
                elif msg["type"] == "websocket.disconnect":
                    code = int(msg.get("code") or 1000)
                    await backend.close(code if _sendable(code) else 1000, str(msg.get("reason") or ""))
                    return

        async def backend_to_peer() -> None:
            try:
                async for data in backend:
                    if isinstance(data, str):
                        await send({"type": "websocket.send", "text": data})
                    else:
                        await send({"type": "websocket.send", "bytes": bytes(data)})
            except ConnectionClosed:
                pass
            code = backend.close_code or 1000
            await send(
                {
                    "type": "websocket.close",
                    "code": code if _sendable(code) else 1011,
                    "reason": backend.close_reason or "",
                }
            )

        tasks = [asyncio.ensure_future(peer_to_backend()), asyncio.ensure_future(backend_to_peer())]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for task in done:
                failure = task.exception()
                if failure is not None and not isinstance(failure, (ConnectionClosed, OSError)):
                    raise failure
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                await backend.close()


#: most bytes one read from a backend connection takes (httpcore asks for 64 KiB at a time)
READ_SIZE = 1024 * 1024


class _BackendTransport(httpx.AsyncHTTPTransport):
    """httpx's HTTP/1.1 transport whose connections read up to :data:`READ_SIZE` bytes at a time.

    Each read of a response body costs the same in httpcore and h11 whatever its size; a bulk
    body arrives faster than this process forwards it, so larger reads mean fewer of them.
    """

    def __init__(self, uds: str | None, max_connections: int) -> None:
        super().__init__(uds=uds, retries=0)
        self._pool = httpcore.AsyncConnectionPool(
            max_connections=max_connections,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,  # httpx's default
            uds=uds,
            retries=0,
            # a large receive buffer lets the backend write ahead while this process is busy
            # with QUIC (on a loaded machine, each refill otherwise waits for the backend's turn)
            socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)],
            network_backend=_LargeReads(httpcore.AnyIOBackend()),
        )


class _LargeReads(httpcore.AsyncNetworkBackend):
    """A network backend whose streams read up to :data:`READ_SIZE` bytes when asked for less."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _LargeReadStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _LargeReadStream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _LargeReadStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max(max_bytes, READ_SIZE), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.start_tls(ssl_context, server_hostname, timeout)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Coalescer:
    """Response body chunks read ahead of the peer, at most ``limit`` bytes.

    httpx yields what each socket read returned (up to 64 KiB); :meth:`take` hands over
    everything the backend has sent so far as one chunk (up to ``limit`` bytes), so that a
    bulk body goes out in large HTTP/3 writes while a trickle (server-sent events) is
    passed on at once.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.done = False
        self.error: httpx.HTTPError | None = None
        self._data = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    async def fill(self, body: AsyncIterator[bytes]) -> None:
        try:
            async for chunk in body:
                if not chunk:
                    continue
                while self.size >= self.limit:
                    self._space.clear()
                    await self._space.wait()
                self.chunks.append(chunk)
                self.size += len(chunk)
                self._data.set()
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self.done = True
            self._data.set()

    async def take(self) -> bytes | None:
        """Everything read so far (waiting for something), or None at the end of the body."""
        while not self.chunks:
            if self.done:
                return None
            self._data.clear()
            await self._data.wait()
        # gather what the backend has already sent (reads land one per loop turn): one HTTP/3
        # write of up to `limit` bytes makes full QUIC packets, where a 64 KiB read leaves a
        # small packet behind; stop as soon as two turns bring nothing, so no chunk waits
        idle = 0
        while self.size < self.limit and not self.done and idle < 2:
            before = self.size
            await asyncio.sleep(0)
            idle = idle + 1 if self.size == before else 0
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.size = 0
        self._space.set()
        return data


def _wants_trailers(scope: Scope) -> bool:
    """The peer's request says it accepts response trailers (``TE: trailers``, RFC 9110 10.1.4)."""
    return any(name.lower() == b"te" and b"trailers" in value.lower() for name, value in scope.get("headers", ()))


async def _next_event(conn: Any, reader: asyncio.StreamReader) -> Any:
    """The next h11 event of the backend's response, reading as needed (a closed connection is an error)."""
    import h11

    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(READ_SIZE)
            conn.receive_data(data)  # b"": the backend closed; h11 raises on an incomplete message
            continue
        if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            raise h11.RemoteProtocolError("the backend closed the connection")
        return event


def _describe_h11(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"the backend connection failed ({exc})"
    return f"the backend sent malformed HTTP or closed the connection ({exc})"


class _PeerGone(httpx.TransportError):
    """The peer went away while its request body was being forwarded."""


async def _request_body(first: bytes, receive: Receive) -> AsyncIterator[bytes]:
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _PeerGone("the peer went away during its request body")
        body = message.get("body", b"")
        if body:
            yield body
        if not message.get("more_body", False):
            return


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode("utf-8")
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})


async def _ws_deny(send: Send, status: int, text: str) -> None:
    await send(
        {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
        }
    )
    await send({"type": "websocket.http.response.body", "body": text.encode("utf-8")})


def _sendable(code: int) -> bool:
    """May ``code`` go in a close frame (RFC 6455 7.4)?"""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or 3000 <= code <= 4999


def _show(target: bytes) -> str:
    text = target.decode("latin-1")
    return text if len(text) <= 200 else text[:200] + "..."


def _describe(exc: BaseException) -> str:
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to the backend ({exc or type(exc).__name__})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the backend sent malformed HTTP or closed the connection ({exc})"
    if isinstance(exc, httpx.TimeoutException):
        return "the backend stalled longer than the timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
