"""Configuration: a dataclass with defaults, overridable from ``ASGI_P2P_*`` variables."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import InvalidConfiguration

__all__ = ["LIMITS", "Choice", "Limit", "NetworkConfig"]

ENV_PREFIX = "ASGI_P2P_"
#: The longest timeout or interval a setting may have, in seconds (one day).
MAX_SECONDS = 86400.0
#: The largest UDP payload (IPv4: 65535 - 8 - 20).
MAX_UDP_PAYLOAD = 65507
#: The largest flow-control window or send buffer, in bytes (1 GiB).
MAX_WINDOW = 1 << 30


@dataclass(frozen=True)
class Limit:
    """The values a numeric setting may take: ``low``..``high`` (``low`` excluded if
    ``open_low``), or exactly 0 if ``zero_is_off``; integers only if ``integer``."""

    low: float
    high: float
    integer: bool = True
    open_low: bool = False
    zero_is_off: bool = False
    unit: str = ""

    def _span(self) -> str:
        if self.integer:
            return f"{int(self.low)}..{int(self.high)}"
        return f"{'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"

    def range_text(self) -> str:
        """The allowed range in short, e.g. ``1..65536``, ``(0, 86400]``, ``0 (off) or (0, 86400]``."""
        return f"0 (off) or {self._span()}" if self.zero_is_off else self._span()

    def describe(self) -> str:
        """The allowed values in words, e.g. ``a finite number of seconds in (0, 86400]``."""
        what = "a whole number" if self.integer else "a finite number"
        unit = f" of {self.unit}" if self.unit else ""
        text = f"{what}{unit} in {self._span()}"
        return f"0 (off) or {text}" if self.zero_is_off else text

    def check(self, name: str, value: object, where: str = "") -> None:
        """Raise :class:`InvalidConfiguration` naming ``name`` unless ``value`` is allowed."""
        ok_type = isinstance(value, int) if self.integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type:
            raise InvalidConfiguration(
                f"{where}{name} must be {self.describe()}, got {value!r} ({type(value).__name__})", setting=name
            )
        assert isinstance(value, (int, float))
        if self.zero_is_off and value == 0:
            return
        if not math.isfinite(value) or not (
            (self.low < value if self.open_low else self.low <= value) and value <= self.high
        ):
            raise InvalidConfiguration(f"{where}{name} must be {self.describe()}, got {value!r}", setting=name)


@dataclass(frozen=True)
class Choice:
    """The values a text setting may take: exactly one of ``values``."""

    values: tuple[str, ...]
    #: text settings are read from the environment as they are (stripped), never as numbers
    integer = False

    def range_text(self) -> str:
        """The allowed values in short, e.g. ``reno, cubic``."""
        return ", ".join(self.values)

    def describe(self) -> str:
        """The allowed values in words, e.g. ``one of 'reno', 'cubic'``."""
        return "one of " + ", ".join(repr(v) for v in self.values)

    def check(self, name: str, value: object, where: str = "") -> None:
        """Raise :class:`InvalidConfiguration` naming ``name`` unless ``value`` is allowed."""
        if not isinstance(value, str):
            raise InvalidConfiguration(
                f"{where}{name} must be {self.describe()}, got {value!r} ({type(value).__name__})", setting=name
            )
        if value not in self.values:
            raise InvalidConfiguration(f"{where}{name} must be {self.describe()}, got {value!r}", setting=name)


def _seconds(*, zero_is_off: bool = False) -> Limit:
    return Limit(0, MAX_SECONDS, integer=False, open_low=True, zero_is_off=zero_is_off, unit="seconds")


#: The allowed values of every :class:`NetworkConfig` field (the receive windows must
#: also be at least ``max_datagram_size``, and each ceiling in :data:`CEILINGS` at least
#: its starting value).
LIMITS: dict[str, Limit | Choice] = {
    "max_message_size": Limit(1, 2**32 - 1, unit="bytes"),  # the 4-byte length prefix
    "connect_timeout": _seconds(),
    "idle_timeout": _seconds(),
    "keepalive_interval": _seconds(zero_is_off=True),
    "max_connections": Limit(1, 1 << 20),
    "max_handshaking": Limit(1, 1 << 20),
    "max_handshaking_per_address": Limit(1, 1 << 20),
    "max_connections_per_address": Limit(1, 1 << 20),
    "max_connections_per_node": Limit(1, 1 << 20),
    "handshake_rate_per_address": Limit(0, 1e6, integer=False, open_low=True, zero_is_off=True, unit="per second"),
    "handshake_timeout": _seconds(),
    "retry_token_lifetime": _seconds(),
    "stream_send_buffer": Limit(1, MAX_WINDOW, unit="bytes"),
    "stream_receive_window": Limit(1200, MAX_WINDOW, unit="bytes"),
    "max_stream_send_buffer": Limit(1, MAX_WINDOW, unit="bytes"),
    "max_stream_receive_window": Limit(1200, MAX_WINDOW, unit="bytes"),
    "connection_receive_window": Limit(1200, MAX_WINDOW, unit="bytes"),
    "max_connection_receive_window": Limit(1200, MAX_WINDOW, unit="bytes"),
    "congestion_control": Choice(("reno", "cubic", "bbr")),
    "initial_congestion_window": Limit(2, 1024, unit="packets"),
    "max_streams": Limit(1, 1 << 16),
    "max_datagram_size": Limit(1200, MAX_UDP_PAYLOAD, unit="bytes"),
    "max_probe_datagram_size": Limit(0, MAX_UDP_PAYLOAD, unit="bytes"),
    "accept_queue_size": Limit(1, 1 << 16),
    "punch_ttl": Limit(0, 255),
    "udp_offload": Choice(("gro", "gso+gro", "off")),
    "relay_plane": Choice(("on", "off")),
    "relay_first_contact": Choice(("on", "off")),
    "max_websocket_message_size": Limit(1, MAX_WINDOW, unit="bytes"),
}
#: Default HTTP requests per second one peer (node id) may start, with bursts of twice that
#: (``H3Server(limit_peer_rate=...)``, ``serve --limit-peer-rate``).
DEFAULT_LIMIT_PEER_RATE = 500.0
#: Default HTTP requests (and WebSockets) one peer may have in flight at once
#: (``H3Server(limit_peer_concurrency=...)``, ``serve --limit-peer-concurrency``).
DEFAULT_LIMIT_PEER_CONCURRENCY = 100
#: The allowed values of ``limit_peer_rate`` and ``limit_peer_concurrency`` (0 or None: off).
PEER_RATE_LIMIT = Limit(0, 1e6, integer=False, open_low=True, zero_is_off=True, unit="requests per second")
PEER_CONCURRENCY_LIMIT = Limit(1, 1 << 20, zero_is_off=True, unit="requests")

#: Auto-tuned sizes: starting value -> the ceiling it may grow to (never below it).
CEILINGS: dict[str, str] = {
    "stream_send_buffer": "max_stream_send_buffer",
    "stream_receive_window": "max_stream_receive_window",
    "connection_receive_window": "max_connection_receive_window",
}


@dataclass(frozen=True)
class NetworkConfig:
    """Limits and timeouts of an endpoint.

    Every field can be set from the environment as ``ASGI_P2P_<FIELD NAME IN CAPITALS>``,
    for example ``ASGI_P2P_MAX_MESSAGE_SIZE=65536``.
    """

    #: Largest raw message accepted or sent, in bytes.
    max_message_size: int = 1024 * 1024
    #: Seconds to wait for a QUIC handshake.
    connect_timeout: float = 10.0
    #: Seconds without any packet after which a connection is closed.
    idle_timeout: float = 30.0
    #: Seconds without a packet either way after which a connection sends a keep-alive
    #: PING (the acceptor waits 1.5 times this, so of an idle pair only the dialer pings;
    #: 0 = off).
    keepalive_interval: float = 10.0
    #: Most simultaneous QUIC connections per endpoint past their handshake (established),
    #: plus the ones it dials; more are refused with a reason.  Accepted connections still
    #: in their handshake count against ``max_handshaking`` instead.
    max_connections: int = 1024
    #: Most accepted connections in their handshake from addresses not yet validated.  An
    #: Initial packet finding this pool full (or its address's share of it full, see
    #: ``max_handshaking_per_address``) is answered with a QUIC Retry, which keeps no
    #: state; a client that returns the Retry's token enters a second pool of the same
    #: size for validated sources (nodes the relay forwards count as validated).
    max_handshaking: int = 128
    #: Most accepted connections in their handshake per source address and pool (an IPv4
    #: address, an IPv6 /64, or a node forwarded by the relay).
    max_handshaking_per_address: int = 16
    #: Most accepted connections, handshaking or established, per source address; more
    #: are refused with a reason.
    max_connections_per_address: int = 128
    #: Most established connections with one node id (all its addresses and the relay
    #: together); more are closed after their handshake with a reason.
    max_connections_per_node: int = 16
    #: New handshakes accepted per second per source address (as ``max_handshaking_per_address``
    #: counts sources), with bursts of twice that; an address over it gets a Retry, or, once
    #: validated, a refusal with a reason (0 = off).  Validated and unvalidated Initials have
    #: separate budgets, so packets spoofing an address cannot use up its real owner's.
    handshake_rate_per_address: float = 32.0
    #: Seconds an accepted connection may take to complete its handshake; then it is
    #: dropped and its slot freed.
    handshake_timeout: float = 10.0
    #: Seconds a Retry token stays valid (a client returns it within a round trip and
    #: repeats it in its retransmissions).
    retry_token_lifetime: float = 10.0
    #: Unacknowledged bytes buffered per stream before ``send`` waits, at least (the
    #: buffer grows to two congestion windows, up to ``max_stream_send_buffer``).
    stream_send_buffer: int = 256 * 1024
    #: Ceiling of a stream's send buffer (set it equal to ``stream_send_buffer`` for a fixed
    #: size).
    max_stream_send_buffer: int = 16 * 1024 * 1024
    #: Bytes a peer may send on a stream beyond what the application has read, at
    #: first: the window doubles while the application reads a window in less than
    #: four round trips (auto-tuning), up to ``max_stream_receive_window``.
    stream_receive_window: int = 256 * 1024
    #: Ceiling of a stream's receive window (set it equal to ``stream_receive_window`` to turn
    #: auto-tuning off).
    max_stream_receive_window: int = 16 * 1024 * 1024
    #: Bytes a peer may send on a connection (all streams) beyond what the application
    #: has read, at first; auto-tuned like the stream window, and kept at least 1.5
    #: times the largest stream window, up to ``max_connection_receive_window``.
    connection_receive_window: int = 4 * 1024 * 1024
    #: Ceiling of the connection's receive window: the most unread bytes a peer can
    #: make this node hold per connection.
    max_connection_receive_window: int = 24 * 1024 * 1024
    #: Congestion controller: aioquic's ``"cubic"`` (default: faster than Reno on lossy paths)
    #: or ``"reno"``, both growing their window only while it limits sending, or ``"bbr"``
    #: (opt-in, model-based: far faster under random loss, level or slower without loss;
    #: docs/benchmarks.md, "BBR (opt-in)").
    congestion_control: str = "cubic"
    #: Packets the congestion window holds at first and after an idle restart (counted at most
    #: 1472 bytes each, so loopback's 16 KiB datagrams do not make a 1 MB window), sent paced
    #: over the first round trip (the handshake measured it).  64: one round trip of slow start
    #: less than the 32 quic-go and Chromium start with (RFC 9002 suggests 10, two more
    #: again); on the simulator a 10 MiB download over an 80 ms, 100 Mbit/s path went from
    #: 8.36 to 8.89 MB/s (docs/benchmarks.md, "Initial congestion window").
    initial_congestion_window: int = 64
    #: Most concurrent peer-opened bidirectional streams per connection.  100, the HTTP server's
    #: default per-peer limit (``DEFAULT_LIMIT_PEER_CONCURRENCY``) and quic-go's default: a client
    #: with more requests than that on one connection waits for stream credit instead of getting
    #: 429s for the requests past 100 that arrive in one burst.
    max_streams: int = DEFAULT_LIMIT_PEER_CONCURRENCY
    #: UDP payload size QUIC starts with and falls back to; every path must carry it
    #: (1200 is safe on any internet path).
    max_datagram_size: int = 1200
    #: Largest UDP payload the paths layer probes for on a direct path (RFC 8899); a
    #: connection grows its datagrams to the largest probed size the path carries.
    #: 0, or a value not above ``max_datagram_size``, turns probing off.
    max_probe_datagram_size: int = 16384
    #: Connections waiting in a listener's ``accept`` queue.
    accept_queue_size: int = 128
    #: IP TTL of hole-punching openers (0: off): while a relay is connected, the first
    #: packets to a peer's unconfirmed direct address go out with this TTL, which opens our
    #: own NAT's mapping but dies before the peer's router (2: one home router, then the
    #: ISP's first router drops it), so an unfiltered Linux router on the peer's side never
    #: sees our packets before its own host's (the conntrack port-remapping trap).
    punch_ttl: int = 2
    #: UDP offload on Linux, where the kernel offers it (checked per socket, with a fallback
    #: to one datagram per system call): ``"gro"`` lets the kernel hand over several
    #: datagrams of one sender per read (``UDP_GRO``); ``"gso+gro"`` also sends each run of
    #: same-size datagrams to one address in one system call (``UDP_SEGMENT``), which
    #: saves CPU in bulk but lost packets on the project's netns rig (where on the way is not
    #: pinned down; docs/benchmarks.md, "Many peers"), so it is not the default.  Both also
    #: send what an endpoint's transmit pass produced by ``sendmmsg`` (up to 64 datagrams to
    #: any destinations per system call).  ``"off"``: none of these.
    udp_offload: str = "gro"
    #: The relays' UDP data plane (:mod:`asgi_p2p.relay.plane`): ``"on"``: a node's relay
    #: clients forward packets as plain UDP datagrams beside the relay connection when the
    #: relay offers it (less CPU at every hop than DATAGRAM frames), and a relay server
    #: offers it; ``"off"``: relayed packets ride the relay connection's DATAGRAM frames
    #: only, and a relay offers no plane (for a firewall that drops the plane's datagrams).
    relay_plane: str = "on"
    #: First contact (:mod:`asgi_p2p.relay.first_contact`): ``"on"``: a fresh dial through
    #: the relay sends its end-to-end Initial to the relay at once, beside the relay
    #: connection's own handshake (one client-relay round trip off a fresh first response),
    #: and a relay server forwards such first contacts; ``"off"``: a client sends nothing
    #: before its relay handshake, and a relay drops first contacts.
    relay_first_contact: str = "on"
    #: Largest WebSocket message (all its frames together) this node accepts, as a server
    #: and as a client; a larger message, or a frame announcing more, closes the WebSocket
    #: with code 1009 (message too big).  The decoder holds at most this much of a message.
    max_websocket_message_size: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        for f in fields(self):
            LIMITS[f.name].check(f.name, getattr(self, f.name))
        for name in ("stream_receive_window", "connection_receive_window"):
            if getattr(self, name) < self.max_datagram_size:
                raise InvalidConfiguration(
                    f"{name} must be at least max_datagram_size ({self.max_datagram_size} bytes), "
                    f"so that one packet fits, got {getattr(self, name)}",
                    setting=name,
                )
        for start, ceiling in CEILINGS.items():
            low, high = getattr(self, start), getattr(self, ceiling)
            if high >= low:
                continue
            # blame the one that was changed (the defaults are consistent); both: the ceiling
            if high == _DEFAULTS[ceiling]:
                raise InvalidConfiguration(
                    f"{start} must be at most {ceiling} ({high} bytes), the size it may grow to, got {low}",
                    setting=start,
                )
            raise InvalidConfiguration(
                f"{ceiling} must be at least {start} ({low} bytes), the size it grows from, got {high}",
                setting=ceiling,
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> NetworkConfig:
        """Defaults, then ``ASGI_P2P_*`` variables, then ``overrides``.

        An invalid value raises :class:`InvalidConfiguration` naming the setting, the
        variable it came from (if it came from one) and the allowed range.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        raw_values: dict[str, str] = {}
        for f in fields(cls):
            var = ENV_PREFIX + f.name.upper()
            raw = env.get(var)
            if raw is None:
                continue
            limit = LIMITS[f.name]
            if isinstance(limit, Choice):
                values[f.name] = raw.strip()
                raw_values[f.name] = raw
                continue
            typ = int if limit.integer else float
            try:
                values[f.name] = typ(raw.strip().replace("_", ""))
            except ValueError:
                raise InvalidConfiguration(
                    f"{var}={raw!r} is not a valid {typ.__name__}: {f.name} must be {limit.describe()}",
                    setting=f.name,
                ) from None
            raw_values[f.name] = raw
        values.update(overrides)
        try:
            return cls(**values)
        except InvalidConfiguration as exc:
            name = exc.setting
            if name is not None and name in raw_values and name not in overrides:
                var = ENV_PREFIX + name.upper()
                raise InvalidConfiguration(f"{var}={raw_values[name]!r}: {exc}", setting=name) from None
            raise

    @property
    def datagram_size_ceiling(self) -> int:
        """The largest datagram size a connection may grow to (probing ceiling or the base size)."""
        return max(self.max_datagram_size, self.max_probe_datagram_size)

    def replace(self, **changes: Any) -> NetworkConfig:
        return dataclasses.replace(self, **changes)


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(NetworkConfig)}
