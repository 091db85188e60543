"""A connection's route: where each of its datagrams goes (direct UDP, the relay, or both).

The endpoint makes one :class:`Route` per QUIC connection (``Router.dial_route`` /
``Router.accept_route``) and hands the connection's outgoing datagrams to
:meth:`Route.send`; the connection never sees a socket or a relay.  The peer's
:class:`~asgi_p2p.paths.peer.PeerPaths` keeps :attr:`Route.direct` and
:attr:`Route.relayed` current (see :func:`asgi_p2p.paths.select.select_route`)
and tells the connection through the :class:`RouteOwner` callbacks it implements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..config import NetworkConfig
from ..identity import NodeId
from ..net.addr import normalize_address
from ..net.base import Address
from .prober import RELAY, PathInfo
from .select import select_datagram_size
from .stats import PathStats

__all__ = ["Route", "RouteHost", "RouteOwner", "RoutePeer", "RouteTarget"]

#: Where a connection's packets go: a direct address and/or a node through the relay.
RouteTarget = tuple[Address | None, NodeId | None]

#: an authenticated QUIC packet on the direct route is reported to the paths layer at
#: most this often (seconds): it stands in for disco keepalives, which run on seconds
_ALIVE_REPORT_INTERVAL = 1.0


def _normalized(addr: Address) -> Address | None:
    try:
        return normalize_address(addr)
    except ValueError:
        return None


class RouteOwner(Protocol):
    """What a route needs from the connection it carries (``PeerConnection`` implements it)."""

    @property
    def is_client(self) -> bool:
        """True for the dialing side."""

    @property
    def established_at(self) -> float | None:
        """Loop time the handshake completed (None before)."""

    @property
    def smoothed_rtt(self) -> float:
        """QUIC's smoothed RTT in seconds."""

    @property
    def handshake_completed(self) -> bool:
        """The TLS handshake completed here (an accepted connection may be ready before: 0-RTT)."""

    @property
    def handshake_address(self) -> Address | None:
        """The direct address the authenticated datagram that completed the handshake came
        from, when it is also where the connection sends (None otherwise): the handshake
        crossed that path both ways, as a signed PING and its PONG would."""

    @property
    def handshake_datagram_size(self) -> int | None:
        """The datagram size the handshake carried both ways on that path (a padded handshake;
        None: only the base size), as a size probe and its answer would prove."""

    @property
    def datagram_size(self) -> int:
        """The UDP payload size the connection builds now."""

    def set_datagram_size(self, size: int, *, below_base: bool = False) -> None:
        """Build datagrams of ``size`` bytes from now on."""

    def route_changed(self, old: RouteTarget, reason: str) -> None:
        """:attr:`Route.target` changed from ``old`` (for ``reason``)."""

    def path_answered(self) -> None:
        """The peer was just heard on the current route (a PONG on it, the relay back): it works."""


class RouteHost(Protocol):
    """What a route needs from the paths layer that made it (the :class:`~asgi_p2p.paths.router.Router`)."""

    @property
    def config(self) -> NetworkConfig: ...

    #: counters of the endpoint's paths (datagrams by path kind)
    stats: PathStats

    def sendto(self, data: bytes, addr: Address) -> None:
        """Send one datagram on the socket."""

    def sendmany(self, datagrams: Sequence[bytes], addr: Address) -> None:
        """Send datagrams to one address on the socket, in order (in as few system calls as it can)."""

    def relay_send(self, dest: NodeId, datagrams: list[tuple[bytes, Address]]) -> None:
        """Send datagrams to ``dest`` through the relay (counted as unroutable without one)."""

    def count_unroutable(self, n: int) -> None:
        """``n`` datagrams had nowhere to go."""

    def connection_ready(self, node_id: NodeId, route: Route) -> None:
        """``route``'s connection proved it talks to ``node_id``: add it to that peer's paths."""

    def connection_gone(self, route: Route) -> None:
        """``route``'s connection closed."""


class RoutePeer(Protocol):
    """What a route needs from its peer's paths (:class:`~asgi_p2p.paths.peer.PeerPaths`)."""

    @property
    def node_id(self) -> NodeId: ...

    @property
    def path(self) -> PathInfo: ...

    def service(self) -> None: ...

    def update_routes(self) -> None: ...

    def new_source(self, addr: Address) -> None: ...

    def transport_alive(self, addr: Address) -> None: ...

    def source_moved(self, route: Route) -> None: ...

    def bulk_started(self) -> None: ...

    def timeouts(self, route: Route) -> None: ...


class Route:
    """The path state of one connection: its fixed QUIC address and where its packets go now."""

    __slots__ = (
        "_alive_reported",
        "direct",
        "direct_address",
        "first_contact",
        "is_relay",
        "on_link",
        "owner",
        "peer",
        "relay_peer",
        "relayed",
        "router",
        "source",
    )

    def __init__(
        self,
        router: RouteHost,
        owner: RouteOwner,
        *,
        direct_address: Address | None,
        relay_peer: NodeId | None,
        is_relay: bool,
    ) -> None:
        self.router = router
        self.owner = owner
        #: The real address the connection was dialed to or accepted from (None via the relay).
        self.direct_address = direct_address
        #: For a connection accepted through the relay: the node the relay says sent it.
        self.relay_peer = relay_peer
        #: A connection to a relay: its packets never go through a relay, and it carries
        #: other connections' packets (set by the endpoint from the protocol's registration).
        self.is_relay = is_relay
        #: Where packets go now: this direct address, and/or :attr:`relayed` through the relay.
        self.direct: Address | None = direct_address
        self.relayed: NodeId | None = relay_peer
        #: The peer's paths, once the peer is known (dialing, or after the handshake).
        self.peer: RoutePeer | None = None
        #: A dial raced on a private-network address (happy eyeballs): until its handshake
        #: is done, its packets go to that address alone (see ``PeerPaths.route_for``).
        self.on_link = False
        #: A dial whose first flight may go to a relay that is still connecting, as a first
        #: contact (:attr:`~asgi_p2p.paths.link.RelayLink.takes_first_contact`).
        self.first_contact = False
        #: The direct address the peer's newest authenticated packet came from (None: none
        #: yet); an accepted connection's packets follow it once it is a proven path.
        self.source: Address | None = None
        self._alive_reported = -1.0

    @property
    def target(self) -> RouteTarget:
        return self.direct, self.relayed

    # -- the data path ------------------------------------------------------

    def send(self, datagrams: list[tuple[bytes, Address]]) -> None:
        """Put a connection's datagrams on the current route (QUIC's address is ignored)."""
        direct = self.direct
        if direct is not None and len(datagrams) == 1:  # the common case, without lists
            router = self.router
            data = datagrams[0][0]
            router.sendto(data, direct)
            stats = router.stats
            stats.direct_packets_sent += 1
            stats.direct_bytes_sent += len(data)
        elif direct is not None:
            router = self.router
            payloads = [data for data, _addr in datagrams]
            router.sendmany(payloads, direct)
            stats = router.stats
            stats.direct_packets_sent += len(payloads)
            stats.direct_bytes_sent += sum(map(len, payloads))
        relayed = self.relayed
        if relayed is not None:
            self.router.relay_send(relayed, datagrams)
        elif direct is None:
            self.router.count_unroutable(len(datagrams))

    def received_from(self, addr: Address) -> None:
        """QUIC packets of the peer arrived from ``addr``, which we do not send to: probe it."""
        if self.peer is not None:
            self.peer.new_source(addr)

    def authenticated(self, addr: Address, now: float) -> None:
        """A new authenticated QUIC packet (the highest packet number so far) arrived from ``addr``.

        It is the peer's address now (:attr:`source`): an accepted connection follows it
        once proven (see ``PeerPaths.route_for``).  On our direct route it also shows the
        path works.
        """
        if addr != self.source:
            self.source = addr
            if self.peer is not None and not self.owner.is_client:
                self.peer.source_moved(self)
        if addr == self.direct and now >= self._alive_reported + _ALIVE_REPORT_INTERVAL:
            self._alive_reported = now  # also before the handshake names the peer: one report a second
            if self.peer is not None:
                self.peer.transport_alive(addr)

    def answered(self, addr: Address | None) -> None:
        """The paths layer heard the peer at ``addr`` just now (None: the relay is back).

        Tells the connection when that is where its packets go (see
        :meth:`RouteOwner.path_answered`).
        """
        if addr is None:
            hit = self.relayed is not None
        else:
            hit = self.direct is not None and (addr == self.direct or addr == _normalized(self.direct))
        if hit:
            self.owner.path_answered()

    def bulk_started(self) -> None:
        """The connection sent a burst of packets: find larger datagram sizes on its path."""
        if self.peer is not None:
            self.peer.bulk_started()

    def timeouts(self) -> None:
        """Repeated probe timeouts: suspect the path; fall back to the base datagram size."""
        if self.peer is not None:
            self.peer.timeouts(self)
        else:
            self.owner.set_datagram_size(self.router.config.max_datagram_size)

    # -- state ---------------------------------------------------------------

    @property
    def path(self) -> PathInfo:
        """Where packets go now: the direct path (address, RTT) or the relay."""
        direct = self.direct
        if direct is not None:
            current = self.peer.path if self.peer is not None else None
            if current is not None and current.addr == direct:
                return current
            return PathInfo("direct", direct, self.owner.smoothed_rtt)
        return RELAY

    def set_target(self, target: RouteTarget, reason: str) -> None:
        """Send to ``target`` from now on (called by the peer's paths)."""
        old = (self.direct, self.relayed)
        if target == old:
            return
        self.direct, self.relayed = target
        self.owner.route_changed(old, reason)

    def start(self) -> None:
        """The connection's first packets are about to be built: size them.

        A dialed connection's peer decides (its probing starts at :meth:`start_probing`,
        once those packets left).  A connection accepted through the relay has no peer
        until the handshake names it: its handshake datagrams get the size every connected
        relay client carries (see :func:`~asgi_p2p.paths.select.select_datagram_size`).
        """
        if self.peer is not None:
            self.peer.update_routes()
        elif self.relayed is not None:
            base = self.router.config.max_datagram_size
            size, below_base = select_datagram_size(
                self.target, direct_size=lambda _addr: base, base=base, relay_fit=None, established=False
            )
            self.owner.set_datagram_size(size, below_base=below_base)

    def start_probing(self) -> None:
        """A dialed connection's first packets left: its peer probes its paths (the PINGs that
        open our NAT for the peer's go behind the Initial, not before it)."""
        if self.peer is not None:
            self.peer.service()

    def attach(self, node_id: NodeId, *, is_relay: bool) -> None:
        """The handshake proved the peer's node id: join its paths (which start probing)."""
        self.is_relay = is_relay
        self.router.connection_ready(node_id, self)

    def detach(self) -> None:
        """The connection is gone."""
        self.router.connection_gone(self)
