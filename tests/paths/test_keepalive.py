"""What an idle or lightly used connection costs on the wire (simulator, no relay).

QUIC traffic stands in for keepalives: a PING goes out only after a keepalive
interval with no packet either way, and the paths layer's signed disco PINGs
only after QUIC heard nothing on the current path for 1.5 keepalive intervals.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass

from asgi_p2p import Endpoint, MessageConnection, NetworkConfig, Node, SecretKey
from asgi_p2p.endpoint.connection import PeerConnection
from asgi_p2p.paths.disco import is_disco
from asgi_p2p.sim import Simulation


async def _pair(sim: Simulation, config: NetworkConfig) -> tuple[Endpoint, Endpoint, Counter[str]]:
    a, b = sim.host("alice"), sim.host("bob")
    sim.link(a, b, latency=0.02, loss=0.0)
    eps = []
    sent: Counter[str] = Counter()
    for name, host in (("alice", a), ("bob", b)):
        ep = await Node.bind(
            SecretKey.from_seed(name), host="0.0.0.0", port=4433, config=config, network=host, rng=random.Random(name)
        )
        real = ep.router.send_direct

        def count(data: bytes, addr: tuple[str, int], ttl: int | None = None, real=real) -> None:  # type: ignore[no-untyped-def]
            sent["disco"] += is_disco(data)
            real(data, addr, ttl)

        ep.router.send_direct = count  # type: ignore[method-assign]
        eps.append(ep)
    return eps[0], eps[1], sent


def _count_pings(conn: PeerConnection, counter: Counter[str], key: str) -> None:
    real = conn.quic.send_ping

    def ping(uid: int) -> None:
        counter[key] += 1
        real(uid)

    conn.quic.send_ping = ping  # type: ignore[method-assign]


CONFIG = NetworkConfig(keepalive_interval=10, idle_timeout=30)


@dataclass
class Counted:
    """A connected pair after its start-up, with what it sends from now on counted."""

    ea: Endpoint
    eb: Endpoint
    conn: MessageConnection  # bob -> alice
    inc: MessageConnection  # alice's side
    qa: PeerConnection
    qb: PeerConnection
    sent: Counter[str]  # "disco": signed probes sent
    pings: Counter[str]  # QUIC PINGs by sender
    packets_before: int

    def packets(self, sim: Simulation) -> int:
        return sim.trace.count("send") - self.packets_before


async def _connected(sim: Simulation) -> Counted:
    ea, eb, sent = await _pair(sim, CONFIG)
    conn = await eb.connect(ea.node_addr())
    inc = await ea.listen().accept()
    await conn.send(b"hello")
    assert await inc.recv() == b"hello"
    # the path's first probes, and a keepalive or two until QUIC traffic stands in for them
    await asyncio.sleep(20)
    (qa,), (qb,) = ea.connections, eb.connections
    pings: Counter[str] = Counter()
    _count_pings(qa, pings, "alice")
    _count_pings(qb, pings, "bob")
    sent.clear()
    return Counted(ea, eb, conn, inc, qa, qb, sent, pings, sim.trace.count("send"))


def test_an_idle_connection_costs_one_ping_and_ack_per_keepalive_interval(sim: Simulation) -> None:
    async def main() -> None:
        c = await _connected(sim)
        await asyncio.sleep(300)  # ten idle timeouts
        assert c.qa.is_connected and c.qb.is_connected  # kept alive
        assert c.qb.path.kind == "direct" and c.qa.path.kind == "direct"
        # one PING per interval in all (not one per side); each answered by one ACK
        assert 28 <= c.pings["alice"] + c.pings["bob"] <= 31, c.pings
        assert c.sent["disco"] == 0  # QUIC's keepalives stand in for signed probes
        assert c.packets(sim) <= 2 * 31
        await c.conn.send(b"still there")
        assert await c.inc.recv() == b"still there"
        await c.eb.close()
        await c.ea.close()

    sim.run(main(), time_limit=400)


def test_a_connection_carrying_messages_sends_no_keepalives(sim: Simulation) -> None:
    async def main() -> None:
        c = await _connected(sim)
        for i in range(40):  # one exchange every 7 s for 280 s
            await c.conn.send(b"ping %d" % i)
            await c.inc.send(await c.inc.recv())
            assert await c.conn.recv() == b"ping %d" % i
            await asyncio.sleep(7)
        assert c.pings == Counter() and c.sent["disco"] == 0
        # message, answer carrying the ACK, ACK of the answer
        assert c.packets(sim) <= 3 * 40
        assert c.qb.path.kind == "direct"
        await c.eb.close()
        await c.ea.close()

    sim.run(main(), time_limit=400)


def test_a_silent_peer_is_still_noticed(sim: Simulation) -> None:
    """The keepalive's job is intact: a peer that vanishes is detected by the idle timeout."""

    async def main() -> None:
        ea, eb, _sent = await _pair(sim, CONFIG)
        await eb.connect(ea.node_addr())
        await ea.listen().accept()
        await asyncio.sleep(20)
        sim.crash("alice")
        t0 = asyncio.get_running_loop().time()
        (qb,) = eb.connections
        await asyncio.wait_for(qb.wait_closed(), 60)
        assert asyncio.get_running_loop().time() - t0 <= 31
        await eb.close()

    sim.run(main(), time_limit=200)
