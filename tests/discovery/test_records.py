"""Signed node records and the in-memory Directory, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_p2p.discovery.records import (
    MAX_ADDRS,
    Directory,
    DirectoryFull,
    InvalidRecord,
    NameTaken,
    NodeRecord,
    SignedNodeRecord,
    StaleRecord,
    check_name,
)
from asgi_p2p.errors import ProtocolError
from asgi_p2p.identity import SecretKey

ALICE = SecretKey.from_seed("records-alice")
BOB = SecretKey.from_seed("records-bob")
NOW = 1_700_000_000.0
RELAY = "https://relay.example:4433"

ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
addresses = st.tuples(ips, st.integers(0, 65535))
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
names = st.lists(label, min_size=1, max_size=4).map(".".join)
records = st.builds(
    NodeRecord,
    st.just(ALICE.node_id),
    st.integers(0, 2**64 - 1),
    st.floats(NOW, NOW + 1e6),
    st.one_of(st.none(), st.text(min_size=1, max_size=100)),
    st.lists(addresses, max_size=MAX_ADDRS).map(tuple),
    st.one_of(st.none(), names),
)


def record(seq: int = 1, *, key: SecretKey = ALICE, ttl: float = 3600, name: str | None = None) -> SignedNodeRecord:
    return NodeRecord(key.node_id, seq, NOW + ttl, RELAY, (("192.0.2.1", 4433), ("2001:db8::1", 4433)), name).sign(key)


@settings(max_examples=60, deadline=None)
@given(records)
def test_round_trip_and_verify(rec: NodeRecord) -> None:
    signed = rec.sign(ALICE)
    parsed = SignedNodeRecord.parse(signed.encode())
    assert parsed == signed
    assert parsed.verify(NOW - 1, ALICE.node_id) == rec


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_parse_raises_only_invalid_record(data: bytes) -> None:
    for blob in (data, b"P2PR\x01" + data):
        try:
            SignedNodeRecord.parse(blob)
        except InvalidRecord as exc:
            assert str(exc).startswith("malformed node record")


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_any_bit_flip_is_refused(data: st.DataObject) -> None:
    raw = bytearray(record(name="alice").encode())
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(ProtocolError):
        SignedNodeRecord.parse(bytes(raw)).verify(NOW, ALICE.node_id)


def test_verify_refuses_bad_signature_expired_and_wrong_node() -> None:
    signed = record()
    forged = SignedNodeRecord(signed.record, signed.data[:-64] + BOB.sign(b"x"))
    with pytest.raises(InvalidRecord, match="bad signature"):
        forged.verify(NOW)
    with pytest.raises(InvalidRecord, match="expired"):
        signed.verify(NOW + 3600)
    with pytest.raises(InvalidRecord, match="expected"):
        signed.verify(NOW, BOB.node_id)
    # Bob re-signing Alice's record under his own key is still refused: the key is the node id
    with pytest.raises(ValueError, match="cannot be signed"):
        signed.record.sign(BOB)


def test_parse_errors_are_clear() -> None:
    raw = record(name="alice").encode()
    with pytest.raises(InvalidRecord, match="magic"):
        SignedNodeRecord.parse(b"XXXX" + raw[4:])
    with pytest.raises(InvalidRecord, match="unsupported version 2"):
        SignedNodeRecord.parse(raw[:4] + b"\x02" + raw[5:])
    with pytest.raises(InvalidRecord, match="truncated"):
        SignedNodeRecord.parse(raw[:-1])
    with pytest.raises(InvalidRecord, match="trailing"):
        SignedNodeRecord.parse(raw + b"\x00")
    flags = 4 + 1 + 32 + 8 + 8
    with pytest.raises(InvalidRecord, match="unknown flag bits"):
        SignedNodeRecord.parse(raw[:flags] + b"\x07" + raw[flags + 1 :])
    bad_name = NodeRecord(ALICE.node_id, 1, NOW + 1, name="alice").sign(ALICE).encode().replace(b"alice", b"Alice")
    with pytest.raises(InvalidRecord, match="invalid node name"):
        SignedNodeRecord.parse(bad_name)


def test_record_validation() -> None:
    for bad in ("", "Alice", "-a", "a-", "a..b", "a" * 64, "é"):
        with pytest.raises(ValueError, match="invalid node name"):
            check_name(bad)
    assert check_name("music.home-1") == "music.home-1"
    with pytest.raises(ValueError, match="seq"):
        NodeRecord(ALICE.node_id, -1, NOW)
    with pytest.raises(ValueError, match="at most"):
        NodeRecord(ALICE.node_id, 1, NOW, addrs=tuple(("10.0.0.1", p) for p in range(MAX_ADDRS + 1)))
    with pytest.raises(ValueError, match="not an IP address"):
        NodeRecord(ALICE.node_id, 1, NOW, addrs=(("host.example", 1),))
    with pytest.raises(ValueError, match="relay_url"):
        NodeRecord(ALICE.node_id, 1, NOW, relay_url="")


def test_directory_publish_and_resolve() -> None:
    d = Directory()
    rec = d.publish(record(name="alice").encode(), NOW)
    assert rec.relay_url == RELAY
    found = d.resolve(ALICE.node_id, NOW)
    assert found is not None and found.verify(NOW, ALICE.node_id) == rec
    by_name = d.resolve_name("alice", NOW)
    assert by_name is not None and by_name.record.node_id == ALICE.node_id
    assert d.resolve(BOB.node_id, NOW) is None and d.resolve_name("bob", NOW) is None


def test_directory_keeps_highest_seq() -> None:
    d = Directory()
    d.publish(record(5), NOW)
    d.publish(record(5), NOW)  # the same record again is fine
    with pytest.raises(StaleRecord, match=r"seq 4.*seq 5"):
        d.publish(record(4), NOW)
    with pytest.raises(StaleRecord):
        d.publish(record(5, ttl=1800), NOW)  # same seq, different content
    d.publish(record(6, name="alice2"), NOW)
    found = d.resolve(ALICE.node_id, NOW)
    assert found is not None and found.record.seq == 6
    assert d.resolve_name("alice2", NOW) is not None


def test_directory_refuses_bad_records() -> None:
    d = Directory(max_ttl=86400)
    signed = record()
    with pytest.raises(InvalidRecord, match="bad signature"):
        d.publish(SignedNodeRecord(signed.record, signed.data[:-64] + bytes(64)), NOW)
    with pytest.raises(InvalidRecord, match="expired"):
        d.publish(record(ttl=-1), NOW)
    with pytest.raises(InvalidRecord, match="more than this directory's maximum"):
        d.publish(record(ttl=2 * 86400), NOW)
    with pytest.raises(InvalidRecord, match="malformed"):
        d.publish(b"junk", NOW)
    assert len(d) == 0


def test_names_are_first_come_until_expiry() -> None:
    d = Directory()
    d.publish(record(name="music", ttl=60), NOW)
    with pytest.raises(NameTaken, match="'music' is held by node"):
        d.publish(record(key=BOB, name="music"), NOW)
    d.publish(record(2, name="other"), NOW)  # Alice renames: the old name is free
    d.publish(record(key=BOB, name="music"), NOW)
    found = d.resolve_name("music", NOW)
    assert found is not None and found.record.node_id == BOB.node_id
    # an expired holder loses the name
    d2 = Directory()
    d2.publish(record(name="music", ttl=60), NOW)
    d2.publish(record(key=BOB, name="music"), NOW + 61)
    assert d2.resolve(ALICE.node_id, NOW + 61) is None


def test_expiry_and_bounded_capacity() -> None:
    d = Directory(capacity=2)
    keys = [SecretKey.from_seed(f"records-{i}") for i in range(3)]
    d.publish(record(key=keys[0], ttl=10), NOW)
    d.publish(record(key=keys[1], ttl=100), NOW)
    with pytest.raises(DirectoryFull, match="maximum of 2"):
        d.publish(record(key=keys[2]), NOW)
    d.publish(record(2, key=keys[1], ttl=100), NOW)  # updates still fit
    d.publish(record(key=keys[2]), NOW + 11)  # keys[0] expired, making room
    assert len(d) == 2 and d.resolve(keys[0].node_id, NOW + 11) is None
    assert d.expire(NOW + 1000) == 1
    assert [r.record.node_id for r in d.records(NOW + 1000)] == [keys[2].node_id]


def test_remove_frees_the_node_and_its_name() -> None:
    d = Directory()
    d.publish(NodeRecord(ALICE.node_id, 1, NOW + 60, name="shop").sign(ALICE), NOW)
    assert d.remove(ALICE.node_id) is True
    assert d.remove(ALICE.node_id) is False
    assert d.resolve(ALICE.node_id, NOW) is None and d.resolve_name("shop", NOW) is None
    d.publish(NodeRecord(BOB.node_id, 1, NOW + 60, name="shop").sign(BOB), NOW)
    found = d.resolve_name("shop", NOW)
    assert found is not None and found.record.node_id == BOB.node_id
