"""The paths of one peer: its disco prober, its paths, the routes of its connections.

Every peer we have (or are dialing) a connection with gets one :class:`PeerPaths`,
keyed by node id: disco packets from that node go to its
:class:`~asgi_p2p.paths.prober.PathProber`, whose timers run on the endpoint's
loop.  The prober probes the peer's direct addresses, measures RTT and how
large a datagram each path carries (padded PINGs, RFC 8899).

Each connection to the peer keeps one address for QUIC (see
``PeerConnection.address``); underneath, its :class:`~asgi_p2p.paths.route.Route`
sends its packets where :meth:`PeerPaths.update_routes` says, by the rules of
:mod:`asgi_p2p.paths.select`: the prober's current direct path once a probe was
answered; else the address the connection was dialed to or accepted from, while
that address is not known to be dead, *and* the relay if one is connected; else
the relay.  A connection builds datagrams of the size its direct path carries,
and whenever any of its packets may go through the relay, whose DATAGRAM frames
carry them, of a size that fits the relay (1200 bytes during the handshake, then
the base size ``NetworkConfig.max_datagram_size`` or what the relay carries).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from typing import Protocol

from ..config import NetworkConfig
from ..identity import NodeId, SecretKey
from ..net.base import Address
from ..net.timer import DeadlineTimer
from .link import RelayLink
from .prober import PathChanged, PathInfo, PathProber, PathState, ProberConfig
from .route import Route
from .select import MIN_RELAYED_SIZE, select_datagram_size, select_route
from .stats import PathStats

__all__ = ["PeerHost", "PeerPaths"]

log = logging.getLogger("asgi_p2p.paths")

#: an unconfirmed direct address still gets copies of a connection's packets (next to
#: the relay) until it has been probed this long without an answer
_FALLBACK_GRACE = 3.0
#: upper bound of the delay between a punching opener and the first full-TTL ping
_MAX_PUNCH_DELAY = 1.0
#: the prober's defaults for keepalive and liveness (see ProberConfig)
_DISCO_KEEPALIVE = ProberConfig.keepalive_interval
_PATH_TIMEOUT = ProberConfig.path_timeout
#: the disco keepalive resumes this many QUIC keepalive intervals after the latest
#: authenticated QUIC packet from the peer on its current path
_TRANSPORT_QUIET_FACTOR = 1.5
#: a dial's first packets go to an address: its disco PING waits this long (seconds) for
#: the handshake to validate that address instead
_DIAL_PING_DEFER = 1.0
#: stands in for QUIC's keepalive interval when it is off (0)
_IDLE_QUIC_KEEPALIVE = 10.0


class PeerHost(Protocol):
    """What a peer's paths need from the paths layer (the :class:`~asgi_p2p.paths.router.Router`)."""

    @property
    def config(self) -> NetworkConfig: ...

    @property
    def secret_key(self) -> SecretKey: ...

    @property
    def relay(self) -> RelayLink | None: ...

    def own_socket_addresses(self) -> set[Address]: ...

    def own_candidates(self) -> list[Address]: ...

    def send_direct(self, data: bytes, addr: Address, ttl: int | None = None) -> None: ...

    def own_addresses_changed(self) -> None: ...

    #: counters of the endpoint's paths (path switches, disco probes)
    stats: PathStats


@functools.lru_cache(maxsize=16)
def _prober_config(base_datagram_size: int, max_datagram_size: int, punch_ttl: int, quiet: float) -> ProberConfig:
    """The probers' configuration for a node's settings (one per peer: built once, it is frozen)."""
    return ProberConfig(
        base_datagram_size=base_datagram_size,
        max_datagram_size=max_datagram_size,
        size_search_on_demand=True,
        punch_ttl=punch_ttl,
        # QUIC traffic on the current path (at least its keepalives) stands in for the
        # signed disco keepalive: an idle pair of nodes exchanges one QUIC PING and its
        # ACK per keepalive interval instead of that plus a PING/PONG pair each way
        transport_quiet=quiet,
        path_timeout=max(_PATH_TIMEOUT, quiet + 2 * _DISCO_KEEPALIVE),
    )


class PeerPaths:
    """The paths of one peer and the routes of the connections that use them (driven by the router)."""

    def __init__(
        self,
        router: PeerHost,
        node_id: NodeId,
        rng: random.Random,
        *,
        clock_offset: float,
        seen_until: float | None = None,
    ) -> None:
        cfg = router.config
        # a disco keepalive goes out only when QUIC heard nothing from the peer for longer
        # than QUIC's own keepalive interval (plus a margin for its round trip)
        quiet = _TRANSPORT_QUIET_FACTOR * (cfg.keepalive_interval or _IDLE_QUIC_KEEPALIVE)
        self.router = router
        self.node_id = node_id
        self.loop = asyncio.get_running_loop()
        self.prober = PathProber(
            router.secret_key,
            node_id,
            rng,
            config=_prober_config(cfg.max_datagram_size, cfg.datagram_size_ceiling, cfg.punch_ttl, quiet),
            clock_offset=clock_offset,
            stats=router.stats,
        )
        if seen_until is not None:
            # this node's packets seen before (dropped before it had a connection, or taken by
            # an earlier connection's prober) must not be accepted now: they could be replays
            self.prober.replay.refuse_until(seen_until)
        # addresses of our own socket never become candidates (a peer on another LAN with
        # the same private subnet lists "our" address: probing it would ping ourselves)
        self.prober.ignore.update(router.own_socket_addresses())
        #: the routes of this peer's connections (ordered: deterministic iteration)
        self.routes: dict[Route, None] = {}
        self._timer = DeadlineTimer(self.loop, self.prober.next_timer, self.service)
        self._closed = False
        # the punching a new connection starts, due in the next loop pass (see add_connection)
        self._punch: asyncio.Handle | None = None
        # why the routes are being re-decided (the prober's reason for its latest change)
        self._reason = "path changed"
        self._reflexive: Address | None = None
        #: when (loop time) the answers of this peer, our relay, last showed a new public
        #: address of ours (None: never); see ``Router.own_candidates``
        self.reflexive_since: float | None = None
        #: the relay said this peer is not connected to it: no CALL_ME_MAYBE will come, so
        #: direct packets go out at full TTL at once
        self.not_on_relay = False
        #: the largest packet the relay forwards to this peer, when it refused a larger one
        #: (the peer's own relay connection is smaller than ours); None: not limited
        self.relay_fit: int | None = None

    @property
    def path(self) -> PathInfo:
        return self.prober.current_path

    @property
    def is_relay(self) -> bool:
        """True if this peer is our relay (one of our connections to it is a relay connection)."""
        return any(r.is_relay for r in self.routes)

    # -- inputs ------------------------------------------------------------

    def add_connection(self, route: Route) -> None:
        """A connection to this peer is established: probe its address."""
        self.routes[route] = None
        route.peer = self
        now = self.loop.time()
        if route.direct_address is not None:
            self.add_candidates([route.direct_address])
        validated = route.owner.handshake_address
        if validated is not None:
            # the authenticated handshake crossed this address both ways: a live path now,
            # no signed PING/PONG needed first (QUIC's handshake RTT is its first sample)
            try:
                # accepted: the peer dialed from there, so it is the peer's newest address
                newest = not route.owner.is_client
                self.prober.handshake_validated(
                    validated, route.owner.smoothed_rtt, now, newest=newest, size=route.owner.handshake_datagram_size
                )
            except ValueError:  # not an IP address
                log.debug("%s: address %s cannot be probed", self.node_id, validated)
        # the peer may have pinged before it knew us (its pings were dropped): ping now
        self.prober.reprobe(now)
        if route.is_relay:
            # relayed packets ride inside this connection's DATAGRAM frames: it needs
            # room for a full QUIC packet plus its own overhead, so grow it right away
            self.prober.request_size_search(now)
            self.send_call_me_maybe()
            self.service()
            return
        # the hole punching (CALL_ME_MAYBE, PINGs) starts in the next loop pass: what the
        # packet that completed or confirmed the handshake carried is handled first (a
        # dialer's first response, whose reader is woken by now, rides with HANDSHAKE_DONE)
        self._punch_soon()

    def _punch_soon(self) -> None:
        if self._punch is None and not self._closed:
            self._punch = self.loop.call_soon(self._start_punching)

    def _start_punching(self) -> None:
        self._punch = None
        if self._closed:
            return
        self.send_call_me_maybe()
        self.service()

    def add_candidates(self, addrs: list[Address]) -> None:
        for addr in addrs:
            try:
                self.prober.add_candidates([addr], self.loop.time())
            except ValueError:  # not an IP address
                log.debug("%s: address %s cannot be probed", self.node_id, addr)

    def require_datagram_size(self, size: int | None) -> None:
        """Our connection to this peer (a relay) needs ``size``-byte datagrams on its path (None: not).

        The prober searches that size first and keeps searching for it, with a short
        backoff, while the path does not carry it (see ``PathProber.require_size``).
        """
        self.prober.require_size(size, self.loop.time())
        self.service()

    def bulk_started(self) -> None:
        """A connection to this peer has sent a burst of packets: find larger datagram sizes."""
        if self.prober.request_size_search(self.loop.time()):
            self.service()

    def new_source(self, addr: Address) -> None:
        """QUIC packets of this peer arrived from ``addr``, which we do not send to: probe it."""
        if self.prober.path_state(addr) is None:
            self.add_candidates([addr])
            self.service()

    def send_call_me_maybe(self) -> bool:
        """Tell the peer, through the relay, where to ping us (if the relay takes packets)."""
        relay = self.router.relay
        if relay is None or not relay.can_send or not any(r.owner.established_at is not None for r in self.routes):
            return False  # before the handshake the peer would drop it (it does not know us yet)
        if self.is_relay:
            return False  # the relay itself
        own = self.router.own_candidates()
        if not own:
            return False
        transmit = self.prober.call_me_maybe(own, self.loop.time())
        return relay.send_signal(self.node_id, transmit.data)

    def transport_alive(self, addr: Address) -> None:
        """An authenticated QUIC packet of this peer arrived from ``addr`` (a route of ours)."""
        self.prober.transport_alive(addr, self.loop.time())

    def source_moved(self, route: Route) -> None:
        """``route``'s peer now sends from ``route.source``: follow it if it is a proven path.

        (An address not proven yet is probed: the connection reports it through
        :meth:`new_source`, and the PONG re-decides the routes.)
        """
        source = route.source
        if source is not None and self.prober.live_address(source) is not None:
            self._reason = "the peer sends from another proven path"
            self.update_routes()

    def remove_connection(self, route: Route) -> None:
        self.routes.pop(route, None)

    def disco_received(self, data: bytes, addr: Address | None) -> None:
        self.prober.receive(data, addr, self.loop.time())
        self.service()

    def timeouts(self, route: Route) -> None:
        """``route``'s connection saw repeated probe timeouts: check its path; drop large datagrams."""
        direct = route.direct
        now = self.loop.time()
        relay = self.router.relay
        base = self.router.config.max_datagram_size
        if direct is not None and relay is not None and relay.can_send and not route.is_relay:
            # only worth checking when there is somewhere else to go: without a relay,
            # failing the path would change nothing but stop its size search
            self.prober.suspect(direct, now)
        if route.owner.datagram_size <= base:
            self.service()
            return
        size = base
        if direct is None:
            self.prober.relay_black_hole(now)  # a size found through the relay: searched again later
        else:
            lowered = self.prober.size_black_hole(direct, now)
            # the base, or a size the owner needs (which the path carried and is checked for)
            size = self.prober.datagram_size(direct)
            if lowered:
                log.info("%s: large datagrams lost on %s:%d; back to %d bytes", self.node_id, *direct, size)
        route.owner.set_datagram_size(size)
        self.service()

    # -- driving the prober ------------------------------------------------

    def service(self) -> None:
        """Send what the prober has to send, apply path changes and sizes, re-arm the timer."""
        if self._closed:
            return
        now = self.loop.time()
        router = self.router
        prober = self.prober
        prober.punching = self._punching()
        # the peer opens its side when our CALL_ME_MAYBE reaches it through the relay: give
        # that about one relayed round trip before full-TTL pings can reach its router
        rtts = [r.owner.smoothed_rtt for r in self.routes if r.owner.established_at is not None]
        prober.punch_delay = min(max([prober.config.punch_delay, *rtts]), _MAX_PUNCH_DELAY)
        for transmit in prober.poll(now):
            if transmit.addr is not None:
                router.send_direct(transmit.data, transmit.addr, transmit.ttl)
            else:
                relay = router.relay
                if relay is None:
                    continue
                if transmit.relayed:  # a size probe: the way relayed QUIC packets go
                    relay.send_packet(self.node_id, transmit.data)
                else:
                    relay.send_signal(self.node_id, transmit.data)
        for event in self.prober.pop_events():
            self._path_changed(event)
        if prober.reflexive_addr != self._reflexive and self.is_relay:
            # the relay's answers show our public address (before, or without, OBSERVED_ADDR,
            # and after a rebinding whose OBSERVED_ADDR was lost)
            self._reflexive = prober.reflexive_addr
            self.reflexive_since = now
            router.own_addresses_changed()
        self.update_routes()
        # a path that answered works now: a connection sending on it stops backing off
        for addr in prober.pop_answered():
            for route in list(self.routes):
                route.answered(addr)
        self._timer.update()

    def relay_answered(self) -> None:
        """The relay takes packets (again): connections sending through it stop backing off."""
        for route in list(self.routes):
            route.answered(None)

    def _path_changed(self, event: PathChanged) -> None:
        self.router.stats.path_switches[event.new.kind] += 1
        self._reason = event.reason
        if self.router.relay is not None:
            log.info("path to %s: %s -> %s (%s)", self.node_id, event.old, event.new, event.reason)
        elif event.old.kind == "relay":  # no relay: "relay" only means "no path yet"; the first path is no news
            log.debug("path to %s: %s (%s)", self.node_id, event.new, event.reason)
        elif event.new.kind == "relay":
            log.info(
                "path to %s: %s lost, no other path (no relay configured) (%s)", self.node_id, event.old, event.reason
            )
        else:
            log.info("path to %s: %s -> %s (%s)", self.node_id, event.old, event.new, event.reason)

    def route_for(self, route: Route) -> tuple[Address | None, NodeId | None]:
        """Where ``route``'s packets go now (see :func:`asgi_p2p.paths.select.select_route`)."""
        relay = self.router.relay
        # a happy-eyeballs attempt on a private address goes there alone until its handshake
        # is done (the relay is raced by another connection)
        racing = route.on_link and route.owner.established_at is None
        # (a dial's first flight also goes to a relay that takes it as a first contact, before its
        # own handshake is done)
        relay_ok = (
            relay is not None
            and (relay.can_send or (route.first_contact and relay.takes_first_contact))
            and not route.is_relay
            and not racing
        )
        current = self.prober.current_path
        best = current.addr if current.kind == "direct" else None
        source = route.source
        if best is not None and source is not None and source != best and not route.owner.is_client:
            # an accepted connection follows its own peer's packets (QUIC's migration rule, RFC
            # 9000 section 9.3): they come from ``source``, a proven path, so its answers go
            # there, not to another path of the same node id (the peer moved and this
            # connection's packets show it first; or the same key is in use in two places)
            best = self.prober.live_address(source) or best
        elif relay_ok and route.relay_peer is not None and source is None and not route.owner.handshake_completed:
            # accepted through the relay with 0-RTT, its handshake not done: the peer's direct
            # path need not reach this connection's peer (it may be another process's with
            # the same key, since gone: a returning client's handshake and early answer would
            # go into a dead path until it times out), so it stays on the relay it came by
            best = None
        dialed = route.direct_address
        silent = False
        if relay_ok and dialed is not None and current.kind != "direct":
            state = self.prober.path_state(dialed)
            unanswered = self.prober.unanswered_for(dialed, self.loop.time())
            # probed and silent (a symmetric NAT's dialed port, a stale address): stop
            # duplicating every packet to it; the prober keeps trying and switches back
            silent = state is PathState.FAILED or (unanswered is not None and unanswered >= _FALLBACK_GRACE)
        return select_route(
            best=best,
            dialed=dialed,
            relay=self.node_id if relay_ok else None,
            careful=route.owner.is_client and self.prober.punching and not racing,
            dialed_silent=silent,
        )

    def update_routes(self) -> None:
        """Re-decide every connection's route and datagram size (after any change)."""
        base = self.router.config.max_datagram_size
        reason = self._reason
        relay = self.router.relay
        capacity = relay.max_packet_size if relay is not None and relay.can_send else None
        prober = self.prober
        # sizes above the base through the relay: searched with probes through it (the far
        # side's relay connection must carry them too), up to what our relay takes
        probe_capacity = relay.max_probe_packet_size if capacity is not None and relay is not None else None
        targets = [(route, self.route_for(route)) for route in list(self.routes)]
        # (only while a connection's packets go through the relay alone)
        relay_rtts = [
            r.owner.smoothed_rtt
            for r, (direct, relayed) in targets
            if direct is None and relayed is not None and r.owner.established_at is not None
        ]
        if relay_rtts:
            prober.relay_rtt = max(relay_rtts)
        prober.relay_capacity(probe_capacity if relay_rtts else None, self.loop.time())
        relay_size = prober.relayed_datagram_size
        if self.relay_fit is not None and relay_size > max(base, self.relay_fit):
            self.relay_fit = None  # a probe proved the far side carries more now
        for route, target in targets:
            direct, relayed = target
            size, below_base = select_datagram_size(
                target,
                direct_size=prober.datagram_size,
                base=base,
                relay_fit=self.relay_fit,
                established=route.owner.established_at is not None,
                relay_capacity=capacity,
                relay_size=relay_size,
            )
            why = reason
            if why == "path changed" and direct is None and route.direct is not None and relayed is not None:
                why = "direct address not answering"
            owner = route.owner
            if size < owner.datagram_size:
                owner.set_datagram_size(size, below_base=below_base)  # shrink before sending on the new route
                route.set_target(target, why)
            else:
                route.set_target(target, why)
                owner.set_datagram_size(size, below_base=below_base)
        self._reason = "path changed"

    def relay_too_large(self, fits: int) -> None:
        """The relay refused a packet to this peer as too large; ``fits`` bytes would pass."""
        fits = max(fits, MIN_RELAYED_SIZE)
        relayed = max(self.router.config.max_datagram_size, self.prober.relayed_datagram_size)
        self.prober.relay_refused(fits, self.loop.time())
        if fits >= relayed:
            self.service()  # a size probe (nothing we send is that large): the search goes on
            return
        if self.relay_fit is not None and self.relay_fit <= fits:
            return
        log.info("%s: the relay forwards at most %d-byte packets to it; shrinking", self.node_id, fits)
        self.relay_fit = fits
        self._reason = "relay: packets too large for the peer"
        self.update_routes()

    def dialing(self, route: Route) -> None:
        """``route``'s connection is being dialed: route its handshake."""
        self.routes[route] = None
        route.peer = self
        self.prober.punching = self._punching()
        route.direct, route.relayed = self.route_for(route)
        if route.direct is not None:
            # the handshake itself probes the address it goes to, and the peer, which does not
            # know us yet, would drop a PING there (after checking its signature): ping it
            # only if the handshake does not complete on it (add_connection probes then)
            self.prober.defer_ping(route.direct, self.loop.time() + _DIAL_PING_DEFER)

    def _punching(self) -> bool:
        """Punch carefully (openers, coordination) whenever a relay is configured.

        Connected or not yet: a dial that starts before our relay connected must not
        reach the peer's router first either.
        """
        if self.router.relay is None or self.not_on_relay:
            return False
        return not self.is_relay

    def relay_unknown_destination(self) -> None:
        """The relay does not know this peer: no signal will come; stop waiting for one."""
        if self.not_on_relay:
            return
        log.info("%s: not on our relay; direct packets at full TTL", self.node_id)
        self.not_on_relay = True
        self.prober.punching = False
        self.prober.reprobe(self.loop.time())
        self.service()

    def close(self) -> None:
        self._closed = True
        self._timer.cancel()
        if self._punch is not None:
            self._punch.cancel()
            self._punch = None
        self.routes.clear()
