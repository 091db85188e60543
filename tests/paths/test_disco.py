"""Disco hole-punching messages: sealing, opening, authentication, replay guard, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_p2p.errors import ProtocolError
from asgi_p2p.identity import NodeId, SecretKey
from asgi_p2p.paths.disco import (
    DISCO_MAGIC,
    MAX_CALL_ME_MAYBE_ADDRS,
    CallMeMaybe,
    DiscoAuthError,
    DiscoMessage,
    Ping,
    Pong,
    ReplayGuard,
    is_disco,
    open_packet,
    peek_sender,
    seal,
)

ALICE = SecretKey.from_seed("disco-alice")
BOB = SecretKey.from_seed("disco-bob")
MALLORY = SecretKey.from_seed("disco-mallory")
T0 = 1_700_000_000.0  # shared clock at the start of each test
TX = bytes(range(12))

ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
addresses = st.tuples(ips, st.integers(0, 65535))
messages: st.SearchStrategy[DiscoMessage] = st.one_of(
    st.binary(min_size=12, max_size=12).map(Ping),
    st.builds(Pong, st.binary(min_size=12, max_size=12), addresses),
    st.lists(addresses, max_size=MAX_CALL_ME_MAYBE_ADDRS).map(lambda a: CallMeMaybe(tuple(a))),
)


# -- codec ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(messages, st.floats(0, 4e9))
def test_seal_open_round_trip(message: DiscoMessage, ts: float) -> None:
    data = seal(message, ALICE, BOB.node_id, ts)
    assert is_disco(data)
    assert peek_sender(data) == ALICE.node_id
    packet = open_packet(data, BOB.node_id, ALICE.node_id)
    assert packet.message == message
    assert packet.sender == ALICE.node_id
    assert abs(packet.timestamp - ts) <= 0.0005


def test_magic_can_never_be_quic() -> None:
    first = DISCO_MAGIC[0]
    assert first & 0x80 == 0  # not a long header
    assert first & 0x40 == 0  # fixed bit clear: not a valid short header (nor a stateless reset)
    data = seal(Ping(TX), ALICE, BOB.node_id, T0)
    assert data[0] & 0xC0 == 0


def test_aioquic_drops_a_disco_packet_as_not_quic() -> None:
    from aioquic._buffer import Buffer
    from aioquic.quic.packet import pull_quic_header

    data = seal(Ping(TX), ALICE, BOB.node_id, T0)
    with pytest.raises(ValueError):
        pull_quic_header(Buffer(data=data), host_cid_length=8)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_open_raises_only_protocol_error(data: bytes) -> None:
    for blob in (data, DISCO_MAGIC + data, DISCO_MAGIC + b"\x01\x01" + data):
        try:
            open_packet(blob, BOB.node_id)
        except ProtocolError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([b"", DISCO_MAGIC]))
def test_fuzz_peek_sender_raises_only_protocol_error(data: bytes, prefix: bytes) -> None:
    """peek_sender (run on every datagram that looks like disco) names the claimed sender or refuses."""
    blob = prefix + data
    try:
        sender = peek_sender(blob)
    except ProtocolError as exc:
        assert str(exc).startswith("malformed disco packet: ")
    else:
        assert is_disco(blob) and sender.to_bytes() == blob[7:39]


@settings(max_examples=100, deadline=None)
@given(messages, st.data())
def test_any_bit_flip_is_refused(message: DiscoMessage, data: st.DataObject) -> None:
    packet = bytearray(seal(message, ALICE, BOB.node_id, T0))
    i = data.draw(st.integers(0, len(packet) - 1))
    packet[i] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(ProtocolError):
        open_packet(bytes(packet), BOB.node_id, ALICE.node_id)


@settings(max_examples=100, deadline=None)
@given(messages, st.data())
def test_truncation_and_extension_are_refused(message: DiscoMessage, data: st.DataObject) -> None:
    packet = seal(message, ALICE, BOB.node_id, T0)
    cut = data.draw(st.integers(0, len(packet) - 1))
    with pytest.raises(ProtocolError):
        open_packet(packet[:cut], BOB.node_id, ALICE.node_id)
    with pytest.raises(ProtocolError):
        open_packet(packet + data.draw(st.binary(min_size=1, max_size=8)), BOB.node_id, ALICE.node_id)


def test_authentication_failures() -> None:
    data = seal(Ping(TX), ALICE, BOB.node_id, T0)
    with pytest.raises(DiscoAuthError, match="expected"):
        open_packet(data, BOB.node_id, MALLORY.node_id)  # not the peer we expect
    with pytest.raises(DiscoAuthError, match="bad signature"):
        open_packet(data, MALLORY.node_id, ALICE.node_id)  # addressed to someone else
    forged = data[:7] + ALICE.node_id.to_bytes() + seal(Ping(TX), MALLORY, BOB.node_id, T0)[39:]
    with pytest.raises(DiscoAuthError, match="bad signature"):
        open_packet(forged, BOB.node_id, ALICE.node_id)  # Mallory signs but claims to be Alice


def test_malformed_messages_are_clear() -> None:
    with pytest.raises(ProtocolError, match="magic"):
        peek_sender(b"\xc0" + bytes(200))
    with pytest.raises(ProtocolError, match="shorter than the minimum"):
        open_packet(DISCO_MAGIC + b"\x01", BOB.node_id)
    good = seal(Ping(TX), ALICE, BOB.node_id, T0)
    with pytest.raises(ProtocolError, match="unsupported version 9"):
        open_packet(good[:5] + b"\x09" + good[6:], BOB.node_id)
    with pytest.raises(ProtocolError, match="unknown message type 7"):
        open_packet(good[:6] + b"\x07" + good[7:], BOB.node_id)
    cmm = bytearray(seal(CallMeMaybe((("1.2.3.4", 5),)), ALICE, BOB.node_id, T0))
    cmm[48] = 5  # address family (the header is 47 bytes, then the count)
    with pytest.raises(ProtocolError, match="unknown address family 5"):
        open_packet(bytes(cmm), BOB.node_id)
    cmm[48], cmm[47] = 4, 200  # address count
    with pytest.raises(ProtocolError, match="more than the limit"):
        open_packet(bytes(cmm), BOB.node_id)


def test_message_validation() -> None:
    with pytest.raises(ValueError, match="12 bytes"):
        Ping(b"short")
    with pytest.raises(ValueError, match="not an IP address"):
        Pong(TX, ("example.com", 1))
    with pytest.raises(ValueError, match="at most"):
        CallMeMaybe(tuple(("10.0.0.1", p) for p in range(MAX_CALL_ME_MAYBE_ADDRS + 1)))
    with pytest.raises(ValueError, match="port"):
        CallMeMaybe((("10.0.0.1", 70000),))
    assert Pong(TX, ("::FFFF:1.2.3.4", 1)).observed == ("::ffff:102:304", 1)


def test_node_ids_in_messages() -> None:
    assert isinstance(peek_sender(seal(Ping(TX), ALICE, BOB.node_id, T0)), NodeId)


# -- replay guard -----------------------------------------------------------------------


def test_replay_guard_window_and_cache() -> None:
    guard = ReplayGuard(window=10, capacity=3)
    assert guard.check(b"a", 100, 100) is None
    assert guard.check(b"a", 100, 101) == "replayed packet"
    assert "old" in (guard.check(b"b", 80, 100) or "")
    assert "future" in (guard.check(b"b", 120, 100) or "")
    assert guard.check(b"b", 101, 101) is None
    assert guard.check(b"c", 102, 102) is None
    assert guard.check(b"d", 103, 103) is None  # evicts a (t=100): packets at t<=100 are refused now
    assert len(guard) == 3
    assert "cache was full" in (guard.check(b"e", 100, 103) or "")
    assert guard.check(b"a", 100, 103) is not None
    assert guard.check(b"b", 101, 104) == "replayed packet"
    assert guard.check(b"f", 200, 200) is None  # everything older expired
    assert len(guard) == 1
