"""A returning client on the simulator: a new node with the key and session tickets of one that
went direct to a server behind a NAT and then exited.

The server still has a live-looking direct path to the old process's address for that node
id.  The new node's connection arrives through the relay with 0-RTT; until its handshake
completes it must be answered through the relay, not into the old process's dead address
(there its handshake and its early answer waited ~3 s for the path to expire).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from asgi_p2p import NetworkConfig, Node, SecretKey
from asgi_p2p.http import P2PTransport
from asgi_p2p.sim import Simulation
from asgi_p2p.sim.nat import Filtering, Mapping, NatConfig

from .test_roaming import _echo

LATENCY = 0.02
EIM = NatConfig(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, port_assignment="random")


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_returning_client_gets_its_first_response_promptly(sim: Simulation) -> None:
    relay = await sim.relay("relay")
    sim.host("srv", nat=EIM)
    phone = sim.host("phone", nat=EIM)
    server = await sim.serve(_echo, "srv", relay_url=relay)
    key = SecretKey.from_seed(f"returning {sim.seed}")
    loop = asyncio.get_running_loop()

    async def client() -> tuple[Node, httpx.AsyncClient]:
        node = await Node.bind(key, host="0.0.0.0", port=0, config=NetworkConfig(), network=phone, relay_url=relay)
        assert node.relay is not None
        await node.relay.wait_connected(5)
        transport = P2PTransport(node, addrs=[server.addr])
        return node, httpx.AsyncClient(transport=transport, base_url=f"https://{server.node_id}")

    first, c1 = await client()
    for i in range(30):  # until it goes direct (the server then has a direct path to this node)
        r = await asyncio.wait_for(c1.get(f"/a{i}"), 5)
        assert r.status_code == 200
        conns = [c for c in first.connections if c.remote_node_id == server.node_id and not c.closed]
        if conns and all(c.path.kind == "direct" for c in conns):
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("the first client never went direct")
    peer = server.node.router.peer_paths(key.node_id)
    assert peer is not None and peer.prober.current_path.kind == "direct"
    tickets = first.export_session_tickets()
    await c1.aclose()
    await first.close(timeout=0.0)
    second, c2 = await client()
    assert second.import_session_tickets(tickets) >= 1
    accepted = server.node.early_data_accepted
    start = loop.time()
    r = await asyncio.wait_for(c2.get("/again"), 10)
    took = loop.time() - start
    assert r.status_code == 200 and r.text == "GET /again"
    assert server.node.early_data_accepted == accepted + 1  # it went as early data
    assert took < 0.5, took  # a few relayed round trips (~0.2 s), not a dead path's timeout (~3 s)
    await c2.aclose()
    await second.close()
