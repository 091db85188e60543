"""sim.serve / sim.client / sim.relay: apps on simulated hosts, written as async tests.

These tests are themselves ``async def`` tests using the ``sim`` fixture (the repository
runs pytest-asyncio in auto mode): they check the plugin runs them on the simulation.
"""

from __future__ import annotations

import asyncio
import copy

import httpx
import pytest

from asgi_p2p import Node, NodeAddr, SecretKey
from asgi_p2p.http import H3_ALPN, H3Server, P2PTransport
from asgi_p2p.http.types import Receive, Scope, Send
from asgi_p2p.relay.server import RelayServer
from asgi_p2p.sim import Host, SimServer, Simulation, SimulationError


class RecordingApp:
    """Answers ``<method> <path> host=<host>``; records lifespan events in ``log``."""

    def __init__(self, log: list[str] | None = None, tag: str = "app") -> None:
        self.log = log if log is not None else []
        self.tag = tag

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.log.append(f"{self.tag} startup")
                    await send({"type": "lifespan.startup.complete"})
                else:
                    self.log.append(f"{self.tag} shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        host = dict(scope["headers"]).get(b"host", b"").decode()
        body = f"{scope['method']} {scope['path']} host={host}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


@pytest.mark.sim(loss=0.02)
async def test_serve_and_clients_by_server_name_and_node_id(sim: Simulation) -> None:
    assert asyncio.get_running_loop() is sim.loop
    app = RecordingApp()
    server = await sim.serve(app, "web", name="shop")
    assert app.log == ["app startup"]  # lifespan startup ran before serve() returned
    assert isinstance(server, SimServer) and isinstance(server.server, H3Server)
    assert server.addr.node_id == server.node_id == SecretKey.from_seed("web:443").node_id
    web = sim.node("web")
    assert isinstance(web, Host) and server.addr.direct_addresses == ((web.address, 443),)
    by_server = await sim.client("alice", server)
    by_name = await sim.client("bob", "shop")
    by_id = await sim.client("carol", str(server.node_id))
    assert (await by_server.get("/a")).text == f"GET /a host={server.node_id}"
    assert (await by_name.get("/b")).text == "GET /b host=shop"  # the app sees the name
    assert (await by_id.get("/c")).text == f"GET /c host={server.node_id}"
    # any URL goes through the simulated DNS, not only the base URL
    assert (await by_server.get("https://shop/d")).text == "GET /d host=shop"
    with pytest.raises(httpx.ConnectError, match="'nowhere' is not registered in the simulated DNS"):
        await by_server.get("https://nowhere/")
    assert sim.now < 5.0


def test_close_order_clients_then_servers_then_relays(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    app = RecordingApp(events)
    client_close = httpx.AsyncClient.aclose
    relay_close = RelayServer.close

    async def closing_client(self: httpx.AsyncClient) -> None:
        events.append("client closed")
        await client_close(self)

    async def closing_relay(self: RelayServer, *, timeout: float = 2.0) -> None:
        events.append("relay closed")
        await relay_close(self, timeout=timeout)

    monkeypatch.setattr(httpx.AsyncClient, "aclose", closing_client)
    monkeypatch.setattr(RelayServer, "close", closing_relay)
    sim = Simulation(seed=2, loss=0.0)
    clients: list[httpx.AsyncClient] = []

    async def main() -> None:
        url = await sim.relay("relay")  # made first: closed last all the same
        server = await sim.serve(app, "web", relay_url=url)
        clients.append(await sim.client("alice", server))
        clients.append(await sim.client("bob", server, relay_url=url))
        for client in clients:
            assert (await client.get("/")).status_code == 200

    sim.run(main())
    sim.close()
    assert events == ["app startup", "client closed", "client closed", "app shutdown", "relay closed"]
    assert all(client.is_closed for client in clients)
    assert sim.loop.is_closed()


async def test_nat_peers_reach_each_other_through_a_relay(sim: Simulation) -> None:
    # symmetric NATs on both sides: no hole punching works, only the relay carries the traffic
    sim.host("server-host", nat="symmetric")
    sim.host("client-host", nat="symmetric")
    url = await sim.relay("relay")
    relay_host = sim.node("relay")
    assert isinstance(relay_host, Host)
    assert url.endswith(f"@{relay_host.address}:3478")
    server = await sim.serve(RecordingApp(), "server-host", name="api", relay_url=url)
    client = await sim.client("client-host", "api", relay_url=url)
    for i in range(3):
        response = await client.get(f"/{i}")
        assert response.text == f"GET /{i} host=api"
    assert server.addr.relay_url == url
    (conn,) = [c for c in server.node.connections if c.alpn == H3_ALPN]  # the other one is the relay's
    assert conn.path.kind == "relay"  # symmetric to symmetric: no direct path


async def test_crash_restart_keeps_the_node_id_and_skips_lifespan_shutdown(sim: Simulation) -> None:
    log: list[str] = []
    first = await sim.serve(RecordingApp(log, "first"), "web", name="shop")
    client = await sim.client("alice", "shop", timeout=5.0)
    assert (await client.get("/")).status_code == 200
    sim.crash("web")
    await asyncio.sleep(0)  # the crashed node closes quietly
    assert first.crashed and first.closed
    with pytest.raises(httpx.TransportError):
        await client.get("/while-down")
    with pytest.raises(SimulationError, match="down"):
        await sim.serve(RecordingApp(log, "second"), "web")
    sim.restart("web")
    second = await sim.serve(RecordingApp(log, "second"), "web", name="shop")
    assert second.node_id == first.node_id
    for _ in range(30):  # the client notices the old connection is dead, then dials again
        try:
            response = await client.get("/again")
        except httpx.TransportError:
            continue
        break
    else:
        raise AssertionError("the restarted server never answered")
    assert response.text == "GET /again host=shop"
    await second.close()
    assert log == ["first startup", "second startup", "second shutdown"]  # a crash runs no shutdown


async def test_a_client_on_a_fixed_port_restarts_with_the_same_id_and_fresh_randomness(sim: Simulation) -> None:
    url = await sim.relay("relay")
    server = await sim.serve(RecordingApp(), "web", name="shop", relay_url=url)
    fresh = copy.deepcopy(server.node.rng)
    sim.host("phone", nat="port-restricted-cone")
    first = await sim.client("phone", "shop", port=4433, relay_url=url, wait_for_relay=10.0, timeout=5.0)
    assert (await first.get("/")).status_code == 200
    (before,) = [c for c in server.node.connections if c.alpn == H3_ALPN]
    sim.crash("phone")
    await asyncio.sleep(0)
    sim.restart("phone")
    again = await sim.client("phone", "shop", port=4433, relay_url=url, wait_for_relay=10.0, timeout=5.0)
    assert (await again.get("/")).status_code == 200
    conns = [c for c in server.node.connections if c.alpn == H3_ALPN and c is not before]
    assert conns and all(c.remote_node_id == before.remote_node_id for c in conns)  # same key (port-derived)
    # a new life draws new randomness (a real restarted process does: new connection ids)
    first_life = fresh
    sim.crash("web")
    await asyncio.sleep(0)
    sim.restart("web")
    second = await sim.serve(RecordingApp(), "web", name="shop", relay_url=url)
    assert second.node_id == server.node_id
    assert copy.deepcopy(second.node.rng).random() != first_life.random()
    with pytest.raises(ValueError, match="wait_for_relay needs a relay_url"):
        await sim.client("phone", "shop", wait_for_relay=5.0)


def test_same_seed_same_trace_with_helpers() -> None:
    def run(seed: int) -> str:
        with Simulation(seed=seed, loss=0.05) as sim:

            async def main() -> None:
                server = await sim.serve(RecordingApp(), "web")
                client = await sim.client("alice", server)
                for i in range(5):
                    assert (await client.get(f"/{i}")).status_code == 200

            sim.run(main())
            return sim.trace.hash()

    assert run(4) == run(4)
    assert run(4) != run(5)


async def test_bad_input(sim: Simulation) -> None:
    box = sim.nat("box")
    with pytest.raises(TypeError, match="NAT box, not a host"):
        await sim.serve(RecordingApp(), box)
    with pytest.raises(ValueError, match="DNS name 'Shop!'"):
        await sim.serve(RecordingApp(), "web", name="Shop!")
    with pytest.raises(TypeError, match="target must be"):
        await sim.client("alice", 42)  # type: ignore[arg-type]
    server = await sim.serve(RecordingApp(), "web")
    with pytest.raises(ValueError, match="already serves"):
        await sim.serve(RecordingApp(), "other", secret_key=SecretKey.from_seed("web:443"))
    with pytest.raises(Exception, match="already in use"):
        await sim.serve(RecordingApp(), "web", secret_key=SecretKey.from_seed("x"))
    with pytest.raises(SimulationError, match="own running loop"):
        sim.run(server.close())


def test_helpers_after_close_and_a_failing_startup() -> None:
    sim = Simulation(seed=1)

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    async def main() -> None:
        with pytest.raises(Exception, match="no database"):
            await sim.serve(broken, "web")
        # the port is free again: the failed server's node was closed
        await sim.serve(RecordingApp(), "web")

    sim.run(main())
    sim.close()
    coro = sim.serve(RecordingApp(), "web")
    with pytest.raises(SimulationError, match="closed"):
        sim.run(coro)


async def test_transport_resolver_is_remembered_and_checked(sim: Simulation) -> None:
    server = await sim.serve(RecordingApp(), "web")
    someone_else = SecretKey.from_seed("someone else").node_id
    calls: list[str] = []

    async def resolve(host: str) -> NodeAddr:
        calls.append(host)
        return server.addr  # whatever is asked: the server's address

    node = await Node.bind(SecretKey.from_seed("c"), host="0.0.0.0", network=sim.host("c"))
    try:
        async with httpx.AsyncClient(transport=P2PTransport(node, resolve=resolve)) as client:
            assert (await client.get("https://api/1")).text == "GET /1 host=api"
            assert (await client.get("https://api/2")).status_code == 200
            assert calls == ["api"]  # remembered
            # a node id URL whose lookup names another node is refused
            with pytest.raises(httpx.ConnectError, match="not the node the URL names"):
                await client.get(f"https://{someone_else}/x")
            assert calls == ["api", str(someone_else)]
    finally:
        await node.close()


def test_close_is_bounded_and_reports_an_app_that_hangs_on_shutdown() -> None:
    async def hangs_on_shutdown(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await asyncio.Event().wait()  # never answers the shutdown event

    sim = Simulation(seed=1)

    async def main() -> None:
        server = await sim.serve(hangs_on_shutdown, "web")
        client = await sim.client("alice", server)
        assert (await client.get("/")).status_code == 500  # the app only speaks lifespan

    sim.run(main())
    with pytest.raises(SimulationError, match="closing the simulation's apps, clients and relays failed"):
        sim.close()
    assert sim.loop.is_closed()  # the network was closed all the same
    assert all(not host.sockets for host in sim.hosts)
    sim.close()  # idempotent
