"""The directory wire format and request handling, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_p2p.discovery.directory import MAX_BODY, DirectoryServer, Op, Status, decode_message, encode_message
from asgi_p2p.discovery.records import Directory, NodeRecord, SignedNodeRecord
from asgi_p2p.identity import SecretKey

ALICE = SecretKey.from_seed("proto-alice")
BOB = SecretKey.from_seed("proto-bob")
NOW = 1_700_000_000.0


@given(st.integers(0, 255), st.binary(max_size=MAX_BODY))
def test_message_round_trip(code: int, body: bytes) -> None:
    assert decode_message(encode_message(code, body), "m") == (code, body)


@given(st.binary(max_size=64))
def test_server_answers_any_bytes_with_a_clear_status(data: bytes) -> None:
    response = DirectoryServer().handle(ALICE.node_id, data, NOW)
    status, body = decode_message(response, "response")
    assert status in {s.value for s in Status}
    if status != Status.OK:
        assert body  # every error says why


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x00", "shorter than its 3-byte header"),
        (b"\x02\x00\x05abc", "says 5 body bytes but carries 3"),
        (b"\x02\xff\xff", "exceeds 4096"),
    ],
)
def test_malformed_requests(data: bytes, message: str) -> None:
    status, body = decode_message(DirectoryServer().handle(ALICE.node_id, data, NOW), "response")
    assert status == Status.BAD_REQUEST and message in body.decode()


def test_publish_resolve_unpublish_sans_io() -> None:
    server = DirectoryServer(Directory(capacity=1))
    rec = NodeRecord(ALICE.node_id, 1, NOW + 60, None, (("192.0.2.1", 1),), "alice").sign(ALICE)
    ok = encode_message(Status.OK)
    assert server.handle(ALICE.node_id, encode_message(Op.PUBLISH, rec.data), NOW) == ok
    status, body = decode_message(server.handle(BOB.node_id, encode_message(Op.RESOLVE_NAME, b"alice"), NOW), "r")
    assert status == Status.OK and SignedNodeRecord.parse(body).verify(NOW, ALICE.node_id) == rec.record
    full = NodeRecord(BOB.node_id, 1, NOW + 60).sign(BOB)
    status, body = decode_message(server.handle(BOB.node_id, encode_message(Op.PUBLISH, full.data), NOW), "r")
    assert status == Status.FULL
    status, body = decode_message(server.handle(ALICE.node_id, encode_message(Op.UNPUBLISH, b"x"), NOW), "r")
    assert status == Status.BAD_REQUEST and b"takes no body" in body
    assert server.handle(BOB.node_id, encode_message(Op.UNPUBLISH), NOW) == ok  # bob's (absent) record only
    assert (
        decode_message(server.handle(BOB.node_id, encode_message(Op.RESOLVE, ALICE.node_id.to_bytes()), NOW), "r")[0]
        == Status.OK
    )
    assert server.handle(ALICE.node_id, encode_message(Op.UNPUBLISH), NOW) == ok
    status, _ = decode_message(
        server.handle(BOB.node_id, encode_message(Op.RESOLVE, ALICE.node_id.to_bytes()), NOW), "r"
    )
    assert status == Status.NOT_FOUND
    status, body = decode_message(server.handle(BOB.node_id, encode_message(Op.RESOLVE_NAME, b"\xff"), NOW), "r")
    assert status == Status.BAD_REQUEST
    assert server.answered[Status.OK] >= 4
