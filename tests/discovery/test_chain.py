"""Static discovery, the chain of sources, and the simulator's mock DNS as a source."""

from __future__ import annotations

import asyncio

import pytest

from asgi_p2p.discovery import ChainedDiscovery, Discovery, DiscoveryChainFailed, StaticDiscovery, merge_node_addrs
from asgi_p2p.discovery.directory import DirectoryClient
from asgi_p2p.discovery.mdns import MdnsDiscovery
from asgi_p2p.errors import DiscoveryFailed
from asgi_p2p.identity import NodeAddr, NodeId, SecretKey
from asgi_p2p.sim import Simulation
from asgi_p2p.sim.discovery import MockDNS, MockDNSClient
from asgi_p2p.ticket import Ticket

ALICE = SecretKey.from_seed("alice").node_id
BOB = SecretKey.from_seed("bob").node_id


class Fake:
    """A source answering from a dict, optionally never (to hit the timeout) or with errors."""

    def __init__(self, label: str, answers: dict[NodeId, NodeAddr] | None = None, *, hang: bool = False) -> None:
        self.label = label
        self.answers = answers or {}
        self.hang = hang
        self.asked = 0
        self.published: list[tuple[NodeAddr, str | None]] = []
        self.fail_publish = False

    async def resolve(self, node_id: NodeId) -> NodeAddr:
        self.asked += 1
        if self.hang:
            await asyncio.Event().wait()
        try:
            return self.answers[node_id]
        except KeyError:
            raise DiscoveryFailed(f"{self.label} does not know it") from None

    async def resolve_name(self, name: str) -> NodeAddr:
        raise DiscoveryFailed("no names here")

    async def publish(self, addr: NodeAddr, name: str | None = None) -> None:
        if self.fail_publish:
            raise DiscoveryFailed("refused")
        self.published.append((addr, name))

    async def unpublish(self) -> None:
        self.published.clear()


def test_every_source_implements_the_protocol() -> None:
    dns = MockDNS(0.0)
    for source in (StaticDiscovery(), dns, dns.client(), MdnsDiscovery(), Fake("x"), ChainedDiscovery([])):
        assert isinstance(source, Discovery)
    assert DirectoryClient.label == "directory" and callable(DirectoryClient.resolve_name)


def test_static_from_tickets_and_names() -> None:
    ticket = Ticket(ALICE, "https://relay.example/", [("192.0.2.1", 4433)])
    static = StaticDiscovery([ticket.encode()], names={"bob": NodeAddr(BOB, [("192.0.2.2", 1)])})
    static.add(NodeAddr(ALICE, [("192.0.2.9", 9)]))

    async def main() -> None:
        a = await static.resolve(ALICE)
        assert a.relay_url == "https://relay.example/"
        assert a.direct_addresses == (("192.0.2.9", 9), ("192.0.2.1", 4433))
        assert (await static.resolve_name("bob")).node_id == BOB
        with pytest.raises(DiscoveryFailed, match="pass a ticket"):
            await static.resolve(SecretKey.from_seed("carol").node_id)
        with pytest.raises(DiscoveryFailed, match="no static entry"):
            await static.resolve_name("carol")
        static.remove(BOB)
        with pytest.raises(DiscoveryFailed):
            await static.resolve_name("bob")

    asyncio.run(main())


def test_chain_first_usable_answer_wins_and_partial_answers_merge() -> None:
    empty = Fake("knows-node", {ALICE: NodeAddr(ALICE, [], None)})
    first = Fake("first", {ALICE: NodeAddr(ALICE, [("192.0.2.1", 1)], "https://r1/")})
    second = Fake("second", {ALICE: NodeAddr(ALICE, [("192.0.2.2", 2)], "https://r2/")})
    chain = ChainedDiscovery([Fake("unknown"), empty, first, second])

    async def main() -> None:
        assert await chain.resolve(ALICE) == NodeAddr(ALICE, [("192.0.2.1", 1)], "https://r1/")
        assert second.asked == 0  # not consulted after the first usable answer
        with pytest.raises(DiscoveryChainFailed) as info:
            await chain.resolve(BOB)
        assert [label for label, _ in info.value.reasons] == ["unknown", "knows-node", "first", "second"]
        assert "unknown: unknown does not know it" in str(info.value)

    asyncio.run(main())


def test_chain_source_answering_for_another_node_is_skipped() -> None:
    liar = Fake("liar", {ALICE: NodeAddr(BOB, [("192.0.2.66", 1)])})
    honest = Fake("honest", {ALICE: NodeAddr(ALICE, [("192.0.2.1", 1)])})

    async def main() -> None:
        assert (await ChainedDiscovery([liar, honest]).resolve(ALICE)).direct_addresses == (("192.0.2.1", 1),)

    asyncio.run(main())


def test_chain_per_source_timeout_in_virtual_time(sim: Simulation) -> None:
    slow = Fake("slow", hang=True)
    fast = Fake("fast", {ALICE: NodeAddr(ALICE, [("10.0.0.1", 1)])})
    chain = ChainedDiscovery([slow, fast], timeout=2.5)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert (await chain.resolve(ALICE)).direct_addresses == (("10.0.0.1", 1),)
        assert loop.time() - t0 == pytest.approx(2.5)
        with pytest.raises(DiscoveryChainFailed, match=r"slow: no answer within 2.5 s; fast: fast does not know it"):
            await chain.resolve(BOB)

    sim.run(main())


def test_chain_publish_goes_everywhere_and_fails_only_if_all_fail() -> None:
    a, b = Fake("a"), Fake("b")
    chain = ChainedDiscovery([a, b])
    addr = NodeAddr(ALICE, [("192.0.2.1", 1)])

    async def main() -> None:
        await chain.publish(addr, "alice")
        assert a.published == b.published == [(addr, "alice")]
        a.fail_publish = True
        await chain.publish(addr)  # b still works
        b.fail_publish = True
        with pytest.raises(DiscoveryChainFailed, match="publish failed on every source: a: refused; b: refused"):
            await chain.publish(addr)
        await chain.unpublish()
        assert b.published == []

    asyncio.run(main())


def test_merge_refuses_other_nodes() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        merge_node_addrs(NodeAddr(ALICE), NodeAddr(BOB))


def test_mock_dns_is_a_discovery_source(sim: Simulation) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        client: MockDNSClient = sim.dns.client()
        await client.publish(NodeAddr(ALICE, [("10.0.0.1", 4433)]), "alice.sim")
        await client.publish(NodeAddr(ALICE, [("10.0.0.1", 4433)]))  # also under its node id
        t0 = loop.time()
        addr = await sim.dns.resolve(ALICE)
        assert loop.time() - t0 == pytest.approx(sim.dns.delay)
        assert addr == NodeAddr(ALICE, [("10.0.0.1", 4433)])
        assert await sim.dns.resolve_name("ALICE.sim") == addr
        chain = ChainedDiscovery([StaticDiscovery(), sim.dns])
        assert await chain.resolve(ALICE) == addr
        await client.unpublish()
        with pytest.raises(DiscoveryChainFailed, match=r"sim-dns: node .* is not registered"):
            await chain.resolve(ALICE)

    sim.run(main())
