"""The server's side of one request stream: an HTTP request/response exchange.

:class:`Exchange` holds what HTTP and WebSocket exchanges share (waking the app's
``receive()``, peer resets, sending on the stream, running the application);
:class:`HTTPExchange` is an ``http`` scope.  An exchange knows its connection only
through :class:`ExchangeHost`, which the server's connection handler implements.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from ..errors import ConnectionClosed
from ..errors import StreamReset as StreamResetError
from ..identity import NodeId
from ._common import (
    H3_INTERNAL_ERROR,
    H3_NO_ERROR,
    H3_REQUEST_CANCELLED,
    BodySender,
    ClientDisconnected,
    Credit,
    Headers,
    clean_header_fields,
    send_body,
)
from .access import access_log, full_path, log_request
from .types import ASGIApp, Message

__all__ = ["Exchange", "ExchangeHost", "ExchangeServer", "HTTPExchange", "ResponseState", "plain_response"]

log = logging.getLogger("asgi_p2p.http")

_NO_BODY_STATUS = frozenset({204, 304})
#: the ``:status`` field of the common final statuses, made once
_STATUS_FIELDS = {status: (b":status", str(status).encode()) for status in (200, 201, 204, 301, 302, 304, 400, 404)}


def plain_response(status: int, text: str, extra: Iterable[tuple[bytes, bytes]] = ()) -> tuple[Headers, bytes]:
    """The header fields and body of a whole ``text/plain`` response."""
    body = text.encode()
    headers: Headers = [
        (b":status", str(status).encode()),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    return headers, body


class ExchangeServer(Protocol):
    """What an exchange needs of the server (an :class:`~asgi_p2p.http.H3Server`)."""

    @property
    def app(self) -> ASGIApp: ...

    @property
    def max_body_size(self) -> int | None: ...

    @property
    def request_body_timeout(self) -> float | None: ...

    @property
    def closing(self) -> bool:
        """The server is shutting down (a request cancelled now is cut off by the shutdown)."""

    #: exceptions raised by the application (counted by the exchanges)
    app_errors: int
    #: requests answered 408 (or reset) because their body stalled (counted by the exchanges)
    requests_timed_out: int


class ExchangeHost(BodySender, Protocol):
    """What an exchange needs of its connection handler (the server's ``ServerConnection``)."""

    @property
    def server(self) -> ExchangeServer: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def peer(self) -> NodeId: ...

    @property
    def lost(self) -> bool:
        """The connection is gone."""

    def finished(self, exchange: Exchange) -> None:
        """The exchange's application task is ending (called from its ``finally``)."""


class Exchange(abc.ABC):
    """One request stream running the application: the state and the sending shared by
    :class:`HTTPExchange` and the WebSocket exchange."""

    kind = "http"

    def __init__(self, sc: ExchangeHost, sid: int, credit: Credit, scope: dict[str, Any]) -> None:
        self.sc = sc
        self.sid = sid
        self.credit = credit
        self.scope = scope
        self.task: asyncio.Task[None] | None = None
        #: the peer went away: reset or stopped the stream, or the connection is lost
        self.disconnected = False
        #: the request side is over (the peer's FIN, or its reset)
        self.request_ended = False
        #: why the exchange ended before our side completed (for the access log); None: it did not
        self.cut: str | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- our sending side ----------------------------------------------------------

    @property
    @abc.abstractmethod
    def complete(self) -> bool:
        """Our sending side of the stream is finished (FIN sent, or reset)."""

    @abc.abstractmethod
    def end_sending(self) -> None:
        """Record that our sending side is finished (no-op when it already is)."""

    # -- waking the app's receive() -------------------------------------------

    def wake_receiver(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait_for_peer(self) -> None:
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
            self.cut = self.cut or "client cancelled the request"
            self.abort(H3_REQUEST_CANCELLED, stop=False)
        self.disconnected = True
        self.wake_receiver()

    def on_stop(self, code: int) -> None:
        """The peer does not want our response any more (aioquic already reset our side)."""
        if not self.complete:
            self.cut = self.cut or "client stopped reading the response"
            self.end_sending()
            self.sc.h3.end_local(self.sid)
            if not self.request_ended:
                self.sc.conn.stop_stream(self.sid, H3_REQUEST_CANCELLED)
        self.disconnected = True
        self.wake_receiver()

    def on_lost(self) -> None:
        if not self.complete:
            self.cut = self.cut or "connection lost"
        self.disconnected = True
        self.end_sending()
        self.wake_receiver()

    # -- sending ------------------------------------------------------------------

    def check_connected(self) -> None:
        if self.disconnected or self.sc.lost:
            raise ClientDisconnected(f"peer {self.sc.peer} went away (stream {self.sid})")

    def abort(self, code: int, *, stop: bool = True) -> None:
        """Reset our side of the stream (and stop reading the request)."""
        if self.complete:
            return
        self.cut = self.cut or "reset by the server"
        self.end_sending()
        conn = self.sc.conn
        if not self.sc.lost:
            conn.reset_stream(self.sid, code)
            if stop and not self.request_ended:
                conn.stop_stream(self.sid, code)
        self.sc.h3.end_local(self.sid)
        self.wake_receiver()

    async def write(self, data: bytes, end: bool) -> None:
        """Send ``data`` in DATA frames, waiting while the stream's send buffer is full."""
        self.check_connected()
        try:
            await send_body(self.sc, self.sid, data, end)
        except (StreamResetError, ConnectionClosed, RuntimeError) as exc:
            self.disconnected = True
            raise ClientDisconnected(f"peer {self.sc.peer} went away (stream {self.sid}): {exc}") from None

    def send_headers(self, headers: Headers, end: bool) -> None:
        self.check_connected()
        try:
            self.sc.h3.send_headers(self.sid, headers, end)
        except RuntimeError as exc:
            self.disconnected = True
            raise ClientDisconnected(str(exc)) from None
        self.sc.schedule_transmit()

    def send_plain(self, status: int, text: str) -> None:
        """Send a whole plain-text response (the stream may be gone already)."""
        headers, body = plain_response(status, text)
        try:
            self.sc.h3.send_headers(self.sid, headers)
            self.sc.h3.send_data(self.sid, body, True)
        except RuntimeError:
            pass
        self.sc.schedule_transmit()

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
    def app_failed(self) -> None:
        """The application raised: answer with an error if the response allows it."""

    @abc.abstractmethod
    def app_returned_early(self) -> None:
        """The application returned without completing its side of the stream."""

    @abc.abstractmethod
    def log_access(self) -> None:
        """The exchange's access log line (called at its end when the access log is on)."""

    async def run(self) -> None:
        """Run the ASGI application for this stream."""
        server = self.sc.server
        try:
            await server.app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            if not self.complete:
                self.cut = self.cut or ("cut off by shutdown" if server.closing else "cancelled")
            self.abort(H3_REQUEST_CANCELLED)
            raise
        except Exception as exc:
            if self.disconnected and isinstance(exc, OSError):
                log.debug("%sstream %d: peer went away: %s", self.label, self.sid, exc)
            else:
                server.app_errors += 1
                log.error("Exception in ASGI %sapplication (stream %d)", self.label, self.sid, exc_info=exc)
            self.app_failed()
        else:
            if not self.complete and not self.disconnected:
                self.app_returned_early()
        finally:
            if access_log.isEnabledFor(logging.INFO):
                self.log_access()
            self.sc.finished(self)


class ResponseState(enum.Enum):
    """Our sending side of an HTTP exchange.

    ``REQUEST -> RESPONSE_STARTED`` (headers sent) ``-> RESPONSE_DONE`` (FIN, or reset part-way);
    ``REQUEST -> CLOSED`` (reset, or the connection lost, before any response).  A response the
    server makes itself (413, 500) is sent whole: ``REQUEST -> RESPONSE_DONE``.
    """

    #: no response sent yet (the app's ``http.response.start``, if any, is held until its first body)
    REQUEST = "request"
    #: response headers sent: body and trailers under way
    RESPONSE_STARTED = "response started"
    #: our side finished after the response headers (FIN, or reset part-way)
    RESPONSE_DONE = "response done"
    #: our side finished with no response sent (reset, or the connection is lost)
    CLOSED = "closed"


class HTTPExchange(Exchange):
    """An ``http`` scope: the request body in, the response (with trailers, 1xx) out.

    The response side is a :class:`ResponseState`; ``started`` (the app's
    ``http.response.start`` arrived) is kept apart from it, because the server can
    answer without it (413, 500) and a reset can end the stream before or after it.
    """

    def __init__(self, sc: ExchangeHost, sid: int, credit: Credit, scope: dict[str, Any], request_ended: bool) -> None:
        super().__init__(sc, sid, credit, scope)
        self.request_ended = request_ended
        self.chunks: list[bytes] = []
        self.final_delivered = False
        self.received = 0
        self.is_head = scope["method"] == "HEAD"
        # response
        self.state = ResponseState.REQUEST
        self.started = False  # the app's http.response.start arrived
        self.status = 0
        self.headers: Headers = []
        self.no_body = False
        self.expected: int | None = None
        self.sent = 0
        self.trailers = False
        self.trailer_fields: Headers = []

    @property
    def complete(self) -> bool:
        return self.state is ResponseState.RESPONSE_DONE or self.state is ResponseState.CLOSED

    @property
    def headers_sent(self) -> bool:
        """Response headers went out (the app's, or a 413/500 of the server's)."""
        return self.state is ResponseState.RESPONSE_STARTED or self.state is ResponseState.RESPONSE_DONE

    def end_sending(self) -> None:
        if self.state is ResponseState.REQUEST:
            self.state = ResponseState.CLOSED
        elif self.state is ResponseState.RESPONSE_STARTED:
            self.state = ResponseState.RESPONSE_DONE

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
        self.wake_receiver()

    def _body_too_large(self) -> None:
        log.info("request body on stream %d exceeds max_body_size=%s", self.sid, self.sc.server.max_body_size)
        self._refuse_body(413, "Content Too Large")

    def _body_timed_out(self) -> None:
        """The app waited ``request_body_timeout`` seconds in ``receive()`` and no body came."""
        if self.disconnected or self.request_ended or self.sc.lost:
            return
        server = self.sc.server
        server.requests_timed_out += 1
        log.info(
            "request body on stream %d from %s: nothing for %gs; answering 408",
            self.sid,
            self.sc.peer,
            server.request_body_timeout,
        )
        self._refuse_body(408, "Request Timeout")

    def _refuse_body(self, status: int, reason: str) -> None:
        """Stop reading the request: answer ``status`` if no response went out yet, else reset."""
        self.chunks.clear()
        self.credit.unread = 0
        if not self.headers_sent:  # REQUEST (or CLOSED: reset by an overlong response body)
            self.status = status
            self.send_plain(status, reason)
            self.state = ResponseState.RESPONSE_DONE
            self.sc.conn.stop_stream(self.sid, H3_NO_ERROR)
        else:
            self.cut = self.cut or f"{reason.lower()} after the response started"
            self.abort(H3_REQUEST_CANCELLED)
        self.disconnected = True
        self.wake_receiver()

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
            timeout = self.sc.server.request_body_timeout
            if timeout is None or self.request_ended:
                await self.wait_for_peer()
            else:  # more body expected: the peer has request_body_timeout seconds to send some
                timer = self.sc.loop.call_later(timeout, self._body_timed_out)
                try:
                    await self.wait_for_peer()
                finally:
                    timer.cancel()

    # -- response ------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if not self.started:
                raise RuntimeError("ASGI: 'http.response.body' sent before 'http.response.start'")
            if self.complete:
                self.check_connected()
                raise RuntimeError("ASGI: 'http.response.body' sent after the response completed")
            await self._send_body(message.get("body", b""), bool(message.get("more_body", False)))
        elif kind == "http.response.start":
            if self.started:
                raise RuntimeError("ASGI: 'http.response.start' sent twice")
            self.check_connected()
            self._start_response(message)
        elif kind == "http.response.trailers":
            if not self.trailers:
                raise RuntimeError("ASGI: trailers sent without 'trailers': True in 'http.response.start'")
            self.check_connected()
            self.trailer_fields.extend(clean_header_fields(message.get("headers", ()), log.warning))
            if not message.get("more_trailers", False):
                if not self.headers_sent:
                    raise RuntimeError("ASGI: trailers sent before the response body")
                if self.trailer_fields:
                    self.send_headers(self.trailer_fields, True)
                else:  # no fields after all: end the stream (an empty HEADERS frame fails QPACK decoders)
                    await self.write(b"", True)
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
        self.send_headers([(b":status", str(status).encode()), *headers], False)

    def _start_response(self, message: Message) -> None:
        status = int(message["status"])
        if not 200 <= status <= 599:
            raise RuntimeError(f"ASGI: invalid response status {status} (1xx needs an informational message)")
        self.started = True
        self.status = status
        self.trailers = bool(message.get("trailers", False))
        self.no_body = self.is_head or status in _NO_BODY_STATUS
        fields = clean_header_fields(message.get("headers", ()), log.warning)
        headers: Headers = [_STATUS_FIELDS.get(status) or (b":status", str(status).encode())]
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
                self.abort(H3_INTERNAL_ERROR)
                raise RuntimeError(f"ASGI: response body longer than content-length {self.expected}")
        end = not more and not self.trailers
        if not more and self.expected is not None and not self.no_body and self.sent != self.expected:
            self.abort(H3_INTERNAL_ERROR)
            raise RuntimeError(f"ASGI: response body shorter ({self.sent}) than content-length {self.expected}")
        if self.state is ResponseState.REQUEST:
            self.state = ResponseState.RESPONSE_STARTED
            if end and not body:
                self.send_headers(self.headers, True)
                self._completed()
                return
            self.send_headers(self.headers, False)
        if body or end:
            await self.write(body, end)
        if end:
            self._completed()

    def _completed(self) -> None:
        self.end_sending()
        if not self.request_ended and not self.sc.lost:
            # the response is complete: we need no more of the request (RFC 9114 section 4.1.2)
            self.sc.conn.stop_stream(self.sid, H3_NO_ERROR)
        self.wake_receiver()

    # -- the application task -----------------------------------------------------------------

    def app_failed(self) -> None:
        if self.complete or self.disconnected or self.sc.lost:
            return
        if self.headers_sent:
            self.cut = self.cut or "application error"
            self.abort(H3_INTERNAL_ERROR)
            return
        self.state = ResponseState.RESPONSE_STARTED
        self.status = 500
        self.send_plain(500, "Internal Server Error")
        self._completed()

    def app_returned_early(self) -> None:
        if self.started:
            log.error("ASGI application returned without completing the response (stream %d)", self.sid)
        else:
            log.error("ASGI application returned without starting a response (stream %d)", self.sid)
        self.app_failed()

    def log_access(self) -> None:
        status = self.status if self.headers_sent else None
        cut = None if self.state is ResponseState.RESPONSE_DONE and self.cut is None else self.cut
        if status is None and cut is None:
            cut = "no response"
        log_request(self.scope["client"][0], self.scope["method"], full_path(self.scope), status, cut)
