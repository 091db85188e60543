"""HTTP/3 server running an ASGI 3 application on an endpoint's ``h3`` connections.

One client-initiated bidirectional stream is one ASGI ``http`` (or, with RFC 9220
extended CONNECT, ``websocket``) scope.  Each connection is driven sans-I/O with
aioquic's :class:`~aioquic.h3.connection.H3Connection`; the only task per
request is the application's own.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.events import QuicEvent, StopSendingReceived, StreamDataReceived, StreamReset

from .. import aioquic_compat as hooks
from ..endpoint.connection import PeerConnection
from ..endpoint.endpoint import Endpoint
from ..errors import ConnectionClosed, InvalidConfiguration
from ..errors import StreamReset as StreamResetError
from ..identity import NodeId
from . import _wsframe as ws
from ._common import (
    H3,
    H3_INTERNAL_ERROR,
    H3_NO_ERROR,
    H3_REQUEST_CANCELLED,
    H3_REQUEST_REJECTED,
    ClientDisconnected,
    Credit,
    Headers,
    clean_header_fields,
    send_body,
)
from ._dispatch import h3_protocol
from .lifespan import LifespanMode, LifespanRunner
from .request import HEADERS_TOO_LARGE, PeerInfo, Rejection, RequestSettings, parse_request
from .types import ASGIApp, Message

__all__ = ["H3Server"]

log = logging.getLogger("asgi_p2p.http")
access_log = logging.getLogger("asgi_p2p.http.access")

_NO_BODY_STATUS = frozenset({204, 304})
#: Bytes of a header section in flight before its HEADERS frame completes, beyond max_header_size.
_HEADER_SLACK = 16 * 1024
_FLUSH_TIMEOUT = 2.0


def _plain(status: int, text: str, extra: Iterable[tuple[bytes, bytes]] = ()) -> tuple[Headers, bytes]:
    body = text.encode()
    headers: Headers = [
        (b":status", str(status).encode()),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    return headers, body


class H3Server:
    """Serve an ASGI app to peers over HTTP/3 on ``endpoint``.

    >>> server = H3Server(app, endpoint)
    >>> await server.startup()    # lifespan startup, then accept ``h3`` connections
    >>> ...
    >>> await server.shutdown()   # GOAWAY, finish in-flight requests, lifespan shutdown
    """

    def __init__(
        self,
        app: ASGIApp,
        endpoint: Endpoint,
        *,
        root_path: str = "",
        lifespan: LifespanMode = "auto",
        limit_concurrency: int | None = None,
        max_header_size: int = 64 * 1024,
        max_body_size: int | None = None,
        timeout_graceful_shutdown: float | None = None,
    ) -> None:
        if limit_concurrency is not None and limit_concurrency < 1:
            raise InvalidConfiguration(f"limit_concurrency must be at least 1, got {limit_concurrency}")
        if max_header_size < 1:
            raise InvalidConfiguration(f"max_header_size must be positive, got {max_header_size}")
        if max_body_size is not None and max_body_size < 0:
            raise InvalidConfiguration(f"max_body_size must not be negative, got {max_body_size}")
        self.app = app
        self.endpoint = endpoint
        #: what requests are parsed with (root_path, max_header_size and max_body_size below read and replace it)
        self.request_settings = RequestSettings(
            server=(str(endpoint.node_id), 443),
            root_path=root_path.rstrip("/"),
            max_header_size=max_header_size,
            max_body_size=max_body_size,
        )
        self.limit_concurrency = limit_concurrency
        self.timeout_graceful_shutdown = timeout_graceful_shutdown
        self.lifespan = LifespanRunner(app, lifespan)
        self._connections: set[ServerConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._closing = False
        self._closed = False
        #: Counters (for metrics): requests started, rejected by a limit, failed in the app.
        self.requests_total = 0
        self.requests_rejected = 0
        self.app_errors = 0

    @property
    def root_path(self) -> str:
        return self.request_settings.root_path

    @root_path.setter
    def root_path(self, value: str) -> None:
        self.request_settings = dataclasses.replace(self.request_settings, root_path=value)

    @property
    def max_header_size(self) -> int:
        return self.request_settings.max_header_size

    @max_header_size.setter
    def max_header_size(self, value: int) -> None:
        self.request_settings = dataclasses.replace(self.request_settings, max_header_size=value)

    @property
    def max_body_size(self) -> int | None:
        return self.request_settings.max_body_size

    @max_body_size.setter
    def max_body_size(self, value: int | None) -> None:
        self.request_settings = dataclasses.replace(self.request_settings, max_body_size=value)

    # -- lifecycle --------------------------------------------------------

    @property
    def active_requests(self) -> int:
        return len(self._tasks)

    @property
    def node_id(self) -> NodeId:
        return self.endpoint.node_id

    async def startup(self) -> None:
        """Run lifespan startup (raises :class:`LifespanFailed`), then serve ``h3``."""
        if self._started:
            raise InvalidConfiguration("H3Server.startup() called twice")
        proto = h3_protocol(self.endpoint)
        if proto.server_factory is not None:
            raise InvalidConfiguration("another H3Server already serves this endpoint")
        await self.lifespan.startup()
        self._started = True
        proto.server_factory = self._make_handler
        log.info("serving HTTP/3 on node %s", self.endpoint.node_id)

    async def shutdown(self) -> None:
        """Graceful shutdown: GOAWAY to every peer, refuse new requests, wait for the
        in-flight ones (up to ``timeout_graceful_shutdown``), close, lifespan shutdown."""
        if self._closing:
            return
        self._closing = True
        proto = h3_protocol(self.endpoint)
        if proto.server_factory == self._make_handler:
            proto.server_factory = None
        for sc in list(self._connections):
            sc.send_goaway()
            sc.shutdown_websockets()
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout_graceful_shutdown is None else loop.time() + self.timeout_graceful_shutdown
        while self._prune_tasks():
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            await asyncio.wait(set(self._tasks), timeout=remaining)
        if self._tasks:
            log.warning("cancelling %d requests still running after the graceful shutdown timeout", len(self._tasks))
            tasks = set(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=1.0)
            self._prune_tasks()
        conns = list(self._connections)
        if conns:
            await asyncio.wait([loop.create_task(sc.flush()) for sc in conns], timeout=_FLUSH_TIMEOUT)
        for sc in conns:
            sc.conn.close(H3_NO_ERROR, "server shutting down")
        if self._started:
            await self.lifespan.shutdown()
        self._closed = True
        log.info("HTTP/3 server on node %s stopped", self.endpoint.node_id.fmt_short())

    def _prune_tasks(self) -> bool:
        """Forget request tasks that ended without running (cancelled before their first step,
        so their ``finally`` never removed them); True while requests are running."""
        done = [t for t in self._tasks if t.done()]
        if done:
            self._tasks.difference_update(done)
        return bool(self._tasks)

    async def __aenter__(self) -> H3Server:
        await self.startup()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    def _make_handler(self, conn: PeerConnection) -> ServerConnection:
        if self._closing:
            raise ConnectionClosed("HTTP server is shutting down")
        return ServerConnection(self, conn)


class _Pending:
    """A request stream whose HEADERS frame has not arrived yet."""

    __slots__ = ("credit",)

    def __init__(self, credit: Credit) -> None:
        self.credit = credit


class ServerConnection:
    """The server side of one HTTP/3 connection (a :class:`ConnectionHandler`)."""

    def __init__(self, server: H3Server, conn: PeerConnection) -> None:
        self.server = server
        self.conn = conn
        self.loop = conn.loop
        self.h3 = H3(conn.quic, qpack_dynamic_table=False)
        assert conn.remote_node_id is not None
        self.peer = conn.remote_node_id
        self.peer_info = PeerInfo(self.peer)
        self.streams: dict[int, _Pending | _Exchange] = {}
        self.next_request_id = 0
        # request stream ids below next_request_id whose first bytes have not arrived yet:
        # streams open in id order, but under loss their first packets arrive in any order
        self._unseen: set[int] = set()
        self.goaway_id: int | None = None
        self.lost = False
        self._unflushed: set[int] = set()
        self.send_limit = conn.config.stream_send_buffer
        server._connections.add(self)
        self.schedule_transmit()

    # -- transmit coalescing --------------------------------------------------

    def schedule_transmit(self) -> None:
        hooks.ack_with_next_packet(self.conn.quic, self.conn.loop.time())  # a pending ACK rides along
        # one deferred transmit per connection, shared with the datagram receive path
        if not self.lost:
            self.conn.schedule_transmit()

    # -- events -------------------------------------------------------------

    def quic_event_received(self, event: QuicEvent) -> None:
        touched: _Pending | _Exchange | None = None
        if isinstance(event, StreamDataReceived) and event.stream_id % 4 == 0:
            sid = event.stream_id
            item = self.streams.get(sid)
            if item is None and self._first_data(sid):
                if self.goaway_id is not None and sid >= self.goaway_id:
                    self._reject(sid)
                else:
                    item = self.streams[sid] = _Pending(Credit(self.conn, sid))
            if item is not None:
                item.credit.raw += len(event.data)
                touched = item
                if isinstance(item, _Pending) and item.credit.raw > self.server.max_header_size + _HEADER_SLACK:
                    self._respond_now(sid, item.credit, HEADERS_TOO_LARGE, ended=False)
                    return
        for h3_event in self.h3.handle_event(event):
            try:
                self._h3_event(h3_event)
            except Exception:  # one broken stream must not take the connection down
                failed: int | None = getattr(h3_event, "stream_id", None)
                log.exception("internal error on stream %s; resetting it", failed)
                if failed is not None:
                    self._fail_stream(failed)
        if isinstance(event, StreamReset | StopSendingReceived):
            self._unseen.discard(event.stream_id)
            item = self.streams.get(event.stream_id)
            if isinstance(item, _Pending):
                self.streams.pop(event.stream_id, None)
                self.conn.forget_stream(event.stream_id)
            elif item is not None:
                if isinstance(event, StreamReset):
                    item.on_reset(event.error_code)
                else:
                    item.on_stop(event.error_code)
        if touched is not None:
            touched.credit.update()

    def _first_data(self, sid: int) -> bool:
        """True when ``sid`` is a request stream we have not seen before.

        A lower stream id may show up after a higher one (its first packet was lost
        and retransmitted), so ids skipped over are remembered until their data
        arrives or they are reset; aioquic's stream limit bounds how many there are.
        """
        if sid >= self.next_request_id:
            self._unseen.update(range(self.next_request_id, sid, 4))
            self.next_request_id = sid + 4
            return True
        if sid in self._unseen:
            self._unseen.discard(sid)
            return True
        return False

    def _h3_event(self, event: H3Event) -> None:
        if not isinstance(event, HeadersReceived | DataReceived):
            return
        sid = event.stream_id
        item = self.streams.get(sid)
        if item is None:
            return
        if isinstance(event, HeadersReceived):
            if isinstance(item, _Pending):
                self._start(sid, item.credit, event.headers, event.stream_ended)
            elif event.stream_ended:  # request trailers: ASGI has no place for them
                item.on_data(b"", True)
        elif isinstance(event, DataReceived) and not isinstance(item, _Pending):
            item.on_data(event.data, event.stream_ended)
            item.credit.update()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server._connections.discard(self)
        for item in list(self.streams.values()):
            if not isinstance(item, _Pending):
                item.on_lost()
        self.streams = {k: v for k, v in self.streams.items() if not isinstance(v, _Pending)}

    # -- requests -------------------------------------------------------------

    def _fail_stream(self, sid: int) -> None:
        item = self.streams.pop(sid, None)
        if isinstance(item, _Exchange):
            item._abort(H3_INTERNAL_ERROR)
        else:
            self.conn.reset_stream(sid, H3_INTERNAL_ERROR)
            self.conn.stop_stream(sid, H3_INTERNAL_ERROR)
            self.h3.end_local(sid)
        self.conn.forget_stream(sid)

    def _reject(self, sid: int) -> None:
        """Refuse a request that arrived after our GOAWAY (safe for the client to retry)."""
        self.conn.reset_stream(sid, H3_REQUEST_REJECTED)
        self.conn.stop_stream(sid, H3_REQUEST_REJECTED)
        self.h3.end_local(sid)

    def _respond_now(self, sid: int, credit: Credit, rejection: Rejection, *, ended: bool) -> None:
        """Answer without running the app (limits, bad requests), then stop reading the request."""
        self.server.requests_rejected += 1
        status = rejection.status
        headers, body = _plain(status, rejection.reason, rejection.headers)
        try:
            self.h3.send_headers(sid, headers)
            self.h3.send_data(sid, body, True)
        except Exception:  # stream already gone
            log.debug("could not answer stream %d with %d", sid, status, exc_info=True)
        if not ended:
            self.conn.stop_stream(sid, H3_NO_ERROR)
        self.streams.pop(sid, None)
        self.conn.forget_stream(sid)
        del credit
        self.schedule_transmit()

    def _start(self, sid: int, credit: Credit, fields: Headers, ended: bool) -> None:
        server = self.server
        limit = server.limit_concurrency
        parsed = parse_request(
            fields,
            stream_id=sid,
            peer=self.peer_info,
            settings=server.request_settings,
            state=server.lifespan.state,
            at_capacity=limit is not None and len(server._tasks) >= limit,
        )
        if isinstance(parsed, Rejection):
            self._respond_now(sid, credit, parsed, ended=ended)
            return
        exchange: _Exchange
        if parsed["type"] == "websocket":
            exchange = _WebSocketExchange(self, sid, credit, parsed)
        else:
            exchange = _HTTPExchange(self, sid, credit, parsed, ended)
        self.streams[sid] = exchange
        server.requests_total += 1
        task = self.loop.create_task(exchange.run())
        exchange.task = task
        # finished() removes the task from server._tasks as its last step: a done callback
        # would cost every request one more event loop iteration (and epoll call)
        server._tasks.add(task)

    def finished(self, exchange: _Exchange) -> None:
        """The exchange's application task is ending (called from its ``finally``)."""
        if exchange.task is not None:
            self.server._tasks.discard(exchange.task)
        sid = exchange.sid
        if self.streams.get(sid) is exchange:
            del self.streams[sid]
        self.conn.forget_stream(sid)
        if not self.lost and hooks.unacked_bytes(self.conn.quic, sid):
            self._unflushed.add(sid)
            if len(self._unflushed) > 64:
                self._unflushed = {s for s in self._unflushed if hooks.unacked_bytes(self.conn.quic, s)}

    # -- shutdown ---------------------------------------------------------------

    def send_goaway(self) -> None:
        if self.goaway_id is not None or self.lost:
            return
        self.goaway_id = self.next_request_id
        try:
            self.h3.send_goaway(self.goaway_id)
        except Exception:
            log.debug("could not send GOAWAY", exc_info=True)
        self.schedule_transmit()

    def shutdown_websockets(self) -> None:
        for item in list(self.streams.values()):
            if isinstance(item, _WebSocketExchange):
                item.server_shutdown()

    async def flush(self) -> None:
        """Wait until every finished response is acknowledged by the peer."""
        for sid in list(self._unflushed):
            try:
                await self.conn.drain(sid)
            except Exception:
                pass
        self._unflushed.clear()


class _Exchange(abc.ABC):
    """State shared by HTTP and WebSocket exchanges on one request stream."""

    kind = "http"

    def __init__(self, sc: ServerConnection, sid: int, credit: Credit, scope: dict[str, Any]) -> None:
        self.sc = sc
        self.sid = sid
        self.credit = credit
        self.scope = scope
        self.task: asyncio.Task[None] | None = None
        self.disconnected = False
        self.request_ended = False
        self.complete = False  # our sending side is finished (FIN or reset)
        self._waiter: asyncio.Future[None] | None = None

    # -- waking the app's receive() -------------------------------------------

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self) -> None:
        w = self._waiter = self.sc.loop.create_future()
        try:
            await w
        finally:
            self._waiter = None

    # -- peer events ------------------------------------------------------------

    @abc.abstractmethod
    def on_data(self, data: bytes, ended: bool) -> None:
        """Request body bytes (or WebSocket frames) from the peer."""

    def on_reset(self, code: int) -> None:
        """The peer reset its sending side: the request is cancelled."""
        self.request_ended = True
        self.credit.unread = 0
        if not self.complete:
            self._abort(H3_REQUEST_CANCELLED, stop=False)
        self.disconnected = True
        self._wake()

    def on_stop(self, code: int) -> None:
        """The peer does not want our response any more (aioquic already reset our side)."""
        if not self.complete:
            self.complete = True
            self.sc.h3.end_local(self.sid)
            if not self.request_ended:
                self.sc.conn.stop_stream(self.sid, H3_REQUEST_CANCELLED)
        self.disconnected = True
        self._wake()

    def on_lost(self) -> None:
        self.disconnected = True
        self.complete = True
        self._wake()

    # -- sending ------------------------------------------------------------------

    def _check(self) -> None:
        if self.disconnected or self.sc.lost:
            raise ClientDisconnected(f"peer {self.sc.peer.fmt_short()} went away (stream {self.sid})")

    def _abort(self, code: int, *, stop: bool = True) -> None:
        """Reset our side of the stream (and stop reading the request)."""
        if self.complete:
            return
        self.complete = True
        conn = self.sc.conn
        if not self.sc.lost:
            conn.reset_stream(self.sid, code)
            if stop and not self.request_ended:
                conn.stop_stream(self.sid, code)
        self.sc.h3.end_local(self.sid)
        self._wake()

    async def _write(self, data: bytes, end: bool) -> None:
        """Send ``data`` in DATA frames, waiting while the stream's send buffer is full."""
        self._check()
        try:
            await send_body(self.sc, self.sid, data, end)
        except (StreamResetError, ConnectionClosed, RuntimeError) as exc:
            self.disconnected = True
            raise ClientDisconnected(f"peer {self.sc.peer.fmt_short()} went away (stream {self.sid}): {exc}") from None

    def _send_headers(self, headers: Headers, end: bool) -> None:
        self._check()
        try:
            self.sc.h3.send_headers(self.sid, headers, end)
        except RuntimeError as exc:
            self.disconnected = True
            raise ClientDisconnected(str(exc)) from None
        self.sc.schedule_transmit()

    def _send_plain(self, status: int, text: str) -> None:
        """Send a whole plain-text response (the stream may be gone already)."""
        headers, body = _plain(status, text)
        try:
            self.sc.h3.send_headers(self.sid, headers)
            self.sc.h3.send_data(self.sid, body, True)
        except RuntimeError:
            pass
        self.sc.schedule_transmit()

    def _completed(self) -> None:
        self.complete = True
        if not self.request_ended and not self.sc.lost:
            # the response is complete: we need no more of the request (RFC 9114 section 4.1.2)
            self.sc.conn.stop_stream(self.sid, H3_NO_ERROR)
        self._wake()

    # -- the application task -----------------------------------------------------------------

    #: how log lines name the exchange's stream ("<label>stream 4") and application
    label = ""

    @abc.abstractmethod
    async def receive(self) -> Message:
        """The ASGI ``receive`` callable."""

    @abc.abstractmethod
    async def send(self, message: Message) -> None:
        """The ASGI ``send`` callable."""

    @abc.abstractmethod
    def _app_failed(self) -> None:
        """The application raised: answer with an error if the response allows it."""

    @abc.abstractmethod
    def _app_returned_early(self) -> None:
        """The application returned without completing its side of the stream."""

    async def run(self) -> None:
        """Run the ASGI application for this stream."""
        server = self.sc.server
        try:
            await server.app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            self._abort(H3_REQUEST_CANCELLED)
            raise
        except Exception as exc:
            if self.disconnected and isinstance(exc, OSError):
                log.debug("%sstream %d: peer went away: %s", self.label, self.sid, exc)
            else:
                server.app_errors += 1
                log.error("Exception in ASGI %sapplication (stream %d)", self.label, self.sid, exc_info=exc)
            self._app_failed()
        else:
            if not self.complete and not self.disconnected:
                self._app_returned_early()
        finally:
            self.sc.finished(self)


class _HTTPExchange(_Exchange):
    def __init__(
        self, sc: ServerConnection, sid: int, credit: Credit, scope: dict[str, Any], request_ended: bool
    ) -> None:
        super().__init__(sc, sid, credit, scope)
        self.request_ended = request_ended
        self.chunks: list[bytes] = []
        self.final_delivered = False
        self.received = 0
        self.is_head = scope["method"] == "HEAD"
        # response
        self.started = False
        self.headers_sent = False
        self.status = 0
        self.headers: Headers = []
        self.no_body = False
        self.expected: int | None = None
        self.sent = 0
        self.trailers = False
        self.trailer_fields: Headers = []

    # -- request body --------------------------------------------------------------

    def on_data(self, data: bytes, ended: bool) -> None:
        if self.disconnected:
            return
        if data:
            self.received += len(data)
            limit = self.sc.server.max_body_size
            if limit is not None and self.received > limit:
                self._body_too_large()
                return
            self.chunks.append(data)
            self.credit.unread += len(data)
        if ended:
            self.request_ended = True
        self._wake()

    def _body_too_large(self) -> None:
        log.info("request body on stream %d exceeds max_body_size=%s", self.sid, self.sc.server.max_body_size)
        self.chunks.clear()
        self.credit.unread = 0
        if not self.headers_sent:
            self.headers_sent = True
            self._send_plain(413, "Content Too Large")
            self.complete = True
            self.sc.conn.stop_stream(self.sid, H3_NO_ERROR)
        else:
            self._abort(H3_REQUEST_CANCELLED)
        self.disconnected = True
        self._wake()

    async def receive(self) -> Message:
        while True:
            if self.disconnected:
                return {"type": "http.disconnect"}
            if self.chunks:
                chunks = self.chunks
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.credit.read(len(data))
                if self.request_ended:
                    self.final_delivered = True
                return {"type": "http.request", "body": data, "more_body": not self.request_ended}
            if self.request_ended and not self.final_delivered:
                self.final_delivered = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if self.complete:
                return {"type": "http.disconnect"}
            await self._wait()

    # -- response ------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if not self.started:
                raise RuntimeError("ASGI: 'http.response.body' sent before 'http.response.start'")
            if self.complete:
                self._check()
                raise RuntimeError("ASGI: 'http.response.body' sent after the response completed")
            await self._send_body(message.get("body", b""), bool(message.get("more_body", False)))
        elif kind == "http.response.start":
            if self.started:
                raise RuntimeError("ASGI: 'http.response.start' sent twice")
            self._check()
            self._start_response(message)
        elif kind == "http.response.trailers":
            if not self.trailers:
                raise RuntimeError("ASGI: trailers sent without 'trailers': True in 'http.response.start'")
            self._check()
            self.trailer_fields.extend(clean_header_fields(message.get("headers", ()), log.warning))
            if not message.get("more_trailers", False):
                if not self.headers_sent:
                    raise RuntimeError("ASGI: trailers sent before the response body")
                self._send_headers(self.trailer_fields, True)
                self._completed()
        elif kind == "http.response.early_hint":
            links = message.get("links", [])
            self._informational(103, [(b"link", bytes(link)) for link in links])
        elif kind == "http.response.informational":
            self._informational(int(message["status"]), clean_header_fields(message.get("headers", ()), log.warning))
        else:
            raise RuntimeError(f"ASGI: unexpected message type {kind!r} on an http scope")

    def _informational(self, status: int, headers: Headers) -> None:
        if self.started:
            raise RuntimeError("ASGI: informational response after 'http.response.start'")
        if not 100 <= status < 200 or status == 101:
            raise RuntimeError(f"ASGI: invalid informational status {status}")
        self._send_headers([(b":status", str(status).encode()), *headers], False)

    def _start_response(self, message: Message) -> None:
        status = int(message["status"])
        if not 200 <= status <= 599:
            raise RuntimeError(f"ASGI: invalid response status {status} (1xx needs an informational message)")
        self.started = True
        self.status = status
        self.trailers = bool(message.get("trailers", False))
        self.no_body = self.is_head or status in _NO_BODY_STATUS
        fields = clean_header_fields(message.get("headers", ()), log.warning)
        headers: Headers = [(b":status", str(status).encode())]
        for name, value in fields:
            if name == b"content-length":
                if self.no_body:
                    # aioquic clients check content-length against the (empty) body and close the
                    # whole connection on a mismatch: never send it without a body
                    continue
                try:
                    length = int(value)
                except ValueError:
                    log.warning("dropped invalid content-length %r", value)
                    continue
                if self.expected is not None:
                    if length != self.expected:
                        raise RuntimeError("ASGI: conflicting content-length headers")
                    continue
                self.expected = length
            headers.append((name, value))
        self.headers = headers

    async def _send_body(self, body: bytes, more: bool) -> None:
        if self.no_body:
            body = b""
        elif body:
            self.sent += len(body)
            if self.expected is not None and self.sent > self.expected:
                self._abort(H3_INTERNAL_ERROR)
                raise RuntimeError(f"ASGI: response body longer than content-length {self.expected}")
        end = not more and not self.trailers
        if not more and self.expected is not None and not self.no_body and self.sent != self.expected:
            self._abort(H3_INTERNAL_ERROR)
            raise RuntimeError(f"ASGI: response body shorter ({self.sent}) than content-length {self.expected}")
        if not self.headers_sent:
            self.headers_sent = True
            if end and not body:
                self._send_headers(self.headers, True)
                self._completed()
                return
            self._send_headers(self.headers, False)
        if body or end:
            await self._write(body, end)
        if end:
            self._completed()

    # -- the application task -----------------------------------------------------------------

    def _app_failed(self) -> None:
        if self.complete or self.disconnected or self.sc.lost:
            return
        if self.headers_sent:
            self._abort(H3_INTERNAL_ERROR)
            return
        self.headers_sent = True
        self.status = 500
        self._send_plain(500, "Internal Server Error")
        self._completed()

    def _app_returned_early(self) -> None:
        if self.started:
            log.error("ASGI application returned without completing the response (stream %d)", self.sid)
        else:
            log.error("ASGI application returned without starting a response (stream %d)", self.sid)
        self._app_failed()

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    '%s - "%s %s HTTP/3" %s',
                    self.sc.peer.fmt_short(),
                    self.scope["method"],
                    self.scope["path"],
                    self.status or "-",
                )


class _WebSocketExchange(_Exchange):
    kind = "websocket"
    label = "websocket "

    def __init__(self, sc: ServerConnection, sid: int, credit: Credit, scope: dict[str, Any]) -> None:
        super().__init__(sc, sid, credit, scope)
        self.decoder = ws.FrameDecoder()
        self.connect_delivered = False
        self.accepted = False
        self.close_sent = False
        self.close_code: int | None = None  # set once the app must see websocket.disconnect
        self.close_reason = ""
        self.denial_started = False
        self.peer_ended = False

    def on_data(self, data: bytes, ended: bool) -> None:
        if data:
            self.decoder.feed(data)
            self.credit.unread += len(data)
        if ended:
            self.peer_ended = True
        self._wake()

    def on_reset(self, code: int) -> None:
        super().on_reset(code)
        self._peer_gone()

    def on_stop(self, code: int) -> None:
        super().on_stop(code)
        self._peer_gone()

    def on_lost(self) -> None:
        super().on_lost()
        self._peer_gone()

    def _peer_gone(self) -> None:
        if self.close_code is None:
            self.close_code = 1006
        self._wake()

    def server_shutdown(self) -> None:
        if self.accepted and not self.close_sent and not self.complete:
            self._send_close(1012, "server shutting down")
        if self.close_code is None:
            self.close_code = 1012
        self._wake()

    def _send_close(self, code: int, reason: str) -> None:
        self.close_sent = True
        frame = ws.encode_frame(ws.OP_CLOSE, ws.close_payload(code, reason), mask=False)
        try:
            self.sc.h3.send_data(self.sid, frame, True)
        except RuntimeError:
            pass
        self.sc.schedule_transmit()
        self._completed_ws()

    def _completed_ws(self) -> None:
        self.complete = True
        self._wake()

    async def receive(self) -> Message:
        if not self.connect_delivered:
            self.connect_delivered = True
            return {"type": "websocket.connect"}
        while True:
            if self.close_code is not None:
                return {"type": "websocket.disconnect", "code": self.close_code, "reason": self.close_reason}
            before = self.decoder.buffered
            try:
                event = self.decoder.next_event()
            except ws.WebSocketProtocolError as exc:
                log.info("websocket stream %d: %s", self.sid, exc)
                if not self.close_sent and self.accepted:
                    self._send_close(exc.code, str(exc)[:100])
                self.close_code = exc.code
                continue
            consumed = before - self.decoder.buffered
            if consumed:
                self.credit.read(consumed)
            if isinstance(event, ws.Message):
                if isinstance(event.data, str):
                    return {"type": "websocket.receive", "text": event.data, "bytes": None}
                return {"type": "websocket.receive", "bytes": event.data, "text": None}
            if isinstance(event, ws.Ping):
                if not self.close_sent and not self.disconnected:
                    await self._write(ws.encode_frame(ws.OP_PONG, event.payload, mask=False), False)
                continue
            if isinstance(event, ws.Close):
                if not self.close_sent and not self.disconnected:
                    self.close_sent = True
                    echo = ws.close_payload(event.code, "") if event.code != 1005 else b""
                    try:
                        await self._write(ws.encode_frame(ws.OP_CLOSE, echo, mask=False), True)
                    except ClientDisconnected:
                        pass
                    self._completed_ws()
                self.close_code = event.code
                self.close_reason = event.reason
                continue
            if isinstance(event, ws.Pong):
                continue
            if self.peer_ended or self.disconnected:
                self.close_code = 1006
                continue
            await self._wait()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            if not self.accepted:
                raise RuntimeError("ASGI: 'websocket.send' before 'websocket.accept'")
            if self.close_sent or self.disconnected:
                raise ClientDisconnected(f"websocket on stream {self.sid} is closed")
            text = message.get("text")
            if text is not None:
                frame = ws.encode_frame(ws.OP_TEXT, text.encode("utf-8"), mask=False)
            else:
                frame = ws.encode_frame(ws.OP_BINARY, bytes(message.get("bytes") or b""), mask=False)
            await self._write(frame, False)
        elif kind == "websocket.accept":
            if self.accepted or self.denial_started:
                raise RuntimeError("ASGI: 'websocket.accept' sent twice")
            self._check()
            headers: Headers = [(b":status", b"200")]
            subprotocol = message.get("subprotocol")
            if subprotocol:
                headers.append((b"sec-websocket-protocol", subprotocol.encode()))
            extra = message.get("headers", ())
            headers.extend(clean_header_fields(extra, log.warning, drop=frozenset({b"sec-websocket-protocol"})))
            self._send_headers(headers, False)
            self.accepted = True
        elif kind == "websocket.close":
            if self.close_sent or self.complete:
                return
            code = int(message.get("code") or 1000)
            reason = message.get("reason") or ""
            if not self.accepted:
                # refusing the handshake: a plain HTTP 403 (the ASGI spec's rule)
                self.close_sent = True
                if not self.disconnected:
                    headers, body = _plain(403, "Forbidden")
                    self._send_headers(headers, False)
                    await self._write(body, True)
                self._completed_ws()
            else:
                self._send_close(code, reason)
            if self.close_code is None:
                self.close_code = code
        elif kind == "websocket.http.response.start":
            if self.accepted or self.denial_started:
                raise RuntimeError("ASGI: denial response after accept")
            self.denial_started = True
            status = int(message["status"])
            fields = clean_header_fields(message.get("headers", ()), log.warning, drop=frozenset({b"content-length"}))
            self._send_headers([(b":status", str(status).encode()), *fields], False)
        elif kind == "websocket.http.response.body":
            if not self.denial_started:
                raise RuntimeError("ASGI: denial body before denial start")
            more = bool(message.get("more_body", False))
            await self._write(bytes(message.get("body", b"")), not more)
            if not more:
                self.close_sent = True
                self._completed_ws()
                if self.close_code is None:
                    self.close_code = 1000
        else:
            raise RuntimeError(f"ASGI: unexpected message type {kind!r} on a websocket scope")

    def _app_returned_early(self) -> None:
        if self.accepted:
            self._send_close(1000, "")
        else:
            self._app_failed(status=403)

    def _app_failed(self, status: int = 500) -> None:
        if self.complete or self.disconnected or self.sc.lost:
            return
        if self.accepted:
            self._send_close(1011, "internal error")
        elif not self.denial_started:
            self._send_plain(status, "Internal Server Error" if status == 500 else "Forbidden")
            self._completed_ws()
        else:
            self._abort(H3_INTERNAL_ERROR)
