"""Directory publishing under floods: per-node and per-address limits, short TTLs, stale records evicted first."""

from __future__ import annotations

import math

import pytest

from asgi_p2p.discovery import records
from asgi_p2p.discovery.directory import (
    FIRST_REFRESH,
    DirectoryClient,
    DirectoryServer,
    Op,
    Status,
    decode_message,
    encode_message,
)
from asgi_p2p.discovery.records import (
    Directory,
    DirectoryFull,
    NodeRecord,
    PublishLimited,
    SignedNodeRecord,
    address_key,
)
from asgi_p2p.identity import SecretKey

NOW = 1_700_000_000.0
KEYS = [SecretKey.from_seed(f"limits-{i}") for i in range(300)]


def rec(key: SecretKey, at: float = NOW, *, ttl: float = 3600, seq: int | None = None) -> SignedNodeRecord:
    return NodeRecord(key.node_id, seq if seq is not None else round(at * 1000), at + ttl).sign(key)


def test_the_default_maximum_ttl_is_an_hour_and_fits_the_default_client() -> None:
    d = Directory()
    assert d.max_ttl == 3600.0
    import inspect

    client_ttl = inspect.signature(DirectoryClient).parameters["ttl"].default
    assert client_ttl <= d.max_ttl  # a default node's record is accepted
    assert d.live_after < FIRST_REFRESH < d.probation  # and proves itself live before it counts as stale


def test_one_node_publishing_in_a_loop_is_rate_limited() -> None:
    d = Directory()
    key = KEYS[0]
    accepted = 0
    for i in range(100):
        try:
            d.publish(rec(key, NOW, seq=i + 1), NOW)
            accepted += 1
        except PublishLimited as exc:
            assert "publishes too often" in str(exc) and str(key.node_id) in str(exc)
    assert accepted == 10  # the burst
    assert d.refused_rate == 90
    with pytest.raises(PublishLimited):
        d.publish(rec(key, NOW + 29, seq=1000), NOW + 29)
    d.publish(rec(key, NOW + 31, seq=1001), NOW + 31)  # one more every 30 s


def test_one_address_holds_a_bounded_number_of_records() -> None:
    d = Directory(max_per_address=64)
    stored = 0
    for i, key in enumerate(KEYS[:200]):
        at = NOW + i * 0.25  # under the per-address request rate (4/s)
        try:
            d.publish(rec(key, at), at, source="198.51.100.7")
            stored += 1
        except DirectoryFull as exc:
            assert "address 198.51.100.7 holds its maximum of 64" in str(exc)
    assert stored == 64 == d.count_from("198.51.100.7") == len(d)
    assert d.refused_address == 136
    d.publish(rec(KEYS[250], NOW + 60), NOW + 60, source="203.0.113.9")  # another address is not affected
    # the records of a node count where it last published from
    d.publish(rec(KEYS[0], NOW + 61), NOW + 61, source="203.0.113.9")
    assert d.count_from("198.51.100.7") == 63 and d.count_from("203.0.113.9") == 2
    d.remove(KEYS[250].node_id)
    assert d.count_from("203.0.113.9") == 1


def test_one_address_sending_fast_is_rate_limited_before_any_signature_is_checked() -> None:
    d = Directory()
    outcomes = []
    for key in KEYS[:100]:
        signed = rec(key)
        forged = SignedNodeRecord(signed.record, signed.data[:-64] + bytes(64))  # would fail verification
        try:
            d.publish(forged, NOW, source="198.51.100.7")
        except PublishLimited:
            outcomes.append("limited")
        except records.InvalidRecord:
            outcomes.append("verified")
    assert outcomes.count("verified") == 64 and outcomes.count("limited") == 36


def test_ipv6_publishers_are_limited_per_64() -> None:
    d = Directory(max_per_address=3)
    for i in range(3):
        d.publish(rec(KEYS[i]), NOW, source=f"2001:db8:1:2::{i + 1}")
    with pytest.raises(DirectoryFull, match="2001:db8:1:2::/64"):
        d.publish(rec(KEYS[3]), NOW, source="2001:db8:1:2:ffff::1")
    d.publish(rec(KEYS[3]), NOW, source="2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("not an address") == "not an address"


def test_a_sybil_flood_holds_the_directory_for_minutes_not_days() -> None:
    """The issue's attack: one-shot records fill the store; new nodes get in once those are stale."""
    d = Directory(capacity=100, max_per_address=10)
    for i in range(100):  # ten addresses, ten keys each, published once and abandoned
        d.publish(rec(KEYS[i]), NOW, source=f"198.51.100.{i // 10}")
    newcomer = KEYS[200]
    with pytest.raises(DirectoryFull, match="none of them stale"):
        d.publish(rec(newcomer, NOW + 10), NOW + 10, source="192.0.2.1")
    later = NOW + d.probation
    d.publish(rec(newcomer, later), later, source="192.0.2.1")
    assert d.resolve(newcomer.node_id, later) is not None
    assert d.resolve(KEYS[0].node_id, later) is None  # the oldest stale record made room
    assert d.evicted_stale == 1 and len(d) == 100


def test_live_nodes_are_kept_over_stale_ones_under_pressure() -> None:
    d = Directory(capacity=50)
    live, sybils = KEYS[:25], KEYS[25:50]
    for key in live + sybils:
        d.publish(rec(key), NOW, source=f"10.0.{KEYS.index(key)}.1")
    for key in live:  # the live nodes refresh their records, as DirectoryClient does
        d.publish(rec(key, NOW + FIRST_REFRESH), NOW + FIRST_REFRESH, source=f"10.0.{KEYS.index(key)}.1")
        assert d.is_live(key.node_id)
    assert not any(d.is_live(k.node_id) for k in sybils)
    t = NOW + 400
    newcomers = KEYS[100:140]
    admitted = []
    for i, key in enumerate(newcomers):
        try:
            d.publish(rec(key, t), t, source=f"192.0.2.{i}")
            admitted.append(key)
        except DirectoryFull:
            pass
    assert len(admitted) == 25 and d.evicted_stale == 25  # each took a stale record's place
    assert all(d.resolve(k.node_id, t) is not None for k in live)  # and no live node lost its place
    assert all(d.resolve(k.node_id, t) is None for k in sybils)


def test_a_live_node_that_stops_refreshing_becomes_stale() -> None:
    d = Directory(capacity=1)
    key = KEYS[0]
    d.publish(rec(key, NOW, ttl=3600), NOW)
    d.publish(rec(key, NOW + 100, ttl=3600), NOW + 100)
    assert d.is_live(key.node_id)
    stale_at = NOW + 100 + 0.875 * 3600
    with pytest.raises(DirectoryFull):
        d.publish(rec(KEYS[1], stale_at - 1), stale_at - 1)
    d.publish(rec(KEYS[1], stale_at), stale_at)
    assert d.resolve(key.node_id, stale_at) is None


def test_two_quick_publishes_do_not_make_a_node_live() -> None:
    d = Directory()
    d.publish(rec(KEYS[0], NOW, seq=1), NOW)
    d.publish(rec(KEYS[0], NOW, seq=2), NOW + 1)
    d.publish(rec(KEYS[0], NOW, seq=2), NOW + 2)  # the same bytes again count as a refresh, but too soon
    assert not d.is_live(KEYS[0].node_id)
    d.publish(rec(KEYS[0], NOW, seq=2), NOW + 60)
    assert d.is_live(KEYS[0].node_id)


def test_rate_limiter_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "_MAX_LIMITERS", 8)
    d = Directory(address_publish_rate=1000, address_publish_burst=1000)
    refused = 0
    for key in KEYS[:20]:
        try:
            d.publish(rec(key), NOW, source="192.0.2.1")
        except PublishLimited:
            refused += 1
    assert refused == 12 and len(d._node_buckets) == 8
    # once their buckets refill, the idle ones are forgotten and new nodes fit again
    d.publish(rec(KEYS[50], NOW + 1000), NOW + 1000, source="192.0.2.1")
    assert len(d._node_buckets) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capacity": 0}, "capacity must be a positive integer"),
        ({"max_per_address": 0}, "max_per_address must be a positive integer"),
        ({"max_per_address": 1.5}, "max_per_address must be a positive integer"),
        ({"max_ttl": math.inf}, "max_ttl must be a positive finite"),
        ({"max_ttl": math.nan}, "max_ttl must be a positive finite"),
        ({"node_publish_rate": 0}, "node_publish_rate must be a positive finite"),
        ({"address_publish_burst": 0.5}, "address_publish_burst must be a finite number of at least 1"),
        ({"live_after": 400.0}, "probation .* must exceed live_after"),
    ],
)
def test_directory_bounds_validate(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Directory(**kwargs)  # type: ignore[arg-type]


def test_the_server_answers_rate_limited_and_counts_the_address() -> None:
    server = DirectoryServer(Directory(node_publish_burst=1))
    key = KEYS[0]
    first = encode_message(Op.PUBLISH, rec(key, seq=1).data)
    second = encode_message(Op.PUBLISH, rec(key, seq=2).data)
    assert decode_message(server.handle(key.node_id, first, NOW, "192.0.2.1"), "r")[0] == Status.OK
    status, body = decode_message(server.handle(key.node_id, second, NOW, "192.0.2.1"), "r")
    assert status == Status.RATE_LIMITED and b"publishes too often" in body
    assert server.directory.count_from("192.0.2.1") == 1
