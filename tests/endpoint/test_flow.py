"""Receive-window auto-tuning and send-buffer sizing (asgi_p2p.endpoint.flow), as pure functions."""

from __future__ import annotations

import pytest

from asgi_p2p.endpoint.flow import ReceiveWindow, send_buffer_limit

KIB = 1024
RTT = 0.08


def test_limit_moves_in_quarter_window_steps() -> None:
    w = ReceiveWindow(256 * KIB, 256 * KIB)  # no auto-tuning
    assert w.limit == 256 * KIB
    assert not w.consume(60 * KIB, 0.0, RTT)  # less than a quarter of the window read: no announcement
    assert w.limit == 256 * KIB
    assert w.consume(4 * KIB, 0.001, RTT)  # a quarter read: the limit moves
    assert w.limit == 64 * KIB + 256 * KIB
    assert not w.consume(63 * KIB, 0.002, RTT)
    assert w.consume(1 * KIB, 0.003, RTT)
    assert w.limit == 128 * KIB + 256 * KIB
    assert w.window == 256 * KIB


def test_window_doubles_while_the_reader_consumes_a_window_within_four_rtts() -> None:
    w = ReceiveWindow(256 * KIB, 16 * 1024 * KIB)
    now = 0.0
    rate = 12.5e6  # the reader keeps up with a 100 Mbit/s path
    seen = [w.window]
    for _ in range(4000):
        now += 16 * KIB / rate
        w.consume(16 * KIB, now, RTT)
        if w.window != seen[-1]:
            seen.append(w.window)
    # doubling steps, up to the first window that a rate * 4 RTT no longer fills
    assert seen == [256 * KIB, 512 * KIB, 1024 * KIB, 2048 * KIB, 4096 * KIB]
    assert w.window >= 4 * rate * RTT  # >= 4 bandwidth-delay products: the sender never waits
    assert w.limit - w.consumed <= w.window


@pytest.mark.parametrize("late", [1.0, 1.05, 1.3])
def test_window_grows_while_it_holds_the_sender_back(late: float) -> None:
    """A sender the window holds back gets a round trip's worth of credit steps per round
    trip.  Measured through a relay on loopback with 86 ms of round trip added (over UDP and
    over TCP), with half-window steps: the reader consumed each half window 0.87-1.06 smoothed
    RTTs after the previous step; a round that takes a little longer than the smoothed RTT
    must still count as flow control holding the sender back, or the window stays where it
    is.  (Modelled here as the slower half-window pattern; quarter steps only make the
    reader's rate per window higher.)"""
    w = ReceiveWindow(256 * KIB, 16 * 1024 * KIB)
    now = 0.0
    for _ in range(12):  # twelve round trips
        half = w.window // 2
        reads = half // (16 * KIB)
        for _ in range(reads):  # 16 KiB reads spread over the round trip
            now += late * RTT / reads
            w.consume(16 * KIB, now, RTT)
    assert w.window >= 2048 * KIB
    assert w.limit - w.consumed <= w.window


def _loss_then_burst(w: ReceiveWindow, *, tell_arrivals: bool) -> None:
    """The path delivers 0.9 MB per round trip (just under the growth threshold of a
    quarter window per round trip).  Packets are lost: for three round trips the reader
    gets only what lies before the next hole (0.35 MB a round trip) while the rest arrives
    behind it, then the last hole fills and the reader gets the backlog at once."""
    per_rtt = 900_000
    now, arrived, read = 0.0, 1, 1
    w.consume(1, now, RTT, received=arrived if tell_arrivals else 0)
    for _ in range(20):  # steady: reads keep up with arrivals
        now += RTT
        arrived += per_rtt
        read = arrived
        w.consumed_to(read, now, RTT, received=arrived if tell_arrivals else 0)
    assert w.window == 4096 * KIB
    for _ in range(3):  # holes: the reader lags behind what arrived
        now += RTT
        arrived += per_rtt
        read += 350_000
        w.consumed_to(read, now, RTT, received=arrived if tell_arrivals else 0)
    assert w.window == 4096 * KIB
    now += 1.1 * RTT
    arrived += int(1.1 * per_rtt)
    w.consumed_to(arrived, now, RTT, received=arrived if tell_arrivals else 0)  # the last hole fills


def test_a_burst_released_after_a_loss_is_not_a_rate() -> None:
    """A window judges the bytes that *arrived* in its epoch (as well as those read), so the
    backlog the reader gets at once after a loss does not look like a faster path."""
    w = ReceiveWindow(4096 * KIB, 16 * 1024 * KIB)
    _loss_then_burst(w, tell_arrivals=True)
    assert w.window == 4096 * KIB
    # judged by reads alone, the burst (2.6 MB read within 1.1 round trips) doubles it
    eager = ReceiveWindow(4096 * KIB, 16 * 1024 * KIB)
    _loss_then_burst(eager, tell_arrivals=False)
    assert eager.window == 8192 * KIB


def test_window_never_grows_for_a_slow_reader() -> None:
    w = ReceiveWindow(256 * KIB, 16 * 1024 * KIB)
    now = 0.0
    for _ in range(1000):
        now += 1.0  # 16 KiB a second: far slower than window / (2 RTT)
        w.consume(16 * KIB, now, RTT)
    assert w.window == 256 * KIB
    assert w.limit - w.consumed <= w.window


def test_window_stops_at_its_ceiling_and_needs_an_rtt() -> None:
    w = ReceiveWindow(64 * KIB, 200 * KIB)
    now = 0.0
    for _ in range(4000):  # 80 MB/s for 5 RTTs: one doubling per round trip at most
        now += 0.0001
        w.consume(8 * KIB, now, RTT)
        if now < 0.99 * RTT:
            assert w.window == 64 * KIB  # a rate is judged over a round trip at least
    assert w.window == 200 * KIB
    fresh = ReceiveWindow(64 * KIB, 1024 * KIB)
    for _ in range(200):
        fresh.consume(8 * KIB, 0.0, 0.0)  # no RTT measured yet: no judgement possible
    assert fresh.window == 64 * KIB


def test_ensure_window_and_consumed_to() -> None:
    w = ReceiveWindow(4 * 1024 * KIB, 24 * 1024 * KIB)
    w.ensure_window(96 * 1024 * KIB)
    assert w.window == 24 * 1024 * KIB  # the ceiling holds
    w2 = ReceiveWindow(100, 100)
    assert w2.consumed_to(60, 1.0, RTT)
    assert not w2.consumed_to(50, 1.0, RTT)  # consumption never goes back
    assert (w2.consumed, w2.limit) == (60, 160)
    with pytest.raises(ValueError, match="positive"):
        ReceiveWindow(0, 10)


@pytest.mark.parametrize(
    ("cwnd", "credit", "expected"),
    [
        (12_000, 10**9, 256 * KIB),  # small congestion window: the floor
        (3_000_000, 10**9, 6_000_000),  # two congestion windows
        (100_000_000, 10**9, 16 * 1024 * KIB),  # a huge one: the ceiling
        (3_000_000, 0, 256 * KIB),  # the peer stopped reading: the floor only
        (3_000_000, 1_000_000, 1_000_000 + 256 * KIB),  # what the peer's credit allows, plus the floor
    ],
)
def test_send_buffer_limit(cwnd: int, credit: int, expected: int) -> None:
    assert send_buffer_limit(cwnd, credit, 256 * KIB, 16 * 1024 * KIB) == expected
