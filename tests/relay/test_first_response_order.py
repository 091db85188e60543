"""A fresh client's first Initial leaves before its hole-punching PINGs, and its first response is
read before the hole punching starts (issue 11 item 2).

On the WAN rig a fresh client's first response arrives through the relay with the server's
HANDSHAKE_DONE, which confirms the connection and starts the hole punching (the client's
CALL_ME_MAYBE through the relay, PINGs to the server's addresses), and the server's own
CALL_ME_MAYBE arrives with it.  That work (signatures checked and made, packets sent, about
1 ms of a fresh process's CPU there) now runs in the next loop pass, after the response's
reader: on the simulator (the rig's topology, exact virtual time) the caller holds its
response before the client's CALL_ME_MAYBE leaves, and the punch still makes the path direct.
Likewise the dial's PINGs that open our NAT to the peer's addresses go right behind the
Initial (a first contact through the relay here), not before it.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest

from asgi_p2p import Node, SecretKey
from asgi_p2p.http import H3_ALPN, P2PTransport
from asgi_p2p.http.types import Receive, Scope, Send
from asgi_p2p.paths.disco import is_disco
from asgi_p2p.relay.client import RelayClient
from asgi_p2p.relay.server import RelayServer
from asgi_p2p.sim import Simulation
from asgi_p2p.sim.nat import Filtering, Mapping, NatConfig

LATENCY = 0.02
EIM = NatConfig(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, port_assignment="random")


async def _hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"hi"})


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_fresh_clients_first_response_is_read_before_its_hole_punching_starts(sim: Simulation) -> None:
    relay = await RelayServer.bind(SecretKey.from_seed("relay"), host="0.0.0.0", port=3478, network=sim.host("relay"))
    server = await sim.serve(_hello, sim.host("srv", "10.1.0.2", nat=EIM), relay_url=str(relay.url))
    assert server.node.relay is not None
    await server.node.relay.wait_connected(5)
    node = await Node.bind(
        SecretKey.from_seed("fresh"),
        host="0.0.0.0",
        network=sim.host("phone", "10.2.0.2", nat=EIM),
        relay_url=str(relay.url),
        rng=random.Random(3),
    )
    link = node.relay
    assert isinstance(link, RelayClient)
    try:
        async with httpx.AsyncClient(
            transport=P2PTransport(node, addrs=[server.addr]), base_url=f"https://{server.node_id}"
        ) as http:
            r = await http.get("/")  # (no wait_for: its own task would resume us a loop pass later)
            assert r.text == "hi"
            (conn,) = [c for c in node.connections if c.remote_node_id == server.node_id and c.alpn == H3_ALPN]
            # the response came with HANDSHAKE_DONE: confirmed, the punching due, not started
            assert conn.is_confirmed and conn.path.kind == "relay"
            signals = link.stats.signals_sent
            await asyncio.sleep(0)
            assert link.stats.signals_sent == signals + 1  # our CALL_ME_MAYBE, in the next loop pass
            for _ in range(100):
                if conn.path.kind == "direct":
                    break
                await asyncio.sleep(0.05)
            assert conn.path.kind == "direct"  # and the punch went through
            assert (await http.get("/")).text == "hi"
    finally:
        await node.close()
        await server.close()
        await relay.close()


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_fresh_dials_initial_leaves_before_its_pings(sim: Simulation, monkeypatch: pytest.MonkeyPatch) -> None:
    relay = await RelayServer.bind(SecretKey.from_seed("relay"), host="0.0.0.0", port=3478, network=sim.host("relay"))
    server = await sim.serve(_hello, sim.host("srv", "10.1.0.2", nat=EIM), relay_url=str(relay.url))
    assert server.node.relay is not None
    await server.node.relay.wait_connected(5)
    assert server.addr.direct_addresses  # the dial has addresses to ping
    node = await Node.bind(
        SecretKey.from_seed("fresh"),
        host="0.0.0.0",
        network=sim.host("phone", "10.2.0.2", nat=EIM),
        relay_url=str(relay.url),
        rng=random.Random(3),
    )
    link = node.relay
    assert isinstance(link, RelayClient)
    sent: list[str] = []
    send_packet, send_direct = link.send_packet, node.router.send_direct

    def packet(dest: Any, data: bytes) -> None:
        sent.append("first contact" if not link.can_send else "relayed")
        send_packet(dest, data)

    def direct(data: bytes, addr: Any, ttl: int | None = None) -> None:
        sent.append("ping" if is_disco(data) else "direct")
        send_direct(data, addr, ttl)

    monkeypatch.setattr(link, "send_packet", packet)
    monkeypatch.setattr(node.router, "send_direct", direct)
    try:
        async with httpx.AsyncClient(
            transport=P2PTransport(node, addrs=[server.addr]), base_url=f"https://{server.node_id}"
        ) as http:
            assert (await http.get("/")).text == "hi"
        assert link.stats.first_contacts_sent == 1
        assert sent.index("first contact") < sent.index("ping"), sent
    finally:
        await node.close()
        await server.close()
        await relay.close()
