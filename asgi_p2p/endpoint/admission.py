"""Who gets connection state: address validation (QUIC Retry) and the accepted-connection table.

An accepted connection costs memory (a ``QuicConnection`` with its TLS state, tens of
KiB) from its first Initial packet on, before the peer proved anything.  The endpoint
therefore gives state only to Initials that decrypt, and bounds the connections still
in their handshake (*half-open*), apart from the established ones:

* :class:`RetryTokens` makes and checks the address validation tokens of QUIC Retry
  packets (RFC 9000 section 8.1.2): bound to the client's address and the connection
  ids, stamped with the loop time, authenticated with a key derived from the node key.
* :class:`AdmissionTable` counts accepted connections by source and decides, for each
  new Initial, :class:`Verdict` ADMIT, RETRY (stateless: prove your address first),
  REFUSE (stateless CONNECTION_CLOSE with a reason) or DROP (no answer; the client's
  retransmission may find room).

This module does no I/O: the endpoint sends what it decides.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import hmac
import ipaddress
import math
import struct
from collections.abc import Hashable
from dataclasses import dataclass, field

from ..config import NetworkConfig
from ..identity import SecretKey
from ..net.base import Address
from ..net.rate import KeyedRateLimiter

__all__ = [
    "AdmissionStats",
    "AdmissionTable",
    "InvalidToken",
    "RetryTokens",
    "Verdict",
    "source_of",
]

_TOKEN_VERSION = 1
_TAG_SIZE = 16
#: version (1) + issue time in milliseconds (8) + original connection id length (1)
_TOKEN_HEAD = struct.Struct("!BQB")
#: the longest connection id QUIC v1 allows (RFC 9000 section 17.2)
_MAX_CID = 20
#: a token issued this far in the future (loop time) is refused: it was not issued by this clock
_CLOCK_SLACK = 1.0
#: source addresses whose handshake rate is remembered (least recently used forgotten first)
_MAX_RATE_SOURCES = 8192


class InvalidToken(ValueError):
    """A Retry token that is malformed, forged, for another address or connection id, or expired."""


class RetryTokens:
    """Address validation tokens for QUIC Retry packets (RFC 9000 section 8.1.2).

    A token carries the issue time (loop time, milliseconds) and the client's original
    destination connection id, and a 16-byte HMAC-SHA256 tag over those, the client's
    address (host and port) and the Retry's source connection id (which the client must
    use as destination connection id of the Initial that returns the token).  Nothing in
    it is secret (an on-path observer sees the connection ids anyway); the tag makes it
    unforgeable and binds it to one address and one connection attempt.  The key derives
    from the node key, so no randomness is needed and a restarted node (same key, same
    monotonic clock) still accepts tokens it issued just before.
    """

    def __init__(self, key: bytes, lifetime: float) -> None:
        if len(key) < 16:
            raise ValueError("retry token key must be at least 16 bytes")
        if not (math.isfinite(lifetime) and lifetime > 0):
            raise ValueError(f"retry token lifetime must be a positive number of seconds, got {lifetime}")
        self._key = key
        self.lifetime = lifetime

    @classmethod
    def for_node(cls, secret_key: SecretKey, lifetime: float) -> RetryTokens:
        """Tokens keyed by ``secret_key`` (HMAC-SHA256 of it under a fixed label)."""
        key = hmac.digest(secret_key.to_bytes(), b"asgi-p2p retry token key v1", "sha256")
        return cls(key, lifetime)

    def _tag(self, address: Address, retry_scid: bytes, body: bytes) -> bytes:
        host, port = address
        msg = b"%s|%d|%s|" % (host.encode("utf-8", errors="replace"), port, retry_scid.hex().encode()) + body
        return hmac.digest(self._key, msg, "sha256")[:_TAG_SIZE]

    def create(self, *, address: Address, original_dcid: bytes, retry_scid: bytes, now: float) -> bytes:
        """A token for a Retry sent to ``address`` with source connection id ``retry_scid``."""
        if len(original_dcid) > _MAX_CID:
            raise ValueError(f"connection id longer than {_MAX_CID} bytes")
        body = _TOKEN_HEAD.pack(_TOKEN_VERSION, max(0, round(now * 1000)), len(original_dcid)) + original_dcid
        return body + self._tag(address, retry_scid, body)

    def validate(self, *, address: Address, destination_cid: bytes, token: bytes, now: float) -> bytes:
        """The original destination connection id the token carries, or :class:`InvalidToken`.

        ``destination_cid`` is the destination connection id of the Initial that carries
        the token: it must be the Retry's source connection id.
        """
        if len(token) < _TOKEN_HEAD.size + _TAG_SIZE:
            raise InvalidToken(f"malformed token ({len(token)} bytes)")
        version, issued_ms, cid_len = _TOKEN_HEAD.unpack_from(token)
        if version != _TOKEN_VERSION or len(token) != _TOKEN_HEAD.size + cid_len + _TAG_SIZE or cid_len > _MAX_CID:
            raise InvalidToken("malformed token")
        body, tag = token[:-_TAG_SIZE], token[-_TAG_SIZE:]
        if not hmac.compare_digest(tag, self._tag(address, destination_cid, body)):
            raise InvalidToken("token not issued by this node for this address and connection id")
        issued = issued_ms / 1000
        if issued > now + _CLOCK_SLACK:
            raise InvalidToken("token issued in the future")
        if now - issued > self.lifetime:
            raise InvalidToken(f"token expired {now - issued - self.lifetime:.1f}s ago")
        return body[_TOKEN_HEAD.size :]


def source_of(addr: Address) -> str:
    """The source an address counts against in per-address limits.

    An IPv4 address is itself; an IPv6 address counts as its /64 (one host or home
    usually has a whole /64); anything else (a name) is its host string.
    """
    host = addr[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Verdict(enum.Enum):
    """What to do with an Initial that decrypted (see :meth:`AdmissionTable.decide`)."""

    #: create the connection
    ADMIT = "admit"
    #: answer with a Retry: the client must prove its address first (no state)
    RETRY = "retry"
    #: answer with a stateless CONNECTION_CLOSE carrying the reason (no state)
    REFUSE = "refuse"
    #: no answer (the handshake pools are full: the client's retransmission may find room)
    DROP = "drop"


@dataclass
class AdmissionStats:
    """What the endpoint did with Initial packets that named no connection."""

    #: connections created (validated: after a Retry, or forwarded by the relay)
    accepted: int = 0
    accepted_validated: int = 0
    #: Initials dropped because they did not decrypt (no state was created)
    undecryptable: int = 0
    #: Retry packets sent
    retries: int = 0
    #: Initials with a token that was malformed, forged, expired or for another address
    #: (no state: answered with a stateless CONNECTION_CLOSE, INVALID_TOKEN, within the
    #: stateless reset rate limits, or dropped when over them)
    invalid_tokens: int = 0
    #: of those, answered with INVALID_TOKEN / dropped because of the rate limits
    invalid_token_closes: int = 0
    invalid_token_closes_limited: int = 0
    #: Initials refused with a stateless CONNECTION_CLOSE (connection limits)
    refused: int = 0
    #: connections refused, by the limit that refused them (``max_connections``,
    #: ``max_connections_per_address``, ``handshake_rate_per_address`` before the handshake;
    #: ``max_connections_per_node``, ``not_allowed`` after it): a bounded set of names
    refused_by_reason: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Initials answered with a Retry because their address went over ``handshake_rate_per_address``
    rate_limited: int = 0
    #: accepted connections that completed their handshake
    established: int = 0
    #: validated Initials dropped because the handshake pools were full
    dropped_busy: int = 0
    #: connections dropped right after their first datagram (nothing in it was accepted)
    dropped_at_once: int = 0
    #: accepted connections dropped because their handshake took longer than ``handshake_timeout``
    handshake_timeouts: int = 0


@dataclass(slots=True)
class _Entry:
    source: str
    validated: bool
    half_open: bool = True
    timer: asyncio.TimerHandle | None = field(default=None)


class AdmissionTable:
    """The endpoint's accepted connections, by source, handshaking or established.

    Half-open connections live in two pools of ``max_handshaking`` each: one for
    addresses nobody validated (the first Initial of a client), one for validated
    sources (a returned Retry token, or a node the relay forwards and so
    authenticated).  Per source, each pool holds at most ``max_handshaking_per_address``,
    and all accepted connections together at most ``max_connections_per_address``.
    Every counter drops its key at zero, so the table's size follows the connections.
    """

    def __init__(self, config: NetworkConfig) -> None:
        self.config = config
        self.stats = AdmissionStats()
        rate = config.handshake_rate_per_address
        # per (source, validated): spoofed unvalidated Initials cannot spend a validated budget
        self._rates = KeyedRateLimiter(rate, max(1.0, 2 * rate), max_keys=_MAX_RATE_SOURCES) if rate else None
        self._entries: dict[Hashable, _Entry] = {}
        self.half_open = 0
        self.half_open_validated = 0
        self._half_open_by_source: dict[tuple[str, bool], int] = {}
        self._by_source: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, conn: object) -> bool:
        return conn in self._entries

    def is_half_open(self, conn: Hashable) -> bool:
        entry = self._entries.get(conn)
        return entry is not None and entry.half_open

    def decide(
        self, source: str, *, validated: bool, established: int, now: float | None = None
    ) -> tuple[Verdict, str]:
        """The verdict on a decrypted Initial from ``source``, and the reason (for REFUSE and logs).

        ``established`` is the number of the endpoint's connections past their handshake;
        ``now`` (loop time) charges an admitted Initial to its source's handshake rate
        (None: no rate limit).
        """
        cfg = self.config
        if established >= cfg.max_connections:
            self.stats.refused_by_reason["max_connections"] += 1
            return Verdict.REFUSE, f"too many connections (max_connections={cfg.max_connections})"
        if self._by_source.get(source, 0) >= cfg.max_connections_per_address:
            self.stats.refused_by_reason["max_connections_per_address"] += 1
            return Verdict.REFUSE, (
                f"too many connections from {source} (max_connections_per_address={cfg.max_connections_per_address})"
            )
        verdict, reason = self._decide_pools(source, validated)
        if verdict is Verdict.ADMIT and now is not None and self._rates is not None:
            wait = self._rates.take((source, validated), now)
            if wait:
                reason = (
                    f"more than {cfg.handshake_rate_per_address:g} handshakes a second from {source} "
                    f"(handshake_rate_per_address); retry in {wait:.2f}s"
                )
                if not validated:
                    self.stats.rate_limited += 1
                    return Verdict.RETRY, reason
                self.stats.refused_by_reason["handshake_rate_per_address"] += 1
                return Verdict.REFUSE, reason
        return verdict, reason

    def _decide_pools(self, source: str, validated: bool) -> tuple[Verdict, str]:
        cfg = self.config
        per_source = self._half_open_by_source.get((source, validated), 0)
        if not validated:
            if self.half_open - self.half_open_validated >= cfg.max_handshaking:
                return Verdict.RETRY, f"{cfg.max_handshaking} unvalidated handshakes in progress"
            if per_source >= cfg.max_handshaking_per_address:
                return Verdict.RETRY, f"{per_source} unvalidated handshakes from {source} in progress"
            return Verdict.ADMIT, ""
        if self.half_open_validated >= cfg.max_handshaking:
            return Verdict.DROP, f"{cfg.max_handshaking} validated handshakes in progress"
        if per_source >= cfg.max_handshaking_per_address:
            return Verdict.DROP, f"{per_source} validated handshakes from {source} in progress"
        return Verdict.ADMIT, ""

    def admit(self, conn: Hashable, source: str, *, validated: bool, timer: asyncio.TimerHandle | None) -> None:
        """``conn`` was created for an Initial from ``source``: it is half-open until :meth:`established`."""
        self._entries[conn] = _Entry(source, validated, True, timer)
        self.half_open += 1
        if validated:
            self.half_open_validated += 1
            self.stats.accepted_validated += 1
        self.stats.accepted += 1
        key = (source, validated)
        self._half_open_by_source[key] = self._half_open_by_source.get(key, 0) + 1
        self._by_source[source] = self._by_source.get(source, 0) + 1

    def _leave_half_open(self, entry: _Entry) -> None:
        entry.half_open = False
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        self.half_open -= 1
        if entry.validated:
            self.half_open_validated -= 1
        key = (entry.source, entry.validated)
        left = self._half_open_by_source[key] - 1
        if left:
            self._half_open_by_source[key] = left
        else:
            del self._half_open_by_source[key]

    def established(self, conn: Hashable) -> None:
        """``conn`` completed its handshake (no-op for connections this table does not hold)."""
        entry = self._entries.get(conn)
        if entry is not None and entry.half_open:
            self._leave_half_open(entry)
            self.stats.established += 1

    def forget(self, conn: Hashable) -> None:
        """``conn`` is gone (no-op for connections this table does not hold)."""
        entry = self._entries.pop(conn, None)
        if entry is None:
            return
        if entry.half_open:
            self._leave_half_open(entry)
        left = self._by_source[entry.source] - 1
        if left:
            self._by_source[entry.source] = left
        else:
            del self._by_source[entry.source]

    @property
    def sources(self) -> int:
        """Sources with at least one accepted connection (the per-source counters held)."""
        return len(self._by_source)
