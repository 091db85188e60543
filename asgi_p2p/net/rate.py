"""Token buckets by key (a source address, a node id): bounded memory, time from the caller."""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["KeyedRateLimiter"]


class KeyedRateLimiter:
    """One token bucket per key, refilled at ``rate`` per second up to ``burst``.

    At most ``max_keys`` buckets are kept: the least recently used is forgotten first
    (it starts full again if its key comes back, so a key must stay quiet while
    ``max_keys`` others are used to gain from that).  ``now`` is the caller's clock
    (``loop.time()``); a clock that steps back never refills a bucket.
    """

    __slots__ = ("_buckets", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: float, *, max_keys: int = 4096) -> None:
        if not rate > 0 or not burst >= 1 or max_keys < 1:
            raise ValueError(
                f"rate must be positive, burst at least 1 and max_keys positive, got {rate}, {burst}, {max_keys}"
            )
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        # key -> [tokens, last refill time]; insertion order = least recently used first
        self._buckets: dict[Hashable, list[float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, now: float) -> float:
        """Take a token of ``key``'s bucket: 0.0 if there was one, else the seconds until there is."""
        buckets = self._buckets
        bucket = buckets.pop(key, None)
        if bucket is None:
            bucket = [self.burst, now]
            if len(buckets) >= self.max_keys:
                del buckets[next(iter(buckets))]
        elif now > bucket[1]:
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        buckets[key] = bucket
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.rate
