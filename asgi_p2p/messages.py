"""The raw message API: ordered, delimited messages between two nodes.

ALPN ``asgi-p2p/msg/1``.  Each side sends its messages on one unidirectional
QUIC stream that it opens, each message framed as a 4-byte big-endian length
followed by the payload, so order and boundaries hold.  A FIN on that stream
means "no more messages"; :meth:`MessageConnection.close` sends it, waits for
the peer to acknowledge everything, then closes the QUIC connection.

Memory is bounded on both sides: ``send`` waits while the stream's send buffer
(``stream_send_buffer``, growing with the congestion window up to
``max_stream_send_buffer``) is full of unacknowledged bytes, and the receiver
grants the sender credit only as the application calls ``recv`` (about the
stream's receive window, at most ``max_stream_receive_window``, +
``max_message_size`` bytes may wait unread).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aioquic.quic.events import QuicEvent, StreamDataReceived, StreamReset

from .endpoint.connection import REFUSED, PeerConnection
from .endpoint.endpoint import Endpoint
from .errors import ConnectionClosed, MessageTooLarge, P2PError, ProtocolError, Timeout
from .identity import NodeAddr, NodeId

__all__ = ["MSG_ALPN", "ConnectionStats", "MessageConnection", "MessageListener", "MessageService"]

log = logging.getLogger("asgi_p2p.messages")

MSG_ALPN = "asgi-p2p/msg/1"
_HEADER = struct.Struct("!I")
#: Application error code: the peer sent a message larger than our max_message_size.
MESSAGE_TOO_LARGE = 0x10
_GRACEFUL_CLOSE_TIMEOUT = 5.0


@dataclass
class ConnectionStats:
    """Counters of a message connection."""

    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    #: Seconds since the connection was established (loop time).
    duration: float = 0.0
    #: Smoothed round-trip time in seconds, as QUIC measures it.
    smoothed_rtt: float = 0.0


class MessageConnection:
    """A message connection with one peer (the seed's P2PConnection)."""

    def __init__(self, conn: PeerConnection) -> None:
        self._conn = conn
        self._max = conn.config.max_message_size
        self._out_stream: int | None = None
        self._in_stream: int | None = None
        self._buf = bytearray()
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._received_total = 0
        self._credited = 0
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._error: P2PError | None = None
        self._send_lock = asyncio.Lock()
        self._closing = False
        self._stats = ConnectionStats()

    # -- public API --------------------------------------------------------

    @property
    def remote_node_id(self) -> NodeId:
        assert self._conn.remote_node_id is not None
        return self._conn.remote_node_id

    @property
    def is_connected(self) -> bool:
        return self._conn.is_connected and not self._closing and not self._eof and self._error is None

    @property
    def peer_connection(self) -> PeerConnection:
        return self._conn

    @property
    def stats(self) -> ConnectionStats:
        s = self._stats
        established = self._conn.established_at or self._conn.now()
        s.duration = self._conn.now() - established
        s.smoothed_rtt = self._conn.smoothed_rtt
        return ConnectionStats(**vars(s))

    async def send(self, data: bytes) -> None:
        """Send one message; waits while the peer is slow to acknowledge.

        Raises :class:`MessageTooLarge` above ``max_message_size`` and
        :class:`ConnectionClosed` once the connection is closed.
        """
        if len(data) > self._max:
            raise MessageTooLarge(len(data), self._max)
        if self._closing:
            raise ConnectionClosed("send on a closed connection")
        if self._eof:
            raise ConnectionClosed("peer closed the connection")
        async with self._send_lock:
            conn = self._conn
            if self._out_stream is None:
                self._check_open()
                self._out_stream = conn.quic.get_next_available_stream_id(is_unidirectional=True)
            frame = _HEADER.pack(len(data)) + bytes(data) if len(data) < 65536 else None
            if frame is not None:
                await conn.send_stream_data(self._out_stream, frame)
            else:
                await conn.send_stream_data(self._out_stream, _HEADER.pack(len(data)))
                await conn.send_stream_data(self._out_stream, data)
            self._stats.messages_sent += 1
            self._stats.bytes_sent += len(data)

    async def recv(self) -> bytes:
        """The next message; blocks until one arrives.

        Raises :class:`ConnectionClosed` once the peer closed and every message
        it sent has been returned.
        """
        while not self._queue:
            if self._error is not None:
                raise self._error
            if self._eof:
                raise ConnectionClosed("peer closed the connection")
            if self._closing:
                raise ConnectionClosed("connection closed")
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        msg = self._queue.popleft()
        self._queued_bytes -= len(msg) + _HEADER.size
        self._stats.messages_received += 1
        self._stats.bytes_received += len(msg)
        self._grant()
        return msg

    async def recv_timeout(self, timeout: float) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self.recv()
        except TimeoutError:
            raise Timeout(f"no message from {self.remote_node_id} within {timeout:g}s") from None

    async def close(self) -> None:
        """Close gracefully: messages already sent are delivered first."""
        if self._closing:
            await self._conn.wait_closed()
            return
        self._closing = True
        conn = self._conn
        if not conn.closed and conn.close_error is None:
            try:
                async with asyncio.timeout(_GRACEFUL_CLOSE_TIMEOUT):
                    async with self._send_lock:
                        if self._out_stream is not None:
                            await conn.send_stream_data(self._out_stream, b"", end_stream=True)
                            await conn.drain(self._out_stream)
            except (P2PError, TimeoutError) as exc:
                log.debug("graceful close of %s cut short: %s", conn, exc)
            conn.close(0, "closed by application")
        self._wake()
        try:
            async with asyncio.timeout(_GRACEFUL_CLOSE_TIMEOUT):
                await conn.wait_closed()
        except TimeoutError:
            conn.abort(ConnectionClosed("connection closed"))

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        while True:
            try:
                yield await self.recv()
            except ConnectionClosed:
                return

    async def __aenter__(self) -> MessageConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<MessageConnection {self._conn.remote_node_id!r} {'open' if self.is_connected else 'closed'}>"

    # -- ConnectionHandler ---------------------------------------------------

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self._data_received(event)
        elif isinstance(event, StreamReset) and event.stream_id == self._in_stream:
            self._error = ConnectionClosed(f"peer aborted its message stream (error code {event.error_code:#x})")
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._error is None and not self._eof:
            if isinstance(exc, P2PError):
                self._error = exc
            else:
                self._error = ConnectionClosed("connection lost")
        self._wake()

    # -- internals -------------------------------------------------------------

    def _check_open(self) -> None:
        conn = self._conn
        if conn.closed or conn.close_error is not None:
            raise conn.close_error or ConnectionClosed()

    def _data_received(self, event: StreamDataReceived) -> None:
        conn = self._conn
        if self._in_stream is None:
            if event.stream_id % 4 != (3 if conn.is_client else 2):  # not a peer-opened unidirectional stream
                conn.stop_stream(event.stream_id, REFUSED)
                return
            self._in_stream = event.stream_id
            conn.track_stream(event.stream_id)
        elif event.stream_id != self._in_stream:
            conn.stop_stream(event.stream_id, REFUSED)
            return
        self._received_total += len(event.data)
        buf = self._buf
        buf += event.data
        pos = 0
        n = len(buf)
        while n - pos >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buf, pos)
            if size > self._max:
                err = MessageTooLarge(size, self._max)
                self._error = err
                conn.close(MESSAGE_TOO_LARGE, str(err))
                self._wake()
                return
            end = pos + _HEADER.size + size
            if end > n:
                break
            self._queue.append(bytes(buf[pos + _HEADER.size : end]))
            self._queued_bytes += _HEADER.size + size
            pos = end
        if pos:
            del buf[:pos]
        if event.end_stream:
            if buf:
                self._error = ProtocolError(f"peer ended its message stream inside a message ({len(buf)} bytes)")
            self._eof = True
        self._grant()
        self._wake()

    def _grant(self) -> None:
        """Credit the peer for everything except complete messages not yet read."""
        if self._in_stream is None:
            return
        target = self._received_total - self._queued_bytes
        if target > self._credited:
            self._conn.consume(self._in_stream, target - self._credited)
            self._credited = target

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class MessageListener:
    """Incoming message connections, in arrival order (the seed's P2PListener)."""

    def __init__(self, limit: int) -> None:
        self._queue: asyncio.Queue[MessageConnection | None] = asyncio.Queue(limit)
        self._closed = False

    def _offer(self, mc: MessageConnection) -> bool:
        if self._closed:
            return False
        try:
            self._queue.put_nowait(mc)
        except asyncio.QueueFull:
            return False
        return True

    async def accept(self) -> MessageConnection:
        """Wait for the next incoming connection."""
        if self._closed and self._queue.empty():
            raise ConnectionClosed("listener closed")
        mc = await self._queue.get()
        if mc is None:
            self._closed = True
            raise ConnectionClosed("listener closed")
        return mc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._queue.put_nowait(None)
            except asyncio.QueueFull:
                pass

    def __aiter__(self) -> AsyncIterator[MessageConnection]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[MessageConnection]:
        while True:
            try:
                yield await self.accept()
            except ConnectionClosed:
                return


class MessageService:
    """The raw message protocol on one endpoint: registers ALPN ``asgi-p2p/msg/1`` with it."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._listener = MessageListener(endpoint.config.accept_queue_size)
        endpoint.add_protocol(MSG_ALPN, self.handler_for)

    def handler_for(self, conn: PeerConnection) -> MessageConnection:
        mc = MessageConnection(conn)
        if not conn.is_client and not self._listener._offer(mc):
            raise ConnectionClosed("accept queue full")
        return mc

    async def connect(self, addr: NodeAddr | NodeId) -> MessageConnection:
        conn = await self._endpoint.connect_quic(addr, MSG_ALPN)
        mc = conn.handler  # (the connection's handler is made before connect returns)
        if not isinstance(mc, MessageConnection):  # pragma: no cover - made by handler_for
            raise ConnectionClosed("connection closed during setup")
        return mc

    def listen(self) -> MessageListener:
        return self._listener

    def close(self) -> None:
        self._listener.close()
