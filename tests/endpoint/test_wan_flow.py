"""Flow-control windows on a WAN-shaped simulated path (virtual time).

The path: 40 ms one way (80 ms RTT) at 100 Mbit/s, so its bandwidth-delay product is
1 MB (two homes 20 ms from the internet each, as in issue 11), with a one-BDP queue.
The stock 256 KiB stream window would cap a transfer at 256 KiB / 80 ms = 3.3 MB/s.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from asgi_p2p import MessageConnection, NetworkConfig, Node, SecretKey
from asgi_p2p import aioquic_compat as hooks
from asgi_p2p.sim import Host, Simulation

ONE_WAY = 0.040
BANDWIDTH = 100e6  # bits/s
LINK_BYTES_PER_S = BANDWIDTH / 8
BDP = 2 * ONE_WAY * LINK_BYTES_PER_S  # 1 MB
CHUNK = b"w" * 65536


def _wan(sim: Simulation, *, bandwidth: float = BANDWIDTH, queue: int = int(BDP)) -> tuple[Host, Host]:
    a, b = sim.host("alice"), sim.host("bob")
    sim.link(a, b, latency=ONE_WAY, loss=0.0, bandwidth=bandwidth, queue_bytes=queue)
    return a, b


async def _pair(a: Host, b: Host, ca: NetworkConfig, cb: NetworkConfig) -> tuple[Node, Node]:
    ea = await Node.bind(SecretKey.from_seed("alice"), host="0.0.0.0", port=4433, config=ca, network=a)
    eb = await Node.bind(SecretKey.from_seed("bob"), host="0.0.0.0", port=4433, config=cb, network=b)
    return ea, eb


def _stream_window(inc: MessageConnection) -> int:
    (window,) = inc.peer_connection.receive_windows[1].values()
    return window


def _bulk(sim: Simulation, config: NetworkConfig, total: int) -> tuple[list[tuple[float, int]], int]:
    """Bob sends ``total`` bytes to Alice, who reads at once: (virtual time, bytes) marks
    from the accept on, final window."""
    a, b = _wan(sim)
    marks: list[tuple[float, int]] = []
    windows: list[int] = []

    async def main() -> None:
        ea, eb = await _pair(a, b, config, config)
        inc = await _transfer(ea, eb, total, marks)
        windows.append(_stream_window(inc))
        await eb.close()
        await ea.close()

    sim.run(main())
    return marks, windows[0]


async def _transfer(ea: Node, eb: Node, total: int, marks: list[tuple[float, int]]) -> MessageConnection:
    """``eb`` sends ``total`` bytes of CHUNKs to ``ea``, which reads at once; marks (time, bytes read)."""
    conn = await eb.connect(ea.node_addr())

    async def send() -> None:
        for _ in range(total // len(CHUNK)):
            await conn.send(CHUNK)

    task = asyncio.create_task(send())
    inc = await ea.listen().accept()
    loop = asyncio.get_running_loop()
    got = 0
    marks.append((loop.time(), 0))  # accepted
    while got < total:
        got += len(await inc.recv())
        marks.append((loop.time(), got))
    await task
    return inc


def _rate_over_second_half(marks: list[tuple[float, int]]) -> float:
    total = marks[-1][1]
    t_half, half = next(m for m in marks if m[1] >= total // 2)
    return (total - half) / (marks[-1][0] - t_half)


def test_bulk_fills_a_1mb_bdp_path_with_auto_tuned_windows(sim: Simulation) -> None:
    marks, window = _bulk(sim, NetworkConfig(connect_timeout=30.0), 20 * 1024 * 1024)
    rate = _rate_over_second_half(marks)
    assert rate >= 0.8 * LINK_BYTES_PER_S, f"{rate / 1e6:.2f} MB/s of {LINK_BYTES_PER_S / 1e6:.1f}"
    # the window grew to cover the path (>= 2 BDP, a quarter window per credit step), not to its
    # ceiling: it doubles while it is below 4 BDP of the (queue-inflated) smoothed RTT
    assert 2 * BDP <= window <= 9 * BDP < NetworkConfig().max_stream_receive_window


def test_a_new_connections_10_mib_download_is_not_held_back_by_its_windows(sim: Simulation) -> None:
    """The whole transfer, slow start included, on a fresh connection (what a download from a
    new peer sees): the receive windows must keep ahead of slow start, which doubles the
    congestion window every round trip.  When they lagged (one doubling per ~1.25 round trips
    with half-window credit steps) the sender became flow-control limited, its congestion
    window stopped growing while the queue drained, and slow start ended in a 3x overshoot:
    6.87 MB/s.  With the windows out of the way: 7.70 MB/s from an initial window of 10 packets,
    8.36 from 32 and 8.89 from the default 64 (the link carries 12.5; slow start to 1 MB still
    takes ~4 round trips, and its end still overshoots the queue).  8.6 MB/s is the margin the
    WAN target needs (0.9x the tunnel's 9.43 on the rig is 8.49); 32 packets fail it."""
    total = 10 * 1024 * 1024
    marks, window = _bulk(sim, NetworkConfig(connect_timeout=30.0), total)
    rate = total / (marks[-1][0] - marks[0][0])  # from the accept: the handshake is left out
    assert rate >= 8.6e6, f"{rate / 1e6:.2f} MB/s"
    assert window <= 9 * BDP


def test_without_auto_tuning_the_window_caps_the_same_path(sim: Simulation) -> None:
    cfg = NetworkConfig(connect_timeout=30.0, max_stream_receive_window=256 * 1024)
    marks, window = _bulk(sim, cfg, 4 * 1024 * 1024)
    assert window == 256 * 1024
    assert _rate_over_second_half(marks) < 0.3 * LINK_BYTES_PER_S  # window / RTT = 3.3 MB/s at most


def test_stalled_reader_keeps_its_window_and_bounds_what_it_buffers(sim: Simulation) -> None:
    """A reader that kept up (so its window grew) and then stops: the window never grows
    while it is stalled, and what the node holds for it stays within that window."""
    a, b = _wan(sim)
    cfg = NetworkConfig(connect_timeout=30.0)

    async def main() -> None:
        ea, eb = await _pair(a, b, cfg, cfg)
        conn = await eb.connect(ea.node_addr())
        sent = 0

        async def flood() -> None:
            nonlocal sent
            for _ in range(2000):  # 125 MiB if nothing pushed back
                await conn.send(CHUNK)
                sent += len(CHUNK)

        task = asyncio.create_task(flood())
        inc = await ea.listen().accept()
        pc = inc.peer_connection
        # a second peer, whose reader never reads
        carol = sim.host("carol")
        sim.link(carol, a, latency=ONE_WAY, loss=0.0, bandwidth=BANDWIDTH, queue_bytes=int(BDP))
        ec = await Node.bind(SecretKey.from_seed("carol"), host="0.0.0.0", port=4433, config=cfg, network=carol)
        never = await ec.connect(ea.node_addr())
        await never.send(CHUNK)
        stalled_inc = await ea.listen().accept()

        async def flood_never() -> None:
            while True:
                await never.send(CHUNK)

        never_task = asyncio.create_task(flood_never())
        # read fast for 4 MiB: the window grows
        for _ in range(64):
            await inc.recv()
        grown = _stream_window(inc)
        assert grown > cfg.stream_receive_window
        # stop reading for 3 virtual seconds
        for _ in range(30):
            await asyncio.sleep(0.1)
            assert _stream_window(inc) == grown
            assert pc.buffered_unread <= grown
            assert inc._queued_bytes <= grown + cfg.max_message_size
            # the never-reading connection's window never moved from its start
            assert _stream_window(stalled_inc) == cfg.stream_receive_window
            assert stalled_inc.peer_connection.buffered_unread <= cfg.stream_receive_window
        # the writer waits: its send buffer shrank back to the floor once the credit was spent
        assert not task.done()
        out = conn._out_stream
        assert out is not None
        assert hooks.unacked_bytes(conn.peer_connection.quic, out) <= cfg.stream_send_buffer + len(CHUNK)
        before = sent
        for _ in range(64):  # reading again resumes the flow
            assert await inc.recv() == CHUNK
        await asyncio.sleep(0.5)
        assert sent > before
        task.cancel()
        never_task.cancel()
        await ec.close()
        await eb.close()
        await ea.close()

    sim.run(main())


def _greedy(**extra: Any) -> NetworkConfig:
    """A peer that offers 512 MiB of credit on every stream and the connection."""
    huge = 512 * 1024 * 1024
    return NetworkConfig(
        connect_timeout=30.0,
        stream_receive_window=huge,
        max_stream_receive_window=huge,
        connection_receive_window=huge,
        max_connection_receive_window=huge,
        **extra,
    )


def test_peer_advertising_huge_windows_cannot_grow_our_send_buffer_past_its_ceiling(sim: Simulation) -> None:
    """The peer offers 512 MiB of credit and never reads: our node still holds at most
    two congestion windows, and never more than max_stream_send_buffer, per stream."""
    a, b = _wan(sim, bandwidth=20e6, queue=256 * 1024)
    greedy = _greedy()
    ours = NetworkConfig(connect_timeout=30.0, max_stream_send_buffer=1024 * 1024)

    async def main() -> None:
        ea, eb = await _pair(a, b, greedy, ours)
        conn = await eb.connect(ea.node_addr())
        pc = conn.peer_connection
        highest = 0
        cwnds: list[int] = []

        async def flood() -> None:
            while True:
                await conn.send(CHUNK)

        task = asyncio.create_task(flood())
        await ea.listen().accept()  # accepted, never read
        for _ in range(300):  # 3 virtual seconds: ~7 MB through the 20 Mbit/s link
            await asyncio.sleep(0.01)
            out = conn._out_stream
            assert out is not None
            highest = max(highest, hooks.unacked_bytes(pc.quic, out))
            cwnds.append(hooks.congestion_window(pc.quic))
        assert hooks.send_credit(pc.quic, out) > 100 * 1024 * 1024  # the peer's credit never ran out
        assert ours.stream_send_buffer < highest <= ours.max_stream_send_buffer + len(CHUNK)
        assert highest <= 2 * max(cwnds) + ours.stream_send_buffer + len(CHUNK)
        task.cancel()
        await eb.close()
        await ea.close()

    sim.run(main())


def test_huge_peer_windows_meet_the_default_send_buffer_ceiling(sim: Simulation) -> None:
    """The same greedy peer, our send buffer at its default ceiling (16 MiB): on a path whose
    congestion window outgrows half of it (no bandwidth limit, 80 ms RTT, 16 kB datagrams, so
    few packets), two congestion windows would be more than the ceiling; the stream holds the
    ceiling and no more."""
    a, b = sim.host("alice"), sim.host("bob")
    mds = 16000
    sim.link(a, b, latency=ONE_WAY, loss=0.0, bandwidth=None, mtu=mds + 28)
    greedy = _greedy(max_datagram_size=mds)
    ours = NetworkConfig(connect_timeout=30.0, max_datagram_size=mds)
    ceiling = ours.max_stream_send_buffer
    assert ceiling == 16 * 1024 * 1024  # the default

    async def main() -> None:
        ea, eb = await _pair(a, b, greedy, ours)
        conn = await eb.connect(ea.node_addr())
        pc = conn.peer_connection
        highest = 0
        cwnd = 0

        async def flood() -> None:
            while True:
                await conn.send(CHUNK)

        task = asyncio.create_task(flood())
        await ea.listen().accept()  # accepted, never read
        for _ in range(100):  # 1 virtual second: slow start passes 8 MiB within ~0.6 s
            await asyncio.sleep(0.01)
            out = conn._out_stream
            assert out is not None
            highest = max(highest, hooks.unacked_bytes(pc.quic, out))
            assert highest <= ceiling + len(CHUNK)
            cwnd = max(cwnd, hooks.congestion_window(pc.quic))
        assert 2 * cwnd > ceiling  # two congestion windows would have been more
        assert highest >= ceiling - len(CHUNK)  # the ceiling, not the window, was the limit
        task.cancel()
        await eb.close()
        await ea.close()

    sim.run(main())


def _bulk_over_bursty_rtt(sim: Simulation, config: NetworkConfig, total: int) -> list[tuple[float, int]]:
    """Bob sends ``total`` bytes to Alice over the WAN path whose one-way delay jumps from
    40 to 52 ms (RTT 80 -> 104 ms, +30%) for 150 ms of every 500 ms: bursty delivery,
    as over a relay's TCP leg, with no loss and no queue behind it."""
    a, b = sim.host("alice"), sim.host("bob")
    link = sim.link(a, b, latency=ONE_WAY, loss=0.0, bandwidth=BANDWIDTH, queue_bytes=int(BDP))
    marks: list[tuple[float, int]] = []

    async def bursts() -> None:
        while True:
            await asyncio.sleep(0.35)
            link.configure(latency=ONE_WAY * 1.3)
            await asyncio.sleep(0.15)
            link.configure(latency=ONE_WAY)

    async def main() -> None:
        ea, eb = await _pair(a, b, config, config)
        burst_task = asyncio.create_task(bursts())
        await _transfer(ea, eb, total, marks)
        burst_task.cancel()
        await eb.close()
        await ea.close()

    sim.run(main())
    return marks


@pytest.mark.parametrize("cc", ["cubic", "reno"])
def test_bursts_of_rtt_inflation_do_not_end_slow_start(sim: Simulation, cc: str) -> None:
    """HyStart++ (RFC 9406): a round whose RTT rose by 30% enters conservative slow start,
    which the next round's lower RTT undoes; aioquic's own delay-based exit ended slow
    start for good at the first burst and the transfer crawled at a fraction of the link
    (3.1 MB/s with CUBIC, 2.4 with Reno, of 12.5)."""
    marks = _bulk_over_bursty_rtt(sim, NetworkConfig(connect_timeout=30.0, congestion_control=cc), 16 * 1024 * 1024)
    rate = _rate_over_second_half(marks)
    assert rate >= 0.8 * LINK_BYTES_PER_S, f"{rate / 1e6:.2f} MB/s of {LINK_BYTES_PER_S / 1e6:.1f}"


def test_bbr_keeps_its_rate_on_a_lossy_path_where_cubic_collapses(sim: Simulation) -> None:
    """The WAN rig's lossy profile: 100 ms one way (200 ms RTT), 20 Mbit/s, 1% random loss.
    A loss-based controller gets about MSS / RTT x 1.22 / sqrt(p) there (Mathis: 0.09 MB/s for
    Reno); for 4 MiB our CUBIC got 0.11-0.35 MB/s over seeds 1-12. BBR, for which random loss
    below 2% is no congestion signal, got 1.17-1.66 MB/s (of 2.5, startup included). What holds
    it below the link is mostly the receive window: after a loss the reader waits behind the
    hole for a round trip or more, and the window grows to 1-2 MiB only."""
    a, b = sim.host("alice"), sim.host("bob")
    sim.link(a, b, latency=0.100, loss=0.01, bandwidth=20e6, queue_bytes=500_000)
    marks: list[tuple[float, int]] = []
    cfg = NetworkConfig(connect_timeout=30.0, congestion_control="bbr")

    async def main() -> None:
        ea, eb = await _pair(a, b, cfg, cfg)
        await _transfer(ea, eb, 4 * 1024 * 1024, marks)
        await eb.close()
        await ea.close()

    sim.run(main())
    rate = marks[-1][1] / (marks[-1][0] - marks[0][0])  # the whole transfer, from the accept
    assert rate >= 1.0e6, f"{rate / 1e6:.2f} MB/s of 2.5"
