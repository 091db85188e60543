"""Mock DNS discovery in virtual time."""

from __future__ import annotations

import asyncio

import pytest

from asgi_p2p.errors import DiscoveryFailed
from asgi_p2p.identity import NodeAddr, SecretKey
from asgi_p2p.sim import Simulation
from asgi_p2p.sim.discovery import MockDNS


def test_discover_by_name_after_delay(sim: Simulation) -> None:
    node_id = SecretKey.from_seed("bob").public()
    sim.dns.register_peer("Bob", node_id, [("10.0.0.2", 4433)])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        record = await sim.dns.discover("bob")
        assert loop.time() - t0 == pytest.approx(0.100)
        assert record.node_id == node_id and record.addresses == (("10.0.0.2", 4433),)
        assert await sim.dns.resolve("BOB") == node_id

    sim.run(main())


def test_unknown_name_raises_discovery_failed(sim: Simulation) -> None:
    async def main() -> None:
        with pytest.raises(DiscoveryFailed, match="'nobody' is not registered"):
            await sim.dns.discover("nobody")
        assert sim.now == pytest.approx(0.100)

    sim.run(main())


def test_delay_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMULATOR_DISCOVERY_DELAY_MS", "250")
    assert MockDNS().delay == pytest.approx(0.25)
    with Simulation(seed=1) as sim:
        assert sim.dns.delay == pytest.approx(0.25)


def test_connect_by_name_calls_endpoint(sim: Simulation) -> None:
    calls: list[tuple[object, dict[str, object]]] = []

    class FakeEndpoint:
        async def connect(self, addr: object, **kwargs: object) -> str:
            calls.append((addr, kwargs))
            return "conn"

    node_id = SecretKey.from_seed("svc").node_id
    sim.dns.register_peer("svc", node_id, [("10.0.0.9", 1)], relay_url="https://relay.sim")
    assert sim.run(sim.dns.connect_by_name(FakeEndpoint(), "svc")) == "conn"
    assert calls == [(NodeAddr(node_id, [("10.0.0.9", 1)], "https://relay.sim"), {})]
    sim.dns.register_peer("odd", "NODE", [("10.0.0.9", 1)])
    with pytest.raises(DiscoveryFailed, match="'odd' is registered with 'NODE', not a NodeId"):
        sim.run(sim.dns.connect_by_name(FakeEndpoint(), "odd"))
    with pytest.raises(DiscoveryFailed, match="'nobody' is not registered"):
        sim.run(sim.dns.connect_by_name(FakeEndpoint(), "nobody"))
