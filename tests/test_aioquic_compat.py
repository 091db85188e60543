"""Each hook into aioquic's private API, tested sans-I/O (two QuicConnections in memory).

If one of these fails after an aioquic upgrade, the hook in
asgi_p2p/aioquic_compat.py must be rewritten before anything else.
"""

from __future__ import annotations

import os
import random
from typing import Any

import aioquic
import pytest
from aioquic import tls
from aioquic.buffer import Buffer, encode_uint_var
from aioquic.h3.connection import ErrorCode, FrameError, FrameType, Setting, StreamType, encode_frame
from aioquic.h3.events import H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.congestion.base import create_congestion_control
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent, StreamDataReceived
from aioquic.quic.packet import QuicPacketType, pull_quic_header
from aioquic.quic.packet_builder import QuicPacketBuilder, QuicSentPacket
from aioquic.quic.recovery import QuicPacketPacer
from aioquic.tls import Epoch
from cryptography.hazmat.primitives.asymmetric import x25519

from asgi_p2p import SecretKey
from asgi_p2p import aioquic_compat as hooks
from asgi_p2p.endpoint.tls import node_certificate

CLIENT_ADDR = ("10.0.0.1", 1000)
SERVER_ADDR = ("10.0.0.2", 2000)


def test_aioquic_is_the_pinned_version() -> None:
    assert aioquic.__version__ == "1.7.2"


class Pair:
    def __init__(
        self,
        client_key: SecretKey | None,
        server_key: SecretKey,
        *,
        window: int = 1 << 20,
        cc: str = "reno",
        max_datagram_size: int = 1200,
    ) -> None:
        def cfg(is_client: bool, key: SecretKey | None) -> QuicConfiguration:
            return QuicConfiguration(
                is_client=is_client,
                alpn_protocols=["test"],
                certificate=node_certificate(key) if key else None,
                private_key=key.private_key if key else None,
                verify_mode=0,
                max_stream_data=window,
                congestion_control_algorithm=cc,
                max_datagram_size=max_datagram_size,
            )

        self.now = 0.0
        self._server_cfg = cfg(False, server_key)
        self.client = QuicConnection(configuration=cfg(True, client_key))
        self.events: dict[str, list[QuicEvent]] = {"client": [], "server": []}
        self.pending: list[bytes] = []

    def start(self) -> QuicConnection:
        """Client sends its Initial; returns the server connection (not yet initialised)."""
        self.client.connect(SERVER_ADDR, now=self.now)
        self.pending = [d for d, _ in self.client.datagrams_to_send(self.now)]
        header = pull_quic_header(Buffer(data=self.pending[0]), host_cid_length=8)
        self.server = QuicConnection(
            configuration=self._server_cfg, original_destination_connection_id=header.destination_cid
        )
        return self.server

    def pump(self, rounds: int = 10) -> None:
        for data in self.pending:
            self.server.receive_datagram(data, CLIENT_ADDR, self.now)
        self.pending = []
        for _ in range(rounds):
            moved = False
            self.now += 0.01
            for data, _ in self.client.datagrams_to_send(self.now):
                self.server.receive_datagram(data, CLIENT_ADDR, self.now)
                moved = True
            for data, _ in self.server.datagrams_to_send(self.now):
                self.client.receive_datagram(data, SERVER_ADDR, self.now)
                moved = True
            for name, conn in (("client", self.client), ("server", self.server)):
                while (ev := conn.next_event()) is not None:
                    self.events[name].append(ev)
            if not moved:
                for conn in (self.client, self.server):
                    t = conn.get_timer()
                    if t is not None and t <= self.now + 1:
                        self.now = max(self.now, t)
                        conn.handle_timer(self.now)

    def terminated(self, name: str) -> ConnectionTerminated | None:
        for ev in self.events[name]:
            if isinstance(ev, ConnectionTerminated):
                return ev
        return None


def test_identity_hooks_give_both_sides_the_peer_key() -> None:
    ck, sk = SecretKey.from_seed("c"), SecretKey.from_seed("s")
    p = Pair(ck, sk)
    seen: dict[str, bytes] = {}
    hooks.install_identity_hooks(p.client, lambda raw: seen.__setitem__("client", raw))
    hooks.install_identity_hooks(p.start(), lambda raw: seen.__setitem__("server", raw))
    p.pump()
    assert seen == {"client": sk.node_id.to_bytes(), "server": ck.node_id.to_bytes()}
    assert hooks.peer_public_key(p.client) == sk.node_id.to_bytes()
    assert hooks.peer_public_key(p.server) == ck.node_id.to_bytes()
    assert any(isinstance(e, HandshakeCompleted) for e in p.events["server"])
    assert hooks.handshake_confirmed(p.client)
    assert hooks.smoothed_rtt(p.client) > 0


def test_client_check_aborts_inside_the_handshake() -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("mallory"))

    def expect_alice(raw: bytes) -> None:
        raise hooks.AlertBadCertificate("not alice")

    hooks.install_identity_hooks(p.client, expect_alice)
    hooks.install_identity_hooks(p.start(), lambda raw: None)
    stream_id = p.client.get_next_available_stream_id()
    p.client.send_stream_data(stream_id, b"secret queued before the handshake finished")
    p.pump(30)
    term = p.terminated("client")
    assert term is not None and term.error_code == 0x100 + 42 and "not alice" in term.reason_phrase
    # the server never completed the handshake and never saw application data
    assert not any(isinstance(e, (HandshakeCompleted, StreamDataReceived)) for e in p.events["server"])


def test_server_requests_and_requires_a_client_certificate() -> None:
    p = Pair(None, SecretKey.from_seed("s"))
    hooks.install_identity_hooks(p.start(), lambda raw: None)
    p.pump(30)
    assert not any(isinstance(e, HandshakeCompleted) for e in p.events["server"])
    term = p.terminated("client")
    assert term is not None and term.error_code == 0x100 + 116


def test_server_check_can_refuse_a_node() -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    hooks.install_identity_hooks(p.client, lambda raw: None)

    def deny(raw: bytes) -> None:
        raise hooks.AlertAccessDenied("go away")

    hooks.install_identity_hooks(p.start(), deny)
    p.pump(30)
    assert not hooks.handshake_confirmed(p.client)
    term = p.terminated("client")
    assert term is not None and term.error_code == 0x100 + 49 and term.reason_phrase == "go away"


def test_unacked_bytes_tracks_the_send_buffer() -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    p.start()
    p.pump()
    sid = p.client.get_next_available_stream_id()
    assert hooks.unacked_bytes(p.client, sid) == 0
    p.client.send_stream_data(sid, b"x" * 5000)
    assert hooks.unacked_bytes(p.client, sid) == 5000
    p.pump(20)
    assert hooks.unacked_bytes(p.client, sid) == 0


@pytest.mark.parametrize("consume", [False, True])
def test_receive_credit_grows_only_as_the_application_consumes(consume: bool) -> None:
    window = 16 * 1024
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"), window=window)
    consumed: dict[int, int] = {}
    hooks.install_receive_credit(p.start(), lambda sid: consumed[sid] + window if sid in consumed else None)
    p.pump()
    sid = p.client.get_next_available_stream_id()
    consumed[sid] = 0
    p.client.send_stream_data(sid, b"y" * (10 * window))
    p.pump(40)
    received = sum(len(e.data) for e in p.events["server"] if isinstance(e, StreamDataReceived))
    assert received == window  # stock aioquic would have let all 160 KiB through
    if consume:
        consumed[sid] = received
        p.server.send_ping(1)  # any packet carries the new MAX_STREAM_DATA
        p.pump(40)
        received = sum(len(e.data) for e in p.events["server"] if isinstance(e, StreamDataReceived))
        assert received == 2 * window


@pytest.mark.parametrize("consume", [False, True])
def test_connection_credit_grows_only_as_the_application_consumes(consume: bool) -> None:
    window = 256 * 1024  # per stream
    conn_window = 1 << 20  # the Pair's max_data (aioquic's default)
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"), window=window)
    consumed = 0
    hooks.install_receive_credit(p.start(), lambda sid: None, lambda received: consumed + conn_window)
    p.pump()
    for _ in range(8):  # 8 streams of a full stream window each: 2 MiB
        p.client.send_stream_data(p.client.get_next_available_stream_id(), b"z" * window)
    p.pump(60)

    def received() -> int:
        return sum(len(e.data) for e in p.events["server"] if isinstance(e, StreamDataReceived))

    assert received() == conn_window == hooks.data_received(p.server)  # stock aioquic doubles MAX_DATA
    assert hooks.max_data_sent(p.server) == conn_window
    if consume:
        consumed = conn_window // 2
        p.server.send_ping(1)
        p.pump(60)
        assert received() == conn_window + conn_window // 2
        assert hooks.max_data_sent(p.server) == consumed + conn_window


def test_send_credit_and_congestion_window() -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"), window=64 * 1024)
    p.start()
    p.pump()
    sid = p.client.get_next_available_stream_id()
    assert hooks.send_credit(p.client, sid) == 0  # no such stream yet
    p.client.send_stream_data(sid, b"x" * 10_000)
    assert hooks.send_credit(p.client, sid) == 64 * 1024
    p.pump(20)  # acknowledged: the credit is counted past the acknowledged data
    assert hooks.send_credit(p.client, sid) == 64 * 1024 - 10_000
    assert hooks.congestion_window(p.client) >= 10 * 1200
    assert hooks.received_offset(p.server, sid) == 10_000
    assert hooks.received_offset(p.server, sid + 4) is None


def _cc_pair(algorithm: str) -> Pair:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"), window=8 << 20, cc=algorithm)
    p.start()
    p.pump()
    assert hooks.handshake_confirmed(p.client)
    return p


def _cc_round(p: Pair, *, rtt: float = 0.02) -> None:
    """One round trip: the client transmits (and notes the pass), the server acknowledges."""
    p.now += rtt / 2
    sent = p.client.datagrams_to_send(p.now)
    hooks.note_transmit(p.client, p.now)
    for data, _ in sent:
        p.server.receive_datagram(data, CLIENT_ADDR, p.now)
    p.now += rtt / 2
    for data, _ in p.server.datagrams_to_send(p.now + 0.03):  # past the server's ack delay
        p.client.receive_datagram(data, SERVER_ADDR, p.now)
    while p.server.next_event() is not None:
        pass


@pytest.mark.parametrize("name", ["reno", "cubic"])
@pytest.mark.parametrize("app_limited", [True, False])
def test_window_does_not_grow_while_application_limited(name: str, app_limited: bool) -> None:
    # RFC 9002 7.8: small writes that never fill the window must not grow it;
    # aioquic's own controller (app_limited=False here) grows it on every ack
    algorithm = hooks.congestion_control_algorithm(name) if app_limited else name
    p = _cc_pair(algorithm)
    sid = p.client.get_next_available_stream_id()
    start = hooks.congestion_window(p.client)
    for _ in range(60):
        p.client.send_stream_data(sid, b"x" * 1000)
        _cc_round(p)
    assert hooks.received_offset(p.server, sid) == 60_000  # everything arrived
    if app_limited:
        assert hooks.congestion_window(p.client) == start
    else:
        assert hooks.congestion_window(p.client) >= start + 30_000


@pytest.mark.parametrize("name", ["reno", "cubic"])
def test_window_grows_when_the_window_limits_sending(name: str) -> None:
    p = _cc_pair(hooks.congestion_control_algorithm(name))
    sid = p.client.get_next_available_stream_id()
    for _ in range(10):  # application-limited first: no growth
        p.client.send_stream_data(sid, b"x" * 500)
        _cc_round(p)
    start = hooks.congestion_window(p.client)
    p.client.send_stream_data(sid, b"y" * 300_000)  # more than the window: the window limits
    for _ in range(6):
        # one pass per round trip: pacing, not the application, holds most of the window
        # back (flight < window), which is not application-limited (RFC 9002 7.8)
        _cc_round(p)
    assert hooks.congestion_window(p.client) >= 3 * start
    for _ in range(100):  # the data runs out: application-limited again, the window stays
        if hooks.received_offset(p.server, sid) == 305_000:
            break
        _cc_round(p)
    _cc_round(p)
    assert hooks.received_offset(p.server, sid) == 305_000
    grown = hooks.congestion_window(p.client)
    p.client.send_stream_data(sid, b"z" * 1000)
    for _ in range(20):
        _cc_round(p)
    assert hooks.congestion_window(p.client) == grown


def test_bbr_paces_at_its_model_rate_through_aioquics_pacer() -> None:
    # aioquic's pacer sends at window / smoothed RTT; with BBR, note_transmit puts in a pacer
    # at the controller's rate (gain x bottleneck bandwidth), which aioquic keeps updating
    p = _cc_pair(hooks.congestion_control_algorithm("bbr"))
    cc = p.client._loss._cc
    assert isinstance(cc, hooks.BbrCongestionControl)
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, b"y" * 400_000)
    for _ in range(12):
        _cc_round(p)
    pacer = p.client._loss._pacer
    assert cc.btl_bw > 0 and cc.pacing_rate is not None
    assert pacer.packet_time == pytest.approx(hooks.max_datagram_size(p.client) / cc.pacing_rate)
    # not aioquic's window / RTT rate
    aioquic_rate = cc.congestion_window / p.client._loss._rtt_smoothed
    assert abs(cc.pacing_rate - aioquic_rate) > 0.1 * aioquic_rate
    # one packet per packet time: a timer firing a microsecond after the pacer's time lets
    # one packet out (aioquic's own pacer lets out two, the second on the microsecond's credit)
    stock = QuicPacketPacer(max_datagram_size=1200)
    stock.update_rate(congestion_window=120_000, smoothed_rtt=0.1)  # 1.2 MB/s, 1 ms per packet
    for paced in (pacer, stock):
        now = p.now + 1.0
        while paced.next_send_time(now) is None:  # spend the burst's credit
            paced.update_after_send(now)
        sent = 0
        for _ in range(100):
            at = paced.next_send_time(now)
            assert at is not None
            now = at + 1e-6
            while paced.next_send_time(now) is None:
                paced.update_after_send(now)
                sent += 1
        assert sent == (100 if paced is pacer else 200)
    for _ in range(400):  # one transmit pass per round trip: a pacer's burst each
        if hooks.received_offset(p.server, sid) == 400_000:
            break
        _cc_round(p)
    _cc_round(p)
    assert hooks.received_offset(p.server, sid) == 400_000
    assert cc.bytes_in_flight == 0 and cc.tracked_packets == 0


@pytest.mark.parametrize("name", ["reno", "cubic", "bbr"])
def test_a_transmit_pass_sends_the_pacers_whole_burst_at_loopback_rates(name: str) -> None:
    # a window of MBs over a sub-millisecond RTT paces faster than aioquic's floor of 1 us per
    # packet: its bucket (burst bytes / rate) then held less than 16 packet times, at 20 MB per
    # ms less than one, and a bulk sender on loopback went one or two datagrams per pass, each
    # pass waiting for a pacing timer (~400 passes per MiB instead of ~60)
    p = _cc_pair(hooks.congestion_control_algorithm(name))
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, b"y" * 100_000)
    _cc_round(p, rtt=0.0005)  # note_transmit has installed the pacer
    p.client.send_stream_data(sid, b"z" * 1_000_000)
    loss = p.client._loss
    cc = loss._cc
    cc.congestion_window = 20_000_000
    if isinstance(cc, hooks.BbrCongestionControl):
        cc.pacing_rate = 20e9
    loss._pacer.update_rate(cc.congestion_window, 0.001)  # 20 GB/s: packet time floored at 1 us
    assert loss._pacer.packet_time == pytest.approx(1e-6)
    now = p.now + 0.001  # the bucket is full
    passes = []
    for _ in range(8):  # each pacing timer fires 50 us late, as an event loop's do
        passes.append(len(p.client.datagrams_to_send(now)))
        hooks.note_transmit(p.client, now)
        at = p.client._pacing_at
        assert at is not None  # pacing, not the window, ends every pass
        now = at + 50e-6
    assert passes == [16] * 8  # aioquic's burst each pass (its own pacer: [1] * 8)
    # at internet rates the bucket is aioquic's: burst bytes / rate
    if isinstance(cc, hooks.BbrCongestionControl):
        cc.pacing_rate = 1_000_000 / 0.05
    stock = QuicPacketPacer(max_datagram_size=1200)
    for pacer in (loss._pacer, stock):
        pacer.update_rate(congestion_window=1_000_000, smoothed_rtt=0.05)
    assert loss._pacer.bucket_max == pytest.approx(stock.bucket_max)
    assert loss._pacer.packet_time == pytest.approx(stock.packet_time)


def test_bbr_an_ack_due_while_the_pacer_holds_leaves_with_the_next_paced_packet() -> None:
    # aioquic skips pacing for an ACK only once it is overdue (ack_at < now): an ACK due at
    # exactly now, held by the pacer, left the QUIC timer at now, and the loop spun there
    p = _cc_pair(hooks.congestion_control_algorithm("bbr"))
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, b"y" * 200_000)
    for _ in range(4):
        _cc_round(p)
    pacer = p.client._loss._pacer
    while pacer.next_send_time(p.now) is None:  # the pacer's credit is spent
        pacer.update_after_send(p.now)
    p.client._spaces[Epoch.ONE_RTT].ack_at = p.now
    assert p.client.datagrams_to_send(p.now) == []  # held
    hooks.note_transmit(p.client, p.now)
    timer = p.client.get_timer()
    assert timer is not None and timer > p.now
    assert p.client._spaces[Epoch.ONE_RTT].ack_at == timer  # with the next paced packet
    p.now = timer
    assert p.client.datagrams_to_send(p.now)  # which carries it
    assert p.client._spaces[Epoch.ONE_RTT].ack_at is None


def _sent_packet(number: int, sent_time: float) -> QuicSentPacket:
    """A 1-RTT, ack-eliciting, 1200-byte packet as aioquic records it when sent."""
    return QuicSentPacket(
        epoch=Epoch.ONE_RTT,
        in_flight=True,
        is_ack_eliciting=True,
        is_crypto_packet=False,
        packet_number=number,
        packet_type=QuicPacketType.ONE_RTT,
        sent_time=sent_time,
        sent_bytes=1200,
    )


def test_cubic_leaves_the_application_limited_time_out_of_its_curve() -> None:
    # two CUBIC controllers with the same history, except that one pauses (application-
    # limited) for 10 s in congestion avoidance: afterwards it grows as the other did
    # right away, instead of jumping along the cubic curve by the pause (RFC 9438 5.8)
    ccs = [create_congestion_control(hooks.congestion_control_algorithm("cubic"), max_datagram_size=1200) for _ in "ab"]
    sent = [_sent_packet(n, 0.01) for n in range(200)]
    for cc in ccs:
        for pk in sent:
            cc.on_packet_sent(packet=pk)
        cc.on_packets_lost(now=0.1, packets=[sent[0]])  # a loss: congestion avoidance
        cc.on_packet_acked(now=0.2, packet=sent[1])  # starts the cubic epoch
    window = ccs[0].congestion_window
    assert int(0.7 * 199 * 1200) <= window < 0.71 * 199 * 1200  # reduced by the loss: congestion avoidance
    paused = ccs[1]
    for cc, resume in ((ccs[0], 0.25), (paused, 10.25)):
        cc.set_app_limited(True, 0.25)  # type: ignore[attr-defined]
        cc.on_packet_acked(now=resume, packet=sent[2])  # acknowledged while application-limited
        cc.set_app_limited(False, resume)  # type: ignore[attr-defined]
        assert cc.congestion_window == window  # no growth
    for i in range(3, 150):
        ccs[0].on_packet_acked(now=0.25 + i * 0.01, packet=sent[i])
        paused.on_packet_acked(now=10.25 + i * 0.01, packet=sent[i])
    assert ccs[0].congestion_window > 0.7 * 199 * 1200  # it grew
    assert abs(paused.congestion_window - ccs[0].congestion_window) <= 1200


def test_congestion_control_algorithm_refuses_an_unknown_name() -> None:
    with pytest.raises(ValueError, match="vegas"):
        hooks.congestion_control_algorithm("vegas")


@pytest.mark.parametrize("name", ["reno", "cubic"])
def test_initial_congestion_window_holds_at_start_and_after_an_idle_restart(name: str) -> None:
    assert hooks.congestion_control_algorithm(name) == hooks.congestion_control_algorithm(name, 10)
    algorithm = hooks.congestion_control_algorithm(name, 32)
    assert algorithm == hooks.congestion_control_algorithm(name, 32)  # registered once
    cc = create_congestion_control(algorithm, max_datagram_size=1200)
    assert cc.congestion_window == 32 * 1200
    default = create_congestion_control(hooks.congestion_control_algorithm(name), max_datagram_size=1200)
    assert default.congestion_window == 10 * 1200
    if name == "cubic":  # aioquic's CUBIC restarts slow start after 2 s idle
        cc.congestion_window = 500 * 1200
        cc.reset()
        assert cc.congestion_window == 32 * 1200
    # on a path of larger datagrams (loopback: 16 KiB) the window starts with the same bytes as
    # on a 1500-byte path, not with 32 of its datagrams
    large = create_congestion_control(algorithm, max_datagram_size=16384)
    assert large.congestion_window == 32 * hooks.INITIAL_WINDOW_DATAGRAM_SIZE == 32 * 1472
    if name == "cubic":
        large.congestion_window = 500 * 16384
        large.reset()
        assert large.congestion_window == 32 * 1472
    assert hooks.initial_window_bytes(32, 1200) == 32 * 1200
    with pytest.raises(ValueError, match=r"2\.\.1024"):
        hooks.congestion_control_algorithm(name, 1)


def test_peer_stream_limit_is_announced_and_enforced() -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    server = p.start()
    hooks.set_peer_stream_limit(server, 3)
    p.pump()
    for _ in range(5):
        p.client.send_stream_data(p.client.get_next_available_stream_id(), b"x")
    p.pump(20)
    streams = {e.stream_id for e in p.events["server"] if isinstance(e, StreamDataReceived)}
    assert len(streams) == 3  # the 4th and 5th wait until the server allows more


def test_get_stream_and_is_closing() -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    p.start()
    p.pump()
    sid = p.client.get_next_available_stream_id()
    assert hooks.get_stream(p.client, sid) is None
    p.client.send_stream_data(sid, b"x")
    stream = hooks.get_stream(p.client, sid)
    assert stream is not None and stream.stream_id == sid
    assert not hooks.is_closing(p.client)
    p.client.close()
    p.client.datagrams_to_send(p.now)  # the CONNECTION_CLOSE goes out: now closing
    assert hooks.is_closing(p.client)


def test_close_started_and_peer_close_tell_a_close_before_aioquic_reports_it() -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    p.start()
    p.pump()
    assert hooks.close_started(p.client) is None and hooks.close_started(p.server) is None
    p.client.close(error_code=0x105, reason_phrase="maintenance")
    ours = hooks.close_started(p.client)  # queued, not sent yet
    assert ours is not None and (ours.error_code, ours.reason_phrase) == (0x105, "maintenance")
    assert hooks.peer_close(p.client) is None  # our own close, not the peer's
    for data, _ in p.client.datagrams_to_send(p.now):  # the CONNECTION_CLOSE goes out: closing
        p.server.receive_datagram(data, CLIENT_ADDR, p.now)
    assert hooks.close_started(p.client) is ours and hooks.peer_close(p.client) is None
    theirs = hooks.peer_close(p.server)  # received: the server drains
    assert theirs is not None and (theirs.error_code, theirs.reason_phrase) == (0x105, "maintenance")
    assert hooks.close_started(p.server) is theirs and hooks.is_closing(p.server)
    events = []
    while (ev := p.server.next_event()) is not None:
        events.append(ev)
    assert not any(isinstance(e, ConnectionTerminated) for e in events)  # reported after the draining period
    timer = p.server.get_timer()
    assert timer is not None and timer > p.now
    p.server.handle_timer(timer)
    terminated = p.server.next_event()
    assert isinstance(terminated, ConnectionTerminated) and terminated.reason_phrase == "maintenance"
    assert hooks.close_started(p.server) is theirs


def test_max_datagram_size_can_grow_and_shrink_on_a_live_connection() -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"), window=4 << 20)
    p.start()
    p.pump()
    assert hooks.max_datagram_size(p.client) == 1200
    hooks.set_max_datagram_size(p.client, 9000)
    assert hooks.max_datagram_size(p.client) == 9000
    # slow start: the initial window again, counted in datagrams of at most 1472 bytes (not 9000)
    assert p.client._loss.congestion_window == 10 * hooks.INITIAL_WINDOW_DATAGRAM_SIZE
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, b"z" * 200_000, end_stream=True)
    sizes = [len(d) for d, _ in p.client.datagrams_to_send(p.now)]
    assert max(sizes) > 8000 and all(s <= 9000 for s in sizes)
    p.pending = []
    for _ in range(40):  # deliver nothing of that flight: it is lost; then shrink
        p.now += 0.05
        t = p.client.get_timer()
        if t is not None and t <= p.now:
            p.client.handle_timer(p.now)
        p.client.datagrams_to_send(p.now)
        if hooks.pto_count(p.client) >= 2:
            break
    assert hooks.pto_count(p.client) >= 2  # black hole: consecutive probe timeouts
    hooks.set_max_datagram_size(p.client, 1200)
    got = 0
    for _ in range(400):
        p.now += 0.01
        t = p.client.get_timer()
        if t is not None and t <= p.now:
            p.client.handle_timer(p.now)
        for data, _ in p.client.datagrams_to_send(p.now):
            assert len(data) <= 1200  # retransmissions are rebuilt at the new size
            p.server.receive_datagram(data, CLIENT_ADDR, p.now)
        for data, _ in p.server.datagrams_to_send(p.now):
            p.client.receive_datagram(data, SERVER_ADDR, p.now)
        while (ev := p.server.next_event()) is not None:
            if isinstance(ev, StreamDataReceived):
                got += len(ev.data)
        if got == 200_000:
            break
    assert got == 200_000
    assert hooks.pto_count(p.client) == 0  # acknowledgements reset it
    with pytest.raises(ValueError, match="1200"):
        hooks.set_max_datagram_size(p.client, 1000)


def test_a_padded_first_flight_is_resent_small_at_once_without_counting_a_timeout() -> None:
    """The client's Initial padded to 1264 bytes (set before connect) is lost (a small-MTU path);
    after shrinking to 1200, resend_handshake_now sends the ClientHello again now, 1200 bytes, and
    the handshake completes with no probe timeout counted."""
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    hooks.set_max_datagram_size(p.client, 1264)
    p.start()
    assert [len(d) for d in p.pending] == [1264]  # aioquic pads the Initial datagram to its size
    p.pending = []  # lost
    p.now += 0.05  # before aioquic's own probe timeout
    assert p.client.datagrams_to_send(p.now) == []
    hooks.set_max_datagram_size(p.client, 1200)
    hooks.resend_handshake_now(p.client, p.now)
    again = [d for d, _ in p.client.datagrams_to_send(p.now)]
    assert [len(d) for d in again] == [1200]
    assert hooks.pto_count(p.client) == 0
    p.pending = again
    p.pump()
    assert hooks.handshake_confirmed(p.client)
    assert any(isinstance(ev, HandshakeCompleted) for ev in p.events["client"])


def test_probe_now_ends_a_probe_timeout_backoff_at_once() -> None:
    """A flight lost to an outage: the probe timeout backs off 2**n; probe_now sends the oldest
    data again at once (past a congestion window full of lost packets) and restarts the backoff."""
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    before = p.start()
    assert not hooks.probe_now(p.client, p.now)  # handshaking: the handshake's own probes run
    p.pump()
    assert before is p.server and hooks.handshake_confirmed(p.client)
    assert not hooks.probe_now(p.client, p.now)  # no backoff to end
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, b"x" * 60_000)
    p.client.datagrams_to_send(p.now)  # the flight is lost (an outage)
    while hooks.pto_count(p.client) < 6:
        t = p.client.get_timer()
        assert t is not None
        p.now = t
        p.client.handle_timer(p.now)
        p.client.datagrams_to_send(p.now)  # the probes are lost too
    backoff = p.client.get_timer()
    assert backoff is not None and backoff - p.now > 2.0  # 2**6 probe periods away
    capped = hooks.capped_probe_time(p.client, 0.5)
    assert capped is not None and p.now < capped < backoff  # the backoff capped at 0.5 s
    assert hooks.capped_probe_time(p.client, 1000.0) is None  # a cap beyond it: QUIC's own timer
    p.client.send_stream_data(sid, b"y" * 1000)
    assert p.client.datagrams_to_send(p.now) == []  # the lost flight fills the congestion window
    p.now += 0.1  # the path is back (the caller heard the peer)
    assert hooks.probe_now(p.client, p.now)
    assert hooks.pto_count(p.client) == 0
    assert hooks.capped_probe_time(p.client, 0.5) is None  # no backoff
    probe = p.client.datagrams_to_send(p.now)
    assert len(probe) >= 1  # a probe leaves now, not at the backoff's end
    for data, _ in probe:
        p.server.receive_datagram(data, CLIENT_ADDR, p.now)
    got = 0
    p.pending = []
    for _ in range(300):  # the ACK of the probe lets the rest go again
        p.now += 0.01
        for conn in (p.client, p.server):
            t = conn.get_timer()
            if t is not None and t <= p.now:
                conn.handle_timer(p.now)
        for data, _ in p.client.datagrams_to_send(p.now):
            p.server.receive_datagram(data, CLIENT_ADDR, p.now)
        for data, _ in p.server.datagrams_to_send(p.now):
            p.client.receive_datagram(data, SERVER_ADDR, p.now)
        while (ev := p.server.next_event()) is not None:
            if isinstance(ev, StreamDataReceived):
                got += len(ev.data)
        if got == 61_000:
            break
    assert got == 61_000 and p.now < backoff  # all of it before the backoff would have ended


def _datagram_pair(*, server_frame_limit: int = 65536, max_datagram_size: int = 1200) -> Pair:
    """A handshaken Pair whose connections enabled DATAGRAM frames."""
    p = Pair(SecretKey.from_seed("dg-client"), SecretKey.from_seed("dg-server"))
    p.client._configuration.max_datagram_frame_size = 65536
    p.client._configuration.max_datagram_size = max_datagram_size
    p.client._max_datagram_size = max_datagram_size
    p._server_cfg.max_datagram_frame_size = server_frame_limit
    p.start()
    p.pump()
    assert p.client._handshake_confirmed
    return p


def _datagrams_received(p: Pair) -> list[bytes]:
    from aioquic.quic.events import DatagramFrameReceived

    p.pump()
    return [ev.data for ev in p.events["server"] if isinstance(ev, DatagramFrameReceived)]


@pytest.mark.parametrize("size", [1200, 1452, 9000])
def test_max_datagram_frame_payload_fits_one_packet_and_one_more_byte_blocks(size: int) -> None:
    p = _datagram_pair(max_datagram_size=size)
    limit = hooks.max_datagram_frame_payload(p.client)
    assert size - 40 < limit < size - 20  # header, connection id, tag, frame header
    p.client.send_datagram_frame(b"a" * limit)
    assert _datagrams_received(p) == [b"a" * limit]
    assert hooks.pending_datagram_frames(p.client) == 0
    # what the hook protects against: one byte more never leaves and blocks the queue
    p.client.send_datagram_frame(b"b" * (limit + 1))
    p.client.send_datagram_frame(b"c")
    assert _datagrams_received(p) == [b"a" * limit]
    assert hooks.pending_datagram_frames(p.client) == 2


def test_max_datagram_frame_payload_respects_the_peer_limit() -> None:
    p = _datagram_pair(server_frame_limit=100)
    limit = hooks.max_datagram_frame_payload(p.client)
    assert limit == 97  # frame type (1) + length (2 bytes from 64 on) + 97 = 100
    p.client.send_datagram_frame(b"x" * limit)
    assert _datagrams_received(p) == [b"x" * limit]
    assert p.terminated("server") is None
    p.client.send_datagram_frame(b"x" * (limit + 1))  # the peer closes the connection for this
    p.pump()
    assert p.terminated("server") is not None


def test_max_datagram_frame_payload_is_zero_without_peer_support() -> None:
    p = Pair(SecretKey.from_seed("dg-client"), SecretKey.from_seed("dg-server"))
    p.client._configuration.max_datagram_frame_size = 65536
    assert hooks.max_datagram_frame_payload(p.client) == 0  # before the handshake
    p.start()
    p.pump()
    assert hooks.max_datagram_frame_payload(p.client) == 0  # the server did not enable datagrams


@pytest.mark.parametrize("hook", [True, False])
def test_ack_with_next_packet_puts_the_ack_into_the_response(hook: bool) -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    p.start()
    p.pump()
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, b"request", end_stream=True)
    p.now += 1.0
    (request,) = [d for d, _ in p.client.datagrams_to_send(p.now)]
    p.server.receive_datagram(request, CLIENT_ADDR, p.now)  # the server's ACK is now pending
    if hook:
        hooks.ack_with_next_packet(p.server, p.now)
    p.server.send_stream_data(sid, b"response", end_stream=True)  # built at the same now
    (response,) = [d for d, _ in p.server.datagrams_to_send(p.now)]
    p.client.receive_datagram(response, SERVER_ADDR, p.now)
    later = [d for d, _ in p.server.datagrams_to_send(p.now + 0.002)]
    if hook:
        # the response acknowledged the request: the client holds nothing unacknowledged,
        # and no ACK-only packet follows
        assert hooks.unacked_bytes(p.client, sid) == 0
        assert later == []
    else:  # aioquic alone: the response leaves without the ACK, which follows on its own
        assert hooks.unacked_bytes(p.client, sid) > 0
        assert len(later) == 1


def test_ack_due_within_a_margin_leaves_now() -> None:
    # an event loop waiting in whole milliseconds wakes for an ACK due 0.3 ms ahead ~0.7 ms
    # late: the connection sends an ACK due within half a millisecond at once instead
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    p.start()
    p.pump()
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, b"x" * 1000)
    p.now += 1.0
    received = p.now
    for data, _ in p.client.datagrams_to_send(p.now):
        p.server.receive_datagram(data, CLIENT_ADDR, p.now)
    due = hooks.ack_deadline(p.server)
    assert due == pytest.approx(received + 0.001)  # aioquic's ack delay
    hooks.ack_due_within(p.server, received + 0.0004, 0.0005)  # due in 0.6 ms: it waits
    hooks.ack_due_within(p.server, received + 0.0006, 0.0)  # no margin: nothing changes
    assert hooks.ack_deadline(p.server) == due
    assert p.server.datagrams_to_send(received + 0.0006) == []
    hooks.ack_due_within(p.server, received + 0.0006, 0.0005)  # due in 0.4 ms: now
    assert hooks.ack_deadline(p.server) == received + 0.0006
    (ack,) = [d for d, _ in p.server.datagrams_to_send(received + 0.0006)]
    p.client.receive_datagram(ack, SERVER_ADDR, received + 0.0006)
    assert hooks.unacked_bytes(p.client, sid) == 0
    assert hooks.ack_deadline(p.server) is None
    hooks.ack_due_within(p.server, received + 0.0007, 0.0005)  # none pending: nothing to do
    assert hooks.ack_deadline(p.server) is None


def test_ack_with_next_packet_changes_nothing_without_a_pending_ack() -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    p.start()
    p.pump(20)
    assert p.server.datagrams_to_send(p.now + 1) == []
    hooks.ack_with_next_packet(p.server, p.now + 1)
    assert p.server.datagrams_to_send(p.now + 1) == []


def _receive_held(p: Pair, data: bytes, hold: float) -> None:
    """What PeerConnection.datagram_received does around aioquic's receive."""
    before = hooks.ack_deadline(p.client)
    p.client.receive_datagram(data, SERVER_ADDR, p.now)
    hooks.hold_lone_ack(p.client, before, p.now, hold)


def test_a_lone_packets_ack_waits_for_the_next_request_to_carry_it() -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    p.start()
    p.pump()
    sid = p.server.get_next_available_stream_id(is_unidirectional=True)
    p.now += 1.0
    p.server.send_stream_data(sid, b"response")
    (response,) = [d for d, _ in p.server.datagrams_to_send(p.now)]
    _receive_held(p, response, 0.01)
    assert hooks.ack_deadline(p.client) == pytest.approx(p.now + 0.01)
    # 5 ms later (past aioquic's 1 ms): nothing leaves on its own yet
    assert p.client.datagrams_to_send(p.now + 0.005) == []
    # the next request carries the ACK: one packet, and the server holds nothing unacknowledged
    p.now += 0.005
    req = p.client.get_next_available_stream_id()
    p.client.send_stream_data(req, b"next request", end_stream=True)
    hooks.ack_with_next_packet(p.client, p.now)
    (request,) = [d for d, _ in p.client.datagrams_to_send(p.now)]
    p.server.receive_datagram(request, CLIENT_ADDR, p.now)
    assert hooks.unacked_bytes(p.server, sid) == 0
    assert hooks.ack_deadline(p.client) is None


def test_a_held_ack_leaves_alone_at_the_hold_and_a_second_packet_ends_the_hold() -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    p.start()
    p.pump()
    sid = p.server.get_next_available_stream_id(is_unidirectional=True)
    p.now += 1.0
    p.server.send_stream_data(sid, b"one")
    (first,) = [d for d, _ in p.server.datagrams_to_send(p.now)]
    _receive_held(p, first, 0.01)
    # nothing to send: the ACK goes alone when the hold ends (the timer says when)
    assert p.client.get_timer() == pytest.approx(p.now + 0.01)
    (ack,) = [d for d, _ in p.client.datagrams_to_send(p.now + 0.01)]
    p.server.receive_datagram(ack, CLIENT_ADDR, p.now + 0.01)
    assert hooks.unacked_bytes(p.server, sid) == 0
    # a burst: the second packet, 0.2 ms after the first, makes the ACK due as aioquic has
    # it (1 ms after the first), so bulk senders are acknowledged as often as before
    p.now += 1.0
    p.server.send_stream_data(sid, b"two")
    (a,) = [d for d, _ in p.server.datagrams_to_send(p.now)]
    p.server.send_stream_data(sid, b"three")
    (b,) = [d for d, _ in p.server.datagrams_to_send(p.now + 0.0002)]
    _receive_held(p, a, 0.01)
    first_at = p.now
    p.now += 0.0002
    _receive_held(p, b, 0.01)
    assert hooks.ack_deadline(p.client) == pytest.approx(first_at + 0.001)
    (ack,) = [d for d, _ in p.client.datagrams_to_send(first_at + 0.001)]
    p.server.receive_datagram(ack, CLIENT_ADDR, first_at + 0.001)
    assert hooks.unacked_bytes(p.server, sid) == 0
    # a second packet after aioquic's delay passed: acknowledged at once
    p.now += 1.0
    p.server.send_stream_data(sid, b"four")
    (c,) = [d for d, _ in p.server.datagrams_to_send(p.now)]
    p.server.send_stream_data(sid, b"five")
    (d,) = [d for d, _ in p.server.datagrams_to_send(p.now + 0.003)]
    _receive_held(p, c, 0.01)
    p.now += 0.003
    _receive_held(p, d, 0.01)
    assert hooks.ack_deadline(p.client) == pytest.approx(p.now)


def test_largest_received_1rtt_grows_only_with_new_authenticated_packets() -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    assert hooks.largest_received_1rtt(p.client) == -1  # before any key exists
    p.start()
    p.pump(20)
    before = hooks.largest_received_1rtt(p.server)
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, b"hello")
    p.now += 1.0
    (packet,) = [d for d, _ in p.client.datagrams_to_send(p.now)]
    forged = packet[:-1] + bytes([packet[-1] ^ 1])  # fails authentication
    p.server.receive_datagram(forged, CLIENT_ADDR, p.now)
    assert hooks.largest_received_1rtt(p.server) == before
    p.server.receive_datagram(packet, CLIENT_ADDR, p.now)
    after = hooks.largest_received_1rtt(p.server)
    assert after > before
    p.server.receive_datagram(packet, CLIENT_ADDR, p.now)  # a replay
    assert hooks.largest_received_1rtt(p.server) == after


# -- HTTP/3: HookedH3Connection -------------------------------------------------------


class H3Pair:
    """A handshaken Pair with a HookedH3Connection on each side; pump() feeds them the QUIC events."""

    def __init__(
        self, *, server_static_qpack: bool = False, on_control_data: Any = None, on_field_section: Any = None
    ) -> None:
        self.p = Pair(SecretKey.from_seed("h3-c"), SecretKey.from_seed("h3-s"))
        self.p.start()
        self.p.pump()
        self.client = hooks.HookedH3Connection(self.p.client, on_control_data=on_control_data)
        self.server = hooks.HookedH3Connection(
            self.p.server, static_qpack=server_static_qpack, on_field_section=on_field_section
        )
        self._seen = {"client": 0, "server": 0}
        #: (stream id, data) of every STREAM chunk the client received
        self.client_raw: list[tuple[int, bytes]] = []
        self.h3_events: dict[str, list[H3Event]] = {"client": [], "server": []}
        self.pump()

    def pump(self) -> None:
        self.p.pump()
        for name, h3 in (("client", self.client), ("server", self.server)):
            new = self.p.events[name][self._seen[name] :]
            self._seen[name] = len(self.p.events[name])
            for ev in new:
                if name == "client" and isinstance(ev, StreamDataReceived):
                    self.client_raw.append((ev.stream_id, ev.data))
                self.h3_events[name].extend(h3.handle_event(ev))

    def exchange(self, response: list[tuple[bytes, bytes]]) -> int:
        sid = self.p.client.get_next_available_stream_id()
        request = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"peer"), (b":path", b"/")]
        self.client.send_headers(sid, request, end_stream=True)
        self.pump()
        self.server.send_headers(sid, response, end_stream=True)
        self.pump()
        return sid


@pytest.mark.parametrize("static", [True, False])
def test_h3_static_qpack_announces_no_table_and_encodes_without_one(static: bool) -> None:
    h = H3Pair(server_static_qpack=static)
    response = [(b":status", b"200"), (b"x-custom-field", b"a value long enough to be worth indexing")]
    sids = [h.exchange(response) for _ in range(3)]
    got = [ev.headers for ev in h.h3_events["client"] if isinstance(ev, HeadersReceived)]
    assert got == [response] * 3  # the static-table encoding decodes
    settings = h.client.received_settings
    assert settings is not None
    # HEADERS frames: type 0x01, length (one byte here), then the field section prefix,
    # whose Required Insert Count is 0 when the block refers to no dynamic table entry
    prefixes = [data[2:4] for sid, data in h.client_raw if sid in sids]
    server_qpack_streams = [data for sid, data in h.client_raw if sid % 4 == 3 and not data.startswith(b"\x00")]
    if static:
        assert settings[Setting.QPACK_MAX_TABLE_CAPACITY] == 0
        assert settings[Setting.QPACK_BLOCKED_STREAMS] == 0
        assert prefixes == [b"\x00\x00"] * 3
        # the QPACK encoder and decoder streams carry their stream type (0x02, 0x03) only
        assert sorted(server_qpack_streams) == [b"\x02", b"\x03"]
    else:  # aioquic alone indexes the repeated field: later blocks refer to the dynamic table
        assert settings[Setting.QPACK_MAX_TABLE_CAPACITY] == 4096
        assert prefixes[0] == b"\x00\x00" and prefixes[1] != b"\x00\x00"
        assert len(b"".join(server_qpack_streams)) > 2


def test_h3_static_qpack_decoder_refuses_the_dynamic_table() -> None:
    h = H3Pair(server_static_qpack=True)
    sid = h.p.client.get_next_available_stream_id()
    # a field section whose prefix claims Required Insert Count 1: no table to refer to
    h.p.client.send_stream_data(sid, encode_frame(FrameType.HEADERS, b"\x02\x00\x80"), end_stream=True)
    h.pump()
    h.pump()  # the CONNECTION_CLOSE the server's H3 decided on
    term = h.p.terminated("client")
    assert term is not None and term.error_code == ErrorCode.QPACK_DECOMPRESSION_FAILED
    assert h.server.is_done


def test_h3_control_data_shows_goaway_that_aioquic_skips() -> None:
    chunks: list[bytes] = []
    h = H3Pair(on_control_data=chunks.append)
    assert chunks and chunks[0][0] == StreamType.CONTROL  # from the stream type on: SETTINGS follows
    h.server.send_goaway(8)
    h.pump()
    goaway = encode_frame(FrameType.GOAWAY, encode_uint_var(8))
    assert b"".join(chunks).endswith(goaway)
    assert h.h3_events["client"] == []  # aioquic itself reports nothing
    assert not h.client.is_done


def test_h3_error_raised_by_on_control_data_closes_the_connection() -> None:
    def refuse(data: bytes) -> None:
        if FrameType.GOAWAY.to_bytes(1, "big") in data:
            raise FrameError("bad GOAWAY")

    h = H3Pair(on_control_data=refuse)
    h.server.send_goaway(4)
    h.pump()
    assert h.client.is_done
    term = h.p.terminated("server")
    assert term is not None and term.error_code == ErrorCode.H3_FRAME_ERROR and term.reason_phrase == "bad GOAWAY"


def test_h3_end_local_forgets_a_stream_reset_outside_h3() -> None:
    h = H3Pair()
    held = h.client.stream_count  # control and QPACK streams
    sid = h.p.client.get_next_available_stream_id()
    request = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"peer"), (b":path", b"/")]
    h.client.send_headers(sid, request)  # request body still to come
    h.pump()
    h.server.send_headers(sid, [(b":status", b"200")], end_stream=True)
    h.pump()
    assert h.client.stream_count == held + 1  # received all, still sending
    h.p.client.reset_stream(sid, ErrorCode.H3_REQUEST_CANCELLED)
    h.client.end_local(sid)
    assert h.client.stream_count == held
    h.client.end_local(sid)  # unknown streams are ignored
    assert h.client.stream_count == held


# -- admission: Initial packets checked before a connection exists ---------------------


def _client_initial(version: int | None = None) -> tuple[QuicConnection, bytes]:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    if version is not None:
        p.client._configuration.supported_versions = [version]
    p.client.connect(SERVER_ADDR, now=0.0)
    return p.client, p.client.datagrams_to_send(0.0)[0][0]


def _check(datagram: bytes) -> bool:
    buf = Buffer(data=datagram)
    header = pull_quic_header(buf, host_cid_length=8)
    assert header.version is not None
    packet = datagram[: header.packet_length]
    return hooks.initial_packet_decrypts(packet, buf.tell(), header.version, header.destination_cid)


@pytest.mark.parametrize("version", [0x00000001, 0x6B3343CF])  # QUIC v1 and v2 (RFC 9369)
def test_initial_packet_decrypts_accepts_a_real_client_initial(version: int) -> None:
    _, datagram = _client_initial(version)
    assert _check(datagram)


def test_initial_packet_decrypts_refuses_junk_and_tampering() -> None:
    _, datagram = _client_initial()
    tampered = bytearray(datagram)
    tampered[100] ^= 0x01  # inside the AEAD-protected payload (the packet, not the padding after it)
    assert not _check(bytes(tampered))
    # another destination connection id: other keys (the header parses, the tag fails)
    header = pull_quic_header(Buffer(data=datagram), host_cid_length=8)
    offset = datagram.index(header.destination_cid)
    moved = datagram[:offset] + bytes(8) + datagram[offset + 8 :]
    assert not _check(moved)
    # random bytes after a valid long header, and a packet too short to sample
    junk = datagram[: offset + 8 + 1 + 8 + 3] + bytes(range(256)) * 5
    assert not _check(junk[: len(datagram)])
    short = datagram[: offset + 8 + 1 + 8 + 4]
    assert not hooks.initial_packet_decrypts(short, len(short) - 1, 1, header.destination_cid)


def test_a_server_connection_takes_the_initial_keys_its_first_packet_was_checked_with() -> None:
    """The check's derived keys are reused once, for the same connection id only, and the
    handshake then completes as with keys derived by aioquic."""
    assert not hooks.reuse_checked_initial_keys()  # applied when aioquic_compat was imported
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    server = p.start()
    assert _check(p.pending[0])
    header = pull_quic_header(Buffer(data=p.pending[0]), host_cid_length=8)
    kept = hooks._KEPT_INITIAL_KEYS[(header.destination_cid, 1)][1]
    p.pump()
    assert server._cryptos_initial[1].recv is kept  # taken, not derived again
    assert (header.destination_cid, 1) not in hooks._KEPT_INITIAL_KEYS  # once only
    assert any(isinstance(e, HandshakeCompleted) for e in p.events["client"])
    assert hooks.handshake_confirmed(p.client)
    # another connection id derives its own keys (a kept entry for another id is ignored)
    q = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    assert _check(_client_initial()[1])  # keeps keys for a connection id q never uses
    other = q.start()
    q.pump()
    assert other._cryptos_initial[1].recv is not kept
    assert any(isinstance(e, HandshakeCompleted) for e in q.events["client"])


def test_encode_initial_close_terminates_the_client_with_the_reason() -> None:
    client, datagram = _client_initial()
    header = pull_quic_header(Buffer(data=datagram), host_cid_length=8)
    close = hooks.encode_initial_close(
        version=1,
        client_destination_cid=header.destination_cid,
        client_source_cid=header.source_cid,
        error_code=0x2,
        reason="too many connections",
    )
    assert len(close) < 200  # a refusal is never an amplifier
    client.receive_datagram(close, SERVER_ADDR, 0.01)
    timer = client.get_timer()  # draining ends at the timer: then the event
    assert timer is not None
    client.handle_timer(timer)
    events = []
    while (ev := client.next_event()) is not None:
        events.append(ev)
    term = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert term and term[0].error_code == 0x2 and term[0].reason_phrase == "too many connections"


def test_received_any_packet_only_after_a_decrypted_packet() -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    server = p.start()
    junk = bytearray(p.pending[0])
    junk[100] ^= 0x01
    server.receive_datagram(bytes(junk), CLIENT_ADDR, 0.0)
    assert not hooks.received_any_packet(server)
    server.receive_datagram(p.pending[0], CLIENT_ADDR, 0.0)
    assert hooks.received_any_packet(server)


# -- stateless reset tokens, idle timeout, stream bytes sent ------------------------------


def _token_for(cid: bytes) -> bytes:
    return bytes(reversed(cid)) * 2  # 16 bytes, a function of the connection id


def _short_header_dcid(quic: QuicConnection, now: float) -> bytes:
    """The destination connection id of the next 1-RTT packet ``quic`` sends (after a PING)."""
    quic.send_ping(1)
    for data, _ in quic.datagrams_to_send(now):
        if not data[0] & 0x80:
            return data[1:9]
    raise AssertionError("no short-header packet sent")


@pytest.mark.parametrize("hooked", [True, False])
def test_reset_tokens_come_from_the_function_for_every_issued_connection_id(hooked: bool) -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    issued: dict[str, list[bytes]] = {"client": [], "server": []}
    if hooked:
        hooks.install_reset_tokens(p.client, _token_for, issued["client"].append)
    server = p.start()
    if hooked:
        hooks.install_reset_tokens(server, _token_for, issued["server"].append)
    p.pump()
    assert hooks.handshake_confirmed(p.client)
    # the client sends to the server's first connection id, whose token came in the server's
    # transport parameters
    dcid = _short_header_dcid(p.client, p.now)
    assert dcid == server.host_cid
    assert (hooks.peer_reset_token(p.client) == _token_for(dcid)) is hooked
    assert hooks.peer_reset_token(p.client) is not None
    # a client's first connection id has no token (RFC 9000 18.2): the server knows none yet
    assert hooks.peer_reset_token(server) is None
    # connection ids announced later in NEW_CONNECTION_ID frames, both ways; each was reported
    # by ``issued`` before it was announced (aioquic's ConnectionIdIssued event comes later)
    for quic, peer_name in ((p.client, "server"), (server, "client")):
        for _ in range(3):
            quic.change_connection_id()
            dcid = _short_header_dcid(quic, p.now)
            token = hooks.peer_reset_token(quic)
            assert token is not None and (token == _token_for(dcid)) is hooked
            assert (dcid in issued[peer_name]) is hooked
            p.pump(2)
    if hooked:  # 7 more connection ids each (aioquic keeps 8 issued), plus the ones retired above
        assert len(issued["client"]) >= 7 and len(issued["server"]) >= 7
        assert len(set(issued["client"] + issued["server"])) == len(issued["client"]) + len(issued["server"])


def test_reset_token_function_must_return_16_bytes() -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    with pytest.raises(ValueError, match="16 bytes"):
        hooks.install_reset_tokens(p.start(), lambda cid: cid)


def test_aioquic_ignores_a_stateless_reset_so_the_endpoint_must_detect_it() -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    hooks.install_reset_tokens(p.start(), _token_for)
    p.pump()
    token = hooks.peer_reset_token(p.client)
    assert token is not None
    reset = b"\x40" + bytes(range(20)) + token  # a well-formed stateless reset with the right token
    p.client.receive_datagram(reset, SERVER_ADDR, p.now)
    assert p.client.next_event() is None and not hooks.is_closing(p.client)


def test_idle_timeout_is_the_smaller_of_both_sides() -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    p.client._configuration.idle_timeout = 7.0
    p.start()
    p.pump()
    assert hooks.idle_timeout(p.client) == 7.0
    assert hooks.idle_timeout(p.server) == 7.0  # the server's own is aioquic's default, 60 s


def test_stream_bytes_sent_is_zero_until_the_stream_leaves() -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    p.start()
    p.pump()
    sid = p.client.get_next_available_stream_id()
    assert hooks.stream_bytes_sent(p.client, sid) == 0  # no such stream yet
    p.client.send_stream_data(sid, b"request")
    assert hooks.stream_bytes_sent(p.client, sid) == 0  # queued, not sent
    p.client.datagrams_to_send(p.now)
    assert hooks.stream_bytes_sent(p.client, sid) == len(b"request")


@pytest.mark.parametrize("static", [True, False])
def test_h3_on_field_section_rewrites_fields_before_aioquic_checks_them(static: bool) -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    def rename_bad_length(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        seen.append(fields)
        return [(b"x-bad-length", v) if n == b"content-length" and not v.isdigit() else (n, v) for n, v in fields]

    for hook in (rename_bad_length, None):
        h = H3Pair(server_static_qpack=static, on_field_section=hook)
        sid = h.p.client.get_next_available_stream_id()
        request = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"peer"), (b":path", b"/")]
        h.client.send_headers(sid, [*request, (b"content-length", b"0x10")], end_stream=True)
        h.pump()
        h.pump()
        got = [ev.headers for ev in h.h3_events["server"] if isinstance(ev, HeadersReceived)]
        if hook is None:  # aioquic alone closes the whole connection
            term = h.p.terminated("client")
            assert got == [] and term is not None and term.error_code == ErrorCode.H3_MESSAGE_ERROR
        else:
            assert got == [[*request, (b"x-bad-length", b"0x10")]]
            assert seen[-1] == [*request, (b"content-length", b"0x10")]
            assert h.p.terminated("client") is None and not h.server.is_done


# -- session resumption and 0-RTT ------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class _Rng:
    def getrandbits(self, k: int) -> int:
        return 12345


class ResumePair(Pair):
    """A Pair whose server issues and resumes tickets through install_server_resumption;
    the client offers ``ticket`` (and, with ``early``, sends stream data in 0-RTT)."""

    def __init__(
        self,
        ck: SecretKey,
        sk: SecretKey,
        *,
        ticket: hooks.ClockedSessionTicket | None = None,
        sessions: dict[bytes, tuple[bytes, int]] | None = None,
        accept_early: bool = True,
        refuse: bool = False,
    ) -> None:
        super().__init__(ck, sk)
        cfg = self.client.configuration
        cfg.session_ticket = ticket
        cfg.server_name = "server"
        self.clock = _Clock()
        self.tickets: list[hooks.ClockedSessionTicket] = []
        self.client = QuicConnection(
            configuration=cfg, session_ticket_handler=lambda t: self.tickets.append(hooks.clocked_ticket(t, self.clock))
        )
        hooks.install_identity_hooks(self.client, lambda raw: None)
        self.issued: list[tuple[bytes | None, str]] = []
        self.offers: list[hooks.OfferedTicket] = []
        self.sessions = sessions if sessions is not None else {}
        self.accept_early = accept_early
        self.refuse = refuse

    def start(self) -> QuicConnection:
        server = super().start()
        hooks.install_identity_hooks(server, lambda raw: None)

        def open_ticket(offer: hooks.OfferedTicket) -> hooks.ResumableSession | None:
            self.offers.append(offer)
            if self.refuse:
                raise hooks.AlertAccessDenied("revoked")
            found = self.sessions.get(offer.ticket)
            if found is None:
                return None
            return hooks.ResumableSession(found[0], found[1], lambda: self.accept_early)

        def issue(key: bytes | None, alpn: str, suite: int, secret: bytes, age_add: int) -> bytes:
            ticket = f"ticket {len(self.issued)}".encode()
            self.issued.append((key, alpn))
            self.sessions[ticket] = (secret, suite)
            return ticket

        hooks.install_server_resumption(server, open_ticket=open_ticket, issue_ticket=issue, lifetime=3600, rng=_Rng())
        return server

    def start_early(self, data: bytes) -> tuple[int, list[QuicEvent]]:
        """Connect, write ``data`` on a new stream at once, deliver the first flight: the
        stream id and the server's events from it."""
        server = self.start()  # client.connect() ran: the first flight is pending
        sid = self.client.get_next_available_stream_id()
        self.client.send_stream_data(sid, data, end_stream=True)
        self.pending += [d for d, _ in self.client.datagrams_to_send(self.now)]
        for datagram in self.pending:
            server.receive_datagram(datagram, CLIENT_ADDR, self.now)
        self.pending = []
        early = list(iter(server.next_event, None))
        self.events["server"].extend(early)
        return sid, early


def _first_session(ck: SecretKey, sk: SecretKey) -> tuple[hooks.ClockedSessionTicket, dict[bytes, tuple[bytes, int]]]:
    p = ResumePair(ck, sk)
    p.start()
    p.pump()
    assert hooks.handshake_confirmed(p.client)
    (completed,) = [e for e in p.events["server"] if isinstance(e, HandshakeCompleted)]
    assert not completed.session_resumed
    # the ticket is the caller's bytes, issued once the client proved its key
    assert p.issued == [(ck.node_id.to_bytes(), "test")]
    (ticket,) = p.tickets
    assert ticket.ticket == b"ticket 0" and ticket.lifetime == 3600 and ticket.age_add == 12345
    return ticket, p.sessions


def test_server_resumption_issues_the_callers_ticket_and_resumes_with_0rtt() -> None:
    ck, sk = SecretKey.from_seed("c"), SecretKey.from_seed("s")
    ticket, sessions = _first_session(ck, sk)
    clock = ticket.clock
    assert isinstance(clock, _Clock)
    clock.t += 2.5
    p = ResumePair(ck, sk, ticket=ticket, sessions=sessions)
    _, early = p.start_early(b"early request")
    # the 0-RTT data is there before the handshake completed (before the client's Finished)
    assert any(isinstance(e, StreamDataReceived) and e.data == b"early request" for e in early)
    assert not any(isinstance(e, HandshakeCompleted) for e in early)
    assert p.server.tls.early_data_accepted and p.server.tls.session_resumed
    (offer,) = p.offers
    assert offer.ticket == b"ticket 0" and offer.alpn == "test" and len(offer.client_random) == 32
    assert (offer.obfuscated_age - 12345) % (1 << 32) == 2500  # the age by the ticket's clock
    p.pump()
    (completed,) = [e for e in p.events["server"] if isinstance(e, HandshakeCompleted)]
    assert completed.session_resumed and completed.early_data_accepted
    assert hooks.handshake_confirmed(p.client) and p.terminated("server") is None
    assert hooks.peer_public_key(p.server) is None  # no certificate in a resumed handshake
    assert not hooks.early_data_sendable(p.client)
    assert p.issued == [(None, "test")]  # a new ticket; the caller knows the node from the old one


def test_early_data_sendable_only_with_a_ticket_allowing_it() -> None:
    ck, sk = SecretKey.from_seed("c"), SecretKey.from_seed("s")
    p = ResumePair(ck, sk)
    p.client.connect(SERVER_ADDR, now=p.now)
    assert not hooks.early_data_sendable(p.client)


@pytest.mark.parametrize("case", ["early refused", "unknown ticket", "refused node"])
def test_server_resumption_refusals(case: str) -> None:
    ck, sk = SecretKey.from_seed("c"), SecretKey.from_seed("s")
    ticket, sessions = _first_session(ck, sk)
    p = ResumePair(
        ck,
        sk,
        ticket=ticket,
        sessions=sessions if case != "unknown ticket" else {},
        accept_early=case != "early refused",
        refuse=case == "refused node",
    )
    sid, early = p.start_early(b"early request")
    assert not p.server.tls.early_data_accepted
    assert not any(isinstance(e, StreamDataReceived) for e in early)  # 0-RTT packets dropped
    p.pump(40)
    if case == "refused node":
        closed = p.terminated("client")
        assert closed is not None and closed.error_code == 0x100 + 49 and "revoked" in closed.reason_phrase
        return
    (completed,) = [e for e in p.events["server"] if isinstance(e, HandshakeCompleted)]
    assert completed.session_resumed == (case == "early refused") and not completed.early_data_accepted
    # the client's request is sent again in 1-RTT packets and arrives after the handshake
    data = b"".join(e.data for e in p.events["server"] if isinstance(e, StreamDataReceived) and e.stream_id == sid)
    assert data == b"early request"
    if case == "unknown ticket":  # a full handshake: the client proved its key again
        assert hooks.peer_public_key(p.server) == ck.node_id.to_bytes()


def test_peer_public_key_is_extracted_once_per_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The raw key is kept per TLS context and certificate: asked again (the identity hook,
    the ticket, the endpoint) it is not extracted again, and another certificate in the same
    context gets its own key, never the one kept."""
    from cryptography.hazmat.primitives.asymmetric import ec

    ck, sk = SecretKey.from_seed("c"), SecretKey.from_seed("s")
    p = Pair(ck, sk)
    hooks.install_identity_hooks(p.client, lambda raw: None)
    hooks.install_identity_hooks(p.start(), lambda raw: None)
    p.pump()
    ctx = p.server.tls
    assert hooks.peer_public_key(p.server) == ck.node_id.to_bytes()
    calls: list[object] = []
    cert = ctx._peer_certificate
    assert cert is not None
    original = type(cert).public_key
    monkeypatch.setattr(type(cert), "public_key", lambda self: calls.append(self) or original(self))
    assert hooks.peer_public_key(p.server) == ck.node_id.to_bytes()
    assert calls == []  # kept from the handshake
    other = SecretKey.from_seed("other")
    ctx._peer_certificate = node_certificate(other)
    assert hooks.peer_public_key(p.server) == other.node_id.to_bytes()
    assert hooks.peer_public_key(p.server) == other.node_id.to_bytes()
    assert len(calls) == 1
    # a certificate with a key that is not Ed25519 is refused, whatever was kept before
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    ec_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec")])
    ec_cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_key.public_key())
        .serial_number(1)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .sign(ec_key, hashes.SHA256())
    )
    ctx._peer_certificate = ec_cert
    assert hooks.peer_public_key(p.server) is None


def test_server_resumption_reads_aioquics_parse_of_each_client_hello(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ticket lookup takes the age and random from aioquic's own parse: one parse per
    ClientHello (not two), and each connection's offer is its own ClientHello's."""
    parsed: list[tls.ClientHello] = []
    original = tls.pull_client_hello

    def counting(buf: Buffer) -> tls.ClientHello:
        hello = original(buf)
        parsed.append(hello)
        return hello

    monkeypatch.setattr(tls, "pull_client_hello", counting)
    ck, sk = SecretKey.from_seed("c"), SecretKey.from_seed("s")
    ticket, sessions = _first_session(ck, sk)
    assert len(parsed) == 1  # a full handshake: one parse, no offer
    other_ck = SecretKey.from_seed("c2")
    other_ticket, other_sessions = _first_session(other_ck, sk)
    assert len(parsed) == 2
    other_sessions[b"other"] = other_sessions.pop(b"ticket 0")
    other_ticket.ticket = b"other"
    first = ResumePair(ck, sk, ticket=ticket, sessions=sessions)
    second = ResumePair(other_ck, sk, ticket=other_ticket, sessions=other_sessions)
    first.start_early(b"a")
    second.start_early(b"b")
    assert len(parsed) == 4
    (offer,) = first.offers
    (other_offer,) = second.offers
    assert offer.ticket == b"ticket 0" and offer.client_random == parsed[2].random
    assert other_offer.ticket == b"other" and other_offer.client_random == parsed[3].random
    assert offer.client_random != other_offer.client_random
    assert first.server.tls.session_resumed and second.server.tls.session_resumed


def test_clocked_ticket_counts_age_and_validity_by_the_given_clock() -> None:
    ck, sk = SecretKey.from_seed("c"), SecretKey.from_seed("s")
    ticket, _ = _first_session(ck, sk)
    clock = ticket.clock
    assert isinstance(clock, _Clock)
    assert ticket.is_valid and ticket.obfuscated_age == 12345
    clock.t += 10.0
    assert ticket.obfuscated_age == 12345 + 10_000
    clock.t += 3600.0
    assert not ticket.is_valid


def test_client_hello_offers_one_x25519_key_share_and_the_handshake_completes() -> None:
    """aioquic's client would send four key shares (P-256, P-384, X25519, X448); a node's sends one."""
    from aioquic import tls
    from aioquic.quic.crypto import CryptoPair

    pair = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    hooks.install_identity_hooks(pair.client, lambda raw: None)
    server = pair.start()
    hooks.install_identity_hooks(server, lambda raw: None)
    datagram = pair.pending[0]
    buf = Buffer(data=datagram)
    header = pull_quic_header(buf, host_cid_length=8)
    assert header.version is not None
    crypto = CryptoPair()
    crypto.setup_initial(header.destination_cid, is_client=False, version=header.version)
    _, payload, _ = crypto.decrypt_packet(datagram[: header.packet_length], buf.tell(), 0)
    frames = Buffer(data=payload)
    assert frames.pull_uint_var() == 0x06  # the CRYPTO frame carrying the ClientHello
    frames.pull_uint_var()  # offset
    hello = tls.pull_client_hello(Buffer(data=frames.pull_bytes(frames.pull_uint_var())))
    assert [group for group, _ in hello.key_share] == [tls.Group.X25519] == hello.supported_groups
    pair.pump()
    for side in ("client", "server"):
        assert any(isinstance(e, HandshakeCompleted) for e in pair.events[side]), side


class _Rounds:
    """Drives a congestion controller sans-I/O, one round trip at a time: send a window
    of 1200-byte 1-RTT packets paced over 80 ms, then acknowledge each one an RTT after
    it left, with that RTT as sample."""

    def __init__(self, algorithm: str) -> None:
        self.cc = create_congestion_control(algorithm, max_datagram_size=1200)
        self.now = 1.0
        self.number = 0

    def round(self, rtt: float, *, lose_one: bool = False) -> int:
        """One round trip at ``rtt``; returns the window after it."""
        sent = []
        count = self.cc.congestion_window // 1200 - self.cc.bytes_in_flight // 1200
        for i in range(count):
            pk = QuicSentPacket(
                epoch=Epoch.ONE_RTT,
                in_flight=True,
                is_ack_eliciting=True,
                is_crypto_packet=False,
                packet_number=self.number,
                packet_type=QuicPacketType.ONE_RTT,
                sent_time=self.now + i * 0.080 / count,
                sent_bytes=1200,
            )
            self.number += 1
            self.cc.on_packet_sent(packet=pk)
            sent.append(pk)
        if lose_one:
            self.cc.on_packets_lost(now=self.now + rtt, packets=[sent.pop(0)])
        for pk in sent:
            assert pk.sent_time is not None
            self.now = pk.sent_time + rtt
            self.cc.on_packet_acked(now=self.now, packet=pk)
            self.cc.on_rtt_measurement(now=self.now, rtt=rtt)
        return self.cc.congestion_window


@pytest.mark.parametrize("name", ["reno", "cubic"])
def test_hystart_a_burst_of_rtt_inflation_does_not_end_slow_start(name: str) -> None:
    # RFC 9406: a round whose minimum RTT rose by more than an eighth (80 -> 104 ms) enters
    # Conservative Slow Start; the next round at 80 ms resumes slow start
    r = _Rounds(hooks.congestion_control_algorithm(name))
    for _ in range(4):
        r.round(0.080)
    assert r.cc.congestion_window == 160 * 1200  # slow start: doubling
    before = r.cc.congestion_window
    burst = r.round(0.104)
    assert r.cc.hystart.in_css  # type: ignore[attr-defined]
    assert before * 1.2 < burst < before * 2  # a quarter of slow start's growth once in CSS
    r.round(0.104)
    r.round(0.080)  # the delay fell back within CSS_ROUNDS
    assert not r.cc.hystart.in_css  # type: ignore[attr-defined]
    assert r.cc.ssthresh is None
    window = r.cc.congestion_window
    assert 2 * window - 1200 < r.round(0.080) <= 2 * window  # slow start again
    assert r.cc.ssthresh is None
    # aioquic's own controller ended slow start at the burst, for good
    stock = _Rounds(name)
    for rtt in [0.080] * 4 + [0.104] * 2 + [0.080] * 2:
        stock.round(rtt)
    assert stock.cc.ssthresh is not None
    assert stock.cc.congestion_window < r.cc.congestion_window / 2


@pytest.mark.parametrize("name", ["reno", "cubic"])
def test_hystart_a_sustained_rtt_increase_ends_slow_start_after_the_css_rounds(name: str) -> None:
    r = _Rounds(hooks.congestion_control_algorithm(name))
    for _ in range(4):
        r.round(0.080)
    r.round(0.104)  # enters CSS during this round
    assert r.cc.hystart.in_css  # type: ignore[attr-defined]
    for _ in range(hooks.HYSTART_CSS_ROUNDS - 1):
        window = r.cc.congestion_window
        assert r.round(0.104 + 0.001 * r.number / 100) <= 1.26 * window  # CSS: a quarter of doubling
        assert r.cc.ssthresh is None
    r.round(0.110)  # the fifth round in CSS ends: congestion avoidance from the window reached
    assert r.cc.ssthresh is not None
    assert r.cc.ssthresh >= r.cc.congestion_window - 2 * 1200
    window = r.cc.congestion_window
    assert r.round(0.110) <= window + 2 * 1200  # congestion avoidance: about a packet per round


@pytest.mark.parametrize("name", ["reno", "cubic"])
def test_hystart_loss_still_ends_slow_start(name: str) -> None:
    r = _Rounds(hooks.congestion_control_algorithm(name))
    for _ in range(4):
        r.round(0.080)
    window = r.cc.congestion_window
    r.round(0.080, lose_one=True)  # a loss with no RTT increase at all
    assert r.cc.ssthresh is not None
    assert r.cc.ssthresh <= 0.7 * window  # reduced (Reno halves, CUBIC takes 0.7)
    assert r.cc.congestion_window < 2 * window


@pytest.mark.parametrize("name", ["reno", "cubic"])
def test_hystart_ignores_delay_while_application_limited(name: str) -> None:
    # requests answered by a busy server: the RTT rises while the window is underused;
    # that must not end slow start (the window did not cause the delay)
    r = _Rounds(hooks.congestion_control_algorithm(name))
    for _ in range(3):
        r.round(0.080)
    r.cc.set_app_limited(True, r.now)  # type: ignore[attr-defined]
    for i in range(10):
        r.round(0.080 + 0.020 * (i + 1))
    assert r.cc.ssthresh is None
    assert not r.cc.hystart.in_css  # type: ignore[attr-defined]
    r.cc.set_app_limited(False, r.now)  # type: ignore[attr-defined]
    window = r.cc.congestion_window
    for _ in range(2):  # window-limited again: still slow start, doubling
        grown = r.round(0.080)
        assert grown > 1.9 * window
        window = grown
    assert r.cc.ssthresh is None


# -- per-connection constants --------------------------------------------------------------


def test_frame_epochs_come_from_a_cache_that_new_connections_use() -> None:
    from aioquic.quic import connection as quic_connection

    assert not hooks.cache_frame_epochs()  # applied when aioquic_compat was imported
    epochs: Any = quic_connection.EPOCHS
    assert epochs("IH01") == frozenset({Epoch.INITIAL, Epoch.HANDSHAKE, Epoch.ZERO_RTT, Epoch.ONE_RTT})
    assert epochs("1") == frozenset({Epoch.ONE_RTT})
    before = epochs.cache_info().hits
    QuicConnection(configuration=QuicConfiguration(is_client=True))
    assert epochs.cache_info().hits >= before + 30  # the frame table is built from the cache
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    p.start()
    p.pump()  # frames are still accepted in their packet-number spaces: the handshake completes
    assert any(isinstance(e, HandshakeCompleted) for e in p.events["client"])
    assert hooks.handshake_confirmed(p.client)


def test_a_client_initialized_ahead_resumes_with_0rtt_and_connect_only_writes_the_client_hello() -> None:
    ck, sk = SecretKey.from_seed("c"), SecretKey.from_seed("s")
    ticket, sessions = _first_session(ck, sk)
    p = ResumePair(ck, sk, ticket=ticket, sessions=sessions)
    hooks.initialize_ahead(p.client)
    ctx = p.client.tls
    assert hooks.early_data_sendable(p.client) is False  # no ClientHello yet: no 0-RTT keys
    sid, early = p.start_early(b"early request")
    assert p.client.tls is ctx  # connect() did not build it again
    assert b"".join(e.data for e in early if isinstance(e, StreamDataReceived) and e.stream_id == sid) == (
        b"early request"
    )
    (offer,) = p.offers
    assert offer.ticket == ticket.ticket
    p.pump()
    (completed,) = [e for e in p.events["server"] if isinstance(e, HandshakeCompleted)]
    assert completed.session_resumed and completed.early_data_accepted
    assert hooks.handshake_confirmed(p.client)
    with pytest.raises(ValueError, match="not connected yet"):
        hooks.initialize_ahead(p.client)


def test_a_client_initialized_ahead_derives_new_initial_keys_after_a_retry() -> None:
    from aioquic.quic.packet import encode_quic_retry

    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    hooks.initialize_ahead(p.client)
    p.client.connect(SERVER_ADDR, now=0.0)
    first = p.client.datagrams_to_send(0.0)[0][0]
    header = pull_quic_header(Buffer(data=first), host_cid_length=8)
    assert _check(first)
    new_cid = b"retry-08"
    p.client.receive_datagram(
        encode_quic_retry(
            version=header.version or 1,
            source_cid=new_cid,
            destination_cid=header.source_cid,
            original_destination_cid=header.destination_cid,
            retry_token=b"token",
        ),
        SERVER_ADDR,
        0.01,
    )
    again = p.client.datagrams_to_send(0.01)[0][0]
    retried = pull_quic_header(Buffer(data=again), host_cid_length=8)
    assert retried.destination_cid == new_cid and retried.token == b"token"
    assert _check(again)  # sealed with the Initial keys of the new connection id


@pytest.mark.parametrize("name", ["bbr", "reno", "cubic"])
def test_packets_sent_before_a_retry_leave_the_controllers_bytes_in_flight(name: str) -> None:
    """aioquic replaces the packet spaces after a Retry without discarding the old ones: their
    packets would count as in flight (and stay in BBR's records) for the connection's life."""
    from aioquic.quic.packet import encode_quic_retry

    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"), cc=hooks.congestion_control_algorithm(name))
    p.client.connect(SERVER_ADDR, now=0.0)
    first = p.client.datagrams_to_send(0.0)[0][0]
    hooks.note_transmit(p.client, 0.0)
    cc = p.client._loss._cc
    assert 0 < cc.bytes_in_flight <= len(first)
    header = pull_quic_header(Buffer(data=first), host_cid_length=8)
    p.client.receive_datagram(
        encode_quic_retry(
            version=header.version or 1,
            source_cid=b"retry-08",
            destination_cid=header.source_cid,
            original_destination_cid=header.destination_cid,
            retry_token=b"token",
        ),
        SERVER_ADDR,
        0.01,
    )
    again = p.client.datagrams_to_send(0.01)
    hooks.note_transmit(p.client, 0.01)
    in_flight = [pk for space in p.client._loss.spaces for pk in space.sent_packets.values() if pk.in_flight]
    assert in_flight and cc.bytes_in_flight == sum(pk.sent_bytes for pk in in_flight)
    assert cc.bytes_in_flight <= sum(len(d) for d, _ in again)
    if name == "bbr":
        assert cc.tracked_packets == len(in_flight)


# -- per-datagram CPU: the same datagrams, byte for byte ----------------------------------------


class _SeededX25519:
    """Stands in for ``cryptography``'s x25519 module in ``aioquic.tls``: key shares from a seed."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.X25519PublicKey = x25519.X25519PublicKey
        outer = self

        class PrivateKey:
            @staticmethod
            def generate() -> x25519.X25519PrivateKey:
                return x25519.X25519PrivateKey.from_private_bytes(outer._rng.randbytes(32))

        self.X25519PrivateKey = PrivateKey


def _scripted_exchange(monkeypatch: pytest.MonkeyPatch, *, loss: bool, credit_hooks: bool) -> list[tuple[str, bytes]]:
    """Every datagram (direction, bytes) of a scripted client/server exchange, with all of
    aioquic's randomness (connection ids, TLS randoms, key shares) drawn from one seed: the
    handshake, small and large streams both ways under small flow-control windows, a reset
    stream, a STOP_SENDING, PINGs, DATAGRAM frames, connection ids, and (``loss``) every
    seventh datagram dropped, so that retransmissions and probe timeouts happen."""
    # aioquic serves streams in the order of a set of them: by id, not by memory address (as the simulator does)
    hooks.patch_stream_hash()
    rng = random.Random(7)
    monkeypatch.setattr(os, "urandom", rng.randbytes)
    monkeypatch.setattr(tls, "x25519", _SeededX25519(rng))
    ck, sk = SecretKey.from_seed("c"), SecretKey.from_seed("s")

    def cfg(is_client: bool, key: SecretKey) -> QuicConfiguration:
        return QuicConfiguration(
            is_client=is_client,
            alpn_protocols=["test"],
            certificate=node_certificate(key),
            private_key=key.private_key,
            verify_mode=0,
            max_stream_data=4096,
            max_data=16384,
            max_datagram_frame_size=65536,
        )

    client = QuicConnection(configuration=cfg(True, ck))
    hooks.install_identity_hooks(client, lambda raw: None)
    client.connect(SERVER_ADDR, now=0.0)
    sent: list[tuple[str, bytes]] = []
    first = [d for d, _ in client.datagrams_to_send(0.0)]
    header = pull_quic_header(Buffer(data=first[0]), host_cid_length=8)
    server = QuicConnection(configuration=cfg(False, sk), original_destination_connection_id=header.destination_cid)
    hooks.install_identity_hooks(server, lambda raw: None)
    hooks.set_peer_stream_limit(server, 10)  # MAX_STREAMS frames as the client's streams finish
    received: dict[tuple[str, int], int] = {}
    if credit_hooks:
        for name, conn in (("client", client), ("server", server)):

            def credit(sid: int, name: str = name) -> int | None:
                # even streams: the application has read all that arrived; others: aioquic's doubling
                return received.get((name, sid), 0) + 6000 if sid % 8 == 0 else None

            hooks.install_receive_credit(conn, credit, lambda used: used + 20000)
    now = 0.0
    count = 0
    for data in first:
        sent.append(("c", data))
        server.receive_datagram(data, CLIENT_ADDR, now)

    def pump(rounds: int) -> None:
        nonlocal now, count
        for _ in range(rounds):
            now += 0.003
            moved = False
            for name, src, dst, addr in (("c", client, server, CLIENT_ADDR), ("s", server, client, SERVER_ADDR)):
                for data, _ in src.datagrams_to_send(now):
                    sent.append((name, data))
                    count += 1
                    moved = True
                    if not (loss and count % 7 == 0):
                        dst.receive_datagram(data, addr, now)
            for name, conn in (("client", client), ("server", server)):
                while (ev := conn.next_event()) is not None:
                    if isinstance(ev, StreamDataReceived):
                        key = (name, ev.stream_id)
                        received[key] = received.get(key, 0) + len(ev.data)
                        if name == "server" and ev.end_stream and ev.stream_id % 4 == 0:
                            size = 13 if received[key] < 100 else ev.stream_id * 700 + 13
                            server.send_stream_data(ev.stream_id, b"r" * size, end_stream=True)
            if not moved:
                for conn in (client, server):
                    timer = conn.get_timer()
                    if timer is not None and timer <= now + 0.5:
                        now = max(now, timer)
                        conn.handle_timer(now)

    pump(20)  # handshake
    for i in range(12):
        sid = client.get_next_available_stream_id()
        client.send_stream_data(sid, bytes([i]) * (50 + i * 3000), end_stream=True)
        if i % 3 == 0:
            client.send_datagram_frame(b"d" * (100 + i))
        if i % 4 == 1:
            client.send_ping(i)
        pump(4)
    doomed = client.get_next_available_stream_id()
    client.send_stream_data(doomed, b"x" * 9000)
    pump(2)
    client.reset_stream(doomed, 5)
    if hooks.get_stream(server, doomed) is not None:
        server.stop_stream(doomed, 6)
    uni = server.get_next_available_stream_id(is_unidirectional=True)
    server.send_stream_data(uni, b"u" * 20000, end_stream=True)
    pump(100)
    for _ in range(30):  # requests and responses of one small packet each
        client.send_stream_data(client.get_next_available_stream_id(), b"q" * 40, end_stream=True)
        pump(3)
    pump(100)
    return sent


@pytest.mark.parametrize("credit_hooks", [False, True])
@pytest.mark.parametrize("loss", [False, True])
def test_fast_write_application_sends_the_same_datagrams_byte_for_byte(
    monkeypatch: pytest.MonkeyPatch, loss: bool, credit_hooks: bool
) -> None:
    starts = {"n": 0}
    start_packet = QuicPacketBuilder.start_packet

    def counted(self: QuicPacketBuilder, *args: Any, **kwargs: Any) -> None:
        starts["n"] += 1
        start_packet(self, *args, **kwargs)

    monkeypatch.setattr(QuicPacketBuilder, "start_packet", counted)
    runs: dict[bool, tuple[list[tuple[str, bytes]], int]] = {}
    try:
        for fast in (False, True):
            hooks.fast_write_application(fast)
            starts["n"] = 0
            runs[fast] = (_scripted_exchange(monkeypatch, loss=loss, credit_hooks=credit_hooks), starts["n"])
    finally:
        hooks.fast_write_application(True)
    (slow, slow_starts), (fast_sent, fast_starts) = runs[False], runs[True]
    assert len(slow) > 150  # the script exchanged data (not only a handshake)
    assert fast_sent == slow
    assert fast_starts <= slow_starts - 25  # and the empty packets were not started (46-100+ fewer)


def test_fast_write_application_is_installed_on_import() -> None:
    assert QuicConnection._write_application is hooks._write_application  # type: ignore[comparison-overlap]


def test_aioquic_enums_hash_by_identity_and_every_table_still_finds_them() -> None:
    import gc

    assert not hooks.fast_enum_hash()  # applied when aioquic_compat was imported
    for cls in hooks.FAST_HASH_ENUMS:
        for member in cls:
            assert hash(member) == object.__hash__(member)
            assert member == member and member != object()
    # every live dict and set keyed by these enums (aioquic's tables, live connections) finds its keys
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    p.start()
    p.pump()
    classes = tuple(hooks.FAST_HASH_ENUMS)
    tables = [
        o for o in gc.get_objects() if type(o) in (dict, set, frozenset) and any(isinstance(k, classes) for k in o)
    ]
    assert len(tables) >= 10
    for table in tables:
        for key in list(table):
            assert key in table
    from aioquic.quic import connection as quic_connection
    from aioquic.quic.connection import QuicConnectionState

    assert QuicConnectionState.TERMINATED in quic_connection.END_STATES
    assert p.client._cryptos[Epoch.ONE_RTT].send.is_valid()


def test_fast_padding_frames_is_installed_on_import() -> None:
    assert QuicConnection._handle_padding_frame is hooks._handle_padding_frame  # type: ignore[comparison-overlap]


class _Context:
    def __init__(self) -> None:
        self.quic_logger_frames: list[object] = []


@pytest.mark.parametrize(
    ("payload", "start"),
    [
        (bytes(15000), 1),  # padding to the packet's end
        (bytes(40) + b"\x01" + bytes(9), 1),  # padding, then a PING frame, then padding again
        (b"\x00\x01\x00", 1),  # one PADDING byte was the frame type: a PING follows at once
        (b"\x00", 1),  # nothing after the frame type
        (bytes(7) + b"\x1c\x00", 3),  # a CONNECTION_CLOSE after the padding
    ],
)
def test_padding_frames_stop_where_aioquics_handler_stops(payload: bytes, start: int) -> None:
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    server = p.start()
    for handler in (hooks._AIOQUIC_HANDLE_PADDING, hooks._handle_padding_frame):
        buf = Buffer(data=payload)
        buf.seek(start)
        handler(server, _Context(), 0, buf)  # type: ignore[arg-type]
        if handler is hooks._AIOQUIC_HANDLE_PADDING:
            expected = buf.tell()
        else:
            assert buf.tell() == expected


def test_skipping_a_long_run_of_padding_runs_a_few_python_lines_not_one_per_byte() -> None:
    import sys

    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"))
    server = p.start()
    lines = {"n": 0}

    def trace(frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            lines["n"] += 1
        return trace

    counts = {}
    for handler in (hooks._AIOQUIC_HANDLE_PADDING, hooks._handle_padding_frame):
        buf = Buffer(data=b"\x00" * 15000)
        buf.seek(1)
        lines["n"] = 0
        sys.settrace(trace)
        try:
            handler(server, _Context(), 0, buf)  # type: ignore[arg-type]
        finally:
            sys.settrace(None)
        assert buf.tell() == 15000
        counts[handler] = lines["n"]
    assert counts[hooks._AIOQUIC_HANDLE_PADDING] > 15000  # aioquic's: a loop step per byte
    assert counts[hooks._handle_padding_frame] < 20


def test_a_handshake_in_16000_byte_datagrams_completes_with_its_padding_frames_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    skipped: list[int] = []

    def recorded(self: QuicConnection, context: Any, frame_type: int, buf: Buffer) -> None:
        start = buf.tell()
        hooks._handle_padding_frame(self, context, frame_type, buf)
        skipped.append(buf.tell() - start)

    monkeypatch.setattr(QuicConnection, "_handle_padding_frame", recorded)
    p = Pair(SecretKey.from_seed("c"), SecretKey.from_seed("s"), max_datagram_size=16000)
    p.client.send_stream_data(0, b"request")  # leaves in a 1-RTT packet with the client's Finished
    p.start()
    p.pump()
    assert any(isinstance(e, HandshakeCompleted) for e in p.events["server"])
    assert hooks.handshake_confirmed(p.client)
    assert [e.data for e in p.events["server"] if isinstance(e, StreamDataReceived)] == [b"request"]
    # the client's second flight (Initial ACK, Finished, 1-RTT) is padded inside its 1-RTT packet
    assert max(skipped) > 14000


def test_fast_tls_blocks_are_installed_on_import() -> None:
    for name, helper in hooks._FAST_TLS_BLOCKS.items():
        assert getattr(tls, name) is helper


@pytest.mark.parametrize("loss", [False, True])
def test_fast_tls_blocks_send_the_same_datagrams_byte_for_byte(monkeypatch: pytest.MonkeyPatch, loss: bool) -> None:
    runs: dict[bool, list[tuple[str, bytes]]] = {}
    try:
        for fast in (False, True):
            hooks.fast_tls_blocks(fast)
            runs[fast] = _scripted_exchange(monkeypatch, loss=loss, credit_hooks=False)
    finally:
        hooks.fast_tls_blocks(True)
    assert len(runs[False]) > 150
    assert runs[True] == runs[False]


def _blocks(fast: bool) -> dict[str, Any]:
    return dict(hooks._FAST_TLS_BLOCKS if fast else hooks._AIOQUIC_TLS_BLOCKS)


@pytest.mark.parametrize("fast", [False, True])
def test_tls_blocks_write_and_read_what_aioquics_do(fast: bool) -> None:
    b = _blocks(fast)

    class Schedule:
        hashed = b""

        def update_hash(self, data: bytes) -> None:
            self.hashed += data

    schedule = Schedule()
    buf = Buffer(capacity=100)
    with b["push_message"](schedule, buf):
        buf.push_uint8(1)
        with b["push_block"](buf, 3):
            with b["push_extension"](buf, 0x33):
                buf.push_bytes(b"abc")
            with b["push_block"](buf, 1):
                pass
    assert buf.data == b"\x01\x00\x00\x08\x00\x33\x00\x03abc\x00"
    assert schedule.hashed == buf.data
    read = Buffer(data=buf.data[1:])
    with b["pull_block"](read, 3) as length:
        assert length == 8
        read.pull_bytes(8)
    assert read.eof()
    # a block whose body leaves bytes unread is refused after the body, as aioquic refuses it
    read = Buffer(data=b"\x02xy")
    with pytest.raises(tls.AlertDecodeError):
        with b["pull_block"](read, 1):
            read.pull_bytes(1)


@pytest.mark.parametrize("fast", [False, True])
def test_an_error_inside_a_tls_block_propagates_and_writes_no_length(fast: bool) -> None:
    b = _blocks(fast)
    buf = Buffer(capacity=100)
    buf.push_bytes(b"\xff\xff")
    buf.seek(0)
    with pytest.raises(ValueError, match="inside"):
        with b["push_block"](buf, 2):
            buf.push_bytes(b"abc")
            raise ValueError("inside")
    assert buf.tell() == 5 and buf.data_slice(0, 2) == b"\xff\xff"
    read = Buffer(data=b"\x03abc")
    with pytest.raises(tls.AlertBadCertificate):
        with b["pull_block"](read, 1):  # the body's error, not the block's "extra bytes"
            raise tls.AlertBadCertificate("inside")
