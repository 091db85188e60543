"""Path datagram size probing (RFC 8899 "DPLPMTUD-lite") wired into the endpoint.

Each side probes its own sending direction with padded disco PINGs on the
connection's direct path and grows its QUIC datagrams to the largest probed
size the path carries; repeated loss of large packets falls back to the base.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from asgi_p2p import Endpoint, MessageConnection, NetworkConfig, Node, SecretKey
from asgi_p2p.endpoint.connection import PeerConnection
from asgi_p2p.paths.disco import Pong, seal
from asgi_p2p.sim import Host, Simulation
from asgi_p2p.sim.network import HEADER_OVERHEAD


async def _bind(name: str, host: Host, config: NetworkConfig | None = None) -> Endpoint:
    return await Node.bind(
        SecretKey.from_seed(name),
        host="0.0.0.0",
        port=4433,
        config=config or NetworkConfig(),
        network=host,
        rng=random.Random(name),
    )


def _quic(ep: Endpoint) -> PeerConnection:
    (conn,) = ep.connections
    return conn


async def _open(ea: Endpoint, eb: Endpoint) -> tuple[MessageConnection, MessageConnection]:
    """bob's message connection to alice, and alice's side of it, after one round trip."""
    conn = await eb.connect(ea.node_addr())
    await conn.send(b"hello")
    inc = await ea.listen().accept()
    assert await inc.recv() == b"hello"
    return conn, inc


async def _bulk(conn: MessageConnection, inc: MessageConnection, *, chunks: int = 20, size: int = 100_000) -> int:
    """``chunks`` messages of ``size`` bytes over ``conn``; returns the bytes ``inc`` got."""
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]

    async def sender() -> None:
        for _ in range(chunks):
            await conn.send(payload)

    task = asyncio.create_task(sender())
    got = 0
    for _ in range(chunks):
        msg = await inc.recv()
        assert msg == payload
        got += len(msg)
    await task
    return got


@pytest.mark.parametrize(("mtu", "expected"), [(1500, 1452), (5000 + HEADER_OVERHEAD, 4096), (65535, 16384)])
def test_connection_grows_to_the_largest_probed_size_the_path_carries(sim: Simulation, mtu: int, expected: int) -> None:
    a, b = sim.host("alice"), sim.host("bob")
    sim.link(a, b, latency=0.01, loss=0.0, mtu=mtu)

    async def main() -> tuple[int, int, int]:
        ea, eb = await _bind("alice", a), await _bind("bob", b)
        conn, inc = await _open(ea, eb)
        assert _quic(eb).datagram_size == 1200
        await asyncio.sleep(10)
        assert _quic(eb).datagram_size == 1200  # a short exchange does not pay for size probes
        await _bulk(conn, inc, chunks=2)  # bulk data starts the search (both sides send enough)
        await asyncio.sleep(10)  # virtual time: the size searches finish
        sizes = (_quic(eb).datagram_size, _quic(ea).datagram_size)
        got = await _bulk(conn, inc, chunks=5)
        await eb.close()
        await ea.close()
        return (*sizes, got)

    bob_size, alice_size, got = sim.run(main())
    assert bob_size == expected and alice_size == expected  # each side probed its own direction
    assert got == 500_000
    drops = sim.stats()["drops"]
    assert ("mtu" in drops) == (expected < 16384)  # larger probes were dropped by the link


def test_without_probing_the_size_stays_at_the_base(sim: Simulation) -> None:
    a, b = sim.host("alice"), sim.host("bob")
    sim.link(a, b, latency=0.01, loss=0.0, mtu=65535)

    async def main() -> int:
        config = NetworkConfig(max_probe_datagram_size=0)
        ea, eb = await _bind("alice", a, config), await _bind("bob", b, config)
        await _bulk(*await _open(ea, eb), chunks=2)
        await asyncio.sleep(5)
        return _quic(eb).datagram_size

    assert sim.run(main()) == 1200


def test_path_that_shrinks_mid_transfer_recovers(sim: Simulation) -> None:
    """Black hole: the MTU drops under a 16 KB flight; the transfer completes at a size that fits."""
    a, b = sim.host("alice"), sim.host("bob")
    link = sim.link(a, b, latency=0.01, loss=0.0, mtu=65535)

    async def main() -> tuple[int, int, int]:
        ea, eb = await _bind("alice", a), await _bind("bob", b)
        conn = await eb.connect(ea.node_addr())
        await conn.send(b"hello")
        inc = await ea.listen().accept()
        assert await inc.recv() == b"hello"
        await _bulk(conn, inc, chunks=2)
        await asyncio.sleep(10)
        before = _quic(eb).datagram_size
        payload = b"p" * 200_000

        async def sender() -> None:
            for _ in range(20):
                await conn.send(payload)

        task = asyncio.create_task(sender())
        got = 0
        for i in range(20):
            if i == 3:
                link.configure(mtu=1500)  # the path shrinks under the flight
            msg = await inc.recv()
            assert msg == payload
            got += len(msg)
        await task
        return before, _quic(eb).datagram_size, got

    before, after, got = sim.run(main(), time_limit=120)
    assert before == 16384
    assert got == 20 * 200_000  # the connection survived
    assert after == 1452  # black hole -> base size, then the search found what fits
    assert sim.stats()["drops"]["mtu"] > 0


def test_forged_and_unsolicited_pongs_change_nothing(sim: Simulation) -> None:
    a, b, m = sim.host("alice"), sim.host("bob"), sim.host("mallory")
    sim.link(a, b, latency=0.01, loss=0.0, mtu=1500)
    sim.link(m, a, latency=0.01, loss=0.0, mtu=65535)
    mallory = SecretKey.from_seed("mallory")

    async def main() -> tuple[int, int, int]:
        ea, eb = await _bind("alice", a), await _bind("bob", b)
        conn = await eb.connect(ea.node_addr())
        await conn.send(b"hello")
        inc = await ea.listen().accept()
        assert await inc.recv() == b"hello"
        await _bulk(conn, inc, chunks=2)
        sock = await m.bind("0.0.0.0", 999, lambda data, addr: None)
        peer = ea.peer_paths(eb.node_id)
        assert peer is not None
        now = peer.prober.clock_offset + asyncio.get_running_loop().time()
        dropped_before = ea.dropped_disco
        for i in range(200):  # PONGs "from bob" for probes alice never sent, in every size
            tx = random.Random(i).randbytes(12)
            sock.sendto(seal(Pong(tx, ea.local_address, 16384), mallory, ea.node_id, now), ea.local_address)
        # a PONG with bob's claimed identity but Mallory's signature
        forged = bytearray(seal(Pong(bytes(12), ea.local_address, 16384), mallory, ea.node_id, now))
        forged[7:39] = eb.node_id.to_bytes()
        sock.sendto(bytes(forged), ea.local_address)
        await asyncio.sleep(10)
        rejected = sum(peer.prober.rejected.values())
        return _quic(ea).datagram_size, rejected, ea.dropped_disco - dropped_before

    size, rejected, dropped = sim.run(main())
    assert size == 1452  # what the real path carries, not what the forgeries claim
    assert rejected >= 1  # the forgery claiming to be bob reached bob's prober and was refused
    assert dropped == 200  # Mallory has no connection: her packets are dropped before any crypto


async def _grown(conn: PeerConnection) -> None:
    """Return once the connection builds datagrams larger than 1200 bytes."""
    events = conn.path_events()  # subscribed from here on
    if conn.datagram_size > 1200:
        return
    async for event in events:
        if event.datagram_size > 1200:
            return


def test_datagram_size_grows_on_real_udp_loopback() -> None:
    async def main() -> tuple[int, int]:
        ea = await Node.bind(SecretKey.from_seed("alice"), config=NetworkConfig())
        eb = await Node.bind(SecretKey.from_seed("bob"), config=NetworkConfig())
        try:
            conn = await eb.connect(ea.node_addr())
            await conn.send(b"x" * 100_000)
            inc = await ea.listen().accept()
            assert len(await inc.recv()) == 100_000
            qa, qb = _quic(ea), _quic(eb)
            await asyncio.wait_for(_grown(qb), 10)  # bob sent bulk data: his direction grows
            await conn.send(b"y" * 500_000)
            assert await inc.recv() == b"y" * 500_000
            await inc.send(b"z" * 300_000)  # now alice sends bulk data too
            assert await conn.recv() == b"z" * 300_000
            await asyncio.wait_for(_grown(qa), 10)
            return qa.datagram_size, qb.datagram_size
        finally:
            await eb.close()
            await ea.close()

    sa, sb = asyncio.run(main())
    assert sa > 1200 and sb > 1200


def test_sim_links_drop_datagrams_above_their_mtu() -> None:
    sim = Simulation(seed=3, mtu=1500, latency=0.01, loss=0.0)
    with sim:
        a, b = sim.host("alice"), sim.host("bob")
        small = sim.link(a, b)
        assert small.mtu == 1500  # the simulation's default
        got: list[int] = []

        async def main() -> None:
            sa = await a.bind("0.0.0.0", 1, lambda data, addr: None)
            await b.bind("0.0.0.0", 2, lambda data, addr: got.append(len(data)))
            for size in (1200, 1472, 1473, 9000):
                sa.sendto(bytes(size), (b.address, 2))
            await asyncio.sleep(1)
            small.configure(mtu=65535)
            sa.sendto(bytes(9000), (b.address, 2))
            await asyncio.sleep(1)

        sim.run(main())
    assert got == [1200, 1472, 9000]  # 1472 + 28 header bytes = 1500 fits; 1473 does not
    assert sim.stats()["drops"] == {"mtu": 2}
    with pytest.raises(ValueError, match="mtu"):
        small.configure(mtu=10)
