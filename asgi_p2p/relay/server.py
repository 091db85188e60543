"""The relay server: an endpoint that forwards opaque packets between its clients by NodeId.

:class:`RelayServer` registers a handler for ALPN :data:`~asgi_p2p.relay.proto.RELAY_ALPN`
on an :class:`~asgi_p2p.endpoint.Endpoint` and drives the sans-I/O
:class:`~asgi_p2p.relay.proto.RelayRouter` with it:

* a client is registered when its handshake completes, under the NodeId its
  certificate proved (never a NodeId from a frame), and told its public
  address (OBSERVED_ADDR), again whenever the address its packets come from
  changes (NAT rebinding), and that new address again at the next
  :data:`OBSERVED_ADDR_REPEATS` checks (the frame is an unreliable datagram);
* every DATAGRAM frame goes through the router, none before the client's handshake
  completed here (its Finished checked: a frame right behind the Finished, even in the
  same datagram, comes after it, as aioquic processes a datagram's packets in order and
  has no 1-RTT keys before; the relay's endpoint accepts no 0-RTT data on relay
  connections); the frames it returns are sent
  as DATAGRAM frames on the destination's connection, after checking that they
  fit that connection now and that its datagram queue is not full;
* a malformed frame, a frame only a relay may send, or a stream opened by the
  client closes that client's connection (after an ERROR frame saying why);
  other clients are not affected;
* the client is unregistered when its connection goes away;
* each client over UDP is offered the data plane (:mod:`asgi_p2p.relay.plane`): a
  PLANE_TOKEN frame at registration, said again at the next :data:`PLANE_TOKEN_REPEATS`
  checks until the client uses it; its plane datagrams go through the same router as
  SEND frames, and packets for it travel as plane datagrams once it sent one.

The relay process also serves the node-record directory (ALPN
``asgi-p2p/directory/1``, :class:`~asgi_p2p.discovery.directory.DirectoryServer`)
on the same endpoint unless told not to: nodes publish their signed records
there and resolve each other's.

Datagram size: a relayed QUIC packet is at least 1200 bytes, the relay adds
:data:`~asgi_p2p.relay.proto.FORWARD_OVERHEAD` (34) and the relay connection's
own 1-RTT packet :data:`RELAY_PACKET_OVERHEAD` (30), so the relay's endpoint
builds :data:`RELAY_DATAGRAM_SIZE` (1264-byte) datagrams and every
client<->relay path must carry them (any 1500-byte Ethernet path does).  During
a handshake its datagrams are no larger than the client's largest: a relay client
pads its Initial to 1264 bytes and gets a 1264-byte flight back, so that the
handshake proves the size both ways (no size probe after it).

The relay only ever sees the packets it forwards as opaque bytes: they are
QUIC packets encrypted end to end between the two nodes (or signed disco
messages), and the relay holds neither node's keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import ssl
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aioquic.quic.events import DatagramFrameReceived, QuicEvent, StreamDataReceived
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed as WebSocketClosed
from websockets.http11 import Request, Response

from .. import aioquic_compat as hooks
from ..config import NetworkConfig
from ..discovery.directory import DIRECTORY_ALPN, DirectoryServer
from ..discovery.records import Directory
from ..endpoint.connection import PeerConnection
from ..errors import InvalidConfiguration, ProtocolError
from ..identity import NodeId, SecretKey
from ._datagrams import DEFAULT_MAX_PENDING_DATAGRAMS, queue_datagram_frame
from .first_contact import (
    FirstContacts,
    FirstContactStats,
    encode_first_reply,
    is_first_contact,
    is_zero_rtt,
    long_header_cids,
    refused_reply_address,
)
from .plane import HELLO, PLANE_MAGIC, PLANE_OVERHEAD, PlaneStats, PlaneTokens, encode_plane
from .proto import (
    FORWARD_OVERHEAD,
    FRAME_RECV,
    FRAME_SEND,
    RELAY_ALPN,
    RELAY_DATAGRAM_SIZE,
    RELAY_PACKET_OVERHEAD,
    RELAY_VERSION,
    Error,
    ErrorCode,
    PlaneToken,
    Recv,
    RelayFull,
    RelayLimits,
    RelayRouter,
    RelayStats,
)
from .tcp import (
    TCP_MAX_FRAME,
    WS_PATH,
    WS_SUBPROTOCOL,
    Hello,
    parse_auth,
    send_batch,
    server_tls_context,
)
from .url import RelayUrl

if TYPE_CHECKING:
    from ..endpoint.endpoint import Endpoint
    from ..net.base import DatagramNetwork

__all__ = [
    "RELAY_DATAGRAM_SIZE",
    "RELAY_PACKET_OVERHEAD",
    "RELAY_PROTOCOL_ERROR",
    "RELAY_SERVER_FULL",
    "RelayServer",
    "RelayServerStats",
    "relay_config",
]

log = logging.getLogger("asgi_p2p.relay")

#: Application close code: the client broke the relay protocol.
RELAY_PROTOCOL_ERROR = 0x105
#: Application close code: the relay's client table is full.
RELAY_SERVER_FULL = 0x104
#: Times a client's new observed address is said again, one per ``check_interval``, after the
#: frame that announced it (OBSERVED_ADDR rides an unreliable DATAGRAM frame).
OBSERVED_ADDR_REPEATS = 3
#: Times a client's PLANE_TOKEN is said again, one per ``check_interval``, while the client has
#: sent no plane datagram (the frame rides an unreliable datagram; an older client ignores it).
PLANE_TOKEN_REPEATS = 3
#: Plane datagrams to a client after which the path to it searches larger datagram sizes (as the
#: relay connection's own bulk sending would start it: its size bounds the largest relayed packet)
PLANE_BULK_PACKETS = 24
#: Seconds between lookups of the relay host's own addresses (first contacts from them are refused).
OWN_ADDRESSES_TTL = 10.0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def relay_config(max_clients: int, **overrides: Any) -> NetworkConfig:
    """The relay endpoint's default :class:`NetworkConfig`: defaults, ``ASGI_P2P_*``, then ``overrides``.

    Unlike a node's, its ``max_datagram_size`` is at least :data:`RELAY_DATAGRAM_SIZE`
    (so that a full-size relayed QUIC packet fits its datagrams from the first one on),
    and it allows ``max_clients`` connections plus a few being refused.
    """
    env_size = NetworkConfig.from_env().max_datagram_size
    values: dict[str, Any] = {
        "max_connections": max_clients + 16,
        "max_datagram_size": max(env_size, RELAY_DATAGRAM_SIZE),
    }
    values.update(overrides)
    return NetworkConfig.from_env(**values)


@dataclass
class RelayServerStats:
    """What the relay server did besides routing (routing counters: :attr:`RelayServer.router_stats`)."""

    connections_accepted: int = 0
    connections_closed: int = 0
    protocol_violations: int = 0
    refused_full: int = 0
    #: Frames the router allowed but the destination connection could not take right now.
    dropped_queue_full: int = 0
    dropped_too_large: int = 0
    dropped_gone: int = 0
    datagrams_received: int = 0
    datagrams_sent: int = 0
    observed_addr_updates: int = 0
    #: Relay clients over TCP (TLS + WebSocket) that proved their node key.
    tcp_connections_accepted: int = 0
    #: TCP connections dropped before or during the relay handshake (timeout, garbage, bad proof).
    tcp_handshake_failures: int = 0


class _ClientHandler:
    """One relay client's connection (the server side)."""

    def __init__(self, server: RelayServer, conn: PeerConnection) -> None:
        self.server = server
        self.conn = conn
        assert conn.remote_node_id is not None  # set by the handshake before handlers exist
        self.node: NodeId = conn.remote_node_id
        self.registered = False
        self.violated = False
        self.observed: tuple[str, int] | None = None
        #: OBSERVED_ADDR frames still to repeat for the current address (see _check_clients)
        self.observed_repeats = 0
        #: the data plane token issued to this connection (None: not issued)
        self.plane_token: bytes | None = None
        #: PLANE_TOKEN frames still to repeat while the client has not used the plane
        self.plane_repeats = 0
        #: the client sent a valid plane datagram: packets for it go as plane datagrams
        self.plane_active = False
        #: plane datagrams sent to it
        self.plane_sent = 0

    # -- ConnectionHandler -------------------------------------------------

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, DatagramFrameReceived):
            self.server._datagram(self, event.data)
        elif isinstance(event, StreamDataReceived):
            self.server._violation(self, f"opened stream {event.stream_id}; the relay protocol uses DATAGRAM frames")

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._lost(self, exc)

    # -- what RelayServer uses of any client (QUIC or TCP) ---------------------

    @property
    def is_connected(self) -> bool:
        return self.conn.is_connected

    def now(self) -> float:
        return self.conn.now()

    def max_frame(self) -> int:
        """The largest relay frame the client's connection takes now."""
        return hooks.max_datagram_frame_payload(self.conn.quic)

    def room(self, max_pending: int) -> int:
        return max_pending - hooks.pending_datagram_frames(self.conn.quic)

    def queue_frame(self, frame: bytes, max_pending: int, stats: RelayServerStats) -> bool:
        return queue_datagram_frame(self.conn.quic, frame, max_pending, stats)

    def flush(self, *, now: bool = False) -> None:
        if now:
            self.conn.transmit()
        else:
            self.conn.schedule_transmit()

    def close(self, code: int, reason: str) -> None:
        self.conn.close(code, reason)

    def peer_address(self) -> tuple[str, int]:
        """Where the client's packets come from (and ours go): its NAT's public mapping."""
        # With the endpoint's paths layer, QUIC sees a fixed address per connection and
        # ``conn.path`` tells the real direct address in use; without it, QUIC tracks it.
        path = getattr(self.conn, "path", None)
        addr = getattr(path, "addr", None) if getattr(path, "kind", None) == "direct" else None
        if addr is None:
            addr = self.conn.quic.get_peer_address() or self.conn.address
        return (str(addr[0]), int(addr[1]))


class _TcpClientHandler:
    """One relay client over TCP (TLS + WebSocket), after it proved its node key.

    Frames for it wait in a bounded buffer (``max_pending`` frames, ``max_buffer``
    bytes) that one writer task sends, one WebSocket message per frame, the frames
    waiting at once in one write (:func:`~asgi_p2p.relay.tcp.send_batch`); the
    WebSocket's own write buffer is bounded by ``websockets`` (``write_limit``).
    """

    def __init__(self, server: RelayServer, ws: ServerConnection, node: NodeId, max_buffer: int) -> None:
        self.server = server
        self.ws = ws
        self.node = node
        self.conn: object = self  # what the router knows this connection by
        self.registered = False
        self.violated = False
        self.observed: tuple[str, int] | None = None
        #: OBSERVED_ADDR frames still to repeat for the current address (see _check_clients)
        self.observed_repeats = 0
        self.max_buffer = max_buffer
        self._queue: deque[bytes] = deque()
        self._bytes = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._close_code = 1000
        self._close_reason = ""

    @property
    def is_connected(self) -> bool:
        return not self._closed

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def max_frame(self) -> int:
        return TCP_MAX_FRAME

    def room(self, max_pending: int) -> int:
        if self._bytes >= self.max_buffer:
            return 0
        return max_pending - len(self._queue)

    def queue_frame(self, frame: bytes, max_pending: int, stats: RelayServerStats) -> bool:
        if len(frame) > TCP_MAX_FRAME:
            stats.dropped_too_large += 1
            return False
        if len(self._queue) >= max_pending or self._bytes + len(frame) > self.max_buffer:
            stats.dropped_queue_full += 1
            return False
        self._queue.append(frame)
        self._bytes += len(frame)
        self._wake.set()
        return True

    def flush(self, *, now: bool = False) -> None:
        """Nothing to do: the writer task sends as soon as a frame is queued."""

    def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        # WebSocket close codes: 1000 normal, 1008 policy violation, 1013 try again later
        self._close_code = {0: 1000, RELAY_SERVER_FULL: 1013}.get(code, 1008)
        self._close_reason = reason.encode("utf-8")[:120].decode("utf-8", "ignore")
        self._wake.set()

    def peer_address(self) -> tuple[str, int]:
        addr = self.ws.remote_address
        return (str(addr[0]), int(addr[1]))

    async def writer(self) -> None:
        """Send the queued frames until closed, then the ones still queued, then close the WebSocket."""
        try:
            while True:
                while self._queue:
                    sent = await send_batch(self.ws, self._queue)  # (not `-= await`: that reads _bytes first)
                    self._bytes -= sent
                if self._closed:
                    break
                self._wake.clear()
                await self._wake.wait()
            await self.ws.close(self._close_code, self._close_reason)
        except WebSocketClosed:
            self._closed = True
            self._queue.clear()
            self._bytes = 0


_Handler = _ClientHandler | _TcpClientHandler


class RelayServer:
    """Serve the relay protocol on ``endpoint`` (which should serve nothing else but the directory).

    Use :meth:`bind` to create the endpoint too.  ``limits`` bound the client
    table and each client's packet, byte and error rates;
    ``max_pending_datagrams`` bounds each client connection's DATAGRAM queue;
    frames the router holds back (a destination receiving more than its budget, or
    whose DATAGRAM queue is full) wait in the router's fair queues and go out
    from a timer (every ``queue_poll_interval`` seconds while any wait for room);
    ``directory``, if given, is attached to the endpoint too (the relay process
    serves the node-record directory); ``plane``: offer clients over UDP the data plane
    (None, the default: unless the endpoint's ``NetworkConfig.relay_plane`` is ``"off"``);
    ``first_contact``: forward first contacts (:mod:`asgi_p2p.relay.first_contact`; None,
    the default: unless the endpoint's ``NetworkConfig.relay_first_contact`` is ``"off"``).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        limits: RelayLimits | None = None,
        max_pending_datagrams: int = DEFAULT_MAX_PENDING_DATAGRAMS,
        check_interval: float = 1.0,
        directory: DirectoryServer | None = None,
        queue_poll_interval: float = 0.005,
        plane: bool | None = None,
        first_contact: bool | None = None,
    ) -> None:
        if max_pending_datagrams <= 0:
            raise ValueError("max_pending_datagrams must be positive")
        if check_interval <= 0:
            raise ValueError("check_interval must be positive")
        if not 0 < queue_poll_interval <= 1.0:
            raise ValueError(f"queue_poll_interval must be in (0, 1] seconds, got {queue_poll_interval!r}")
        self.check_interval = check_interval
        #: whether clients over UDP are offered the data plane (the ``plane`` argument; None
        #: follows the endpoint's ``NetworkConfig.relay_plane``)
        self.offers_plane: bool = endpoint.config.relay_plane == "on" if plane is None else plane
        #: whether first contacts are forwarded (the ``first_contact`` argument; None follows
        #: the endpoint's ``NetworkConfig.relay_first_contact``)
        self.forwards_first_contacts: bool = (
            endpoint.config.relay_first_contact == "on" if first_contact is None else first_contact
        )
        #: the bounded table of live first contacts (:mod:`asgi_p2p.relay.first_contact`)
        self.first_contacts = FirstContacts(0.0)
        # this relay's own host addresses (first contacts from them are refused), looked up again
        # at most every OWN_ADDRESSES_TTL seconds; a relay listening on loopback only takes
        # first contacts from its host (every sender is there)
        self._own_hosts: frozenset[str] = frozenset()
        self._own_until = -math.inf
        self._loopback_only = _is_loopback(endpoint.local_address[0])
        # a refused address is logged once (then only counted): a client on the relay's own host
        # otherwise sees its fresh dials one relay round trip slower with no word why
        self._bad_address_logged = False
        #: while packets wait for room on a destination's connection, look again this often
        self.queue_poll_interval = queue_poll_interval
        self._check_handle: asyncio.TimerHandle | None = None
        self._queue_handle: asyncio.TimerHandle | None = None
        self._queue_due: float | None = None
        self.endpoint = endpoint
        self.router = RelayRouter(limits)
        self.stats = RelayServerStats()
        self.max_pending_datagrams = max_pending_datagrams
        self._handlers: dict[NodeId, _Handler] = {}
        self._closed = False
        self._tcp_server: Server | None = None
        self._tcp_fingerprint = b""
        self._tcp_handshakes = 0
        #: relay over TCP: seconds for the TLS handshake, the WebSocket upgrade and the AUTH each
        self.tcp_handshake_timeout = 10.0
        #: relay over TCP: most connections between their WebSocket upgrade and their AUTH at once
        self.max_tcp_handshakes = 256
        #: relay over TCP: bytes of frames that may wait for one client's TCP connection
        self.tcp_send_buffer = 262_144
        endpoint.add_protocol(RELAY_ALPN, self._handler_for, relay=True)
        #: the data plane's tokens (:mod:`asgi_p2p.relay.plane`); its counters: :attr:`plane_stats`
        self.plane: PlaneTokens[_ClientHandler] = PlaneTokens(endpoint.secret_key, endpoint.rng)
        endpoint.router.use_plane(PLANE_MAGIC, self)
        #: The node-record directory served on the same endpoint (None: not served).
        self.directory = directory
        if directory is not None:
            directory.attach(endpoint)
        if endpoint.config.max_datagram_size < RELAY_DATAGRAM_SIZE:
            log.warning(
                "relay endpoint builds %d-byte datagrams: a relayed full-size QUIC packet needs %d "
                "(it fits only once probing finds larger sizes on each client's path)",
                endpoint.config.max_datagram_size,
                RELAY_DATAGRAM_SIZE,
            )

    @classmethod
    async def bind(
        cls,
        secret_key: SecretKey | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: RelayLimits | None = None,
        config: NetworkConfig | None = None,
        network: DatagramNetwork | None = None,
        max_pending_datagrams: int = DEFAULT_MAX_PENDING_DATAGRAMS,
        directory: Directory | bool = True,
        clock_offset: float = 0.0,
        tcp_port: int | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        plane: bool | None = None,
        first_contact: bool | None = None,
    ) -> RelayServer:
        """Bind an endpoint serving the relay protocol (and the directory) and return the server.

        ``config`` defaults to :func:`relay_config` (1264-byte datagrams).
        ``directory``: True serves a new :class:`Directory` with default bounds,
        a :class:`Directory` serves that one (one with a ``store`` is loaded from
        it first: records persist across restarts), False serves none (directory
        connections are then refused).  ``clock_offset`` is added to
        ``loop.time()`` to get the Unix clock node records expire on: pass the
        network's ``wall_clock_offset()`` (the system clock read once on a real network,
        a constant in the simulator).  ``tcp_port`` (0: any free port) also serves
        the relay over TCP on ``host`` (:meth:`listen_tcp`, with ``tls_cert``/``tls_key``).
        ``plane``, ``first_contact``: as in the constructor (None: ``config.relay_plane``,
        ``config.relay_first_contact``).
        """
        from ..endpoint.endpoint import Endpoint

        limits = limits or RelayLimits()
        if config is None:
            config = relay_config(limits.max_clients)
        served: DirectoryServer | None = None
        alpns = [RELAY_ALPN]
        if directory is not False:
            store = directory if isinstance(directory, Directory) else Directory()
            if store.store is not None and not len(store):  # records kept by an earlier run
                store.load(asyncio.get_running_loop().time() + clock_offset)
            served = DirectoryServer(store, clock_offset=clock_offset)
            alpns.append(DIRECTORY_ALPN)
        endpoint = await Endpoint.bind(secret_key, host=host, port=port, alpns=alpns, config=config, network=network)
        try:
            server = cls(
                endpoint,
                limits=limits,
                max_pending_datagrams=max_pending_datagrams,
                directory=served,
                plane=plane,
                first_contact=first_contact,
            )
        except BaseException:
            await endpoint.close(timeout=0.1)
            raise
        if tcp_port is not None:
            try:
                await server.listen_tcp(host, tcp_port, certfile=tls_cert, keyfile=tls_key)
            except BaseException:
                await server.close(timeout=0.1)
                raise
        log.info(
            "relay %s serving at %s%s",
            endpoint.node_id,
            server.url,
            " (and a node-record directory)" if served is not None else "",
        )
        return server

    # -- public --------------------------------------------------------------

    @property
    def node_id(self) -> NodeId:
        return self.endpoint.node_id

    @property
    def url(self) -> RelayUrl:
        """This relay's URL (with the socket's bound address: on a wildcard bind, publish the real one)."""
        host, port = self.endpoint.local_address[0], self.endpoint.local_address[1]
        return RelayUrl(self.node_id, host, port, self.tcp_port)

    @property
    def tcp_port(self) -> int | None:
        """The TCP port the relay also serves on (None: UDP only; see :meth:`listen_tcp`)."""
        if self._tcp_server is None:
            return None
        return int(self._tcp_server.sockets[0].getsockname()[1])

    async def listen_tcp(
        self, host: str = "127.0.0.1", port: int = 0, *, certfile: str | None = None, keyfile: str | None = None
    ) -> int:
        """Also serve the relay over TCP (TLS 1.3 + WebSocket, :mod:`asgi_p2p.relay.tcp`); returns the port.

        The certificate is ``certfile``/``keyfile`` (PEM) if given, else self-signed
        from the relay's node key; clients authenticate the relay by its node key
        either way.  Each connection gets :attr:`tcp_handshake_timeout` seconds for
        each of its TLS handshake, WebSocket upgrade and AUTH, at most
        :attr:`max_tcp_handshakes` waiting for their AUTH at once, messages of at most
        :data:`~asgi_p2p.relay.tcp.TCP_MAX_FRAME` bytes and :attr:`tcp_send_buffer`
        bytes of frames waiting; a client that breaks any of these is dropped alone.
        """
        if self._tcp_server is not None:
            raise InvalidConfiguration(f"relay {self.node_id} already serves TCP on port {self.tcp_port}")
        key = self.endpoint.secret_key
        try:
            ctx, self._tcp_fingerprint = server_tls_context(key, certfile, keyfile)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise InvalidConfiguration(f"relay TLS certificate {certfile!r} / key {keyfile!r}: {exc}") from None
        timeout = self.tcp_handshake_timeout

        def check_path(connection: ServerConnection, request: Request) -> Response | None:
            if request.path != WS_PATH:
                return connection.respond(404, f"this is an asgi-p2p relay; its WebSocket is at {WS_PATH}\n")
            return None

        self._tcp_server = await serve(
            self._serve_tcp,
            host,
            port,
            ssl=ctx,
            ssl_handshake_timeout=timeout,
            open_timeout=timeout,
            process_request=check_path,
            subprotocols=[WS_SUBPROTOCOL],  # type: ignore[list-item]
            compression=None,  # relayed packets are encrypted: nothing to compress
            max_size=TCP_MAX_FRAME,
            max_queue=64,
            write_limit=65_536,
            ping_interval=self.check_interval * 20,
            ping_timeout=self.check_interval * 20,
            close_timeout=2.0,
        )
        bound = self.tcp_port
        assert bound is not None
        log.info("relay %s also serving over TCP (TLS 1.3 + WebSocket) at %s:%d", self.node_id, host, bound)
        return bound

    @property
    def limits(self) -> RelayLimits:
        return self.router.limits

    @property
    def router_stats(self) -> RelayStats:
        return self.router.stats

    @property
    def plane_stats(self) -> PlaneStats:
        """Data plane datagrams received, sent and dropped (:mod:`asgi_p2p.relay.plane`)."""
        return self.plane.stats

    @property
    def first_contact_stats(self) -> FirstContactStats:
        """First contacts forwarded and dropped, and their replies (:mod:`asgi_p2p.relay.first_contact`)."""
        return self.first_contacts.stats

    @property
    def clients(self) -> list[NodeId]:
        """NodeIds of the registered clients."""
        return [h.node for h in self._handlers.values() if h.registered]

    def observed_addr(self, node: NodeId) -> tuple[str, int] | None:
        """The address the relay sees ``node``'s packets come from (None if not connected)."""
        handler = self._handlers.get(node)
        return handler.observed if handler is not None else None

    async def close(self, *, timeout: float = 2.0) -> None:
        """Close every client connection (they reconnect elsewhere or later) and the endpoint."""
        self._closed = True
        if self._check_handle is not None:
            self._check_handle.cancel()
            self._check_handle = None
        if self._queue_handle is not None:
            self._queue_handle.cancel()
            self._queue_handle = None
        if self._tcp_server is not None:
            self._tcp_server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._tcp_server.wait_closed()
        await self.endpoint.close(timeout=timeout)
        await asyncio.sleep(0)  # let the transport release the socket (a restart may bind the same port)

    async def __aenter__(self) -> RelayServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- connection lifecycle ---------------------------------------------------

    def _handler_for(self, conn: PeerConnection) -> _ClientHandler:
        if conn.is_client:
            # dialing out with the relay ALPN from a relay makes no sense; refuse
            raise ProtocolError("a relay server does not dial relay connections")
        handler = _ClientHandler(self, conn)
        self.stats.connections_accepted += 1
        now = conn.now()
        try:
            actions = self.router.register(
                handler.node,
                now,
                conn=conn,
                observed_addr=handler.peer_address(),
                max_datagram_size=hooks.max_datagram_frame_payload(conn.quic),
            )
        except RelayFull as exc:
            self.stats.refused_full += 1
            log.warning("relay full: refusing %s (%s)", handler.node, exc)
            self._send_frame(handler, exc.frame)
            handler.close(RELAY_SERVER_FULL, str(exc))
            return handler
        self._admit(handler, actions, "udp")
        # packets to it that fit its connection's grown datagrams pass at once (not at the next
        # check): a relayed connection's size probe through us is refused no longer than needed
        conn.on_path_change.append(lambda _event: self._size_changed(handler))
        if self.offers_plane:
            self._offer_plane(handler)
        return handler

    def _offer_plane(self, handler: _ClientHandler) -> None:
        """Issue the client a data plane token and tell it (again at the next checks)."""
        token = handler.plane_token = self.plane.issue(handler.node, handler)
        handler.plane_repeats = PLANE_TOKEN_REPEATS
        self._send_frame(handler, PlaneToken(token).encode())

    def _admit(self, handler: _Handler, actions: list[tuple[NodeId, bytes]], how: str) -> None:
        """Make a registered client the node's current one (replacing an older connection)."""
        old = self._handlers.get(handler.node)
        if old is not None and old is not handler:
            log.info("relay client %s reconnected; closing its old connection", handler.node)
            old.registered = False
            old.close(0, "replaced by a newer connection of the same node")
        handler.registered = True
        handler.observed = self.router.observed_addr(handler.node)
        self._handlers[handler.node] = handler
        # its answers go to this authenticated connection from now on, never to a first contact's address
        held = self.first_contacts.forget(handler.node)
        if held:  # (sent once it counts as connected, behind the frames below)
            asyncio.get_running_loop().call_soon(self._deliver_held, handler.node, held)
        if self._check_handle is None and not self._closed:
            self._check_handle = asyncio.get_running_loop().call_later(self.check_interval, self._check_clients)
        log.info(
            "relay client %s connected over %s from %s:%d (%d clients)",
            handler.node,
            how,
            *handler.peer_address(),
            len(self.router),
        )
        for _, frame in actions:  # OBSERVED_ADDR for the new client (not "connected" until we return)
            self._send_frame(handler, frame)

    async def _serve_tcp(self, ws: ServerConnection) -> None:
        """One TCP client: HELLO, its AUTH, then its relay frames until it goes (or breaks a rule)."""
        if self._closed or self._tcp_handshakes >= self.max_tcp_handshakes:
            self.stats.tcp_handshake_failures += 1
            await ws.close(1013, "relay busy")
            return
        peer = ws.remote_address
        self._tcp_handshakes += 1
        try:
            hello = Hello.create(self.endpoint.secret_key, self._tcp_fingerprint)
            async with asyncio.timeout(self.tcp_handshake_timeout):
                await ws.send(hello.encode())
                auth = parse_auth(await ws.recv())
            if not auth.verify(hello.nonce, self.node_id, self._tcp_fingerprint):
                raise ProtocolError(f"AUTH from {auth.node}: the signature does not verify (replayed or forged?)")
        except (TimeoutError, ProtocolError) as exc:
            self.stats.tcp_handshake_failures += 1
            why = f"no AUTH within {self.tcp_handshake_timeout:g}s" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("relay over TCP: dropping %s: %s", peer, why)
            await ws.close(1008, why[:120])
            return
        except WebSocketClosed:
            self.stats.tcp_handshake_failures += 1
            return
        finally:
            self._tcp_handshakes -= 1
        handler = _TcpClientHandler(self, ws, auth.node, self.tcp_send_buffer)
        self.stats.connections_accepted += 1
        self.stats.tcp_connections_accepted += 1
        try:
            actions = self.router.register(
                auth.node,
                handler.now(),
                conn=handler,
                observed_addr=handler.peer_address(),
                max_datagram_size=TCP_MAX_FRAME,
            )
        except RelayFull as exc:
            self.stats.refused_full += 1
            log.warning("relay full: refusing %s over TCP (%s)", auth.node, exc)
            with contextlib.suppress(WebSocketClosed):
                await ws.send(exc.frame)
            await ws.close(1013, "relay full")
            return
        self._admit(handler, actions, "tcp")
        writer = asyncio.get_running_loop().create_task(handler.writer(), name=f"relay tcp writer {auth.node}")
        lost: Exception | None = None
        try:
            async for message in ws:
                if not isinstance(message, bytes):
                    self._violation(handler, "sent a text WebSocket message; relay frames are binary")
                if handler.violated:
                    break
                self._datagram(handler, message)  # type: ignore[arg-type]
        except WebSocketClosed as exc:
            lost = exc
        finally:
            handler.close(0, "connection closed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await writer
            self._lost(handler, lost)

    def _lost(self, handler: _Handler, exc: Exception | None) -> None:
        self.stats.connections_closed += 1
        if isinstance(handler, _ClientHandler) and handler.plane_token is not None:
            self.plane.revoke(handler.plane_token)
        if self._handlers.get(handler.node) is handler:
            del self._handlers[handler.node]
        if handler.registered:
            self.router.unregister(handler.node, handler.conn)
            handler.registered = False
            log.info("relay client %s disconnected: %s (%d clients)", handler.node, exc, len(self.router))

    def _violation(self, handler: _Handler, reason: str) -> None:
        if handler.violated:  # more events of the same batch
            return
        handler.violated = True
        self.stats.protocol_violations += 1
        message = f"protocol violation: {reason}"
        log.warning("relay client %s: %s; closing its connection", handler.node, message)
        if handler.registered:
            self._send_frame(handler, Error(ErrorCode.PROTOCOL, message[:900]).encode())
            self.router.unregister(handler.node, handler.conn)
            handler.registered = False
        handler.close(RELAY_PROTOCOL_ERROR, message[:900])

    # -- datagrams -----------------------------------------------------------

    def _check_clients(self) -> None:
        """Periodically: notice clients whose address changed while they only sent PINGs, and
        forget expired first contacts (else a flood's entries stay until the next first contact)."""
        self._check_handle = None
        if self._closed:
            return
        self.first_contacts.expire(asyncio.get_running_loop().time())
        actions: list[tuple[NodeId, bytes]] = []
        for handler in list(self._handlers.values()):
            if handler.registered and handler.is_connected:
                update = self._refresh(handler)
                if not update and handler.observed_repeats > 0:
                    # the frame rides an unreliable datagram: say a new address again, a few
                    # times, so one lost frame does not leave the client announcing its old port
                    handler.observed_repeats -= 1
                    update = self.router.observed_addr_frame(handler.node)
                actions.extend(update)
                if isinstance(handler, _ClientHandler) and handler.plane_repeats > 0 and not handler.plane_active:
                    handler.plane_repeats -= 1
                    assert handler.plane_token is not None  # issued at registration
                    actions.append((handler.node, PlaneToken(handler.plane_token).encode()))
        self._dispatch(actions)
        if self._handlers or len(self.first_contacts):
            self._check_handle = asyncio.get_running_loop().call_later(self.check_interval, self._check_clients)

    def _size_changed(self, handler: _ClientHandler) -> None:
        """The client's connection builds datagrams of another size now: forward what fits it."""
        if handler.registered and self._handlers.get(handler.node) is handler:
            self.router.set_max_datagram_size(handler.node, handler.max_frame())

    def _refresh(self, handler: _Handler) -> list[tuple[NodeId, bytes]]:
        """Keep a client's observed address and datagram size current (NAT rebinding, PMTU changes)."""
        node = handler.node
        self.router.set_max_datagram_size(node, handler.max_frame())
        addr = handler.peer_address()
        if addr == handler.observed:
            return []
        handler.observed = addr
        handler.observed_repeats = OBSERVED_ADDR_REPEATS
        update = self.router.update_observed_addr(node, addr)
        if update:
            self.stats.observed_addr_updates += 1
            log.info("relay client %s now seen at %s:%d", node, *addr)
        return update

    def _datagram(self, handler: _Handler, data: bytes) -> None:
        if not handler.registered or handler.violated:
            return
        self.stats.datagrams_received += 1
        node = handler.node
        actions = self._refresh(handler)
        now = handler.now()
        if (
            len(data) > FORWARD_OVERHEAD
            and data[0] == RELAY_VERSION
            and data[1] == FRAME_SEND
            and len(self.first_contacts)  # (no NodeId built per datagram while no first contact is live)
            and self._first_reply(node, NodeId(data[2:FORWARD_OVERHEAD]), memoryview(data)[FORWARD_OVERHEAD:], now)
        ):
            self._dispatch(actions)
            return
        try:
            actions.extend(self.router.handle_datagram(node, data, now, self._room))
        except ProtocolError as exc:
            self._violation(handler, str(exc))
            return
        self._dispatch(actions)
        self._schedule_queue(now)

    def plane_datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """A data plane datagram (:class:`~asgi_p2p.paths.link.PlaneReceiver`): a SEND in another form."""
        if is_first_contact(data):
            self._first_contact(data, addr)
            return
        got = self.plane.receive(data)
        if got is None:
            return
        handler, dst, packet = got
        stats = self.plane.stats
        if not handler.registered or handler.violated:
            stats.dropped_unknown_token += 1
            return
        if addr != handler.peer_address():
            stats.dropped_wrong_address += 1
            return
        if not handler.plane_active:
            handler.plane_active = True
            # packets for it now go straight to the socket: the RECV frames its connection
            # holds until the end of this pass go first (else a packet queued earlier arrives
            # after a later one, e.g. a handshake after the 1-RTT answer it unlocks, and the
            # client drops the answer until a probe timeout resends it)
            if hooks.pending_datagram_frames(handler.conn.quic):
                handler.flush(now=True)
        if dst == self.node_id:  # a hello: the client uses the plane (nothing is forwarded to a relay)
            stats.hellos += 1
            assert handler.plane_token is not None  # (it was found by it)
            self.endpoint.router.sendto(encode_plane(handler.plane_token, self.node_id, HELLO), addr)
            return
        stats.received += 1
        now = handler.now()
        if self._first_reply(handler.node, dst, packet, now):
            return
        self._dispatch(self.router.handle_packet(handler.node, dst, packet, now, self._room))
        self._schedule_queue(now)

    def _registered(self, node: NodeId) -> bool:
        handler = self._handlers.get(node)
        return handler is not None and handler.registered and handler.is_connected

    def _first_contact(self, data: bytes, addr: tuple[str, int]) -> None:
        """A first contact (:mod:`asgi_p2p.relay.first_contact`): forward its Initial (or a 0-RTT
        packet behind it) 1:1 if allowed."""
        table = self.first_contacts
        stats = table.stats
        if not self.forwards_first_contacts:
            stats.dropped_refused += 1
            return
        parsed = table.parse(data)
        if parsed is None or self.node_id in parsed[:2]:
            stats.dropped_malformed += 1
            return
        dest, claimed, packet, cids = parsed
        if not self._registered(dest):
            stats.dropped_unknown_destination += 1
            return
        if is_zero_rtt(packet):
            # a returning client's early request behind its Initial: only within that Initial's live
            # entry (whose checks it passed; the entry goes once the claimed node registers), from
            # its address, of its connection, bounded; it adds nothing to what goes back there
            if table.admit_early(claimed, dest, addr, len(data), asyncio.get_running_loop().time(), cids):
                self._dispatch([(dest, Recv(claimed, bytes(packet)).encode())])
            return
        if claimed in self._handlers:
            # the claimed node has a relay connection here (or a stale one): its answers would go
            # there, so a spoofer gains nothing and a restarted node's fresh process would lose
            # them; the Initial comes again behind that node's relay Finished, authenticated
            stats.dropped_claimed_registered += 1
            return
        if len(self.router) >= self.router.limits.max_clients:
            # full: the claimed node's own relay connection will be refused, so nothing of its
            # could follow the Initial through us; its dial fails naming our refusal, as without
            # first contact (not half-open with the destination on first-contact replies)
            stats.dropped_refused += 1
            return
        now = asyncio.get_running_loop().time()
        if self._refused_address(addr, now):
            # its answers would go to this relay's own socket or host, to loopback, multicast or
            # broadcast: a spoofed source must not make the relay a reflector at itself
            stats.dropped_bad_address += 1
            if not self._bad_address_logged:
                self._bad_address_logged = True
                log.info(
                    "relay: refusing first contacts from %s:%d: answers must not go there (this relay's own "
                    "socket or host, loopback, multicast, broadcast, unspecified or port 0); a client on this "
                    "host dials the normal way, one relay round trip later (logged once; counted as "
                    "dropped_bad_address)",
                    *addr,
                )
            return
        if not table.admit(claimed, dest, addr, len(data), now, cids):
            return
        log.debug("relay: first contact from %s:%d claiming node %s, to %s", *addr, claimed, dest)
        # the destination learns the claimed sender as a relayed packet's source; its end-to-end
        # handshake then requires that node's certificate (the claim is checked there)
        self._dispatch([(dest, Recv(claimed, bytes(packet)).encode())])

    def _first_reply(self, src: NodeId, dst: NodeId, packet: memoryview, now: float) -> bool:
        """A packet from ``src`` to ``dst``: True if it went to a first contact's address as its reply.

        Only a QUIC version 1 long-header packet addressed to the first contact's connection
        (an answer to its Initial: its destination connection id is that Initial's source
        connection id; ``src``'s own client Initial to ``dst`` is not one), only while ``dst``
        has no relay connection here (a registered node's packets always go to its
        authenticated connection), and only within the first contact's budget; everything
        else takes the router's normal path (an unregistered destination is refused).
        """
        if not len(self.first_contacts) or self._registered(dst):
            return False
        cids = long_header_cids(packet)
        if cids is None:
            # only a QUIC v1 long-header packet answers an Initial at its address; a 1-RTT packet
            # to the first contact's connection (the answer to a returning client's early request)
            # is held for the claimed node's registration, for its authenticated connection only;
            # anything else (1-RTT of other connections, disco) takes the normal (refusing) path
            return len(packet) > 0 and packet[0] & 0xC0 == 0x40 and self.first_contacts.hold(dst, src, packet, now)
        # (the reply is built only once it has somewhere to go)
        _handled, addr = self.first_contacts.reply_to(dst, src, PLANE_OVERHEAD + len(packet), now, cids)
        if addr is None:  # not an answer to a live first contact, or beyond its budget: refused as usual
            return False
        self.endpoint.router.sendto(encode_first_reply(src, packet), addr)
        return True

    def _deliver_held(self, node: NodeId, held: list[tuple[NodeId, bytes]]) -> None:
        """Send the packets held for ``node`` until it registered (:meth:`FirstContacts.hold`) to its
        connection, as their senders' (the relay's budgets and queues apply as to any packet)."""
        stats = self.first_contacts.stats
        if self._closed or not self._registered(node):
            stats.held_expired += len(held)
            return
        now = asyncio.get_running_loop().time()
        for src, packet in held:
            if self._registered(src):
                stats.held_delivered += 1
                self._dispatch(self.router.handle_packet(src, node, packet, now, self._room))
            else:  # (its sender left meanwhile: nothing of its connection would follow)
                stats.held_expired += 1
        self._schedule_queue(now)

    def _refused_address(self, addr: tuple[str, int], now: float) -> bool:
        """True if a first contact's answers must not go to ``addr`` (see :func:`refused_reply_address`)."""
        if now >= self._own_until:
            self._own_hosts = frozenset(a[0] for a in self.endpoint.router.own_socket_addresses())
            self._own_until = now + OWN_ADDRESSES_TTL
        return refused_reply_address(addr, self._own_hosts, self.endpoint.local_address[1], self._loopback_only)

    def _room(self, node: NodeId) -> int:
        """How many more frames ``node``'s connection queues now (the router's ``room``).

        Plane datagrams go straight to the socket: a client on the plane always has room.
        """
        handler = self._handlers.get(node)
        if handler is None or not handler.registered or not handler.is_connected:
            return 0
        if isinstance(handler, _ClientHandler) and handler.plane_active:
            return self.max_pending_datagrams
        return handler.room(self.max_pending_datagrams)

    def _schedule_queue(self, now: float) -> None:
        """Arm the timer that sends the router's waiting frames when they are due."""
        if self._closed:
            return
        router = self.router
        due = router.next_timer(now)
        if router.waiting_for_room:
            # aioquic tells nobody when its DATAGRAM queue drains: look again shortly
            retry = now + self.queue_poll_interval
            due = retry if due is None else min(due, retry)
        if due is None or (self._queue_due is not None and self._queue_due <= due):
            return
        if self._queue_handle is not None:
            self._queue_handle.cancel()
        loop = asyncio.get_running_loop()
        self._queue_due = due
        self._queue_handle = loop.call_at(due, self._poll_queue)

    def _poll_queue(self) -> None:
        self._queue_handle = None
        self._queue_due = None
        if self._closed:
            return
        now = asyncio.get_running_loop().time()
        self._dispatch(self.router.poll(now, self._room))
        self._schedule_queue(now)

    def _dispatch(self, actions: list[tuple[NodeId, bytes]]) -> None:
        touched: dict[_Handler, None] = {}
        planed: dict[_ClientHandler, list[bytes]] = {}
        for dst, frame in actions:
            target = self._handlers.get(dst)
            if target is None or not target.registered or not target.is_connected:
                self.stats.dropped_gone += 1
                continue
            if frame[1] == FRAME_RECV and isinstance(target, _ClientHandler) and target.plane_active:
                assert target.plane_token is not None  # active: it used the token
                # the RECV frame's source and packet behind the destination's plane header
                planed.setdefault(target, []).append(b"".join((PLANE_MAGIC, target.plane_token, memoryview(frame)[2:])))
                continue
            if self._queue_frame(target, frame):
                touched[target] = None
        for target, datagrams in planed.items():
            self.plane.stats.sent += len(datagrams)
            self.endpoint.router.sendmany(datagrams, target.peer_address())
            before = target.plane_sent
            target.plane_sent += len(datagrams)
            if before < PLANE_BULK_PACKETS <= target.plane_sent:
                peer = self.endpoint.router.peer_paths(target.node)
                if peer is not None:
                    peer.bulk_started()
        for handler in touched:
            # once the callbacks already queued have run: the frames a whole batch of received
            # datagrams produced for one client then share its packets (fewer encryptions and
            # sendto calls per forwarded packet; see docs/benchmarks.md, "Paths")
            handler.flush()

    def _queue_frame(self, handler: _Handler, frame: bytes) -> bool:
        if not handler.queue_frame(frame, self.max_pending_datagrams, self.stats):
            return False
        self.stats.datagrams_sent += 1
        return True

    def _send_frame(self, handler: _Handler, frame: bytes) -> None:
        if self._queue_frame(handler, frame):
            handler.flush(now=True)

    def __repr__(self) -> str:
        return f"<RelayServer {self.node_id} {len(self.router)} clients>"
