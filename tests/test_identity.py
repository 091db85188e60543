from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_p2p import InvalidConfiguration, InvalidNodeId, NodeId, SecretKey
from asgi_p2p.identity import load_or_create_key, zbase32_decode, zbase32_encode


def test_from_seed_is_stable_across_runs_and_machines() -> None:
    # Pinned value: a change here breaks every test topology that names nodes by seed.
    assert SecretKey.from_seed("alice").node_id == SecretKey.from_seed("alice").node_id
    assert SecretKey.from_seed("alice").node_id != SecretKey.from_seed("bob").node_id
    alice = SecretKey.from_seed("alice")
    assert SecretKey.from_bytes(alice.to_bytes()).node_id == alice.node_id
    assert alice.node_id.fmt_short() == "72a4e1827a"


def test_text_form_is_52_char_zbase32_and_parses_back() -> None:
    nid = SecretKey.generate().node_id
    text = str(nid)
    assert len(text) == 52
    assert set(text) <= set("ybndrfg8ejkmcpqxot1uwisza345h769")
    assert NodeId.parse(text) == nid
    assert NodeId.parse(text.upper()) == nid
    assert NodeId.parse(nid.to_bytes().hex()) == nid
    assert nid.fmt_short() == nid.to_bytes()[:5].hex()
    assert len(nid.fmt_short()) == 10


def test_instances_of_one_key_share_its_full_text_form() -> None:
    """The z-base-32 form is made once per key (a node makes a NodeId per connection) and is
    always the full 52-character id of that key, never another key's."""
    a, b = SecretKey.from_seed("alice").node_id, SecretKey.from_seed("bob").node_id
    again = NodeId(a.to_bytes())
    assert str(again) is str(a)  # shared, not encoded again
    assert str(again) == zbase32_encode(a.to_bytes()) and len(str(again)) == 52
    assert str(NodeId(b.to_bytes())) == zbase32_encode(b.to_bytes()) != str(a)
    for i in range(600):  # past the cache's bound: still each key's own text
        raw = i.to_bytes(32, "big")
        assert str(NodeId(raw)) == zbase32_encode(raw)
    assert NodeId.parse(str(NodeId(a.to_bytes()))) == a


@given(st.binary(min_size=32, max_size=32))
def test_bytes_and_text_round_trip(raw: bytes) -> None:
    nid = NodeId(raw)
    assert bytes(nid) == raw
    assert NodeId.parse(str(nid)) == nid
    assert zbase32_decode(zbase32_encode(raw), 32) == raw


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_equality_hash_and_ordering_follow_bytes(a: bytes, b: bytes) -> None:
    na, nb = NodeId(a), NodeId(b)
    assert (na == nb) == (a == b)
    assert (na < nb) == (a < b)
    if a == b:
        assert hash(na) == hash(nb)
    assert sorted([na, nb]) == [NodeId(x) for x in sorted([a, b])]


@pytest.mark.parametrize(
    "bad",
    ["", "abc", "x" * 52, "0" * 63, "g" * 64, "8" * 51 + "!", "l" * 52],
)
def test_invalid_text_raises_invalid_node_id_with_input(bad: str) -> None:
    with pytest.raises(InvalidNodeId) as info:
        NodeId.parse(bad)
    assert info.value.value == bad
    assert repr(bad) in str(info.value)


def test_wrong_length_bytes_rejected() -> None:
    with pytest.raises(InvalidNodeId):
        NodeId(b"\x00" * 31)


def test_key_file_written_0600_and_loaded(tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "sub" / "node.key"
    key = SecretKey.generate()
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SecretKey.load(path) == key
    with pytest.raises(InvalidConfiguration, match="already exists"):
        key.save(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_key_file_readable_by_others_is_refused(tmp_path: object, mode: int) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "node.key"
    SecretKey.generate().save(path)
    os.chmod(path, mode)
    with pytest.raises(InvalidConfiguration, match="chmod 600"):
        SecretKey.load(path)


def test_key_file_garbage_and_missing(tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "node.key"
    with pytest.raises(InvalidConfiguration, match="does not exist"):
        SecretKey.load(path)
    path.write_bytes(b"not a key")
    os.chmod(path, 0o600)
    with pytest.raises(InvalidConfiguration, match="not a PEM"):
        SecretKey.load(path)


def test_load_or_create_is_stable(tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "node.key"
    first = load_or_create_key(path)
    assert load_or_create_key(path) == first


def test_sign_and_verify() -> None:
    key = SecretKey.from_seed("signer")
    sig = key.sign(b"data")
    assert key.node_id.verify(sig, b"data")
    assert not key.node_id.verify(sig, b"other")
    assert not SecretKey.from_seed("other").node_id.verify(sig, b"data")
