"""The relay server: an endpoint that forwards opaque packets between its clients by NodeId.

:class:`RelayServer` registers a handler for ALPN :data:`~asgi_p2p.relay.proto.RELAY_ALPN`
on an :class:`~asgi_p2p.endpoint.Endpoint` and drives the sans-I/O
:class:`~asgi_p2p.relay.proto.RelayRouter` with it:

* a client is registered when its handshake completes, under the NodeId its
  certificate proved (never a NodeId from a frame), and told its public
  address (OBSERVED_ADDR), again whenever the address its packets come from
  changes (NAT rebinding);
* every DATAGRAM frame goes through the router; the frames it returns are sent
  as DATAGRAM frames on the destination's connection, after checking that they
  fit that connection now and that its datagram queue is not full;
* a malformed frame, a frame only a relay may send, or a stream opened by the
  client closes that client's connection (after an ERROR frame saying why);
  other clients are not affected;
* the client is unregistered when its connection goes away.

The relay process also serves the node-record directory (ALPN
``asgi-p2p/directory/1``, :class:`~asgi_p2p.discovery.directory.DirectoryServer`)
on the same endpoint unless told not to: nodes publish their signed records
there and resolve each other's.

Datagram size: a relayed QUIC packet is at least 1200 bytes, the relay adds
:data:`~asgi_p2p.relay.proto.FORWARD_OVERHEAD` (34) and the relay connection's
own 1-RTT packet :data:`RELAY_PACKET_OVERHEAD` (30), so the relay's endpoint
builds :data:`RELAY_DATAGRAM_SIZE` (1264-byte) datagrams from the start and
every client<->relay path must carry them (any 1500-byte Ethernet path does).

The relay only ever sees the packets it forwards as opaque bytes: they are
QUIC packets encrypted end to end between the two nodes (or signed disco
messages), and the relay holds neither node's keys.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aioquic.quic.events import DatagramFrameReceived, QuicEvent, StreamDataReceived

from .. import aioquic_compat as hooks
from ..config import NetworkConfig
from ..discovery.directory import DIRECTORY_ALPN, DirectoryServer
from ..discovery.records import Directory
from ..endpoint.connection import PeerConnection
from ..errors import ProtocolError
from ..identity import NodeId, SecretKey
from ._datagrams import DEFAULT_MAX_PENDING_DATAGRAMS, queue_datagram_frame
from .proto import (
    FORWARD_OVERHEAD,
    RELAY_ALPN,
    Error,
    ErrorCode,
    RelayFull,
    RelayLimits,
    RelayRouter,
    RelayStats,
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
#: Bytes a relay connection's 1-RTT packet adds around one DATAGRAM frame: first byte (1),
#: destination connection id (8, what endpoints issue), packet number (2), AEAD tag (16),
#: DATAGRAM frame type (1) and length (2).
RELAY_PACKET_OVERHEAD = 1 + 8 + 2 + 16 + 1 + 2
#: Smallest QUIC datagram (RFC 9000 section 14): what nodes build whenever a packet may be relayed.
QUIC_MIN_DATAGRAM_SIZE = 1200
#: The relay endpoint's default datagram size: one full 1200-byte QUIC packet in a RECV frame in a
#: 1-RTT packet (1264 bytes).  Every client<->relay path must carry UDP payloads this large.
RELAY_DATAGRAM_SIZE = QUIC_MIN_DATAGRAM_SIZE + FORWARD_OVERHEAD + RELAY_PACKET_OVERHEAD


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

    # -- ConnectionHandler -------------------------------------------------

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, DatagramFrameReceived):
            self.server._datagram(self, event.data)
        elif isinstance(event, StreamDataReceived):
            self.server._violation(self, f"opened stream {event.stream_id}; the relay protocol uses DATAGRAM frames")

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._lost(self, exc)

    # -- helpers -----------------------------------------------------------

    def peer_address(self) -> tuple[str, int]:
        """Where the client's packets come from (and ours go): its NAT's public mapping."""
        # With the endpoint's paths layer, QUIC sees a fixed address per connection and
        # ``conn.path`` tells the real direct address in use; without it, QUIC tracks it.
        path = getattr(self.conn, "path", None)
        addr = getattr(path, "addr", None) if getattr(path, "kind", None) == "direct" else None
        if addr is None:
            addr = self.conn.quic.get_peer_address() or self.conn.address
        return (str(addr[0]), int(addr[1]))


class RelayServer:
    """Serve the relay protocol on ``endpoint`` (which should serve nothing else but the directory).

    Use :meth:`bind` to create the endpoint too.  ``limits`` bound the client
    table and each client's packet, byte and error rates;
    ``max_pending_datagrams`` bounds each client connection's DATAGRAM queue;
    frames the router holds back (a destination receiving more than its budget, or
    whose DATAGRAM queue is full) wait in the router's fair queues and go out
    from a timer (every ``queue_poll_interval`` seconds while any wait for room);
    ``directory``, if given, is attached to the endpoint too (the relay process
    serves the node-record directory).
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
    ) -> None:
        if max_pending_datagrams <= 0:
            raise ValueError("max_pending_datagrams must be positive")
        if check_interval <= 0:
            raise ValueError("check_interval must be positive")
        if not 0 < queue_poll_interval <= 1.0:
            raise ValueError(f"queue_poll_interval must be in (0, 1] seconds, got {queue_poll_interval!r}")
        self.check_interval = check_interval
        #: while packets wait for room on a destination's connection, look again this often
        self.queue_poll_interval = queue_poll_interval
        self._check_handle: asyncio.TimerHandle | None = None
        self._queue_handle: asyncio.TimerHandle | None = None
        self._queue_due: float | None = None
        self.endpoint = endpoint
        self.router = RelayRouter(limits)
        self.stats = RelayServerStats()
        self.max_pending_datagrams = max_pending_datagrams
        self._handlers: dict[NodeId, _ClientHandler] = {}
        self._closed = False
        endpoint.add_protocol(RELAY_ALPN, self._handler_for, relay=True)
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
    ) -> RelayServer:
        """Bind an endpoint serving the relay protocol (and the directory) and return the server.

        ``config`` defaults to :func:`relay_config` (1264-byte datagrams).
        ``directory``: True serves a new :class:`Directory` with default bounds,
        a :class:`Directory` serves that one (one with a ``store`` is loaded from
        it first: records persist across restarts), False serves none (directory
        connections are then refused).  ``clock_offset`` is added to
        ``loop.time()`` to get the Unix clock node records expire on: pass the
        network's ``wall_clock_offset()`` (the system clock read once on a real network,
        a constant in the simulator).
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
            server = cls(endpoint, limits=limits, max_pending_datagrams=max_pending_datagrams, directory=served)
        except BaseException:
            await endpoint.close(timeout=0.1)
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
        return RelayUrl(self.node_id, host, port)

    @property
    def limits(self) -> RelayLimits:
        return self.router.limits

    @property
    def router_stats(self) -> RelayStats:
        return self.router.stats

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
            self._send_frame(conn, exc.frame)
            conn.close(RELAY_SERVER_FULL, str(exc))
            return handler
        old = self._handlers.get(handler.node)
        if old is not None and old.conn is not conn:
            log.info("relay client %s reconnected; closing its old connection", handler.node)
            old.registered = False
            old.conn.close(0, "replaced by a newer connection of the same node")
        handler.registered = True
        handler.observed = self.router.observed_addr(handler.node)
        self._handlers[handler.node] = handler
        if self._check_handle is None and not self._closed:
            self._check_handle = conn.loop.call_later(self.check_interval, self._check_clients)
        log.info(
            "relay client %s connected from %s:%d (%d clients)",
            handler.node,
            *handler.peer_address(),
            len(self.router),
        )
        for _, frame in actions:  # OBSERVED_ADDR for the new client (not "connected" until we return)
            self._send_frame(conn, frame)
        return handler

    def _lost(self, handler: _ClientHandler, exc: Exception | None) -> None:
        self.stats.connections_closed += 1
        if self._handlers.get(handler.node) is handler:
            del self._handlers[handler.node]
        if handler.registered:
            self.router.unregister(handler.node, handler.conn)
            handler.registered = False
            log.info("relay client %s disconnected: %s (%d clients)", handler.node, exc, len(self.router))

    def _violation(self, handler: _ClientHandler, reason: str) -> None:
        if handler.violated:  # more events of the same batch
            return
        handler.violated = True
        self.stats.protocol_violations += 1
        message = f"protocol violation: {reason}"
        log.warning("relay client %s: %s; closing its connection", handler.node, message)
        if handler.registered:
            self._send_frame(handler.conn, Error(ErrorCode.PROTOCOL, message[:900]).encode())
            self.router.unregister(handler.node, handler.conn)
            handler.registered = False
        handler.conn.close(RELAY_PROTOCOL_ERROR, message[:900])

    # -- datagrams -----------------------------------------------------------

    def _check_clients(self) -> None:
        """Periodically: notice clients whose address changed while they only sent PINGs."""
        self._check_handle = None
        if self._closed:
            return
        actions: list[tuple[NodeId, bytes]] = []
        for handler in list(self._handlers.values()):
            if handler.registered and handler.conn.is_connected:
                actions.extend(self._refresh(handler))
        self._dispatch(actions)
        if self._handlers:
            self._check_handle = asyncio.get_running_loop().call_later(self.check_interval, self._check_clients)

    def _refresh(self, handler: _ClientHandler) -> list[tuple[NodeId, bytes]]:
        """Keep a client's observed address and datagram size current (NAT rebinding, PMTU changes)."""
        node = handler.node
        self.router.set_max_datagram_size(node, hooks.max_datagram_frame_payload(handler.conn.quic))
        addr = handler.peer_address()
        if addr == handler.observed:
            return []
        handler.observed = addr
        update = self.router.update_observed_addr(node, addr)
        if update:
            self.stats.observed_addr_updates += 1
            log.info("relay client %s now seen at %s:%d", node, *addr)
        return update

    def _datagram(self, handler: _ClientHandler, data: bytes) -> None:
        if not handler.registered or handler.violated:
            return
        self.stats.datagrams_received += 1
        node = handler.node
        actions = self._refresh(handler)
        now = handler.conn.now()
        try:
            actions.extend(self.router.handle_datagram(node, data, now, self._room))
        except ProtocolError as exc:
            self._violation(handler, str(exc))
            return
        self._dispatch(actions)
        self._schedule_queue(now)

    def _room(self, node: NodeId) -> int:
        """How many more DATAGRAM frames ``node``'s connection queues now (the router's ``room``)."""
        handler = self._handlers.get(node)
        if handler is None or not handler.registered or not handler.conn.is_connected:
            return 0
        return self.max_pending_datagrams - hooks.pending_datagram_frames(handler.conn.quic)

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
        touched: dict[PeerConnection, None] = {}
        for dst, frame in actions:
            target = self._handlers.get(dst)
            if target is None or not target.registered or not target.conn.is_connected:
                self.stats.dropped_gone += 1
                continue
            if self._queue_frame(target.conn, frame):
                touched[target.conn] = None
        for conn in touched:
            # once the callbacks already queued have run: the frames a whole batch of received
            # datagrams produced for one client then share its packets (fewer encryptions and
            # sendto calls per forwarded packet; see docs/benchmarks.md, "Paths")
            conn.schedule_transmit()

    def _queue_frame(self, conn: PeerConnection, frame: bytes) -> bool:
        if not queue_datagram_frame(conn.quic, frame, self.max_pending_datagrams, self.stats):
            return False
        self.stats.datagrams_sent += 1
        return True

    def _send_frame(self, conn: PeerConnection, frame: bytes) -> None:
        if self._queue_frame(conn, frame):
            conn.transmit()

    def __repr__(self) -> str:
        return f"<RelayServer {self.node_id} {len(self.router)} clients>"
