"""Stateless reset (RFC 9000 section 10.3): tokens from the node key, building, limits.

A node that restarted (same key, same port) has forgotten its connections; a
peer still sending on one of them gets, for each such packet, a *stateless
reset*: a datagram that looks like a short-header packet and ends with the
16-byte token this node announced for the connection id the packet named.
The token is ``HMAC-SHA256(reset key, connection id)[:16]``, where the reset
key is derived from the node's secret key: the restarted node computes the
same token without any state, and nobody without the key can forge one.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from ..identity import SecretKey

__all__ = [
    "MIN_RESET_SIZE",
    "MIN_TRIGGER_SIZE",
    "RESET_TOKEN_SIZE",
    "ResetLimiter",
    "ResetTokens",
    "build_stateless_reset",
]

RESET_TOKEN_SIZE = 16
#: the smallest stateless reset: 1 byte, 4 more of unpredictable bits (38 with the first
#: byte's 6), the token (RFC 9000 10.3)
MIN_RESET_SIZE = 1 + 4 + RESET_TOKEN_SIZE
#: no reset answers a datagram shorter than the smallest short-header packet naming one of
#: our 8-byte connection ids (1 + 8, then the header protection sample starts 4 bytes after
#: the packet number's start and is 16 bytes long): nothing shorter can be a genuine packet,
#: and a reset is then at least 8 bytes shorter than the smallest packet it could answer
MIN_TRIGGER_SIZE = 1 + 8 + 4 + 16
#: a reset answering a datagram of at most this size is one byte shorter than it (RFC 9000
#: 10.3: "43 bytes or shorter"); longer ones get a random size between this and the cap
_SHORT_TRIGGER = 43
#: a reset is never larger than this (a short packet: an ACK-only packet's size)
_MAX_RESET_SIZE = 64
_KEY_LABEL = b"asgi-p2p stateless reset key v1"
_INDEX_LABEL = b"asgi-p2p stateless reset index key v1"


class ResetTokens:
    """The stateless reset tokens of one node key (the same in every life of the node)."""

    __slots__ = ("_index_key", "_key", "_mac")

    def __init__(self, secret_key: SecretKey) -> None:
        raw = secret_key.to_bytes()
        self._key = hmac.digest(raw, _KEY_LABEL, "sha256")
        self._index_key = hmac.digest(raw, _INDEX_LABEL, "sha256")
        # keyed once: each token copies it (a connection issues 8 ids, each with its token)
        self._mac = hmac.new(self._key, digestmod="sha256")

    def token(self, cid: bytes) -> bytes:
        """The token of connection id ``cid``: ``HMAC-SHA256(reset key, cid)[:16]``."""
        mac = self._mac.copy()
        mac.update(cid)
        return mac.digest()[:RESET_TOKEN_SIZE]

    def index(self, token: bytes) -> bytes:
        """A keyed hash of a (peer's) token: what the endpoint looks received tokens up by.

        Looking up attacker-chosen bytes in a dict compares hashes and, on a match, bytes;
        keyed, neither tells anything about the tokens held (RFC 9000 10.3.1 asks that
        comparing tokens leak nothing); the match is then confirmed in constant time.
        """
        return hashlib.blake2b(token, key=self._index_key, digest_size=16).digest()


def build_stateless_reset(token: bytes, trigger_size: int, rng: random.Random) -> bytes:
    """A stateless reset answering a ``trigger_size``-byte datagram (smaller than it).

    ``trigger_size`` must be at least :data:`MIN_TRIGGER_SIZE`.  The first byte has the
    short header's form bit clear and fixed bit set; everything else before the token is
    drawn from ``rng``, so the reset looks like any short-header packet.
    """
    if trigger_size < MIN_TRIGGER_SIZE:
        raise ValueError(f"no stateless reset answers a {trigger_size}-byte datagram (minimum {MIN_TRIGGER_SIZE})")
    if len(token) != RESET_TOKEN_SIZE:
        raise ValueError(f"a stateless reset token is {RESET_TOKEN_SIZE} bytes, got {len(token)}")
    upper = min(trigger_size - 1, _MAX_RESET_SIZE)
    size = upper if upper < _SHORT_TRIGGER else rng.randint(_SHORT_TRIGGER - 1, upper)
    first = 0x40 | rng.getrandbits(6)
    return bytes((first,)) + rng.randbytes(size - 1 - RESET_TOKEN_SIZE) + token


@dataclass
class _Bucket:
    tokens: float
    at: float


class ResetLimiter:
    """Token buckets bounding the stateless resets an endpoint sends: overall and per source.

    A source is an address (or, through the relay, a node id).  At most ``max_sources``
    per-source buckets are kept (the least recently used is forgotten), so a flood from
    many addresses costs bounded memory and at most ``rate`` resets a second.
    """

    def __init__(
        self,
        *,
        rate: float = 100.0,
        burst: float = 100.0,
        per_source_rate: float = 5.0,
        per_source_burst: float = 10.0,
        max_sources: int = 1024,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.per_source_rate = per_source_rate
        self.per_source_burst = per_source_burst
        self.max_sources = max_sources
        self._total = _Bucket(burst, 0.0)
        self._sources: OrderedDict[Hashable, _Bucket] = OrderedDict()

    @staticmethod
    def _refill(bucket: _Bucket, now: float, rate: float, burst: float) -> None:
        if now > bucket.at:
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now

    def allow(self, source: Hashable, now: float) -> bool:
        """True (and one reset counted) if a reset to ``source`` may be sent at ``now``."""
        self._refill(self._total, now, self.rate, self.burst)
        bucket = self._sources.get(source)
        if bucket is None:
            bucket = _Bucket(self.per_source_burst, now)
            self._sources[source] = bucket
            if len(self._sources) > self.max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(source)
            self._refill(bucket, now, self.per_source_rate, self.per_source_burst)
        if self._total.tokens < 1 or bucket.tokens < 1:
            return False
        self._total.tokens -= 1
        bucket.tokens -= 1
        return True

    @property
    def sources(self) -> int:
        """Per-source buckets held now (at most ``max_sources``)."""
        return len(self._sources)
