"""The paths layer with the real relay (server and client) on the simulator, behind NATs.

Two nodes behind port-restricted NATs that only know each other's node id and
relay URL: the first request goes through the relay at once, CALL_ME_MAYBE
through the relay makes both sides punch, and the connection moves to the
direct path without a hiccup; when that path is cut it returns to the relay.
"""

from __future__ import annotations

import asyncio
import random

from asgi_p2p import Endpoint, NetworkConfig, Node, NodeAddr, SecretKey
from asgi_p2p.endpoint.connection import PeerConnection
from asgi_p2p.relay.server import RelayServer
from asgi_p2p.sim import Host, Simulation


async def _bind(name: str, host: Host, relay_url: str) -> Endpoint:
    return await Node.bind(
        SecretKey.from_seed(name),
        host="0.0.0.0",
        port=4433,
        config=NetworkConfig(),
        network=host,
        rng=random.Random(name),
        relay_url=relay_url,
    )


def _peer_conn(ep: Endpoint, other: Endpoint) -> PeerConnection:
    (conn,) = [c for c in ep.connections if c.remote_node_id == other.node_id]
    return conn


async def _until_kind(conn: PeerConnection, kind: str, timeout: float) -> None:
    events = conn.path_events()
    if conn.path.kind == kind:
        return

    async def watch() -> None:
        async for event in events:
            if event.path.kind == kind:
                return

    await asyncio.wait_for(watch(), timeout)


def test_relay_first_then_hole_punched_direct_path_behind_nats() -> None:
    sim = Simulation(seed=11, mtu=1500, latency=0.02, loss=0.0)
    with sim:
        relay_host = sim.host("relay")
        a = sim.host("alice", nat="port-restricted-cone")
        b = sim.host("bob", nat="port-restricted-cone")

        async def main() -> None:
            relay = await RelayServer.bind(SecretKey.from_seed("relay"), host="0.0.0.0", port=3478, network=relay_host)
            url = str(relay.url)
            ea, eb = await _bind("alice", a, url), await _bind("bob", b, url)
            assert ea.relay is not None and eb.relay is not None
            await ea.relay.wait_connected(10)
            await eb.relay.wait_connected(10)
            addr = ea.node_addr()
            assert addr.relay_url == url
            assert ea.relay.observed_address in addr.direct_addresses  # the NAT's public mapping
            # bob knows only alice's id and relay: no direct address works through her NAT anyway
            conn = await eb.connect(NodeAddr(ea.node_id, relay_url=url))
            inc = await ea.listen().accept()
            await conn.send(b"through the relay")
            assert await inc.recv() == b"through the relay"
            qb = _peer_conn(eb, ea)
            assert qb.path.kind == "relay"
            await _until_kind(qb, "direct", timeout=10)
            qa = _peer_conn(ea, eb)
            await _until_kind(qa, "direct", timeout=10)
            assert qb.path.addr is not None and qb.path.addr[0] == a.public_address
            payload = b"z" * 200_000
            await conn.send(payload)
            assert await inc.recv() == payload
            # the direct path dies (the NATs can still reach the relay): back to the relay
            sim.partition(a.nat, b.nat)  # type: ignore[arg-type]
            await _until_kind(qb, "relay", timeout=30)
            await conn.send(b"after the cut")
            assert await asyncio.wait_for(inc.recv(), 30) == b"after the cut"
            assert qb.is_connected
            await eb.close()
            await ea.close()
            await relay.close()

        sim.run(main(), time_limit=300)
