"""The per-peer path prober: probing, RTT, path choice, expiry, fallback (sans-I/O).

:class:`PathProber` speaks the disco messages of :mod:`asgi_p2p.paths.disco`
with one peer: it pings the peer's candidate addresses, measures their RTT,
picks the best live direct path (the relay is the fallback), expires paths that
stop answering, and searches how large a datagram each live path carries
(padded PINGs, RFC 8899).  Bytes go in, datagrams (:class:`Transmit`) and path
changes (:class:`PathChanged`) come out.

Time: every method takes ``now`` in seconds from a monotonic clock (the running
loop's ``loop.time()``).  Timestamps that cross the network need a clock both
peers share, so the prober adds ``clock_offset`` to ``now`` (the router passes its
network's ``wall_clock_offset()``: the system clock read once on a real network, a
constant in the simulator).
Nothing here reads a clock or the global random generator.
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from ..errors import ProtocolError
from ..identity import NodeId, SecretKey
from ..net.addr import normalize_address
from ..net.base import Address
from .disco import (
    MAX_CALL_ME_MAYBE_ADDRS,
    MAX_DISCO_DATAGRAM,
    TX_ID_LEN,
    CallMeMaybe,
    DiscoMessage,
    Ping,
    Pong,
    ReplayGuard,
    open_packet,
    seal,
)
from .select import best_direct
from .stats import PathStats

__all__ = [
    "SIZE_STEPS",
    "PathChanged",
    "PathInfo",
    "PathProber",
    "PathState",
    "ProberConfig",
    "Transmit",
]

logger = logging.getLogger("asgi_p2p.paths.prober")

#: the class of a refused disco packet (:attr:`PathStats.disco_rejected`) by the prober's reason
_REJECT_CLASS = {
    "DiscoAuthError": "forged",
    "ProtocolError": "malformed",
    "bad-source": "malformed",
    "replay": "replayed",
    "stale": "stale",
}


@dataclass(frozen=True)
class ProberConfig:
    """Timers and bounds of a :class:`PathProber` (seconds)."""

    #: first retry delay of an unanswered probe; doubles per attempt up to ``probe_backoff_max``
    probe_interval: float = 0.5
    probe_backoff_max: float = 8.0
    #: unanswered probes before a candidate counts as failed (until re-probed)
    probe_attempts: int = 6
    #: pings on a live path, to measure RTT and keep NAT mappings open
    keepalive_interval: float = 5.0
    #: a live path with no PONG for this long is dead
    path_timeout: float = 15.0
    #: >0: authenticated transport packets from the peer on the current path (see
    #: :meth:`PathProber.transport_alive`) stand in for keepalive PONGs, and the next
    #: keepalive PING waits until this long after the latest of them (0: they do not count)
    transport_quiet: float = 0.0
    #: a PING not answered within this long is forgotten
    ping_timeout: float = 5.0
    #: while on the relay, failed candidates are retried this often
    reprobe_interval: float = 30.0
    #: a better direct path must have RTT below ``switch_ratio`` x the current one
    switch_ratio: float = 0.8
    max_candidates: int = 16
    max_outstanding: int = 64
    max_queued: int = 64
    #: accepted timestamp skew between the peers' shared clocks
    max_clock_skew: float = 120.0
    replay_capacity: int = 1024
    max_events: int = 256
    #: datagram size every path is assumed to carry (QUIC's minimum)
    base_datagram_size: int = 1200
    #: largest datagram size probed for on a live path; equal to the base: no size probing
    max_datagram_size: int = 1200
    #: a size probe not answered within max(this, 3 x the path's RTT) is lost
    size_probe_timeout: float = 0.25
    #: lost probes of one size before the path counts as not carrying that size
    size_probe_attempts: int = 3
    #: after a size search ended below ``max_datagram_size`` (its probes were lost), search
    #: upwards again after ``size_retry_min`` seconds, doubling per search that did not grow
    #: the size, up to ``size_research_interval`` (RFC 8899's PMTU_RAISE_TIMER, shortened); while
    #: the path is below :attr:`PathProber.size_target` (a size the owner needs), up to
    #: ``size_retry_max``.  A search probes each size at most ``size_probe_attempts`` times, so
    #: a path costs at most that many lost probes per interval.
    size_research_interval: float = 120.0
    size_retry_min: float = 1.0
    size_retry_max: float = 15.0
    #: a suspected path (see :meth:`PathProber.suspect`) is pinged at once and after a third
    #: and two thirds of this, and fails unless a PONG arrives within
    #: max(this, 3 x its RTT); it is pinged at once and again halfway
    suspect_timeout: float = 1.0
    #: after a suspected path failed, failed candidates are re-probed this soon (not
    #: ``reprobe_interval``): a false alarm on a lossy path costs seconds on the relay
    suspect_reprobe: float = 5.0
    #: True: live paths are size-probed only after :meth:`PathProber.request_size_search`
    #: (when there is bulk data to send), so short exchanges never pay for probes
    size_search_on_demand: bool = False
    #: CALL_ME_MAYBE signals per round (the first included): relay DATAGRAM frames are
    #: unreliable, so the signal is repeated on the probe schedule until a direct path is live
    call_me_maybe_attempts: int = 6
    #: IP TTL of the first PING to a new candidate while punching through a relay (0: off).  It
    #: opens our own NAT's mapping towards the peer but dies before the peer's router, so it
    #: cannot leave conntrack state there that would make the peer's NAT remap our flow.
    punch_ttl: int = 0
    #: full-TTL PINGs to a candidate start this long after its low-TTL opener (at least; the
    #: prober's ``punch_delay`` attribute may be raised to the relayed RTT)
    punch_delay: float = 0.1
    #: while punching, full-TTL PINGs to a candidate wait for the peer's CALL_ME_MAYBE (which
    #: says the peer is opening its side too) at most this long after the candidate was added
    punch_hold: float = 3.0

    def __post_init__(self) -> None:
        if not 1200 <= self.base_datagram_size <= MAX_DISCO_DATAGRAM:
            raise ValueError(f"base_datagram_size must be in 1200..{MAX_DISCO_DATAGRAM}, got {self.base_datagram_size}")
        if not self.base_datagram_size <= self.max_datagram_size <= MAX_DISCO_DATAGRAM:
            raise ValueError(
                f"max_datagram_size must be in base_datagram_size..{MAX_DISCO_DATAGRAM}, got {self.max_datagram_size}"
            )
        if self.size_probe_attempts < 1:
            raise ValueError("size_probe_attempts must be at least 1")
        if not 0 < self.size_retry_min <= self.size_retry_max <= self.size_research_interval:
            raise ValueError(
                "need 0 < size_retry_min <= size_retry_max <= size_research_interval, got "
                f"{self.size_retry_min}, {self.size_retry_max}, {self.size_research_interval}"
            )
        if self.call_me_maybe_attempts < 1:
            raise ValueError("call_me_maybe_attempts must be at least 1")
        if not 0 <= self.punch_ttl <= 255:
            raise ValueError(f"punch_ttl must be in 0..255, got {self.punch_ttl}")
        if self.transport_quiet < 0:
            raise ValueError(f"transport_quiet must not be negative, got {self.transport_quiet}")
        if self.transport_quiet and self.path_timeout < self.transport_quiet + self.keepalive_interval:
            raise ValueError(
                "path_timeout must leave room for a keepalive PING after transport_quiet: "
                f"{self.path_timeout} < {self.transport_quiet} + {self.keepalive_interval}"
            )


#: Datagram sizes a size search tries, smallest first, below the configured ceiling (which is
#: tried last): 1452 fits any 1500-byte Ethernet path (IPv6 + UDP headers), 8952 a 9000-byte
#: jumbo-frame LAN, 16384 and up loopback.
SIZE_STEPS = (1452, 4096, 8952, 16384, 32768, MAX_DISCO_DATAGRAM)
#: The source address a PONG to a PING that came through the relay names (it came from no address)
RELAYED_SOURCE: Address = ("0.0.0.0", 0)


class PathState(Enum):
    PROBING = "probing"
    LIVE = "live"
    FAILED = "failed"


@dataclass(frozen=True)
class PathInfo:
    """Where a peer's packets go now: ``direct`` (with address and RTT) or ``relay``."""

    kind: Literal["direct", "relay"]
    addr: Address | None = None
    rtt: float | None = None

    def __str__(self) -> str:
        if self.kind == "relay":
            return "relay"
        assert self.addr is not None and self.rtt is not None
        return f"direct {self.addr[0]}:{self.addr[1]} rtt={self.rtt * 1000:.1f}ms"


RELAY = PathInfo("relay")


@dataclass(frozen=True)
class PathChanged:
    """The chosen path of a peer changed."""

    at: float
    old: PathInfo
    new: PathInfo
    reason: str


@dataclass(frozen=True)
class Transmit:
    """A datagram to send: to ``addr`` directly, or to the peer via the relay if ``addr`` is None.

    ``ttl``: send with this IP TTL (hop limit) instead of the socket's default (a
    hole-punching opener, see ``ProberConfig.punch_ttl``).  ``relayed`` (with ``addr``
    None): send it as a packet through the relay, the way the connections' relayed packets
    go (a size probe of the relayed path), not as a signal.
    """

    data: bytes
    addr: Address | None
    ttl: int | None = None
    relayed: bool = False


@dataclass
class _Path:
    addr: Address
    state: PathState = PathState.PROBING
    srtt: float | None = None
    last_pong: float | None = None
    next_ping_at: float = 0.0
    attempts: int = 0
    failed_at: float | None = None
    stats: dict[str, int] = field(default_factory=lambda: {"pings": 0, "pongs": 0})
    # datagram size search (RFC 8899): confirmed size, smallest size known not to pass,
    # the outstanding probe, and when the search next acts (None: idle)
    size: int = 1200
    size_limit: int = MAX_DISCO_DATAGRAM + 1
    size_tx: bytes | None = None
    size_probing: int = 0
    size_attempts: int = 0
    size_next_at: float | None = None
    size_searched: bool = False
    # searches in a row that ended with lost probes and no growth (the re-search backoff)
    size_retries: int = 0
    # the needed size is being re-checked (a suspected black hole at that size): the path
    # keeps it unless size_probe_attempts probes of it are lost
    size_verifying: bool = False
    # set by suspect(): the path fails at this time unless a PONG arrives first; the
    # suspicion's later pings go out at these times
    suspect_until: float | None = None
    suspect_pings: tuple[float, ...] = ()
    # hole punching (punch_ttl): when the candidate was added, when its low-TTL opener went
    # out (None: not yet in this probe round), when the first PING since its last PONG went out
    created_at: float = 0.0
    opened_at: float | None = None
    unanswered_since: float | None = None


class PathProber:
    """Per-peer path probing and selection; bytes in, datagrams and events out.

    Drive it like aioquic: feed every disco packet from this peer to
    :meth:`receive`, call :meth:`poll` after each input and when
    :meth:`next_timer` is due, and send what it returns.  Read
    :attr:`current_path` before sending each QUIC packet, and
    :meth:`pop_events` for path changes.  The relay is the fallback path and is
    always assumed available; this class never probes it.
    """

    def __init__(
        self,
        secret_key: SecretKey,
        peer: NodeId,
        rng: random.Random,
        *,
        config: ProberConfig | None = None,
        clock_offset: float = 0.0,
        stats: PathStats | None = None,
    ) -> None:
        self.key = secret_key
        #: counters of the endpoint this prober belongs to (shared by all its probers)
        self.stats = stats if stats is not None else PathStats()
        self.peer = peer
        self.rng = rng
        self.config = config or ProberConfig()
        self.clock_offset = clock_offset
        self.replay = ReplayGuard(window=self.config.max_clock_skew, capacity=self.config.replay_capacity)
        self._paths: dict[Address, _Path] = {}
        self._outstanding: dict[bytes, tuple[Address, float]] = {}
        # tx_id -> (addr, size, sent); addr None: a size probe of the relayed path
        self._size_probes: dict[bytes, tuple[Address | None, int, float]] = {}
        self._queue: collections.deque[Transmit] = collections.deque()
        self._events: collections.deque[PathChanged] = collections.deque(maxlen=self.config.max_events)
        # paths that answered a PING since the last pop_answered (at most one entry each)
        self._answered: dict[Address, None] = {}
        self._current: _Path | None = None
        # when the peer last dialed us from a new address (see handshake_validated)
        self._moved_at: float | None = None
        self._next_reprobe: float | None = None
        #: addresses never taken as candidates (the owner's own socket addresses)
        self.ignore: set[Address] = set()
        #: our own address as the peer saw it in its latest PONG (like STUN)
        self.reflexive_addr: Address | None = None
        self._size_wanted = not self.config.size_search_on_demand
        #: a datagram size the owner needs on its paths (None: none), set by :meth:`require_size`
        self.size_target: int | None = None
        # our latest CALL_ME_MAYBE addresses, how many times it went out this round, when next
        self._cmm_addrs: tuple[Address, ...] | None = None
        self._cmm_sent = 0
        self._cmm_next_at: float | None = None
        #: when the peer's latest CALL_ME_MAYBE arrived (None: never)
        self.peer_call_me_maybe_at: float | None = None
        #: True while the peer can signal us through a relay: new candidates then get a
        #: low-TTL opener first, and full-TTL pings wait for the peer's CALL_ME_MAYBE
        #: (``punch_hold``).  Set by the owner (the endpoint: while its relay is connected).
        self.punching = False
        #: delay between a candidate's opener and its first full-TTL PING (the owner may
        #: raise it to about the relayed RTT, so that the peer's opener went out first)
        self.punch_delay = self.config.punch_delay
        #: why packets were refused, by reason (for metrics and tests)
        self.rejected: collections.Counter[str] = collections.Counter()
        # the relayed path's size search (see relay_capacity): the largest packet the relay takes
        # from us (None: no relayed path to search), the size confirmed, the smallest known not
        # to pass, the outstanding probe, and when the search next acts (None: idle)
        self._relay_cap: int | None = None
        self._relay_size = self.config.base_datagram_size
        self._relay_limit = MAX_DISCO_DATAGRAM + 1
        self._relay_tx: bytes | None = None
        self._relay_probing = 0
        self._relay_attempts = 0
        self._relay_retries = 0
        self._relay_searched = False
        self._relay_next_at: float | None = None
        #: the smoothed RTT through the relay (set by the owner; a relayed probe's timeout is 3x it)
        self.relay_rtt: float | None = None

    # -- state --------------------------------------------------------------

    @property
    def current_path(self) -> PathInfo:
        """``direct`` with address and smoothed RTT, or ``relay``."""
        path = self._current
        if path is None:
            return RELAY
        assert path.srtt is not None
        return PathInfo("direct", path.addr, path.srtt)

    def paths(self) -> dict[Address, tuple[PathState, float | None]]:
        """Every candidate with its state and smoothed RTT."""
        return {addr: (p.state, p.srtt) for addr, p in self._paths.items()}

    def live_address(self, addr: tuple[str, int]) -> Address | None:
        """``addr`` as the prober keys it (normalized) if it is a live path, else None."""
        try:
            path = self._paths.get(normalize_address(addr))
        except ValueError:
            return None
        return path.addr if path is not None and path.state is PathState.LIVE else None

    def path_state(self, addr: tuple[str, int]) -> PathState | None:
        """The state of the candidate ``addr`` (None if it is not a candidate)."""
        try:
            path = self._paths.get(normalize_address(addr))
        except ValueError:
            return None
        return None if path is None else path.state

    def datagram_size(self, addr: tuple[str, int] | None = None) -> int:
        """Largest datagram confirmed on the direct path to ``addr`` (default: the current path).

        The base size for an unknown path, a path that is not live, or the relay.
        """
        base = self.config.base_datagram_size
        if addr is None:
            path = self._current
        else:
            try:
                path = self._paths.get(normalize_address(addr))
            except ValueError:
                return base
        if path is None or path.state is not PathState.LIVE:
            return base
        return path.size

    def suspect(self, addr: tuple[str, int], now: float) -> bool:
        """The transport above saw repeated timeouts on ``addr``: check it now.

        The path is pinged at once (and twice more); unless a PONG arrives
        within max(``suspect_timeout``, 3 x RTT) it fails, and the prober falls
        back to another live path or the relay, instead of waiting out
        ``path_timeout``.  Returns False if ``addr`` is not a live path or is
        already suspected.
        """
        try:
            path = self._paths.get(normalize_address(addr))
        except ValueError:
            return False
        if path is None or path.state is not PathState.LIVE or path.suspect_until is not None:
            return False
        timeout = max(self.config.suspect_timeout, 3 * (path.srtt or 0.0))
        path.suspect_until = now + timeout
        path.suspect_pings = (now + timeout / 3, now + 2 * timeout / 3)
        path.next_ping_at = now
        logger.debug("path %s to %s suspected; failing it at %.3f unless it answers", addr, self.peer, now + timeout)
        return True

    def request_size_search(self, now: float) -> bool:
        """Start size searches on live paths (with ``size_search_on_demand``); False if already on."""
        if self._size_wanted:
            return False
        self._size_wanted = True
        for path in self._paths.values():
            if path.state is PathState.LIVE:
                self._research_now(path, now)  # from the size it carries (a handshake may have proven one)
        if self._relay_cap is not None and self._relay_cap > self._relay_size:
            self._relay_research(now)
        return True

    def require_size(self, size: int | None, now: float) -> None:
        """The owner needs datagrams of ``size`` bytes on its paths (None: no longer).

        A relay connection needs room for a full QUIC packet plus the relay's overhead.
        Live paths below ``size`` search at once, probing ``size`` first (even above
        ``max_datagram_size``: a need, not an optimisation), and while a path does not
        carry it, a search whose probes were lost is retried with backoff from
        ``size_retry_min`` to ``size_retry_max`` seconds, and at once when the path
        answers again after a silence (an outage ended).  Stating the same need again
        (a new connection that needs it) searches at once too, whatever the backoff.
        """
        if size is not None and not self.config.base_datagram_size < size <= MAX_DISCO_DATAGRAM:
            size = None  # the base size is always assumed; nothing larger than a probe can be
        restated = size == self.size_target
        self.size_target = size
        if size is None:
            return
        self._size_wanted = True  # a need does not wait for bulk data
        for path in self._paths.values():
            # a need stated again (a new relay connection to the same relay, after an outage)
            # cuts a pending search's backoff short too; a probe in flight is left to finish
            if path.state is PathState.LIVE and path.size < size and not (restated and path.size_tx is not None):
                self._research_now(path, now)

    def _research_now(self, path: _Path, now: float) -> None:
        """Search sizes on ``path`` again from its current size, starting now."""
        self._stop_size_probe(path)
        path.size_verifying = False
        path.size_limit = self._size_ceiling() + 1
        path.size_attempts = 0
        path.size_searched = False
        path.size_retries = 0
        path.size_next_at = now if self._size_ceiling() > self.config.base_datagram_size else None

    def size_black_hole(self, addr: tuple[str, int], now: float) -> bool:
        """Packets larger than the base size stopped arriving on ``addr``: fall back, search again.

        The search restarts at once from the base size and probes every size again
        (the one that failed included), so a false alarm costs a few probe round
        trips and a real black hole ends the search below the size it swallows.

        Returns True if the path's size was lowered (False if it already was the base).
        """
        path = self._paths.get(normalize_address(addr))
        base = self.config.base_datagram_size
        if path is None or path.size <= base:
            return False
        target = self.size_target
        if target is not None and path.size >= target:
            # the owner needs ``target`` (a relay connection: below it, it relays nothing) and
            # the path carried it: repeated probe timeouts on a lossy path are more often loss
            # than a shrunken path, so keep the needed size while a probe checks it
            return self._keep_needed_size(path, target, now)
        logger.info(
            "path %s to %s stopped carrying %d-byte datagrams; back to %d",
            path.addr,
            self.peer,
            path.size,
            base,
        )
        self._stop_size_probe(path)
        # search again from the base, the failed size included: the caller's evidence
        # (repeated QUIC probe timeouts) is as likely plain loss as a shrunken path, and
        # forbidding the size would keep a path that still carries it small for
        # size_research_interval (a relay connection would then carry no full-size QUIC
        # packet); a real black hole loses the probes, which sets the limit
        path.size_limit = self._size_ceiling() + 1
        path.size = base
        path.size_attempts = 0
        path.size_searched = False
        path.size_retries = 0
        path.size_next_at = now if path.state is PathState.LIVE else None
        return True

    def _keep_needed_size(self, path: _Path, target: int, now: float) -> bool:
        """A black hole is suspected on ``path``, which carried the needed size ``target``.

        Above ``target``: back to ``target`` (returns True), and the search goes on from
        there.  At ``target``: the size stays while ``size_probe_attempts`` probes of it go
        out at once; only if all are lost does the path fall to the base size (and search
        again with the short backoff of a needed size).  Returns False (size unchanged).
        """
        if path.size_verifying:
            return False  # being checked already
        self._stop_size_probe(path)
        path.size_attempts = 0
        path.size_searched = False
        path.size_retries = 0
        path.size_next_at = now if path.state is PathState.LIVE else None
        if path.size > target:
            logger.info(
                "path %s to %s stopped carrying %d-byte datagrams; back to %d (needed)",
                path.addr,
                self.peer,
                path.size,
                target,
            )
            path.size = target
            path.size_limit = self._size_ceiling() + 1
            return True
        logger.info(
            "path %s to %s may have stopped carrying %d-byte datagrams (needed): checking",
            path.addr,
            self.peer,
            target,
        )
        path.size_verifying = True
        return False

    def transport_alive(self, addr: Address, now: float) -> None:
        """An authenticated transport packet from the peer arrived from ``addr`` (normalized).

        With ``transport_quiet``, it counts on the current path like a keepalive PONG:
        the path stays live and the next keepalive PING waits until ``transport_quiet``
        after it, so a connection that carries traffic (or QUIC's own keepalives) costs
        no signed probes.  A QUIC packet proves the sender holds the session keys, as a
        signed PONG would; replays do not count (the caller reports only packets that
        advanced QUIC's largest received packet number).  A suspected path still needs a
        real PONG: the transport may hear the peer while the peer cannot hear us.
        """
        quiet = self.config.transport_quiet
        path = self._current
        if quiet <= 0 or path is None or path.addr != addr or path.suspect_until is not None:
            return
        path.last_pong = now
        if path.next_ping_at < now + quiet:
            path.next_ping_at = now + quiet

    def handshake_validated(
        self, addr: tuple[str, int], rtt: float, now: float, *, newest: bool = False, size: int | None = None
    ) -> None:
        """An authenticated transport handshake crossed ``addr`` both ways: it is a live path.

        The datagram that completed the handshake came from ``addr`` and the handshake's
        other flights went to it, so the peer (proven by TLS) sends and receives there, as
        a PONG to a signed PING would prove; ``rtt`` (the handshake's) is its first sample.

        ``newest``: the peer dialed us from ``addr`` (we accepted the connection), so it
        is where the peer is now: the path becomes the current one at once, whatever the
        RTTs, as a QUIC server follows a client's validated new address (RFC 9000
        section 9) and Tailscale's disco takes a peer's newest proven endpoint.  A peer
        that moved (a new network, a NAT rebinding) and dials again while its old
        connection is still live thus gets every packet at its new address; the old path
        stays a live candidate, pinged, until it fails (and is chosen again only if it is
        clearly faster: the usual hysteresis).  Without ``newest`` (we dialed ``addr``,
        our own choice) the lowest RTT decides as for any probed path.

        ``size``: the handshake's datagrams were this large both ways (a padded handshake,
        see ``PeerConnection.pad_handshake``): the path carries that size, as if a size
        probe of it had been answered, and a size search goes on from there.
        Raises ValueError if ``addr`` is not an IP address.
        """
        path = self._add_candidate(normalize_address(addr), now)
        if path is None:
            return
        was_live = path.state is PathState.LIVE
        if not was_live:
            path.srtt = rtt
            path.suspect_until = None
            path.state = PathState.LIVE
            self.stats.handshake_validated_paths += 1
            path.attempts = 0
            path.opened_at = now
            path.next_ping_at = now + self.config.keepalive_interval
            self._start_size_search(path, now)
        self._size_proven(path, size, now)
        if was_live and not newest:
            return
        path.last_pong = now  # a fresh proof, as a PONG
        path.unanswered_since = None
        if newest and self._current is not None and self._current is not path:
            self._moved_at = now
            self._take(path, now, "the peer dialed from a new address")
        else:
            self._choose(now, "handshake on the direct path")

    def _size_proven(self, path: _Path, size: int | None, now: float) -> None:
        """Authenticated datagrams of ``size`` bytes crossed ``path`` both ways: it carries that size."""
        if size is None or size <= path.size or size > MAX_DISCO_DATAGRAM:
            return
        self._stop_size_probe(path)
        path.size = size
        path.size_verifying = False
        path.size_attempts = 0
        path.size_retries = 0
        path.size_searched = False
        if path.size_limit <= size:
            path.size_limit = self._size_ceiling() + 1
        if path.size_next_at is not None:
            path.size_next_at = now  # the search goes on from the proven size
        logger.debug("path %s to %s carries %d-byte datagrams (the handshake's were)", path.addr, self.peer, size)

    def defer_ping(self, addr: tuple[str, int], until: float) -> None:
        """Send no PING to the probing candidate ``addr`` before ``until`` (a handshake probes it)."""
        try:
            path = self._paths.get(normalize_address(addr))
        except ValueError:
            return
        if path is not None and path.state is PathState.PROBING and path.attempts == 0:
            path.next_ping_at = max(path.next_ping_at, until)

    def pop_answered(self) -> list[Address]:
        """Paths that answered a PING (a valid PONG) since the last call, oldest first."""
        answered = list(self._answered)
        self._answered.clear()
        return answered

    def pop_events(self) -> list[PathChanged]:
        """Path changes since the last call, oldest first."""
        events = list(self._events)
        self._events.clear()
        return events

    # -- inputs -------------------------------------------------------------

    def add_candidates(self, addrs: Iterable[tuple[str, int]], now: float) -> None:
        """Learn addresses where the peer may be reachable (ticket, record, CALL_ME_MAYBE)."""
        for addr in addrs:
            self._add_candidate(normalize_address(addr), now)

    def reprobe(self, now: float) -> None:
        """Probe every non-live candidate again right away (new CALL_ME_MAYBE, network change)."""
        for path in self._paths.values():
            if path.state is not PathState.LIVE:
                self._restart(path, now)

    def call_me_maybe(self, own_addrs: Sequence[tuple[str, int]], now: float) -> Transmit:
        """A CALL_ME_MAYBE listing ``own_addrs``, to send to the peer through the relay."""
        addrs = tuple(normalize_address(a) for a in own_addrs[:MAX_CALL_ME_MAYBE_ADDRS])
        # repeated by poll() on the probe schedule until a direct path is live (it may be lost)
        self._cmm_addrs = addrs
        self._cmm_sent = 1
        self._cmm_next_at = now + self.config.probe_interval
        return Transmit(self._seal(CallMeMaybe(addrs), now), None)

    def receive(self, data: bytes, src: Address | None, now: float) -> None:
        """Handle a disco packet from ``src`` (None: it came through the relay).

        Malformed, forged, stale and replayed packets are dropped and counted in
        :attr:`rejected`; they never change any state.
        """
        try:
            packet = open_packet(data, self.key.node_id, self.peer)
        except ProtocolError as exc:
            self._reject(type(exc).__name__, str(exc))
            return
        message = packet.message
        if src is not None:
            try:
                src = normalize_address(src)
            except ValueError as exc:
                self._reject("bad-source", str(exc))
                return
        pong_for: tuple[Address, float] | None = None
        size_for: tuple[Address | None, int, float] | None = None
        if isinstance(message, Pong):
            # checked before the replay cache records it, so that a copy raced in from
            # another address cannot burn the genuine PONG
            pong_for = self._outstanding.get(message.tx_id)
            if pong_for is None:
                size_for = self._size_probes.get(message.tx_id)
                if size_for is None:
                    self._reject("unknown-tx", "PONG for a tx_id we did not send (or already answered)")
                    return
            sent_to = pong_for[0] if pong_for is not None else size_for[0] if size_for is not None else None
            if sent_to != src:
                self._reject("wrong-source", f"PONG for a ping sent to {sent_to} came from {src}")
                return
            if size_for is not None and message.size != size_for[1]:
                self._reject("size-mismatch", f"PONG echoes size {message.size}, the probe was {size_for[1]} bytes")
                return
        reason = self.replay.check(packet.digest, packet.timestamp, now + self.clock_offset)
        if reason is not None:
            self._reject("replay" if reason.startswith("replayed packet") else "stale", reason)
            return
        if isinstance(message, CallMeMaybe):
            self.peer_call_me_maybe_at = now
            for addr in message.addrs:
                self._add_candidate(addr, now)
            self.reprobe(now)
            return
        if src is None and isinstance(message, Ping):
            # a size probe of the relayed path: the (small) PONG goes back as a signal
            pong = Pong(message.tx_id, RELAYED_SOURCE, len(data))
            self._enqueue(Transmit(self._seal(pong, now), None))
            self.stats.disco_pings_answered += 1
            return
        if size_for is not None and size_for[0] is None:
            self.stats.disco_pongs_received += 1
            self._relay_size_pong(message.tx_id, size_for[1], now)
            return
        assert src is not None
        if isinstance(message, Ping):
            self._enqueue(Transmit(self._seal(Pong(message.tx_id, src, len(data)), now), src))
            self.stats.disco_pings_answered += 1
            path = self._paths.get(src)
            if path is None:
                # an authenticated ping from a new address is a candidate: this is what wins
                # when an early inbound packet made the peer's NAT pick a different port
                path = self._add_candidate(src, now)
                if path is not None:
                    path.opened_at = now  # it reached us: our NAT passes it, no opener needed
            elif path.state is PathState.FAILED:
                self._restart(path, now)
                path.opened_at = now
        elif size_for is not None:
            self.stats.disco_pongs_received += 1
            self._handle_size_pong(message, size_for, now)
        else:
            assert pong_for is not None
            self.stats.disco_pongs_received += 1
            self._handle_pong(message, pong_for, now)

    def poll(self, now: float) -> list[Transmit]:
        """Run timers due at ``now`` and return every datagram to send."""
        self._expire(now)
        cfg = self.config
        if self._current is None and self._next_reprobe is not None and now >= self._next_reprobe:
            self._next_reprobe = now + cfg.reprobe_interval
            for path in self._paths.values():
                if path.state is PathState.FAILED:
                    self._restart(path, now)
            if self._cmm_addrs is not None:  # the peer must punch again too
                self._cmm_sent = 0
                self._cmm_next_at = now
        if self._cmm_next_at is not None and now >= self._cmm_next_at:
            self._call_me_maybe_again(now)
        for path in self._paths.values():
            if path.state is PathState.FAILED or now < path.next_ping_at:
                continue
            if path.state is PathState.PROBING and self.punching and cfg.punch_ttl:
                if path.opened_at is None:
                    # open our own NAT's mapping first, with a packet that dies on the way
                    path.opened_at = now
                    path.next_ping_at = now + self.punch_delay
                    if self.peer_call_me_maybe_at is None:  # and not before the peer opens its side
                        path.next_ping_at = max(path.next_ping_at, path.created_at + cfg.punch_hold)
                    self._send_ping(path, now, ttl=cfg.punch_ttl)
                    continue
                if self.peer_call_me_maybe_at is None and now < path.created_at + cfg.punch_hold:
                    path.next_ping_at = path.created_at + cfg.punch_hold  # the peer has not opened yet
                    continue
            if path.state is PathState.PROBING:
                if path.attempts >= cfg.probe_attempts:
                    path.state = PathState.FAILED
                    path.failed_at = now
                    continue
                path.attempts += 1
                path.next_ping_at = now + min(cfg.probe_interval * 2 ** (path.attempts - 1), cfg.probe_backoff_max)
            elif path.suspect_until is not None and any(t > now for t in path.suspect_pings):
                path.next_ping_at = min(t for t in path.suspect_pings if t > now)
            else:
                path.next_ping_at = now + cfg.keepalive_interval
            self._send_ping(path, now)
        if self._size_ceiling() > cfg.base_datagram_size:
            for path in self._paths.values():
                if path.state is PathState.LIVE:
                    self._size_step(path, now)
        self._relay_size_step(now)
        out = list(self._queue)
        self._queue.clear()
        return out

    def next_timer(self) -> float | None:
        """When :meth:`poll` next has timer work, or None (call :meth:`poll` after every input too)."""
        times: list[float] = []
        for path in self._paths.values():
            if path.state is PathState.FAILED:
                continue
            times.append(path.next_ping_at)
            if path.state is PathState.LIVE and path.last_pong is not None:
                times.append(path.last_pong + self.config.path_timeout)
            if path.state is PathState.LIVE and path.size_next_at is not None:
                times.append(path.size_next_at)
            if path.state is PathState.LIVE and path.suspect_until is not None:
                times.append(path.suspect_until)
        if self._outstanding:
            times.append(min(sent for _addr, sent in self._outstanding.values()) + self.config.ping_timeout)
        if self._current is None and self._next_reprobe is not None:
            if any(p.state is PathState.FAILED for p in self._paths.values()):
                times.append(self._next_reprobe)
        if self._cmm_next_at is not None:
            times.append(self._cmm_next_at)
        if self._relay_next_at is not None:
            times.append(self._relay_next_at)
        return min(times) if times else None

    def unanswered_for(self, addr: tuple[str, int], now: float) -> float | None:
        """Seconds since the first PING to ``addr`` that no PONG followed (None: none pending)."""
        try:
            path = self._paths.get(normalize_address(addr))
        except ValueError:
            return None
        if path is None or path.unanswered_since is None:
            return None
        return now - path.unanswered_since

    # -- internals ----------------------------------------------------------

    def _seal(self, message: DiscoMessage, now: float) -> bytes:
        return seal(message, self.key, self.peer, now + self.clock_offset)

    def _reject(self, kind: str, reason: str) -> None:
        self.rejected[kind] += 1
        self.stats.disco_rejected[_REJECT_CLASS.get(kind, "unexpected")] += 1
        logger.debug("disco from %s dropped: %s", self.peer, reason)

    def _call_me_maybe_again(self, now: float) -> None:
        cfg = self.config
        if self._cmm_addrs is None or self._current is not None or self._cmm_sent >= cfg.call_me_maybe_attempts:
            self._cmm_next_at = None  # a direct path is live, or the round is over
            return
        self._cmm_sent += 1
        self._cmm_next_at = now + min(cfg.probe_interval * 2 ** (self._cmm_sent - 1), cfg.probe_backoff_max)
        self._enqueue(Transmit(self._seal(CallMeMaybe(self._cmm_addrs), now), None))

    def _enqueue(self, transmit: Transmit) -> None:
        if len(self._queue) < self.config.max_queued:
            self._queue.append(transmit)

    def _add_candidate(self, addr: Address, now: float) -> _Path | None:
        path = self._paths.get(addr)
        if path is not None:
            return path
        if addr in self.ignore:
            return None
        if len(self._paths) >= self.config.max_candidates:
            # make room: forget a failed candidate first, then one still probing, never a live one
            victims = [p for p in self._paths.values() if p.state is PathState.FAILED]
            if not victims:
                victims = [p for p in self._paths.values() if p.state is PathState.PROBING]
            if not victims:
                self._reject("too-many-candidates", f"candidate {addr} dropped: every slot holds a live path")
                return None
            victim = min(victims, key=lambda p: (p.failed_at or 0.0, p.attempts))
            self._stop_size_probe(victim)
            del self._paths[victim.addr]
        path = _Path(addr, next_ping_at=now, size=self.config.base_datagram_size, created_at=now)
        self._paths[addr] = path
        if self._next_reprobe is None:
            self._next_reprobe = now + self.config.reprobe_interval
        return path

    def _restart(self, path: _Path, now: float) -> None:
        path.state = PathState.PROBING
        path.attempts = 0
        path.failed_at = None
        path.next_ping_at = now
        path.opened_at = None  # a new punching round: open our NAT again first

    def _send_ping(self, path: _Path, now: float, ttl: int | None = None) -> None:
        if len(self._outstanding) >= self.config.max_outstanding:
            oldest = min(self._outstanding, key=lambda t: self._outstanding[t][1])
            del self._outstanding[oldest]
        tx_id = self.rng.randbytes(TX_ID_LEN)
        self._outstanding[tx_id] = (path.addr, now)
        path.stats["pings"] += 1
        self.stats.disco_pings_sent += 1
        if path.unanswered_since is None:
            path.unanswered_since = now
        self._enqueue(Transmit(self._seal(Ping(tx_id), now), path.addr, ttl))

    def _handle_pong(self, pong: Pong, sent: tuple[Address, float], now: float) -> None:
        addr, sent_at = sent
        del self._outstanding[pong.tx_id]
        path = self._paths.get(addr)
        if path is None:  # evicted meanwhile
            return
        sample = max(now - sent_at, 0.0)
        silent_since = path.unanswered_since
        path.srtt = sample if path.srtt is None else 0.875 * path.srtt + 0.125 * sample
        path.last_pong = now
        path.unanswered_since = None
        if (
            path.state is PathState.LIVE
            and silent_since is not None
            and now - silent_since >= max(self.config.suspect_timeout, 3 * path.srtt)
            and self._below_target(path)
            and path.size_tx is None
        ):
            # the path answers again after a silence (an outage, a partition that healed):
            # the probes lost meanwhile said nothing about sizes, so the needed size is
            # searched at once rather than after the backoff
            logger.debug("path %s to %s answers again: size search now", path.addr, self.peer)
            self._research_now(path, now)
        path.stats["pongs"] += 1
        if len(self._answered) < self.config.max_candidates:
            self._answered[path.addr] = None
        if path.suspect_until is not None:
            path.suspect_until = None
            path.next_ping_at = now + self.config.keepalive_interval
        if path.state is not PathState.LIVE:
            path.state = PathState.LIVE
            path.attempts = 0
            path.next_ping_at = now + self.config.keepalive_interval
            self._start_size_search(path, now)
        self.reflexive_addr = pong.observed
        self._choose(now, "direct path answered")

    def _expire(self, now: float) -> None:
        cfg = self.config
        # deadlines are compared as next_timer computes them (``sent + timeout``): in floating
        # point ``now - sent`` can stay below ``timeout`` at ``now == sent + timeout``, and the
        # timer would then fire at the same instant forever
        for tx_id in [t for t, (_a, sent) in self._outstanding.items() if now >= sent + cfg.ping_timeout]:
            del self._outstanding[tx_id]
        expired = suspected = False
        for path in self._paths.values():
            if path.state is not PathState.LIVE:
                continue
            timed_out = path.last_pong is not None and now >= path.last_pong + cfg.path_timeout
            if path.suspect_until is not None and now >= path.suspect_until:
                suspected = True
            elif not timed_out:
                continue
            path.suspect_until = None
            path.state = PathState.FAILED
            path.failed_at = now
            self._stop_size_probe(path)
            path.size = cfg.base_datagram_size
            path.size_verifying = False
            path.size_next_at = None
            expired = True
        if expired:
            self._choose(now, "path expired")
        if suspected and self._next_reprobe is not None:
            self._next_reprobe = min(self._next_reprobe, now + cfg.suspect_reprobe)

    def _choose(self, now: float, reason: str) -> None:
        """Pick the current direct path (see :func:`asgi_p2p.paths.select.best_direct`)."""
        current = self._current
        keep = None
        if current is not None and current.state is PathState.LIVE and current.srtt is not None:
            keep = (current.addr, current.srtt)
        moved = self._moved_at if keep is not None else None
        # after the peer moved (see handshake_validated), a path it had before competes with
        # the current one again only once it answered since: its RTT is from before the move
        live = [
            (p.addr, p.srtt)
            for p in self._paths.values()
            if p.state is PathState.LIVE
            and p.srtt is not None
            and (moved is None or p is current or (p.last_pong is not None and p.last_pong > moved))
        ]
        addr, better = best_direct(live, keep, self.config.switch_ratio)
        if keep is not None and addr == keep[0]:
            return  # hysteresis: keep the current path unless the new one is clearly better
        if better:
            reason = "lower RTT"
        best = self._paths[addr] if addr is not None else None
        if current is None and best is None:
            return
        self._take(best, now, reason)

    def _take(self, path: _Path | None, now: float, reason: str) -> None:
        """Make ``path`` (None: the relay) the current path; record the change."""
        old = self.current_path
        self._current = path
        new = self.current_path
        if path is None:
            self._next_reprobe = now + self.config.reprobe_interval
        if old != new:
            self._events.append(PathChanged(now, old, new, reason))
            logger.debug("path to %s: %s -> %s (%s)", self.peer, old, new, reason)

    # -- the relayed path's datagram size search ------------------------------

    @property
    def relayed_datagram_size(self) -> int:
        """Largest datagram a size probe through the relay confirmed to this peer (the base size
        until one did, and again after :meth:`relay_capacity` changed or :meth:`relay_refused`)."""
        return self._relay_size

    def relay_capacity(self, capacity: int | None, now: float) -> None:
        """Our relay takes packets of up to ``capacity`` bytes to this peer (None: no relayed path).

        Sizes above the base are searched through the relay as on a direct path (padded
        PINGs, now as relayed packets; the peer answers with a small PONG signal), after
        :meth:`request_size_search`; the owner passes None while no connection's packets go
        through the relay alone (a direct path carries them).  A probe the far side's relay connection cannot carry is
        lost (or refused by the relay: :meth:`relay_refused`), never a packet of a connection:
        they grow only to a size a probe confirmed.  A changed capacity starts afresh.
        """
        base = self.config.base_datagram_size
        cap = min(capacity, self.config.max_datagram_size) if capacity is not None else None
        if cap is not None and cap <= base:
            cap = None
        if cap == self._relay_cap:
            return
        self._relay_cap = cap
        self._relay_stop_probe()
        self._relay_size = base
        self._relay_next_at = None
        if cap is not None and self._size_wanted:
            self._relay_research(now)

    def relay_refused(self, fits: int, now: float) -> None:
        """The relay refused a packet to this peer as too large; ``fits`` bytes pass now.

        A probe (larger than the confirmed size) counts as lost, its size as not passing;
        a confirmed size it no longer carries falls back to the base, searched again later.
        """
        if fits < self._relay_size:
            logger.info("relayed path to %s: %d-byte packets refused by the relay", self.peer, self._relay_size)
            self.relay_black_hole(now)
            return
        if self._relay_tx is not None and self._relay_probing > fits:
            # the far side's relay connection does not carry it (yet: the relay searches larger
            # sizes on it once it forwards bulk there): that size again after a short backoff
            # (a refusal costs one small ERROR frame), doubling while refused, as lost probes do
            self._relay_stop_probe()
            self._relay_attempts = 0
            self._relay_searched = True
            base = max(self.config.size_probe_timeout, 3 * (self.relay_rtt or 0.0))
            delay = min(self.config.size_research_interval, base * 2.0 ** min(self._relay_retries, 30))
            self._relay_retries += 1
            self._relay_next_at = now + delay

    def relay_black_hole(self, now: float) -> None:
        """Relayed packets above the base size stopped arriving (the connection's probe timeouts,
        or the relay refused them): back to the base size, searched again after a backoff."""
        if self._relay_size <= self.config.base_datagram_size or self._relay_cap is None:
            return
        logger.info(
            "relayed path to %s stopped carrying %d-byte datagrams; back to %d",
            self.peer,
            self._relay_size,
            self.config.base_datagram_size,
        )
        self._relay_stop_probe()
        self._relay_size = self.config.base_datagram_size
        self._relay_searched = True
        self._relay_attempts = 0
        delay = min(
            self.config.size_research_interval, self.config.size_retry_min * 2.0 ** min(self._relay_retries, 30)
        )
        self._relay_retries += 1
        self._relay_next_at = now + delay

    def _relay_research(self, now: float) -> None:
        self._relay_stop_probe()
        assert self._relay_cap is not None
        self._relay_limit = self._relay_cap + 1
        self._relay_attempts = 0
        self._relay_retries = 0
        self._relay_searched = False
        self._relay_next_at = now

    def _relay_stop_probe(self) -> None:
        if self._relay_tx is not None:
            self._size_probes.pop(self._relay_tx, None)
            self._relay_tx = None

    def _relay_size_step(self, now: float) -> None:
        """Send the next size probe through the relay, or handle a lost one, when due."""
        cfg = self.config
        cap = self._relay_cap
        if cap is None or self._relay_next_at is None or now < self._relay_next_at:
            return
        if self._relay_tx is not None:  # the probe was lost
            self._relay_stop_probe()
            if self._relay_attempts >= cfg.size_probe_attempts:
                self._relay_limit = self._relay_probing
                self._relay_attempts = 0
        elif self._relay_searched:  # time to search upwards again
            self._relay_limit = cap + 1
            self._relay_searched = False
        size = next(
            (s for s in (*(s for s in SIZE_STEPS if s < cap), cap) if self._relay_size < s < self._relay_limit), None
        )
        if size is None:
            self._relay_searched = True
            self._relay_attempts = 0
            if self._relay_size >= cap:
                self._relay_next_at = None
                return
            # the far side's relay connection may grow (the relay searches its size in bulk)
            delay = min(cfg.size_research_interval, cfg.size_retry_min * 2.0 ** min(self._relay_retries, 30))
            self._relay_retries += 1
            self._relay_next_at = now + delay
            logger.debug(
                "relayed path to %s carries %d-byte datagrams (%d-byte probes lost); searching again in %.1fs",
                self.peer,
                self._relay_size,
                self._relay_limit,
                delay,
            )
            return
        if size != self._relay_probing:
            self._relay_attempts = 0
        self._relay_attempts += 1
        self._relay_probing = size
        tx_id = self.rng.randbytes(TX_ID_LEN)
        self._relay_tx = tx_id
        self._size_probes[tx_id] = (None, size, now)
        self.stats.disco_pings_sent += 1
        self._relay_next_at = now + max(cfg.size_probe_timeout, 3 * (self.relay_rtt or 0.0))
        self._enqueue(Transmit(self._seal(Ping.padded_to(tx_id, size), now), None, relayed=True))

    def _relay_size_pong(self, tx_id: bytes, size: int, now: float) -> None:
        del self._size_probes[tx_id]
        if tx_id != self._relay_tx:
            return  # a probe of an earlier search
        self._relay_tx = None
        if size > self._relay_size:
            self._relay_size = size
            self._relay_retries = 0
            logger.debug("relayed path to %s carries %d-byte datagrams", self.peer, size)
        self._relay_attempts = 0
        self._relay_next_at = now  # probe the next size right away

    # -- datagram size search (RFC 8899, "DPLPMTUD-lite") ----------------------

    def _size_ceiling(self) -> int:
        """The largest size a search tries: the configured ceiling, or the needed size above it."""
        return max(self.config.max_datagram_size, self.size_target or 0)

    def _below_target(self, path: _Path) -> bool:
        return self.size_target is not None and path.size < self.size_target

    def _start_size_search(self, path: _Path, now: float) -> None:
        self._stop_size_probe(path)
        path.size_verifying = False
        path.size = self.config.base_datagram_size
        path.size_limit = self._size_ceiling() + 1
        path.size_attempts = 0
        path.size_searched = False
        path.size_retries = 0
        probing = self._size_wanted and self._size_ceiling() > self.config.base_datagram_size
        path.size_next_at = now if probing else None

    def _stop_size_probe(self, path: _Path) -> None:
        if path.size_tx is not None:
            self._size_probes.pop(path.size_tx, None)
            path.size_tx = None

    def _next_size(self, path: _Path) -> int | None:
        """The next size to probe: the needed size first, then the steps, the ceiling last."""
        if path.size_verifying:
            return path.size
        target = self.size_target
        if target is not None and path.size < target < path.size_limit:
            return target
        ceiling = self.config.max_datagram_size
        for size in (*(s for s in SIZE_STEPS if s < ceiling), ceiling):
            if path.size < size < path.size_limit:
                return size
        return None

    def _size_step(self, path: _Path, now: float) -> None:
        """Send the next size probe, or handle a lost one, when the path's search is due."""
        cfg = self.config
        if path.size_next_at is None or now < path.size_next_at:
            return
        if path.size_tx is not None:  # the probe was lost
            self._stop_size_probe(path)
            if path.size_attempts >= cfg.size_probe_attempts:
                logger.debug("path %s to %s: %d-byte probes lost", path.addr, self.peer, path.size_probing)
                path.size_limit = path.size_probing
                path.size_attempts = 0
                if path.size_verifying:  # the needed size it carried is gone
                    path.size_verifying = False
                    logger.info(
                        "path %s to %s stopped carrying %d-byte datagrams; back to %d",
                        path.addr,
                        self.peer,
                        path.size,
                        cfg.base_datagram_size,
                    )
                    path.size = cfg.base_datagram_size
        elif path.size_searched:  # time to search upwards again
            path.size_limit = self._size_ceiling() + 1
            path.size_searched = False
        size = self._next_size(path)
        if size is None:
            path.size_searched = True
            path.size_attempts = 0
            if path.size >= self._size_ceiling():
                path.size_next_at = None
                return
            # probes were lost: search again after a bounded, growing delay (a lost probe may
            # be plain loss or an outage, not the path's limit); faster while below a needed size
            cap = cfg.size_retry_max if self._below_target(path) else cfg.size_research_interval
            delay = min(cap, cfg.size_retry_min * 2.0 ** min(path.size_retries, 30))
            path.size_retries += 1
            path.size_next_at = now + delay
            level = logging.INFO if self._below_target(path) else logging.DEBUG
            logger.log(
                level,
                "path %s to %s carries %d-byte datagrams (%d-byte probes lost%s); searching again in %.1fs",
                path.addr,
                self.peer,
                path.size,
                path.size_limit,
                f", {self.size_target} needed" if self._below_target(path) else "",
                delay,
            )
            return
        if size != path.size_probing:
            path.size_attempts = 0
        path.size_attempts += 1
        path.size_probing = size
        tx_id = self.rng.randbytes(TX_ID_LEN)
        path.size_tx = tx_id
        self._size_probes[tx_id] = (path.addr, size, now)
        self.stats.disco_pings_sent += 1
        path.size_next_at = now + max(cfg.size_probe_timeout, 3 * (path.srtt or 0.0))
        self._enqueue(Transmit(self._seal(Ping.padded_to(tx_id, size), now), path.addr))

    def _handle_size_pong(self, pong: Pong, sent: tuple[Address | None, int, float], now: float) -> None:
        addr, size, _sent_at = sent
        del self._size_probes[pong.tx_id]
        path = self._paths.get(addr) if addr is not None else None
        if path is None or path.size_tx != pong.tx_id:
            return  # a probe of an earlier search
        path.size_tx = None
        path.last_pong = now
        path.unanswered_since = None
        self.reflexive_addr = pong.observed  # what a keepalive PONG would tell (see handshake_validated)
        if path.suspect_until is not None:  # a big probe answered: the path works
            path.suspect_until = None
            path.next_ping_at = now + self.config.keepalive_interval
        if path.size_verifying and size >= path.size:
            path.size_verifying = False
            logger.info("path %s to %s still carries %d-byte datagrams", addr, self.peer, path.size)
        if size > path.size:
            path.size = size
            path.size_retries = 0  # progress: a later failure backs off from the start again
            logger.debug("path %s to %s carries %d-byte datagrams", addr, self.peer, size)
        path.size_attempts = 0
        path.size_next_at = now  # probe the next size right away
