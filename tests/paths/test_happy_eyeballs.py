"""Happy eyeballs (issue 11, item 2): a ticket's on-link address raced against the relay.

A private address in our own subnet is dialed at once, directly, whether the relay is up or
not; the relay is dialed too after a short head start if that handshake has not completed.
The first handshake wins, the other connection is closed.  Public addresses (and private
ones in other subnets, where a NAT may lie between) are not raced: they are punched through
the relay as before (docs/nat-traversal.md).
"""

from __future__ import annotations

import asyncio

from asgi_p2p import NodeAddr
from asgi_p2p.messages import MSG_ALPN
from asgi_p2p.sim import Simulation

from .test_endpoint_paths import URL, FakeRelayHub, _bind, _echo, _quic

RELAY_LATENCY = 0.1  # one way through the fake relay: far slower than the LAN


def test_a_peer_on_our_network_is_reached_directly_without_the_relay(sim: Simulation) -> None:
    a, b = sim.host("alice"), sim.host("bob")  # one subnet (10.0.0.0/24), 1 ms apart
    sim.link(a, b, latency=0.001, loss=0.0, mtu=1500)
    hub = FakeRelayHub(latency=RELAY_LATENCY)

    async def main() -> None:
        ea, eb = await _bind("alice", a, hub), await _bind("bob", b, hub)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        conn = await eb.connect(ea.node_addr())  # its address and the relay
        inc = await ea.listen().accept()
        await _echo(conn, inc, b"first message")
        assert loop.time() - t0 < 0.05  # a few LAN round trips; one relayed one takes 0.2 s
        assert hub.packets == 0  # the relay carried nothing: its dial never started
        qb = _quic(eb)
        assert qb.path.kind == "direct" and qb.path.addr == ea.local_address
        assert len([c for c in eb.connections if not c.is_relay_connection]) == 1
        await eb.close()
        await ea.close()

    sim.run(main(), time_limit=30)


def test_an_on_link_address_that_does_not_answer_loses_the_race_to_the_relay(sim: Simulation) -> None:
    a, b = sim.host("alice"), sim.host("bob")
    sim.link(a, b, latency=0.001, loss=0.0, mtu=1500)
    hub = FakeRelayHub(latency=RELAY_LATENCY)

    async def main() -> None:
        ea, eb = await _bind("alice", a, hub), await _bind("bob", b, hub)
        loop = asyncio.get_running_loop()
        nobody = ("10.0.0.77", 4433)  # in bob's subnet, but no host there
        t0 = loop.time()
        conn = await eb.connect(NodeAddr(ea.node_id, [nobody], relay_url=URL))
        took = loop.time() - t0
        inc = await ea.listen().accept()
        await _echo(conn, inc, b"through the relay")
        # the relay's dial started after the 50 ms head start, its handshake took two relayed
        # round trips (0.4 s): no waiting out the on-link attempt's timeouts
        assert 0.05 + 4 * RELAY_LATENCY - 0.01 <= took < 0.05 + 5 * RELAY_LATENCY, took
        assert hub.packets > 0
        await asyncio.sleep(1.0)  # the losing attempt is closed and gone
        assert len([c for c in eb.connections if not c.is_relay_connection]) == 1
        assert eb.connection_count == 1
        await eb.close()
        await ea.close()

    sim.run(main(), time_limit=30)


def test_a_public_address_is_not_raced(sim: Simulation) -> None:
    """A peer whose address is in another subnet is dialed through the relay only (careful
    punching): a first packet sent to a NAT before the peer opened its side could make that
    NAT give the peer's flow another port."""
    a, b = sim.host("alice", "10.0.1.1"), sim.host("bob", "10.0.2.1")
    sim.link(a, b, latency=0.001, loss=0.0, mtu=1500)
    hub = FakeRelayHub(latency=RELAY_LATENCY)

    async def main() -> None:
        ea, eb = await _bind("alice", a, hub), await _bind("bob", b, hub)
        conn = await eb.connect(ea.node_addr())
        inc = await ea.listen().accept()
        await _echo(conn, inc, b"hello")
        assert hub.packets > 0  # the handshake went through the relay
        await eb.close()
        await ea.close()

    sim.run(main(), time_limit=30)


def test_another_node_answering_on_the_on_link_address_loses_the_race(sim: Simulation) -> None:
    """Homes share private subnets: the on-link address may be another node of ours, whose TLS
    answer fails that attempt; the relay's attempt still reaches the node we dialed."""
    a, b, c = sim.host("alice", "10.0.1.1"), sim.host("bob", "10.0.2.1"), sim.host("carol", "10.0.2.2")
    for x, y in ((a, b), (b, c), (a, c)):
        sim.link(x, y, latency=0.001, loss=0.0, mtu=1500)
    hub = FakeRelayHub(latency=RELAY_LATENCY)

    async def main() -> None:
        ea, eb, ec = await _bind("alice", a, hub), await _bind("bob", b, hub), await _bind("carol", c, hub)
        accepted = ec.admission_stats.accepted
        conn = await eb.connect(NodeAddr(ea.node_id, [(c.address, 4433)], relay_url=URL))
        inc = await ea.listen().accept()
        await _echo(conn, inc, b"to alice")
        assert _quic(eb).remote_node_id == ea.node_id
        assert hub.packets > 0
        assert ec.admission_stats.accepted == accepted + 1  # carol was dialed (and answered as carol)
        for ep in (eb, ec, ea):
            await ep.close()

    sim.run(main(), time_limit=30)


def test_a_returning_client_races_without_early_data_and_resumes_on_the_lan(sim: Simulation) -> None:
    """With a session ticket and early data asked for, a raced dial sends no 0-RTT data (two
    attempts would each carry it): the on-link attempt resumes the session and wins, and the
    connection comes back once its handshake completed, not early."""
    a, b = sim.host("alice"), sim.host("bob")
    sim.link(a, b, latency=0.001, loss=0.0, mtu=1500)
    hub = FakeRelayHub(latency=RELAY_LATENCY)

    async def main() -> None:
        ea, eb = await _bind("alice", a, hub), await _bind("bob", b, hub)
        conn = await eb.connect(ea.node_addr())
        inc = await ea.listen().accept()
        await _echo(conn, inc, b"first visit")
        await asyncio.sleep(0.1)  # the session ticket arrives after the handshake
        first = _quic(eb)
        first.close()
        await first.wait_closed()
        await asyncio.sleep(0.5)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        again = await eb.connect_quic(ea.node_addr(), MSG_ALPN, early_data=True)
        assert loop.time() - t0 < 0.05  # the LAN attempt won (one relayed round trip is 0.2 s)
        assert not again.early and again.handshake_completed
        assert again.path.kind == "direct" and again.path.addr == ea.local_address
        assert ea.resumptions_accepted == 1  # resumed (the ticket), one attempt only
        assert hub.packets == 0
        await eb.close()
        await ea.close()

    sim.run(main(), time_limit=30)
