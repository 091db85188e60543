"""The directory over QUIC: ALPN ``asgi-p2p/directory/1``.

Any endpoint can serve a :class:`~asgi_p2p.discovery.records.Directory` with
:meth:`DirectoryServer.attach` (the relay process does); nodes publish their
signed records there and resolve other nodes with :class:`DirectoryClient`,
which implements :class:`~asgi_p2p.discovery.base.Discovery`.

One request per client-opened bidirectional stream; integers big-endian::

    request   op u8 | length u16 | body (length bytes) | FIN
    response  status u8 | length u16 | body (length bytes) | FIN

=====  ===============  ==========================================================
op     name             body
=====  ===============  ==========================================================
1      PUBLISH          a signed node record (see records.py)
2      RESOLVE          a 32-byte node id
3      RESOLVE_NAME     a name (lowercase DNS-style labels, 1..253 ASCII bytes)
4      UNPUBLISH        empty: remove the record of the connection's own node
=====  ===============  ==========================================================

Status 0 (OK) carries the signed record for RESOLVE / RESOLVE_NAME and nothing
otherwise; every other status carries a UTF-8 message: 1 NOT_FOUND, 2
INVALID_RECORD (bad signature, expired, TTL above the directory's maximum,
malformed), 3 STALE (a higher seq is published), 4 NAME_TAKEN, 5 FULL, 6
FORBIDDEN (record for another node than the connection's), 7 BAD_REQUEST, 8 BUSY
(too many requests in flight on this connection), 9 RATE_LIMITED (too many
publish requests from this node or from its address; try again later).  FULL
also answers a publish from an address that holds its maximum of records.

The server verifies every record it stores, and stores a record only from the
node it names (the QUIC peer's NodeId, proven in the TLS handshake, must equal
the record's).  The client verifies every record it receives itself, so a
directory can withhold records but cannot forge one.

Time: records carry expiry on a clock the nodes share (Unix time).  Server and
client compute it as ``loop.time() + clock_offset``; whoever creates them passes
``clock_offset`` (its network's ``wall_clock_offset()``: the system clock read once on a
real network, a constant in the simulator).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import weakref
from typing import TYPE_CHECKING

from aioquic.quic.events import QuicEvent, StreamDataReceived, StreamReset

from ..errors import ConnectionClosed, DiscoveryFailed, P2PError
from ..identity import NodeAddr, NodeId, SecretKey
from ..ticket import Ticket
from .base import RecordPublisher
from .records import (
    Directory,
    DirectoryFull,
    InvalidRecord,
    NameTaken,
    NodeRecord,
    PublishLimited,
    SignedNodeRecord,
    StaleRecord,
    check_name,
)

if TYPE_CHECKING:
    from ..endpoint.connection import PeerConnection
    from ..endpoint.endpoint import Endpoint

__all__ = [
    "DIRECTORY_ALPN",
    "FIRST_REFRESH",
    "MAX_BODY",
    "DirectoryClient",
    "DirectoryError",
    "DirectoryServer",
    "Op",
    "Status",
    "decode_message",
    "encode_message",
    "record_addrs",
]

log = logging.getLogger("asgi_p2p.discovery")

DIRECTORY_ALPN = "asgi-p2p/directory/1"
#: Largest body of a request or response (a maximal signed record is 3031 bytes).
MAX_BODY = 4096
_HEADER = 3
_MAX_ERROR_TEXT = 1024
#: Application error code for STOP_SENDING / RESET_STREAM / CONNECTION_CLOSE.
_REFUSED = 0x2
#: Refused requests whose senders keep sending, per connection, before we close it.
_MAX_REFUSED = 256
#: A client refreshes its record first after at most this many seconds: past a directory's
#: ``live_after`` (60 s) and well before its ``probation`` (300 s), so that the node counts as
#: live (kept over stale records when the directory is full) within minutes of publishing.
FIRST_REFRESH = 120.0


class Op(enum.IntEnum):
    PUBLISH = 1
    RESOLVE = 2
    RESOLVE_NAME = 3
    UNPUBLISH = 4


class Status(enum.IntEnum):
    OK = 0
    NOT_FOUND = 1
    INVALID_RECORD = 2
    STALE = 3
    NAME_TAKEN = 4
    FULL = 5
    FORBIDDEN = 6
    BAD_REQUEST = 7
    BUSY = 8
    RATE_LIMITED = 9


class DirectoryError(DiscoveryFailed):
    """The directory answered with an error status (:attr:`status`), or was unreachable (status None)."""

    def __init__(self, message: str, status: Status | None = None) -> None:
        self.status = status
        super().__init__(message)


def encode_message(code: int, body: bytes = b"") -> bytes:
    """``code u8 | length u16 | body``; raises ValueError if ``body`` is above :data:`MAX_BODY`."""
    if not 0 <= code <= 255:
        raise ValueError(f"code {code} does not fit a byte")
    if len(body) > MAX_BODY:
        raise ValueError(f"directory message body of {len(body)} bytes exceeds {MAX_BODY}")
    return bytes([code]) + len(body).to_bytes(2, "big") + body


def decode_message(data: bytes, what: str) -> tuple[int, bytes]:
    """Split a complete message into ``(code, body)``; raises ValueError naming the problem."""
    if len(data) < _HEADER:
        raise ValueError(f"{what} of {len(data)} bytes is shorter than its 3-byte header")
    length = int.from_bytes(data[1:3], "big")
    if length > MAX_BODY:
        raise ValueError(f"{what} body length {length} exceeds {MAX_BODY}")
    if len(data) != _HEADER + length:
        raise ValueError(f"{what} says {length} body bytes but carries {len(data) - _HEADER}")
    return data[0], bytes(data[_HEADER:])


def _error(status: Status, message: str) -> bytes:
    text = message.encode("utf-8")[:_MAX_ERROR_TEXT]
    return encode_message(status, text)


# -- server -------------------------------------------------------------------


class DirectoryServer:
    """Serves a :class:`Directory` on ALPN :data:`DIRECTORY_ALPN`.

    Args:
        directory: the store (a new one with default bounds if None).
        clock_offset: added to ``loop.time()`` to get the shared clock records use.
        max_concurrent: requests in flight per connection; more are answered BUSY.
    """

    def __init__(
        self, directory: Directory | None = None, *, clock_offset: float = 0.0, max_concurrent: int = 8
    ) -> None:
        if max_concurrent <= 0:
            raise ValueError("max_concurrent must be positive")
        self.directory = directory if directory is not None else Directory()
        self.clock_offset = clock_offset
        self.max_concurrent = max_concurrent
        #: Requests answered, by status (counters for metrics).
        self.answered: dict[Status, int] = dict.fromkeys(Status, 0)

    def attach(self, endpoint: Endpoint) -> None:
        """Serve the directory on ``endpoint`` (registers the ALPN)."""
        mux = _mux(endpoint)
        if mux.server is not None and mux.server is not self:
            raise ValueError(f"{endpoint!r} already serves another directory")
        mux.server = self

    def handle(self, peer: NodeId, request: bytes, now: float, source: str | None = None) -> bytes:
        """Answer one complete request from ``peer`` at shared-clock time ``now`` (sans-I/O).

        ``source``: the IP address the request came from (publishing is limited per
        address too; None: not limited by address).
        """
        response = self._handle(peer, request, now, source)
        self.answered[Status(response[0])] += 1
        return response

    def _handle(self, peer: NodeId, request: bytes, now: float, source: str | None) -> bytes:
        try:
            op, body = decode_message(request, "request")
        except ValueError as exc:
            return _error(Status.BAD_REQUEST, str(exc))
        d = self.directory
        if op == Op.PUBLISH:
            try:
                signed = SignedNodeRecord.parse(body)
            except InvalidRecord as exc:
                return _error(Status.INVALID_RECORD, str(exc))
            if signed.record.node_id != peer:
                return _error(
                    Status.FORBIDDEN,
                    f"node {peer} may not publish the record of node "
                    f"{signed.record.node_id}; a node publishes only its own record",
                )
            try:
                rec = d.publish(signed, now, source=source)
            except PublishLimited as exc:
                return _error(Status.RATE_LIMITED, str(exc))
            except StaleRecord as exc:
                return _error(Status.STALE, str(exc))
            except InvalidRecord as exc:
                return _error(Status.INVALID_RECORD, str(exc))
            except NameTaken as exc:
                return _error(Status.NAME_TAKEN, str(exc))
            except DirectoryFull as exc:
                return _error(Status.FULL, str(exc))
            log.info("directory: published %s seq %d name %r", rec.node_id, rec.seq, rec.name)
            return encode_message(Status.OK)
        if op == Op.RESOLVE:
            if len(body) != 32:
                return _error(Status.BAD_REQUEST, f"RESOLVE needs a 32-byte node id, got {len(body)} bytes")
            node = NodeId(body)
            found = d.resolve(node, now)
            if found is None:
                return _error(Status.NOT_FOUND, f"node {node} has no record in this directory")
            return encode_message(Status.OK, found.data)
        if op == Op.RESOLVE_NAME:
            try:
                name = check_name(body.decode("ascii"))
            except (UnicodeDecodeError, ValueError) as exc:
                return _error(Status.BAD_REQUEST, f"RESOLVE_NAME: {exc}")
            found = d.resolve_name(name, now)
            if found is None:
                return _error(Status.NOT_FOUND, f"no node holds the name {name!r} in this directory")
            return encode_message(Status.OK, found.data)
        if op == Op.UNPUBLISH:
            if body:
                return _error(Status.BAD_REQUEST, "UNPUBLISH takes no body")
            d.remove(peer)
            return encode_message(Status.OK)
        return _error(Status.BAD_REQUEST, f"unknown op {op}")


class _ServerConn:
    """One connection to the directory server: buffers requests, answers each on its stream."""

    def __init__(self, server: DirectoryServer, conn: PeerConnection) -> None:
        self.server = server
        self.conn = conn
        self._buffers: dict[int, bytearray] = {}
        # streams answered before their request ended (too large, busy): ignore the rest
        self._refused: set[int] = set()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self._data(event)
        elif isinstance(event, StreamReset):
            self._buffers.pop(event.stream_id, None)
            self._refused.discard(event.stream_id)

    def connection_lost(self, exc: Exception | None) -> None:
        self._buffers.clear()
        self._refused.clear()

    def _refuse(self, sid: int, status: Status, message: str) -> None:
        self._answer(sid, _error(status, message))
        self.conn.stop_stream(sid, _REFUSED)
        self._refused.add(sid)
        if len(self._refused) > _MAX_REFUSED:
            self.conn.close(_REFUSED, "too many refused directory requests still sending")

    def _data(self, event: StreamDataReceived) -> None:
        sid = event.stream_id
        conn = self.conn
        if sid % 4 != 0:  # only client-opened bidirectional streams carry requests
            conn.stop_stream(sid, _REFUSED)
            return
        if sid in self._refused:  # the rest of a request we already answered
            if event.end_stream:
                self._refused.discard(sid)
            return
        buf = self._buffers.get(sid)
        if buf is None:
            if len(self._buffers) >= self.server.max_concurrent:
                self._refuse(sid, Status.BUSY, f"more than {self.server.max_concurrent} requests in flight")
                return
            buf = self._buffers[sid] = bytearray()
        buf += event.data
        if len(buf) > _HEADER + MAX_BODY:
            del self._buffers[sid]
            self._refuse(sid, Status.BAD_REQUEST, f"request exceeds {_HEADER + MAX_BODY} bytes")
            return
        if event.end_stream:
            del self._buffers[sid]
            peer = conn.remote_node_id
            assert peer is not None  # handlers exist only after the handshake
            now = conn.loop.time() + self.server.clock_offset
            # where the connection came from (the address its Initial came from; a virtual
            # address, one per node, for a connection through a relay)
            source = str(conn.address[0])
            self._answer(sid, self.server.handle(peer, bytes(buf), now, source))

    def _answer(self, sid: int, response: bytes) -> None:
        try:
            self.conn.quic.send_stream_data(sid, response, end_stream=True)
        except Exception as exc:  # the stream was reset or the connection is closing
            log.debug("directory: could not answer on stream %d: %s", sid, exc)
            return
        self.conn.transmit()


# -- client -------------------------------------------------------------------


class _ClientConn:
    """Our connection to a directory: matches responses to waiting requests."""

    def __init__(self, mux: _DirectoryMux, conn: PeerConnection) -> None:
        self.mux = mux
        self.conn = conn
        self.pending: dict[int, tuple[bytearray, asyncio.Future[bytes]]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            entry = self.pending.get(event.stream_id)
            if entry is None:
                self.conn.stop_stream(event.stream_id, _REFUSED)
                return
            buf, fut = entry
            buf += event.data
            if fut.done():
                return
            if len(buf) > _HEADER + MAX_BODY:
                fut.set_exception(DirectoryError(f"directory response exceeds {_HEADER + MAX_BODY} bytes"))
                self.conn.stop_stream(event.stream_id, _REFUSED)
            elif event.end_stream:
                fut.set_result(bytes(buf))
        elif isinstance(event, StreamReset):
            entry = self.pending.get(event.stream_id)
            if entry is not None and not entry[1].done():
                entry[1].set_exception(
                    DirectoryError(f"directory reset the request stream (error code {event.error_code:#x})")
                )

    def connection_lost(self, exc: Exception | None) -> None:
        self.mux.clients.pop(self.conn, None)
        for _, fut in self.pending.values():
            if not fut.done():
                fut.set_exception(DirectoryError(f"connection to the directory lost: {exc or 'closed'}"))


class _DirectoryMux:
    """The per-endpoint handler factory of :data:`DIRECTORY_ALPN` (client and server side)."""

    def __init__(self) -> None:
        self.server: DirectoryServer | None = None
        self.clients: dict[PeerConnection, _ClientConn] = {}

    def handler_for(self, conn: PeerConnection) -> _ClientConn | _ServerConn:
        if conn.is_client:
            handler = _ClientConn(self, conn)
            self.clients[conn] = handler
            return handler
        if self.server is None:
            raise ConnectionClosed("this node does not serve a directory")
        return _ServerConn(self.server, conn)


_MUXES: weakref.WeakKeyDictionary[Endpoint, _DirectoryMux] = weakref.WeakKeyDictionary()


def _mux(endpoint: Endpoint) -> _DirectoryMux:
    mux = _MUXES.get(endpoint)
    if mux is None:
        mux = _MUXES[endpoint] = _DirectoryMux()
        endpoint.add_protocol(DIRECTORY_ALPN, mux.handler_for)
    return mux


def record_addrs(addr: NodeAddr) -> list[tuple[str, int]]:
    """The direct addresses a record can carry: IP addresses, not wildcards, at most 32."""
    import ipaddress

    from .records import MAX_ADDRS

    out: list[tuple[str, int]] = []
    for host, port in addr.direct_addresses:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            log.debug("record: skipping host name %r (records carry IP addresses)", host)
            continue
        if ip.is_unspecified or port == 0:
            continue
        out.append((str(ip), port))
    return out[:MAX_ADDRS]


class DirectoryClient(RecordPublisher):
    """Publish our record to a directory and resolve others' (a :class:`Discovery` source).

    Args:
        endpoint: our endpoint (its key signs our record; its connections carry requests).
        directory: the directory node (a NodeAddr with an address, or a ticket).
        clock_offset: added to ``loop.time()`` to get the shared clock records use.
        ttl: lifetime of the records we publish, seconds; refreshed at 3/4 of it, and
            the first time after at most :data:`FIRST_REFRESH` seconds (a directory that
            is full keeps nodes that refresh over those that published once).
        timeout: seconds for one request, connection setup included.
        refresh: republish before expiry (default); tests turn it off to watch expiry.
    """

    label = "directory"

    def __init__(
        self,
        endpoint: Endpoint,
        directory: NodeAddr | Ticket | str,
        *,
        clock_offset: float = 0.0,
        ttl: float = 3600.0,
        timeout: float = 5.0,
        refresh: bool = True,
        max_concurrent: int = 8,
    ) -> None:
        if isinstance(directory, str):
            directory = Ticket.parse(directory)
        if isinstance(directory, Ticket):
            directory = directory.to_node_addr()
        if ttl <= 0 or timeout <= 0:
            raise ValueError("ttl and timeout must be positive")
        self.endpoint = endpoint
        self.directory = directory
        self.clock_offset = clock_offset
        self.ttl = ttl
        self.timeout = timeout
        self.refresh = refresh
        self._slots = asyncio.Semaphore(max_concurrent)
        self._seq = 0
        self._init_publisher()
        _mux(endpoint)

    @property
    def key(self) -> SecretKey:
        return self.endpoint.secret_key

    def now(self) -> float:
        """The shared clock (seconds)."""
        return asyncio.get_running_loop().time() + self.clock_offset

    def _where(self) -> str:
        return f"directory {self.directory.node_id}"

    # -- raw requests -------------------------------------------------------

    async def request(self, op: int, body: bytes = b"") -> tuple[int, bytes]:
        """Send one request, return ``(status, body)``; raises :class:`DirectoryError` if unreachable."""
        data = encode_message(op, body)
        try:
            async with asyncio.timeout(self.timeout), self._slots:
                return await self._request(data)
        except TimeoutError:
            raise DirectoryError(f"{self._where()} did not answer within {self.timeout:g} s") from None

    async def _request(self, data: bytes) -> tuple[int, bytes]:
        try:
            conn = await self.endpoint.connect_quic(self.directory, DIRECTORY_ALPN)
        except P2PError as exc:
            raise DirectoryError(f"{self._where()} is unreachable: {exc}") from None
        handler = _mux(self.endpoint).clients.get(conn)
        if handler is None:
            raise DirectoryError(f"connection to {self._where()} closed during setup")
        sid = conn.quic.get_next_available_stream_id()
        fut: asyncio.Future[bytes] = conn.loop.create_future()
        handler.pending[sid] = (bytearray(), fut)
        try:
            try:
                await conn.send_stream_data(sid, data, end_stream=True)
                raw = await fut
            except DirectoryError:
                raise
            except P2PError as exc:
                raise DirectoryError(f"request to {self._where()} failed: {exc}") from None
        finally:
            handler.pending.pop(sid, None)
            if not fut.done():
                fut.cancel()
                conn.stop_stream(sid, _REFUSED)
        try:
            return decode_message(raw, "directory response")
        except ValueError as exc:
            raise DirectoryError(f"{self._where()} sent a malformed response: {exc}") from None

    def _fail(self, status: int, body: bytes, doing: str) -> DirectoryError:
        try:
            st: Status | None = Status(status)
        except ValueError:
            st = None
        text = body.decode("utf-8", "replace") if body else (st.name if st is not None else f"status {status}")
        return DirectoryError(f"{doing} at {self._where()} failed ({st.name if st else status}): {text}", st)

    # -- resolving ------------------------------------------------------------

    def _verified(self, body: bytes, expected: NodeId | None, what: str) -> NodeRecord:
        try:
            rec = SignedNodeRecord.parse(body).verify(self.now(), expected)
        except InvalidRecord as exc:
            raise DirectoryError(f"{self._where()} answered {what} with a record we refuse: {exc}") from None
        return rec

    async def fetch(self, node_id: NodeId) -> NodeRecord:
        """The verified record of ``node_id``; raises :class:`DirectoryError`."""
        status, body = await self.request(Op.RESOLVE, node_id.to_bytes())
        if status != Status.OK:
            raise self._fail(status, body, f"resolving node {node_id}")
        return self._verified(body, node_id, f"node {node_id}")

    async def fetch_name(self, name: str) -> NodeRecord:
        """The verified record holding ``name``; raises :class:`DirectoryError`."""
        try:
            check_name(name)
        except ValueError as exc:
            raise DirectoryError(str(exc)) from None
        status, body = await self.request(Op.RESOLVE_NAME, name.encode("ascii"))
        if status != Status.OK:
            raise self._fail(status, body, f"resolving name {name!r}")
        rec = self._verified(body, None, f"name {name!r}")
        if rec.name != name:
            raise DirectoryError(f"{self._where()} answered name {name!r} with a record named {rec.name!r}")
        return rec

    async def resolve(self, node_id: NodeId) -> NodeAddr:
        rec = await self.fetch(node_id)
        return NodeAddr(rec.node_id, rec.addrs, rec.relay_url)

    async def resolve_name(self, name: str) -> NodeAddr:
        rec = await self.fetch_name(name)
        return NodeAddr(rec.node_id, rec.addrs, rec.relay_url)

    # -- publishing -------------------------------------------------------------

    def make_record(self, addr: NodeAddr, name: str | None) -> SignedNodeRecord:
        """Our next record (a higher seq than any before), valid for :attr:`ttl` seconds."""
        now = self.now()
        self._seq = max(self._seq + 1, int(now * 1000))
        rec = NodeRecord(self.key.node_id, self._seq, now + self.ttl, addr.relay_url, tuple(record_addrs(addr)), name)
        return rec.sign(self.key)

    async def publish(self, addr: NodeAddr, name: str | None = None) -> None:
        """Publish our record (and keep refreshing it); raises :class:`DirectoryError` on refusal."""
        if addr.node_id != self.key.node_id:
            raise ValueError(f"this client publishes only its own node {self.key.node_id}, not {addr.node_id}")
        await self._start_publishing(addr, name)

    async def _publish_once(self, addr: NodeAddr, name: str | None) -> None:
        signed = self.make_record(addr, name)
        status, body = await self.request(Op.PUBLISH, signed.data)
        if status != Status.OK:
            raise self._fail(status, body, f"publishing node {self.key.node_id}")
        self.record = signed
        log.info("published our record (seq %d) to %s", signed.record.seq, self._where())

    def _record_lifetime(self) -> float:
        return self.ttl

    def _first_refresh_delay(self) -> float:
        return min(self.ttl * 0.75, FIRST_REFRESH)

    def _log_refresh_failure(self, retry: float, exc: DiscoveryFailed) -> None:
        log.warning("refreshing our record at %s failed (retrying in %g s): %s", self._where(), retry, exc)

    async def unpublish(self) -> None:
        """Stop refreshing and remove our record from the directory."""
        if not self._withdraw():
            return
        status, body = await self.request(Op.UNPUBLISH)
        if status != Status.OK:
            raise self._fail(status, body, "unpublishing")
