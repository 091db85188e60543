"""The relay path is usable for a full-size packet, or the relay client says why (issue 12).

On the simulator, three public hosts: a relay, alice and bob, whose direct path
is cut (so alice is reachable only through the relay).  A relay client reports
itself connected only while its relay connection carries a 1200-byte QUIC packet
plus the relay's overhead (1264-byte datagrams); lost size probes are retried
within seconds, not minutes; a dial through the relay works whatever either
node's ``max_datagram_size``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from asgi_p2p import NetworkConfig, Node, NodeAddr, SecretKey
from asgi_p2p.errors import Timeout
from asgi_p2p.net.base import Address
from asgi_p2p.paths.disco import is_disco
from asgi_p2p.relay.client import FULL_PACKET_SIZE
from asgi_p2p.relay.server import RELAY_DATAGRAM_SIZE, RelayServer
from asgi_p2p.sim import Host, Simulation

BIG = NetworkConfig(max_datagram_size=1452)


async def _bind(name: str, host: Host, url: str, config: NetworkConfig | None = None) -> Node:
    return await Node.bind(
        SecretKey.from_seed(name),
        host="0.0.0.0",
        port=4433,
        config=config or NetworkConfig(),
        network=host,
        rng=random.Random(name),
        relay_url=url,
    )


class _Nodes:
    def __init__(self, sim: Simulation, relay: RelayServer, hosts: dict[str, Host]) -> None:
        self.sim = sim
        self.relay = relay
        self.url = str(relay.url)
        self.hosts = hosts
        self.nodes: list[Node] = []

    async def node(self, name: str, config: NetworkConfig | None = None) -> Node:
        node = await _bind(name, self.hosts[name], self.url, config)
        self.nodes.append(node)
        return node


def _run(
    scenario: Callable[[_Nodes], Awaitable[Any]],
    *,
    seed: int = 1,
    loss: float = 0.0,
    time_limit: float = 300,
    relay_config: NetworkConfig | None = None,
) -> Any:
    sim = Simulation(seed=seed, mtu=1500, latency=0.02, loss=loss)
    with sim:
        relay_host = sim.host("relay")
        hosts = {name: sim.host(name) for name in ("alice", "bob")}

        async def main() -> Any:
            relay = await RelayServer.bind(
                SecretKey.from_seed("relay"), host="0.0.0.0", port=3478, network=relay_host, config=relay_config
            )
            nodes = _Nodes(sim, relay, hosts)
            try:
                return await scenario(nodes)
            finally:
                for node in nodes.nodes:
                    await node.close(timeout=0.5)
                await relay.close(timeout=0.5)

        return sim.run(main(), time_limit=time_limit)


def _drop_size_probes(node: Node, count: int) -> list[float]:
    """Lose ``node``'s next ``count`` outgoing size probes (disco datagrams above 1200 bytes).

    Returns the list the send time of every size probe (lost or not) is appended to.
    """
    router = node.router
    send = router.sendto
    loop = asyncio.get_running_loop()
    sent: list[float] = []
    left = [count]

    def sendto(data: bytes, addr: Address) -> None:
        if len(data) > 1200 and is_disco(data):  # (not a relay data plane datagram, also 0x00...)
            sent.append(loop.time())
            if left[0] > 0:
                left[0] -= 1
                return
        send(data, addr)

    router.sendto = sendto
    return sent


def _drop_padded_initials(node: Node, count: int) -> list[int]:
    """Lose ``node``'s next ``count`` long-header QUIC datagrams above 1200 bytes (padded Initials).

    Returns the sizes of every long-header datagram it sends (lost or not)."""
    router = node.router
    send = router.sendto
    sizes: list[int] = []
    left = [count]

    def sendto(data: bytes, addr: Address) -> None:
        if data[0] & 0x80:
            sizes.append(len(data))
            if len(data) > 1200 and left[0] > 0:
                left[0] -= 1
                return
        send(data, addr)

    router.sendto = sendto
    return sizes


async def _exchange(dialer: Node, acceptor: Node, url: str, payload: bytes, timeout: float = 10) -> None:
    """``dialer`` dials ``acceptor`` knowing only its node id and relay; ``payload`` goes both ways."""
    conn = await dialer.connect(NodeAddr(acceptor.node_id, relay_url=url))
    inc = await asyncio.wait_for(acceptor.listen().accept(), timeout)
    await conn.send(payload)
    assert await asyncio.wait_for(inc.recv(), timeout) == payload
    await inc.send(payload[::-1])
    assert await asyncio.wait_for(conn.recv(), timeout) == payload[::-1]


def test_lost_size_probes_keep_the_relay_unused_and_are_retried_within_seconds() -> None:
    """The first three searches lose their probes: connected ~10 s later (was 1136-byte packets for 120 s).

    (The padded handshake is lost too, so that the size is searched after it.)
    """

    async def scenario(n: _Nodes) -> None:
        loop = asyncio.get_running_loop()
        n.sim.partition("alice", "bob")  # alice is reachable through the relay only
        alice = await n.node("alice")
        _drop_padded_initials(alice, 1)
        probes = _drop_size_probes(alice, 9)
        started = loop.time()
        relay = alice.relay
        assert relay is not None
        with pytest.raises(Timeout, match=r"1200-byte datagrams .*needs 1264"):
            await relay.wait_connected(5)
        assert not relay.connected and relay.max_packet_size == 0
        assert relay.stats.connects == 1  # the relay connection is up, just not usable
        assert "1264" in str(relay.last_failure)
        await relay.wait_connected(15)
        took = loop.time() - started
        assert relay.max_packet_size >= FULL_PACKET_SIZE
        # three searches of three lost probes, retried after 1, 2 and 4 s: not 120 s
        assert 7.0 < took < 12.0
        before = [t for t in probes if t < started + took]  # (the next size goes out as it connects)
        assert len(before) == 10 and before[-1] - before[0] < 11.0  # nine lost, the tenth answered
        bob = await n.node("bob")
        assert bob.relay is not None
        await bob.relay.wait_connected(10)
        await _exchange(bob, alice, n.url, b"full size " * 300)

    _run(scenario)


@pytest.mark.parametrize("seed", range(1, 9))
def test_lossy_link_to_the_relay_connected_means_full_size_within_bounded_time(seed: int) -> None:
    """30% loss both ways on alice's link to the relay: connected always carries a full packet."""

    async def scenario(n: _Nodes) -> float:
        loop = asyncio.get_running_loop()
        n.sim.partition("alice", "bob")
        n.sim.link("alice", "relay", loss=0.3)
        alice = await n.node("alice")
        assert alice.relay is not None
        started = loop.time()
        await alice.relay.wait_connected(30)
        assert alice.relay.max_packet_size >= FULL_PACKET_SIZE  # never connected below full size
        return loop.time() - started

    took = _run(scenario, seed=seed)
    assert took < 20.0


@pytest.mark.parametrize("seed", range(1, 7))
def test_after_a_partition_heals_the_node_is_reachable_by_relay_within_10s(seed: int) -> None:
    """Alice is cut from the relay for 20 s (20% loss on her link): back within 10 s of the heal (was ~100 s)."""

    async def scenario(n: _Nodes) -> None:
        loop = asyncio.get_running_loop()
        sim = n.sim
        sim.partition("alice", "bob")
        sim.link("alice", "relay", loss=0.2)
        alice, bob = await n.node("alice"), await n.node("bob")
        assert alice.relay is not None and bob.relay is not None
        await alice.relay.wait_connected(30)
        await bob.relay.wait_connected(30)
        await asyncio.sleep(5)
        sim.partition("alice", "relay")
        await asyncio.sleep(20)
        sim.heal("alice", "relay")
        healed = loop.time()
        await alice.relay.wait_connected(10)
        assert alice.relay.max_packet_size >= FULL_PACKET_SIZE
        # a dial through the lossy link may lose a whole handshake: one retry
        for attempt in range(2):
            try:
                await _exchange(bob, alice, n.url, b"after the heal", timeout=5)
                break
            except Exception:
                if attempt:
                    raise
        assert loop.time() - healed < 20.0

    _run(scenario, seed=seed, time_limit=400)


def test_a_relay_connection_that_shrinks_is_unused_until_it_grows_back() -> None:
    """A short outage: lost packets shrink the relay connection; it is back in use soon after."""

    async def scenario(n: _Nodes) -> None:
        loop = asyncio.get_running_loop()
        sim = n.sim
        sim.partition("alice", "bob")
        alice, bob = await n.node("alice"), await n.node("bob")
        relay = alice.relay
        assert relay is not None and bob.relay is not None
        await relay.wait_connected(10)
        await bob.relay.wait_connected(10)
        states: list[bool] = []
        alice.on_node_addr_change(lambda _addr: states.append(relay.connected))
        conn_b = await bob.connect(NodeAddr(alice.node_id, relay_url=n.url))
        inc = await asyncio.wait_for(alice.listen().accept(), 10)
        await conn_b.send(b"before")
        assert await asyncio.wait_for(inc.recv(), 10) == b"before"
        sim.partition("alice", "relay")
        conn = relay.connection
        assert conn is not None
        conn.quic.send_ping(99)  # traffic in flight: its probe timeouts show the loss
        conn.transmit()
        await asyncio.sleep(8)  # less than the keepalive timeout: the same relay connection
        assert not relay.connected and relay.stats.shrunk == 1 and relay.stats.disconnects == 0
        assert "needs 1264" in str(relay.last_failure)
        sim.heal("alice", "relay")
        healed = loop.time()
        await relay.wait_connected(10)
        assert loop.time() - healed < 6.0
        assert relay.stats.connects == 1  # the same connection, grown back
        assert relay.max_packet_size >= FULL_PACKET_SIZE
        assert False in states and states[-1] is True  # the node told its callbacks both times
        await inc.send(b"after")  # the same end-to-end connection, through the relay again
        assert await asyncio.wait_for(conn_b.recv(), 10) == b"after"

    _run(scenario)


@pytest.mark.parametrize(
    ("dialer_big", "acceptor_big"),
    [(True, False), (False, True), (True, True)],
    ids=["big-dialer", "big-acceptor", "both-big"],
)
def test_a_dial_through_the_relay_works_whatever_max_datagram_size(dialer_big: bool, acceptor_big: bool) -> None:
    """A node building 1452-byte datagrams and one whose relay connection carries only 1200-byte packets."""

    async def scenario(n: _Nodes) -> None:
        n.sim.partition("alice", "bob")
        # bob's relay connection stays at exactly a full-size packet: it probes nothing larger
        small = NetworkConfig(max_probe_datagram_size=0)
        bob = await n.node("bob", BIG if acceptor_big else small)
        alice = await n.node("alice", BIG if dialer_big else None)
        assert alice.relay is not None and bob.relay is not None
        await alice.relay.wait_connected(10)
        await bob.relay.wait_connected(10)
        if not acceptor_big:
            assert bob.relay.max_packet_size == FULL_PACKET_SIZE  # 1264-byte datagrams: no more
            connection = bob.relay.connection
            assert connection is not None and connection.datagram_size == RELAY_DATAGRAM_SIZE
        await _exchange(alice, bob, n.url, bytes(range(256)) * 200)  # 51 KB each way
        (conn,) = [c for c in alice.connections if c.remote_node_id == bob.node_id]
        assert conn.path.kind == "relay"
        assert alice.relay.stats.dropped_too_large == 0  # nothing built larger than our relay carries

    _run(scenario)


class _Log(logging.Handler):
    """The messages of the ``asgi_p2p`` loggers at INFO and above while in a ``with`` block."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self._logger = logging.getLogger("asgi_p2p")
        self._level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.messages)

    def __enter__(self) -> _Log:
        self._logger.addHandler(self)
        self._logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)


def test_a_padded_handshake_makes_the_relay_usable_without_a_size_probe() -> None:
    """Issue 11: the relay handshake's datagrams are 1264 bytes both ways, so it proves the size.

    The relay connection is usable (connected, full-size packets fit) as soon as the handshake
    is confirmed (two round trips, 80 ms here), with no size probe: here every size probe is
    lost, which before kept it unusable until a retry (at least 250 ms more per lost probe).
    """

    async def scenario(n: _Nodes) -> None:
        loop = asyncio.get_running_loop()
        n.sim.partition("alice", "bob")
        started = loop.time()
        alice = await n.node("alice")
        probes = _drop_size_probes(alice, 1000)
        initials = _drop_padded_initials(alice, 0)
        relay = alice.relay
        assert relay is not None
        await relay.wait_connected(5)
        took = loop.time() - started
        assert took == pytest.approx(0.08, abs=0.005)  # the handshake, confirmed
        assert probes  # (every size probe was lost: the background search above 1264 goes on)
        assert initials[0] == RELAY_DATAGRAM_SIZE  # the padded Initial
        conn = relay.connection
        assert conn is not None and conn.handshake_datagram_size == RELAY_DATAGRAM_SIZE
        assert not conn.pad_fallback and relay.max_packet_size >= FULL_PACKET_SIZE
        bob = await n.node("bob")
        assert bob.relay is not None
        await bob.relay.wait_connected(5)
        await _exchange(bob, alice, n.url, b"full size " * 300)  # full-size packets both ways
        assert relay.connected and relay.stats.shrunk == 0  # no size probe was ever answered

    with _Log() as log:
        _run(scenario)
    assert "no answer to our" not in log.text


def test_a_path_that_drops_the_padded_initial_still_connects_and_says_why() -> None:
    """A 1280-byte MTU to the relay (1252-byte datagrams): the padded Initial is lost.

    The handshake goes on with 1200-byte datagrams 150 ms after the first Initial (not at
    QUIC's probe timeout, and the relay answers at the size the Initial came in), completes
    one round trip later, and the relay client says why it is not usable (the path does not
    carry a full-size relayed packet); once the path carries it, the size search finds it.
    """

    log = _Log()

    async def scenario(n: _Nodes) -> None:
        loop = asyncio.get_running_loop()
        sim = n.sim
        sim.partition("alice", "bob")
        sim.link("alice", "relay", mtu=1280)
        started = loop.time()
        alice = await n.node("alice")
        relay = alice.relay
        assert relay is not None
        with pytest.raises(Timeout, match=r"1200-byte datagrams .*needs 1264"):
            await relay.wait_connected(3)
        assert relay.stats.connects == 1 and not relay.connected
        (conn,) = [c for c in alice.connections if c.remote_node_id == n.relay.node_id]
        assert conn.pad_fallback and conn.handshake_datagram_size is None
        # the fallback 150 ms after the first Initial, then the handshake at 1200 bytes (confirmed:
        # HANDSHAKE_DONE, two round trips of 40 ms)
        assert conn.established_at is not None and conn.established_at - started <= 0.15 + 0.08 + 0.01
        assert "no answer to our 1264-byte Initial within 150 ms; handshaking with 1200-byte datagrams" in log.text
        sim.link("alice", "relay", mtu=1500)  # the path carries full-size packets again
        fixed = loop.time()
        await relay.wait_connected(20)
        assert loop.time() - fixed < 16.0  # the search's backoff is at most 15 s
        assert relay.max_packet_size >= FULL_PACKET_SIZE

    with log:
        _run(scenario)


def test_a_relay_that_does_not_pad_back_leaves_the_size_to_the_search() -> None:
    """A relay building 1200-byte datagrams (an old or misconfigured one): the handshake proves
    only our direction, so the 1264-byte size is searched after it (a probe after the Finished), as before."""

    async def scenario(n: _Nodes) -> None:
        loop = asyncio.get_running_loop()
        n.sim.partition("alice", "bob")
        started = loop.time()
        alice = await n.node("alice")
        probes = _drop_size_probes(alice, 0)
        relay = alice.relay
        assert relay is not None
        await relay.wait_connected(5)
        took = loop.time() - started
        assert took == pytest.approx(0.08, abs=0.005)  # handshake + size probe
        assert len([t for t in probes if t < started + took]) == 1  # the probe the handshake did not spare
        conn = relay.connection
        assert conn is not None and conn.handshake_datagram_size is None and not conn.pad_fallback

    _run(scenario, relay_config=NetworkConfig(max_datagram_size=1200))
