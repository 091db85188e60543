"""Endpoint behaviour on real UDP: hostile input, scale and memory bounds."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import ssl

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_p2p import MSG_ALPN, NetworkConfig, Node, SecretKey
from asgi_p2p import aioquic_compat as hooks
from tests.harness import Harness


async def _raw_client_without_certificate(addr: tuple[str, int]) -> ConnectionTerminated:
    """A plain aioquic client, driven by hand, that presents no certificate."""
    loop = asyncio.get_running_loop()
    cfg = QuicConfiguration(is_client=True, alpn_protocols=[MSG_ALPN], verify_mode=ssl.CERT_NONE)
    quic = QuicConnection(configuration=cfg)
    terminated: asyncio.Future[ConnectionTerminated] = loop.create_future()

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, src: tuple[str, int]) -> None:
            quic.receive_datagram(data, src, loop.time())
            pump()

    def pump() -> None:
        while (event := quic.next_event()) is not None:
            if isinstance(event, ConnectionTerminated) and not terminated.done():
                terminated.set_result(event)
        for data, dst in quic.datagrams_to_send(loop.time()):
            transport.sendto(data, dst)

    transport, _ = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", 0))
    try:
        quic.connect(addr, loop.time())
        pump()
        deadline = loop.time() + 5
        while not terminated.done() and loop.time() < deadline:
            await asyncio.sleep(0.01)
            timer = quic.get_timer()
            if timer is not None and timer <= loop.time():
                quic.handle_timer(loop.time())
                pump()
        return terminated.result()
    finally:
        transport.close()


def test_client_without_certificate_is_refused_and_server_keeps_serving(udp: Harness) -> None:
    async def scenario(net: Harness) -> None:
        a = await net.endpoint("alice")
        event = await _raw_client_without_certificate(a.local_address)
        assert event.error_code == 0x100 + 116  # TLS certificate_required
        assert "certificate" in event.reason_phrase
        assert a.connections == []
        b = await net.endpoint("bob")
        conn = await b.connect(a.node_addr())
        await conn.send(b"still serving")
        assert await (await a.listen().accept()).recv() == b"still serving"

    udp.run(scenario)


def _first_initial_datagram() -> bytes:
    """The first datagram a real client sends (a full QUIC Initial)."""
    cfg = QuicConfiguration(is_client=True, alpn_protocols=[MSG_ALPN], verify_mode=ssl.CERT_NONE)
    quic = QuicConnection(configuration=cfg)
    quic.connect(("127.0.0.1", 9), now=0.0)
    return quic.datagrams_to_send(now=0.0)[0][0]


@settings(max_examples=1, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=1500), min_size=50, max_size=50))
def test_garbage_and_truncated_datagrams_do_no_harm(garbage: list[bytes]) -> None:
    from tests.harness import UdpHarness

    async def scenario(net: Harness) -> None:
        a = await net.endpoint("alice")
        b = await net.endpoint("bob")
        conn = await b.connect(a.node_addr())
        await conn.send(b"before")
        inc = await a.listen().accept()
        assert await inc.recv() == b"before"
        initial = _first_initial_datagram()
        rng = random.Random(7)
        datagrams = list(garbage)
        datagrams += [initial[: rng.randrange(1, len(initial))] for _ in range(50)]  # truncated
        datagrams += [bytes(b ^ 0xFF if i == 40 else b for i, b in enumerate(initial))]  # corrupted
        datagrams += [initial[:5] + os.urandom(len(initial) - 5) for _ in range(20)]  # valid header, junk body
        datagrams += [b"\x40" + os.urandom(30) for _ in range(20)]  # short headers, unknown CIDs
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for d in datagrams:
                sock.sendto(d, a.local_address)
                sock.sendto(d, b.local_address)
        finally:
            sock.close()
        await asyncio.sleep(0.2)
        assert a.dropped_datagrams > 0
        # the established connection is untouched, and new ones still work
        await conn.send(b"after")
        assert await inc.recv() == b"after"
        c = await net.endpoint("carol")
        conn2 = await c.connect(a.node_addr())
        await conn2.send(b"new")
        assert await (await a.listen().accept()).recv() == b"new"

    UdpHarness().run(scenario)


def test_hundred_concurrent_connections_to_one_endpoint(udp: Harness) -> None:
    async def scenario(net: Harness) -> None:
        server = await net.endpoint("server")
        listener = server.listen()
        n = 100

        async def echo() -> None:
            async def one(inc: object) -> None:
                from asgi_p2p import MessageConnection

                assert isinstance(inc, MessageConnection)
                await inc.send(await inc.recv())

            async with asyncio.TaskGroup() as tg:
                for _ in range(n):
                    tg.create_task(one(await listener.accept()))

        async def client(i: int) -> bytes:
            ep = await net.endpoint(f"c{i}")
            conn = await ep.connect(server.node_addr())
            await conn.send(f"hello {i}".encode())
            return await conn.recv()

        server_task = asyncio.create_task(echo())
        replies = await asyncio.gather(*(client(i) for i in range(n)))
        await server_task
        assert replies == [f"hello {i}".encode() for i in range(n)]
        assert len(server.connections) == n

    udp.run(scenario, timeout=120)


def test_peer_that_stops_reading_does_not_grow_sender_memory(udp: Harness) -> None:
    async def scenario(net: Harness) -> None:
        cfg = NetworkConfig(stream_send_buffer=128 * 1024, stream_receive_window=128 * 1024)
        reader = await net.endpoint("lazy-reader", config=cfg)
        writer = await net.endpoint("writer", config=cfg)
        conn = await writer.connect(reader.node_addr())
        chunk = b"z" * 65536
        sent = 0

        async def flood() -> None:
            nonlocal sent
            for _ in range(1000):  # 64 MiB if nothing pushed back
                await conn.send(chunk)
                sent += len(chunk)

        task = asyncio.create_task(flood())
        inc = await reader.listen().accept()  # accepted, never read
        await asyncio.sleep(1.0)
        assert not task.done(), "send never waited for the slow reader"
        quic = conn.peer_connection.quic
        out_stream = conn._out_stream
        assert out_stream is not None
        assert hooks.unacked_bytes(quic, out_stream) <= cfg.stream_send_buffer + len(chunk)
        # what the writer could push = receiver's window + one message + send buffer
        assert sent <= cfg.stream_receive_window + cfg.max_message_size + cfg.stream_send_buffer + len(chunk)
        assert inc._queued_bytes <= cfg.stream_receive_window + cfg.max_message_size
        # reading resumes the flow
        before = sent
        for _ in range(20):
            assert await inc.recv() == chunk
        await asyncio.sleep(0.3)
        assert sent > before
        task.cancel()

    udp.run(scenario)


def test_max_connections_refuses_extra_peers_clearly(udp: Harness) -> None:
    async def scenario(net: Harness) -> None:
        from asgi_p2p import ConnectionFailed

        server = await net.endpoint("server", config=NetworkConfig(max_connections=2))
        for i in range(2):
            await (await net.endpoint(f"ok{i}")).connect(server.node_addr())
        extra = await net.endpoint("extra", config=NetworkConfig(connect_timeout=3))
        with pytest.raises(ConnectionFailed, match="too many connections"):
            await extra.connect(server.node_addr())

    udp.run(scenario)


async def test_bind_failure_is_a_network_error() -> None:
    from asgi_p2p import NetworkError

    ep = await Node.bind(SecretKey.from_seed("a"))
    try:
        with pytest.raises(NetworkError, match="cannot bind"):
            await Node.bind(SecretKey.from_seed("b"), port=ep.local_address[1])
    finally:
        await ep.close()
