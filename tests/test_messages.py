"""The raw message API: behaviour a user relies on, on every network."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_p2p import (
    AuthenticationFailed,
    ConnectionClosed,
    ConnectionFailed,
    MessageTooLarge,
    NetworkConfig,
    NodeAddr,
    P2PError,
    SecretKey,
)
from tests.harness import Harness, UdpHarness

MiB = 1024 * 1024


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_send_and_recv_both_ways(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        a = await net.endpoint("alice")
        b = await net.endpoint("bob")
        conn = await b.connect(a.node_addr())
        assert conn.remote_node_id == a.node_id
        assert conn.is_connected
        await conn.send(b"ping")
        inc = await a.listen().accept()
        assert inc.remote_node_id == b.node_id  # learnt from bob's certificate
        assert await inc.recv() == b"ping"
        await inc.send(b"pong")
        assert await conn.recv() == b"pong"
        stats = conn.stats
        assert (stats.messages_sent, stats.bytes_sent, stats.messages_received, stats.bytes_received) == (1, 4, 1, 4)
        assert stats.smoothed_rtt > 0
        assert stats.duration >= 0

    net.run(scenario)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.one_of(st.integers(0, 2048), st.integers(0, MiB)), min_size=1, max_size=6),
    seed=st.integers(0, 1000),
)
def test_any_message_up_to_1mib_arrives_intact_and_in_order(sizes: list[int], seed: int) -> None:
    async def scenario(net: Harness) -> None:
        a = await net.endpoint("alice")
        b = await net.endpoint("bob")
        conn = await b.connect(a.node_addr())
        sent = [payload(seed + i, n) for i, n in enumerate(sizes)]

        async def sender() -> None:
            for msg in sent:
                await conn.send(msg)

        task = asyncio.create_task(sender())
        inc = await a.listen().accept()
        got = [await inc.recv() for _ in sent]
        await task
        assert [len(m) for m in got] == sizes
        assert got == sent

    UdpHarness().run(scenario)


def test_interleaved_messages_on_many_connections_keep_boundaries(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        server = await net.endpoint("server")
        clients = [await net.endpoint(f"client{i}") for i in range(8)]
        listener = server.listen()
        per_client = 20

        async def client_job(i: int) -> None:
            conn = await clients[i].connect(server.node_addr())
            for j in range(per_client):
                await conn.send(f"{i}:{j}:".encode() + payload(i * 100 + j, (i * 997 + j * 131) % 5000))
            assert await conn.recv() == b"done"
            await conn.close()

        async def serve_one(inc: object) -> None:
            from asgi_p2p import MessageConnection

            assert isinstance(inc, MessageConnection)
            seen = []
            for _ in range(per_client):
                msg = await inc.recv()
                i, j, body = msg.split(b":", 2)
                assert body == payload(int(i) * 100 + int(j), (int(i) * 997 + int(j) * 131) % 5000)
                seen.append(int(j))
            assert seen == list(range(per_client))
            await inc.send(b"done")

        async def serve() -> None:
            async with asyncio.TaskGroup() as tg:
                for _ in clients:
                    tg.create_task(serve_one(await listener.accept()))

        await asyncio.gather(serve(), *(client_job(i) for i in range(len(clients))))

    net.run(scenario)


def test_send_after_close_fails_and_peer_sees_close(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        a = await net.endpoint("alice")
        b = await net.endpoint("bob")
        conn = await b.connect(a.node_addr())
        await conn.send(b"last words")
        inc = await a.listen().accept()
        assert inc.is_connected
        await conn.close()
        assert not conn.is_connected
        with pytest.raises(ConnectionClosed):
            await conn.send(b"too late")
        with pytest.raises(ConnectionClosed):
            await conn.recv()
        # the peer still gets what was sent before the close, then sees the close
        assert await inc.recv() == b"last words"
        with pytest.raises(ConnectionClosed):
            await inc.recv()
        assert not inc.is_connected
        with pytest.raises(ConnectionClosed):
            await inc.send(b"to nobody")

    net.run(scenario)


def test_max_message_size_enforced_on_both_sides(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        small = NetworkConfig(max_message_size=1000)
        a = await net.endpoint("alice", config=small)
        b = await net.endpoint("bob")
        conn = await b.connect(a.node_addr())
        with pytest.raises(MessageTooLarge, match="exceeds max_message_size"):
            await conn.send(b"x" * (2 * MiB))
        assert conn.is_connected  # a refused send changes nothing
        await conn.send(b"x" * 5000)  # within bob's limit, above alice's
        inc = await a.listen().accept()
        with pytest.raises(MessageTooLarge, match="5000 bytes exceeds max_message_size 1000"):
            await inc.recv()
        with pytest.raises(ConnectionClosed, match="max_message_size"):
            for _ in range(100):
                await conn.recv()

    net.run(scenario)


def test_dialing_a_node_at_another_nodes_address_fails_authentication(net: Harness) -> None:
    """Man in the middle: M answers at the address we dial for A."""

    async def scenario(net: Harness) -> None:
        a = await net.endpoint("alice")
        mallory = await net.endpoint("mallory")
        b = await net.endpoint("bob")
        spoofed = NodeAddr(a.node_id, list(mallory.node_addr().direct_addresses))
        with pytest.raises(AuthenticationFailed, match="not"):
            await b.connect(spoofed)
        # mallory got no application connection and no data
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(mallory.listen().accept(), 0.3)
        assert mallory.connections == []
        # and the real alice still works
        conn = await b.connect(a.node_addr())
        await conn.send(b"hi")
        assert await (await a.listen().accept()).recv() == b"hi"

    net.run(scenario)


def test_allow_list_refuses_other_nodes_and_keeps_serving(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        friend_id = SecretKey.from_seed("friend").node_id
        a = await net.endpoint("alice", allow=[friend_id])
        stranger = await net.endpoint("stranger")
        friend = await net.endpoint("friend")
        with pytest.raises(AuthenticationFailed, match="not allowed"):
            await stranger.connect(a.node_addr())
        conn = await friend.connect(a.node_addr())
        await conn.send(b"let me in")
        assert await (await a.listen().accept()).recv() == b"let me in"

    net.run(scenario)


def test_allow_callback_decides_per_node(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        asked = []

        def allow(node_id: object) -> bool:
            asked.append(node_id)
            return len(asked) > 1

        a = await net.endpoint("alice", allow=allow)
        b = await net.endpoint("bob")
        with pytest.raises(AuthenticationFailed):
            await b.connect(a.node_addr())
        conn = await b.connect(a.node_addr())
        assert conn.is_connected
        assert asked == [b.node_id, b.node_id]

    net.run(scenario)


def test_connection_to_nobody_fails_with_clear_error(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        a = await net.endpoint("alice", config=NetworkConfig(connect_timeout=0.5))
        b = await net.endpoint("bob")
        addr = b.node_addr()
        await b.close()
        with pytest.raises(ConnectionFailed, match="no QUIC handshake"):
            await a.connect(addr)

    net.run(scenario)


def test_one_connection_per_peer_is_reused(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        a = await net.endpoint("alice")
        b = await net.endpoint("bob")
        c1 = await b.connect(a.node_addr())
        c2 = await b.connect(a.node_addr())
        assert c1 is c2
        await c1.close()
        c3 = await b.connect(a.node_addr())
        assert c3 is not c1 and c3.is_connected

    net.run(scenario)


def test_endpoint_close_is_seen_by_peers(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        a = await net.endpoint("alice")
        b = await net.endpoint("bob")
        conn = await b.connect(a.node_addr())
        await conn.send(b"x")
        inc = await a.listen().accept()
        await a.close()
        with pytest.raises(P2PError):
            await asyncio.wait_for(conn.recv(), 5)
        assert not conn.is_connected
        assert not inc.is_connected

    net.run(scenario)
