"""HTTP/3 client: httpx transports that send requests to peers named by node id."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol, TypeVar

import httpx
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.events import QuicEvent, StopSendingReceived, StreamDataReceived, StreamReset

from .. import aioquic_compat as hooks
from ..config import NetworkConfig
from ..endpoint.connection import PeerConnection
from ..endpoint.endpoint import Endpoint
from ..errors import AuthenticationFailed, ConnectionClosed, InvalidConfiguration, InvalidNodeId, P2PError
from ..errors import StreamReset as StreamResetError
from ..identity import NodeAddr, NodeId, SecretKey
from ._common import (
    H3,
    H3_ALPN,
    H3_NO_ERROR,
    H3_REQUEST_CANCELLED,
    H3_REQUEST_REJECTED,
    INVALID_CONTENT_LENGTH_FIELD,
    Credit,
    Headers,
    clean_header_fields,
    mark_invalid_content_length,
    send_body,
    send_body_nowait,
)
from ._dispatch import h3_protocol

__all__ = [
    "RESOLVED_CACHE_SIZE",
    "ClientConnection",
    "ClientStream",
    "NameDiscovery",
    "P2PTransport",
    "PeerGoingAway",
    "Resolver",
    "SyncP2PTransport",
    "connect_h3",
    "discovery_resolver",
    "register_client",
]

#: the field-section hook: an invalid ``content-length`` fails that response only, its value quoted
_MARK_INVALID_CONTENT_LENGTH = functools.partial(mark_invalid_content_length, quote=True)

log = logging.getLogger("asgi_p2p.http")

T = TypeVar("T")

#: methods a request of which may be sent twice (RFC 9110 9.2.2): retried once on a new
#: connection when the pooled one turns out dead before any response bytes
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: methods a request of which (without a body) may go as TLS early data (0-RTT) on a resumed
#: connection: safe methods (RFC 9110 9.2.1), as browsers send in 0-RTT; a replay of one
#: changes nothing on the server
EARLY_DATA_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: the status a server answers a request it will not process as early data (RFC 8470)
TOO_EARLY = 425


class PeerGoingAway(P2PError):
    """The peer sent GOAWAY: it accepts no new requests on this connection."""


class ClientConnection:
    """The client side of one HTTP/3 connection (a :class:`ConnectionHandler`)."""

    def __init__(self, conn: PeerConnection) -> None:
        self.conn = conn
        self.loop = conn.loop
        # a response's invalid content-length fails that response (see P2PTransport), not the connection
        self.h3 = H3(conn.quic, on_goaway=self._on_goaway, on_field_section=_MARK_INVALID_CONTENT_LENGTH)
        self.streams: dict[int, ClientStream] = {}
        self.lost: P2PError | None = None
        self.goaway_id: int | None = None
        #: buffered response bytes that wake a waiting reader at once (see ClientStream.on_data);
        #: well below the stream window, so the peer keeps sending while the reader catches up
        self.wake_bytes = max(conn.config.stream_receive_window // 4, 1)
        self.schedule_transmit()

    @property
    def draining(self) -> bool:
        return self.goaway_id is not None

    def schedule_transmit(self) -> None:
        hooks.ack_with_next_packet(self.conn.quic, self.conn.loop.time())  # a pending ACK rides along
        # one deferred transmit per connection, shared with the endpoint's receive path
        if self.lost is None:
            self.conn.schedule_transmit()

    def open_stream(self) -> ClientStream:
        if self.lost is not None:
            raise self.lost
        if self.goaway_id is not None:
            raise PeerGoingAway(f"peer {self.conn.remote_node_id} is shutting down (GOAWAY received)")
        sid = self.conn.quic.get_next_available_stream_id()
        stream = ClientStream(self, sid)
        self.streams[sid] = stream
        return stream

    def _on_goaway(self, ident: int) -> None:
        self.goaway_id = ident
        for sid, stream in list(self.streams.items()):
            if sid >= ident:
                stream.on_error(PeerGoingAway("request refused: the peer is shutting down (GOAWAY)"))

    def quic_event_received(self, event: QuicEvent) -> None:
        if type(event) is StreamDataReceived:  # the hot path: one call per received stream frame
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.credit.raw += len(event.data)
            for h3_event in self.h3.handle_event(event):
                self._h3_event(h3_event)
            if stream is not None:
                stream.credit.update()
            return
        for h3_event in self.h3.handle_event(event):
            self._h3_event(h3_event)
        if isinstance(event, StreamReset):
            s = self.streams.get(event.stream_id)
            if s is not None:
                s.on_reset(event.error_code)
        elif isinstance(event, StopSendingReceived):
            s = self.streams.get(event.stream_id)
            if s is not None:
                s.on_stop(event.error_code)

    def _h3_event(self, event: H3Event) -> None:
        if isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_data(event.data, event.stream_ended)
        elif isinstance(event, HeadersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_headers(event.headers, event.stream_ended)

    def connection_lost(self, exc: Exception | None) -> None:
        err = exc if isinstance(exc, P2PError) else ConnectionClosed(f"connection lost: {exc}")
        self.lost = err
        for stream in list(self.streams.values()):
            stream.on_error(err)


class ClientStream:
    """One request stream: send headers and body, read the response (sans task).

    Response bytes are kept as the received chunks and joined once per :meth:`read`.
    A reader waiting for body bytes is not woken once per packet: it is woken when
    ``wake_bytes`` are buffered, when the response ends, or when a whole event-loop
    iteration passed without more data for this stream (the socket had nothing
    queued for it).  A receiver that keeps up is woken per packet, two loop
    iterations later than the packet; one that falls behind reads batches, which
    keeps its per-packet cost down (the httpx chain runs once per batch).
    """

    def __init__(self, cc: ClientConnection, sid: int) -> None:
        self.cc = cc
        self.sid = sid
        self.credit = Credit(cc.conn, sid)
        self.status: int | None = None
        self.headers: Headers = []
        self.interim: list[tuple[int, Headers]] = []
        self.trailers: Headers = []
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.ended = False
        self.error: P2PError | None = None
        self.sent_end = False
        self.stopped = False
        self.closed = False
        #: a streamed (not replayable) request body began to be read
        self.body_started = False
        self._waiter: asyncio.Future[None] | None = None
        self._arrivals = 0  # data events so far (the deferred wake compares counts)
        self._settling = False  # a deferred wake is queued on the loop

    # -- events --------------------------------------------------------------

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
            # the reader runs before the connection's pending transmit (an ACK, a resumed
            # handshake's Finished): a response reaches its caller without waiting for that
            # send, and what the caller writes next (a request, read credit) leaves with it
            self.cc.conn.transmit_behind_queued()

    def on_headers(self, headers: Headers, ended: bool) -> None:
        status: int | None = None
        for name, value in headers:
            if name == b":status":
                status = int(value)
        if self.status is None:
            if status is not None and 100 <= status < 200:
                self.interim.append((status, [h for h in headers if not h[0].startswith(b":")]))
                return
            self.status = status or 0
            self.headers = [h for h in headers if not h[0].startswith(b":")]
        else:
            self.trailers.extend(headers)
        if ended:
            self.ended = True
        self._wake()

    def on_data(self, data: bytes, ended: bool) -> None:
        if data:
            self.chunks.append(data)
            self.buffered += len(data)
            self.credit.unread += len(data)
            self._arrivals += 1
        if ended:
            self.ended = True
            self._wake()
        elif self._waiter is not None:
            if self.buffered >= self.cc.wake_bytes:
                self._wake()
            elif not self._settling:
                self._settling = True
                self.cc.loop.call_soon(self._settle, -1)

    def _settle(self, seen: int) -> None:
        """Wake the reader once an iteration of the loop brought no more data for this stream.

        A callback queued in one iteration runs at the start of the next one, before
        that iteration's received datagrams are handled; so it compares the data count
        with the one it saw last time, and the first look only records it.
        """
        if self._waiter is None:
            self._settling = False
        elif seen != self._arrivals:
            self.cc.loop.call_soon(self._settle, self._arrivals)
        else:
            self._settling = False
            self._wake()

    def on_reset(self, code: int) -> None:
        self.credit.unread = 0
        if not self.ended:
            self.on_error(StreamResetError(self.sid, code))

    def on_stop(self, code: int) -> None:
        self.stopped = True
        self.cc.h3.end_local(self.sid)
        self._wake()

    def on_error(self, err: P2PError) -> None:
        if self.error is None:
            self.error = err
        self._wake()

    async def _wait(self) -> None:
        w = self._waiter = self.cc.loop.create_future()
        try:
            await w
        finally:
            self._waiter = None

    # -- sending ----------------------------------------------------------------

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if self.cc.lost is not None:
            raise self.cc.lost
        if self.stopped:
            raise StreamResetError(self.sid, H3_NO_ERROR)

    def send_headers(self, headers: Headers, end: bool) -> None:
        self._check()
        self.cc.h3.send_headers(self.sid, headers, end)
        if end:
            self.sent_end = True
        self.cc.schedule_transmit()

    def write_nowait(self, data: bytes, end: bool) -> bool:
        """Send body bytes if they fit in the stream's send buffer now (False: nothing was sent)."""
        self._check()
        try:
            sent = send_body_nowait(self.cc, self.sid, data, end)
        except RuntimeError:  # aioquic: stream reset by STOP_SENDING
            self._check()
            raise StreamResetError(self.sid, H3_NO_ERROR) from None
        if sent and end:
            self.sent_end = True
        return sent

    async def write(self, data: bytes, end: bool) -> None:
        """Send body bytes; waits while the stream's send buffer is full (``PeerConnection.send_buffer_limit``)."""
        if self.write_nowait(data, end):
            return
        try:
            await send_body(self.cc, self.sid, data, end)
        except RuntimeError:  # aioquic: stream reset by STOP_SENDING
            self._check()
            raise StreamResetError(self.sid, H3_NO_ERROR) from None
        if end:
            self.sent_end = True

    # -- receiving ------------------------------------------------------------------

    async def wait_headers(self) -> int:
        while self.status is None:
            if self.error is not None:
                raise self.error
            if self.ended:
                raise ConnectionClosed("peer ended the stream without a response")
            await self._wait()
        return self.status

    def read_nowait(self) -> bytes | None:
        """Everything buffered (joined once), b"" at the end, None when nothing is buffered yet.

        Reading gives the bytes' flow-control credit back to the peer.
        """
        if self.error is not None:
            raise self.error
        chunks = self.chunks
        if chunks:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self.buffered = 0
            self.credit.read(len(data))
            return data
        if self.ended:
            return b""
        return None

    async def read(self) -> bytes:
        """The next body bytes (everything buffered), b"" at the end."""
        while (data := self.read_nowait()) is None:
            await self._wait()
        return data

    # -- ending ---------------------------------------------------------------------

    def cancel(self, code: int = H3_REQUEST_CANCELLED) -> None:
        """Abandon the exchange: reset our side and ask the peer to stop."""
        if self.closed:
            return
        cc = self.cc
        if cc.lost is None:
            if not self.sent_end and not self.stopped:
                cc.conn.reset_stream(self.sid, code)
                cc.h3.end_local(self.sid)
            if not self.ended and self.error is None:
                cc.conn.stop_stream(self.sid, code)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.cc.streams.get(self.sid) is self:
            del self.cc.streams[self.sid]
        self.cc.conn.forget_stream(self.sid)

    @property
    def finished(self) -> bool:
        return self.ended and (self.sent_end or self.stopped)

    @property
    def response_started(self) -> bool:
        """Any response bytes arrived (an interim or final response, body bytes)."""
        return self.status is not None or bool(self.interim) or bool(self.chunks) or self.ended

    @property
    def never_sent(self) -> bool:
        """Nothing of this request ever left this host (so it cannot have reached the peer)."""
        return hooks.stream_bytes_sent(self.cc.conn.quic, self.sid) == 0


def register_client(endpoint: Endpoint) -> None:
    """Register ``h3`` on the endpoint (once) with :class:`ClientConnection` as the handler of dialed connections."""
    h3_protocol(endpoint).client_factory = ClientConnection


async def connect_h3(endpoint: Endpoint, addr: NodeAddr | NodeId, *, early_data: bool = False) -> ClientConnection:
    """The HTTP/3 client connection to a peer (dialing or reusing the pooled one), as soon as
    requests may be sent: our TLS Finished is queued (the handshake may not be confirmed yet).

    ``early_data=True``: with a session ticket from the peer, the connection comes back
    before its handshake completed (:attr:`PeerConnection.early`; see
    :meth:`Endpoint.connect_quic`): send only safe requests until the handshake is done.
    """
    register_client(endpoint)
    for _ in range(2):
        # the first request leaves with our TLS Finished (or, early, with the ClientHello);
        # a refusal ends the connection with its reason, which the request then fails with
        # (see P2PTransport)
        conn = await endpoint.connect_quic(addr, H3_ALPN, confirmed=False, early_data=early_data)
        handler = conn.handler
        if not isinstance(handler, ClientConnection):
            raise ConnectionClosed(f"connection to {conn.remote_node_id} is not an HTTP/3 client connection")
        if handler.draining and not handler.streams:
            conn.close(H3_NO_ERROR, "peer is going away")  # dial afresh: the peer may have restarted
            continue
        return handler
    raise PeerGoingAway(f"peer {conn.remote_node_id} is shutting down (GOAWAY received)")


# -- error mapping ---------------------------------------------------------------------


def _h3_error_name(code: int) -> str:
    from aioquic.h3.connection import ErrorCode

    try:
        return ErrorCode(code).name
    except ValueError:
        return hex(code)


def _map_error(exc: BaseException, request: httpx.Request, *, reading: bool) -> httpx.TransportError:
    if isinstance(exc, PeerGoingAway):
        return httpx.ConnectError(str(exc), request=request)
    if isinstance(exc, StreamResetError):
        if exc.error_code == H3_REQUEST_REJECTED:
            return httpx.ConnectError("request refused by the peer (it is shutting down); retry", request=request)
        return httpx.RemoteProtocolError(
            f"peer reset the HTTP/3 stream ({_h3_error_name(exc.error_code)})", request=request
        )
    if isinstance(exc, ConnectionClosed):
        cls = httpx.ReadError if reading else httpx.WriteError
        return cls(f"connection to peer lost: {exc}", request=request)
    if isinstance(exc, P2PError):
        return httpx.ReadError(str(exc), request=request) if reading else httpx.WriteError(str(exc), request=request)
    return httpx.TransportError(str(exc), request=request)


class _Deadline:
    """``async with _Deadline(seconds, ...)``: the block runs under ``asyncio.timeout(seconds)``
    (none for ``None``); when that deadline expires, raises ``exc_type`` saying what timed out.

    A class rather than an ``asynccontextmanager``: it runs for every request, and a
    generator-based context manager costs about a quarter more per use.
    """

    __slots__ = ("_cm", "_exc_type", "_request", "_seconds", "_what")

    def __init__(
        self, seconds: float | None, exc_type: type[httpx.TimeoutException], request: httpx.Request, what: str
    ) -> None:
        self._seconds = seconds
        self._exc_type = exc_type
        self._request = request
        self._what = what
        self._cm: asyncio.Timeout | None = None

    async def __aenter__(self) -> None:
        if self._seconds is not None:
            self._cm = asyncio.timeout(self._seconds)
            await self._cm.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        cm = self._cm
        if cm is None:
            return
        try:
            await cm.__aexit__(exc_type, exc, tb)  # turns the cancellation of its expiry into TimeoutError
        except TimeoutError:
            if cm.expired():
                raise self._timed_out() from None
            raise
        if exc_type is not None and issubclass(exc_type, TimeoutError) and cm.expired():
            raise self._timed_out() from None  # (the block raised TimeoutError itself as it expired)

    def _timed_out(self) -> httpx.TimeoutException:
        return self._exc_type(f"{self._what} timed out after {self._seconds:g}s", request=self._request)


# -- httpx transports ------------------------------------------------------------------------


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: ClientStream, request: httpx.Request, read_timeout: float | None) -> None:
        self._stream = stream
        self._request = request
        self._timeout = read_timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        st = self._stream
        try:
            while True:
                try:
                    data = st.read_nowait()
                    if data is None:  # only a wait needs a deadline
                        async with _Deadline(self._timeout, httpx.ReadTimeout, self._request, "reading the response"):
                            data = await st.read()
                except P2PError as exc:
                    raise _map_error(exc, self._request, reading=True) from exc
                if not data:
                    break
                yield data
        except BaseException:
            st.cancel()
            raise
        if st.finished:
            st.close()

    async def aclose(self) -> None:
        st = self._stream
        if st.finished or st.error is not None:
            st.close()
        else:
            st.cancel()


#: Turns a URL host (a node id or a name) into a :class:`NodeAddr` (see :class:`P2PTransport`).
Resolver = Callable[[str], Awaitable[NodeAddr]]


class NameDiscovery(Protocol):
    """A discovery source as :class:`P2PTransport` uses it (any :class:`asgi_p2p.discovery.Discovery` fits)."""

    async def resolve(self, node_id: NodeId) -> NodeAddr: ...

    async def resolve_name(self, name: str) -> NodeAddr: ...


def discovery_resolver(discovery: NameDiscovery) -> Resolver:
    """A :data:`Resolver` asking ``discovery``: a node id by :meth:`resolve`, any other host by name."""

    async def resolve(host: str) -> NodeAddr:
        try:
            node_id = NodeId.parse(host)
        except (InvalidNodeId, ValueError):
            return await discovery.resolve_name(host)
        return await discovery.resolve(node_id)

    return resolve


#: URL hosts whose resolution a :class:`P2PTransport` remembers (the oldest is forgotten first).
RESOLVED_CACHE_SIZE = 256


def _remember(cache: dict[str, T], key: str, value: T) -> None:
    """Put ``value`` in a per-host cache of at most :data:`RESOLVED_CACHE_SIZE` entries (the
    oldest goes first)."""
    if key not in cache and len(cache) >= RESOLVED_CACHE_SIZE:
        del cache[next(iter(cache))]
    cache[key] = value


class P2PTransport(httpx.AsyncBaseTransport):
    """An httpx transport sending HTTP/3 requests to peers: ``https://<node-id>/path``.

    One QUIC connection per peer (the endpoint's pool) carries all concurrent
    requests.  The URL host is a node id; :meth:`add_addr` says where a node can
    be reached (or pass a :class:`NodeAddr` via the ``addrs`` argument).

    ``resolve`` (optional) is awaited with the URL host when the host is not a
    node id with a known address: it returns the :class:`NodeAddr` to dial (so a
    URL host may also be a name, e.g. ``ChainedDiscovery.resolve_name``, or the
    simulator's DNS).  The answer is remembered (for :data:`RESOLVED_CACHE_SIZE`
    hosts) until dialing it fails; a failing lookup is an ``httpx.ConnectError``.

    ``discovery`` (instead of ``resolve``) is a discovery source, e.g. a
    :class:`~asgi_p2p.discovery.ChainedDiscovery` of a ticket, DNS, the relay's
    directory and mDNS: a bare node id is looked up with its ``resolve``, any
    other host with its ``resolve_name``.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        addrs: Iterable[NodeAddr] = (),
        resolve: Resolver | None = None,
        discovery: NameDiscovery | None = None,
    ) -> None:
        if resolve is not None and discovery is not None:
            raise ValueError("pass resolve or discovery, not both")
        self.endpoint = endpoint
        self._addrs: dict[NodeId, NodeAddr] = {}
        self._resolve = resolve if discovery is None else discovery_resolver(discovery)
        self._resolved: dict[str, NodeAddr] = {}
        self._node_ids: dict[str, NodeId | None] = {}  # URL hosts parsed as node ids (None: a name)
        self._handlers: set[ClientConnection] = set()
        self._closed = False
        for addr in addrs:
            self.add_addr(addr)
        register_client(endpoint)

    def add_addr(self, node_addr: NodeAddr) -> None:
        """Tell the transport where a node can be reached."""
        self._addrs[node_addr.node_id] = node_addr

    def _host_node_id(self, host: str, request: httpx.Request) -> NodeId | None:
        """The URL host as a node id (None: it is a name for the resolver); parsed once, as
        the same host comes with every request (for :data:`RESOLVED_CACHE_SIZE` hosts)."""
        try:
            return self._node_ids[host]
        except KeyError:
            pass
        node_id: NodeId | None
        try:
            node_id = NodeId.parse(host)
        except (InvalidNodeId, ValueError) as exc:
            if self._resolve is None:
                raise httpx.ConnectError(f"URL host {host!r} is not a node id: {exc}", request=request) from None
            node_id = None
        _remember(self._node_ids, host, node_id)
        return node_id

    def _known_target(self, host: str, node_id: NodeId | None) -> NodeAddr | NodeId | None:
        """Where the URL host is, if that is known without a lookup."""
        if node_id is not None:
            addr = self._addrs.get(node_id)
            if addr is not None:
                return addr
            if self._resolve is None:
                return node_id
        return self._resolved.get(host)

    async def _target(self, host: str, request: httpx.Request) -> NodeAddr | NodeId:
        node_id = self._host_node_id(host, request)
        found = self._known_target(host, node_id)
        if found is None:
            assert self._resolve is not None
            try:
                found = await self._resolve(host)
            except P2PError as exc:
                raise httpx.ConnectError(f"could not resolve {host!r}: {exc}", request=request) from exc
            if node_id is not None and found.node_id != node_id:
                raise httpx.ConnectError(
                    f"resolving {host!r} gave node {found.node_id}, not the node the URL names", request=request
                )
            _remember(self._resolved, host, found)
        return found

    def _pooled(self, host: str, request: httpx.Request) -> ClientConnection | None:
        """The pooled connection to the URL host's node if it takes requests now, as
        :func:`connect_h3` would return it without waiting (the common case: no deadline
        to arm, nothing to look up), else None."""
        target = self._known_target(host, self._host_node_id(host, request))
        if target is None:
            return None
        node_id = target.node_id if isinstance(target, NodeAddr) else target
        conn = self.endpoint.pooled_connection(node_id, H3_ALPN, confirmed=False, early_data=True)
        if conn is None:
            return None
        handler = conn.handler
        if not isinstance(handler, ClientConnection) or handler.draining:
            return None
        return handler

    async def _connection(self, request: httpx.Request, timeout: float | None) -> ClientConnection:
        host = request.url.host
        cc = self._pooled(host, request)
        if cc is None:
            try:
                async with _Deadline(timeout, httpx.ConnectTimeout, request, "connecting to the peer"):
                    target = await self._target(host, request)
                    cc = await connect_h3(self.endpoint, target, early_data=True)
            except P2PError as exc:
                self._resolved.pop(host, None)  # the peer may have moved: look it up again next time
                raise httpx.ConnectError(str(exc), request=request) from exc
            except httpx.ConnectTimeout:
                self._resolved.pop(host, None)
                raise
        self._handlers.add(cc)
        return cc

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on the peer's pooled connection (dialing one if there is none).

        If the pooled connection turns out dead (reset by a restarted peer, timed out,
        closed) before any response bytes arrived, the request is sent once more on a
        new connection when that is safe: its method is idempotent, or nothing of it
        ever left this host; and its body can be sent again.
        """
        if self._closed:
            raise RuntimeError("P2PTransport is closed")
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        started = asyncio.get_running_loop().time()
        cc = await self._connection(request, timeouts.get("connect"))
        established = cc.conn.established_at
        pooled = established is not None and established <= started  # not dialed for this request
        try:
            return await self._attempt(cc, request, timeouts, may_retry=pooled)
        except _RetryOnNewConnection as retry:
            log.info(
                "%s %s: the pooled connection to %s failed before any response (%s); retrying on a new connection",
                request.method,
                request.url,
                cc.conn.remote_node_id,
                retry.cause,
            )
        cc = await self._connection(request, timeouts.get("connect"))
        return await self._attempt(cc, request, timeouts, may_retry=False)

    async def _attempt(
        self, cc: ClientConnection, request: httpx.Request, timeouts: dict[str, float | None], *, may_retry: bool
    ) -> httpx.Response:
        """One exchange, made once more after the handshake if the peer answered its early data 425."""
        try:
            return await self._exchange(cc, request, timeouts, may_retry=may_retry)
        except _TooEarly:
            log.info(
                "%s %s: the peer answered 425 Too Early; sending it again after the handshake",
                request.method,
                request.url,
            )
        return await self._exchange(cc, request, timeouts, may_retry=False)

    async def _exchange(
        self, cc: ClientConnection, request: httpx.Request, timeouts: dict[str, float | None], *, may_retry: bool
    ) -> httpx.Response:
        """One attempt: send the request on ``cc``, wait for the response headers.

        On a connection still in its handshake (0-RTT), a safe request without a body goes
        at once as early data; any other waits for the handshake to complete.
        """
        early = cc.conn.early
        if early and not _early_safe(request):
            try:
                async with _Deadline(timeouts.get("connect"), httpx.ConnectTimeout, request, "connecting to the peer"):
                    await cc.conn.wait_handshake()
            except P2PError as exc:
                raise httpx.ConnectError(str(exc), request=request) from exc
            early = False
        try:
            st = cc.open_stream()
        except P2PError as exc:
            if may_retry and exc is cc.lost and _replayable(request, None):  # nothing was sent
                raise _RetryOnNewConnection(exc) from exc
            raise httpx.ConnectError(str(exc), request=request) from exc
        try:
            await self._send(st, request, timeouts.get("write"))
            try:
                async with _Deadline(timeouts.get("read"), httpx.ReadTimeout, request, "waiting for the response"):
                    status = await st.wait_headers()
            except P2PError as exc:
                raise _map_error(exc, request, reading=True) from exc
        except httpx.TransportError as exc:
            st.cancel()
            lost = cc.lost
            if lost is not None and not cc.conn.is_confirmed and not st.response_started:
                # sent with our TLS Finished or as early data (0-RTT), before the peer confirmed
                # the handshake: it refused the connection (its allow-list, its limits) or is
                # gone; a failure to connect, as for a request sent after the handshake
                refused = "connection to the peer refused: " if isinstance(lost, AuthenticationFailed) else ""
                raise httpx.ConnectError(f"{refused}{lost}", request=request) from lost
            if isinstance(exc, httpx.TimeoutException) or lost is None or st.response_started:
                raise  # not a dead connection, or the peer answered: the request reached it
            if not _replayable(request, st):
                raise
            if st.never_sent or request.method in IDEMPOTENT_METHODS:
                if may_retry:
                    raise _RetryOnNewConnection(lost) from exc
                raise
            raise type(exc)(
                f"{exc} (not retried: {request.method} is not idempotent and the request may have reached the peer)",
                request=request,
            ) from exc
        except BaseException:
            st.cancel()
            raise
        bad_length = _bad_content_length(st.headers)
        if bad_length is not None:
            st.cancel()
            raise httpx.RemoteProtocolError(
                f"the response from {cc.conn.remote_node_id} has {bad_length} "
                "(RFC 9110 section 8.6: one decimal number, digits only)",
                request=request,
            )
        if status == TOO_EARLY and early:
            st.cancel()
            try:
                await cc.conn.wait_handshake()
            except P2PError as exc:
                raise httpx.ConnectError(str(exc), request=request) from exc
            raise _TooEarly
        return httpx.Response(
            status,
            headers=st.headers,
            stream=_ResponseStream(st, request, timeouts.get("read")),
            extensions={
                "http_version": b"HTTP/3",
                "p2p_stream_id": st.sid,
                # 1xx responses received before the final one: [(status, headers)]
                "interim": st.interim,
                # response trailers, filled in once the body has been read
                "trailers": st.trailers,
            },
        )

    async def _send(self, st: ClientStream, request: httpx.Request, timeout: float | None) -> None:
        url = request.url
        target = url.raw_path or b"/"
        authority = url.netloc or url.host.encode()
        headers: Headers = [
            (b":method", request.method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority),
            (b":path", target),
        ]
        headers.extend(clean_header_fields(request.headers.raw, log.warning, request=True))
        stream = request.stream
        try:
            if isinstance(stream, httpx.ByteStream):
                body = request.content
                st.send_headers(headers, not body)
                if not body or st.write_nowait(body, True):
                    return  # all sent at once (the common case): nothing waited, so no deadline to arm
                async with _Deadline(timeout, httpx.WriteTimeout, request, "sending the request"):
                    await st.write(body, True)
                return
            assert isinstance(stream, httpx.AsyncByteStream), "P2PTransport needs an async request body"
            async with _Deadline(timeout, httpx.WriteTimeout, request, "sending the request"):
                st.send_headers(headers, False)
                st.body_started = True
                async for chunk in stream:
                    if chunk:
                        await st.write(bytes(chunk), False)
                await st.write(b"", True)
        except StreamResetError:
            # the peer stopped reading the request (an early response such as 413): read the response
            if st.error is not None and not isinstance(st.error, StreamResetError):
                raise _map_error(st.error, request, reading=False) from None
        except P2PError as exc:
            raise _map_error(exc, request, reading=False) from exc

    async def aclose(self) -> None:
        self._closed = True
        self._handlers.clear()


class _RetryOnNewConnection(Exception):
    """An attempt failed on a dead pooled connection and may be made again on a new one."""

    def __init__(self, cause: P2PError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _TooEarly(Exception):
    """The peer answered a request sent as early data with 425 Too Early (RFC 8470)."""


def _bad_content_length(headers: Headers) -> str | None:
    """What is wrong with a response's ``content-length`` fields, or None when nothing is.

    :data:`_MARK_INVALID_CONTENT_LENGTH` renamed each field that is not one decimal number
    (``1_0``, ``+10``, `` 10``, ``5, 5``), and every one when several disagree, their
    values quoted.
    """
    bad = [value.decode("latin-1") for name, value in headers if name == INVALID_CONTENT_LENGTH_FIELD]
    if not bad:
        return None
    if len(bad) == 1:
        return f"an invalid content-length {bad[0]}"
    return f"invalid or conflicting content-length fields {', '.join(bad)}"


def _early_safe(request: httpx.Request) -> bool:
    """The request may go as 0-RTT data: a safe method and no body."""
    return request.method in EARLY_DATA_METHODS and isinstance(request.stream, httpx.ByteStream) and not request.content


def _replayable(request: httpx.Request, st: ClientStream | None) -> bool:
    """The request's body can be sent again (held in memory, or a stream not yet read)."""
    return isinstance(request.stream, httpx.ByteStream) or st is None or not st.body_started


class _SyncResponseStream(httpx.SyncByteStream):
    def __init__(self, owner: SyncP2PTransport, stream: httpx.AsyncByteStream) -> None:
        self._owner = owner
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        ait = self._stream.__aiter__()

        async def step() -> bytes | None:
            try:
                return await ait.__anext__()
            except StopAsyncIteration:
                return None

        while True:
            chunk = self._owner._run(step())
            if chunk is None:
                return
            yield chunk

    def close(self) -> None:
        self._owner._run(self._stream.aclose())


class SyncP2PTransport(httpx.BaseTransport):
    """A blocking httpx transport: runs an event loop in a background thread.

    With no ``endpoint``, binds its own (``secret_key``, ``host``, ``config``)
    inside that loop and closes it in :meth:`close`.  To share an endpoint that
    already runs on a loop in another thread, pass both ``endpoint`` and ``loop``.
    ``addrs`` and ``discovery`` are as for :class:`P2PTransport` (discovery runs on that loop).
    """

    def __init__(
        self,
        endpoint: Endpoint | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        secret_key: SecretKey | None = None,
        host: str = "127.0.0.1",
        config: NetworkConfig | None = None,
        addrs: Iterable[NodeAddr] = (),
        discovery: NameDiscovery | None = None,
    ) -> None:
        self._thread: threading.Thread | None = None
        self._owns_endpoint = endpoint is None
        if endpoint is not None:
            if loop is None:
                raise InvalidConfiguration("SyncP2PTransport(endpoint) also needs the loop the endpoint runs on")
            self._loop = loop
        else:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="asgi-p2p-sync", daemon=True)
            self._thread.start()

        async def setup() -> tuple[Endpoint, P2PTransport]:
            ep = endpoint if endpoint is not None else await Endpoint.bind(secret_key, host=host, config=config)
            return ep, P2PTransport(ep, addrs=addrs, discovery=discovery)

        self.endpoint, self._async = self._run(setup())

    def _run(self, coro: Coroutine[Any, Any, T] | Awaitable[T]) -> T:
        async def wrap() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrap(), self._loop).result()

    @property
    def node_id(self) -> NodeId:
        return self.endpoint.node_id

    def add_addr(self, node_addr: NodeAddr) -> None:
        self._loop.call_soon_threadsafe(self._async.add_addr, node_addr)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        request.stream = httpx.ByteStream(body)
        response = self._run(self._async.handle_async_request(request))
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers.raw,
            stream=_SyncResponseStream(self, response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.aclose())
        if self._owns_endpoint:
            self._run(self.endpoint.close())
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
