"""The endpoint's paths layer for one peer: its disco prober, its paths, its connections.

Every peer we have (or are dialing) a connection with gets one :class:`PeerPaths`,
keyed by node id: disco packets from that node go to its
:class:`~asgi_p2p.paths.disco.PathProber`, whose timers run on the endpoint's
loop.  The prober probes the peer's direct addresses, measures RTT and how
large a datagram each path carries (padded PINGs, RFC 8899).

Each connection to the peer keeps one address for QUIC (see
``PeerConnection.address``); underneath, :meth:`PeerPaths.update_routes` decides
where its packets go:

* the prober's current direct path, once a probe was answered;
* else the address the connection was dialed to or accepted from, while that
  address is not known to be dead, *and* the relay if one is connected (both:
  the first packets get through whichever way works);
* else the relay; with neither, packets are counted and dropped.

A connection builds datagrams of the size its direct path carries, and of the
base size (``NetworkConfig.max_datagram_size``) whenever any of its packets
may go through the relay, whose DATAGRAM frames carry them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from ..identity import NodeId
from ..paths.prober import PathChanged, PathInfo, PathProber, PathState, ProberConfig
from ._deadline import DeadlineTimer

if TYPE_CHECKING:
    from .connection import PeerConnection
    from .endpoint import Endpoint

__all__ = ["PeerPaths"]

log = logging.getLogger("asgi_p2p.paths")

#: an unconfirmed direct address still gets copies of a connection's packets (next to
#: the relay) until it has been probed this long without an answer
_FALLBACK_GRACE = 3.0
#: upper bound of the delay between a punching opener and the first full-TTL ping
_MAX_PUNCH_DELAY = 1.0
#: a relay's TOO_LARGE never shrinks a connection's datagrams below this
_MIN_RELAYED_SIZE = 1000
#: the prober's defaults for keepalive and liveness (see ProberConfig)
_DISCO_KEEPALIVE = ProberConfig.keepalive_interval
_PATH_TIMEOUT = ProberConfig.path_timeout
#: the disco keepalive resumes this many QUIC keepalive intervals after the latest
#: authenticated QUIC packet from the peer on its current path
_TRANSPORT_QUIET_FACTOR = 1.5
#: stands in for QUIC's keepalive interval when it is off (0)
_IDLE_QUIC_KEEPALIVE = 10.0


class PeerPaths:
    """The paths of one peer and the connections that use them (driven by the endpoint)."""

    def __init__(
        self,
        endpoint: Endpoint,
        node_id: NodeId,
        rng: random.Random,
        *,
        clock_offset: float,
    ) -> None:
        cfg = endpoint.config
        # a disco keepalive goes out only when QUIC heard nothing from the peer for longer
        # than QUIC's own keepalive interval (plus a margin for its round trip)
        quiet = _TRANSPORT_QUIET_FACTOR * (cfg.keepalive_interval or _IDLE_QUIC_KEEPALIVE)
        self.endpoint = endpoint
        self.node_id = node_id
        self.loop = asyncio.get_running_loop()
        self.prober = PathProber(
            endpoint.secret_key,
            node_id,
            rng,
            config=ProberConfig(
                base_datagram_size=cfg.max_datagram_size,
                max_datagram_size=cfg.datagram_size_ceiling,
                size_search_on_demand=True,
                punch_ttl=cfg.punch_ttl,
                # QUIC traffic on the current path (at least its keepalives) stands in for the
                # signed disco keepalive: an idle pair of nodes exchanges one QUIC PING and its
                # ACK per keepalive interval instead of that plus a PING/PONG pair each way
                transport_quiet=quiet,
                path_timeout=max(_PATH_TIMEOUT, quiet + 2 * _DISCO_KEEPALIVE),
            ),
            clock_offset=clock_offset,
        )
        # addresses of our own socket never become candidates (a peer on another LAN with
        # the same private subnet lists "our" address: probing it would ping ourselves)
        self.prober.ignore.update(endpoint._own_socket_addresses())
        self.connections: dict[PeerConnection, None] = {}
        self._timer = DeadlineTimer(self.loop, self.prober.next_timer, self.service)
        self._closed = False
        # why the routes are being re-decided (the prober's reason for its latest change)
        self._reason = "path changed"
        self._reflexive: tuple[str, int] | None = None
        #: the relay said this peer is not connected to it: no CALL_ME_MAYBE will come, so
        #: direct packets go out at full TTL at once
        self.not_on_relay = False
        #: the largest packet the relay forwards to this peer, when it refused a larger one
        #: (the peer's own relay connection is smaller than ours); None: not limited
        self.relay_fit: int | None = None

    @property
    def path(self) -> PathInfo:
        return self.prober.current_path

    # -- inputs ------------------------------------------------------------

    def add_connection(self, conn: PeerConnection) -> None:
        """A connection to this peer is established: probe its address."""
        self.connections[conn] = None
        now = self.loop.time()
        if conn.direct_address is not None:
            self.add_candidates([conn.direct_address])
        # the peer may have pinged before it knew us (its pings were dropped): ping now
        self.prober.reprobe(now)
        if conn.is_relay_connection:
            # relayed packets ride inside this connection's DATAGRAM frames: it needs
            # room for a full QUIC packet plus its own overhead, so grow it right away
            self.prober.request_size_search(now)
        self.send_call_me_maybe()
        self.service()

    def add_candidates(self, addrs: list[tuple[str, int]]) -> None:
        for addr in addrs:
            try:
                self.prober.add_candidates([addr], self.loop.time())
            except ValueError:  # not an IP address
                log.debug("%s: address %s cannot be probed", self.node_id.fmt_short(), addr)

    def bulk_started(self) -> None:
        """A connection to this peer has sent a burst of packets: find larger datagram sizes."""
        if self.prober.request_size_search(self.loop.time()):
            self.service()

    def new_source(self, addr: tuple[str, int]) -> None:
        """QUIC packets of this peer arrived from ``addr``, which we do not send to: probe it."""
        if self.prober.path_state(addr) is None:
            self.add_candidates([addr])
            self.service()

    def send_call_me_maybe(self) -> bool:
        """Tell the peer, through the relay, where to ping us (if a relay is connected)."""
        relay = self.endpoint.relay
        if relay is None or not relay.connected or not any(c.established_at is not None for c in self.connections):
            return False  # before the handshake the peer would drop it (it does not know us yet)
        if any(c.is_relay_connection for c in self.connections):
            return False  # the relay itself
        own = self.endpoint.own_candidates()
        if not own:
            return False
        transmit = self.prober.call_me_maybe(own, self.loop.time())
        return relay.send_signal(self.node_id, transmit.data)

    def transport_alive(self, addr: tuple[str, int]) -> None:
        """An authenticated QUIC packet of this peer arrived from ``addr`` (a route of ours)."""
        self.prober.transport_alive(addr, self.loop.time())

    def remove_connection(self, conn: PeerConnection) -> None:
        self.connections.pop(conn, None)

    def disco_received(self, data: bytes, addr: tuple[str, int] | None) -> None:
        self.prober.receive(data, addr, self.loop.time())
        self.service()

    def timeouts(self, conn: PeerConnection) -> None:
        """``conn`` saw repeated probe timeouts: check its path; drop large datagrams."""
        direct = conn._route[0]
        now = self.loop.time()
        relay = self.endpoint.relay
        if direct is not None and relay is not None and relay.connected and not conn.is_relay_connection:
            # only worth checking when there is somewhere else to go: without a relay,
            # failing the path would change nothing but stop its size search
            self.prober.suspect(direct, now)
        if conn.datagram_size <= self.endpoint.config.max_datagram_size:
            self.service()
            return
        if direct is not None and self.prober.size_black_hole(direct, now):
            log.info(
                "%s: large datagrams lost on %s:%d; back to %d bytes",
                self.node_id.fmt_short(),
                *direct,
                self.endpoint.config.max_datagram_size,
            )
        conn.set_datagram_size(self.endpoint.config.max_datagram_size)
        self.service()

    # -- driving the prober ------------------------------------------------

    def service(self) -> None:
        """Send what the prober has to send, apply path changes and sizes, re-arm the timer."""
        if self._closed:
            return
        now = self.loop.time()
        relay = self.endpoint.relay
        prober = self.prober
        prober.punching = self._punching()
        # the peer opens its side when our CALL_ME_MAYBE reaches it through the relay: give
        # that about one relayed round trip before full-TTL pings can reach its router
        rtts = [c.smoothed_rtt for c in self.connections if c.established_at is not None]
        prober.punch_delay = min(max([prober.config.punch_delay, *rtts]), _MAX_PUNCH_DELAY)
        for transmit in prober.poll(now):
            if transmit.addr is not None:
                self.endpoint._send_direct(transmit.data, transmit.addr, transmit.ttl)
            else:
                relay = self.endpoint.relay
                if relay is not None:
                    relay.send_signal(self.node_id, transmit.data)
        for event in self.prober.pop_events():
            self._path_changed(event)
        if prober.reflexive_addr != self._reflexive and any(c.is_relay_connection for c in self.connections):
            # the relay's answers show our public address (before, or without, OBSERVED_ADDR)
            self._reflexive = prober.reflexive_addr
            self.endpoint._own_addresses_changed()
        self.update_routes()
        self._timer.update()

    def _path_changed(self, event: PathChanged) -> None:
        log.info("path to %s: %s -> %s (%s)", self.node_id.fmt_short(), event.old, event.new, event.reason)
        self._reason = event.reason

    def route_for(self, conn: PeerConnection) -> tuple[tuple[str, int] | None, NodeId | None]:
        """Where ``conn``'s packets go now: a direct address and/or this peer via the relay."""
        relay = self.endpoint.relay
        relay_ok = relay is not None and relay.connected and not conn.is_relay_connection
        via_relay = self.node_id if relay_ok else None
        current = self.prober.current_path
        if current.kind == "direct":
            return current.addr, None
        fallback = conn.direct_address
        if fallback is None:
            return None, via_relay
        if via_relay is not None and conn.is_client and self.prober.punching:
            # a dialed address is unconfirmed: it may be another node on our own LAN
            # (homes share private subnets), whose answer would fail the handshake, or
            # a NAT that a first full-TTL packet would make remap the peer's flow (the
            # conntrack trap).  The relay carries the connection until a signed probe
            # confirms the address.
            return None, via_relay
        if via_relay is not None:
            state = self.prober.path_state(fallback)
            unanswered = self.prober.unanswered_for(fallback, self.loop.time())
            if state is PathState.FAILED or (unanswered is not None and unanswered >= _FALLBACK_GRACE):
                # probed and silent (a symmetric NAT's dialed port, a stale address): stop
                # duplicating every packet to it; the prober keeps trying and switches back
                return None, via_relay
        return fallback, via_relay

    def update_routes(self) -> None:
        """Re-decide every connection's route and datagram size (after any change)."""
        base = self.endpoint.config.max_datagram_size
        reason = self._reason
        for conn in list(self.connections):
            route = self.route_for(conn)
            direct, relayed = route
            size = self.prober.datagram_size(direct) if direct is not None and relayed is None else base
            if relayed is not None and self.relay_fit is not None and conn.established_at is not None:
                # 1-RTT packets may be smaller than 1200 bytes (only Initials may not), so a
                # relay path that carries less still carries this connection
                size = min(size, self.relay_fit)
            why = reason
            if why == "path changed" and direct is None and conn._route[0] is not None and relayed is not None:
                why = "direct address not answering"
            below_base = size < base
            if size < conn.datagram_size:
                conn.set_datagram_size(size, below_base=below_base)  # shrink before sending on the new route
                conn._set_route(route, why)
            else:
                conn._set_route(route, why)
                conn.set_datagram_size(size, below_base=below_base)
        self._reason = "path changed"

    def relay_too_large(self, fits: int) -> None:
        """The relay refused a packet to this peer as too large; ``fits`` bytes would pass."""
        fits = max(fits, _MIN_RELAYED_SIZE)
        if self.relay_fit is not None and self.relay_fit <= fits:
            return
        log.info("%s: the relay forwards at most %d-byte packets to it; shrinking", self.node_id.fmt_short(), fits)
        self.relay_fit = fits
        self._reason = "relay: packets too large for the peer"
        self.update_routes()

    def dialing(self, conn: PeerConnection) -> None:
        """``conn`` is being dialed: route its handshake."""
        self.connections[conn] = None
        self.prober.punching = self._punching()
        conn._route = self.route_for(conn)

    def _punching(self) -> bool:
        """Punch carefully (openers, coordination) whenever a relay is configured.

        Connected or not yet: a dial that starts before our relay connected must not
        reach the peer's router first either.
        """
        if self.endpoint.relay is None or self.not_on_relay:
            return False
        return not any(c.is_relay_connection for c in self.connections)

    def relay_unknown_destination(self) -> None:
        """The relay does not know this peer: no signal will come; stop waiting for one."""
        if self.not_on_relay:
            return
        log.info("%s: not on our relay; direct packets at full TTL", self.node_id.fmt_short())
        self.not_on_relay = True
        self.prober.punching = False
        self.prober.reprobe(self.loop.time())
        self.service()

    def close(self) -> None:
        self._closed = True
        self._timer.cancel()
        self.connections.clear()
