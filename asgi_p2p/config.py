"""Configuration: a dataclass with defaults, overridable from ``ASGI_P2P_*`` variables."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import InvalidConfiguration

__all__ = ["NetworkConfig"]

ENV_PREFIX = "ASGI_P2P_"


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
    #: Seconds an accepted connection may take to complete its handshake; then it is
    #: dropped and its slot freed.
    handshake_timeout: float = 10.0
    #: Seconds a Retry token stays valid (a client returns it within a round trip and
    #: repeats it in its retransmissions).
    retry_token_lifetime: float = 10.0
    #: Unacknowledged bytes buffered per stream before ``send`` waits.
    stream_send_buffer: int = 256 * 1024
    #: Bytes a peer may send on a stream beyond what the application has read.
    stream_receive_window: int = 256 * 1024
    #: Bytes a peer may send on a connection beyond what the application has read.
    connection_receive_window: int = 4 * 1024 * 1024
    #: Most concurrent peer-opened bidirectional streams per connection.
    max_streams: int = 128
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

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and value < 0:
                raise InvalidConfiguration(f"{f.name} must not be negative, got {value}")
        if self.max_datagram_size < 1200:
            raise InvalidConfiguration(
                f"max_datagram_size must be at least 1200 (QUIC minimum), got {self.max_datagram_size}"
            )
        if self.max_probe_datagram_size > 65507:
            raise InvalidConfiguration(
                f"max_probe_datagram_size must be at most 65507 (largest UDP payload), "
                f"got {self.max_probe_datagram_size}"
            )
        if self.max_datagram_size > 65507:
            raise InvalidConfiguration(f"max_datagram_size must be at most 65507, got {self.max_datagram_size}")
        for name in ("handshake_timeout", "retry_token_lifetime"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InvalidConfiguration(f"{name} must be a positive number of seconds, got {value}")
        if self.punch_ttl > 255:
            raise InvalidConfiguration(f"punch_ttl must be in 0..255, got {self.punch_ttl}")
        for name in (
            "max_message_size",
            "stream_send_buffer",
            "stream_receive_window",
            "max_streams",
            "max_connections",
            "max_handshaking",
            "max_handshaking_per_address",
            "max_connections_per_address",
            "accept_queue_size",
            "connect_timeout",
            "idle_timeout",
        ):
            if getattr(self, name) == 0:
                raise InvalidConfiguration(f"{name} must be positive")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> NetworkConfig:
        """Defaults, then ``ASGI_P2P_*`` variables, then ``overrides``.

        An invalid value raises :class:`InvalidConfiguration` naming the variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = ENV_PREFIX + f.name.upper()
            raw = env.get(var)
            if raw is None:
                continue
            typ = int if f.type in ("int", int) else float
            try:
                values[f.name] = typ(raw.strip().replace("_", ""))
            except ValueError:
                raise InvalidConfiguration(f"{var}={raw!r} is not a valid {typ.__name__}") from None
        values.update(overrides)
        try:
            return cls(**values)
        except InvalidConfiguration as exc:
            names = [ENV_PREFIX + k.upper() for k in values if k not in overrides and k in str(exc)]
            if names:
                raise InvalidConfiguration(f"{names[0]}: {exc}") from None
            raise

    @property
    def datagram_size_ceiling(self) -> int:
        """The largest datagram size a connection may grow to (probing ceiling or the base size)."""
        return max(self.max_datagram_size, self.max_probe_datagram_size)

    def replace(self, **changes: Any) -> NetworkConfig:
        return dataclasses.replace(self, **changes)
