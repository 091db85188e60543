"""Relayed end-to-end packets larger than 1200 bytes on the relay's UDP data plane (issue 11).

On the simulator (1500-byte MTU, 20 ms links), alice and bob reach each other only through
the relay.  A connection through the relay searches larger datagram sizes with size probes
sent the way its packets go (PINGs padded to the size, as relayed packets), so a size the far
side's relay connection does not carry is a lost (or refused) probe, never lost packets of the
connection; over DATAGRAM frames (a relay with the plane off) relayed packets keep 1200 bytes.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from asgi_p2p import NetworkConfig, Node, NodeAddr, SecretKey
from asgi_p2p.endpoint.connection import PeerConnection
from asgi_p2p.net.base import Address
from asgi_p2p.relay.client import RelayClient
from asgi_p2p.relay.plane import PLANE_OVERHEAD, is_plane
from asgi_p2p.relay.server import RelayServer
from asgi_p2p.sim import Simulation

BLOB = random.Random(11).randbytes(2 << 20)


def _relay_client(node: Node) -> RelayClient:
    assert isinstance(node.relay, RelayClient)
    return node.relay


def _count_plane_sizes(node: Node) -> list[int]:
    """The packet sizes of the plane datagrams ``node`` sends from now on."""
    sizes: list[int] = []
    send = node.router.sendto

    def sendto(data: bytes, addr: Address) -> None:
        if is_plane(data):
            sizes.append(len(data) - PLANE_OVERHEAD)
        send(data, addr)

    node.router.sendto = sendto  # type: ignore[method-assign]
    return sizes


async def _download(
    sim: Simulation, *, plane: bool, bob_mtu: int | None = None
) -> tuple[PeerConnection, list[int], float]:
    """bob dials alice through the relay and reads 2 MiB from her: (alice's connection, the
    packet sizes of her plane datagrams, virtual seconds the download took)."""
    relay_host, alice_host, bob_host = sim.host("relay"), sim.host("alice"), sim.host("bob")
    if bob_mtu is not None:
        sim.link(bob_host, relay_host, mtu=bob_mtu)
    sim.partition("alice", "bob")  # only the relay carries it
    relay = await RelayServer.bind(
        SecretKey.from_seed("relay"), host="0.0.0.0", port=3478, network=relay_host, plane=plane
    )
    nodes: list[Node] = []
    try:
        for name, host in (("alice", alice_host), ("bob", bob_host)):
            nodes.append(
                await Node.bind(
                    SecretKey.from_seed(name),
                    host="0.0.0.0",
                    port=4433,
                    config=NetworkConfig(),
                    network=host,
                    rng=random.Random(name),
                    relay_url=str(relay.url),
                )
            )
        alice, bob = nodes
        for node in nodes:
            await _relay_client(node).wait_connected(10)
        if plane:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not all(_relay_client(n).on_plane for n in nodes):
                assert loop.time() < deadline
                await asyncio.sleep(0.05)
        sizes = _count_plane_sizes(alice)
        conn = await bob.connect(NodeAddr(alice.node_id, relay_url=str(relay.url)))
        await conn.send(b"GET")
        peer = await asyncio.wait_for(alice.listen().accept(), 10)
        assert await asyncio.wait_for(peer.recv(), 10) == b"GET"
        sender = peer.peer_connection
        assert sender.path.kind == "relay"
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def serve() -> None:
            for i in range(0, len(BLOB), 65536):
                await peer.send(BLOB[i : i + 65536])

        sending = asyncio.create_task(serve())
        got = bytearray()
        while len(got) < len(BLOB):
            got += await asyncio.wait_for(conn.recv(), 20)
        took = loop.time() - start
        await sending
        assert got == BLOB
        return sender, sizes, took
    finally:
        for node in nodes:
            await node.close(timeout=0.5)
        await relay.close(timeout=0.5)


def _run(**kwargs: Any) -> tuple[PeerConnection, list[int], float]:
    sim = Simulation(seed=5, mtu=1500, latency=0.02)
    with sim:
        return sim.run(_download(sim, **kwargs), time_limit=300)  # type: ignore[no-any-return]


def test_a_relayed_connection_on_the_plane_grows_its_packets_and_bulk_uses_them() -> None:
    conn, sizes, took = _run(plane=True)
    # the relay connections carry 1452-byte datagrams (1500-byte MTU): 1386-byte relayed packets
    # (a SEND frame's payload), searched through the relay and used end to end
    assert conn.datagram_size > 1300
    big = [s for s in sizes if s > 1200]
    # most of the bulk (the first half second or so goes at 1200 while the relay's legs grow;
    # each 64 KiB write ends in a shorter packet)
    assert sum(big) >= 0.5 * len(BLOB), (len(big), len(sizes))
    print(f"datagram size {conn.datagram_size}, {len(big)} of {len(sizes)} packets larger, {took:.2f}s")


def test_a_far_leg_that_carries_only_1200_byte_packets_keeps_the_connection_at_1200() -> None:
    """bob's link to the relay carries 1264-byte datagrams (1200-byte relayed packets): alice's larger
    size probes are refused by the relay, and the download goes on at 1200 bytes without a stall."""
    conn, sizes, took = _run(plane=True, bob_mtu=1264 + 28)
    assert conn.datagram_size == 1200
    over = [s for s in sizes if s > 1200]
    # only probes were ever larger (a few per search, searches backing off), never the bulk
    assert len(over) <= 12, over
    _, _, baseline = _run(plane=False)
    assert took <= 1.5 * baseline + 0.5, (took, baseline)


def test_relayed_packets_in_datagram_frames_keep_1200_bytes() -> None:
    """A relay with the plane off: relayed connections keep today's size (no probes through it)."""
    conn, sizes, _ = _run(plane=False)
    assert conn.datagram_size == 1200 and sizes == []
