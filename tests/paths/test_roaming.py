"""A client that moves, and one key used from two places, on the simulator (issue 12's roaming bug).

The server keeps one set of paths per node id.  A client whose external address changes
(a phone switching networks, a NAT rebinding) and that dials again while its old
connection is still live on the server must get its new connection's packets at its new
address at once: the handshake proved that address, so it becomes the peer's current
path (QUIC connection migration, Tailscale's disco), and the old address stays a
candidate until it fails.  Two nodes with the same key on two hosts both keep working:
each connection's packets go to the proven path its own packets come from.

Every wait is bounded in virtual time (``asyncio.wait_for``), so a request that would
hang until a path times out fails the test instead.
"""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from asgi_p2p import NetworkConfig, Node, SecretKey
from asgi_p2p.http import P2PTransport
from asgi_p2p.http.types import Receive, Scope, Send
from asgi_p2p.sim import Host, Simulation
from asgi_p2p.sim.nat import Filtering, Mapping, NatConfig, NatTable

#: one-way latency of the public links (RTT about 4 x this between a client and the server)
LATENCY = 0.02
#: a request after a move must be answered within this many virtual seconds: a handful of
#: round trips and one handshake, far below any path or idle timeout (15 s and up)
PROMPT = 1.5
#: a NAT that picks a new random external port for every new mapping: rebinding moves the client
ROAMING_NAT = NatConfig(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, port_assignment="random")


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = f"{scope['method']} {scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def _get(client: httpx.AsyncClient, path: str) -> float:
    """GET ``path``; returns how long it took (virtual seconds), failing if over :data:`PROMPT`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    r = await asyncio.wait_for(client.get(path), PROMPT)
    assert r.status_code == 200 and r.text == f"GET {path}"
    return loop.time() - start


def _rebind(sim: Simulation, host_name: str) -> None:
    """The host's NAT forgets every mapping at once: its next packets leave from new external ports."""
    node = sim.node(host_name)
    assert isinstance(node, Host) and node.nat is not None
    box = node.nat
    box.table = NatTable(box.config, box.public_address, random.Random(f"{sim.seed}:rebind:{host_name}"))


@pytest.mark.sim(loss=0.02, latency=LATENCY)
async def test_a_client_that_moves_and_redials_gets_answers_at_its_new_address(sim: Simulation) -> None:
    sim.host("phone", nat=ROAMING_NAT)
    server = await sim.serve(_echo, "web")
    key = SecretKey.from_seed(f"phone {sim.seed}")
    before = await sim.client("phone", server, secret_key=key, port=5000)
    assert await _get(before, "/before") < PROMPT
    server_node = server.node
    (old,) = [c for c in server_node.connections if c.remote_node_id == key.node_id and not c.closed]
    old_addr = old.path.addr

    _rebind(sim, "phone")  # the phone's external address changes; its old connection is still live
    after = await sim.client("phone", server, secret_key=key, port=5001)
    took = await _get(after, "/after")
    assert not old.closed  # the server still holds the old connection (its idle timer has not run)
    conns = [c for c in server_node.connections if c.remote_node_id == key.node_id and not c.closed]
    new = [c for c in conns if c is not old]
    assert new and new[0].path.kind == "direct" and new[0].path.addr != old_addr
    # more requests on the new connection, and the old client (which also moved) still works
    for i in range(3):
        assert await _get(after, f"/after/{i}") < PROMPT
    assert await _get(before, "/before/again") < PROMPT
    print(f"\nseed {sim.seed}: first request after the move answered in {took * 1000:.0f} ms")


@pytest.mark.sim(loss=0.02, latency=LATENCY)
async def test_one_key_used_from_two_hosts_at_once_both_keep_working(sim: Simulation) -> None:
    """Defined behaviour: each accepted connection's packets go to the proven path its own
    packets come from, so two nodes with one key on two hosts are both served; the node
    id's current path (for anything not tied to a connection) is the newest handshake's."""
    sim.host("home", nat=ROAMING_NAT)
    sim.host("office", nat=ROAMING_NAT)
    server = await sim.serve(_echo, "web")
    key = SecretKey.from_seed(f"shared key {sim.seed}")
    home = await sim.client("home", server, secret_key=key)
    assert await _get(home, "/home/0") < PROMPT
    office = await sim.client("office", server, secret_key=key)
    assert await _get(office, "/office/0") < PROMPT
    peer = server.node.router.peer_paths(key.node_id)
    assert peer is not None
    office_addr = peer.prober.current_path.addr  # the newest handshake's address
    assert office_addr is not None and office_addr[0] == sim.node("office-nat").address  # type: ignore[attr-defined]
    for i in range(1, 6):  # interleaved, and at once
        results = await asyncio.gather(_get(home, f"/home/{i}"), _get(office, f"/office/{i}"))
        assert max(results) < PROMPT
    conns = [c for c in server.node.connections if c.remote_node_id == key.node_id and not c.closed]
    assert sorted(c.path.addr[0] for c in conns if c.path.addr is not None) == sorted(
        [sim.node("home-nat").address, office_addr[0]]  # type: ignore[attr-defined]
    )


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_client_that_moves_and_resumes_with_0rtt_gets_its_early_answer_at_its_new_address(
    sim: Simulation,
) -> None:
    """The redial resumes (a session ticket, the GET as 0-RTT data): the server answers the
    early request before the handshake completes, and that answer goes to the new address
    too (the connection joins the peer's paths only once its handshake proved that
    address), so it takes one round trip, not a lost answer and a probe timeout."""
    phone = sim.host("phone", nat=ROAMING_NAT)
    server = await sim.serve(_echo, "web")
    key = SecretKey.from_seed(f"phone 0rtt {sim.seed}")
    config = NetworkConfig(keepalive_interval=0)

    async def client(port: int) -> tuple[Node, httpx.AsyncClient]:
        node = await Node.bind(key, host="0.0.0.0", port=port, config=config, network=phone)
        transport = P2PTransport(node, addrs=[server.addr])
        return node, httpx.AsyncClient(transport=transport, base_url=f"https://{server.node_id}")

    first_node, before = await client(5000)
    assert await _get(before, "/before") < PROMPT
    pooled = await _get(before, "/pooled")  # one round trip
    tickets = first_node.export_session_tickets()

    _rebind(sim, "phone")  # the old connection stays live on the server
    second_node, after = await client(5001)
    assert second_node.import_session_tickets(tickets) == 1
    accepted = server.node.early_data_accepted
    took = await _get(after, "/after")
    assert server.node.early_data_accepted == accepted + 1  # it went as early data
    assert took < 1.5 * pooled, (took, pooled)  # one round trip, as a pooled request
    for c, n in ((after, second_node), (before, first_node)):
        await c.aclose()
        await n.close()
