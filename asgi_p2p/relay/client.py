"""The relay client: one QUIC connection from an endpoint to its home relay.

:class:`RelayClient` implements :class:`~asgi_p2p.paths.link.RelayLink` for the
paths layer and reports what arrives to a :class:`~asgi_p2p.paths.link.RelaySink`
(the endpoint).  It connects with ``endpoint.connect_quic`` on the endpoint's
own socket (so the relay reflects the NAT mapping the endpoint's peers see),
checks the relay's NodeId inside the handshake (an impostor at the relay's
address is refused), keeps the connection and the NAT mapping alive with
QUIC PINGs, declares the relay dead when PINGs go unanswered, and reconnects
with capped exponential backoff and jitter from the ``rng`` it is handed.

It takes packets (:attr:`RelayClient.can_send`) and reports itself connected only while
the relay connection carries a full-size relayed packet (:data:`FULL_PACKET_SIZE`, the
smallest QUIC datagram, plus the relay's overhead).  Its handshake datagrams are padded
to that size, so a handshake the relay answers in kind proves the path carries it both
ways, with no size probe; if the padded Initial is not answered within 150 ms (or twice
the last relay connection's RTT), the handshake goes on with 1200-byte datagrams and,
after it, the client asks the paths layer to search for that datagram size (which keeps
retrying, with a short backoff, while the path does not carry it).  A connection that
shrinks below it (lost large packets) stops taking packets until it grows back.

Two stages, one round trip to the relay apart:

* **can send** from our TLS Finished on (aioquic: the handshake completed here, 1-RTT
  keys installed).  Packets sent then leave right behind the Finished (in its datagram
  or the next ones); the relay completes its handshake with that Finished (it checks our
  certificate then: a relay that refuses us forwards nothing), registers us and only
  then reads what follows it.  One that arrives before the Finished (reordering) cannot
  be decrypted there yet and is lost, as on any lossy path: the end-to-end QUIC
  connection inside retransmits it.  Dials through the relay start here
  (:meth:`RelayClient.wait_can_send`): a fresh or returning client's first response
  comes one relay round trip sooner than if they waited for the next stage.
* **connected** once the relay confirmed the handshake (HANDSHAKE_DONE): it registered
  us, so packets *to* us are forwarded, and it sent our public address
  (:attr:`RelayClient.observed_address`, shortly after).

:attr:`RelayClient.last_failure` and :meth:`RelayClient.wait_connected`'s error say why it
is not connected.

Relay over TCP: when the relay URL carries a TCP port (``?tcp=PORT``, see
:mod:`asgi_p2p.relay.tcp`), connecting races the QUIC connection against one over
TLS + WebSocket, with a head start for UDP (``udp_head_start``).  The outcome is
remembered per network (:mod:`asgi_p2p.relay.netmemory`: the local address towards
the relay): on a network where TCP won, the next connects start it at once, while on
another network UDP gets its head start again.  While on TCP the client tries UDP
again every ``udp_retry_interval`` seconds and moves back as soon as the QUIC
connection is up (and forgets that the network blocked UDP).  Either way the paths
layer sees the same relay link: the end-to-end QUIC connections relayed through it go
on across the switch.

Data plane: a relay that offers it (a PLANE_TOKEN frame, :mod:`asgi_p2p.relay.plane`)
gets the packets as plain UDP datagrams carrying that token on the endpoint's socket
instead of SEND frames, and sends ours the same way; signals and the relay's frames stay
on the connection, and so does everything with a relay that does not offer it.  While
on the plane the client PINGs the relay every :data:`PLANE_PING_INTERVAL` seconds, so
that the relay connection (whose address the relay sends plane datagrams to) follows a
NAT rebinding within that long.

Sending never blocks and never raises for a disconnected relay, a packet that
does not fit, or a full queue: like UDP, the packet is dropped, counted in
:attr:`RelayClient.stats`, and ``False`` is returned.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import math
import random
import socket
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from aioquic.quic.events import DatagramFrameReceived, PingAcknowledged, QuicEvent
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed as WebSocketClosed
from websockets.exceptions import InvalidHandshake

from .. import aioquic_compat as hooks
from ..endpoint.connection import PeerConnection
from ..errors import AuthenticationFailed, ConnectionClosed, P2PError, ProtocolError, Timeout
from ..identity import NodeAddr, NodeId
from ..paths.link import RefusalReason, RelayRefusal, RelaySink
from ..paths.select import QUIC_MIN_DATAGRAM_SIZE
from ._datagrams import DEFAULT_MAX_PENDING_DATAGRAMS, queue_datagram_frame
from .first_contact import (
    EXPIRY,
    encode_first_contact,
    is_first_contact,
    is_full_initial,
    is_zero_rtt,
    long_header_cids,
    open_first_reply,
)
from .netmemory import Network, TransportMemory
from .plane import ClientPlane, PlaneStats, client_demux
from .proto import (
    FORWARD_OVERHEAD,
    FRAME_RECV,
    FRAME_SEND,
    RELAY_ALPN,
    RELAY_DATAGRAM_SIZE,
    RELAY_VERSION,
    Error,
    ErrorCode,
    ObservedAddr,
    PlaneToken,
    Recv,
    Signal,
    parse_frame,
)
from .tcp import (
    TCP_MAX_FRAME,
    TCP_MAX_PACKET,
    WS_PATH,
    WS_SUBPROTOCOL,
    Auth,
    certificate_fingerprint,
    client_tls_context,
    parse_hello,
    send_batch,
)
from .url import RelayUrl

if TYPE_CHECKING:
    from ..endpoint.endpoint import Endpoint

__all__ = ["FULL_PACKET_SIZE", "PLANE_PING_INTERVAL", "RelayClient", "RelayClientStats", "Resolver"]

#: The packet size a relay connection must carry before the client reports itself connected:
#: the smallest QUIC datagram (every Initial is this large), so a peer's handshake always fits.
FULL_PACKET_SIZE = QUIC_MIN_DATAGRAM_SIZE

log = logging.getLogger("asgi_p2p.relay")

#: A relay connection's handshake datagrams are padded to the size it needs (our relays use
#: 8-byte connection ids: :data:`~asgi_p2p.relay.proto.RELAY_DATAGRAM_SIZE`), so that the
#: handshake proves the path carries them; without an answer within this long (three
#: quarters of QUIC's first probe timeout with its 100 ms initial RTT guess) the handshake
#: goes on with 1200-byte datagrams and the size is searched after it...
_PAD_ANSWER_WITHIN = 0.15
#: ... or, once a relay connection measured the RTT to the relay, within twice that RTT
#: (at least this long, at most the above)
_PAD_ANSWER_MIN = 0.05

#: While packets go on the data plane, seconds between PINGs on the relay connection (the relay
#: sends plane datagrams to the address that connection uses, so it must see a rebinding soon).
PLANE_PING_INTERVAL = 1.0
#: Packets held during one relay connection attempt to send at :attr:`RelayClient.can_send`: the
#: Initials sent as first contacts and what followed them (more are dropped as before).
_MAX_FIRST_COPIES = 8
#: Nodes (and connections) whose replies to our first contacts are taken at once.
_MAX_FIRST_DESTS = 16
#: Seconds a first contact's replies are taken after the relay's own expiry ends, counted from
#: our send: the relay counts its :data:`~asgi_p2p.relay.first_contact.EXPIRY` from the first
#: Initial's receipt, and its last reply still has to travel here (one way from the relay and
#: back: anything slower than this margin arrives after our window, and the dial goes on as
#: without first contact).
FIRST_CONTACT_REPLY_MARGIN = 0.5
#: Seconds a first contact's replies are taken, from its first Initial: the relay's expiry plus
#: :data:`FIRST_CONTACT_REPLY_MARGIN` (a retransmitted Initial extends neither).
FIRST_CONTACT_REPLY_WINDOW = EXPIRY + FIRST_CONTACT_REPLY_MARGIN
#: Plane datagrams after which the relay connection's path searches larger datagram sizes, as
#: the connection's own bulk sending would start it (it carries the largest relayed packet)
PLANE_BULK_PACKETS = 24

_SEND_PREFIX = bytes((RELAY_VERSION, FRAME_SEND))
_T = TypeVar("_T")

#: Resolves a relay URL's host name to addresses: ``await resolver(host, port)``.
Resolver = Callable[[str, int], Awaitable[list[tuple[str, int]]]]

_REASONS = {
    ErrorCode.RATE_LIMITED: RefusalReason.RATE_LIMITED,
    ErrorCode.UNKNOWN_DESTINATION: RefusalReason.UNKNOWN_DESTINATION,
    ErrorCode.TOO_LARGE: RefusalReason.TOO_LARGE,
    ErrorCode.SERVER_FULL: RefusalReason.SERVER_FULL,
    ErrorCode.PROTOCOL: RefusalReason.PROTOCOL,
}


@dataclass
class RelayClientStats:
    """Counters of a :class:`RelayClient`."""

    #: Relay connections established (handshakes the relay confirmed), and those lost.
    connects: int = 0
    disconnects: int = 0
    #: Times a connection in use stopped carrying a full-size packet (it was reported
    #: disconnected until it carried one again).
    shrunk: int = 0
    connect_failures: int = 0
    #: Handshakes where the node at the relay's address was not the relay (or refused us).
    auth_failures: int = 0
    keepalive_timeouts: int = 0
    packets_sent: int = 0
    bytes_sent: int = 0
    signals_sent: int = 0
    packets_received: int = 0
    bytes_received: int = 0
    signals_received: int = 0
    dropped_disconnected: int = 0
    #: Initials sent to the relay as first contacts (:mod:`asgi_p2p.relay.first_contact`).
    first_contacts_sent: int = 0
    #: 0-RTT packets sent to the relay as first contacts behind such an Initial (a returning
    #: client's early request; :mod:`asgi_p2p.relay.first_contact`)
    early_first_contacts_sent: int = 0
    dropped_too_large: int = 0
    dropped_queue_full: int = 0
    dropped_invalid: int = 0
    errors_received: int = 0
    malformed_frames: int = 0
    #: Relay connections over TCP (TLS + WebSocket) established, and attempts that failed.
    tcp_connects: int = 0
    tcp_connect_failures: int = 0
    #: Moves from the relay over TCP back to the relay over UDP.
    moved_to_udp: int = 0


# Relay clients by endpoint, then by relay NodeId: one ALPN factory per endpoint dispatches
# each dialed relay connection to the client that dialed it.
_clients: weakref.WeakKeyDictionary[Endpoint, dict[NodeId, RelayClient]] = weakref.WeakKeyDictionary()


def _register(client: RelayClient) -> None:
    endpoint = client.endpoint
    table = _clients.get(endpoint)
    if table is None:
        table = _clients[endpoint] = {}

        def factory(conn: PeerConnection) -> _RelayConnection:
            node = conn.remote_node_id
            owner = _clients.get(endpoint, {}).get(node) if conn.is_client and node is not None else None
            if owner is None:
                raise ConnectionClosed(f"node {endpoint.node_id} is not a relay")
            return owner._connection_made(conn)

        endpoint.add_protocol(RELAY_ALPN, factory, relay=True)
    other = table.get(client.url.node_id)
    if other is not None and other is not client:
        raise P2PError(f"endpoint {endpoint.node_id} already has a client for relay {client.url}")
    table[client.url.node_id] = client


def _unregister(client: RelayClient) -> None:
    table = _clients.get(client.endpoint)
    if table is not None and table.get(client.url.node_id) is client:
        del table[client.url.node_id]


class _RelayConnection:
    """The handler of one relay connection (client side)."""

    def __init__(self, client: RelayClient, conn: PeerConnection) -> None:
        self.client = client
        self.conn = conn
        self.last_alive = conn.now()
        self.lost = asyncio.Event()
        #: the relay's data plane for this connection (None: not offered)
        self.plane: ClientPlane | None = None
        self.plane_pinged = -math.inf
        #: counted in :attr:`RelayClientStats.connects` (once the relay confirmed it)
        self.counted = False

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, DatagramFrameReceived):
            self.last_alive = self.conn.now()
            self.client._frame_received(self, event.data)
        elif isinstance(event, PingAcknowledged):
            self.last_alive = self.conn.now()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()
        self.client._connection_lost(self, exc)

    def plane_datagram(self, data: bytes) -> None:
        self.client._plane_received(self, data)


@dataclass(slots=True)
class _FirstDial:
    """A connection we dialed with a first contact: its replies come from ``dest`` through ``relay``."""

    dest: NodeId
    relay: tuple[str, int]
    #: the end of its reply window (loop time)
    until: float


def _outcome(task: asyncio.Task[_T]) -> _T | None:
    """A finished connection attempt's result (None while running, and if cancelled or failed)."""
    if not task.done() or task.cancelled() or task.exception() is not None:
        return None
    return task.result()


class _TcpRelayConnection:
    """The relay over TCP (client side): a WebSocket, a bounded send buffer and its writer task."""

    def __init__(self, client: RelayClient, ws: ClientConnection, max_pending: int) -> None:
        self.client = client
        self.ws = ws
        self.max_pending = max_pending
        self.lost = asyncio.Event()
        self._queue: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def open(self) -> bool:
        return not self.lost.is_set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._writer()), loop.create_task(self._reader())]

    def send(self, frame: bytes, stats: RelayClientStats) -> bool:
        if len(frame) > TCP_MAX_FRAME:  # the relay would close the connection
            stats.dropped_too_large += 1
            return False
        if len(self._queue) >= self.max_pending:
            stats.dropped_queue_full += 1
            return False
        self._queue.append(frame)
        self._wake.set()
        return True

    async def _writer(self) -> None:
        try:
            while not self.lost.is_set():
                while self._queue:
                    await send_batch(self.ws, self._queue)
                self._wake.clear()
                await self._wake.wait()
        except WebSocketClosed as exc:
            self._gone(exc)

    async def _reader(self) -> None:
        exc: Exception | None = None
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    self.client._frame_received(self, message)
                else:
                    self.client.stats.malformed_frames += 1
        except WebSocketClosed as closed:
            exc = closed
        self._gone(exc)

    def _gone(self, exc: Exception | None) -> None:
        if self.lost.is_set():
            return
        self.lost.set()
        self._wake.set()
        self.client._set_disconnected(self, str(exc) if exc is not None else "closed by the relay")

    async def close(self) -> None:
        self.lost.set()
        self._wake.set()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self.ws.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class RelayClient:
    """A relay connection that stays up: implements :class:`~asgi_p2p.paths.link.RelayLink`.

    Args:
        endpoint: the endpoint whose socket the relay connection uses.
        relay_url: the relay (:class:`RelayUrl` or its text).
        sink: told about packets, signals, errors and state changes.
        rng: randomness for the reconnect jitter (a fresh ``random.Random()`` if None).
        keepalive_interval: seconds between PINGs to the relay (keeps NAT mappings
            and the registration alive; well below typical 30 s UDP NAT timeouts).
        keepalive_timeout: seconds without any answer after which the relay is
            considered gone and the client reconnects.
        reconnect_min, reconnect_max: backoff bounds in seconds; the delay doubles
            after each failed attempt, with jitter in its upper half.
        max_pending_datagrams: DATAGRAM frames that may wait in the connection's
            queue (congestion); beyond it packets are dropped.
        resolver: resolves a host name in the URL (default: the loop's getaddrinfo; the
            relay over TCP resolves it with the loop's getaddrinfo).
        udp_head_start: with a TCP port in the URL, seconds the QUIC connection attempt
            gets before one over TCP starts too.
        udp_retry_interval: while on TCP, seconds between attempts to move back to UDP.
        proxy: for the relay over TCP: ``True`` honours ``HTTPS_PROXY``/``NO_PROXY`` (an
            HTTP CONNECT proxy), a URL names one, None connects directly.
        transport_memory: the networks where UDP to the relay did not work (skip the head
            start there); default: a new one held in memory by this client.
        plane: use the relay's UDP data plane when it offers one (:mod:`asgi_p2p.relay.plane`);
            False keeps every packet in the relay connection's DATAGRAM frames (a network that
            drops the plane's datagrams is detected anyway, but costs hellos).  None (default):
            the endpoint's ``NetworkConfig.relay_plane``.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        relay_url: RelayUrl | str,
        sink: RelaySink,
        *,
        rng: random.Random | None = None,
        keepalive_interval: float = 5.0,
        keepalive_timeout: float = 15.0,
        reconnect_min: float = 0.5,
        reconnect_max: float = 30.0,
        max_pending_datagrams: int = DEFAULT_MAX_PENDING_DATAGRAMS,
        resolver: Resolver | None = None,
        udp_head_start: float = 1.0,
        udp_retry_interval: float = 60.0,
        proxy: str | Literal[True] | None = True,
        transport_memory: TransportMemory | None = None,
        plane: bool | None = None,
    ) -> None:
        if keepalive_interval <= 0 or keepalive_timeout <= keepalive_interval:
            raise ValueError("need 0 < keepalive_interval < keepalive_timeout")
        if reconnect_min <= 0 or reconnect_max < reconnect_min:
            raise ValueError("need 0 < reconnect_min <= reconnect_max")
        if max_pending_datagrams <= 0:
            raise ValueError("max_pending_datagrams must be positive")
        if udp_head_start < 0 or udp_retry_interval <= 0:
            raise ValueError("need udp_head_start >= 0 and udp_retry_interval > 0")
        self.udp_head_start = udp_head_start
        self.udp_retry_interval = udp_retry_interval
        self.proxy: str | Literal[True] | None = proxy
        #: The relay over TCP while in use (None: UDP or disconnected).
        self._tcp: _TcpRelayConnection | None = None
        #: where TCP won the race (per network): start it at once there (UDP is retried periodically)
        self.transport_memory = transport_memory if transport_memory is not None else TransportMemory()
        #: the network of the last race
        self._network: Network | None = None
        #: the QUIC connection attempt that was still going when TCP won the race
        self._pending_udp: asyncio.Task[_RelayConnection | None] | None = None
        self.endpoint = endpoint
        #: whether this client uses a relay's data plane when offered (the ``plane`` argument)
        self.plane_enabled: bool = endpoint.config.relay_plane == "on" if plane is None else plane
        self.url = relay_url if isinstance(relay_url, RelayUrl) else RelayUrl.parse(relay_url)
        if self.url.node_id == endpoint.node_id:
            raise P2PError(f"relay URL {self.url} names this node itself")
        self.sink = sink
        self.rng = rng if rng is not None else random.Random()
        self.keepalive_interval = keepalive_interval
        self.keepalive_timeout = keepalive_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.max_pending_datagrams = max_pending_datagrams
        self.resolver = resolver
        self.stats = RelayClientStats()
        #: The last ERROR frame the relay sent (for diagnostics).
        self.last_error: Error | None = None
        #: Why the client is not connected: the last connection attempt's failure, or a
        #: relay connection that does not carry a full-size packet (None while connected).
        self.last_failure: P2PError | None = None
        # the relay connection (from its handshake on), and whether it is in use: it
        # carries a full-size packet (and since when it has not, while it does not)
        self._conn: _RelayConnection | None = None
        self._live = False
        self._small_since: float | None = None
        self._small_warned = False
        self._observed: tuple[str, int] | None = None
        self._connected = asyncio.Event()
        #: set while :attr:`can_send` (from our Finished on; :attr:`connected` implies it)
        self._may_send = asyncio.Event()
        #: set whenever the QUIC relay connection becomes (or stops being) usable
        self._udp_live = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ping_uid = 0
        #: the smoothed RTT of the latest relay connection (None: none yet)
        self._relay_rtt: float | None = None
        #: send a fresh dial's Initial as a first contact (:mod:`asgi_p2p.relay.first_contact`)
        self.first_contact_enabled: bool = endpoint.config.relay_first_contact == "on"
        #: the relay's address while a QUIC connection attempt to it is under way (None: none)
        self._attempt_to: tuple[str, int] | None = None
        #: Initials sent as first contacts, sent again the normal way once :attr:`can_send`
        self._first_copies: list[tuple[NodeId, bytes]] = []
        #: nodes we sent a first contact to: what follows their Initials is held until then (loop time)
        self._first_dests: dict[NodeId, float] = {}
        #: connections we dialed with a first contact, by our source connection id (the destination
        #: connection id of the replies): only their replies are taken, until their window ends
        self._first_dials: dict[bytes, _FirstDial] = {}
        #: where :meth:`_first_reply` is registered with the socket's plane demultiplexer: the
        #: relay address and the receiver (one at a time; None: none).  It goes once no first
        #: dial's window is open, noticed by :meth:`_prune_first_dials` at the next of: a
        #: datagram it receives, a first contact, a relay connection attempt (on TCP: the
        #: retry of UDP), a keepalive on UDP.  (No timer of its own: a receiver left a while
        #: longer takes nothing, its dials being gone.)
        self._first_relay: tuple[tuple[str, int], Callable[[bytes], None]] | None = None
        #: the connection whose plane receiver :meth:`_plane_offered` registered last (None once
        #: :meth:`_plane_closed` removed it); that receiver hands first replies on itself
        self._plane_conn: _RelayConnection | None = None

    # -- RelayLink -------------------------------------------------------------

    @property
    def relay_url(self) -> str:
        return str(self.url)

    @property
    def connected(self) -> bool:
        """Up, carries a full-size packet, and the relay confirmed our handshake (registered us)."""
        current = self._conn
        if self._live and current is not None and current.conn.is_connected and current.conn.is_confirmed:
            return True
        return self._tcp is not None and self._tcp.open

    @property
    def can_send(self) -> bool:
        """:meth:`send_packet` takes full-size packets: from our TLS Finished on (see the module docstring)."""
        if self._live and self._conn is not None and self._conn.conn.is_connected:
            return True
        return self._tcp is not None and self._tcp.open

    @property
    def takes_first_contact(self) -> bool:
        """While not :attr:`can_send` but a QUIC connection attempt is under way: :meth:`send_packet`
        takes a full-size Initial and sends it to the relay as a first contact at once (and
        again the normal way once :attr:`can_send`); anything else is dropped as before."""
        return (
            self.first_contact_enabled
            and self._attempt_to is not None
            and not self.can_send
            and not self._closing.is_set()
        )

    @property
    def transport(self) -> str | None:
        """How the relay is reached now: ``"udp"`` (QUIC), ``"tcp"`` (TLS + WebSocket) or None."""
        if self._live and self._conn is not None and self._conn.conn.is_connected:
            return "udp"
        return "tcp" if self._tcp is not None and self._tcp.open else None

    @property
    def max_packet_size(self) -> int:
        transport = self.transport
        if transport is None:
            return 0
        if transport == "tcp":
            return TCP_MAX_PACKET
        assert self._conn is not None
        return max(0, hooks.max_datagram_frame_payload(self._conn.conn.quic) - FORWARD_OVERHEAD)

    @property
    def max_probe_packet_size(self) -> int:
        """:attr:`max_packet_size` on the data plane (:attr:`on_plane`), else at most 1200 (see
        :class:`~asgi_p2p.paths.link.RelayLink`): DATAGRAM frames and TCP keep today's sizes."""
        size = self.max_packet_size
        return size if self.on_plane else min(size, FULL_PACKET_SIZE)

    @property
    def observed_address(self) -> tuple[str, int] | None:
        return self._observed

    @property
    def connection(self) -> PeerConnection | None:
        """The relay connection while connected (its ``path_events()`` show its datagram size grow)."""
        return self._conn.conn if self.transport == "udp" and self._conn is not None else None

    async def wait_packet_size(self, size: int, timeout: float | None = None) -> None:
        """Wait until packets of ``size`` bytes fit the relay connection (:attr:`max_packet_size`).

        While connected, :data:`FULL_PACKET_SIZE`-byte packets fit; larger ones fit
        once the paths layer has probed larger datagrams on the path to the relay.
        Raises :class:`Timeout` if not in time.
        """

        async def wait() -> None:
            while self.max_packet_size < size:
                conn = self.connection
                if conn is None:
                    await self.wait_can_send()
                    continue
                events = conn.path_events()
                if self.max_packet_size >= size:
                    return
                async for _ in events:
                    if self.max_packet_size >= size or not self.can_send:
                        break

        try:
            async with asyncio.timeout(timeout):
                await wait()
        except TimeoutError:
            raise Timeout(
                f"relay {self.url}: packets of {size} bytes do not fit within {timeout:g}s "
                f"(now {self.max_packet_size}); does the path to the relay carry {size + 64}-byte datagrams?"
            ) from None

    @property
    def on_plane(self) -> bool:
        """True while packets go on the relay's data plane (offered, and a hello answered)."""
        current = self._conn
        return current is not None and current.plane is not None and current.plane.confirmed and self._live

    @property
    def plane_stats(self) -> PlaneStats | None:
        """The current relay connection's data plane counters (None: no plane offered)."""
        current = self._conn
        return current.plane.stats if current is not None and current.plane is not None else None

    def send_packet(self, dest: NodeId, packet: bytes) -> bool:
        if self.takes_first_contact and isinstance(packet, bytes):
            if is_full_initial(packet):
                return self._send_first_contact(dest, packet)
            if dest in self._first_dests and len(self._first_copies) < _MAX_FIRST_COPIES:
                # what follows a first contact (0-RTT data) goes the normal way at can_send; a
                # 0-RTT packet of a connection dialed with a first contact goes as one too now
                self._first_copies.append((dest, packet))
                if is_zero_rtt(packet):
                    self._send_early(dest, packet)
                return True
        if not self._sendable(packet):
            return False
        current = self._conn
        if current is not None and current.plane is not None and self._live:
            if current.plane.confirmed:
                return self._send_on_plane(current, current.plane, dest, packet)
            self._hello_again(current, current.plane)
        # the per-packet path: the frame is Send(dest, packet).encode() with one copy of the packet
        if self._send_frame(b"".join((_SEND_PREFIX, dest.to_bytes(), packet))):
            self.stats.packets_sent += 1
            self.stats.bytes_sent += len(packet)
            return True
        return False

    def send_signal(self, dest: NodeId, payload: bytes) -> bool:
        if not self._sendable(payload):
            return False
        if self._send_frame(Signal(dest, payload).encode()):
            self.stats.signals_sent += 1
            return True
        return False

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background (returns at once; idempotent)."""
        if self._task is not None:
            return
        if self._closing.is_set():
            raise ConnectionClosed("relay client is closed")
        _register(self)
        if self.url.is_ip and self.first_contact_enabled:
            # the first attempt's address is known now: a dial made before the connecting task
            # has run (a node's first request, right after it bound) already goes as a first
            # contact (see takes_first_contact; the attempt itself sets it again)
            self._attempt_to = self.url.address
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"relay client {self.url}")

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the relay connection is confirmed (it registered us) and carries a full-size packet.

        Raises :class:`Timeout` if not in time, saying why (the last connection
        failure, or the datagram size the path to the relay has carried so far).
        """
        if not self.connected:
            await self._wait(self._connected, timeout)

    async def wait_can_send(self, timeout: float | None = None) -> None:
        """Wait until :attr:`can_send`: our Finished is sent and the connection carries a full-size packet.

        Half a round trip to the relay before :meth:`wait_connected`.  Raises
        :class:`Timeout` as :meth:`wait_connected` does.
        """
        if not self.can_send:
            await self._wait(self._may_send, timeout)

    async def _wait(self, event: asyncio.Event, timeout: float | None) -> None:
        if self._closing.is_set():
            raise ConnectionClosed("relay client is closed")
        if self._task is None:
            raise ConnectionClosed("relay client not started; call start() first")
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            why = f": {self.last_failure}" if self.last_failure is not None else ""
            raise Timeout(f"relay {self.url} not connected within {timeout:g}s{why}") from None

    async def close(self) -> None:
        """Stop reconnecting and close the relay connection."""
        if self._closing.is_set():
            return
        self._closing.set()
        current = self._conn
        if current is not None:
            current.conn.close(0, "relay client closed")
            self._set_disconnected(current, "closed")
        tcp = self._tcp
        if tcp is not None:
            self._set_disconnected(tcp, "closed")
            await tcp.close()
        if self._pending_udp is not None:
            self._pending_udp.cancel()
            self._pending_udp = None
        self._first_copies.clear()
        self._first_dests.clear()
        self._first_dials.clear()
        self._prune_first_dials(0.0)  # (no dial left: the receiver goes)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        _unregister(self)

    async def __aenter__(self) -> RelayClient:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the connect / keepalive / reconnect loop ------------------------------------

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait before reconnect ``attempt`` (0-based): doubling, capped, jittered."""
        base = min(self.reconnect_max, self.reconnect_min * 2.0 ** min(attempt, 62))
        return base / 2 + self.rng.uniform(0.0, base / 2)

    async def _run(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        while not self._closing.is_set():
            started = loop.time()
            current: _RelayConnection | _TcpRelayConnection | None = await self._connect_any()
            served = current is not None
            while isinstance(current, _TcpRelayConnection):
                current = await self._serve_tcp(current)  # a UDP connection when it moved back
            if current is not None:
                await self._serve(current)
            if served and loop.time() - started >= self.keepalive_timeout:
                attempt = 0  # it was up for a while: start the backoff afresh
            if self._closing.is_set():
                return
            delay = self.backoff_delay(attempt)
            attempt += 1
            log.info("relay %s: reconnecting in %.2fs (attempt %d)", self.url, delay, attempt)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._closing.wait()

    async def _connect_any(self) -> _RelayConnection | _TcpRelayConnection | None:
        """Connect over UDP, or over TCP when the URL has a TCP port and UDP does not come up first."""
        if self.url.tcp_port is None:
            return await self._connect()
        loop = asyncio.get_running_loop()
        udp = self._pending_udp or loop.create_task(self._connect_usable(), name=f"relay {self.url} over udp")
        self._pending_udp = None
        tasks: set[asyncio.Task[_RelayConnection | None] | asyncio.Task[_TcpRelayConnection | None]] = {udp}
        network = self._network = await self._current_network()
        now = self._wall_time()
        blocked = self.transport_memory.udp_blocked_since(network, now)
        if blocked is not None:
            log.info(
                "relay %s: UDP did not work on this network (%s) %.0fs ago: connecting over TCP at once",
                self.url,
                network,
                now - blocked,
            )
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.udp_head_start):
                    await asyncio.shield(udp)
            if _outcome(udp) is not None:
                return _outcome(udp)
        tcp = loop.create_task(self._connect_tcp(), name=f"relay {self.url} over tcp")
        tasks.add(tcp)
        winner: _RelayConnection | _TcpRelayConnection | None = None
        try:
            pending = {t for t in tasks if not t.done() or t is tcp}
            while pending and winner is None:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                # UDP first if both made it at once
                if _outcome(udp) is not None:
                    winner = _outcome(udp)
                elif _outcome(tcp) is not None:
                    winner = _outcome(tcp)
                elif tcp.done():
                    break  # TCP failed: back off and try again (the QUIC attempt goes on meanwhile)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        if not isinstance(winner, _RelayConnection) and not udp.done():
            # the QUIC handshake goes on (until the connect timeout): if it completes, the
            # client moves to it at once (see _serve_tcp), as after a periodic UDP retry;
            # after a failed round, the next one goes on with it
            self._pending_udp = udp
        elif not tcp.done():
            tcp.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tcp
        loser = _outcome(tcp)
        if loser is not None and loser is not winner:
            await loser.close()
        if winner is not None and not (isinstance(winner, _TcpRelayConnection) and self._live):
            # (TCP won the race while the UDP connection, usable already, awaited the relay's
            # confirmation: UDP is not blocked here)
            self._remember(network, "tcp" if isinstance(winner, _TcpRelayConnection) else "udp")
        if isinstance(winner, _TcpRelayConnection):
            self._use_tcp(winner)
        return winner

    def _wall_time(self) -> float:
        return asyncio.get_running_loop().time() + self.endpoint.router.clock_offset

    async def _current_network(self) -> Network:
        relay = str(self.url.node_id)
        try:
            addrs = await self._addresses()
        except (OSError, P2PError):
            addrs = []
        return self.transport_memory.network(relay, addrs[0] if addrs else None)

    def _remember(self, network: Network, transport: str) -> None:
        if self.transport_memory.remember(network, transport, self._wall_time()):
            what = "blocks UDP to the relay" if transport == "tcp" else "carries UDP to the relay again"
            log.info("relay %s: remembered that this network (%s) %s", self.url, network, what)

    async def _connect_tcp(self) -> _TcpRelayConnection | None:
        """The relay over TLS + WebSocket, the relay's proof checked and ours given (None: failed)."""
        url = self.url
        assert url.tcp_port is not None
        host = f"[{url.host}]" if ":" in url.host else url.host
        uri = f"wss://{host}:{url.tcp_port}{WS_PATH}"
        timeout = self.endpoint.config.connect_timeout
        ws: ClientConnection | None = None
        try:
            ws = await ws_connect(
                uri,
                ssl=client_tls_context(),
                proxy=self.proxy,
                subprotocols=[WS_SUBPROTOCOL],  # type: ignore[list-item]
                compression=None,
                max_size=TCP_MAX_FRAME,
                max_queue=64,
                write_limit=65_536,
                open_timeout=timeout,
                ping_interval=self.keepalive_interval,
                ping_timeout=self.keepalive_timeout - self.keepalive_interval,
                close_timeout=2.0,
                user_agent_header="asgi-p2p relay client",
            )
            ssl_object = ws.transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if not der:
                raise ProtocolError("the relay's TLS session shows no certificate")
            fingerprint = certificate_fingerprint(der)
            async with asyncio.timeout(timeout):
                hello = parse_hello(await ws.recv())
            if not hello.verify(url.node_id, fingerprint):
                raise AuthenticationFailed(
                    f"the server at {url.host}:{url.tcp_port} did not prove relay key {url.node_id} "
                    "for its TLS certificate (another server, or a man in the middle)"
                )
            await ws.send(Auth.create(self.endpoint.secret_key, hello, url.node_id, fingerprint).encode())
        except AuthenticationFailed as exc:
            self.stats.auth_failures += 1
            self.stats.tcp_connect_failures += 1
            log.error("relay %s over TCP: refused: %s", url, exc)
            if ws is not None:
                await ws.close()
            return None
        except (P2PError, OSError, TimeoutError, InvalidHandshake, WebSocketClosed) as exc:
            self.stats.tcp_connect_failures += 1
            why = f"no answer within {timeout:g}s" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
            log.warning("relay %s over TCP (%s): cannot connect: %s", url, uri, why)
            if ws is not None:
                await ws.close()
            return None
        if self._closing.is_set():
            await ws.close()
            return None
        return _TcpRelayConnection(self, ws, self.max_pending_datagrams)

    def _use_tcp(self, current: _TcpRelayConnection) -> None:
        self._tcp = current
        current.start()
        self.stats.connects += 1
        self.stats.tcp_connects += 1
        self.last_failure = None
        self._connected.set()
        self._may_send.set()
        self._flush_first_copies()  # the dial's Initials held as first contacts (sent to blocked UDP)
        log.warning(
            "relay %s: connected over TCP (TLS + WebSocket at port %s): UDP to the relay did not work; "
            "trying UDP again every %gs",
            self.url,
            self.url.tcp_port,
            self.udp_retry_interval,
        )
        self._notify_state()

    async def _serve_tcp(self, current: _TcpRelayConnection) -> _RelayConnection | None:
        """Use the relay over TCP until it is lost, moving to UDP once a QUIC connection is up.

        That connection is the attempt still going from the race, if any, else one tried
        every ``udp_retry_interval`` seconds; it is returned once it carries a full-size packet.
        """
        loop = asyncio.get_running_loop()
        next_udp = loop.time() + self.udp_retry_interval
        lost = loop.create_task(current.lost.wait())
        try:
            while current.open and not self._closing.is_set():
                pending = self._pending_udp
                waits: set[asyncio.Future[Any]] = {lost}
                if pending is not None:
                    waits.add(pending)
                await asyncio.wait(waits, timeout=max(0.0, next_udp - loop.time()), return_when=asyncio.FIRST_COMPLETED)
                if self._closing.is_set():
                    break
                udp: _RelayConnection | None = None
                if pending is not None and pending.done():
                    self._pending_udp = None
                    udp = _outcome(pending)
                elif pending is None and loop.time() >= next_udp and current.open:
                    next_udp = loop.time() + self.udp_retry_interval
                    log.info("relay %s: on TCP; trying UDP again", self.url)
                    udp = await self._connect()
                else:
                    continue
                if udp is None or self._closing.is_set():
                    continue
                if not self._live:
                    # the QUIC connection is up but does not carry a full-size packet yet: wait a little
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.keepalive_interval):
                            await self._until_live(udp)
                if self._live and self._conn is udp:
                    self.stats.moved_to_udp += 1
                    if self._network is not None:
                        self._remember(self._network, "udp")
                    log.info("relay %s: UDP works again; moved from TCP to UDP", self.url)
                    if self._tcp is current:
                        self._tcp = None
                    await current.close()
                    return udp
                udp.conn.close(0, "relay over UDP not usable; staying on TCP")
                self._set_disconnected(udp, "not usable")
        finally:
            lost.cancel()
        if self._tcp is current:
            self._set_disconnected(current, "closed")
        await current.close()
        return None

    async def _connect_usable(self) -> _RelayConnection | None:
        """A QUIC relay connection, once it carries a full-size packet (None: failed or lost first).

        For the race against TCP: a QUIC handshake that completed on a path that does not carry
        full-size packets (its datagram size still searched) does not win it.
        """
        udp = await self._connect()
        if udp is None or self._live:
            return udp
        await self._until_live(udp)
        return udp if self._live and self._conn is udp else None

    async def _until_live(self, udp: _RelayConnection) -> None:
        while not (self._live and self._conn is udp) and not udp.lost.is_set():
            self._udp_live.clear()
            await self._udp_live.wait()

    def _send_first_contact(self, dest: NodeId, packet: bytes) -> bool:
        """Send ``packet`` (a full-size Initial) to the relay as a first contact; keep a copy for later."""
        relay = self._attempt_to
        assert relay is not None  # (takes_first_contact)
        now = asyncio.get_running_loop().time()
        self._prune_first_dials(now)
        dests = self._first_dests
        for old in [d for d, until in dests.items() if until < now]:
            del dests[old]
        # copies of dials given up (or left by a failed attempt) never block later first contacts
        self._first_copies = [(d, p) for d, p in self._first_copies if d in dests]
        if len(self._first_copies) >= _MAX_FIRST_COPIES:
            self.stats.dropped_disconnected += 1
            return False
        if len(dests) >= _MAX_FIRST_DESTS:
            del dests[next(iter(dests))]
        cids = long_header_cids(packet)
        current = self._conn
        if cids is not None and (current is None or current.plane is None):
            # (replies may come before the relay's plane token)
            if not self._take_first_replies(relay):
                self.first_contact_enabled = False
                self._first_copies.append((dest, packet))  # (it goes at can_send, as without first contact)
                dests[dest] = now + FIRST_CONTACT_REPLY_WINDOW
                return True
        self._first_copies.append((dest, packet))
        dests.pop(dest, None)
        dests[dest] = now + FIRST_CONTACT_REPLY_WINDOW
        if cids is not None:
            self._first_dial(cids[1], dest, relay, now)
        self.endpoint.router.sendto(encode_first_contact(dest, self.endpoint.node_id, packet), relay)
        self.stats.first_contacts_sent += 1
        return True

    def _send_early(self, dest: NodeId, packet: bytes) -> None:
        """Send the 0-RTT ``packet`` to the relay as a first contact too, if it belongs to a
        connection we dialed to ``dest`` with a first contact through the current attempt's
        address, still in its window (the relay forwards it only behind that Initial; the copy
        kept goes at :attr:`can_send` either way, so a relay that drops it costs nothing)."""
        relay = self._attempt_to
        cids = long_header_cids(packet)
        dial = self._first_dials.get(cids[1]) if cids is not None else None
        if (
            dial is None
            or dial.dest != dest
            or dial.relay != relay
            or relay is None
            or dial.until <= asyncio.get_running_loop().time()
        ):
            return
        self.endpoint.router.sendto(encode_first_contact(dest, self.endpoint.node_id, packet), relay)
        self.stats.early_first_contacts_sent += 1

    def _take_first_replies(self, relay: tuple[str, int]) -> bool:
        """Have the socket hand zero-token datagrams from ``relay`` to :meth:`_first_reply`; False if
        it cannot (its plane datagrams go to a relay server: nothing could answer us).

        One registration at a time: one at an earlier address of the relay (a host name that
        resolves anew) goes first, so nothing accumulates across reconnects.
        """
        try:
            demux = client_demux(self.endpoint.router)
        except P2PError:
            return False
        registered = self._first_relay
        if registered is not None and registered[0] != relay:
            demux.remove(*registered)
            registered = None
        plane_conn = self._plane_conn
        if (
            plane_conn is not None
            and plane_conn.plane is not None
            and plane_conn.plane.relay == relay
            and not plane_conn.lost.is_set()
        ):
            # a live connection's plane takes this relay's datagrams and hands first replies on
            # (:meth:`_plane_received`); replacing its receiver would drop every packet the relay
            # then forwards on the plane (a first contact sent after the relay offered its plane
            # but before our relay Finished, e.g. the end-to-end Finished, did so until the
            # dial's window closed: a fresh dial then took a probe timeout or more)
            return True
        if registered is None:

            def receive(data: bytes) -> None:
                self._first_reply(data, relay)

            registered = self._first_relay = (relay, receive)
        demux.add(*registered)  # (again: the plane's receiver of an earlier connection may have replaced it)
        return True

    def _first_dial(self, scid: bytes, dest: NodeId, relay: tuple[str, int], now: float) -> None:
        """Take ``dest``'s replies to our connection ``scid`` from ``relay`` for the reply window (a
        retransmitted Initial does not extend it, as the relay does not; once it ended, it starts anew)."""
        dials = self._first_dials
        dial = dials.get(scid)
        if dial is not None and dial.until > now and dial.dest == dest and dial.relay == relay:
            return
        dials.pop(scid, None)
        if len(dials) >= _MAX_FIRST_DESTS:
            del dials[next(iter(dials))]
        dials[scid] = _FirstDial(dest, relay, now + FIRST_CONTACT_REPLY_WINDOW)

    def _prune_first_dials(self, now: float) -> None:
        """Forget the first dials whose window ended; with none left, stop taking first-contact replies."""
        dials = self._first_dials
        for scid in [c for c, dial in dials.items() if dial.until <= now]:
            del dials[scid]
        registered = self._first_relay
        if dials or registered is None:
            return
        self._first_relay = None
        client_demux(self.endpoint.router).remove(*registered)

    def _first_reply(self, data: bytes, relay: tuple[str, int]) -> None:
        """A datagram from the relay address ``relay`` carrying the first-contact token: taken only if
        it answers a connection we dialed with a first contact to that address, still in its window
        (a QUIC v1 long-header packet from the node we dialed, to our connection id).  Its
        connection ids are checked on views into ``data``; only a reply taken is copied."""
        now = asyncio.get_running_loop().time()
        self._prune_first_dials(now)
        opened = open_first_reply(data) if is_first_contact(data) else None
        dial = self._first_dials.get(opened[0]) if opened is not None else None
        if dial is None or opened is None or dial.relay != relay or opened[1] != dial.dest.to_bytes():
            self.stats.dropped_invalid += 1
            return
        src, packet = dial.dest, bytes(opened[2])
        self.stats.packets_received += 1
        self.stats.bytes_received += len(packet)
        try:
            self.sink.relay_packet_received(src, packet)
        except Exception:
            log.exception("relay %s: the sink failed handling a first contact's reply", self.url)

    def _flush_first_copies(self) -> None:
        """We can send: the first contacts' Initials again, the normal way (an old relay dropped them)."""
        copies, self._first_copies = self._first_copies, []
        now = asyncio.get_running_loop().time()
        for dest, packet in copies:
            if self._first_dests.get(dest, now - 1) >= now:  # (not a dial long given up)
                self.send_packet(dest, packet)

    async def _addresses(self) -> list[tuple[str, int]]:
        url = self.url
        if url.is_ip:
            return [url.address]
        if self.resolver is not None:
            return list(await self.resolver(url.host, url.port))
        infos = await asyncio.get_running_loop().getaddrinfo(url.host, url.port, type=socket.SOCK_DGRAM)
        out: list[tuple[str, int]] = []
        for family, _, _, _, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6):
                out.append((str(ipaddress.ip_address(sockaddr[0])), int(sockaddr[1])))
        return out

    async def _connect(self) -> _RelayConnection | None:
        """A QUIC relay connection, returned once the relay confirmed it (None: failed).

        It is in use from our TLS Finished on (:attr:`can_send`, if it carries a full-size
        packet then): what the paths layer sends through it leaves behind the Finished, and
        the relay forwards it once it has checked that Finished (a relay that refuses us
        forwards nothing).  Confirmed (HANDSHAKE_DONE): the relay completed its handshake,
        registered us (packets to us are forwarded from then on) and told us our address.
        """
        url = self.url
        handler: _RelayConnection | None = None
        self._prune_first_dials(asyncio.get_running_loop().time())
        try:
            addrs = await self._addresses()
            if not addrs:
                raise P2PError(f"relay host {url.host!r} resolved to no address")
            self._attempt_to = addrs[0]
            try:
                conn = await self.endpoint.connect_quic(
                    NodeAddr(url.node_id, addrs[:1]), RELAY_ALPN, confirmed=False, padded=self._padding()
                )
            except BaseException:
                self._attempt_to = None
                if self._first_copies:  # (the dial's own retransmissions go on)
                    self._first_copies.clear()
                    self._notify_state()  # no first contacts now: the paths layer routes without them
                raise
            finally:
                self._attempt_to = None
            handler = self._finished(conn)
            if handler is None:
                return None
            await conn.wait_ready(self.endpoint.config.connect_timeout, confirmed=True)
        except AuthenticationFailed as exc:
            self.stats.auth_failures += 1
            self._failed(handler, exc)
            log.error("relay %s: refused: %s (is the node id in the relay URL right?)", url, exc)
            return None
        except (P2PError, OSError) as exc:
            self.stats.connect_failures += 1
            self._failed(handler, exc if isinstance(exc, P2PError) else P2PError(str(exc)))
            log.warning("relay %s: cannot connect: %s", url, exc)
            return None
        if self._conn is not handler or handler.lost.is_set() or self._closing.is_set():
            self.stats.connect_failures += 1
            log.warning("relay %s: connection closed during setup", url)
            return None
        self._count_connect(handler)
        self._relay_rtt = handler.conn.smoothed_rtt
        if self._live and not self._connected.is_set():  # (else _size_changed said it already)
            self._now_connected(handler.conn, "handshake confirmed")
        return handler

    def _failed(self, handler: _RelayConnection | None, exc: P2PError) -> None:
        """A connection attempt failed (``handler``: after our Finished, before the relay confirmed it)."""
        self.last_failure = exc
        self._first_copies.clear()  # (the dials' own retransmissions go on)
        if handler is not None:
            handler.conn.close(0, "relay connection failed")
            self._set_disconnected(handler, str(exc))

    def _finished(self, conn: PeerConnection) -> _RelayConnection | None:
        """Our Finished is sent on a new relay connection: in use now if it carries a full-size packet."""
        url = self.url
        handler = conn.handler
        if self._closing.is_set():
            conn.close(0, "relay client closed")
            return None
        if (
            not isinstance(handler, _RelayConnection)
            or handler.client is not self
            or not conn.is_connected
            or handler.lost.is_set()
        ):
            self.stats.connect_failures += 1
            log.warning("relay %s: connection closed during setup", url)
            return None
        self._conn = handler
        self._small_since = conn.now()
        self._small_warned = False
        # from now on every datagram size change of the connection may make it (un)usable
        conn.on_path_change.append(lambda _event: self._size_changed(handler))
        needed = self._needed_datagram_size(conn)
        peer = self.endpoint.router.peer_paths(url.node_id)
        if peer is not None:
            peer.require_datagram_size(needed)  # the paths layer searches for it at once (unless carried)
        carried = conn.handshake_datagram_size
        if carried is not None and carried >= needed:
            log.debug("relay %s: Finished sent; its %d-byte datagrams carry full-size relayed packets", url, carried)
        else:
            log.debug("relay %s: Finished sent; needs %d-byte datagrams to relay full-size packets", url, needed)
        self._size_changed(handler)
        return handler

    def _padding(self) -> tuple[int, float] | None:
        """The size to pad the relay handshake's datagrams to, and how long to wait for an answer."""
        if self.endpoint.config.max_datagram_size >= RELAY_DATAGRAM_SIZE:
            return None  # every datagram is that large already
        rtt = self._relay_rtt
        within = _PAD_ANSWER_WITHIN if rtt is None else min(_PAD_ANSWER_WITHIN, max(2 * rtt, _PAD_ANSWER_MIN))
        return RELAY_DATAGRAM_SIZE, within

    @staticmethod
    def _needed_datagram_size(conn: PeerConnection) -> int:
        """The UDP payload size that carries a full-size packet in a SEND frame on ``conn``."""
        frame_overhead = hooks.max_datagram_size(conn.quic) - hooks.max_datagram_frame_payload(conn.quic)
        return FULL_PACKET_SIZE + FORWARD_OVERHEAD + frame_overhead

    def _fits_full_size(self, conn: PeerConnection) -> bool:
        return hooks.max_datagram_frame_payload(conn.quic) - FORWARD_OVERHEAD >= FULL_PACKET_SIZE

    def _size_changed(self, current: _RelayConnection) -> None:
        """The relay connection's datagram size changed (or it just connected): in use or not."""
        if current is not self._conn or self._closing.is_set() or current.lost.is_set():
            return
        conn = current.conn
        if self._fits_full_size(conn):
            if self._live:
                return
            waited = conn.now() - self._small_since if self._small_since is not None else 0.0
            self._live = True
            self._small_since = None
            self.last_failure = None
            self._may_send.set()
            self._udp_live.set()
            if self._network is not None:
                # the relay's handshake came over UDP and the path carries a full-size packet:
                # UDP works on this network, however soon the process ends (a short `get`
                # answered through it may close before the relay confirms the connection)
                self._remember(self._network, "udp")
            if self._first_copies:
                self._flush_first_copies()
            if conn.is_confirmed:
                self._count_connect(current)  # (its connect task may not have run since)
                self._now_connected(conn, f"{waited:.2f}s after it could not carry a full-size one")
            else:
                log.debug("relay %s: sending through it (max packet %d bytes)", self.url, self.max_packet_size)
                self._notify_state()
            return
        self.last_failure = P2PError(self._too_small_reason(conn))
        if not self._live:
            return
        # it shrank (repeated loss of large packets): peers' packets would be dropped as too
        # large, so it is not in use until the paths layer finds the size again
        self._live = False
        self._small_since = conn.now()
        self._small_warned = True
        self._connected.clear()
        self._may_send.clear()
        self.stats.shrunk += 1
        log.warning("relay %s: not usable: %s", self.url, self.last_failure)
        self._notify_state()

    def _count_connect(self, handler: _RelayConnection) -> None:
        """A connection the relay confirmed: counted once, before anyone hears it is connected."""
        if not handler.counted:
            handler.counted = True
            self.stats.connects += 1

    def _now_connected(self, conn: PeerConnection, how: str) -> None:
        self._connected.set()
        log.info("relay %s: connected (max packet %d bytes; %s)", self.url, self.max_packet_size, how)
        self._notify_state()

    def _too_small_reason(self, conn: PeerConnection) -> str:
        return (
            f"the relay connection carries {conn.datagram_size}-byte datagrams "
            f"({max(0, hooks.max_datagram_frame_payload(conn.quic) - FORWARD_OVERHEAD)}-byte packets); a full-size "
            f"{FULL_PACKET_SIZE}-byte packet needs {self._needed_datagram_size(conn)}: the path to the relay "
            f"{self.url.host}:{self.url.port} has not carried that yet (probing again with backoff)"
        )

    async def _serve(self, current: _RelayConnection) -> None:
        """Keep the connection alive until it is lost (or the relay stops answering)."""
        conn = current.conn
        while not current.lost.is_set() and not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.keepalive_interval):
                    await current.lost.wait()
            if current.lost.is_set() or self._closing.is_set():
                break
            self._prune_first_dials(conn.now())
            small_since = self._small_since
            if not self._live and not self._small_warned and small_since is not None:
                if conn.now() - small_since >= self.keepalive_interval:
                    self._small_warned = True  # once per episode: the paths layer keeps probing
                    log.warning("relay %s: not usable yet: %s", self.url, self.last_failure)
            silent = conn.now() - current.last_alive
            if silent >= self.keepalive_timeout:
                self.stats.keepalive_timeouts += 1
                log.warning("relay %s: no answer for %.1fs; reconnecting", self.url, silent)
                conn.close(0, "relay stopped answering keepalives")
                self._set_disconnected(current, f"no answer for {silent:.1f}s")
                return
            self._ping_uid += 1
            conn.quic.send_ping(self._ping_uid)
            conn.transmit()

    # -- called by the connection handler ------------------------------------------

    def _connection_made(self, conn: PeerConnection) -> _RelayConnection:
        if self._closing.is_set():  # a handshake that finished after close(): refuse it
            raise ConnectionClosed("relay client closed")
        peer = self.endpoint.router.peer_paths(self.url.node_id)
        if peer is not None:
            # state the size it needs before it joins the relay's paths (right after this), so
            # that their first size probe is of that size
            peer.require_datagram_size(self._needed_datagram_size(conn))
        return _RelayConnection(self, conn)

    def _connection_lost(self, current: _RelayConnection, exc: Exception | None) -> None:
        self._set_disconnected(current, str(exc) if exc is not None else "closed")

    def _set_disconnected(self, current: _RelayConnection | _TcpRelayConnection, why: str) -> None:
        current.lost.set()
        if isinstance(current, _TcpRelayConnection):
            if self._tcp is not current:
                return
            self._tcp = None
            if not self.connected:
                self._connected.clear()
            if not self.can_send:
                self._may_send.clear()
            self.stats.disconnects += 1
            log.log(
                logging.INFO if self._closing.is_set() else logging.WARNING,
                "relay %s: disconnected over TCP: %s",
                self.url,
                why,
            )
            self._notify_state()
            return
        self._plane_closed(current)
        if self._conn is not current:
            return
        was_live = self._live
        confirmed = current.conn.is_confirmed
        self._conn = None
        self._live = False
        self._udp_live.set()
        self._small_since = None
        if not self.connected:
            self._connected.clear()
        if not self.can_send:
            self._may_send.clear()
        if confirmed:  # (one that failed before the relay confirmed it is a connect failure)
            self.stats.disconnects += 1
        if self._closing.is_set():
            log.info("relay %s: disconnected (%s)", self.url, why)
        else:
            log.warning("relay %s: disconnected: %s", self.url, why)
        if was_live:  # the sink never heard of a connection that was not in use
            self._notify_state()

    def _frame_received(self, current: _RelayConnection | _TcpRelayConnection, data: bytes) -> None:
        if len(data) > FORWARD_OVERHEAD and data[0] == RELAY_VERSION and data[1] == FRAME_RECV:
            # the per-packet path: what parse_frame gives for a RECV, without building the frame
            src = NodeId(data[2:FORWARD_OVERHEAD])
            packet = data[FORWARD_OVERHEAD:]
            self.stats.packets_received += 1
            self.stats.bytes_received += len(packet)
            try:
                self.sink.relay_packet_received(src, packet)
            except Exception:
                log.exception("relay %s: the sink failed handling a Recv frame", self.url)
            return
        try:
            frame = parse_frame(data)
        except ProtocolError as exc:
            self.stats.malformed_frames += 1
            log.warning("relay %s sent a malformed frame (dropped): %s", self.url, exc)
            return
        sink = self.sink
        try:
            if isinstance(frame, Recv):
                self.stats.packets_received += 1
                self.stats.bytes_received += len(frame.packet)
                sink.relay_packet_received(frame.src, frame.packet)
            elif isinstance(frame, Signal):
                self.stats.signals_received += 1
                sink.relay_signal_received(frame.peer, frame.payload)
            elif isinstance(frame, ObservedAddr):
                if isinstance(current, _TcpRelayConnection):
                    # the address of our TCP connection: no use for UDP hole punching
                    log.debug("relay %s sees our TCP connection at %s:%d", self.url, *frame.addr)
                elif frame.addr != self._observed:
                    self._observed = frame.addr
                    log.info("relay %s sees us at %s:%d", self.url, *frame.addr)
                    if self._conn is current and self._live:
                        self._notify_state()
            elif isinstance(frame, Error):
                self._error_received(frame)
            elif isinstance(frame, PlaneToken):
                # (the relay offers it on UDP only; a client with the plane off ignores it, as an
                # older client does, and keeps getting RECV frames)
                if isinstance(current, _RelayConnection) and self.plane_enabled:
                    self._plane_offered(current, frame.token)
            else:
                self.stats.malformed_frames += 1
                log.warning(
                    "relay %s sent a %s frame, which only clients send (dropped)", self.url, type(frame).__name__
                )
        except Exception:
            log.exception("relay %s: the sink failed handling a %s frame", self.url, type(frame).__name__)

    def _error_received(self, frame: Error) -> None:
        self.stats.errors_received += 1
        self.last_error = frame
        code = frame.error_code
        reason = _REASONS.get(code, RefusalReason.OTHER) if code is not None else RefusalReason.OTHER
        refusal = RelayRefusal(reason, frame.message, frame.fits)  # the codec allows fits on TOO_LARGE only
        name = f"error {frame.code}" if reason is RefusalReason.OTHER else reason.value
        about = f" (about node {frame.node})" if frame.node is not None else ""
        if code in (ErrorCode.PROTOCOL, ErrorCode.SERVER_FULL):
            if frame.node is None:  # it refused us (it closes the connection next): say why from now on
                self.last_failure = P2PError(f"the relay refused us: {refusal}")
            log.error("relay %s: %s: %s%s", self.url, name, frame.message, about)
        else:
            log.warning("relay %s: %s: %s%s", self.url, name, frame.message, about)
        self.sink.relay_refused(frame.node, refusal)

    def _notify_state(self) -> None:
        try:
            self.sink.relay_state_changed(self)
        except Exception:
            log.exception("relay %s: relay_state_changed failed", self.url)

    # -- the data plane ----------------------------------------------------------

    def _plane_offered(self, current: _RelayConnection, token: bytes) -> None:
        """The relay offered its data plane on ``current`` (during its handshake, or said again)."""
        if current.lost.is_set() or self._closing.is_set():
            return
        plane = current.plane
        if plane is None or plane.token != token:
            relay = (str(current.conn.address[0]), int(current.conn.address[1]))
            plane = current.plane = ClientPlane(token, relay, self.url.node_id)
            client_demux(self.endpoint.router).add(relay, current.plane_datagram)
            self._plane_conn = current
            log.debug("relay %s offers its UDP data plane", self.url)
        # (again for a repeated token: the relay repeats it until it hears from our plane)
        current.plane_pinged = current.conn.now()
        self.endpoint.router.sendto(plane.hello(), plane.relay)

    def _hello_again(self, current: _RelayConnection, plane: ClientPlane) -> None:
        """Sending on SEND frames while no hello was answered: say hello again, once a second at most."""
        now = current.conn.now()
        if now - current.plane_pinged >= PLANE_PING_INTERVAL:
            current.plane_pinged = now
            self.endpoint.router.sendto(plane.hello(), plane.relay)

    def _plane_closed(self, current: _RelayConnection) -> None:
        if current.plane is not None:
            client_demux(self.endpoint.router).remove(current.plane.relay, current.plane_datagram)
        if self._plane_conn is current:
            self._plane_conn = None

    def _plane_received(self, current: _RelayConnection, data: bytes) -> None:
        """A plane datagram from the relay's address: a RECV frame in another form."""
        plane = current.plane
        if is_first_contact(data):  # (the plane's receiver took over from _first_reply)
            if plane is not None:
                self._first_reply(data, plane.relay)
            return
        if plane is None or current.lost.is_set():
            return
        confirmed = plane.confirmed
        opened = plane.open(data)
        if opened is None:
            if plane.confirmed and not confirmed:  # the relay answered our hello: send on the plane
                log.info("relay %s: forwarding on its UDP data plane", self.url)
                # the SEND frames the connection holds until the end of this pass go before
                # the first packet sent on the plane (which goes straight to the socket)
                if hooks.pending_datagram_frames(current.conn.quic):
                    current.conn.transmit()
            return
        src, packet = opened
        self.stats.packets_received += 1
        self.stats.bytes_received += len(packet)
        try:
            self.sink.relay_packet_received(src, packet)
        except Exception:
            log.exception("relay %s: the sink failed handling a plane packet", self.url)

    def _send_on_plane(self, current: _RelayConnection, plane: ClientPlane, dest: NodeId, packet: bytes) -> bool:
        conn = current.conn
        if len(packet) + FORWARD_OVERHEAD > hooks.max_datagram_frame_payload(conn.quic):
            # the same largest packet as in a SEND frame (a plane datagram is smaller than the
            # relay connection's packet carrying that frame): the relay refuses no more than before
            self.stats.dropped_too_large += 1
            return False
        now = conn.now()
        if now - current.plane_pinged >= PLANE_PING_INTERVAL:
            current.plane_pinged = now
            self._ping_uid += 1
            conn.quic.send_ping(self._ping_uid)
            conn.schedule_transmit()
        self.endpoint.router.sendto(plane.wrap(dest, packet), plane.relay)
        if plane.stats.sent == PLANE_BULK_PACKETS:
            peer = self.endpoint.router.peer_paths(self.url.node_id)
            if peer is not None:
                peer.bulk_started()
        self.stats.packets_sent += 1
        self.stats.bytes_sent += len(packet)
        return True

    # -- sending ---------------------------------------------------------------

    def _sendable(self, data: bytes) -> bool:
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
            self.stats.dropped_invalid += 1
            return False
        if not self.can_send:
            self.stats.dropped_disconnected += 1
            return False
        return True

    def _send_frame(self, frame: bytes) -> bool:
        current = self._conn
        if current is None or not self._live:
            assert self._tcp is not None  # checked by _sendable
            return self._tcp.send(frame, self.stats)
        if not queue_datagram_frame(current.conn.quic, frame, self.max_pending_datagrams, self.stats):
            return False
        # deferred to the end of this loop iteration: the packets one transmit of a relayed
        # connection produces share the relay connection's (larger, probed) packets
        current.conn.schedule_transmit()
        return True

    def __repr__(self) -> str:
        state = "connected" if self.connected else "sending" if self.can_send else "disconnected"
        return f"<RelayClient {self.url} {state}>"
