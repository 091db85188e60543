"""The endpoint: one datagram socket, many QUIC connections to authenticated peers."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, encode_quic_version_negotiation, pull_quic_header

from .. import aioquic_compat as hooks
from ..config import NetworkConfig
from ..errors import ConnectionClosed, InvalidConfiguration, NodeNotFound, P2PError
from ..identity import NodeAddr, NodeId, SecretKey
from ..net.base import Address, DatagramNetwork, DatagramSocket
from ..net.udp import UdpNetwork
from ..paths.disco import is_disco, peek_sender
from ..paths.link import ManagedRelayLink, RefusalReason, RelayFactory, RelayLink, RelayRefusal
from .base import ConnectionHandler, HandlerFactory
from .connection import _RELAY_ALPN_PREFIX, REFUSED, PeerConnection
from .peers import PeerPaths
from .tls import node_certificate

if TYPE_CHECKING:
    from ..messages import MessageConnection, MessageListener, MessageService

__all__ = ["AllowPolicy", "Endpoint"]

log = logging.getLogger("asgi_p2p.endpoint")

#: Who may connect: None (anyone), a collection of node ids, or a callback.
AllowPolicy = Iterable[NodeId] | Callable[[NodeId], bool] | None

_SMALLEST_INITIAL = 1200
#: seconds a dial with direct addresses waits for the endpoint's relay to connect
_RELAY_WAIT = 3.0
_CID_LENGTH = 8


class Endpoint:
    """A node: one datagram socket carrying QUIC connections to peers named by node id.

    Create with :meth:`bind`.  Protocols are chosen by ALPN: the raw message
    protocol (:mod:`asgi_p2p.messages`) is always available; HTTP/3 and the
    relay register themselves with :meth:`add_protocol`.
    """

    def __init__(
        self,
        secret_key: SecretKey,
        config: NetworkConfig,
        allow: AllowPolicy,
    ) -> None:
        self.secret_key = secret_key
        self.config = config
        self._certificate = node_certificate(secret_key)
        self._allow: Callable[[NodeId], bool] | None
        if allow is None:
            self._allow = None
        elif callable(allow):
            self._allow = allow
        else:
            allowed = frozenset(allow)
            self._allow = allowed.__contains__
        self._socket: DatagramSocket
        self._factories: dict[str, HandlerFactory] = {}
        self._cids: dict[bytes, PeerConnection] = {}
        self._connections: dict[PeerConnection, None] = {}  # ordered: deterministic close order
        self._pool: dict[tuple[NodeId, str], PeerConnection] = {}
        self._closing = False
        self._closed = False
        self.dropped_datagrams = 0
        #: the paths layer: one PeerPaths per peer we have or are dialing a connection with
        self._peers: dict[NodeId, PeerPaths] = {}
        self._rng: random.Random = random.SystemRandom()
        self._clock_offset = 0.0
        #: disco packets dropped because no connection with their sender exists (or malformed)
        self.dropped_disco = 0
        #: QUIC datagrams with nowhere to go (no live direct path and no relay)
        self.unroutable_datagrams = 0
        #: errors the relay reported (rate limits, unknown destinations, ...)
        self.relay_errors = 0
        #: the relay client (see ``bind(relay_url=...)``), None without a relay
        self.relay: ManagedRelayLink | None = None
        self._addr_callbacks: list[Callable[[NodeAddr], None]] = []
        self._last_node_addr: NodeAddr | None = None

    @classmethod
    async def bind(
        cls,
        secret_key: SecretKey | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        alpns: Iterable[str] | None = None,
        allow: AllowPolicy = None,
        config: NetworkConfig | None = None,
        network: DatagramNetwork | None = None,
        rng: random.Random | None = None,
        relay_url: str | None = None,
        relay_factory: RelayFactory | None = None,
    ) -> Endpoint:
        """Bind a socket and start serving.

        ``alpns`` limits which registered protocols peers may use (default:
        all that get registered; the raw message protocol is always present).
        ``allow`` decides which peers may connect, inside the handshake.
        ``network`` is the datagram network (real UDP by default; a simulated
        host in tests).  ``rng`` draws path-probe ids (default: the system's
        random source; tests pass a seeded ``random.Random``).

        ``relay_url`` makes the endpoint keep a connection to that relay (in the
        background, reconnecting as needed): peers it cannot reach directly are
        reached through it, and hole punching is signalled through it.
        ``relay_factory`` builds the relay client (default:
        :class:`asgi_p2p.relay.client.RelayClient`; tests pass fakes).
        """
        from ..messages import MSG_ALPN, MessageService

        key = secret_key if secret_key is not None else SecretKey.generate()
        ep = cls(key, config if config is not None else NetworkConfig.from_env(), allow)
        ep._alpn_filter = frozenset(alpns) if alpns is not None else None
        if rng is not None:
            ep._rng = rng
        ep.messages = MessageService(ep)
        ep.add_protocol(MSG_ALPN, ep.messages.handler_for)
        net = network if network is not None else UdpNetwork()
        # disco timestamps need a clock peers share (Unix time); the network supplies
        # its offset from loop.time(): the system clock once, or the simulator's constant
        ep._clock_offset = net.wall_clock_offset()
        ep._socket = await net.bind(host, port, ep._datagram_received)
        if relay_url is not None:
            factory = relay_factory if relay_factory is not None else _default_relay_factory()
            ep.relay = factory(ep, relay_url, ep, rng=random.Random(ep._rng.getrandbits(64)))
            ep.relay.start()
        log.info("endpoint %s bound to %s:%d", key.node_id.fmt_short(), *ep._socket.local_address)
        return ep

    _alpn_filter: frozenset[str] | None = None
    messages: MessageService

    # -- identity and addresses -----------------------------------------

    @property
    def node_id(self) -> NodeId:
        return self.secret_key.node_id

    @property
    def local_node_id(self) -> NodeId:
        return self.secret_key.node_id

    @property
    def local_address(self) -> Address:
        return self._socket.local_address

    def node_addr(self) -> NodeAddr:
        """How peers reach this node: its id, socket addresses, the address the relay
        sees it at (its NAT's public mapping) and its relay URL."""
        relay = self.relay
        return NodeAddr(self.node_id, self.own_candidates(), relay.relay_url if relay is not None else None)

    def own_candidates(self) -> list[Address]:
        """Addresses where peers may reach this node directly: the public one first.

        The public address is the one the relay sees us at (our NAT's mapping), or,
        until its OBSERVED_ADDR frame arrives (relay frames are unreliable), the one
        in the relay's answers to our path probes.  Socket addresses (LAN) follow.
        """
        local = [a for a in self._socket.local_addresses() if a[1] != 0 and a[0] not in ("0.0.0.0", "::", "")]
        observed = self._public_address()
        if observed is None:
            return local
        return [observed, *(a for a in local if a != observed)]

    def _own_socket_addresses(self) -> set[Address]:
        return {self._socket.local_address, *self._socket.local_addresses()}

    def _public_address(self) -> Address | None:
        relay = self.relay
        if relay is None:
            return None
        if relay.observed_address is not None:
            return relay.observed_address
        for peer in self._peers.values():
            if peer.prober.reflexive_addr is not None and any(c.is_relay_connection for c in peer.connections):
                return peer.prober.reflexive_addr
        return None

    def on_node_addr_change(self, callback: Callable[[NodeAddr], None]) -> Callable[[], None]:
        """Call ``callback(self.node_addr())`` whenever our addresses or relay state change.

        (The relay connected or disconnected, or sees us at a new public address.)
        Use it to keep a ticket current.  Returns a function that removes the callback.
        """
        self._addr_callbacks.append(callback)

        def remove() -> None:
            if callback in self._addr_callbacks:
                self._addr_callbacks.remove(callback)

        return remove

    def _own_addresses_changed(self) -> None:
        """Our candidates or relay state changed: re-signal every peer, tell the callbacks."""
        addr = self.node_addr()
        if addr == self._last_node_addr:
            return
        self._last_node_addr = addr
        for peer in list(self._peers.values()):
            peer.send_call_me_maybe()
        for callback in list(self._addr_callbacks):
            try:
                callback(addr)
            except Exception:
                log.exception("on_node_addr_change callback failed")

    @property
    def connections(self) -> list[PeerConnection]:
        return [c for c in self._connections if c.is_connected]

    # -- protocols --------------------------------------------------------

    def add_protocol(self, alpn: str, factory: HandlerFactory) -> None:
        """Serve (and allow dialing) ``alpn``; ``factory`` makes a handler per connection."""
        if self._alpn_filter is not None and alpn not in self._alpn_filter and not alpn.startswith("asgi-p2p/msg"):
            self._alpn_filter = self._alpn_filter | {alpn}
        self._factories[alpn] = factory

    def _make_handler(self, conn: PeerConnection) -> ConnectionHandler:
        factory = self._factories.get(conn.alpn or "")
        if factory is None:
            raise ConnectionClosed(f"no protocol registered for ALPN {conn.alpn!r}")
        return factory(conn)

    def _server_alpns(self) -> list[str]:
        return [a for a in self._factories if self._alpn_filter is None or a in self._alpn_filter]

    def is_allowed(self, node_id: NodeId) -> bool:
        return self._allow is None or bool(self._allow(node_id))

    # -- QUIC configuration -----------------------------------------------

    def _quic_config(self, *, is_client: bool, alpns: list[str], server_name: str | None) -> QuicConfiguration:
        cfg = self.config
        return QuicConfiguration(
            is_client=is_client,
            alpn_protocols=alpns,
            certificate=self._certificate,
            private_key=self.secret_key.private_key,
            verify_mode=0,  # ssl.CERT_NONE: our hooks check the key; TLS still checks CertificateVerify
            server_name=server_name,
            idle_timeout=cfg.idle_timeout,
            max_datagram_size=cfg.max_datagram_size,
            max_stream_data=cfg.stream_receive_window,
            max_data=cfg.connection_receive_window,
            max_datagram_frame_size=65536,
            connection_id_length=_CID_LENGTH,
        )

    # -- dialing ------------------------------------------------------------

    async def connect_quic(self, addr: NodeAddr | NodeId, alpn: str) -> PeerConnection:
        """A QUIC connection to the node speaking ``alpn``, reusing a live one.

        Raises :class:`AuthenticationFailed` if whoever answers is not that node
        (or refuses us), :class:`ConnectionFailed` if nobody answers.
        """
        if self._closing:
            raise ConnectionClosed("endpoint is closed")
        node_addr = addr if isinstance(addr, NodeAddr) else NodeAddr(addr)
        node_id = node_addr.node_id
        key = (node_id, alpn)
        existing = self._pool.get(key)
        if existing is not None and not existing.closed and existing._close_error is None:
            await existing.wait_ready(self.config.connect_timeout)
            return existing
        if node_id == self.node_id:
            raise InvalidConfiguration("cannot connect to ourselves")
        relay = self.relay
        relay_usable = relay is not None and node_addr.relay_url in (None, relay.relay_url)
        if not node_addr.direct_addresses and not relay_usable:
            if node_addr.relay_url is not None:
                raise NodeNotFound(
                    f"node {node_id} is only reachable through relay {node_addr.relay_url}, and this endpoint "
                    f"{'uses relay ' + relay.relay_url if relay is not None else 'has no relay'}; "
                    "bind with that relay_url or pass direct addresses"
                )
            raise NodeNotFound(f"no address known for node {node_id}; pass a NodeAddr or ticket with addresses")
        if not node_addr.direct_addresses and relay is not None and not relay.connected:
            await relay.wait_connected(self.config.connect_timeout)
        elif relay_usable and relay is not None and not relay.connected and not alpn.startswith(_RELAY_ALPN_PREFIX):
            # dial through the relay (see PeerPaths.route_for) once it is up; if it does
            # not come up in time, dial the direct addresses alone
            try:
                await relay.wait_connected(min(self.config.connect_timeout / 2, _RELAY_WAIT))
            except P2PError as exc:
                log.info("dialing %s without the relay (%s)", node_id.fmt_short(), exc)
                self._peer_paths(node_id).not_on_relay = True
        # an address of our own (two homes on the same private subnet) would reach us, not them
        own = self._own_socket_addresses()
        theirs = [a for a in node_addr.direct_addresses if a not in own]
        direct = theirs[0] if theirs else None
        address = direct if direct is not None else virtual_address(node_id)
        quic = QuicConnection(configuration=self._quic_config(is_client=True, alpns=[alpn], server_name=str(node_id)))
        conn = PeerConnection(
            self, quic, address, is_client=True, expected_node_id=node_id, config=self.config, direct_address=direct
        )

        def check_server(raw: bytes) -> None:
            if raw != node_id.to_bytes():
                raise hooks.AlertBadCertificate(
                    f"server at {address[0]}:{address[1]} is node {NodeId(raw)}, not {node_id}"
                )

        hooks.install_identity_hooks(quic, check_server)
        quic.connect(address, now=conn.now())
        self._register_cid(quic.host_cid, conn)
        self._connections[conn] = None
        self._pool[key] = conn
        peer = self._peer_paths(node_id)  # accept the peer's disco packets from now on
        peer.add_candidates(theirs)
        peer.dialing(conn)
        peer.service()
        conn.transmit()
        await conn.wait_ready(self.config.connect_timeout)
        log.debug("connected to %s (%s) via %s", node_id.fmt_short(), alpn, conn.path)
        return conn

    async def connect(self, addr: NodeAddr | NodeId) -> MessageConnection:
        """Open a raw message connection to a node (see :mod:`asgi_p2p.messages`)."""
        return await self.messages.connect(addr)

    def listen(self) -> MessageListener:
        """The listener of incoming raw message connections."""
        return self.messages.listen()

    # -- receiving --------------------------------------------------------

    def _datagram_received(self, data: bytes, addr: Address) -> None:
        if self._closed:
            return
        if data[:1] == b"\x00" and is_disco(data):  # never QUIC: see asgi_p2p.paths.disco
            self._disco_received(data, addr)
            return
        # Fast path: a short-header (1-RTT) packet names our connection id right after byte 0.
        if len(data) > _CID_LENGTH and not data[0] & 0x80:
            short = self._cids.get(data[1 : 1 + _CID_LENGTH])
            if short is not None:
                try:
                    short.datagram_received(data, addr)
                except Exception:
                    self.dropped_datagrams += 1
                    log.exception("error processing datagram from %s", addr)
                return
        self._quic_received(data, addr, None)

    def _quic_received(self, data: bytes, addr: Address | None, relay_src: NodeId | None) -> None:
        """A QUIC packet from ``addr``, or (``addr`` None) from ``relay_src`` through the relay."""
        try:
            header = pull_quic_header(hooks.Buffer(data=data), host_cid_length=_CID_LENGTH)
        except ValueError:
            self.dropped_datagrams += 1
            log.debug("dropped %d-byte datagram from %s: not QUIC", len(data), addr or "the relay")
            return
        conn = self._cids.get(header.destination_cid)
        if conn is not None:
            try:
                conn.datagram_received(data, addr)
            except Exception:  # aioquic should not raise; never let one peer break the socket
                self.dropped_datagrams += 1
                log.exception("error processing datagram from %s", addr)
            return
        if header.packet_type == QuicPacketType.VERSION_NEGOTIATION or header.version is None:
            self.dropped_datagrams += 1
            return
        quic_versions = self._quic_config(is_client=False, alpns=[], server_name=None).supported_versions
        if header.version not in quic_versions:
            if addr is None:
                self.dropped_datagrams += 1
                return
            self._socket.sendto(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=quic_versions,
                ),
                addr,
            )
            return
        if header.packet_type != QuicPacketType.INITIAL or len(data) < _SMALLEST_INITIAL or self._closing:
            self.dropped_datagrams += 1
            return
        if addr is not None:
            self._accept(data, addr, header.destination_cid)
        elif relay_src is not None:
            self._accept(data, virtual_address(relay_src), header.destination_cid, relay_src=relay_src)

    # -- the relay (RelaySink) ------------------------------------------------

    def relay_packet_received(self, src: NodeId, packet: bytes) -> None:
        """A packet ``src`` sent us through the relay: disco or QUIC, as if it came from ``src``."""
        if self._closed or not packet:
            return
        if packet[:1] == b"\x00" and is_disco(packet):
            self._disco_received(packet, None)
            return
        self._quic_received(packet, None, src)

    def relay_signal_received(self, src: NodeId, payload: bytes) -> None:
        """A hole-punching signal (a sealed disco packet, e.g. CALL_ME_MAYBE) from ``src``."""
        if self._closed:
            return
        if not is_disco(payload):
            self.dropped_disco += 1
            return
        self._disco_received(payload, None, expected_sender=src)

    def relay_state_changed(self, link: RelayLink) -> None:
        """The relay (dis)connected or sees us at a new address: re-route, re-signal."""
        if self._closed or self._closing:
            return
        log.info(
            "relay %s %s%s",
            link.relay_url,
            "connected" if link.connected else "disconnected",
            f", sees us at {link.observed_address[0]}:{link.observed_address[1]}" if link.observed_address else "",
        )
        for peer in list(self._peers.values()):
            peer.relay_fit = None  # a new relay connection (or none): sizes are learnt afresh
            peer.update_routes()
        self._last_node_addr = None  # connected or not: re-signal peers, tell the callbacks
        self._own_addresses_changed()

    def relay_refused(self, dest: NodeId | None, refusal: RelayRefusal) -> None:
        self.relay_errors += 1
        log.info("relay refused a packet%s: %s", f" to {dest.fmt_short()}" if dest is not None else "", refusal)
        peer = self._peers.get(dest) if dest is not None else None
        if peer is None:
            return
        if refusal.reason is RefusalReason.UNKNOWN_DESTINATION:
            peer.relay_unknown_destination()
        elif refusal.reason is RefusalReason.TOO_LARGE and refusal.fits is not None:
            # the destination's relay connection carries less than our packets; send smaller ones
            peer.relay_too_large(refusal.fits)

    def _send_direct(self, data: bytes, addr: Address, ttl: int | None = None) -> None:
        """Send one datagram on the socket, with IP TTL ``ttl`` if given (hole-punching openers).

        Sockets without per-send TTL (the simulator's) send it with their default TTL.
        """
        if ttl is not None:
            send_ttl = getattr(self._socket, "sendto_ttl", None)
            if send_ttl is not None:
                send_ttl(data, addr, ttl)
                return
        self._socket.sendto(data, addr)

    def _relay_send(self, dest: NodeId, datagrams: list[tuple[bytes, Address]]) -> None:
        relay = self.relay
        if relay is None:
            self.unroutable_datagrams += len(datagrams)
            return
        for data, _addr in datagrams:
            relay.send_packet(dest, data)

    def _disco_received(self, data: bytes, addr: Address | None, expected_sender: NodeId | None = None) -> None:
        try:
            sender = peek_sender(data)
        except P2PError:
            self.dropped_disco += 1
            return
        peer = self._peers.get(sender)
        if peer is None or (expected_sender is not None and sender != expected_sender):
            # only peers we have or are dialing connections with
            self.dropped_disco += 1
            log.debug("dropped disco packet from %s (%s): no connection", sender.fmt_short(), addr)
            return
        peer.disco_received(data, addr)

    # -- the paths layer ----------------------------------------------------

    def _peer_paths(self, node_id: NodeId) -> PeerPaths:
        peer = self._peers.get(node_id)
        if peer is None:
            peer = PeerPaths(self, node_id, self._rng, clock_offset=self._clock_offset)
            self._peers[node_id] = peer
        return peer

    def _connection_ready(self, conn: PeerConnection) -> None:
        """``conn`` completed its handshake: its peer's paths layer starts probing."""
        if conn.remote_node_id is None or self._closing:
            return
        self._peer_paths(conn.remote_node_id).add_connection(conn)

    def _paths_of(self, conn: PeerConnection) -> PeerPaths | None:
        """The paths layer of ``conn``'s peer (None before the handshake names it)."""
        return self._peers.get(conn.remote_node_id) if conn.remote_node_id is not None else None

    def _path_timeouts(self, conn: PeerConnection) -> None:
        """``conn`` had repeated probe timeouts: suspect its path, fall back to the base size."""
        peer = self._paths_of(conn)
        if peer is not None:
            peer.timeouts(conn)
        else:
            conn.set_datagram_size(self.config.max_datagram_size)

    def peer_paths(self, node_id: NodeId) -> PeerPaths | None:
        """The paths layer's state for a peer (None without a connection to it)."""
        return self._peers.get(node_id)

    def _accept(self, data: bytes, addr: Address, original_dcid: bytes, relay_src: NodeId | None = None) -> None:
        quic = QuicConnection(
            configuration=self._quic_config(is_client=False, alpns=self._server_alpns(), server_name=None),
            original_destination_connection_id=original_dcid,
        )
        conn = PeerConnection(
            self,
            quic,
            addr,
            is_client=False,
            expected_node_id=None,
            config=self.config,
            direct_address=None if relay_src is not None else addr,
            relay_peer=relay_src,
        )

        def check_client(raw: bytes) -> None:
            node_id = NodeId(raw)
            if relay_src is not None and node_id != relay_src:
                raise hooks.AlertAccessDenied(f"the relay says it forwards node {relay_src}, TLS says {node_id}")
            if not self.is_allowed(node_id):
                log.info("refused node %s from %s:%d: not allowed", node_id.fmt_short(), *addr)
                raise hooks.AlertAccessDenied(f"node {node_id} is not allowed to connect to {self.node_id}")

        hooks.install_identity_hooks(quic, check_client)
        self._register_cid(original_dcid, conn)
        self._register_cid(quic.host_cid, conn)
        self._connections[conn] = None
        conn.datagram_received(data, addr if relay_src is None else None)
        if len(self._connections) > self.config.max_connections:
            log.warning("refusing connection from %s:%d: %d connections open", *addr, len(self._connections) - 1)
            conn.close(REFUSED, f"too many connections (max_connections={self.config.max_connections})")

    # -- bookkeeping ----------------------------------------------------------

    def _register_cid(self, cid: bytes, conn: PeerConnection) -> None:
        self._cids[cid] = conn

    def _unregister_cid(self, cid: bytes) -> None:
        self._cids.pop(cid, None)

    def _forget(self, conn: PeerConnection) -> None:
        self._connections.pop(conn, None)
        for cid in [c for c, v in self._cids.items() if v is conn]:
            del self._cids[cid]
        if conn.remote_node_id is not None and conn.alpn is not None:
            key = (conn.remote_node_id, conn.alpn)
            if self._pool.get(key) is conn:
                del self._pool[key]
        for key in [k for k, v in self._pool.items() if v is conn]:
            del self._pool[key]
        node = conn.remote_node_id
        peer = self._peers.get(node) if node is not None else None
        if peer is not None:
            peer.remove_connection(conn)
            if node is not None and not any(c.remote_node_id == node for c in self._connections):
                peer.close()
                del self._peers[node]

    def _pool_add(self, conn: PeerConnection) -> None:
        if conn.remote_node_id is not None and conn.alpn is not None:
            self._pool.setdefault((conn.remote_node_id, conn.alpn), conn)

    # -- shutdown ---------------------------------------------------------------

    async def close(self, *, timeout: float = 2.0) -> None:
        """Close every connection (CONNECTION_CLOSE to each peer), then the socket."""
        if self._closed:
            return
        self._closing = True
        relay, self.relay = self.relay, None
        if relay is not None:
            await relay.close()
        conns = list(self._connections)
        for conn in conns:
            conn.close(0, "endpoint closing")
        if conns:
            await asyncio.wait([asyncio.ensure_future(c.wait_closed()) for c in conns], timeout=timeout)
        for conn in list(self._connections):
            conn.abort(ConnectionClosed("endpoint closed"))
        self._closed = True
        for peer in self._peers.values():
            peer.close()
        self._peers.clear()
        self._socket.close()
        self.messages.close()

    async def __aenter__(self) -> Endpoint:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Endpoint {self.node_id.fmt_short()}>"


def virtual_address(node_id: NodeId) -> Address:
    """The address QUIC sees for a peer reached through the relay (never sent to).

    An IPv6 unique local address made of the node id, port 0: stable per peer,
    needs no table, and cannot be mistaken for a path (port 0 is never probed).
    """
    return (str(ipaddress.IPv6Address(b"\xfd" + node_id.to_bytes()[:15])), 0)


def _default_relay_factory() -> RelayFactory:
    # The ONE place the endpoint reaches up into the relay layer, lazily: importing
    # asgi_p2p.endpoint never imports asgi_p2p.relay (layers import downward only).
    from ..relay.client import RelayClient

    return RelayClient
