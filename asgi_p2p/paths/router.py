"""The paths layer of one endpoint: its socket, its relay link, its peers' paths.

iroh's ``socket/`` is the model.  The :class:`Router` owns the endpoint's one
datagram socket and its relay link (a :class:`~asgi_p2p.paths.link.RelayLink`
the caller wires in).  What arrives goes up in one of two ways:

* disco packets (path probes, hole-punching signals) stay here: each goes to the
  :class:`~asgi_p2p.paths.peer.PeerPaths` of the node that signed it;
* relay data plane datagrams (another magic starting with 0x00) go to the
  :class:`~asgi_p2p.paths.link.PlaneReceiver` registered with :meth:`Router.use_plane`
  (a relay server, or the endpoint's relay clients);
* QUIC packets go to the endpoint, through the two callbacks it handed the router
  (``deliver`` for a packet from an address, ``deliver_relayed`` for one the relay
  forwarded from a node).

What leaves goes down through a :class:`~asgi_p2p.paths.route.Route` per QUIC
connection, which puts each datagram on the connection's current transport: the
socket towards a direct address, the relay towards a node id, or both while a
path is being confirmed.  QUIC itself sees one stable address per peer: the
address it dialed or accepted from, or :func:`virtual_address` for a peer that
came through the relay.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import random
from collections.abc import Callable, Iterable, Sequence

from ..config import NetworkConfig
from ..errors import P2PError
from ..identity import NodeAddr, NodeId, SecretKey
from ..net.base import Address, DatagramNetwork, DatagramSocket
from .disco import DISCO_MAGIC, is_disco, open_packet, peek_sender
from .link import PlaneReceiver, RefusalReason, RelayLink, RelayRefusal
from .peer import PeerPaths
from .prober import ProberConfig
from .route import Route, RouteOwner
from .stats import PathStats

__all__ = ["Router", "newest_public_address", "virtual_address"]

log = logging.getLogger("asgi_p2p.paths")

#: Called with a QUIC packet that arrived on the socket from an address.
Deliver = Callable[[bytes, Address], None]
#: Called with a QUIC packet the relay forwarded from a node.
DeliverRelayed = Callable[[bytes, NodeId], None]

#: disco packets from nodes without a connection whose signature is checked, per second (and
#: burst): each check costs one Ed25519 verification (~150 us); beyond it they are dropped unchecked
EARLY_DISCO_CHECKS_PER_SECOND = 50.0
EARLY_DISCO_CHECK_BURST = 100.0
#: nodes whose earlier disco packets (before, or from a previous, connection) are remembered; more
#: than the checks of one freshness window (50/s x 120 s), so that none is forgotten while it matters
MAX_SEEN_NODES = 8192
#: how far a disco timestamp may be from our shared clock (the prober's freshness window)
_DISCO_WINDOW = ProberConfig.max_clock_skew


def virtual_address(node_id: NodeId) -> Address:
    """The address QUIC sees for a peer reached through the relay (never sent to).

    An IPv6 unique local address made of the node id, port 0: stable per peer,
    needs no table, and cannot be mistaken for a path (port 0 is never probed).
    """
    return (str(ipaddress.IPv6Address(b"\xfd" + node_id.to_bytes()[:15])), 0)


def newest_public_address(
    observed: Address | None, observed_since: float, reflexive: Iterable[tuple[Address, float]]
) -> Address | None:
    """Our public address: the newest news of it from our relay (None: none).

    ``observed``: the address in the relay's OBSERVED_ADDR frame, reported since
    ``observed_since``; ``reflexive``: ``(address, since)`` for each relay whose answers
    to our path probes show us at ``address``, since ``since`` (loop time).  The address
    that showed up last wins (the frame on a tie): OBSERVED_ADDR is sent once per change
    on an unreliable frame, so after a NAT rebinding whose frame was lost it is stale
    while the probes' answers show the new mapping; before the first frame arrives, the
    answers are all there is.
    """
    best, since = observed, observed_since
    for addr, at in reflexive:
        if best is None or at > since:
            best, since = addr, at
    return best


class Router:
    """One endpoint's socket, relay link and per-peer paths (see the module docstring).

    Implements :class:`~asgi_p2p.paths.link.RelaySink` for the relay client, and the
    hosts that :class:`~asgi_p2p.paths.route.Route` and :class:`~asgi_p2p.paths.peer.PeerPaths`
    need.  Counters: :attr:`dropped_disco`, :attr:`unroutable_datagrams`, :attr:`relay_errors`.
    """

    def __init__(
        self,
        secret_key: SecretKey,
        config: NetworkConfig,
        rng: random.Random,
        *,
        deliver: Deliver,
        deliver_relayed: DeliverRelayed,
    ) -> None:
        self._secret_key = secret_key
        self._config = config
        self._rng = rng
        self._deliver = deliver
        self._deliver_relayed = deliver_relayed
        self._socket: DatagramSocket | None = None
        #: Send one datagram on the socket (bound by :meth:`bind`).
        self.sendto: Callable[[bytes, Address], None] = _not_bound
        #: Send datagrams to one address on the socket, in order (bound by :meth:`bind`).
        self.sendmany: Callable[[Sequence[bytes], Address], None] = self._send_each
        self._clock_offset = 0.0
        self._relay: RelayLink | None = None
        self._plane: PlaneReceiver | None = None
        self._plane_magic = b""
        self._peers: dict[NodeId, PeerPaths] = {}
        self._closing = False
        self._addr_callbacks: list[Callable[[NodeAddr], None]] = []
        self._last_node_addr: NodeAddr | None = None
        # the relay link's observed address as last reported, and since when (loop time)
        self._observed: Address | None = None
        self._observed_since = 0.0
        #: disco packets dropped because no connection with their sender exists (or malformed)
        self.dropped_disco = 0
        #: of those, the ones dropped without a signature check (over the check budget)
        self.unchecked_disco = 0
        # per node without paths: the newest timestamp of its authentic disco packets seen
        # (dropped before its connection existed, or accepted by a connection now gone);
        # oldest first.  Its next prober refuses packets up to it (see _disco_received).
        self._seen_until: dict[NodeId, float] = {}
        self._checks = EARLY_DISCO_CHECK_BURST
        self._checks_at: float | None = None
        #: QUIC datagrams with nowhere to go (no live direct path and no relay)
        self.unroutable_datagrams = 0
        #: refusals the relay reported (rate limits, unknown destinations, ...)
        self.relay_errors = 0
        #: datagrams, path switches and disco probes (for metrics)
        self.stats = PathStats()

    async def bind(self, network: DatagramNetwork, host: str, port: int) -> None:
        """Bind the socket; datagrams arrive at :meth:`datagram_received` from now on."""
        # disco timestamps need a clock peers share (Unix time); the network supplies
        # its offset from loop.time(): the system clock once, or the simulator's constant
        self._clock_offset = network.wall_clock_offset()
        sock = await network.bind(host, port, self.datagram_received)
        self._socket = sock
        self.sendto = sock.sendto
        # several datagrams to one address in one call (real UDP: segmentation offload)
        sendmany = getattr(sock, "sendmany", None)
        self.sendmany = sendmany if sendmany is not None else self._send_each

    # -- what the hosts of routes and peers read ----------------------------

    @property
    def config(self) -> NetworkConfig:
        return self._config

    @property
    def secret_key(self) -> SecretKey:
        return self._secret_key

    @property
    def node_id(self) -> NodeId:
        return self._secret_key.node_id

    @property
    def clock_offset(self) -> float:
        """Seconds to add to ``loop.time()`` for the Unix time signed probes carry (from the network)."""
        return self._clock_offset

    @property
    def socket(self) -> DatagramSocket:
        if self._socket is None:
            raise P2PError("the paths layer has no socket yet (bind it first)")
        return self._socket

    @property
    def relay(self) -> RelayLink | None:
        """The relay link, if one is wired in (connected or not)."""
        return self._relay

    def use_relay(self, link: RelayLink | None) -> None:
        """Send through ``link`` from now on (None: no relay)."""
        self._relay = link

    @property
    def plane(self) -> PlaneReceiver | None:
        """The receiver of relay data plane datagrams (None: they go to QUIC, which drops them)."""
        return self._plane

    def use_plane(self, magic: bytes, receiver: PlaneReceiver | None) -> None:
        """Hand datagrams starting with ``magic`` to ``receiver`` from now on (None: stop).

        ``magic`` must start with 0x00 (never a QUIC packet) and differ from disco's.
        One receiver per socket: registering another while one is set is an error.
        """
        if receiver is None:
            self._plane = None
            self._plane_magic = b""
            return
        if len(magic) < 2 or magic[:1] != b"\x00" or magic[: len(DISCO_MAGIC)] == DISCO_MAGIC:
            raise ValueError(f"a plane magic starts with 0x00 and is not disco's, got {magic!r}")
        if self._plane is not None and self._plane is not receiver:
            raise P2PError("this endpoint's socket already hands its relay data plane datagrams to another receiver")
        self._plane = receiver
        self._plane_magic = magic

    # -- addresses ------------------------------------------------------------

    def own_socket_addresses(self) -> set[Address]:
        sock = self.socket
        return {sock.local_address, *sock.local_addresses()}

    def own_candidates(self) -> list[Address]:
        """Addresses where peers may reach this node directly: the public one first.

        The public address is the one the relay sees us at (our NAT's mapping): its
        OBSERVED_ADDR frame or the relay's answers to our path probes, whichever showed a
        new address last.  Relay frames are unreliable: the answers stand in until the
        first OBSERVED_ADDR arrives, and when our NAT rebinds and the OBSERVED_ADDR
        saying so is lost, the answers show the new address while the frame's is stale
        (peers would punch a mapping that no longer exists, and stay on the relay).
        Socket addresses (LAN) follow.
        """
        local = [a for a in self.socket.local_addresses() if a[1] != 0 and a[0] not in ("0.0.0.0", "::", "")]
        observed = self._public_address()
        if observed is None:
            return local
        return [observed, *(a for a in local if a != observed)]

    def _public_address(self) -> Address | None:
        relay = self._relay
        if relay is None:
            return None
        observed = relay.observed_address
        # news from the link that relay_state_changed has not seen yet counts as the newest
        since = self._observed_since if observed == self._observed else math.inf
        reflexive = [
            (peer.prober.reflexive_addr, peer.reflexive_since)
            for peer in self._peers.values()
            if peer.is_relay and peer.prober.reflexive_addr is not None and peer.reflexive_since is not None
        ]
        return newest_public_address(observed, since, reflexive)

    def node_addr(self) -> NodeAddr:
        """How peers reach this node: its id, direct candidates and relay URL."""
        relay = self._relay
        return NodeAddr(self.node_id, self.own_candidates(), relay.relay_url if relay is not None else None)

    def on_node_addr_change(self, callback: Callable[[NodeAddr], None]) -> Callable[[], None]:
        """Call ``callback(node_addr)`` whenever our addresses or relay state change; returns a remover."""
        self._addr_callbacks.append(callback)

        def remove() -> None:
            if callback in self._addr_callbacks:
                self._addr_callbacks.remove(callback)

        return remove

    def own_addresses_changed(self) -> None:
        """Our candidates or relay state may have changed: re-signal every peer, tell the callbacks."""
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

    # -- receiving --------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """A datagram from the socket: disco stays here, QUIC goes to the endpoint."""
        stats = self.stats
        stats.direct_packets_received += 1
        stats.direct_bytes_received += len(data)
        if data[:1] == b"\x00":  # never QUIC: see asgi_p2p.paths.disco
            if is_disco(data):
                self._disco_received(data, addr)
                return
            plane = self._plane
            if plane is not None and data[: len(self._plane_magic)] == self._plane_magic:
                plane.plane_datagram_received(data, addr)
                return
        self._deliver(data, addr)

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
            log.debug("dropped disco packet from %s (%s): no connection", sender, addr)
            if peer is None and expected_sender in (None, sender):
                self._remember_early(data, sender)
            return
        peer.disco_received(data, addr)

    def _remember_early(self, data: bytes, sender: NodeId) -> None:
        """Note an authentic disco packet of a node we have no paths for, so it is never taken later.

        A dialer's first PINGs reach us before the handshake names the dialer. Dropped
        unchecked, one could be replayed (by anyone who saw it, from any address) once the
        connection exists, within the freshness window, and we would answer that address.
        So its signature is checked (within a budget: each check costs a verification) and
        the node's prober, when created, refuses packets timestamped up to the newest one seen.
        """
        now = asyncio.get_running_loop().time()
        if self._checks_at is not None and now > self._checks_at:
            self._checks = min(
                EARLY_DISCO_CHECK_BURST, self._checks + (now - self._checks_at) * EARLY_DISCO_CHECKS_PER_SECOND
            )
        self._checks_at = now if self._checks_at is None else max(self._checks_at, now)
        if self._checks < 1:
            self.unchecked_disco += 1
            return
        self._checks -= 1
        try:
            packet = open_packet(data, self.node_id, sender)
        except P2PError as exc:
            log.debug("disco packet claiming to be from %s refused: %s", sender, exc)
            return
        shared = now + self._clock_offset
        if abs(packet.timestamp - shared) > _DISCO_WINDOW:
            return  # outside the window: refused as stale whenever it comes back
        self._note_seen(sender, packet.timestamp, shared)

    def _note_seen(self, node: NodeId, timestamp: float, now_shared: float) -> None:
        seen = self._seen_until
        previous = seen.pop(node, None)
        if previous is not None:
            timestamp = max(timestamp, previous)
        if len(seen) >= MAX_SEEN_NODES:
            horizon = now_shared - _DISCO_WINDOW
            for old in [n for n, ts in seen.items() if ts < horizon]:  # out of the window: moot
                del seen[old]
            while len(seen) >= MAX_SEEN_NODES:
                del seen[next(iter(seen))]
        seen[node] = timestamp

    # -- the relay (RelaySink) ----------------------------------------------------

    def relay_packet_received(self, src: NodeId, packet: bytes) -> None:
        """A packet ``src`` sent us through the relay: disco or QUIC, as if it came from ``src``."""
        if self._closing or not packet:
            return
        stats = self.stats
        stats.relay_packets_received += 1
        stats.relay_bytes_received += len(packet)
        if packet[:1] == b"\x00" and is_disco(packet):
            self._disco_received(packet, None, expected_sender=src)  # (a size probe through the relay)
            return
        self._deliver_relayed(packet, src)

    def relay_signal_received(self, src: NodeId, payload: bytes) -> None:
        """A hole-punching signal (a sealed disco packet, e.g. CALL_ME_MAYBE) from ``src``."""
        if self._closing:
            return
        if not is_disco(payload):
            self.dropped_disco += 1
            return
        # handled in the next loop pass, after the datagrams read with it: a signal is not
        # urgent to the millisecond (a CALL_ME_MAYBE that comes with a first response must not
        # hold the response's reader up: opening it checks a signature, then PINGs are sealed)
        asyncio.get_running_loop().call_soon(self._signal_received, payload, src)

    def _signal_received(self, payload: bytes, src: NodeId) -> None:
        if not self._closing:
            self._disco_received(payload, None, expected_sender=src)

    def relay_state_changed(self, link: RelayLink) -> None:
        """The relay (dis)connected or sees us at a new address: re-route, re-signal."""
        if self._closing:
            return
        if link.observed_address != self._observed:
            self._observed = link.observed_address
            self._observed_since = asyncio.get_running_loop().time()
        log.info(
            "relay %s %s%s",
            link.relay_url,
            "connected" if link.connected else "takes packets (not confirmed yet)" if link.can_send else "disconnected",
            f", sees us at {link.observed_address[0]}:{link.observed_address[1]}" if link.observed_address else "",
        )
        for peer in list(self._peers.values()):
            peer.relay_fit = None  # a new relay connection (or none): sizes are learnt afresh
            peer.prober.relay_capacity(None, asyncio.get_running_loop().time())
            peer.update_routes()
            if link.can_send:
                peer.relay_answered()
        self._last_node_addr = None  # connected or not: re-signal peers, tell the callbacks
        self.own_addresses_changed()

    def relay_refused(self, dest: NodeId | None, refusal: RelayRefusal) -> None:
        """The relay refused a packet (to ``dest``): adapt that peer's paths."""
        self.relay_errors += 1
        log.info("relay refused a packet%s: %s", f" to {dest}" if dest is not None else "", refusal)
        peer = self._peers.get(dest) if dest is not None else None
        if peer is None:
            return
        if refusal.reason is RefusalReason.UNKNOWN_DESTINATION:
            peer.relay_unknown_destination()
        elif refusal.reason is RefusalReason.TOO_LARGE and refusal.fits is not None:
            # the destination's relay connection carries less than our packets: send smaller ones
            peer.relay_too_large(refusal.fits)

    # -- sending ----------------------------------------------------------------

    def send_direct(self, data: bytes, addr: Address, ttl: int | None = None) -> None:
        """Send one datagram on the socket, with IP TTL ``ttl`` if given (hole-punching openers).

        Sockets without per-send TTL (the simulator's) send it with their default TTL.
        """
        self.stats.direct_packets_sent += 1
        self.stats.direct_bytes_sent += len(data)
        if ttl is not None:
            send_ttl = getattr(self._socket, "sendto_ttl", None)
            if send_ttl is not None:
                send_ttl(data, addr, ttl)
                return
        self.sendto(data, addr)

    def _send_each(self, datagrams: Sequence[bytes], addr: Address) -> None:
        """:attr:`sendmany` of a socket without ``sendmany`` (simulated ones): one ``sendto`` each."""
        sendto = self.sendto
        for data in datagrams:
            sendto(data, addr)

    def relay_send(self, dest: NodeId, datagrams: list[tuple[bytes, Address]]) -> None:
        relay = self._relay
        if relay is None:
            self.unroutable_datagrams += len(datagrams)
            return
        stats = self.stats
        for data, _addr in datagrams:
            stats.relay_packets_sent += 1
            stats.relay_bytes_sent += len(data)
            relay.send_packet(dest, data)

    def count_unroutable(self, n: int) -> None:
        self.unroutable_datagrams += n

    # -- routes and peers ---------------------------------------------------------

    def dial_route(
        self,
        node_id: NodeId,
        owner: RouteOwner,
        *,
        direct: Address | None,
        candidates: list[Address],
        is_relay: bool,
        on_link: bool = False,
        first_contact: bool = False,
    ) -> Route:
        """The route of a connection we dial to ``node_id`` (first packets to ``direct`` and/or the relay).

        From now on the peer's disco packets are accepted; its ``candidates`` are probed
        once the connection calls :meth:`Route.start`.  ``on_link``: ``direct`` is on a
        private network and raced against the relay (happy eyeballs): the handshake goes
        there alone, at once, whether the relay is up or not.
        """
        route = Route(self, owner, direct_address=direct, relay_peer=None, is_relay=is_relay)
        route.on_link = on_link
        route.first_contact = first_contact
        peer = self.peer_for(node_id)
        peer.add_candidates(candidates)
        peer.dialing(route)
        return route

    def accept_route(self, owner: RouteOwner, addr: Address | None, relay_src: NodeId | None) -> Route:
        """The route of a connection accepted from ``addr``, or from ``relay_src`` through the relay."""
        return Route(self, owner, direct_address=addr, relay_peer=relay_src, is_relay=False)

    def peer_for(self, node_id: NodeId) -> PeerPaths:
        """The paths of a peer, created when first needed (a dial, a handshake)."""
        peer = self._peers.get(node_id)
        if peer is None:
            seen = self._seen_until.pop(node_id, None)
            peer = PeerPaths(self, node_id, self._rng, clock_offset=self._clock_offset, seen_until=seen)
            self._peers[node_id] = peer
        return peer

    def dial_without_relay(self, node_id: NodeId) -> None:
        """A dial to ``node_id`` goes ahead without the relay (it did not connect in time).

        No CALL_ME_MAYBE will come through it, so direct packets go out at full TTL at once.
        """
        self.peer_for(node_id).not_on_relay = True

    def peer_paths(self, node_id: NodeId) -> PeerPaths | None:
        """The paths of a peer (None without a connection to it)."""
        return self._peers.get(node_id)

    def connection_ready(self, node_id: NodeId, route: Route) -> None:
        """``route``'s connection completed its handshake with ``node_id``: its peer starts probing."""
        if self._closing:
            return
        self.peer_for(node_id).add_connection(route)

    def connection_gone(self, route: Route) -> None:
        """``route``'s connection closed: its peer's paths go with its last connection."""
        if route.peer is None:
            return
        peer = self._peers.get(route.peer.node_id)
        if peer is None or peer is not route.peer:
            return
        peer.remove_connection(route)
        if not peer.routes:
            peer.close()
            del self._peers[peer.node_id]
            latest = peer.prober.replay.latest
            if latest is not None:  # its packets stay refused by the node's next prober
                self._note_seen(peer.node_id, latest, peer.loop.time() + self._clock_offset)

    def close(self) -> None:
        """Stop every peer's timers and close the socket."""
        self._closing = True
        for peer in self._peers.values():
            peer.close()
        self._peers.clear()
        if self._socket is not None:
            self._socket.close()

    def stop_routing(self) -> None:
        """The endpoint is shutting down: ignore relay traffic and state changes from now on."""
        self._closing = True


def _not_bound(data: bytes, addr: Address) -> None:
    raise P2PError("the paths layer has no socket yet (bind it first)")
