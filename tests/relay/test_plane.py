"""The relay's UDP data plane: tokens and datagrams without sockets, then the server and client
(on the simulator and real UDP 127.0.0.1: fixture ``net``)."""

from __future__ import annotations

import asyncio
import hashlib
import random

import pytest

from asgi_p2p import NetworkConfig, Node, SecretKey
from asgi_p2p.endpoint.endpoint import Endpoint
from asgi_p2p.errors import P2PError, ProtocolError
from asgi_p2p.identity import NodeAddr
from asgi_p2p.paths.disco import DISCO_MAGIC
from asgi_p2p.paths.router import Router
from asgi_p2p.relay.client import RelayClient
from asgi_p2p.relay.plane import (
    PLANE_MAGIC,
    PLANE_OVERHEAD,
    ClientPlane,
    PlaneDemux,
    PlaneTokens,
    client_demux,
    encode_plane,
    is_plane,
)
from asgi_p2p.relay.proto import (
    FORWARD_OVERHEAD,
    PLANE_TOKEN_SIZE,
    RELAY_DATAGRAM_SIZE,
    PlaneToken,
    RelayLimits,
    RelayRouter,
    Send,
    parse_frame,
)
from asgi_p2p.relay.server import relay_config
from tests.harness import Harness

from .rig import RelayTunnel, Rig

RELAY = SecretKey.from_seed("plane-relay")
A = SecretKey.from_seed("plane-a").node_id
B = SecretKey.from_seed("plane-b").node_id
BIG = NetworkConfig(max_datagram_size=1452)


# -- without sockets ------------------------------------------------------------------


def test_the_wire_form() -> None:
    datagram = encode_plane(b"T" * 8, B, b"packet")
    assert datagram == b"\x00P2PR" + b"T" * 8 + B.to_bytes() + b"packet"
    assert PLANE_OVERHEAD == 45 == len(datagram) - len(b"packet")
    assert is_plane(datagram) and not is_plane(DISCO_MAGIC + bytes(40))
    # a full-size relayed QUIC packet fits the datagrams the padded relay handshake proves
    assert 1200 + PLANE_OVERHEAD <= RELAY_DATAGRAM_SIZE
    # whatever fits a SEND frame in a relay connection's QUIC packet fits a plane datagram
    assert PLANE_OVERHEAD <= FORWARD_OVERHEAD + (RELAY_DATAGRAM_SIZE - 1200 - FORWARD_OVERHEAD)


def test_plane_token_frame() -> None:
    frame = PlaneToken(b"12345678")
    assert frame.encode() == b"\x01\x06\x01" + b"12345678"
    assert parse_frame(frame.encode()) == frame
    with pytest.raises(ProtocolError, match="plane version 2"):
        parse_frame(b"\x01\x06\x02" + b"12345678")
    with pytest.raises(ProtocolError, match="truncated while reading PLANE_TOKEN token"):
        parse_frame(b"\x01\x06\x01" + b"1234567")
    with pytest.raises(ProtocolError, match="trailing"):
        parse_frame(b"\x01\x06\x01" + b"123456789")
    with pytest.raises(ValueError, match="8 bytes"):
        PlaneToken(b"short")


def test_tokens_are_per_connection_and_per_relay_process() -> None:
    first = PlaneTokens[str](RELAY, random.Random(1))
    t1, t2 = first.issue(A, "a-conn-1"), first.issue(A, "a-conn-2")
    restarted = PlaneTokens[str](RELAY, random.Random(2))  # same key, a new process
    t3 = restarted.issue(A, "a-conn-3")
    assert len({t1, t2, t3}) == 3 and all(len(t) == 8 for t in (t1, t2, t3))
    # the old process's tokens are unknown to the new one: dropped, counted
    assert restarted.receive(encode_plane(t1, B, b"x")) is None
    assert restarted.stats.dropped_unknown_token == 1
    got = first.receive(encode_plane(t2, B, b"packet"))
    assert got is not None
    holder, dst, packet = got
    assert (holder, dst, bytes(packet)) == ("a-conn-2", B, b"packet")
    first.revoke(t2)
    assert first.receive(encode_plane(t2, B, b"packet")) is None and len(first) == 1


def test_forged_and_malformed_datagrams_are_dropped_allocating_nothing() -> None:
    tokens = PlaneTokens[str](RELAY, random.Random(1))
    token = tokens.issue(A, "a")
    rng = random.Random(9)
    for _ in range(1000):
        forged = rng.randbytes(8)
        assert forged != token
        assert tokens.receive(encode_plane(forged, B, b"junk")) is None
    assert tokens.receive(encode_plane(token, B, b"")) is None  # no packet
    assert tokens.receive(PLANE_MAGIC + token) is None
    assert tokens.stats.dropped_unknown_token == 1000 and tokens.stats.dropped_malformed == 2
    assert len(tokens) == 1


def test_client_plane_checks_its_token_and_confirms_on_the_hellos_answer() -> None:
    relay = RELAY.node_id
    plane = ClientPlane(b"mytoken!", ("192.0.2.1", 3478), relay)
    assert plane.wrap(B, b"p") == encode_plane(b"mytoken!", B, b"p") and plane.stats.sent == 1
    assert plane.hello() == encode_plane(b"mytoken!", relay, b"\x00") and plane.stats.hellos == 1
    assert plane.open(encode_plane(b"mytoken!", A, b"packet")) == (A, b"packet")
    assert plane.open(encode_plane(b"another!", A, b"packet")) is None
    assert plane.open(encode_plane(b"mytoken!", A, b"")) is None
    assert plane.open(encode_plane(b"another!", relay, b"\x00")) is None and not plane.confirmed  # forged
    assert plane.open(encode_plane(b"mytoken!", relay, b"\x00")) is None and plane.confirmed  # the answer
    assert (plane.stats.received, plane.stats.dropped_unknown_token, plane.stats.dropped_malformed) == (1, 2, 1)
    with pytest.raises(ValueError, match="8 bytes"):
        ClientPlane(b"short", ("192.0.2.1", 3478), relay)


def test_demux_accepts_plane_datagrams_only_from_the_relays_address() -> None:
    demux = PlaneDemux()
    got: list[bytes] = []
    demux.add(("192.0.2.1", 3478), got.append)
    demux.plane_datagram_received(b"from the relay", ("192.0.2.1", 3478))
    demux.plane_datagram_received(b"from elsewhere", ("192.0.2.9", 3478))
    demux.plane_datagram_received(b"other port", ("192.0.2.1", 3479))
    assert got == [b"from the relay"] and demux.dropped_wrong_address == 2
    demux.remove(("192.0.2.1", 3478), [].append)  # not its receiver: stays
    demux.plane_datagram_received(b"again", ("192.0.2.1", 3478))
    demux.remove(("192.0.2.1", 3478), got.append)
    demux.plane_datagram_received(b"gone", ("192.0.2.1", 3478))
    assert got == [b"from the relay", b"again"] and demux.dropped_wrong_address == 3


def test_the_socket_hands_plane_datagrams_to_the_registered_receiver() -> None:
    delivered: list[bytes] = []
    router = Router(
        SecretKey.from_seed("r"),
        NetworkConfig(),
        random.Random(1),
        deliver=lambda data, addr: delivered.append(data),
        deliver_relayed=lambda data, node: None,
    )
    router.datagram_received(PLANE_MAGIC + bytes(50), ("192.0.2.1", 1))
    assert delivered == [PLANE_MAGIC + bytes(50)]  # no receiver: QUIC gets it (and drops it)
    demux = client_demux(router)
    assert client_demux(router) is demux and router.plane is demux
    got: list[bytes] = []
    demux.add(("192.0.2.1", 1), got.append)
    router.datagram_received(PLANE_MAGIC + bytes(50), ("192.0.2.1", 1))
    router.datagram_received(b"\x40" + bytes(50), ("192.0.2.1", 1))  # QUIC short header
    assert got == [PLANE_MAGIC + bytes(50)] and delivered[-1] == b"\x40" + bytes(50)
    with pytest.raises(P2PError, match="another receiver"):
        router.use_plane(PLANE_MAGIC, PlaneDemux())
    for bad in (b"P2PR", DISCO_MAGIC, b"\x00"):
        with pytest.raises(ValueError, match="starts with 0x00"):
            router.use_plane(bad, demux)


def test_plane_packets_take_the_same_budget_as_send_frames() -> None:
    limits = RelayLimits(packets_per_second=10, packet_burst=3)
    frames, plane = RelayRouter(limits), RelayRouter(limits)
    for r in (frames, plane):
        r.register(A, 0.0, max_datagram_size=1264)
        r.register(B, 0.0, max_datagram_size=1264)
    for i in range(5):
        packet = b"p%d" % i
        assert frames.handle_datagram(A, Send(B, packet).encode(), 0.0) == plane.handle_packet(A, B, packet, 0.0)
    assert frames.stats == plane.stats and plane.stats.dropped_rate_limited == 2
    with pytest.raises(ProtocolError, match="empty packet"):
        plane.handle_packet(A, B, b"", 0.0)


# -- server and client ------------------------------------------------------------------


def run(net: Harness, scenario, *, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    async def main(h: Harness) -> None:
        rig = Rig(h)
        try:
            await scenario(rig)
        finally:
            await rig.aclose()

    net.run(main, timeout=timeout)


async def _until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``predicate()`` holds (the plane's token arrives without a sink callback)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def _two_clients(rig: Rig, relay):  # type: ignore[no-untyped-def]
    """Nodes a and b, each with a relay client connected to ``relay`` and a sink: (a, ca, sa), (b, cb, sb)."""
    a, ca, sa = await rig.client("a", relay)
    b, cb, sb = await rig.client("b", relay)
    await ca.wait_connected(10)
    await cb.wait_connected(10)
    return (a, ca, sa), (b, cb, sb)


async def _exchange(rig: Rig, relay, ca, sa, cb, sb, a, b, n: int = 5) -> None:  # type: ignore[no-untyped-def]
    """``n`` packets each way; returns once they all arrived."""
    want_a, want_b = len(sa.packets) + n, len(sb.packets) + n
    for i in range(n):
        assert ca.send_packet(b.node_id, b"a->b %d" % i)
        assert cb.send_packet(a.node_id, b"b->a %d" % i)
        await asyncio.sleep(0.01)
    await sb.wait_for(lambda: len(sb.packets) >= want_b)
    await sa.wait_for(lambda: len(sa.packets) >= want_a)


def test_clients_use_the_plane_after_registration(net: Harness) -> None:
    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        (a, ca, sa), (b, cb, sb) = await _two_clients(rig, relay)
        await _until(lambda: ca.on_plane)
        await _until(lambda: cb.on_plane)
        # on the plane, end-to-end connections may grow to what the relay connection carries
        assert ca.max_probe_packet_size == ca.max_packet_size >= 1200
        await _exchange(rig, relay, ca, sa, cb, sb, a, b, n=20)
        assert [p for _, p in sb.packets] == [b"a->b %d" % i for i in range(20)]
        assert {s for s, _ in sb.packets} == {a.node_id}
        stats = relay.plane_stats
        assert stats.received == 40 and stats.dropped_unknown_token == stats.dropped_wrong_address == 0
        # each client said hello on receiving its token: every packet went as a plane datagram
        assert stats.sent == 40 and stats.hellos >= 2
        assert relay.router_stats.forwarded_packets == 40
        pa, pb = ca.plane_stats, cb.plane_stats
        assert pa is not None and pb is not None
        assert pa.sent == pb.sent == 20 and pa.received == pb.received == 20 and pa.hellos >= 1
        assert ca.stats.packets_sent == 20 and cb.stats.packets_received == 20

    run(net, scenario)


def test_a_client_that_only_receives_gets_plane_datagrams(net: Harness) -> None:
    """b never sends a packet: its hello alone makes the relay send it plane datagrams."""

    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        (_a, ca, _sa), (b, cb, sb) = await _two_clients(rig, relay)
        await _until(lambda: relay.plane_stats.hellos >= 2)
        for i in range(10):
            assert ca.send_packet(b.node_id, b"one way %d" % i)
        await sb.wait_for(lambda: len(sb.packets) == 10)
        assert relay.plane_stats.sent == 10 and cb.plane_stats is not None and cb.plane_stats.received == 10
        assert cb.stats.packets_sent == 0

    run(net, scenario)


@pytest.mark.parametrize("net", ["sim"], indirect=True)
def test_a_network_that_drops_plane_datagrams_leaves_the_client_on_send_frames(net: Harness) -> None:
    """a's plane datagrams never reach the relay: no hello is answered, so a keeps sending SEND frames
    (saying hello again at most once a second), and its packets arrive."""

    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        a, ca, _sa = await rig.client("a", relay)
        b, cb, sb = await rig.client("b", relay)
        send = a.router.sendto
        dropped: list[bytes] = []

        def black_hole(data: bytes, addr: tuple[str, int]) -> None:
            if is_plane(data):
                dropped.append(data)
                return
            send(data, addr)

        a.router.sendto = black_hole  # type: ignore[method-assign]
        await ca.wait_connected(10)
        await cb.wait_connected(10)
        await _until(lambda: cb.on_plane)
        for i in range(30):  # 3 s of packets, 10 a second
            assert ca.send_packet(b.node_id, b"a %d" % i)
            await asyncio.sleep(0.1)
        await sb.wait_for(lambda: len(sb.packets) == 30)
        assert not ca.on_plane and relay.plane_stats.received == 0
        assert ca.plane_stats is not None and ca.plane_stats.sent == 0
        assert 3 <= ca.plane_stats.hellos == len(dropped) <= 6  # the first ones, then one a second
        assert relay.router_stats.forwarded_packets == 30

    run(net, scenario)


@pytest.mark.parametrize("net", ["sim"], indirect=True)
@pytest.mark.parametrize("how", ["argument", "config"])
@pytest.mark.parametrize("off", ["relay", "client"])
def test_the_plane_switched_off_keeps_datagram_frames(net: Harness, off: str, how: str) -> None:
    """A relay with the plane off (``RelayServer(plane=False)`` or ``relay_plane="off"``) offers
    none: both clients use SEND frames.  A client with it off (here b) ignores the relay's offer,
    as an older client does: it sends SEND frames and gets RECV frames, while a uses the plane
    towards it."""

    async def scenario(rig: Rig) -> None:
        if off == "relay":
            relay = await (
                rig.relay(plane=False) if how == "argument" else rig.relay(config=relay_config(64, relay_plane="off"))
            )
            assert not relay.offers_plane
        else:
            relay = await rig.relay()
            assert relay.offers_plane
        a, ca, sa = await rig.client("a", relay)
        if off == "client" and how == "argument":
            b, cb, sb = await rig.client("b", relay, plane=False)
        elif off == "client":
            b, cb, sb = await rig.client("b", relay, config=NetworkConfig(relay_plane="off"))
        else:
            b, cb, sb = await rig.client("b", relay)
        assert ca.plane_enabled and cb.plane_enabled == (off == "relay")
        await ca.wait_connected(10)
        await cb.wait_connected(10)
        if off == "client":
            await _until(lambda: ca.on_plane)
        await _exchange(rig, relay, ca, sa, cb, sb, a, b, n=10)
        await asyncio.sleep(3 * relay.check_interval)  # PLANE_TOKEN said again: still ignored
        await _exchange(rig, relay, ca, sa, cb, sb, a, b, n=10)
        assert cb.plane_stats is None and not cb.on_plane and cb.max_probe_packet_size == 1200
        if off == "relay":
            assert ca.plane_stats is None and relay.plane_stats.received == relay.plane_stats.sent == 0
        else:
            assert relay.plane_stats.received == 20 and relay.plane_stats.sent == 20  # a: both ways
            assert ca.plane_stats is not None and ca.plane_stats.received == 20
        assert relay.router_stats.forwarded_packets == 40

    run(net, scenario)


def _sent_tokens(ep: Endpoint) -> list[bytes]:
    """The plane tokens in the plane datagrams ``ep``'s socket sends from now on, in order."""
    tokens: list[bytes] = []
    send = ep.router.sendto

    def recording(data: bytes, addr: tuple[str, int]) -> None:
        if is_plane(data):
            tokens.append(bytes(data[len(PLANE_MAGIC) : len(PLANE_MAGIC) + PLANE_TOKEN_SIZE]))
        send(data, addr)

    ep.router.sendto = recording  # type: ignore[method-assign]
    return tokens


def test_forged_tokens_and_wrong_addresses_are_dropped_and_counted(net: Harness) -> None:
    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        (a, ca, sa), (b, cb, sb) = await _two_clients(rig, relay)
        tokens = _sent_tokens(a)
        await _until(lambda: ca.on_plane)
        await _exchange(rig, relay, ca, sa, cb, sb, a, b, n=2)
        token = tokens[-1]
        a_addr = relay.observed_addr(a.node_id)
        assert a_addr is not None
        tokens = len(relay.plane)
        received = relay.plane_stats.received
        inject = relay.endpoint.router.datagram_received  # what the relay's socket hands up
        inject(encode_plane(b"\x01" * 8, b.node_id, b"forged"), a_addr)
        inject(encode_plane(token[::-1], b.node_id, b"forged"), a_addr)
        inject(encode_plane(token, b.node_id, b"stolen token"), ("198.51.100.7", a_addr[1]))
        inject(PLANE_MAGIC + token + b.node_id.to_bytes(), a_addr)  # no packet
        stats = relay.plane_stats
        assert (stats.dropped_unknown_token, stats.dropped_wrong_address, stats.dropped_malformed) == (2, 1, 1)
        assert stats.received == received and len(relay.plane) == tokens
        # at the client: plane datagrams from anyone but the relay are dropped
        demux = client_demux(b.router)
        b.router.datagram_received(encode_plane(token, a.node_id, b"not the relay"), ("198.51.100.7", 3478))
        assert demux.dropped_wrong_address == 1
        await asyncio.sleep(0.2)
        assert len(sb.packets) == 2 and all(b"forged" not in p and b"stolen" not in p for _, p in sb.packets)

    run(net, scenario)


def test_a_relay_restart_kills_the_old_tokens_and_issues_new_ones(net: Harness) -> None:
    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        port = relay.endpoint.local_address[1]
        a, ca, sa = await rig.client("a", relay, rng=random.Random(7), reconnect_min=0.2, reconnect_max=2.0)
        b, cb, sb = await rig.client("b", relay, rng=random.Random(8), reconnect_min=0.2, reconnect_max=2.0)
        tokens = _sent_tokens(a)
        await ca.wait_connected(10)
        await _until(lambda: ca.on_plane)
        old = tokens[-1]  # (in a's hellos)
        await relay.close()
        await sa.wait_for(lambda: not ca.connected)
        assert ca.plane_stats is None
        relay = await rig.relay(port=port)  # same key, same address
        await ca.wait_connected(15)
        await cb.wait_connected(15)
        await _until(lambda: ca.on_plane)
        await _until(lambda: cb.on_plane)
        assert tokens[-1] != old
        a_addr = relay.observed_addr(a.node_id)
        assert a_addr is not None
        relay.endpoint.router.datagram_received(encode_plane(old, b.node_id, b"old token"), a_addr)
        assert relay.plane_stats.dropped_unknown_token == 1
        await _exchange(rig, relay, ca, sa, cb, sb, a, b, n=5)
        assert relay.plane_stats.received == 10

    run(net, scenario)


def test_the_plane_follows_a_nat_rebinding() -> None:
    """a's NAT gives it a new public port: its relay connection migrates (its PINGs, at least one
    per second while on the plane, show the relay the new address) and plane datagrams flow from
    and to the new address."""
    from asgi_p2p.sim.harness import SimHarness
    from asgi_p2p.sim.nat import NatConfig

    net = SimHarness(seed=4)
    patient = NetworkConfig(idle_timeout=120)

    async def scenario(rig: Rig) -> None:
        relay = await rig.relay(config=patient)
        nat = NatConfig(port_assignment="random", mapping_timeout=20.0)
        a, ca, sa = await rig.client("a", relay, nat=nat, config=patient, keepalive_timeout=90)
        b, cb, sb = await rig.client("b", relay)
        await ca.wait_connected(10)
        await cb.wait_connected(10)
        await _until(lambda: ca.on_plane and ca.observed_address is not None)
        await _exchange(rig, relay, ca, sa, cb, sb, a, b, n=3)
        first = relay.observed_addr(a.node_id)
        assert first is not None
        sim = rig.net.sim  # type: ignore[attr-defined]
        sim.partition("a", "a-nat")
        await asyncio.sleep(30)  # virtual time: the mapping expires
        sim.heal("a", "a-nat")
        received = relay.plane_stats.received
        loop = asyncio.get_running_loop()
        healed = loop.time()
        i = 0
        while len(sb.packets) < 6 or len(sa.packets) < 6:  # a packet both ways every 100 ms
            assert loop.time() - healed < 10, (relay.plane_stats, sa, sb)
            ca.send_packet(b.node_id, b"a after %d" % i)
            cb.send_packet(a.node_id, b"b after %d" % i)
            i += 1
            await asyncio.sleep(0.1)
        assert loop.time() - healed <= 3.0  # within a couple of PLANE_PING_INTERVALs
        await _until(lambda: relay.observed_addr(a.node_id) != first)  # (noted at the relay's next check)
        second = relay.observed_addr(a.node_id)
        assert second is not None and second[0] == first[0] and second[1] != first[1]
        assert ca.stats.connects == 1  # the same connection (and token), migrated
        assert relay.plane_stats.received > received

    run(net, scenario, timeout=200)  # type: ignore[arg-type]


def test_a_relayed_download_over_the_plane_arrives_intact(net: Harness) -> None:
    """End-to-end QUIC between two inner nodes whose only path is the relay: 1 MiB, sha256-checked."""
    blob = random.Random(3).randbytes(1 << 20)

    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        va, vb = ("fd00::a", 1), ("fd00::b", 1)
        ta, tb = RelayTunnel(va), RelayTunnel(vb)
        a = await rig.net.endpoint("outer-a", config=BIG)
        b = await rig.net.endpoint("outer-b", config=BIG)
        ca, cb = RelayClient(a, relay.url, ta), RelayClient(b, relay.url, tb)
        rig.clients += [ca, cb]
        ta.client, tb.client = ca, cb
        ta.peers[vb] = b.node_id
        tb.peers[va] = a.node_id
        ca.start()
        cb.start()
        await ca.wait_connected(10)
        await cb.wait_connected(10)
        await _until(lambda: ca.on_plane)
        await _until(lambda: cb.on_plane)
        inner_a = await Node.bind(SecretKey.from_seed("inner-a"), host="::", network=ta)
        inner_b = await Node.bind(SecretKey.from_seed("inner-b"), host="::", network=tb)
        try:
            conn = await inner_b.connect(NodeAddr(inner_a.node_id, [va]))
            await conn.send(b"GET")
            peer = await asyncio.wait_for(inner_a.listen().accept(), 10)
            assert await asyncio.wait_for(peer.recv(), 10) == b"GET"

            async def serve() -> None:
                for i in range(0, len(blob), 65536):
                    await peer.send(blob[i : i + 65536])

            sending = asyncio.create_task(serve())
            got = bytearray()
            while len(got) < len(blob):
                got += await asyncio.wait_for(conn.recv(), 20)
            await sending
        finally:
            await inner_a.close(timeout=0.5)
            await inner_b.close(timeout=0.5)
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(blob).hexdigest()
        stats = relay.plane_stats
        # (nearly) every relayed packet went as plane datagrams, both ways
        assert stats.received >= 0.95 * relay.router_stats.forwarded_packets
        assert stats.sent >= 0.95 * relay.router_stats.forwarded_packets
        assert stats.dropped_unknown_token == stats.dropped_wrong_address == 0

    run(net, scenario)
