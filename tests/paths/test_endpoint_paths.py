"""The endpoint's paths layer with an in-memory relay: relay first, hole punching, fallback.

The relay here is a fake :class:`~asgi_p2p.paths.link.RelayLink` (a hub that
hands packets between endpoints after a virtual-time delay), so these tests
check the endpoint's side of the seam only; the direct path runs over the
simulated network, where partitions cut it.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from asgi_p2p import Endpoint, MessageConnection, NetworkConfig, Node, NodeAddr, SecretKey
from asgi_p2p.endpoint.connection import PathEvent, PeerConnection
from asgi_p2p.errors import NodeNotFound, P2PError, Timeout
from asgi_p2p.identity import NodeId
from asgi_p2p.net.base import Address
from asgi_p2p.paths.disco import CallMeMaybe, seal
from asgi_p2p.paths.link import RefusalReason, RelayRefusal, RelaySink
from asgi_p2p.sim import Host, Simulation

URL = "fake-relay://hub"


class FakeRelayHub:
    """Forwards packets and signals between the links of registered endpoints."""

    def __init__(self, latency: float = 0.03) -> None:
        self.latency = latency
        self.links: dict[NodeId, FakeRelayLink] = {}
        self.packets = 0
        self.signals: list[tuple[NodeId, NodeId, bytes]] = []
        self.up = True
        #: the public address every link reports (OBSERVED_ADDR)
        self.observed: Address | None = None

    def factory(self, endpoint: Endpoint, relay_url: str, sink: RelaySink, *, rng: random.Random) -> FakeRelayLink:
        return FakeRelayLink(self, endpoint, relay_url, sink)

    def deliver(self, src: NodeId, dest: NodeId, data: bytes, signal: bool) -> bool:
        if not self.up:
            return False
        link = self.links.get(dest)
        if link is None:
            return False
        loop = asyncio.get_running_loop()
        if signal:
            self.signals.append((src, dest, data))
            loop.call_later(self.latency, link.sink.relay_signal_received, src, data)
        else:
            self.packets += 1
            loop.call_later(self.latency, link.sink.relay_packet_received, src, data)
        return True


class FakeRelayLink:
    def __init__(self, hub: FakeRelayHub, endpoint: Endpoint, url: str, sink: RelaySink) -> None:
        self.hub, self.endpoint, self.url, self.sink = hub, endpoint, url, sink
        self.started = False

    @property
    def relay_url(self) -> str:
        return self.url

    @property
    def connected(self) -> bool:
        return self.started and self.hub.up

    @property
    def can_send(self) -> bool:
        return self.connected

    @property
    def takes_first_contact(self) -> bool:
        return False

    @property
    def max_packet_size(self) -> int:
        return 65000 if self.connected else 0

    @property
    def observed_address(self) -> Address | None:
        return self.hub.observed

    @property
    def max_probe_packet_size(self) -> int:
        return min(self.max_packet_size, 1200)

    @property
    def last_failure(self) -> P2PError | None:
        return None if self.connected else P2PError("fake relay is down")

    def send_packet(self, dest: NodeId, packet: bytes) -> bool:
        return self.connected and self.hub.deliver(self.endpoint.node_id, dest, packet, signal=False)

    def send_signal(self, dest: NodeId, payload: bytes) -> bool:
        return self.connected and self.hub.deliver(self.endpoint.node_id, dest, payload, signal=True)

    def start(self) -> None:
        self.started = True
        self.hub.links[self.endpoint.node_id] = self
        asyncio.get_running_loop().call_soon(self.sink.relay_state_changed, self)

    async def wait_connected(self, timeout: float | None = None) -> None:
        if not self.connected:
            raise Timeout("fake relay is down")

    async def wait_can_send(self, timeout: float | None = None) -> None:
        await self.wait_connected(timeout)

    async def close(self) -> None:
        self.started = False
        self.hub.links.pop(self.endpoint.node_id, None)


async def _bind(name: str, host: Host, hub: FakeRelayHub, **kwargs: Any) -> Endpoint:
    return await Node.bind(
        SecretKey.from_seed(name),
        host="0.0.0.0",
        port=4433,
        config=kwargs.pop("config", NetworkConfig()),
        network=host,
        rng=random.Random(name),
        relay_url=URL,
        relay_factory=hub.factory,
        **kwargs,
    )


def _quic(ep: Endpoint) -> PeerConnection:
    (conn,) = [c for c in ep.connections if not c.is_relay_connection]
    return conn


async def _echo(conn: MessageConnection, inc: MessageConnection, payload: bytes) -> None:
    await conn.send(payload)
    assert await inc.recv() == payload


async def _until(conn: PeerConnection, kind: str, timeout: float) -> list[PathEvent]:
    """Wait (virtual time) until ``conn``'s path is of ``kind``; returns the events seen."""
    seen: list[PathEvent] = []
    events = conn.path_events()
    if conn.path.kind == kind:
        return seen

    async def watch() -> None:
        async for event in events:
            seen.append(event)
            if event.path.kind == kind:
                return

    await asyncio.wait_for(watch(), timeout)
    return seen


def _topology(sim: Simulation, mtu: int = 1500) -> tuple[Host, Host]:
    a, b = sim.host("alice"), sim.host("bob")
    sim.link(a, b, latency=0.005, loss=0.0, mtu=mtu)
    return a, b


def test_relay_only_address_works_at_once_then_goes_direct(sim: Simulation) -> None:
    a, b = _topology(sim)
    hub = FakeRelayHub()

    async def main() -> None:
        ea, eb = await _bind("alice", a, hub), await _bind("bob", b, hub)
        assert ea.node_addr().relay_url == URL
        conn = await eb.connect(NodeAddr(ea.node_id, relay_url=URL))  # no direct address at all
        qb = _quic(eb)
        assert qb.path.kind == "relay"
        t0 = asyncio.get_running_loop().time()
        inc = await ea.listen().accept()
        await _echo(conn, inc, b"first request, through the relay")
        assert hub.packets > 0 and asyncio.get_running_loop().time() - t0 < 1.0
        # CALL_ME_MAYBE went both ways through the relay; the probes open the direct path
        events = await _until(qb, "direct", timeout=5)
        assert any(e.path.kind == "direct" for e in events) or qb.path.kind == "direct"
        assert qb.path.addr == ea.local_address and qb.path.rtt is not None
        await _until(_quic(ea), "direct", timeout=1)  # alice's own probes answered too
        assert any(dst == ea.node_id for _src, dst, _p in hub.signals)  # CALL_ME_MAYBE to alice
        relayed = hub.packets
        await asyncio.sleep(1)  # sizes grow on the direct path (mtu 1500: 1452)
        await _echo(conn, inc, b"x" * 300_000)
        assert hub.packets - relayed < 10  # bulk went direct
        assert qb.datagram_size == 1452
        await eb.close()
        await ea.close()

    sim.run(main())


def test_direct_path_cut_falls_back_to_relay_and_comes_back(sim: Simulation) -> None:
    a, b = _topology(sim, mtu=65535)
    hub = FakeRelayHub()

    async def main() -> None:
        ea, eb = await _bind("alice", a, hub), await _bind("bob", b, hub)
        conn = await eb.connect(ea.node_addr())  # direct address and relay
        inc = await ea.listen().accept()
        await _echo(conn, inc, b"hello")
        qb = _quic(eb)
        await _until(qb, "direct", timeout=5)
        await _echo(conn, inc, b"w" * 200_000)  # bulk data starts the size search
        await asyncio.sleep(1)
        assert qb.datagram_size == 16384
        sim.partition(a, b)  # the direct path dies mid-transfer
        cut_at = asyncio.get_running_loop().time()
        payload = b"y" * 400_000
        send = asyncio.create_task(conn.send(payload))
        events = await _until(qb, "relay", timeout=20)
        # QUIC's probe timeouts made the paths layer check the path at once: no need to
        # wait out the 15 s path timeout of keepalive pings
        assert asyncio.get_running_loop().time() - cut_at < 5
        assert qb.path.kind == "relay"
        assert qb.datagram_size == 1200  # relayed packets ride in the relay's DATAGRAM frames
        assert any(e.path.kind == "relay" for e in events)
        assert await asyncio.wait_for(inc.recv(), 30) == payload  # the connection survived
        await send
        assert qb.is_connected and qb.close_error is None
        sim.heal()
        await _until(qb, "direct", timeout=40)  # re-probed while on the relay
        await _echo(conn, inc, b"direct again")
        await eb.close()
        await ea.close()

    sim.run(main(), time_limit=200)


def test_forged_and_replayed_signals_are_ignored(sim: Simulation) -> None:
    a, b = _topology(sim)
    hub = FakeRelayHub()
    mallory = SecretKey.from_seed("mallory")

    async def main() -> None:
        ea, eb = await _bind("alice", a, hub), await _bind("bob", b, hub)
        conn = await eb.connect(NodeAddr(ea.node_id, relay_url=URL))
        inc = await ea.listen().accept()
        await _echo(conn, inc, b"hello")
        qa = _quic(ea)
        await _until(qa, "direct", timeout=5)
        peer = ea.peer_paths(eb.node_id)
        assert peer is not None
        before = dict(peer.prober.rejected)
        # replay every signal bob sent alice, as if the relay forwarded them again
        captured = [p for src, dst, p in hub.signals if src == eb.node_id and dst == ea.node_id]
        assert captured
        for payload in captured:
            ea.router.relay_signal_received(eb.node_id, payload)
        # a CALL_ME_MAYBE "from bob" naming Mallory's address, signed by Mallory
        forged = bytearray(seal(CallMeMaybe((("10.66.66.66", 666),)), mallory, ea.node_id, 1e9))
        forged[7:39] = eb.node_id.to_bytes()
        ea.router.relay_signal_received(eb.node_id, bytes(forged))
        # a genuine-looking signal from a node without a connection, and one whose relay
        # source does not match its sender
        ea.router.relay_signal_received(mallory.node_id, seal(CallMeMaybe(()), mallory, ea.node_id, 1e9))
        await asyncio.sleep(0)  # (signals are handled in the next loop pass)
        dropped = ea.dropped_disco
        ea.router.relay_signal_received(mallory.node_id, captured[0])
        await asyncio.sleep(0)  # (signals are handled in the next loop pass)
        assert ea.dropped_disco == dropped + 1
        await asyncio.sleep(2)
        after = peer.prober.rejected
        assert after["replay"] - before.get("replay", 0) == len(captured)
        assert after["DiscoAuthError"] - before.get("DiscoAuthError", 0) == 1
        assert ("10.66.66.66", 666) not in peer.prober.paths()
        assert qa.path.kind == "direct" and qa.path.addr == eb.local_address
        await _echo(conn, inc, b"still fine")
        await eb.close()
        await ea.close()

    sim.run(main())


def test_relay_only_address_needs_a_common_relay(sim: Simulation) -> None:
    a, _b = _topology(sim)

    async def main() -> None:
        ea = await Node.bind(SecretKey.from_seed("alice"), network=a, port=4433, rng=random.Random(1))
        other = SecretKey.from_seed("bob").node_id
        with pytest.raises(NodeNotFound, match="only reachable through relay"):
            await ea.connect(NodeAddr(other, relay_url=URL))
        assert ea.node_addr().relay_url is None
        await ea.close()

    sim.run(main())


def test_path_events_are_bounded_and_callbacks_see_every_change(sim: Simulation) -> None:
    a, b = _topology(sim, mtu=65535)
    hub = FakeRelayHub()

    async def main() -> None:
        ea, eb = await _bind("alice", a, hub), await _bind("bob", b, hub)
        conn = await eb.connect(NodeAddr(ea.node_id, relay_url=URL))
        inc = await ea.listen().accept()
        qb = _quic(eb)
        seen: list[PathEvent] = []
        qb.on_path_change.append(seen.append)
        slow = qb.path_events(maxlen=2)  # never read until the end: keeps only the last two
        await _echo(conn, inc, b"v" * 300_000)
        await _until(qb, "direct", timeout=5)
        await _echo(conn, inc, b"v" * 300_000)
        await asyncio.sleep(2)
        assert qb.datagram_size == 16384
        assert [e.path.kind for e in seen][:1] == ["direct"]
        assert [e.datagram_size for e in seen][-1] == 16384
        assert len(seen) > 2
        await eb.close()
        got = [e async for e in slow]  # ends when the connection closes
        assert got == seen[-2:]
        await ea.close()

    sim.run(main())


def test_node_addr_change_callbacks_follow_the_relay(sim: Simulation) -> None:
    a, _b = _topology(sim)
    hub = FakeRelayHub()

    async def main() -> None:
        ea = await _bind("alice", a, hub)
        seen: list[NodeAddr] = []
        remove = ea.on_node_addr_change(seen.append)
        await asyncio.sleep(0.01)  # the fake relay reports "connected" on the next loop turn
        assert seen and seen[-1] == ea.node_addr() and seen[-1].relay_url == URL
        count = len(seen)
        assert ea.relay is not None
        hub.up = False
        ea.router.relay_state_changed(ea.relay)  # the relay went away: the callback hears it
        assert len(seen) == count + 1
        remove()
        hub.up = True
        ea.router.relay_state_changed(ea.relay)
        assert len(seen) == count + 1  # removed
        await ea.close()

    sim.run(main())


def test_public_address_comes_before_lan_addresses(sim: Simulation) -> None:
    a, _b = _topology(sim)
    hub = FakeRelayHub()

    async def main() -> None:
        ea = await _bind("alice", a, hub)
        hub.observed = ("198.51.100.7", 40000)
        # the public address first: a dialer tries it first; the LAN address after it
        assert ea.own_candidates() == [hub.observed, (a.address, 4433)]
        assert ea.node_addr().direct_addresses[0] == hub.observed
        await ea.close()

    sim.run(main())


def test_relay_too_large_shrinks_the_relayed_connection(sim: Simulation) -> None:
    """The peer's relay connection carries less than ours: the relay says so, we send smaller packets."""
    a, b = _topology(sim)
    hub = FakeRelayHub()

    async def main() -> None:
        ea, eb = await _bind("alice", a, hub), await _bind("bob", b, hub)
        sim.partition(a, b)  # no direct path: the connection stays on the relay
        conn = await eb.connect(NodeAddr(ea.node_id, relay_url=URL))
        inc = await ea.listen().accept()
        qb = _quic(eb)
        assert qb.path.kind == "relay" and qb.datagram_size == 1200
        message = "1200-byte packet does not fit node x's datagram size 1170 (at most 1136 bytes)"
        eb.router.relay_refused(
            ea.node_id, RelayRefusal(RefusalReason.TOO_LARGE, message, fits=1136)
        )  # ERROR TOO_LARGE
        assert qb.datagram_size == 1136
        sizes: list[int] = []
        original = hub.deliver

        def deliver(src: NodeId, dest: NodeId, data: bytes, signal: bool) -> bool:
            if src == eb.node_id and not signal:
                sizes.append(len(data))
            return original(src, dest, data, signal)

        hub.deliver = deliver  # type: ignore[method-assign]
        await _echo(conn, inc, b"y" * 50_000)  # still carries everything, in smaller packets
        assert sizes and max(sizes) <= 1136
        await ea.close()
        await eb.close()

    sim.run(main())


def test_relay_refusals_act_by_reason_only(sim: Simulation) -> None:
    """What the endpoint does with a relay's refusal depends on its reason and fits, never on its words."""
    a, b = _topology(sim)
    hub = FakeRelayHub()

    async def main() -> None:
        ea, eb = await _bind("alice", a, hub), await _bind("bob", b, hub)
        sim.partition(a, b)  # the connection stays on the relay
        conn = await eb.connect(NodeAddr(ea.node_id, relay_url=URL))
        inc = await ea.listen().accept()
        qb = _quic(eb)
        peer = eb.peer_paths(ea.node_id)
        assert peer is not None and qb.path.kind == "relay" and qb.datagram_size == 1200
        at_most = "(at most 1000 bytes)"  # words that once meant something to the endpoint
        eb.router.relay_refused(ea.node_id, RelayRefusal(RefusalReason.TOO_LARGE, at_most))  # no size: nothing to learn
        eb.router.relay_refused(ea.node_id, RelayRefusal(RefusalReason.RATE_LIMITED, "too large " + at_most))
        eb.router.relay_refused(ea.node_id, RelayRefusal(RefusalReason.OTHER, "unknown destination"))
        eb.router.relay_refused(None, RelayRefusal(RefusalReason.SERVER_FULL, "relay is full"))
        eb.router.relay_refused(
            SecretKey.from_seed("stranger").node_id, RelayRefusal(RefusalReason.TOO_LARGE, "", 1000)
        )
        assert qb.datagram_size == 1200 and peer.relay_fit is None and not peer.not_on_relay
        eb.router.relay_refused(ea.node_id, RelayRefusal(RefusalReason.UNKNOWN_DESTINATION, "not connected"))
        assert peer.not_on_relay  # no signal will come through the relay: stop waiting for one
        assert eb.relay_errors == 6
        await _echo(conn, inc, b"still fine")
        await ea.close()
        await eb.close()

    sim.run(main())
