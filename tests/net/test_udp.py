"""The real UDP socket: batched reads, receiver errors, close."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable

import pytest

from asgi_p2p.net.udp import READ_BATCH, UdpNetwork


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
