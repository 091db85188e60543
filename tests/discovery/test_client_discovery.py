"""Discovery in the client API: P2PTransport and Endpoint/Node take a discovery chain,
so names and bare node ids resolve without ``add_addr`` (on real UDP and on the simulator)."""

from __future__ import annotations

import httpx
import pytest

from asgi_p2p.discovery import ChainedDiscovery, DirectoryClient, DirectoryServer, StaticDiscovery
from asgi_p2p.discovery.records import Directory
from asgi_p2p.errors import NodeNotFound
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.http.types import Receive, Scope, Send
from asgi_p2p.identity import NodeAddr, SecretKey
from asgi_p2p.node import Node
from asgi_p2p.sim import Simulation
from tests.harness import Harness


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = f"hello from {scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def test_names_and_bare_node_ids_resolve_through_a_discovery_chain(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        directory = await net.endpoint("directory")
        DirectoryServer(Directory(capacity=100)).attach(directory)
        server = await net.endpoint("server")
        h3 = H3Server(app, server, timeout_graceful_shutdown=1.0)
        await h3.startup()
        publisher = DirectoryClient(server, directory.node_addr(), refresh=False)
        await publisher.publish(server.node_addr(), name="music.example.org")

        # the transport's chain: a ticket source (empty here), then the relay's directory
        client = await net.endpoint("client")
        chain = ChainedDiscovery([StaticDiscovery(), DirectoryClient(client, directory.node_addr())], timeout=5.0)
        async with httpx.AsyncClient(transport=P2PTransport(client, discovery=chain), timeout=30) as http:
            r = await http.get("https://music.example.org/songs")
            assert (r.status_code, r.text) == (200, "hello from /songs")
            r = await http.get(f"https://{server.node_id}/by-id")
            assert r.text == "hello from /by-id"
            with pytest.raises(httpx.ConnectError, match=r"no node holds the name 'nobody\.example\.org'"):
                await http.get("https://nobody.example.org/")

        # the endpoint's chain: a plain transport dials a bare node id it was never given an address for
        other = await net.endpoint("other")
        other.discovery = ChainedDiscovery([DirectoryClient(other, directory.node_addr())], timeout=5.0)
        async with httpx.AsyncClient(transport=P2PTransport(other), timeout=30) as http:
            r = await http.get(f"https://{server.node_id}/plain")
            assert r.text == "hello from /plain"
            ghost = SecretKey.from_seed("client-discovery-ghost").node_id
            with pytest.raises(httpx.ConnectError, match=rf"no address known for node {ghost}: .*has no record"):
                await http.get(f"https://{ghost}/")
        await h3.shutdown()

    net.run(scenario)


def test_without_discovery_a_bare_node_id_still_says_what_is_missing(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        client = await net.endpoint("lonely")
        ghost = SecretKey.from_seed("client-discovery-ghost").node_id
        async with httpx.AsyncClient(transport=P2PTransport(client), timeout=10) as http:
            with pytest.raises(httpx.ConnectError, match="pass a NodeAddr or ticket with addresses"):
                await http.get(f"https://{ghost}/")
        with pytest.raises(ValueError, match="resolve or discovery"):
            P2PTransport(client, discovery=ChainedDiscovery([]), resolve=ChainedDiscovery([]).resolve_name)

    net.run(scenario)


def test_a_source_that_must_dial_the_node_it_is_asked_about_does_not_recurse(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        directory = await net.endpoint("directory")
        DirectoryServer(Directory(capacity=10)).attach(directory)
        client = await net.endpoint("recursive")
        # the directory is known by id alone, and the endpoint's only source is that directory
        client.discovery = DirectoryClient(client, NodeAddr(directory.node_id), timeout=5.0)
        with pytest.raises(NodeNotFound, match=rf"no address known for node {directory.node_id}: .*unreachable"):
            await client.connect_quic(directory.node_id, "asgi-p2p/directory/1")

    net.run(scenario)


async def test_the_simulators_mock_dns_plugs_into_the_same_places(sim: Simulation) -> None:
    served = await sim.serve(app, "web", name="music.sim")
    by_name = await Node.bind(SecretKey.from_seed("mock-dns-a"), host="0.0.0.0", network=sim.host("a"))
    by_id = await Node.bind(
        SecretKey.from_seed("mock-dns-b"), host="0.0.0.0", network=sim.host("b"), discovery=sim.dns.client()
    )
    try:
        chain = ChainedDiscovery([StaticDiscovery(), sim.dns.client()])
        async with httpx.AsyncClient(transport=P2PTransport(by_name, discovery=chain), timeout=30) as client:
            assert (await client.get("https://music.sim/a")).text == "hello from /a"
        assert sim.dns.lookups == 1
        async with httpx.AsyncClient(transport=P2PTransport(by_id), timeout=30) as client:  # the endpoint's source
            assert (await client.get(f"https://{served.node.node_id}/b")).text == "hello from /b"
        assert sim.dns.lookups == 2
    finally:
        await by_name.close()
        await by_id.close()
