"""Property tests over generated topologies and fault schedules."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_p2p.sim import Simulation
from asgi_p2p.sim.strategies import Topology, fault_schedules, topologies
from tests.sim.sim_helpers import probe

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(topo=topologies(2, 8, nats=False, faulty_links=False))
def test_connected_topology_delivers_everywhere(topo: Topology) -> None:
    with Simulation(seed=topo.seed, auto_link=False) as sim:
        hosts = topo.build(sim)
        for a in topo.names:
            for b in topo.names:
                assert sim.find_path(a, b) is not None

        async def main() -> None:
            probes = [await probe(h, 5000) for h in hosts]
            for p in probes:
                for q in probes:
                    if p is not q:
                        p.send(b"x", q.address)
            for p in probes:
                await p.wait_for(len(probes) - 1, timeout=30)

        sim.run(main(), time_limit=60)


@SETTINGS
@given(data=st.data(), topo=topologies(3, 6, nats=False, faulty_links=False))
def test_network_is_whole_after_scheduled_faults_are_repaired(data: st.DataObject, topo: Topology) -> None:
    pairs = [(lk.a, lk.b) for lk in topo.links]
    faults = data.draw(fault_schedules(topo.names, duration=10.0, link_pairs=pairs))
    with Simulation(seed=topo.seed, auto_link=False) as sim:
        hosts = topo.build(sim)
        sim.schedule(faults)

        async def main() -> None:
            probes = [await probe(h, 5000) for h in hosts]
            await asyncio.sleep(10.5)
            for a in topo.names:
                for b in topo.names:
                    assert sim.find_path(a, b) is not None, (a, b, faults)
            for q in probes[1:]:
                probes[0].send(b"x", q.address)
            for q in probes[1:]:
                await q.wait_for(1, timeout=30)

        sim.run(main(), time_limit=60)


@SETTINGS
@given(topo=topologies(2, 5))
def test_generated_topologies_with_nats_build_and_run(topo: Topology) -> None:
    with Simulation(seed=topo.seed, auto_link=False) as sim:
        hosts = topo.build(sim)

        async def main() -> None:
            for h in hosts:
                s = await h.bind("0.0.0.0", 0, lambda d, a: None)
                for other in hosts:
                    s.sendto(b"y" * 50, (other.public_address, 5000))
            await asyncio.sleep(5)

        sim.run(main(), time_limit=60)
        assert sim.stats()["sent"] == len(hosts) ** 2
