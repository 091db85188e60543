"""A returning client on the simulator: a new node with the key and session tickets of one that
went to a server behind a NAT and then exited.

First, homes on one private subnet, the first process gone direct: the server still has a
live-looking direct path to the old process's address for that node id.  The new node's
connection arrives through the relay, resuming the session; until its handshake completes it
must be answered through the relay, not into the old process's dead address (there its
handshake and its answer waited ~3 s for the path to expire).

Then homes on distinct subnets (the WAN rig's): the request goes as 0-RTT data and its answer
takes one round trip through the relay.  (What made the rig's returning client ~30 ms slower
after commit eb16ee6 was CPU, not the protocol: a warm-up at every bind, tests/endpoint/
test_warm_up.py; the simulator charges no CPU.)
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from asgi_p2p import NetworkConfig, Node, SecretKey
from asgi_p2p.http import P2PTransport
from asgi_p2p.http.types import Receive, Scope, Send
from asgi_p2p.sim import Simulation
from asgi_p2p.sim.apps import SimServer
from asgi_p2p.sim.nat import Filtering, Mapping, NatConfig
from asgi_p2p.sim.network import Host

from .test_roaming import _echo

LATENCY = 0.02
EIM = NatConfig(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, port_assignment="random")


async def _client(key: SecretKey, phone: Host, relay: str, server: SimServer) -> tuple[Node, httpx.AsyncClient]:
    """A node with ``key`` in ``phone`` once its relay is connected, and an httpx client to ``server``."""
    node = await Node.bind(key, host="0.0.0.0", port=0, config=NetworkConfig(), network=phone, relay_url=relay)
    assert node.relay is not None
    await node.relay.wait_connected(5)
    transport = P2PTransport(node, addrs=[server.addr])
    return node, httpx.AsyncClient(transport=transport, base_url=f"https://{server.node_id}")


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_returning_client_gets_its_first_response_promptly(sim: Simulation) -> None:
    relay = await sim.relay("relay")
    sim.host("srv", nat=EIM)
    phone = sim.host("phone", nat=EIM)
    server = await sim.serve(_echo, "srv", relay_url=relay)
    key = SecretKey.from_seed(f"returning {sim.seed}")
    loop = asyncio.get_running_loop()

    first, c1 = await _client(key, phone, relay, server)
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
    second, c2 = await _client(key, phone, relay, server)
    assert second.import_session_tickets(tickets) >= 1
    accepted = server.node.early_data_accepted
    start = loop.time()
    r = await asyncio.wait_for(c2.get("/again"), 10)
    took = loop.time() - start
    assert r.status_code == 200 and r.text == "GET /again"
    # resumed with early data accepted (homes on one private subnet: the dial races the
    # on-link address against the relay, so the request itself waits for a handshake)
    assert server.node.early_data_accepted == accepted + 1
    assert took < 0.5, took  # a few relayed round trips (~0.2 s), not a dead path's timeout (~3 s)
    await c2.aclose()
    await second.close()


async def _early(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers ``METHOD path early-data`` (the header the server adds to a 0-RTT request)."""
    if scope["type"] != "http":
        return
    early = dict(scope["headers"]).get(b"early-data", b"-").decode()
    body = f"{scope['method']} {scope['path']} {early}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_returning_client_in_another_home_gets_its_early_answer_in_one_relayed_round_trip(
    sim: Simulation,
) -> None:
    # the WAN rig's topology: two homes on distinct private subnets (no on-link address to
    # race, so the request goes as 0-RTT data through the relay and to the server's public
    # address, which its NAT drops: the client's new port was never punched)
    relay = await sim.relay("relay")
    sim.host("srv", "10.1.0.2", nat=EIM)
    phone = sim.host("phone", "10.2.0.2", nat=EIM)
    server = await sim.serve(_early, "srv", relay_url=relay)
    key = SecretKey.from_seed(f"returning home {sim.seed}")
    loop = asyncio.get_running_loop()

    first, c1 = await _client(key, phone, relay, server)
    r = await asyncio.wait_for(c1.get("/first"), 5)
    assert r.text == "GET /first -"
    tickets = first.export_session_tickets()
    await c1.aclose()
    await first.close(timeout=0.0)
    second, c2 = await _client(key, phone, relay, server)
    assert second.import_session_tickets(tickets) >= 1
    start = loop.time()
    r = await asyncio.wait_for(c2.get("/again"), 5)
    took = loop.time() - start
    assert r.text == "GET /again 1"  # served from the 0-RTT data
    # a request on the same, established connection through the relay: one round trip
    start = loop.time()
    r = await asyncio.wait_for(c2.get("/then"), 5)
    round_trip = loop.time() - start
    assert r.text == "GET /then -"
    assert [c.path.kind for c in second.connections if c.remote_node_id == server.node_id] == ["relay"]
    # the early answer costs that one round trip, not a handshake's more (~80 ms each here)
    assert took <= round_trip + 0.005, (took, round_trip)
    await c2.aclose()
    await second.close()
