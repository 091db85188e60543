"""Several relays: a home relay chosen by latency, re-homing, and peers' home relays on demand.

A node given a list of relay URLs (``Node.bind(relay_urls=[...])``) keeps a
:class:`~asgi_p2p.relay.client.RelayClient` to each of them (at most
:data:`MAX_RELAYS`), in the spirit of Tailscale's DERP home region and iroh's
home relay:

* **Measuring.**  Each relay connection's round-trip time is QUIC's RTT estimate
  of that connection (its handshake, then the ACK of every keepalive PING, one
  a ``keepalive_interval``), from the moment it takes packets (our Finished); the
  fleet samples it every ``tick`` seconds and ranks relays by the median of the last
  :attr:`HomeChoice.samples` samples.  A relay
  reached over TCP has no QUIC RTT and ranks after every measured one.
* **Choosing a home** (:class:`HomeChoice`, sans-I/O).  The first choice waits
  until every relay has answered or ``settle`` seconds passed.  Afterwards the
  home moves to a faster relay only when it is clearly faster (by ``ratio`` of the
  home's RTT and at least ``min_gain`` seconds) and the last move is ``hold``
  seconds old: the home does not flap.
* **Re-homing.**  A home relay that stays disconnected for ``grace`` seconds (its
  connection was lost and the reconnect did not succeed) is left for the best
  connected relay.  A relay that dies silently is noticed after the client's
  ``keepalive_timeout``; the move therefore happens within
  ``keepalive_timeout + grace + tick`` seconds (3 + 1 + 0.5 s by default).  The
  endpoint is told (``relay_state_changed``): it republishes its node address
  (ticket, directory, DNS) with the new home relay and re-signals every peer, so
  relayed connections go on through the new home after a gap; direct paths are
  not touched.
* **Routing.**  A packet to a peer goes through the relay that peer was last
  heard from, or the one named in the address it was dialed at; when that relay is
  down, through the home relay (the peer, told of our new home, answers there).
* **Peers' home relays on demand.**  Dialing a node whose home relay is not in the
  list connects to that relay (:meth:`RelayFleet.link_for`), at most
  ``max_extra`` such extra connections at a time; one unused for ``extra_idle``
  seconds is closed.

Nothing is shared between relays: each one knows only the nodes connected to it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConnectionClosed, InvalidConfiguration, NodeNotFound, P2PError, Timeout
from ..identity import NodeAddr, NodeId
from ..paths.link import ManagedRelayLink, RelayLink, RelayRefusal, RelaySink
from .client import RelayClient
from .url import RelayUrl

if TYPE_CHECKING:
    from ..endpoint.endpoint import Endpoint

__all__ = ["MAX_RELAYS", "ClientFactory", "FleetStats", "HomeChoice", "RelayFleet"]

log = logging.getLogger("asgi_p2p.relay")

#: The most relay URLs a node may be given.
MAX_RELAYS = 8
#: Peers looked up again at a time because the relay that reached them is gone.
MAX_LOOKUPS = 256
#: Seconds between lookups of one such peer, and until the fleet gives up on it.
LOOKUP_INTERVAL = 2.0
LOOKUP_GIVE_UP = 120.0
#: Seconds one lookup may take.
LOOKUP_TIMEOUT = 5.0
#: Peers whose relay the fleet remembers (least recently heard from forgotten first).
MAX_ROUTES = 4096

#: Makes one relay client: ``factory(endpoint, relay_url, sink, rng=rng)``.
ClientFactory = Callable[..., ManagedRelayLink]


@dataclass
class HomeChoice:
    """Which relay is home: lowest median RTT, with hysteresis (sans-I/O; times in seconds).

    Feed it :meth:`sample` and :meth:`set_connected`, ask :meth:`choose`.  Relays are
    named by any hashable key (the fleet uses their node ids), in the order given.
    """

    keys: Sequence[object]
    #: When the choice started (the loop's time).
    started: float
    #: RTT samples kept per relay (the median of these ranks it).
    samples: int = 5
    #: Samples a relay needs before the home moves to it voluntarily.
    min_samples: int = 3
    #: A relay must be this fraction faster than the home to become home ...
    ratio: float = 0.25
    #: ... and at least this many seconds faster.
    min_gain: float = 0.005
    #: Seconds after a move during which the home does not move to a faster relay.
    hold: float = 30.0
    #: Seconds a disconnected home is waited for before moving to another relay.
    grace: float = 1.0
    #: Seconds the first choice waits for every relay to answer.
    settle: float = 1.0
    home: object | None = None
    moved_at: float = float("-inf")
    _rtts: dict[object, collections.deque[float]] = field(default_factory=dict, repr=False)
    _up: dict[object, bool] = field(default_factory=dict, repr=False)
    _down_since: dict[object, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise InvalidConfiguration("HomeChoice needs at least one relay")
        if len(set(self.keys)) != len(self.keys):
            raise InvalidConfiguration("HomeChoice: relays must be distinct")
        if self.samples < 1 or not 1 <= self.min_samples <= self.samples:
            raise InvalidConfiguration("HomeChoice: need 1 <= min_samples <= samples")
        if not 0 <= self.ratio < 1 or self.min_gain < 0 or self.hold < 0 or self.grace < 0 or self.settle < 0:
            raise InvalidConfiguration("HomeChoice: need 0 <= ratio < 1 and min_gain, hold, grace, settle >= 0")
        for key in self.keys:
            self._rtts[key] = collections.deque(maxlen=self.samples)
            self._up[key] = False
            self._down_since[key] = self.started

    def sample(self, key: object, rtt: float) -> None:
        """One RTT measurement (seconds) of ``key``'s relay connection."""
        if rtt > 0:
            self._rtts[key].append(rtt)

    def set_connected(self, key: object, connected: bool, now: float) -> None:
        """``key``'s relay connection is (or is no longer) usable; a lost one forgets its samples."""
        if connected == self._up[key]:
            return
        self._up[key] = connected
        if not connected:
            self._down_since[key] = now
            self._rtts[key].clear()

    def connected(self, key: object) -> bool:
        return self._up[key]

    def latency(self, key: object) -> float | None:
        """The median of ``key``'s recent RTT samples (None before any)."""
        rtts = self._rtts[key]
        return statistics.median(rtts) if rtts else None

    def ranked(self) -> list[object]:
        """Connected relays, best first: measured by median RTT, then unmeasured in list order."""
        order = {key: i for i, key in enumerate(self.keys)}

        def rank(key: object) -> tuple[bool, float, int]:
            lat = self.latency(key)
            return (lat is None, lat if lat is not None else 0.0, order[key])

        return sorted((k for k in self.keys if self._up[k]), key=rank)

    def choose(self, now: float) -> object | None:
        """The home relay now (moving it if the rules say so; :attr:`home` and :attr:`moved_at` follow)."""
        ranked = self.ranked()
        home = self.home
        if home is not None and self._up[home]:
            measured = [k for k in ranked if len(self._rtts[k]) >= self.min_samples]
            if not measured or measured[0] == home or now - self.moved_at < self.hold:
                return home
            best = measured[0]
            best_lat, home_lat = self.latency(best), self.latency(home)
            if best_lat is None:
                return home
            if home_lat is not None and (best_lat > home_lat * (1 - self.ratio) or home_lat - best_lat < self.min_gain):
                return home
            return self._move(best, now)
        if home is not None and now - self._down_since[home] < self.grace:
            return home  # the client is reconnecting: give it a moment
        if not ranked:
            return home  # nothing better: keep it
        if home is None and now - self.started < self.settle:
            if any(not self._up[k] or not self._rtts[k] for k in self.keys):
                return None  # the first choice: wait for every relay to answer
        return self._move(ranked[0], now)

    def _move(self, key: object, now: float) -> object:
        self.home = key
        self.moved_at = now
        return key


@dataclass
class FleetStats:
    """Counters of a :class:`RelayFleet`."""

    #: Home relay moves (the first choice included).
    home_moves: int = 0
    #: Moves because the home relay was lost.
    rehomes: int = 0
    #: Moves to a clearly faster relay (the home was connected).
    faster: int = 0
    #: Extra relay connections opened (peers' home relays), closed when idle, refused (bound).
    extra_opened: int = 0
    extra_closed: int = 0
    extra_refused: int = 0


class _Via:
    """The sink of one relay client: notes which relay a peer was heard from, then tells the fleet's sink."""

    def __init__(self, fleet: RelayFleet, url: RelayUrl) -> None:
        self.fleet = fleet
        self.url = url
        self.relay_id = url.node_id

    def relay_packet_received(self, src: NodeId, packet: bytes) -> None:
        self.fleet._heard(src, self.url)
        self.fleet.sink.relay_packet_received(src, packet)

    def relay_signal_received(self, src: NodeId, payload: bytes) -> None:
        self.fleet._heard(src, self.url)
        self.fleet.sink.relay_signal_received(src, payload)

    def relay_state_changed(self, link: RelayLink) -> None:
        self.fleet._client_changed(self.relay_id)

    def relay_refused(self, dest: NodeId | None, refusal: RelayRefusal) -> None:
        self.fleet._refused(self.relay_id, dest, refusal)


class RelayFleet:
    """Several relay clients behind one :class:`~asgi_p2p.paths.link.RelayLink` (see the module docstring).

    Args:
        endpoint: the endpoint whose socket the relay connections use.
        relay_urls: the relays (1 to :data:`MAX_RELAYS`, distinct relay node ids).
        sink: the endpoint's paths layer (told about packets, signals, refusals, and the
            home relay's state: ``relay_state_changed(fleet)``).
        rng: randomness for the clients' reconnect jitter.
        client_factory: makes one relay client (default: :class:`RelayClient` with
            ``keepalive_interval`` and ``keepalive_timeout``).
        tick: seconds between RTT samples and checks of the home relay and idle extras.
        max_extra: relay connections beyond the list at a time (peers' home relays).
        extra_idle: seconds after which an unused extra relay connection is closed.
        hold, grace, settle: see :class:`HomeChoice`.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        relay_urls: Sequence[RelayUrl | str],
        sink: RelaySink,
        *,
        rng: random.Random | None = None,
        client_factory: ClientFactory | None = None,
        keepalive_interval: float = 1.0,
        keepalive_timeout: float = 3.0,
        tick: float = 0.5,
        max_extra: int = 4,
        extra_idle: float = 60.0,
        hold: float = 30.0,
        grace: float = 1.0,
        settle: float = 1.0,
    ) -> None:
        urls = [u if isinstance(u, RelayUrl) else RelayUrl.parse(u) for u in relay_urls]
        if not urls:
            raise InvalidConfiguration("relay_urls is empty; give at least one relay URL")
        if len(urls) > MAX_RELAYS:
            raise InvalidConfiguration(f"{len(urls)} relay URLs given; at most {MAX_RELAYS} are allowed")
        seen: dict[NodeId, RelayUrl] = {}
        for url in urls:
            if url.node_id in seen:
                raise InvalidConfiguration(
                    f"relay URLs {seen[url.node_id]} and {url} name the same relay {url.node_id}"
                )
            seen[url.node_id] = url
        if tick <= 0 or max_extra < 0 or extra_idle <= 0:
            raise InvalidConfiguration("RelayFleet: need tick > 0, max_extra >= 0 and extra_idle > 0")
        self.endpoint = endpoint
        self.sink = sink
        self.rng = rng if rng is not None else random.Random()
        self.urls = urls
        self.tick = tick
        self.max_extra = max_extra
        self.extra_idle = extra_idle
        self._factory: ClientFactory = (
            client_factory
            if client_factory is not None
            else functools.partial(
                RelayClient, keepalive_interval=keepalive_interval, keepalive_timeout=keepalive_timeout
            )
        )
        self.stats = FleetStats()
        self._hold, self._grace, self._settle = hold, grace, settle
        self.choice: HomeChoice | None = None
        #: the listed relays' clients, by relay node id, in list order
        self.clients: dict[NodeId, ManagedRelayLink] = {}
        #: relay connections opened for peers' home relays, by relay node id
        self.extra: dict[NodeId, ManagedRelayLink] = {}
        self._used: dict[NodeId, float] = {}
        #: the relay each peer is reached through (its home relay, or the one it was heard from)
        self._routes: collections.OrderedDict[NodeId, RelayUrl] = collections.OrderedDict()
        self._home: NodeId | None = None
        self._home_up = asyncio.Event()
        self._home_sending = asyncio.Event()
        self._reported: tuple[NodeId | None, bool, bool, object] = (None, False, False, None)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._extra_closing: set[asyncio.Task[None]] = set()
        #: since when each relay is down (listed and extra)
        self._down: dict[NodeId, float] = {}
        #: peers whose relay is gone, to look up again: since when, and when last asked
        self._lost_peers: dict[NodeId, tuple[float, float]] = {}
        self._lookup: asyncio.Task[None] | None = None

    # -- RelayLink ------------------------------------------------------------------

    @property
    def home(self) -> ManagedRelayLink | None:
        """The home relay's client (None until the first choice)."""
        return self.clients.get(self._home) if self._home is not None else None

    @property
    def relay_url(self) -> str:
        """The home relay's URL (before the first choice: the first one listed)."""
        home = self.home
        return home.relay_url if home is not None else str(self.urls[0])

    @property
    def connected(self) -> bool:
        home = self.home
        return home is not None and home.connected

    @property
    def can_send(self) -> bool:
        """The home relay takes packets (:attr:`RelayClient.can_send`: from its Finished on)."""
        home = self.home
        return home is not None and home.can_send

    @property
    def takes_first_contact(self) -> bool:
        home = self.home
        return home is not None and home.takes_first_contact

    @property
    def max_packet_size(self) -> int:
        home = self.home
        return home.max_packet_size if home is not None else 0

    @property
    def max_probe_packet_size(self) -> int:
        home = self.home
        return home.max_probe_packet_size if home is not None else 0

    @property
    def observed_address(self) -> tuple[str, int] | None:
        home = self.home
        return home.observed_address if home is not None else None

    @property
    def last_failure(self) -> P2PError | None:
        """Why no relay is usable: the home relay's reason, or (no home, or it names none)
        the first listed relay's that names one (None while the home relay is connected)."""
        home = self.home
        if home is not None and home.connected:
            return None
        if home is not None and home.last_failure is not None:
            return home.last_failure
        for link in self.clients.values():
            if link.last_failure is not None:
                return link.last_failure
        return None

    def send_packet(self, dest: NodeId, packet: bytes) -> bool:
        link = self._link(dest)
        return link is not None and link.send_packet(dest, packet)

    def send_signal(self, dest: NodeId, payload: bytes) -> bool:
        link = self._link(dest)
        return link is not None and link.send_signal(dest, payload)

    # -- routing ----------------------------------------------------------------------

    def relay_for(self, dest: NodeId) -> str | None:
        """The URL of the relay packets to ``dest`` go through now (None: no relay takes packets)."""
        link = self._link(dest, use=False)
        return link.relay_url if link is not None else None

    def link_for(self, dest: NodeId, relay_url: str | None) -> ManagedRelayLink:
        """The relay link that reaches ``dest``, whose home relay is ``relay_url`` (None: unknown).

        Packets to ``dest`` go through that relay from now on, or through the home relay
        while it is down.  A relay in the list is reached through the fleet itself (this
        object: its home relay may be the one to wait for).  A relay not in the list is
        connected to on demand (an extra connection, at most ``max_extra``), and that
        client is returned; :class:`NodeNotFound` when all extra connections are in use.
        """
        if relay_url is None:
            return self
        url = RelayUrl.parse(relay_url)
        rid = url.node_id
        if rid in self.clients:
            self._route(dest, url)
            return self
        link = self.extra.get(rid)
        if link is None:
            link = self._open_extra(url, dest)
        self._route(dest, url)
        self._used[rid] = self._now()
        return link

    def _open_extra(self, url: RelayUrl, dest: NodeId) -> ManagedRelayLink:
        if self._closing:
            raise ConnectionClosed("relay fleet is closed")
        if len(self.extra) >= self.max_extra:
            now = self._now()
            idle = [rid for rid in self.extra if now - self._used.get(rid, now) >= self.extra_idle]
            if not idle:
                self.stats.extra_refused += 1
                raise NodeNotFound(
                    f"node {dest} is reached through relay {url}, and node {self.endpoint.node_id} already keeps "
                    f"{len(self.extra)} extra relay connections in use (max_extra={self.max_extra})"
                )
            self._close_extra(min(idle, key=lambda rid: self._used.get(rid, now)), "to make room")
        link = self._make(url)
        self.extra[url.node_id] = link
        self._used[url.node_id] = self._now()
        self.stats.extra_opened += 1
        log.info("node %s: connecting to relay %s, the home relay of node %s", self.endpoint.node_id, url, dest)
        link.start()
        return link

    def _make(self, url: RelayUrl) -> ManagedRelayLink:
        return self._factory(self.endpoint, url, _Via(self, url), rng=random.Random(self.rng.getrandbits(64)))

    def _close_extra(self, rid: NodeId, why: str) -> None:
        link = self.extra.pop(rid, None)
        self._used.pop(rid, None)
        if link is None:
            return
        # the routes through it stay: a packet to one of those peers connects again
        self.stats.extra_closed += 1
        log.info("node %s: closing the connection to relay %s (%s)", self.endpoint.node_id, link.relay_url, why)
        task = asyncio.get_running_loop().create_task(link.close())
        self._extra_closing.add(task)
        task.add_done_callback(self._extra_closing.discard)

    def _route(self, dest: NodeId, url: RelayUrl) -> None:
        self._routes[dest] = url
        self._routes.move_to_end(dest)
        while len(self._routes) > MAX_ROUTES:
            self._routes.popitem(last=False)

    def _link(self, dest: NodeId, *, use: bool = True) -> ManagedRelayLink | None:
        url = self._routes.get(dest)
        if url is not None:
            rid = url.node_id
            link = self.clients.get(rid) or self.extra.get(rid)
            if link is None and use and not self._closing:
                # an extra relay closed while idle: connect again (the packet goes through the
                # home relay, or is lost, until it is up; QUIC retransmits)
                with contextlib.suppress(NodeNotFound):
                    link = self._open_extra(url, dest)
            if link is not None and link.can_send:
                if use:
                    self._used[rid] = self._now()
                return link
        home = self.home
        if home is not None and home.can_send:
            return home
        for key in self.choice.ranked() if self.choice is not None else ():
            assert isinstance(key, NodeId)
            return self.clients[key]
        return home

    def _heard(self, src: NodeId, url: RelayUrl) -> None:
        if src in self.clients or src in self.extra:
            return  # a relay itself
        self._route(src, url)
        self._used[url.node_id] = self._now()

    def _refused(self, rid: NodeId, dest: NodeId | None, refusal: RelayRefusal) -> None:
        if dest is None and rid != self._home:
            log.info("node %s: relay %s refused us: %s", self.endpoint.node_id, rid, refusal)
            return
        self.sink.relay_refused(dest, refusal)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Connect to every listed relay and start choosing the home relay (idempotent)."""
        if self._task is not None:
            return
        if self._closing:
            raise ConnectionClosed("relay fleet is closed")
        loop = asyncio.get_running_loop()
        keys = [url.node_id for url in self.urls]
        self.choice = HomeChoice(keys, loop.time(), hold=self._hold, grace=self._grace, settle=self._settle)
        for url in self.urls:
            self.clients[url.node_id] = self._make(url)
        for link in self.clients.values():
            link.start()
        self._task = loop.create_task(self._run(), name=f"relay fleet of {self.endpoint.node_id}")

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until a home relay is chosen and connected; :class:`Timeout` names every relay's state."""
        if not self.connected:
            await self._wait(self._home_up, timeout)

    async def wait_can_send(self, timeout: float | None = None) -> None:
        """Wait until :attr:`can_send` (a home relay is chosen and takes packets); errors as :meth:`wait_connected`."""
        if not self.can_send:
            await self._wait(self._home_sending, timeout)

    async def _wait(self, event: asyncio.Event, timeout: float | None) -> None:
        if self._closing:
            raise ConnectionClosed("relay fleet is closed")
        if self._task is None:
            raise ConnectionClosed("relay fleet not started; call start() first")
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            states = "; ".join(
                f"{link.relay_url}: " + ("connected" if link.connected else str(link.last_failure or "not connected"))
                for link in self.clients.values()
            )
            raise Timeout(f"no home relay connected within {timeout:g}s ({states})") from None

    async def close(self) -> None:
        """Close every relay connection."""
        if self._closing:
            return
        self._closing = True
        self._home_up.clear()
        self._home_sending.clear()
        for task in (self._task, self._lookup):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        links = [*self.clients.values(), *self.extra.values()]
        self.extra.clear()
        await asyncio.gather(*(link.close() for link in links), *self._extra_closing, return_exceptions=True)

    # -- measuring and choosing ---------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def _run(self) -> None:
        while not self._closing:
            self._sample()
            self._evaluate()
            self._close_idle()
            self._find_lost_peers()
            await asyncio.sleep(self.tick)

    def _sample(self) -> None:
        choice = self.choice
        assert choice is not None
        for rid, link in self.clients.items():
            conn = getattr(link, "connection", None)
            if conn is not None and link.can_send:
                choice.sample(rid, conn.smoothed_rtt)

    def _close_idle(self) -> None:
        now = self._now()
        for rid in [r for r in self.extra if now - self._used.get(r, now) >= self.extra_idle]:
            self._close_extra(rid, f"unused for {self.extra_idle:g}s")

    def _find_lost_peers(self) -> None:
        """Peers with a live connection whose relay has been down past ``grace``: look them up again.

        Their signed records (DNS, a directory) name their new home relay; the packets to
        them then go there (connecting to it on demand).  Needs the endpoint's discovery.
        """
        discovery = getattr(self.endpoint, "discovery", None)
        if discovery is None:
            return
        now = self._now()
        gone: set[NodeId] = set()
        for rid, link in [*self.clients.items(), *self.extra.items()]:
            if link.connected:
                self._down.pop(rid, None)
            elif now - self._down.setdefault(rid, now) >= self._grace:
                gone.add(rid)
        for rid in [r for r in self._down if r not in self.clients and r not in self.extra]:
            del self._down[rid]
        if gone:
            live = {c.remote_node_id for c in self.endpoint.connections if not c.closed}
            for peer, url in self._routes.items():
                if len(self._lost_peers) >= MAX_LOOKUPS:
                    break
                if url.node_id in gone and peer in live and peer not in self._lost_peers:
                    self._lost_peers[peer] = (now, float("-inf"))
        if self._lost_peers and (self._lookup is None or self._lookup.done()):
            self._lookup = asyncio.get_running_loop().create_task(self._look_up(discovery))

    async def _look_up(self, discovery: Any) -> None:
        for peer, (since, asked) in list(self._lost_peers.items()):
            now = self._now()
            if self._closing or now - asked < LOOKUP_INTERVAL:
                continue
            self._lost_peers[peer] = (since, now)
            old = self._routes.get(peer)
            try:
                async with asyncio.timeout(LOOKUP_TIMEOUT):
                    found = await discovery.resolve(peer)
                why = "its record names no other relay"
            except (P2PError, TimeoutError) as exc:
                found, why = None, str(exc) or "timed out"
            if self._closing:
                return
            url = None
            if isinstance(found, NodeAddr) and found.node_id == peer and found.relay_url is not None:
                url = RelayUrl.parse(found.relay_url)
            if url is not None and (old is None or url.node_id != old.node_id):
                del self._lost_peers[peer]
                try:
                    self.link_for(peer, str(url))
                except P2PError as exc:
                    log.warning(
                        "node %s: cannot reach node %s at its relay %s: %s", self.endpoint.node_id, peer, url, exc
                    )
                    continue
                log.info("node %s: node %s is now at relay %s", self.endpoint.node_id, peer, url)
            elif self._now() - since >= LOOKUP_GIVE_UP:
                del self._lost_peers[peer]
                if self._routes.get(peer) == old:
                    self._routes.pop(peer, None)
                log.warning(
                    "node %s: the relay of node %s is gone and no new one was found within %gs (%s)",
                    self.endpoint.node_id,
                    peer,
                    LOOKUP_GIVE_UP,
                    why,
                )

    def _client_changed(self, rid: NodeId) -> None:
        if self._closing:
            return
        if rid in self.clients:
            self._evaluate()
        if rid == self._home:
            self._report()

    def _evaluate(self) -> None:
        choice = self.choice
        if choice is None or self._closing:
            return
        now = self._now()
        for rid, link in self.clients.items():
            choice.set_connected(rid, link.can_send, now)
        before = self._home
        chosen = choice.choose(now)
        assert chosen is None or isinstance(chosen, NodeId)
        if chosen != before and chosen is not None:
            self._home = chosen
            self.stats.home_moves += 1
            new = self.clients[chosen]
            lat = choice.latency(chosen)
            rtt = f"rtt {lat * 1000:.1f} ms" if lat is not None else "rtt not measured"
            if before is None:
                log.info("node %s: home relay %s (%s)", self.endpoint.node_id, new.relay_url, rtt)
            elif not choice.connected(before):
                self.stats.rehomes += 1
                old = self.clients[before]
                why = old.last_failure or "disconnected"
                log.warning(
                    "node %s: home relay %s lost (%s); moved home to relay %s (%s)",
                    self.endpoint.node_id,
                    old.relay_url,
                    why,
                    new.relay_url,
                    rtt,
                )
            else:
                self.stats.faster += 1
                log.info(
                    "node %s: moved home from relay %s to relay %s (%s, was %.1f ms)",
                    self.endpoint.node_id,
                    self.clients[before].relay_url,
                    new.relay_url,
                    rtt,
                    (choice.latency(before) or 0.0) * 1000,
                )
        self._report()

    def _report(self) -> None:
        """Tell the endpoint when the home relay, its state or its observed address changed."""
        state = (self._home, self.connected, self.can_send, self.observed_address)
        for event, up in ((self._home_up, self.connected), (self._home_sending, self.can_send)):
            if up:
                event.set()
            else:
                event.clear()
        if state == self._reported:
            return
        self._reported = state
        if self._home is not None:
            self.sink.relay_state_changed(self)

    def __repr__(self) -> str:
        return f"<RelayFleet home={self.relay_url} relays={len(self.clients)} extra={len(self.extra)}>"
