"""The real UDP socket: batched reads, receiver errors, close."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
from collections.abc import Callable

import pytest

from asgi_p2p.net.udp import BATCH_MAX, BATCH_MIN, READ_BATCH, UdpNetwork, UdpSocket


class _Waiter:
    """Wakes the test when ``predicate`` holds, checked after every datagram."""

    def __init__(self, predicate: Callable[[], bool]) -> None:
        self.predicate = predicate
        self.event = asyncio.Event()

    def check(self) -> None:
        if self.predicate():
            self.event.set()

    async def wait(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self.event.wait(), timeout)


async def _sender() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


async def test_queued_datagrams_are_read_in_one_batch_before_scheduled_work_runs() -> None:
    loop = asyncio.get_running_loop()
    got: list[bytes] = []
    seen_before_flush: list[int] = []
    n = 20
    waiter = _Waiter(lambda: len(got) >= n)

    def receiver(data: bytes, addr: tuple[str, int]) -> None:
        if not got:
            # What the endpoint does: schedule the transmit for after the batch.
            loop.call_soon(lambda: seen_before_flush.append(len(got)))
        got.append(data)
        waiter.check()

    sock = await UdpNetwork().bind("127.0.0.1", 0, receiver)
    tx = await _sender()
    try:
        for i in range(n):  # all queued in the kernel before the loop looks at the socket
            tx.sendto(i.to_bytes(2, "big"), sock.local_address)
        await waiter.wait()
        assert [int.from_bytes(d, "big") for d in got] == list(range(n))
        assert seen_before_flush == [n]
    finally:
        tx.close()
        sock.close()


async def test_a_batch_is_bounded() -> None:
    loop = asyncio.get_running_loop()
    got: list[int] = []
    marks: list[int] = []
    n = READ_BATCH * 2 + 5
    waiter = _Waiter(lambda: len(got) >= n)

    def receiver(data: bytes, addr: tuple[str, int]) -> None:
        if len(got) % READ_BATCH == 0:
            loop.call_soon(lambda: marks.append(len(got)))
        got.append(len(data))
        waiter.check()

    sock = await UdpNetwork().bind("127.0.0.1", 0, receiver)
    tx = await _sender()
    try:
        for _ in range(n):
            tx.sendto(b"x", sock.local_address)
        await waiter.wait()
        assert marks[0] == READ_BATCH  # the first callback stopped after READ_BATCH datagrams
    finally:
        tx.close()
        sock.close()


async def test_receiver_exception_does_not_stop_the_socket(caplog: pytest.LogCaptureFixture) -> None:
    got: list[bytes] = []
    waiter = _Waiter(lambda: bool(got))

    def receiver(data: bytes, addr: tuple[str, int]) -> None:
        if data == b"boom":
            raise RuntimeError("receiver bug")
        got.append(data)
        waiter.check()

    sock = await UdpNetwork().bind("127.0.0.1", 0, receiver)
    tx = await _sender()
    try:
        tx.sendto(b"boom", sock.local_address)
        tx.sendto(b"ok", sock.local_address)
        await waiter.wait()
        assert got == [b"ok"]
        assert "datagram receiver failed" in caplog.text
    finally:
        tx.close()
        sock.close()


async def test_send_receive_and_close_is_idempotent() -> None:
    got: list[tuple[bytes, tuple[str, int]]] = []
    waiter = _Waiter(lambda: bool(got))

    def receiver(data: bytes, addr: tuple[str, int]) -> None:
        got.append((data, addr))
        waiter.check()

    a = await UdpNetwork().bind("127.0.0.1", 0, receiver)
    b = await UdpNetwork().bind("127.0.0.1", 0, lambda d, addr: None)
    b.sendto(b"hello", a.local_address)
    await waiter.wait()
    assert got == [(b"hello", b.local_address)]
    b.close()
    b.close()
    b.sendto(b"after close", a.local_address)  # ignored, no error
    a.close()


async def test_bind_error_is_a_network_error() -> None:
    from asgi_p2p.errors import NetworkError

    a = await UdpNetwork().bind("127.0.0.1", 0, lambda d, addr: None)
    try:
        with pytest.raises(NetworkError, match=r"cannot bind UDP 127\.0\.0\.1"):
            await UdpNetwork().bind("127.0.0.1", a.local_address[1], lambda d, addr: None)
    finally:
        a.close()


async def test_sendto_ttl_sets_the_ttl_of_that_datagram_only() -> None:
    """Hole-punching openers (NetworkConfig.punch_ttl) leave with a low TTL; the rest do not (Linux)."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_RECVTTL", 12), 1)
    rx.settimeout(5)
    sock = await UdpNetwork().bind("127.0.0.1", 0, lambda data, addr: None)
    try:
        sock.sendto_ttl(b"opener", rx.getsockname(), 2)
        sock.sendto(b"normal", rx.getsockname())
        ttls = []
        for _ in range(2):
            data, ancdata, _flags, _addr = rx.recvmsg(100, socket.CMSG_SPACE(4))
            (ttl,) = [int.from_bytes(d[:4], sys.byteorder) for lvl, typ, d in ancdata if typ == socket.IP_TTL]
            ttls.append((data, ttl))
        assert ttls[0] == (b"opener", 2)
        assert ttls[1][0] == b"normal" and ttls[1][1] == 64
    finally:
        rx.close()
        sock.close()


async def test_sockets_never_fragment() -> None:
    """Size probes must not be fragmented: every datagram carries the don't-fragment bit (Linux)."""
    sock = await UdpNetwork().bind("127.0.0.1", 0, lambda data, addr: None)
    try:
        assert sock._sock.getsockopt(socket.IPPROTO_IP, getattr(socket, "IP_MTU_DISCOVER", 10)) == 2  # PMTUDISC_DO
    finally:
        sock.close()


async def test_real_network_clock_offset_turns_loop_time_into_unix_time() -> None:
    import time

    offset = UdpNetwork().wall_clock_offset()
    shared = asyncio.get_running_loop().time() + offset
    assert abs(shared - time.time()) < 5.0


def test_simulated_hosts_share_one_fixed_wall_clock() -> None:
    from asgi_p2p import Node, SecretKey
    from asgi_p2p.sim import Simulation
    from asgi_p2p.sim.loop import START_TIME
    from asgi_p2p.sim.network import WALL_CLOCK_AT_START

    sim = Simulation(seed=1)
    with sim:
        a, b = sim.host("a"), sim.host("b")
        assert a.wall_clock_offset() == b.wall_clock_offset() == WALL_CLOCK_AT_START - START_TIME

        async def main() -> float:
            ep = await Node.bind(SecretKey.from_seed("a"), host="0.0.0.0", port=1, network=a)
            try:
                # the endpoint's signed-probe clock comes from the network, not the system clock
                return ep.router.clock_offset
            finally:
                await ep.close()

        assert sim.run(main()) == WALL_CLOCK_AT_START - START_TIME


# -- segmentation offload (GSO sends, GRO reads) -------------------------------------------

_LINUX = sys.platform.startswith("linux")
_SOL_UDP, _UDP_SEGMENT = 17, 103


def _payloads(sizes: list[int]) -> list[bytes]:
    """Datagrams of ``sizes``, each filled with its own index (so order and cuts show)."""
    return [bytes([i % 256]) * size for i, size in enumerate(sizes)]


async def _receive_all(rx: socket.socket, n: int, timeout: float = 5.0) -> list[bytes]:
    loop = asyncio.get_running_loop()
    got: list[bytes] = []
    async with asyncio.timeout(timeout):
        while len(got) < n:
            got.append(await loop.sock_recv(rx, 65535))
    return got


async def _plain_receiver() -> socket.socket:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    return rx


@pytest.mark.skipif(not _LINUX, reason="UDP_SEGMENT is Linux's")
async def test_a_segmented_send_delivers_each_datagram_in_order() -> None:
    sock = await UdpNetwork(gso=True).bind("127.0.0.1", 0, lambda d, a: None)
    rx = await _plain_receiver()  # no GRO here: the kernel cuts the send into datagrams
    try:
        assert sock.offload == (True, True)
        # equal sizes, a shorter one ending the run, a new run, more than one send's segments
        sizes = [1200] * 5 + [700] + [1300] * 3 + [900] * 70
        datagrams = _payloads(sizes)
        sock.sendmany(datagrams, rx.getsockname())
        got = await _receive_all(rx, len(datagrams))
        assert got == datagrams
        # runs: 5x1200+700, 3x1300+900, then 64 and 5 of 900 (at most 64 segments a send)
        assert sock.gso_sends == 4
        assert sock.gso_datagrams == len(datagrams)
        assert sock.send_errors == 0
    finally:
        rx.close()
        sock.close()


@pytest.mark.skipif(not _LINUX, reason="UDP_SEGMENT is Linux's")
async def test_a_run_is_bounded_by_the_bytes_one_send_may_carry() -> None:
    sock = await UdpNetwork(gso=True).bind("127.0.0.1", 0, lambda d, a: None)
    rx = await _plain_receiver()
    try:
        datagrams = _payloads([16000] * 9)  # 4 fit in 65,000 bytes, then 4, then 1 alone
        sock.sendmany(datagrams, rx.getsockname())
        assert await _receive_all(rx, len(datagrams)) == datagrams
        assert (sock.gso_sends, sock.gso_datagrams) == (2, 8)
    finally:
        rx.close()
        sock.close()


@pytest.mark.skipif(not _LINUX, reason="UDP_GRO is Linux's")
async def test_coalesced_reads_are_cut_back_into_the_datagrams_sent() -> None:
    got: list[tuple[bytes, tuple[str, int]]] = []
    sizes = [1200] * 10 + [300]
    waiter = _Waiter(lambda: len(got) >= len(sizes))

    def receiver(data: bytes, addr: tuple[str, int]) -> None:
        got.append((data, addr))
        waiter.check()

    sock = await UdpNetwork().bind("127.0.0.1", 0, receiver)
    tx = await _sender()
    try:
        datagrams = _payloads(sizes)
        # one segmented send: over loopback it reaches a GRO socket as one buffer
        tx.sendmsg(
            [b"".join(datagrams)], [(_SOL_UDP, _UDP_SEGMENT, (1200).to_bytes(2, sys.byteorder))], 0, sock.local_address
        )
        await waiter.wait()
        assert [d for d, _ in got] == datagrams
        assert {a for _, a in got} == {tx.getsockname()}
        assert (sock.gro_reads, sock.gro_datagrams) == (1, len(sizes))
    finally:
        tx.close()
        sock.close()


async def test_without_offload_every_datagram_goes_alone() -> None:
    got: list[bytes] = []
    datagrams = _payloads([1200] * 6 + [500])
    waiter = _Waiter(lambda: len(got) >= len(datagrams))

    def receiver(data: bytes, addr: tuple[str, int]) -> None:
        got.append(data)
        waiter.check()

    sock = await UdpNetwork(gso=False, gro=False).bind("127.0.0.1", 0, receiver)
    try:
        assert sock.offload == (False, False)
        sock.sendmany(datagrams, sock.local_address)
        await waiter.wait()
        assert got == datagrams
        assert (sock.gso_sends, sock.gro_reads) == (0, 0)
    finally:
        sock.close()


class _SocketWithoutGso(socket.socket):
    """A socket whose device cannot segment: what the kernel answers then (EIO)."""

    refused = 0

    def sendmsg(self, *args: object, **kwargs: object) -> int:  # type: ignore[override]
        self.refused += 1
        raise OSError(errno.EIO, "Input/output error")


async def test_a_kernel_refusing_segmentation_turns_it_off_and_loses_nothing(caplog: pytest.LogCaptureFixture) -> None:
    from asgi_p2p.net.udp import UdpSocket

    raw = _SocketWithoutGso(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    raw.setblocking(False)
    sock = UdpSocket(raw, asyncio.get_running_loop(), lambda d, a: None, gso=True)
    rx = await _plain_receiver()
    try:
        first, second = _payloads([1200] * 4), _payloads([1000] * 3)
        with caplog.at_level(logging.INFO, logger="asgi_p2p.net"):
            sock.sendmany(first, rx.getsockname())
        assert "segmentation offload refused" in caplog.text
        sock.sendmany(second, rx.getsockname())  # no second try: one datagram per call from now on
        assert await _receive_all(rx, 7) == first + second
        assert raw.refused == 1
        assert sock.offload[0] is False
        assert (sock.gso_sends, sock.send_errors) == (0, 0)
    finally:
        rx.close()
        sock.close()


@pytest.mark.parametrize("offload", ["gso+gro", "gro", "off"])
async def test_a_bulk_message_between_nodes_goes_as_udp_offload_says(offload: str) -> None:
    from asgi_p2p import NetworkConfig, Node, SecretKey
    from asgi_p2p.net.udp import UdpSocket

    config = NetworkConfig(udp_offload=offload, max_probe_datagram_size=0)
    a = await Node.bind(SecretKey.from_seed("offload-a"), config=config)
    b = await Node.bind(SecretKey.from_seed("offload-b"), config=config)
    try:
        message = bytes(range(256)) * 2048  # 512 KiB: hundreds of 1200-byte datagrams
        conn = await b.connect(a.node_addr())
        await conn.send(message)
        inc = await asyncio.wait_for(a.listen().accept(), 10)
        assert await asyncio.wait_for(inc.recv(), 10) == message
        sent, got = b.router.socket, a.router.socket
        assert isinstance(sent, UdpSocket) and isinstance(got, UdpSocket)
        if not _LINUX or offload == "off":
            assert sent.offload == got.offload == (False, False)
            assert (sent.gso_sends, got.gro_reads) == (0, 0)
            assert not sent.batching and sent.batch_sends == 0
        elif offload == "gro":  # the default: coalesced reads on, segmented sends off
            assert sent.offload == got.offload == (False, True)
            assert sent.gso_sends == 0
            # a transmit pass's run of datagrams leaves by sendmmsg
            assert sent.batch_sends > 0 and sent.batch_datagrams >= BATCH_MIN * sent.batch_sends
        else:
            assert sent.offload == got.offload == (True, True)
            assert sent.gso_sends > 0 and sent.gso_datagrams > 2 * sent.gso_sends
            assert got.gro_reads > 0  # loopback hands the segmented sends over whole
    finally:
        await b.close()
        await a.close()


@pytest.mark.skipif(not _LINUX, reason="UDP_GRO is Linux's")
async def test_a_batch_of_coalesced_reads_is_bounded_by_datagrams_too() -> None:
    loop = asyncio.get_running_loop()
    got: list[int] = []
    marks: list[int] = []
    sends, per_send = 6, 40  # 240 datagrams in 6 coalesced buffers
    waiter = _Waiter(lambda: len(got) >= sends * per_send)

    def receiver(data: bytes, addr: tuple[str, int]) -> None:
        if not got:
            loop.call_soon(lambda: marks.append(len(got)))
        got.append(len(data))
        waiter.check()

    sock = await UdpNetwork().bind("127.0.0.1", 0, receiver)
    tx = await _sender()
    try:
        segment = (1000).to_bytes(2, sys.byteorder)
        for _ in range(sends):
            tx.sendmsg([b"y" * (1000 * per_send)], [(_SOL_UDP, _UDP_SEGMENT, segment)], 0, sock.local_address)
        await waiter.wait()
        # the first callback stopped after the read that reached READ_BATCH (64) datagrams: 2 reads
        assert marks[0] == 2 * per_send
        assert sock.gro_reads == sends
    finally:
        tx.close()
        sock.close()


# -- batched sends (sendmmsg) -----------------------------------------------------------------


async def _receivers(n: int) -> list[socket.socket]:
    return [await _plain_receiver() for _ in range(n)]


async def _batching_socket() -> UdpSocket:
    sock = await UdpNetwork().bind("127.0.0.1", 0, lambda d, a: None)
    assert sock.batching is _LINUX
    return sock


def _spread(receivers: list[socket.socket], per: int) -> list[tuple[bytes, tuple[str, int]]]:
    """``per`` datagrams for each receiver, interleaved (receiver 0, 1, ..., 0, 1, ...), each unique."""
    return [(bytes([k, i]) * 600, receivers[i].getsockname()) for k in range(per) for i in range(len(receivers))]


async def _check_arrived(receivers: list[socket.socket], sent: list[tuple[bytes, tuple[str, int]]]) -> None:
    for rx in receivers:
        mine = [data for data, addr in sent if addr == rx.getsockname()]
        assert await _receive_all(rx, len(mine)) == mine  # every one, in the order sent


@pytest.mark.skipif(not _LINUX, reason="sendmmsg is Linux's")
async def test_held_datagrams_to_many_ports_leave_in_one_sendmmsg_in_order() -> None:
    sock = await _batching_socket()
    receivers = await _receivers(10)
    try:
        sent = _spread(receivers, 3)
        sock.hold()
        for data, addr in sent:
            sock.sendto(data, addr)
        assert sock.batch_sends == 0  # held
        sock.release()
        assert (sock.batch_sends, sock.batch_datagrams, sock.send_errors) == (1, 30, 0)
        await _check_arrived(receivers, sent)
        sock.sendto(b"direct", receivers[0].getsockname())  # released: sent at once again
        assert await _receive_all(receivers[0], 1) == [b"direct"]
        assert sock.batch_sends == 1
    finally:
        for rx in receivers:
            rx.close()
        sock.close()


@pytest.mark.skipif(not _LINUX, reason="sendmmsg is Linux's")
async def test_a_few_held_datagrams_go_one_sendto_each_and_a_long_batch_in_several_calls() -> None:
    sock = await _batching_socket()
    receivers = await _receivers(BATCH_MAX // 4 + 1)
    try:
        few = _spread(receivers[: BATCH_MIN - 1], 1)  # fewer than BATCH_MIN: sendto costs less
        sock.hold()
        for data, addr in few:
            sock.sendto(data, addr)
        sock.release()
        assert sock.batch_sends == 0
        await _check_arrived(receivers, few)
        many = _spread(receivers, 5)  # 85: 64 leave when the 64th is held, 21 at release
        sock.hold()
        for data, addr in many:
            sock.sendto(data, addr)
        assert (sock.batch_sends, sock.batch_datagrams) == (1, BATCH_MAX)
        sock.release()
        assert (sock.batch_sends, sock.batch_datagrams) == (2, len(many))
        await _check_arrived(receivers, many)
    finally:
        for rx in receivers:
            rx.close()
        sock.close()


def _fake_sendmmsg(monkeypatch: pytest.MonkeyPatch, fake: Callable[..., int]) -> list[int]:
    """Replace the C library's sendmmsg for sockets bound from now on; returns the batch sizes asked."""
    import asgi_p2p.net.udp as udp

    asked: list[int] = []

    def call(fd: int, msgs: int, n: int, flags: int) -> int:
        asked.append(n)
        return fake(fd, msgs, n, flags)

    monkeypatch.setattr(udp, "_SENDMMSG", call)
    return asked


@pytest.mark.skipif(not _LINUX, reason="sendmmsg is Linux's")
async def test_what_a_partial_sendmmsg_left_goes_by_sendto_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    import asgi_p2p.net.udp as udp

    real = udp._SENDMMSG
    assert real is not None
    asked = _fake_sendmmsg(monkeypatch, lambda fd, msgs, n, flags: real(fd, msgs, min(n, 3), flags))
    sock = await _batching_socket()
    receivers = await _receivers(4)
    try:
        sent = _spread(receivers, 3)  # 12; the kernel takes 3 (as with a send buffer filling up)
        sock.hold()
        for data, addr in sent:
            sock.sendto(data, addr)
        sock.release()
        assert asked == [12]
        assert (sock.batch_sends, sock.batch_datagrams, sock.send_errors) == (1, 3, 0)
        await _check_arrived(receivers, sent)
    finally:
        for rx in receivers:
            rx.close()
        sock.close()


@pytest.mark.skipif(not _LINUX, reason="sendmmsg is Linux's")
async def test_a_sendmmsg_that_sent_nothing_loses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    def full(fd: int, msgs: int, n: int, flags: int) -> int:
        ctypes.set_errno(errno.EAGAIN)  # the send buffer was full for the first datagram
        return -1

    asked = _fake_sendmmsg(monkeypatch, full)
    sock = await _batching_socket()
    receivers = await _receivers(8)
    try:
        sent = _spread(receivers, 2)
        sock.hold()
        for data, addr in sent:
            sock.sendto(data, addr)
        sock.release()
        assert asked == [16] and sock.batching  # a full buffer is no reason to stop batching
        assert (sock.batch_sends, sock.send_errors) == (0, 0)
        await _check_arrived(receivers, sent)  # sendto, one each, after it
    finally:
        for rx in receivers:
            rx.close()
        sock.close()


@pytest.mark.skipif(not _LINUX, reason="sendmmsg is Linux's")
async def test_a_refused_sendmmsg_turns_batching_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import ctypes

    def refused(fd: int, msgs: int, n: int, flags: int) -> int:
        ctypes.set_errno(errno.ENOSYS)  # a kernel (or seccomp filter) without the system call
        return -1

    asked = _fake_sendmmsg(monkeypatch, refused)
    sock = await _batching_socket()
    receivers = await _receivers(8)
    try:
        first, second = _spread(receivers, 1), _spread(receivers, 2)[8:]
        for batch in (first, second):
            with caplog.at_level(logging.INFO, logger="asgi_p2p.net"):
                sock.hold()
                for data, addr in batch:
                    sock.sendto(data, addr)
                sock.release()
        assert "sendmmsg refused" in caplog.text
        assert asked == [8] and not sock.batching  # no second try
        await _check_arrived(receivers, first + second)
    finally:
        for rx in receivers:
            rx.close()
        sock.close()


@pytest.mark.skipif(not _LINUX, reason="sendmmsg is Linux's")
async def test_what_is_held_goes_before_a_direct_send_and_an_address_sendmmsg_cannot_take() -> None:
    sock = await _batching_socket()
    receivers = await _receivers(8)
    try:
        held = _spread(receivers, 1)
        sock.hold()
        for data, addr in held:
            sock.sendto(data, addr)
        sock.sendto_ttl(b"ttl", receivers[0].getsockname(), 9)  # releases what was held first
        assert (sock.batch_sends, sock.batch_datagrams) == (1, 8)
        assert await _receive_all(receivers[0], 2) == [held[0][0], b"ttl"]
        await _check_arrived(receivers[1:], held[1:])
        # a host name (sendto resolves it, sendmmsg cannot): the batch goes one sendto each
        named = [(data, ("localhost", addr[1])) for data, addr in _spread(receivers, 1)]
        for data, addr in named:
            sock.sendto(data, addr)
        sock.release()
        assert (sock.batch_sends, sock.send_errors) == (1, 0)
        await _check_arrived(receivers, [(d, ("127.0.0.1", a[1])) for d, a in named])
        sock.hold()
        sock.close()  # what is held when the socket closes is dropped with it
        sock.release()
    finally:
        for rx in receivers:
            rx.close()
        sock.close()


def test_sendmmsg_destinations_are_linux_sockaddrs() -> None:
    from asgi_p2p.net.udp import _MultiSender

    def encode(family: int, addr: tuple[str, int]) -> bytes:
        raw = socket.socket(family, socket.SOCK_DGRAM)  # never bound: nothing is sent
        try:
            return _MultiSender(lambda *a: 0, raw)._name(addr)
        finally:
            raw.close()

    v4 = encode(socket.AF_INET, ("10.1.2.3", 4433))
    assert v4 == int(socket.AF_INET).to_bytes(2, sys.byteorder) + b"\x11\x51" + bytes([10, 1, 2, 3]) + bytes(8)
    v6 = encode(socket.AF_INET6, ("2001:db8::1", 443))
    assert len(v6) == 28  # family, port, flow info, address, scope id
    assert v6[:2] == int(socket.AF_INET6).to_bytes(2, sys.byteorder) and v6[2:4] == b"\x01\xbb"
    assert v6[8:24] == socket.inet_pton(socket.AF_INET6, "2001:db8::1") and v6[4:8] == v6[24:] == bytes(4)
    with pytest.raises(ValueError, match="cannot send to"):
        encode(socket.AF_INET, ("localhost", 1))
    with pytest.raises(ValueError, match="cannot send to"):
        encode(socket.AF_INET6, ("10.1.2.3", 1))


async def test_without_sendmmsg_hold_changes_nothing() -> None:
    sock = await UdpNetwork(batch=False).bind("127.0.0.1", 0, lambda d, a: None)
    rx = await _plain_receiver()
    try:
        assert not sock.batching
        sock.hold()
        sock.sendto(b"at once", rx.getsockname())
        assert await _receive_all(rx, 1) == [b"at once"]
        sock.release()
        assert sock.batch_sends == 0
    finally:
        rx.close()
        sock.close()
