"""Relay frames (codec, strictness, fuzz) and the RelayRouter, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_p2p.errors import ProtocolError
from asgi_p2p.identity import NodeId, SecretKey
from asgi_p2p.relay.proto import (
    FORWARD_OVERHEAD,
    RELAY_ALPN,
    Error,
    ErrorCode,
    Frame,
    ObservedAddr,
    PlaneToken,
    Recv,
    RelayFull,
    RelayLimits,
    RelayRouter,
    Send,
    Signal,
    TokenBucket,
    parse_frame,
)

node_ids = st.binary(min_size=32, max_size=32).map(NodeId)
packets = st.binary(min_size=1, max_size=1500)
ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(Send, node_ids, packets),
    st.builds(Recv, node_ids, packets),
    st.builds(ObservedAddr, ips, st.integers(0, 65535)),
    st.builds(Signal, node_ids, packets),
    st.builds(PlaneToken, st.binary(min_size=8, max_size=8)),
    st.builds(Error, st.integers(0, 255), st.text(max_size=200), st.one_of(st.none(), node_ids)),
    st.builds(
        Error,
        st.just(ErrorCode.TOO_LARGE),
        st.text(max_size=200),
        st.one_of(st.none(), node_ids),
        st.integers(0, 0xFFFF_FFFF),
    ),
)

A = SecretKey.from_seed("relay-a").node_id
B = SecretKey.from_seed("relay-b").node_id
C = SecretKey.from_seed("relay-c").node_id


# -- codec ---------------------------------------------------------------------------


def test_alpn() -> None:
    assert RELAY_ALPN == "asgi-p2p/relay/1"


@given(frames)
def test_round_trip(frame: Frame) -> None:
    data = frame.encode()
    assert data[0] == 1
    assert parse_frame(data) == frame


@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_fuzz_parse_is_strict_and_canonical(data: bytes) -> None:
    """Arbitrary bytes either raise ProtocolError or parse to a frame that re-encodes identically."""
    for blob in (data, b"\x01" + data, b"\x01\x05" + data, b"\x01\x05\x03" + data):
        try:
            frame = parse_frame(blob)
        except ProtocolError as exc:
            assert str(exc).startswith("malformed relay frame: ")
        else:
            assert frame.encode() == blob


@given(frames, st.data())
def test_truncation_is_refused(frame: Frame, data: st.DataObject) -> None:
    encoded = frame.encode()
    if isinstance(frame, (Send, Recv, Signal)):
        cut = data.draw(st.integers(0, 2 + 32))  # the packet runs to the end: only the header can be cut
    else:
        cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(ProtocolError):
        parse_frame(encoded[:cut])


@given(
    st.one_of(
        st.builds(ObservedAddr, ips, st.integers(0, 65535)),
        st.builds(Error, st.integers(0, 255), st.text(max_size=200)),
        st.builds(Error, st.just(ErrorCode.TOO_LARGE), st.text(max_size=200), st.none(), st.integers(0, 0xFFFF_FFFF)),
    )
)
def test_trailing_bytes_are_refused(frame: Frame) -> None:
    with pytest.raises(ProtocolError, match="trailing"):
        parse_frame(frame.encode() + b"\x00")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated while reading version"),
        (b"\x02\x01", "unsupported version 2"),
        (b"\x01", "truncated while reading frame type"),
        (b"\x01\x09", "unknown frame type 9"),
        (b"\x01\x06\x00" + bytes(8), "PLANE_TOKEN offers plane version 0"),
        (b"\x01\x06\x01" + bytes(7), "truncated while reading PLANE_TOKEN token"),
        (b"\x01\x01" + bytes(31), "truncated while reading SEND node id"),
        (b"\x01\x01" + bytes(32), "SEND carries an empty packet"),
        (b"\x01\x04" + bytes(32), "SIGNAL carries an empty payload"),
        (b"\x01\x03\x05" + bytes(6), "unknown address family 5"),
        (b"\x01\x03\x04\x01\x02\x03\x04\x00", "truncated while reading OBSERVED_ADDR address port"),
        (b"\x01\x05\x01\x04\x00\x00", r"ERROR flags 0x04 set unknown bits"),
        (b"\x01\x05\x03\x80\x00\x00", r"ERROR flags 0x80 set unknown bits"),
        (b"\x01\x05\x01\x02" + bytes(6), r"ERROR code 1 carries fits, which only TOO_LARGE \(3\) does"),
        (b"\x01\x05\x03\x02\x00\x00\x04", "truncated while reading ERROR fits"),
        (b"\x01\x05\x03\x03" + bytes(32) + b"\x00\x00", "truncated while reading ERROR fits"),
        (b"\x01\x05\x03\x02\x00\x00\x04\x70\x00", "truncated while reading ERROR message length"),
        (b"\x01\x05\x01\x00\x00\x05abc", "truncated while reading ERROR message"),
        (b"\x01\x05\x01\x00\x00\x02\xff\xfe", "ERROR message is not valid UTF-8"),
        (b"\x01\x05\x01\x00\x04\x01" + bytes(1025), "exceeds the limit 1024"),
    ],
)
def test_malformed_frames_have_clear_messages(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_frame(data)


def test_frame_constructors_validate() -> None:
    with pytest.raises(ValueError, match="empty"):
        Send(A, b"")
    with pytest.raises(ValueError, match="not an IP address"):
        ObservedAddr("relay.example", 1)
    with pytest.raises(ValueError, match=r"0\.\.255"):
        Error(256, "x")
    with pytest.raises(ValueError, match="longer than"):
        Error(1, "x" * 1025)
    assert ObservedAddr("2001:DB8::1", 443).addr == ("2001:db8::1", 443)
    assert Error(ErrorCode.TOO_LARGE, "x").error_code is ErrorCode.TOO_LARGE
    assert Error(200, "x").error_code is None
    with pytest.raises(ValueError, match="only a TOO_LARGE error carries fits"):
        Error(ErrorCode.RATE_LIMITED, "x", fits=10)
    with pytest.raises(ValueError, match="fits must be"):
        Error(ErrorCode.TOO_LARGE, "x", fits=-1)
    with pytest.raises(ValueError, match="fits must be"):
        Error(ErrorCode.TOO_LARGE, "x", fits=1 << 32)
    assert len(Send(A, b"xyz").encode()) == 3 + FORWARD_OVERHEAD == len(Recv(A, b"xyz").encode())


# -- token bucket ---------------------------------------------------------------------


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert all(bucket.take(1, 0.0) for _ in range(5))
    assert not bucket.take(1, 0.0)
    assert bucket.take(1, 0.1)  # refilled one token
    assert not bucket.take(1, 0.1)
    assert not bucket.take(1, 0.05)  # time going back neither refills nor breaks it
    assert bucket.take(5, 100.0) and not bucket.take(1, 100.0)  # refill is capped at the burst
    with pytest.raises(ValueError):
        TokenBucket(0, 1, 0.0)


# -- router ---------------------------------------------------------------------------


def router(**limits: float) -> RelayRouter:
    r = RelayRouter(RelayLimits(**limits))  # type: ignore[arg-type]
    r.register(A, 0.0)
    r.register(B, 0.0)
    return r


def send(r: RelayRouter, src: NodeId, dst: NodeId, packet: bytes, now: float = 0.0) -> list[tuple[NodeId, Frame]]:
    return [(node, parse_frame(frame)) for node, frame in r.handle_datagram(src, Send(dst, packet).encode(), now)]


def test_forwards_send_as_recv() -> None:
    r = router()
    assert send(r, A, B, b"quic packet") == [(B, Recv(A, b"quic packet"))]
    assert r.stats.forwarded_packets == 1 and r.stats.forwarded_bytes == 11


def test_signal_is_forwarded_with_source() -> None:
    r = router()
    actions = r.handle_datagram(A, Signal(B, b"call me maybe").encode(), 0.0)
    assert [(n, parse_frame(f)) for n, f in actions] == [(B, Signal(A, b"call me maybe"))]
    assert r.stats.signals == 1


def test_unknown_destination() -> None:
    r = router()
    ((node, frame),) = send(r, A, C, b"x")
    assert node == A and isinstance(frame, Error)
    assert frame.code == ErrorCode.UNKNOWN_DESTINATION and frame.node == C
    assert "not connected to this relay" in frame.message
    assert r.stats.dropped_unknown_destination == 1


def test_too_large_for_destination() -> None:
    r = router()
    r.set_max_datagram_size(B, 100)
    assert send(r, A, B, bytes(100 - FORWARD_OVERHEAD))[0][0] == B  # exactly fits
    ((node, frame),) = send(r, A, B, bytes(100 - FORWARD_OVERHEAD + 1))
    assert node == A and isinstance(frame, Error) and frame.code == ErrorCode.TOO_LARGE
    assert frame.node == B and frame.fits == 66  # the size that fits, as a number
    assert "at most 66 bytes" in frame.message  # and in words, for logs
    assert r.stats.dropped_too_large == 1
    r.register(C, 0.0, max_datagram_size=50)
    ((_, frame),) = send(r, A, C, bytes(20))
    assert isinstance(frame, Error) and frame.code == ErrorCode.TOO_LARGE and frame.fits == 50 - FORWARD_OVERHEAD
    ((_, data),) = r.handle_datagram(A, Signal(C, bytes(17)).encode(), 0.0)  # a SIGNAL too: the same fits
    assert parse_frame(data) == Error(ErrorCode.TOO_LARGE, frame.message.replace("20-byte", "17-byte"), C, 16)


def test_only_too_large_errors_carry_fits() -> None:
    r = router(packets_per_second=1, packet_burst=1)
    ((_, unknown),) = send(r, A, C, b"x")
    send(r, A, B, b"x")
    ((_, limited),) = send(r, A, B, b"x")
    assert isinstance(unknown, Error) and unknown.code == ErrorCode.UNKNOWN_DESTINATION and unknown.fits is None
    assert isinstance(limited, Error) and limited.code == ErrorCode.RATE_LIMITED and limited.fits is None


def test_error_wire_layout() -> None:
    """Frames without fits keep their old bytes; fits is a u32 after the node id (flag 0x02)."""
    assert Error(ErrorCode.UNKNOWN_DESTINATION, "m").encode() == b"\x01\x05\x02\x00\x00\x01m"
    assert Error(ErrorCode.UNKNOWN_DESTINATION, "m", B).encode() == b"\x01\x05\x02\x01" + B.to_bytes() + b"\x00\x01m"
    assert Error(ErrorCode.TOO_LARGE, "m", None, 1136).encode() == b"\x01\x05\x03\x02\x00\x00\x04\x70\x00\x01m"
    data = b"\x01\x05\x03\x03" + B.to_bytes() + (1136).to_bytes(4, "big") + b"\x00\x01m"
    assert Error(ErrorCode.TOO_LARGE, "m", B, 1136).encode() == data
    assert parse_frame(data) == Error(ErrorCode.TOO_LARGE, "m", B, 1136)


def test_error_frames_fit_the_sender() -> None:
    r = RelayRouter()
    r.register(A, 0.0, max_datagram_size=60)
    actions = r.handle_datagram(A, Send(C, b"x").encode(), 0.0)
    assert all(len(frame) <= 60 for _, frame in actions)
    assert isinstance(parse_frame(actions[0][1]), Error)
    # a TOO_LARGE refusal (4 bytes longer) is shortened to fit too, and keeps its fits
    r.register(B, 0.0, max_datagram_size=40)
    ((node, frame),) = r.handle_datagram(A, Send(B, b"x" * 7).encode(), 0.0)
    error = parse_frame(frame)
    assert node == A and len(frame) == 60 and isinstance(error, Error) and error.fits == 6


def test_packet_rate_limit_and_refill() -> None:
    r = router(packets_per_second=10, packet_burst=5, errors_per_second=1, error_burst=2)
    results = [send(r, A, B, b"x", now=0.0) for _ in range(10)]
    assert sum(1 for res in results if res and res[0][0] == B) == 5
    errors = [res[0][1] for res in results if res and res[0][0] == A]
    assert len(errors) == 2  # errors themselves are rate limited
    assert all(isinstance(e, Error) and e.code == ErrorCode.RATE_LIMITED for e in errors)
    assert r.stats.dropped_rate_limited == 5 and r.stats.errors_suppressed == 3
    assert send(r, A, B, b"x", now=0.1)[0][0] == B  # one token back after 100 ms
    assert send(r, B, A, b"x", now=0.0)[0][0] == A  # limits are per client


def test_bandwidth_limit() -> None:
    r = router(bytes_per_second=1000, byte_burst=1200)
    assert send(r, A, B, bytes(1000), 0.0)[0][0] == B
    ((node, frame),) = send(r, A, B, bytes(1000), 0.0)
    assert node == A and isinstance(frame, Error) and frame.code == ErrorCode.RATE_LIMITED
    assert "bytes/s" in frame.message
    assert send(r, A, B, bytes(1000), 0.8)[0][0] == B  # 200 left + 800 refilled


def test_dropped_packets_do_not_consume_tokens() -> None:
    r = router(bytes_per_second=1000, byte_burst=1200)
    send(r, A, B, bytes(1000), 0.0)
    for _ in range(50):  # a flood above the limit is refused without draining the bucket further
        send(r, A, B, bytes(1000), 0.0)
    assert send(r, A, B, bytes(150), 0.0)[0][0] == B


def test_default_budget_forwards_a_full_100_mbit_download() -> None:
    """One download over a 100 Mbit/s link: 12.5 MB/s of full relayed QUIC packets from the
    sender for 4 s, and the receiver's ACKs (one per two packets) the other way: neither the
    sender's budget nor the receiver's (destination) budget holds a packet back."""
    r = router()
    packet = bytes(1200 - FORWARD_OVERHEAD)
    rate = 12.5e6 / len(packet)  # packets per second
    n = int(4 * rate)
    for i in range(n):
        now = i / rate
        assert send(r, A, B, packet, now)[0][0] == B
        if i % 2:
            assert send(r, B, A, bytes(40), now)[0][0] == A
    assert r.stats.dropped_rate_limited == 0 and r.stats.forwarded_packets == n + n // 2
    assert r.queued_bytes == 0  # nothing waited for the destination's budget
    # and the budget still holds a flood back: four times that rate for 1.5 s is refused in part
    for i in range(int(6 * rate)):
        send(r, A, B, packet, 4.0 + i / (4 * rate))
    assert r.stats.dropped_rate_limited > 0


def test_client_table_is_bounded() -> None:
    r = RelayRouter(RelayLimits(max_clients=2))
    r.register(A, 0.0)
    r.register(B, 0.0)
    with pytest.raises(RelayFull, match="relay is full") as info:
        r.register(C, 0.0)
    frame = parse_frame(info.value.frame)
    assert isinstance(frame, Error) and frame.code == ErrorCode.SERVER_FULL
    r.register(A, 1.0)  # a reconnecting client still fits
    assert len(r) == 2 and C not in r and r.stats.refused_full == 1


def test_reconnect_replaces_and_old_unregister_is_ignored() -> None:
    r = RelayRouter()
    r.register(A, 0.0, conn="conn-1")
    r.register(A, 1.0, conn="conn-2")
    assert not r.unregister(A, "conn-1")  # the old connection closing late
    assert A in r
    assert r.unregister(A, "conn-2")
    assert A not in r and not r.unregister(A)


def test_observed_address() -> None:
    r = RelayRouter()
    ((node, frame),) = r.register(A, 0.0, observed_addr=("198.51.100.7", 40000))
    assert node == A and parse_frame(frame) == ObservedAddr("198.51.100.7", 40000)
    assert r.update_observed_addr(A, ("198.51.100.7", 40000)) == []  # unchanged
    ((_, frame),) = r.update_observed_addr(A, ("198.51.100.7", 40001))  # NAT rebinding
    assert parse_frame(frame) == ObservedAddr("198.51.100.7", 40001)
    assert r.observed_addr(A) == ("198.51.100.7", 40001)


def test_client_may_not_send_relay_frames() -> None:
    r = router()
    for frame in (Recv(B, b"x"), ObservedAddr("1.2.3.4", 1), Error(1, "x")):
        with pytest.raises(ProtocolError, match="only a relay may send"):
            r.handle_datagram(A, frame.encode(), 0.0)
    with pytest.raises(ProtocolError, match="malformed relay frame"):
        r.handle_datagram(A, b"\x01\x01", 0.0)
    with pytest.raises(KeyError, match="not registered"):
        r.handle_datagram(C, Send(A, b"x").encode(), 0.0)


def test_limits_validate() -> None:
    with pytest.raises(ValueError, match="max_datagram_size"):
        RelayLimits(max_datagram_size=10)
    with pytest.raises(ValueError, match="max_clients"):
        RelayLimits(max_clients=0)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=80))
def test_forwarding_a_send_frame_equals_parsing_and_re_encoding_it(tail: bytes) -> None:
    """The router's per-packet path (no frame objects) accepts and produces exactly what parse_frame does."""
    data = b"\x01\x01" + B.to_bytes() + tail
    r = router()
    try:
        expected = Recv(A, parse_frame(data).packet).encode()  # type: ignore[union-attr]
    except ProtocolError:
        with pytest.raises(ProtocolError, match="empty packet"):
            r.handle_datagram(A, data, 0.0)
        return
    ((node, frame),) = r.handle_datagram(A, data, 0.0)
    assert node == B and frame == expected and isinstance(frame, bytes)
    assert r.stats.forwarded_bytes == len(tail)
