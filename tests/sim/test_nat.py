"""NAT boxes (RFC 4787) with plain UDP probes: the traversal matrix, hairpinning, timeouts."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from asgi_p2p.net.base import Address
from asgi_p2p.sim import Filtering, Host, Mapping, NatConfig, Simulation
from tests.sim.sim_helpers import Probe, probe

KINDS = ["none", "full-cone", "restricted-cone", "port-restricted-cone", "symmetric"]

# RFC 4787 theory for simultaneous probes to the addresses a rendezvous server
# observed, each side also answering the source of any probe it receives.
# Mapping: a symmetric (APDM) NAT gives the probe towards the peer a new external
# port, so the peer's probes to the observed port are filtered, and the peer's NAT
# admits the new port only if its filter ignores the port (EIF, ADF) or there is no NAT.
# Hence every pair passes except symmetric with port-restricted cone or symmetric.
EXPECTED: dict[frozenset[str], bool] = {
    frozenset(pair): True for pair in itertools.combinations_with_replacement(KINDS, 2)
}
EXPECTED[frozenset({"symmetric", "port-restricted-cone"})] = False
EXPECTED[frozenset({"symmetric"})] = False

TABLE = """
                  none  full  restr  port-r  symm
none               yes   yes   yes    yes    yes
full-cone          yes   yes   yes    yes    yes
restricted-cone    yes   yes   yes    yes    yes
port-restricted    yes   yes   yes    yes    no
symmetric          yes   yes   yes    no     no
"""


def _table_matches_expected() -> None:
    rows = [line.split() for line in TABLE.strip().splitlines()[1:]]
    for i, row in enumerate(rows):
        for j, cell in enumerate(row[1:]):
            assert EXPECTED[frozenset({KINDS[i], KINDS[j]})] == (cell == "yes")


_table_matches_expected()


async def _punch(sim: Simulation, kind_a: str, kind_b: str) -> tuple[bool, bool]:
    server = sim.node("server")
    a, b = sim.node("a"), sim.node("b")
    assert isinstance(server, Host) and isinstance(a, Host) and isinstance(b, Host)
    ps = await probe(server, 3478)
    pa = await probe(a, 4000, reply_with=b"ack:")
    pb = await probe(b, 4000, reply_with=b"ack:")
    pa.send(b"register", ps.address)
    pb.send(b"register", ps.address)
    await ps.wait_for(2)
    observed: dict[str, Address] = {}
    for _, src, _ in ps.received:
        observed["a" if src[0] == a.public_address else "b"] = src

    async def punch(p: Probe, peer: Address) -> None:
        for _ in range(5):
            p.send(b"probe", peer)
            await asyncio.sleep(0.1)

    await asyncio.gather(punch(pa, observed["b"]), punch(pb, observed["a"]))
    await asyncio.sleep(0.5)
    return bool(pa.received), bool(pb.received)


@pytest.mark.parametrize(("kind_a", "kind_b"), list(itertools.combinations_with_replacement(KINDS, 2)))
def test_nat_traversal_matrix(kind_a: str, kind_b: str) -> None:
    sim = Simulation(seed=7, loss=0.0)
    sim.host("server")
    sim.host("a", nat=kind_a)
    sim.host("b", nat=kind_b)
    a_got, b_got = sim.run(_punch(sim, kind_a, kind_b))
    expected = EXPECTED[frozenset({kind_a, kind_b})]
    assert (a_got and b_got) == expected, f"{kind_a} x {kind_b}: a got {a_got}, b got {b_got}"
    sim.close()


def test_peers_see_translated_addresses(sim: Simulation) -> None:
    server = sim.host("server", addr="10.0.0.100")
    alice = sim.host("alice", addr="192.168.1.10", nat=NatConfig(public_address="203.0.113.5"))
    assert alice.public_address == "203.0.113.5" and alice.nat is not None

    async def main() -> None:
        ps = await probe(server, 3478)
        pa = await probe(alice, 5555)
        assert pa.address == ("192.168.1.10", 5555)
        pa.send(b"hi", ps.address)
        await ps.wait_for(1)
        assert ps.sources() == [("203.0.113.5", 5555)]  # port preserved
        ps.send(b"back", ps.sources()[0])
        await pa.wait_for(1)
        assert pa.sources() == [("10.0.0.100", 3478)]

    sim.run(main())


def test_port_assignment_random_and_per_destination() -> None:
    with Simulation(seed=2, loss=0.0) as sim:
        s1, s2 = sim.host("s1"), sim.host("s2")
        h = sim.host("h", nat="symmetric")

        async def main() -> None:
            p1, p2 = await probe(s1, 1), await probe(s2, 1)
            ph = await probe(h, 4000)
            ph.send(b"x", p1.address)
            ph.send(b"x", p2.address)
            ph.send(b"y", p1.address)
            await p1.wait_for(2)
            await p2.wait_for(1)
            assert p1.sources()[0] == p1.sources()[1]  # same mapping for the same destination
            assert p1.sources()[0][1] != p2.sources()[0][1]  # a new one for another destination
            assert 4000 not in (p1.sources()[0][1], p2.sources()[0][1])

        sim.run(main())


def test_address_dependent_mapping() -> None:
    with Simulation(seed=2, loss=0.0) as sim:
        s1 = sim.host("s1")
        h = sim.host("h", nat=NatConfig(Mapping.ADDRESS_DEPENDENT, Filtering.ADDRESS_DEPENDENT))

        async def main() -> None:
            p1, p1b = await probe(s1, 1), await probe(s1, 2)
            ph = await probe(h, 4000)
            ph.send(b"x", p1.address)
            ph.send(b"x", p1b.address)
            await p1.wait_for(1)
            await p1b.wait_for(1)
            assert p1.sources() == p1b.sources()  # same IP: same mapping
            # address-dependent filtering: another port of the same IP may answer
            p1b.send(b"from-other-port", p1.sources()[0])
            await ph.wait_for(1)

        sim.run(main())


def test_inbound_before_outbound_creates_no_mapping(sim: Simulation) -> None:
    server = sim.host("server")
    h = sim.host("h", nat=NatConfig(Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT))

    async def main() -> None:
        ps = await probe(server, 1)
        ph = await probe(h, 4000)
        ps.send(b"unsolicited", (h.public_address, 4000))
        await asyncio.sleep(1)
        assert ph.received == []
        assert sim.trace.count("drop:nat-no-mapping") == 1
        assert h.nat is not None and h.nat.table.mappings() == []
        ph.send(b"out", ps.address)
        await ps.wait_for(1)
        assert ps.sources() == [(h.public_address, 4000)]
        ps.send(b"now-ok", (h.public_address, 4000))
        await ph.wait_for(1)

    sim.run(main())


def test_filtering_blocks_unknown_peers(sim: Simulation) -> None:
    s1, s2 = sim.host("s1"), sim.host("s2")
    h = sim.host("h", nat="port-restricted-cone")

    async def main() -> None:
        p1, p2, p1b = await probe(s1, 1), await probe(s2, 1), await probe(s1, 2)
        ph = await probe(h, 4000)
        ph.send(b"out", p1.address)
        await p1.wait_for(1)
        mapped = p1.sources()[0]
        p2.send(b"other host", mapped)
        p1b.send(b"other port", mapped)
        p1.send(b"contacted", mapped)
        await asyncio.sleep(1)
        assert ph.payloads() == [b"contacted"]
        assert sim.trace.count("drop:nat-filtered") == 2

    sim.run(main())


def test_mapping_timeout_in_virtual_time(sim: Simulation) -> None:
    server = sim.host("server")
    h = sim.host("h", nat=NatConfig(mapping_timeout=30.0))
    sim.link(server, h, loss=0.0)

    async def main() -> None:
        ps = await probe(server, 1)
        ph = await probe(h, 4000)
        ph.send(b"out", ps.address)
        await ps.wait_for(1)
        mapped = ps.sources()[0]
        await asyncio.sleep(20)
        ps.send(b"within timeout", mapped)  # inbound does not refresh
        await ph.wait_for(1)
        await asyncio.sleep(15)  # 35 s after the last outbound packet
        ps.send(b"expired", mapped)
        await asyncio.sleep(1)
        assert ph.payloads() == [b"within timeout"]
        assert sim.trace.count("drop:nat-expired") == 1
        ph.send(b"refresh", ps.address)  # new mapping (port preserved again)
        await ps.wait_for(2)
        assert ps.sources()[1] == mapped

    sim.run(main())


@pytest.mark.parametrize("hairpinning", [True, False])
def test_hairpinning(hairpinning: bool) -> None:
    with Simulation(seed=4, loss=0.0) as sim:
        server = sim.host("server")
        home = sim.nat("home", "full-cone", hairpinning=hairpinning)
        a = sim.host("a", nat=home)
        b = sim.host("b", nat=home)
        assert a.public_address == b.public_address == home.public_address

        async def main() -> list[Address]:
            ps = await probe(server, 1)
            pa, pb = await probe(a, 4000), await probe(b, 4001)
            pa.send(b"reg", ps.address)
            pb.send(b"reg", ps.address)
            await ps.wait_for(2)
            b_public = ps.sources()[1]
            pa.send(b"hairpin", b_public)
            await asyncio.sleep(1)
            # private addresses work inside the LAN either way
            pa.send(b"lan", pb.address)
            await asyncio.sleep(1)
            return pb.sources()

        sources: list[Address] = sim.run(main())
        if hairpinning:
            assert sources == [(home.public_address, 4000), (a.address, 4000)]
        else:
            assert sources == [(a.address, 4000)]
            assert sim.trace.count("drop:no-hairpin") == 1


def test_carrier_grade_nat(sim: Simulation) -> None:
    server = sim.host("server")
    cgnat = sim.nat("cgnat", "port-restricted-cone", public_address="198.51.100.1")
    home = sim.nat("home", "port-restricted-cone", behind=cgnat)
    h = sim.host("h", nat=home)
    assert h.public_address == "198.51.100.1"

    async def main() -> None:
        ps = await probe(server, 1)
        ph = await probe(h, 4000)
        ph.send(b"out", ps.address)
        await ps.wait_for(1)
        assert ps.sources()[0][0] == "198.51.100.1"
        ps.send(b"back", ps.sources()[0])
        await ph.wait_for(1)

    sim.run(main())
