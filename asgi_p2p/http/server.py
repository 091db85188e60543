"""HTTP/3 server running an ASGI 3 application on an endpoint's ``h3`` connections.

One client-initiated bidirectional stream is one ASGI ``http`` (or, with RFC 9220
extended CONNECT, ``websocket``) scope.  Each connection is driven sans-I/O with
aioquic's :class:`~aioquic.h3.connection.H3Connection`; the only task per
request is the application's own.

This module holds :class:`H3Server` and its connection handler,
:class:`ServerConnection`, which parses each request with
:func:`~asgi_p2p.http.request.parse_request` and hands its stream to an
:class:`~asgi_p2p.http.exchange.HTTPExchange` or a
:class:`~asgi_p2p.http.ws_exchange.WebSocketExchange`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math

from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.events import QuicEvent, StopSendingReceived, StreamDataReceived, StreamReset

from .. import aioquic_compat as hooks
from ..config import (
    DEFAULT_LIMIT_PEER_CONCURRENCY,
    DEFAULT_LIMIT_PEER_RATE,
    MAX_SECONDS,
    PEER_CONCURRENCY_LIMIT,
    PEER_RATE_LIMIT,
    Limit,
)
from ..endpoint.connection import PeerConnection
from ..endpoint.endpoint import Endpoint
from ..errors import ConnectionClosed, InvalidConfiguration
from ..identity import NodeId
from ..net.rate import KeyedRateLimiter
from ._common import H3, H3_INTERNAL_ERROR, H3_NO_ERROR, H3_REQUEST_REJECTED, Credit, Headers
from ._dispatch import h3_protocol
from .access import access_log, log_request
from .exchange import Exchange, HTTPExchange, plain_response
from .lifespan import LifespanMode, LifespanRunner
from .observe import RequestObserver
from .request import (
    HEADERS_TOO_LARGE,
    PeerInfo,
    Rejection,
    RequestSettings,
    mark_invalid_content_length,
    parse_request,
)
from .types import ASGIApp
from .ws_exchange import Handshake, WebSocketExchange

__all__ = [
    "DEFAULT_IDLE_CONNECTION_TIMEOUT",
    "DEFAULT_LIMIT_PEER_CONCURRENCY",
    "DEFAULT_LIMIT_PEER_RATE",
    "DEFAULT_MAX_IDLE_CONNECTIONS_PER_PEER",
    "DEFAULT_REQUEST_BODY_TIMEOUT",
    "DEFAULT_REQUEST_HEADER_TIMEOUT",
    "REQUEST_TIMEOUT",
    "H3Server",
    "ServerConnection",
]

#: the field-section hook: an invalid ``content-length`` fails that request only (400), its value quoted
_MARK_INVALID_CONTENT_LENGTH = functools.partial(mark_invalid_content_length, quote=True)

log = logging.getLogger("asgi_p2p.http")

#: Bytes of a header section in flight before its HEADERS frame completes, beyond max_header_size.
_HEADER_SLACK = 16 * 1024
_FLUSH_TIMEOUT = 2.0
#: (isinstance with a tuple; an ``A | B`` written in the call is built anew each time)
_STREAM_ENDED_EVENTS = (StreamReset, StopSendingReceived)
_REQUEST_EVENTS = (HeadersReceived, DataReceived)
#: Default seconds from a request stream's first bytes to its complete header section.
DEFAULT_REQUEST_HEADER_TIMEOUT = 10.0
#: Default seconds the application may wait in ``receive()`` for more request body.
DEFAULT_REQUEST_BODY_TIMEOUT = 60.0
#: Default seconds a connection may go without an open request stream before the server closes it.
DEFAULT_IDLE_CONNECTION_TIMEOUT = 60.0
#: Default most connections without an open request one peer (node id) may hold at once.
DEFAULT_MAX_IDLE_CONNECTIONS_PER_PEER = 8
_TIMEOUT = Limit(0, MAX_SECONDS, integer=False, open_low=True, zero_is_off=True, unit="seconds")
REQUEST_TIMEOUT = Rejection(408, "Request Timeout")
#: a request that arrived as TLS early data (0-RTT) and is not safe to process before the
#: handshake completes (RFC 8470 5.2): the client sends it again after the handshake
TOO_EARLY = Rejection(425, "Too Early")
#: requests served from early data: safe methods (RFC 9110 9.2.1) without a body; a replay
#: of one changes nothing
EARLY_DATA_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
#: peers whose request rate is remembered (least recently used forgotten first)
_MAX_RATE_PEERS = 8192
#: seconds between two log lines about peers answered 429 (a flood logs a count, not a line each)
_LIMIT_LOG_INTERVAL = 1.0


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
        request_header_timeout: float | None = DEFAULT_REQUEST_HEADER_TIMEOUT,
        request_body_timeout: float | None = DEFAULT_REQUEST_BODY_TIMEOUT,
        limit_peer_rate: float | None = DEFAULT_LIMIT_PEER_RATE,
        limit_peer_concurrency: int | None = DEFAULT_LIMIT_PEER_CONCURRENCY,
        idle_connection_timeout: float | None = DEFAULT_IDLE_CONNECTION_TIMEOUT,
        max_idle_connections_per_peer: int = DEFAULT_MAX_IDLE_CONNECTIONS_PER_PEER,
    ) -> None:
        if limit_concurrency is not None and limit_concurrency < 1:
            raise InvalidConfiguration(f"limit_concurrency must be at least 1, got {limit_concurrency}")
        if isinstance(max_idle_connections_per_peer, bool) or not isinstance(max_idle_connections_per_peer, int):
            raise InvalidConfiguration(
                f"max_idle_connections_per_peer must be a whole number, got {max_idle_connections_per_peer!r}"
            )
        if not 1 <= max_idle_connections_per_peer <= 65536:
            raise InvalidConfiguration(
                f"max_idle_connections_per_peer must be in 1..65536, got {max_idle_connections_per_peer}"
            )
        if max_header_size < 1:
            raise InvalidConfiguration(f"max_header_size must be positive, got {max_header_size}")
        if max_body_size is not None and max_body_size < 0:
            raise InvalidConfiguration(f"max_body_size must not be negative, got {max_body_size}")
        for name, value in (
            ("request_header_timeout", request_header_timeout),
            ("request_body_timeout", request_body_timeout),
            ("idle_connection_timeout", idle_connection_timeout),
        ):
            if value is not None:
                _TIMEOUT.check(name, value)
        if limit_peer_rate is not None:
            PEER_RATE_LIMIT.check("limit_peer_rate", limit_peer_rate)
        if limit_peer_concurrency is not None:
            PEER_CONCURRENCY_LIMIT.check("limit_peer_concurrency", limit_peer_concurrency)
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
        #: seconds from a request stream's first bytes to its complete header section (None: no limit)
        self.request_header_timeout = request_header_timeout or None
        #: seconds the app may wait in ``receive()`` for more of a request body (None: no limit)
        self.request_body_timeout = request_body_timeout or None
        self.lifespan = LifespanRunner(app, lifespan)
        self._connections: set[ServerConnection] = set()
        self._idle_connection_timeout = idle_connection_timeout or None
        #: most connections without an open request one node id may hold; a new idle one
        #: beyond it closes that node's longest idle connection
        self.max_idle_connections_per_peer = max_idle_connections_per_peer
        # each peer's connections with no request open, longest idle first
        self._idle_by_peer: dict[NodeId, dict[ServerConnection, None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._closing = False
        self._closed = False
        #: Counters (for metrics): requests started, rejected by a limit, failed in the app,
        #: answered 408 (or reset) because their headers or body did not come in time.
        self.requests_total = 0
        self.requests_rejected = 0
        self.app_errors = 0
        self.requests_timed_out = 0
        #: requests that came as TLS early data (0-RTT) and were answered 425 Too Early
        self.requests_too_early = 0
        #: requests answered 429 because their peer went over ``limit_peer_rate`` or ``limit_peer_concurrency``
        self.requests_limited = 0
        #: requests (and WebSockets) one peer may start per second, bursts of twice that (None: no limit)
        self.limit_peer_rate = limit_peer_rate or None
        #: requests (and WebSockets) one peer may have in flight (None: no limit)
        self.limit_peer_concurrency = limit_peer_concurrency or None
        rate = self.limit_peer_rate
        self._peer_rates = KeyedRateLimiter(rate, 2 * rate, max_keys=_MAX_RATE_PEERS) if rate else None
        #: requests in flight per peer (a key goes at zero)
        self.peer_requests: dict[NodeId, int] = {}
        self._limit_logged_at: float | None = None
        self._limit_unlogged = 0
        #: told of every request (metrics); None: nobody
        self.observer: RequestObserver | None = None
        #: connections closed because no request stream was open for ``idle_connection_timeout``,
        #: or because their peer held more than ``max_idle_connections_per_peer`` such connections
        self.idle_connections_closed = 0

    @property
    def idle_connection_timeout(self) -> float | None:
        """Seconds a connection may go without an open request stream (None: no limit).

        A peer that completed its handshake holds a connection slot for as long as the
        connection lives, and QUIC keep-alive PINGs (or any other frame) keep it alive
        forever; the server closes it (``H3_NO_ERROR``) once no request stream (or
        WebSocket) has been open for this long.  Setting it applies to open connections.
        """
        return self._idle_connection_timeout

    @idle_connection_timeout.setter
    def idle_connection_timeout(self, value: float | None) -> None:
        if value is not None:
            _TIMEOUT.check("idle_connection_timeout", value)
        self._idle_connection_timeout = value or None
        for sc in list(self._connections):
            sc.rearm_idle()

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
    def serving(self) -> bool:
        """True from the end of the lifespan startup until shutdown begins."""
        return self._started and not self._closing

    @property
    def active_requests(self) -> int:
        return len(self._tasks)

    @property
    def node_id(self) -> NodeId:
        return self.endpoint.node_id

    @property
    def closing(self) -> bool:
        """:meth:`shutdown` has begun."""
        return self._closing

    async def startup(self) -> None:
        """Warm the process up for its first peers (:meth:`Endpoint.warm_up`), run lifespan
        startup (raises :class:`LifespanFailed`), then serve ``h3``."""
        if self._started:
            raise InvalidConfiguration("H3Server.startup() called twice")
        proto = h3_protocol(self.endpoint)
        if proto.server_factory is not None:
            raise InvalidConfiguration("another H3Server already serves this endpoint")
        # the process's one-time handshake costs, before the first peer's (once per process)
        self.endpoint.warm_up()
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
        log.info("HTTP/3 server on node %s stopped", self.endpoint.node_id)

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

    def peer_limited(self, peer: NodeId, now: float) -> Rejection | None:
        """The 429 for a new request of ``peer`` if it is over its limits (counted, logged), else None."""
        rejection: Rejection | None = None
        concurrency = self.limit_peer_concurrency
        if concurrency is not None and self.peer_requests.get(peer, 0) >= concurrency:
            why = f"{concurrency} requests in flight (limit_peer_concurrency)"
            rejection = Rejection(429, "Too Many Requests", ((b"retry-after", b"1"),))
        elif self._peer_rates is not None:
            wait = self._peer_rates.take(peer, now)
            if wait:
                why = f"more than {self.limit_peer_rate:g} requests a second (limit_peer_rate)"
                after = str(max(1, math.ceil(wait))).encode()
                rejection = Rejection(429, "Too Many Requests", ((b"retry-after", after),))
        if rejection is None:
            return None
        self.requests_limited += 1
        if self._limit_logged_at is None or now - self._limit_logged_at >= _LIMIT_LOG_INTERVAL:
            more = f" ({self._limit_unlogged} more 429s since the last line)" if self._limit_unlogged else ""
            log.warning("answering 429 to node %s: %s%s", peer, why, more)
            self._limit_logged_at = now
            self._limit_unlogged = 0
        else:
            self._limit_unlogged += 1
        return rejection

    def _make_handler(self, conn: PeerConnection) -> ServerConnection:
        if self._closing:
            raise ConnectionClosed("HTTP server is shutting down")
        return ServerConnection(self, conn)

    def _now_idle(self, sc: ServerConnection) -> None:
        """``sc`` has no request open: count it among its peer's idle connections (bounded)."""
        idle = self._idle_by_peer.setdefault(sc.peer, {})
        idle.pop(sc, None)
        idle[sc] = None
        if len(idle) > self.max_idle_connections_per_peer:
            oldest = next(iter(idle))
            del idle[oldest]
            oldest.close_idle(f"more than {self.max_idle_connections_per_peer} idle connections from this node")

    def _now_busy(self, sc: ServerConnection) -> None:
        """``sc`` has a request open, or is gone."""
        idle = self._idle_by_peer.get(sc.peer)
        if idle is not None:
            idle.pop(sc, None)
            if not idle:
                del self._idle_by_peer[sc.peer]


class _Pending:
    """A request stream whose HEADERS frame has not arrived yet."""

    __slots__ = ("credit", "opened_at", "timer")

    def __init__(self, credit: Credit, opened_at: float) -> None:
        self.credit = credit
        self.opened_at = opened_at
        #: the header timeout (armed only when the first bytes did not complete the HEADERS frame)
        self.timer: asyncio.TimerHandle | None = None

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class ServerConnection:
    """The server side of one HTTP/3 connection (a :class:`ConnectionHandler`)."""

    def __init__(self, server: H3Server, conn: PeerConnection) -> None:
        self.server = server
        self.conn = conn
        self.loop = conn.loop
        # (quoted: aioquic closes the connection for a value with whitespace at either end, `` 5``)
        self.h3 = H3(conn.quic, qpack_dynamic_table=False, on_field_section=_MARK_INVALID_CONTENT_LENGTH)
        assert conn.remote_node_id is not None
        self.peer = conn.remote_node_id
        self.peer_info = PeerInfo(self.peer)
        self.streams: dict[int, _Pending | Exchange] = {}
        self.next_request_id = 0
        # request stream ids below next_request_id whose first bytes have not arrived yet:
        # streams open in id order, but under loss their first packets arrive in any order
        self._unseen: set[int] = set()
        self.goaway_id: int | None = None
        self.lost = False
        self._unflushed: set[int] = set()
        # request stream -> loop time its application task started (only while an observer is set)
        self._started_at: dict[int, float] = {}
        #: when the last request stream ended (or the connection started), for the idle timeout
        self._idle_since = self.loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        server._connections.add(self)
        self._arm_idle()
        server._now_idle(self)
        # our SETTINGS leave with the endpoint's next transmit, which follows the making of the
        # handler; not one scheduled now, which would run before the task of a request that came
        # with the handshake (0-RTT) and send them alone, one datagram ahead of its response
        hooks.ack_with_next_packet(conn.quic, self.loop.time())

    # -- idle connection timeout ----------------------------------------------
    #
    # Not one timer per request: the timer runs from the time the last stream ended; when
    # it fires on a busy connection it stops, and the next time the connection has no
    # stream open (_stream_ended) arms it again.  A request costs one comparison.

    def _arm_idle(self) -> None:
        timeout = self.server.idle_connection_timeout
        if timeout is not None and not self.lost:
            self._idle_timer = self.loop.call_at(self._idle_since + timeout, self._idle_check)

    def rearm_idle(self) -> None:
        """The idle timeout changed: run the timer by the new value."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if not self.streams:
            self._arm_idle()

    def _stream_ended(self) -> None:
        if not self.streams and not self.lost:
            self._idle_since = self.loop.time()
            if self._idle_timer is None:
                self._arm_idle()
            self.server._now_idle(self)

    def _idle_check(self) -> None:
        self._idle_timer = None
        timeout = self.server.idle_connection_timeout
        if self.lost or timeout is None or self.streams:
            return
        if self.loop.time() < self._idle_since + timeout:
            self._arm_idle()
            return
        self.close_idle(f"no request for {timeout:g}s")

    def close_idle(self, why: str) -> None:
        """Close this connection, which has no request open (``H3_NO_ERROR``)."""
        self.server.idle_connections_closed += 1
        log.info("closing the connection from %s: idle connection: %s", self.peer_info.text, why)
        self.conn.close(H3_NO_ERROR, f"idle connection: {why}")

    # -- transmit coalescing --------------------------------------------------

    def schedule_transmit(self) -> None:
        hooks.ack_with_next_packet(self.conn.quic, self.conn.loop.time())  # a pending ACK rides along
        # one deferred transmit per connection, shared with the datagram receive path
        if not self.lost:
            self.conn.schedule_transmit()

    # -- events -------------------------------------------------------------

    def quic_event_received(self, event: QuicEvent) -> None:
        touched: _Pending | Exchange | None = None
        if isinstance(event, StreamDataReceived) and event.stream_id % 4 == 0:
            sid = event.stream_id
            item = self.streams.get(sid)
            if item is None and self._first_data(sid):
                if self.goaway_id is not None and sid >= self.goaway_id:
                    self._reject(sid)
                else:
                    if not self.streams:
                        self.server._now_busy(self)
                    item = self.streams[sid] = _Pending(Credit(self.conn, sid), self.loop.time())
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
        if isinstance(event, _STREAM_ENDED_EVENTS):
            self._unseen.discard(event.stream_id)
            item = self.streams.get(event.stream_id)
            if isinstance(item, _Pending):
                item.cancel_timer()
                self.streams.pop(event.stream_id, None)
                self.conn.forget_stream(event.stream_id)
                self._stream_ended()
            elif item is not None:
                if isinstance(event, StreamReset):
                    item.on_reset(event.error_code)
                else:
                    item.on_stop(event.error_code)
        if touched is not None:
            touched.credit.update()
            if (
                isinstance(touched, _Pending)
                and touched.timer is None
                and self.server.request_header_timeout is not None
                and isinstance(event, StreamDataReceived)
                and self.streams.get(event.stream_id) is touched
            ):
                touched.timer = self.loop.call_at(
                    touched.opened_at + self.server.request_header_timeout,
                    self._header_timed_out,
                    event.stream_id,
                    touched,
                )

    def _header_timed_out(self, sid: int, item: _Pending) -> None:
        """The stream's header section did not complete in ``request_header_timeout``: 408."""
        item.timer = None
        if self.lost or self.streams.get(sid) is not item:
            return
        self.server.requests_timed_out += 1
        log.info(
            "request stream %d from %s: no complete header section within %gs; answering 408",
            sid,
            self.peer_info.text,
            self.server.request_header_timeout,
        )
        self._respond_now(sid, item.credit, REQUEST_TIMEOUT, ended=False)

    def _first_data(self, sid: int) -> bool:
        """True when ``sid`` is a request stream we have not seen before.

        A lower stream id may show up after a higher one (its first packet was lost
        and retransmitted), so ids skipped over are remembered until their data
        arrives or they are reset; aioquic's stream limit bounds how many there are.
        """
        if sid >= self.next_request_id:
            if sid > self.next_request_id:  # (the next id in order, as most are, skips none)
                self._unseen.update(range(self.next_request_id, sid, 4))
            self.next_request_id = sid + 4
            return True
        if sid in self._unseen:
            self._unseen.discard(sid)
            return True
        return False

    def _h3_event(self, event: H3Event) -> None:
        if not isinstance(event, _REQUEST_EVENTS):
            return
        sid = event.stream_id
        item = self.streams.get(sid)
        if item is None:
            return
        if isinstance(event, HeadersReceived):
            if isinstance(item, _Pending):
                item.cancel_timer()
                self._start(sid, item.credit, event.headers, event.stream_ended)
            elif event.stream_ended:  # request trailers: ASGI has no place for them
                item.on_data(b"", True)
        elif isinstance(event, DataReceived) and not isinstance(item, _Pending):
            item.on_data(event.data, event.stream_ended)
            item.credit.update()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server._connections.discard(self)
        self.server._now_busy(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        for item in list(self.streams.values()):
            if isinstance(item, _Pending):
                item.cancel_timer()
            else:
                item.on_lost()
        self.streams = {k: v for k, v in self.streams.items() if not isinstance(v, _Pending)}

    # -- requests -------------------------------------------------------------

    def _fail_stream(self, sid: int) -> None:
        item = self.streams.pop(sid, None)
        if isinstance(item, Exchange):
            item.abort(H3_INTERNAL_ERROR)
        else:
            self.conn.reset_stream(sid, H3_INTERNAL_ERROR)
            self.conn.stop_stream(sid, H3_INTERNAL_ERROR)
            self.h3.end_local(sid)
        self.conn.forget_stream(sid)
        self._stream_ended()

    def _reject(self, sid: int) -> None:
        """Refuse a request that arrived after our GOAWAY (safe for the client to retry)."""
        if access_log.isEnabledFor(logging.INFO):
            log_request(self.peer_info.text, "-", "-", None, "refused: server shutting down (GOAWAY sent)")
        self.conn.reset_stream(sid, H3_REQUEST_REJECTED)
        self.conn.stop_stream(sid, H3_REQUEST_REJECTED)
        self.h3.end_local(sid)

    def _respond_now(
        self, sid: int, credit: Credit, rejection: Rejection, *, ended: bool, fields: Headers | None = None
    ) -> None:
        """Answer without running the app (limits, bad requests), then stop reading the request.

        ``fields``: the request's header section, when it arrived (for the access log line).
        """
        self.server.requests_rejected += 1
        status = rejection.status
        if access_log.isEnabledFor(logging.INFO):
            method, path = _method_and_path(fields)
            log_request(self.peer_info.text, method, path, status)
        observer = self.server.observer
        if observer is not None:
            observer.request_refused(status)
        headers, body = plain_response(status, rejection.reason, rejection.headers)
        try:
            self.h3.send_headers(sid, headers)
            self.h3.send_data(sid, body, True)
        except Exception:  # stream already gone
            log.debug("could not answer stream %d with %d", sid, status, exc_info=True)
        if not ended:
            self.conn.stop_stream(sid, H3_NO_ERROR)
        self.streams.pop(sid, None)
        self.conn.forget_stream(sid)
        self._stream_ended()
        del credit
        self.schedule_transmit()

    def _start(self, sid: int, credit: Credit, fields: Headers, ended: bool) -> None:
        server = self.server
        if self.conn.early:
            # the request came as 0-RTT data, which an attacker may have replayed: only safe
            # requests without a body run now, and the app learns it (RFC 8470 5.1)
            method = next((v for k, v in fields if k == b":method"), b"")
            if method not in EARLY_DATA_METHODS or not ended:
                server.requests_too_early += 1
                self._respond_now(sid, credit, TOO_EARLY, ended=ended, fields=fields)
                return
            fields = [*fields, (b"early-data", b"1")]
        if server.limit_peer_rate is not None or server.limit_peer_concurrency is not None:
            limited = server.peer_limited(self.peer, self.loop.time())
            if limited is not None:
                self._respond_now(sid, credit, limited, ended=ended, fields=fields)
                return
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
            self._respond_now(sid, credit, parsed, ended=ended, fields=fields)
            return
        exchange: Exchange
        if parsed["type"] == "websocket":
            exchange = WebSocketExchange(
                self, sid, credit, parsed, max_message=self.conn.config.max_websocket_message_size
            )
        else:
            exchange = HTTPExchange(self, sid, credit, parsed, ended)
        self.streams[sid] = exchange
        server.requests_total += 1
        peers = server.peer_requests
        peers[self.peer] = peers.get(self.peer, 0) + 1
        if server.observer is not None:
            self._started_at[sid] = self.loop.time()
            server.observer.request_started(exchange.kind)
        task = self.loop.create_task(exchange.run())
        exchange.task = task
        # a transmit scheduled before the task (the connection's SETTINGS, the ACK of a request
        # that came with the handshake) waits for its first step, which usually writes the response
        self.conn.transmit_behind_queued()
        # finished() removes the task from server._tasks as its last step: a done callback
        # would cost every request one more event loop iteration (and epoll call)
        server._tasks.add(task)

    def finished(self, exchange: Exchange) -> None:
        """The exchange's application task is ending (called from its ``finally``)."""
        server = self.server
        if exchange.task is not None:
            server._tasks.discard(exchange.task)
        sid = exchange.sid
        peers = server.peer_requests
        left = peers.get(self.peer, 0) - 1
        if left > 0:
            peers[self.peer] = left
        else:
            peers.pop(self.peer, None)
        if self.streams.get(sid) is exchange:
            del self.streams[sid]
            self._stream_ended()
        self.conn.forget_stream(sid)
        if not self.lost and hooks.unacked_bytes(self.conn.quic, sid):
            self._unflushed.add(sid)
            if len(self._unflushed) > 64:
                self._unflushed = {s for s in self._unflushed if hooks.unacked_bytes(self.conn.quic, s)}
        started = self._started_at.pop(sid, None)
        observer = server.observer
        if started is not None and observer is not None:
            if isinstance(exchange, WebSocketExchange):
                status = 200 if exchange.handshake is Handshake.ACCEPTED else 403
                method = "GET"
            else:
                status = getattr(exchange, "status", 0)
                method = exchange.scope["method"]
            observer.request_finished(exchange.kind, method, status, self.loop.time() - started)

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
            if isinstance(item, WebSocketExchange):
                item.server_shutdown()

    async def flush(self) -> None:
        """Wait until every finished response is acknowledged by the peer."""
        for sid in list(self._unflushed):
            try:
                await self.conn.drain(sid)
            except Exception:
                pass
        self._unflushed.clear()


def _method_and_path(fields: Headers | None) -> tuple[str, str]:
    """``:method`` (``WebSocket`` for an extended CONNECT) and ``:path`` of a refused request, or ``-``."""
    method = path = protocol = b""
    for name, value in fields or ():
        if name == b":method":
            method = value
        elif name == b":path":
            path = value
        elif name == b":protocol":
            protocol = value
        elif not name.startswith(b":"):
            break
    if method == b"CONNECT" and protocol.lower() == b"websocket":
        method = b"WebSocket"
    return method.decode("latin-1") or "-", path.decode("latin-1") or "-"
