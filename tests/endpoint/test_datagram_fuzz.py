"""Fuzzing the endpoint's datagram entry (``Router.datagram_received``, where every UDP datagram
starts) with random bytes and mutated real QUIC packets, on the simulator.

One server node, with an established connection from a client, lives for the whole module.
Each example hands the server's router datagrams as if they came from the socket: random
bytes, real Initials (truncated, bit-flipped, with random tails), short-header packets naming
the server's real connection ids with junk after them, and disco packets with junk.  Nothing
may raise, nothing may be logged at ERROR (aioquic raising on a packet), every connection
such a datagram created must be gone once the handshake and idle timeouts have passed (no
unbounded growth), and the established connection and new ones must keep working.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_p2p import MSG_ALPN, MessageConnection, NetworkConfig, Node
from asgi_p2p.paths.disco import DISCO_MAGIC
from asgi_p2p.sim import Simulation

CONFIG = NetworkConfig(connect_timeout=5.0, idle_timeout=10.0, keepalive_interval=2.0)
FROM = ("10.9.9.9", 5555)  # where the fuzzed datagrams claim to come from


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Rig:
    sim: Simulation
    server: Node
    client: Node
    conn: MessageConnection  # client -> server
    inc: MessageConnection  # server side
    initials: list[bytes]
    errors: _Errors
    round: int = 0


def _initials() -> list[bytes]:
    """Real first datagrams of a QUIC client (full Initials), for ALPNs the server has and not."""
    out = []
    for alpn in (MSG_ALPN, "h3", "nope"):
        cfg = QuicConfiguration(is_client=True, alpn_protocols=[alpn], verify_mode=ssl.CERT_NONE)
        quic = QuicConnection(configuration=cfg)
        quic.connect(("127.0.0.1", 9), now=0.0)
        out.append(quic.datagrams_to_send(now=0.0)[0][0])
    return out


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    sim = Simulation(seed=3, latency=0.005, loss=0.0)
    errors = _Errors()
    logging.getLogger("asgi_p2p").addHandler(errors)

    async def setup() -> Rig:
        server = await Node.bind(host="0.0.0.0", port=4433, config=CONFIG, network=sim.host("server"))
        client = await Node.bind(host="0.0.0.0", port=4433, config=CONFIG, network=sim.host("client"))
        conn = await client.connect(server.node_addr())
        await conn.send(b"hello")
        inc = await server.listen().accept()
        assert await inc.recv() == b"hello"
        return Rig(sim, server, client, conn, inc, _initials(), errors)

    rig = sim.run(setup())
    yield rig

    async def teardown() -> None:
        await rig.client.close(timeout=0.5)
        await rig.server.close(timeout=0.5)

    try:
        sim.run(teardown())
    finally:
        logging.getLogger("asgi_p2p").removeHandler(errors)
        sim.close()


@st.composite
def datagrams(draw: st.DrawFn, cids: list[bytes], initials: list[bytes]) -> bytes:
    kind = draw(st.sampled_from(["random", "initial", "short", "disco"]))
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=1500))
    if kind == "short":  # a 1-RTT header naming a live connection id, then junk
        first = draw(st.integers(0x40, 0x7F))
        return bytes([first]) + draw(st.sampled_from(cids)) + draw(st.binary(min_size=0, max_size=1200))
    if kind == "disco":
        return DISCO_MAGIC + draw(st.binary(max_size=200))
    data = bytearray(draw(st.sampled_from(initials)))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= 1 << draw(st.integers(0, 7))
    cut = draw(st.sampled_from(["none", "truncate", "tail"]))
    if cut == "truncate":
        del data[draw(st.integers(1, len(data) - 1)) :]
    elif cut == "tail":
        data += draw(st.binary(min_size=1, max_size=100))
    return bytes(data)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_datagram_leaves_the_endpoint_working_and_bounded(rig: Rig, data: st.DataObject) -> None:
    server = rig.server
    cids = list(server._cids)  # the connection ids the server answers to
    batch = data.draw(st.lists(datagrams(cids, rig.initials), min_size=1, max_size=40), label="datagrams")
    rig.round += 1

    async def example() -> None:
        before = server.dropped_datagrams
        for datagram in batch:
            server.router.datagram_received(datagram, FROM)  # as if from the socket
        await asyncio.sleep(0.1)
        created = len(server._connections)
        assert created <= 1 + len(batch)  # at most one connection per datagram
        assert server.dropped_datagrams >= before
        # the established connection is untouched
        await rig.conn.send(b"round %d" % rig.round)
        assert await rig.inc.recv() == b"round %d" % rig.round
        # every connection a fuzzed datagram created is gone after the handshake and idle timeouts
        await asyncio.sleep(CONFIG.connect_timeout + CONFIG.idle_timeout + 5)
        assert len(server._connections) == 1, server._connections
        assert server.connections == [rig.inc.peer_connection]

    rig.sim.run(example())
    assert rig.errors.records == [], [r.getMessage() for r in rig.errors.records]


def test_a_new_peer_connects_after_the_fuzzing(rig: Rig) -> None:
    async def main() -> None:
        other = await Node.bind(host="0.0.0.0", port=4433, config=CONFIG, network=rig.sim.host("late"))
        try:
            conn = await other.connect(rig.server.node_addr())
            await conn.send(b"still accepting")
            assert await (await rig.server.listen().accept()).recv() == b"still accepting"
        finally:
            await other.close(timeout=0.5)

    rig.sim.run(main())
