"""Stateless reset (RFC 9000 10.3): when a node sends one, and what a received one does.

Packet-level checks on the simulator: a raw socket stands in for a peer (or for a
restarted node at the peer's address) and sees exactly what the endpoint sends.
"""

from __future__ import annotations

import asyncio
import hmac
import random

import pytest

from asgi_p2p import ConnectionReset, MessageConnection, NetworkConfig, Node, SecretKey
from asgi_p2p.endpoint.reset import (
    MIN_RESET_SIZE,
    MIN_TRIGGER_SIZE,
    RESET_TOKEN_SIZE,
    ResetLimiter,
    ResetTokens,
    build_stateless_reset,
)
from asgi_p2p.sim import Host, Simulation
from tests.sim.sim_helpers import Probe, probe

LATENCY = 0.010
KEY = SecretKey.from_seed("server")


# -- tokens, building, limits (pure) --------------------------------------------------


def test_tokens_depend_on_key_and_connection_id_only() -> None:
    cid = bytes(range(8))
    a, a_again, b = ResetTokens(KEY), ResetTokens(SecretKey.from_seed("server")), ResetTokens(SecretKey.generate())
    assert a.token(cid) == a_again.token(cid)  # a restarted node computes the same token
    # HMAC-SHA256 of the id under a key derived from the node key (not a key-independent hash)
    key = hmac.digest(KEY.to_bytes(), b"asgi-p2p stateless reset key v1", "sha256")
    assert a.token(cid) == hmac.digest(key, cid, "sha256")[:RESET_TOKEN_SIZE]
    assert a.token(cid) == a.token(cid)  # the keyed state is copied, never consumed
    assert len(a.token(cid)) == RESET_TOKEN_SIZE
    assert a.token(cid) != b.token(cid)
    assert a.token(cid) != a.token(bytes(8))
    assert a.index(a.token(cid)) != a.token(cid) and a.index(a.token(cid)) != b.index(a.token(cid))


@pytest.mark.parametrize("trigger", [MIN_TRIGGER_SIZE, 30, 43, 44, 45, 100, 1200, 1472])
def test_a_reset_is_smaller_than_its_trigger_and_looks_like_a_short_header(trigger: int) -> None:
    token = bytes(range(16))
    rng = random.Random(trigger)
    for _ in range(20):
        reset = build_stateless_reset(token, trigger, rng)
        assert MIN_RESET_SIZE <= len(reset) < trigger and len(reset) <= 64
        if trigger <= 43:
            assert len(reset) == trigger - 1  # RFC 9000 10.3: one byte shorter
        assert reset[0] & 0xC0 == 0x40  # short header: form bit clear, fixed bit set
        assert reset.endswith(token)
    assert len({build_stateless_reset(token, trigger, rng)[:-16] for _ in range(20)}) > 1  # unpredictable bits


def test_no_reset_answers_a_datagram_too_small_to_be_a_packet() -> None:
    with pytest.raises(ValueError, match="no stateless reset answers a 28-byte datagram"):
        build_stateless_reset(bytes(16), MIN_TRIGGER_SIZE - 1, random.Random(1))
    with pytest.raises(ValueError, match="16 bytes"):
        build_stateless_reset(bytes(15), 100, random.Random(1))


def test_limiter_bounds_per_source_overall_and_memory() -> None:
    lim = ResetLimiter(rate=10, burst=100, per_source_rate=5, per_source_burst=10, max_sources=50)
    assert sum(lim.allow("a", 0.0) for _ in range(30)) == 10  # per-source burst
    assert lim.allow("a", 0.1) is False  # 0.5 token so far
    assert lim.allow("a", 0.2) is True  # refilled at 5/s
    allowed = sum(lim.allow(("b", i), 0.2) for i in range(500))
    assert allowed == 100 - 11 + 2  # the overall bucket: 100, minus the 11 resets to "a", +2 refilled by 0.2 s
    assert lim.sources == 50  # least recently used sources forgotten
    assert lim.allow(("c", 0), 10.0) is True  # refilled


# -- on the simulator ---------------------------------------------------------------------


async def _node(host: Host, key: SecretKey | None = None, port: int = 4433) -> Node:
    return await Node.bind(key, host="0.0.0.0", port=port, config=NetworkConfig(keepalive_interval=0), network=host)


def _short(dcid: bytes, size: int, fill: int = 0xAB) -> bytes:
    return b"\x41" + dcid + bytes([fill]) * (size - 1 - len(dcid))


async def _answers(p: Probe, before: int) -> list[bytes]:
    await asyncio.sleep(4 * LATENCY)
    return [d for d, _, _ in p.received[before:]]


def test_when_a_node_answers_with_a_reset(sim: Simulation) -> None:
    a, b = sim.host("node"), sim.host("prober")
    sim.link(a, b, latency=LATENCY, loss=0.0)

    async def main() -> None:
        node = await _node(a, KEY)
        tokens = ResetTokens(KEY)
        p = await probe(b, 5000)
        target = node.local_address
        dcid = bytes(range(8))
        # a short header for an unknown connection id, of the smallest size a packet can have
        p.send(_short(dcid, MIN_TRIGGER_SIZE), target)
        (reset,) = await _answers(p, 0)
        assert len(reset) == MIN_TRIGGER_SIZE - 1 and reset.endswith(tokens.token(dcid))
        assert reset[0] & 0xC0 == 0x40
        # a reset of that size (or anything shorter) gets none: resets never answer each other forever
        p.send(reset, target)
        p.send(_short(dcid, MIN_TRIGGER_SIZE - 1), target)
        p.send(_short(dcid, 10), target)
        assert await _answers(p, 1) == []
        # long headers never get one (a Handshake packet, an unknown-version Initial-sized
        # packet is version negotiation's business, a too-small Initial is dropped)
        handshake = bytes([0xE0]) + (1).to_bytes(4, "big") + b"\x08" + dcid + b"\x08" + dcid + bytes(60)
        small_initial = bytes([0xC0]) + (1).to_bytes(4, "big") + b"\x08" + dcid + b"\x08" + dcid + bytes(200)
        p.send(handshake, target)
        p.send(small_initial, target)
        assert await _answers(p, 1) == []
        # a full-size packet gets a short reset
        p.send(_short(dcid, 1200), target)
        (big,) = await _answers(p, 1)
        assert 42 <= len(big) <= 64 and big.endswith(tokens.token(dcid))
        assert node.stateless_resets_sent == 2
        # a flood from one address: at most the per-source burst is answered
        for i in range(100):
            p.send(_short(bytes([i]) * 8, 100), target)
        flood = await _answers(p, 2)
        assert 0 < len(flood) <= 10
        assert node.stateless_resets_limited >= 90
        await node.close()

    sim.run(main())


def test_a_reset_ends_the_connection_only_with_the_right_token_from_the_peer(sim: Simulation) -> None:
    a, b = sim.host("server"), sim.host("client")
    sim.link(a, b, latency=LATENCY, loss=0.0)

    async def main() -> None:
        server = await _node(a, KEY)
        client = await _node(b)
        conn = await client.connect(server.node_addr())
        await conn.send(b"hello")
        inc: MessageConnection = await server.listen().accept()
        assert await inc.recv() == b"hello"
        sim.crash(a)  # the server vanishes; a raw socket takes its address
        sim.restart(a)
        imposter = await probe(a, 4433)
        elsewhere = await probe(a, 4434)
        sending = asyncio.ensure_future(conn.send(b"are you there?"))
        await imposter.wait_for(1)
        packet, source, _ = imposter.received[0]
        assert not packet[0] & 0x80
        dcid = packet[1:9]
        token = ResetTokens(KEY).token(dcid)
        rng = random.Random(3)
        # wrong token, right address: ignored
        imposter.send(build_stateless_reset(ResetTokens(SecretKey.from_seed("forger")).token(dcid), 100, rng), source)
        # right token, but from an address the connection does not use: ignored
        elsewhere.send(build_stateless_reset(token, 100, rng), source)
        # right token truncated into a too-short datagram: ignored
        imposter.send(token[-(MIN_RESET_SIZE - 1) :], source)
        await asyncio.sleep(4 * LATENCY)
        peer = conn.peer_connection
        assert not peer.closed and client.stateless_resets_received == 0
        # the genuine reset: the connection ends at once, saying why
        imposter.send(build_stateless_reset(token, 100, rng), source)
        await asyncio.sleep(2 * LATENCY)
        assert peer.closed and client.stateless_resets_received == 1
        err = peer.close_error
        assert isinstance(err, ConnectionReset), err
        assert str(server.node_id) in str(err) and "restarted or lost the connection's state" in str(err)
        with pytest.raises(ConnectionReset):
            await sending
            await conn.send(b"more")
        # nothing more was sent on the connection after the reset
        before = len(imposter.received)
        await asyncio.sleep(2.0)
        assert len(imposter.received) == before
        await client.close()
        await server.close(timeout=0.1)

    sim.run(main())


def test_a_reset_travels_back_through_the_relay() -> None:
    """Behind symmetric NATs the two nodes only ever talk through the relay: the restarted
    node's reset goes back through the relay to the node the relay says sent the packet."""
    from asgi_p2p import NodeAddr
    from asgi_p2p.relay.server import RelayServer

    sim = Simulation(seed=5, mtu=1500, latency=0.02, loss=0.0)
    with sim:
        relay_host = sim.host("relay")
        a = sim.host("alice", nat="symmetric")
        b = sim.host("bob", nat="symmetric")

        async def bind(name: str, host: Host, url: str) -> Node:
            node = await Node.bind(
                SecretKey.from_seed(name),
                host="0.0.0.0",
                port=4433,
                config=NetworkConfig(keepalive_interval=0),
                network=host,
                rng=random.Random(name),
                relay_url=url,
            )
            assert node.relay is not None
            await node.relay.wait_connected(10)
            return node

        async def main() -> None:
            relay = await RelayServer.bind(SecretKey.from_seed("relay"), host="0.0.0.0", port=3478, network=relay_host)
            url = str(relay.url)
            alice, bob = await bind("alice", a, url), await bind("bob", b, url)
            conn = await bob.connect(NodeAddr(alice.node_id, relay_url=url))
            await conn.send(b"hello")
            assert await (await alice.listen().accept()).recv() == b"hello"
            peer = conn.peer_connection
            assert peer.path.kind == "relay"
            sim.crash(a)
            sim.restart(a)
            alice2 = await bind("alice", a, url)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            sending = asyncio.ensure_future(conn.send(b"still there?"))
            await asyncio.wait_for(peer.wait_closed(), 5)
            # bob -> relay -> alice, then the reset alice -> relay -> bob: two round trips of 40 ms
            assert peer.closed and loop.time() - t0 <= 0.2
            assert isinstance(peer.close_error, ConnectionReset)
            assert bob.stateless_resets_received == 1 and alice2.stateless_resets_sent >= 1
            with pytest.raises(ConnectionReset):
                await sending
                await conn.send(b"more")
            # a new connection through the relay works at once
            conn2 = await bob.connect(NodeAddr(alice.node_id, relay_url=url))
            await conn2.send(b"again")
            assert await (await alice2.listen().accept()).recv() == b"again"
            for node in (bob, alice2, alice):
                await node.close(timeout=0.1)
            await relay.close()

        sim.run(main())


@pytest.mark.parametrize("idle_first", [True, False])
def test_error_text_for_a_peer_that_never_answers(sim: Simulation, idle_first: bool) -> None:
    a, b = sim.host("client"), sim.host("void")
    sim.link(a, b, latency=LATENCY, loss=0.0)

    async def main() -> None:
        from asgi_p2p import ConnectionFailed, NodeAddr

        # QUIC's idle timer (at least 3 probe timeouts) or the dial's connect_timeout, whichever ends first
        config = NetworkConfig(
            keepalive_interval=0, idle_timeout=2.0 if idle_first else 30.0, connect_timeout=30.0 if idle_first else 2.0
        )
        client = await Node.bind(host="0.0.0.0", config=config, network=a)
        nobody = SecretKey.from_seed("nobody").node_id
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(ConnectionFailed) as info:
            await client.connect(NodeAddr(nobody, [(b.address, 4433)]))
        message = str(info.value)
        if idle_first:
            assert message.startswith(f"no answer from node {nobody} at {b.address}:4433 within ")
            assert message.endswith("s (handshake timed out); is the node running and reachable?")
            assert loop.time() - t0 < 10
        else:
            assert message.startswith("no QUIC handshake with ") and "within 2s" in message
            assert loop.time() - t0 == pytest.approx(2.0, abs=0.01)
        await client.close()

    sim.run(main())


def test_an_initial_of_another_quic_version_gets_a_version_negotiation_naming_v1(sim: Simulation) -> None:
    """Nodes speak QUIC v1 only: a v2 Initial (RFC 9369) is answered statelessly with the
    versions the node speaks, and creates nothing."""
    from aioquic.buffer import Buffer
    from aioquic.quic.packet import QuicPacketType, pull_quic_header

    a, b = sim.host("node"), sim.host("prober")
    sim.link(a, b, latency=LATENCY, loss=0.0)

    async def main() -> None:
        node = await _node(a, KEY)
        p = await probe(b, 5000)
        dcid, scid = bytes(range(8)), bytes(range(8, 16))
        v2_initial = bytes([0xD0]) + (0x6B3343CF).to_bytes(4, "big") + b"\x08" + dcid + b"\x08" + scid + bytes(1200)
        p.send(v2_initial, node.local_address)
        (answer,) = await _answers(p, 0)
        buf = Buffer(data=answer)
        header = pull_quic_header(buf, host_cid_length=8)
        assert header.packet_type == QuicPacketType.VERSION_NEGOTIATION
        assert header.destination_cid == scid and header.source_cid == dcid
        assert header.supported_versions == [0x00000001]
        assert node.connection_count == 0
        await node.close()

    sim.run(main())
