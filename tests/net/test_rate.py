"""KeyedRateLimiter: per-key token buckets with bounded memory."""

from __future__ import annotations

import pytest

from asgi_p2p.net.rate import KeyedRateLimiter


def test_burst_then_rate_per_key() -> None:
    limiter = KeyedRateLimiter(rate=10.0, burst=3)
    assert [limiter.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a", 0.0)
    assert wait == pytest.approx(0.1)
    assert limiter.take("b", 0.0) == 0.0  # another key has its own bucket
    assert limiter.take("a", 0.1) == 0.0  # one token refilled after 1/rate seconds
    assert limiter.take("a", 0.1) > 0.0


def test_refill_is_capped_at_burst_and_clock_going_back_does_not_refill() -> None:
    limiter = KeyedRateLimiter(rate=100.0, burst=2)
    limiter.take("a", 0.0)
    limiter.take("a", 0.0)
    assert limiter.take("a", 100.0) == 0.0
    assert limiter.take("a", 100.0) == 0.0
    assert limiter.take("a", 100.0) > 0.0
    assert limiter.take("a", 50.0) > 0.0


def test_memory_is_bounded_least_recently_used_forgotten() -> None:
    limiter = KeyedRateLimiter(rate=1.0, burst=1, max_keys=3)
    for key in "abc":
        limiter.take(key, 0.0)
    limiter.take("a", 0.0)  # a is now the most recently used
    limiter.take("d", 0.0)  # evicts b
    assert len(limiter) == 3
    assert limiter.take("a", 0.0) > 0.0  # remembered: still empty
    assert limiter.take("b", 0.0) == 0.0  # forgotten: full again


@pytest.mark.parametrize(("rate", "burst", "max_keys"), [(0.0, 1, 1), (1.0, 0.5, 1), (1.0, 1, 0)])
def test_bad_parameters(rate: float, burst: float, max_keys: int) -> None:
    with pytest.raises(ValueError):
        KeyedRateLimiter(rate, burst, max_keys=max_keys)
