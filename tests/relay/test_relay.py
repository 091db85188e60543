"""The relay server and client over real QUIC: on UDP 127.0.0.1 and on the simulator (fixture ``net``)."""

from __future__ import annotations

import asyncio
import random

import pytest
from aioquic.quic.events import QuicEvent

from asgi_p2p import NetworkConfig, Node, SecretKey
from asgi_p2p.endpoint.connection import PeerConnection
from asgi_p2p.errors import AuthenticationFailed, ConnectionClosed, Timeout
from asgi_p2p.identity import NodeAddr
from asgi_p2p.paths.link import RefusalReason
from asgi_p2p.relay.client import RelayClient
from asgi_p2p.relay.proto import RELAY_ALPN, RelayLimits
from asgi_p2p.relay.server import RELAY_DATAGRAM_SIZE, relay_config
from asgi_p2p.relay.url import RelayUrl
from tests.harness import Harness

from .rig import RecordingSink, RelayTunnel, Rig

BIG = NetworkConfig(max_datagram_size=1452)


def run(net: Harness, scenario, *, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    async def main(h: Harness) -> None:
        rig = Rig(h)
        try:
            await scenario(rig)
        finally:
            await rig.aclose()

    net.run(main, timeout=timeout)


def test_two_clients_exchange_packets_and_signals(net: Harness) -> None:
    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        a, ca, sa = await rig.client("a", relay)
        b, cb, sb = await rig.client("b", relay)
        await ca.wait_connected(10)
        await cb.wait_connected(10)
        assert ca.connected and ca.relay_url == str(relay.url)
        assert sorted(relay.clients) == sorted([a.node_id, b.node_id])
        assert ca.send_packet(b.node_id, b"quic packet from a")
        assert cb.send_packet(a.node_id, b"quic packet from b")
        assert ca.send_signal(b.node_id, b"call me maybe")
        await sb.wait_for(lambda: len(sb.packets) == 1 and len(sb.signals) == 1)
        await sa.wait_for(lambda: len(sa.packets) == 1)
        assert sb.packets == [(a.node_id, b"quic packet from a")]
        assert sb.signals == [(a.node_id, b"call me maybe")]
        assert sa.packets == [(b.node_id, b"quic packet from b")]
        assert sa.refusals == [] and sb.refusals == []
        # a full-size QUIC packet fits once the paths layer has grown the relay connection
        await ca.wait_packet_size(1200, 10)
        assert ca.send_packet(b.node_id, b"x" * 1200)
        await sb.wait_for(lambda: len(sb.packets) == 2)
        assert sb.packets[-1] == (a.node_id, b"x" * 1200)
        assert relay.router_stats.forwarded_packets == 3 and relay.router_stats.signals == 1
        assert ca.stats.packets_sent == 2 and ca.stats.signals_sent == 1 and cb.stats.packets_received == 2

    run(net, scenario)


def test_observed_addr_is_the_clients_address_as_the_relay_sees_it(net: Harness) -> None:
    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        a, ca, sa = await rig.client("a", relay)
        await ca.wait_connected(10)
        await sa.wait_for(lambda: ca.observed_address is not None)
        assert ca.observed_address == a.local_address  # no NAT: the socket's own address
        assert relay.observed_addr(a.node_id) == a.local_address
        assert (True, a.local_address) in sa.states  # the sink heard about it

    run(net, scenario)


def test_observed_addr_behind_a_nat_is_the_translated_address() -> None:
    from asgi_p2p.sim.harness import SimHarness

    net = SimHarness(seed=3)

    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        a, ca, sa = await rig.client("a", relay, nat="port-restricted-cone")
        await ca.wait_connected(10)
        await sa.wait_for(lambda: ca.observed_address is not None)
        host = next(h for h in rig.net.sim.hosts if h.name == "a")  # type: ignore[attr-defined]
        observed = ca.observed_address
        assert observed is not None
        assert a.local_address[0] == host.address and host.address.startswith("192.168.")
        assert observed[0] == host.public_address != host.address
        assert relay.observed_addr(a.node_id) == observed

    run(net, scenario)  # type: ignore[arg-type]


@pytest.mark.parametrize("frame_lost", [False, True], ids=["delivered", "frame-lost"])
def test_nat_rebinding_sends_a_new_observed_addr(frame_lost: bool) -> None:
    """A NAT rebinding gives the client a new OBSERVED_ADDR on the same connection.  The frame rides
    an unreliable DATAGRAM frame: when the one announcing the new address is lost (``frame-lost``),
    the relay says it again at its next checks, so the client does not keep its dead old port."""
    from asgi_p2p.sim.harness import SimHarness
    from asgi_p2p.sim.nat import NatConfig

    net = SimHarness(seed=4)
    patient = NetworkConfig(idle_timeout=120)

    async def scenario(rig: Rig) -> None:
        relay = await rig.relay(config=patient)
        nat = NatConfig(port_assignment="random", mapping_timeout=20.0)
        a, ca, sa = await rig.client("a", relay, nat=nat, config=patient, keepalive_timeout=90)
        _b, cb, _sb = await rig.client("b", relay)
        await ca.wait_connected(10)
        await cb.wait_connected(10)
        await sa.wait_for(lambda: ca.observed_address is not None)
        first = ca.observed_address
        assert first is not None
        lost: list[object] = []
        if frame_lost:
            record = relay.router.update_observed_addr

            def lose_the_next_frame(node, addr):  # type: ignore[no-untyped-def]
                frames = record(node, addr)
                if frames and not lost:
                    lost.extend(frames)  # recorded by the relay, never delivered
                    return []
                return frames

            relay.router.update_observed_addr = lose_the_next_frame  # type: ignore[method-assign]
        # a's packets stop reaching its NAT for longer than the NAT keeps the mapping:
        # the next packet gets a new public port (what a NAT rebinding looks like)
        sim = rig.net.sim  # type: ignore[attr-defined]
        sim.partition("a", "a-nat")
        await asyncio.sleep(30)  # virtual time: the mapping expires
        sim.heal("a", "a-nat")
        loop = asyncio.get_running_loop()
        if frame_lost:
            await sa.wait_for(lambda: bool(lost), timeout=30)
            lost_at = loop.time()
        await sa.wait_for(lambda: ca.observed_address != first, timeout=30)
        if frame_lost:  # said again at the relay's next check (check_interval 1 s)
            assert loop.time() - lost_at <= 2 * relay.check_interval + 0.5
        second = ca.observed_address
        assert second is not None and second[0] == first[0] and second[1] != first[1]
        assert relay.observed_addr(a.node_id) == second
        assert relay.stats.observed_addr_updates == (0 if frame_lost else 1)
        assert sa.states[-1] == (True, second)  # the sink heard about it
        assert ca.connected and ca.stats.connects == 1  # the same connection, migrated
        assert cb.send_packet(a.node_id, b"to the new mapping")
        await sa.wait_for(lambda: len(sa.packets) == 1)

    run(net, scenario, timeout=200)  # type: ignore[arg-type]


def test_unknown_destination_is_reported_to_the_sink(net: Harness) -> None:
    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        _, ca, sa = await rig.client("a", relay)
        await ca.wait_connected(10)
        nobody = SecretKey.from_seed("nobody").node_id
        assert ca.send_packet(nobody, b"hello?")  # sent: only the relay knows nobody is there
        await sa.wait_for(lambda: bool(sa.refusals))
        dest, refusal = sa.refusals[0]
        assert dest == nobody
        assert refusal.reason is RefusalReason.UNKNOWN_DESTINATION and refusal.fits is None
        assert "not connected to this relay" in refusal.message
        assert ca.last_error is not None and ca.stats.errors_received == 1
        assert relay.router_stats.dropped_unknown_destination == 1

    run(net, scenario)


def test_rate_limit_sends_error_and_other_clients_are_unaffected(net: Harness) -> None:
    async def scenario(rig: Rig) -> None:
        limits = RelayLimits(packets_per_second=5, packet_burst=10, errors_per_second=1, error_burst=2)
        relay = await rig.relay(limits=limits)
        a, ca, sa = await rig.client("a", relay)
        b, cb, sb = await rig.client("b", relay)
        c, cc, sc = await rig.client("c", relay)
        for client in (ca, cb, cc):
            await client.wait_connected(10)
        for i in range(60):
            assert ca.send_packet(b.node_id, b"flood %d" % i)
        await sa.wait_for(lambda: any(r.reason is RefusalReason.RATE_LIMITED for _, r in sa.refusals))
        assert all(dest == b.node_id and r.reason is RefusalReason.RATE_LIMITED for dest, r in sa.refusals)
        assert len(sa.refusals) < 10  # error frames are themselves rate limited (~50 packets were dropped)
        for i in range(5):
            assert cc.send_packet(b.node_id, b"polite %d" % i)
        await sb.wait_for(lambda: sum(1 for src, _ in sb.packets if src == c.node_id) == 5)
        from_a = [p for src, p in sb.packets if src == a.node_id]
        assert 10 <= len(from_a) < 60
        assert relay.router_stats.dropped_rate_limited >= 60 - len(from_a) - 5
        assert sc.refusals == [] and cc.connected and ca.connected

    run(net, scenario)


def test_oversized_packet_is_refused_before_sending_and_later_packets_flow(net: Harness) -> None:
    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        _a, ca, _sa = await rig.client("a", relay)
        b, cb, sb = await rig.client("b", relay)
        await ca.wait_connected(10)
        await cb.wait_connected(10)
        limit = ca.max_packet_size
        assert limit >= 1200  # connected: a full-size QUIC packet fits (more once probed further)
        assert not ca.send_packet(b.node_id, b"x" * (limit + 1))
        assert not ca.send_signal(b.node_id, b"x" * (limit + 1))
        assert ca.stats.dropped_too_large == 2
        for i in range(3):
            assert ca.send_packet(b.node_id, b"after %d" % i)
        await sb.wait_for(lambda: len(sb.packets) == 3)
        assert [p for _, p in sb.packets] == [b"after 0", b"after 1", b"after 2"]
        assert not ca.send_packet(b.node_id, b"")  # empty: invalid, never raises
        assert ca.stats.dropped_invalid == 1

    run(net, scenario)


def test_packet_too_large_for_the_destination_gets_an_error(net: Harness) -> None:
    async def scenario(rig: Rig) -> None:
        # the relay builds 1264-byte datagrams and does not probe: it can deliver 1200-byte packets
        relay = await rig.relay(config=relay_config(100, max_probe_datagram_size=0))
        a, ca, sa = await rig.client("a", relay, config=BIG)  # a's relay connection carries more
        b, cb, sb = await rig.client("b", relay)
        await ca.wait_connected(10)
        await cb.wait_connected(10)
        assert ca.max_packet_size >= 1300
        assert ca.send_packet(b.node_id, b"y" * 1300)
        await sa.wait_for(lambda: bool(sa.refusals))
        dest, refusal = sa.refusals[0]
        assert dest == b.node_id and refusal.reason is RefusalReason.TOO_LARGE
        # the size that fits b's relay connection, as a number (and in the relay's words, for logs)
        fits = refusal.fits
        assert fits is not None and 1200 <= fits < 1300
        assert f"at most {fits} bytes" in refusal.message and str(refusal).startswith("too large: ")
        assert ca.send_packet(b.node_id, b"y" * 1000)  # fits every connection here
        await sb.wait_for(lambda: len(sb.packets) == 1)
        assert relay.router_stats.dropped_too_large == 1
        # exactly that size passes; one byte more is refused again with the same number
        assert ca.send_packet(b.node_id, b"z" * fits)
        await sb.wait_for(lambda: len(sb.packets) == 2)
        assert sb.packets[-1] == (a.node_id, b"z" * fits)
        assert ca.send_packet(b.node_id, b"z" * (fits + 1))
        await sa.wait_for(lambda: len(sa.refusals) == 2)
        dest, again = sa.refusals[1]
        assert dest == b.node_id and again.reason is RefusalReason.TOO_LARGE and again.fits == fits
        assert relay.router_stats.dropped_too_large == 2 and len(sb.packets) == 2

    run(net, scenario)


def test_client_reconnects_after_relay_restart(net: Harness) -> None:
    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        port = relay.endpoint.local_address[1]
        _a, ca, sa = await rig.client("a", relay, rng=random.Random(7), reconnect_min=0.2, reconnect_max=2.0)
        b, cb, sb = await rig.client("b", relay, rng=random.Random(8), reconnect_min=0.2, reconnect_max=2.0)
        await ca.wait_connected(10)
        await cb.wait_connected(10)
        await relay.close()  # tells the clients (CONNECTION_CLOSE)
        await sa.wait_for(lambda: not ca.connected)
        assert sa.states[-1][0] is False  # the sink was told
        assert not ca.send_packet(b.node_id, b"while down")  # dropped, counted, no exception
        assert ca.stats.dropped_disconnected == 1
        await rig.relay(port=port)  # same key, same address
        await ca.wait_connected(15)
        await cb.wait_connected(15)
        assert ca.stats.connects == 2 and ca.stats.disconnects == 1
        assert ca.send_packet(b.node_id, b"after restart")
        await sb.wait_for(lambda: any(p == b"after restart" for _, p in sb.packets))

    run(net, scenario)


def test_relay_crash_is_detected_by_keepalives_and_the_client_comes_back() -> None:
    from asgi_p2p.sim.harness import SimHarness

    net = SimHarness(seed=5)

    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        port = relay.endpoint.local_address[1]
        _a, ca, sa = await rig.client("a", relay, keepalive_interval=1.0, keepalive_timeout=3.0)
        b, cb, sb = await rig.client("b", relay, keepalive_interval=1.0, keepalive_timeout=3.0)
        await ca.wait_connected(10)
        await cb.wait_connected(10)
        sim = rig.net.sim  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        crashed_at = loop.time()
        sim.crash("relay-host")  # no CONNECTION_CLOSE: only silence
        await sa.wait_for(lambda: not ca.connected, timeout=10)
        # it may stop being usable sooner (unanswered probe timeouts shrink its datagrams);
        # the keepalives end it within their timeout + one keepalive interval
        await asyncio.sleep(crashed_at + 3.0 + 1.0 + 0.5 - loop.time())
        assert ca.stats.keepalive_timeouts == 1 and ca.stats.disconnects == 1
        await rig.relay(port=port)
        await ca.wait_connected(30)
        await cb.wait_connected(30)
        assert ca.send_packet(b.node_id, b"back")
        await sb.wait_for(lambda: any(p == b"back" for _, p in sb.packets))

    run(net, scenario)  # type: ignore[arg-type]


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    async def main() -> None:
        ep = await Node.bind(SecretKey.from_seed("bk"))
        try:
            url = RelayUrl(SecretKey.from_seed("r").node_id, "127.0.0.1", 9)
            c1 = RelayClient(ep, url, RecordingSink(), rng=random.Random(1), reconnect_min=0.5, reconnect_max=8.0)
            c2 = RelayClient(ep, url, RecordingSink(), rng=random.Random(1), reconnect_min=0.5, reconnect_max=8.0)
            delays = [c1.backoff_delay(i) for i in range(10)]
            assert delays == [c2.backoff_delay(i) for i in range(10)]  # the rng decides, nothing else
            for i, d in enumerate(delays):
                base = min(8.0, 0.5 * 2**i)
                assert base / 2 <= d <= base
            assert len(set(delays)) == len(delays)  # jittered
        finally:
            await ep.close()

    asyncio.run(main())


def test_relay_impersonation_is_refused(net: Harness) -> None:
    async def scenario(rig: Rig) -> None:
        real = await rig.relay(key=SecretKey.from_seed("impostor"))  # B answers at this address...
        wanted = SecretKey.from_seed("the-real-relay").node_id  # ... but the URL names A
        url = RelayUrl(wanted, real.url.host, real.url.port)
        _a, ca, sa = await rig.client("a", str(url), reconnect_min=0.1, reconnect_max=0.5)
        with pytest.raises(Timeout, match="authentication failed"):
            await ca.wait_connected(3)
        assert ca.stats.auth_failures >= 1 and ca.stats.connects == 0
        assert isinstance(ca.last_failure, AuthenticationFailed)
        assert not ca.connected and ca.max_packet_size == 0
        assert all(not up for up, _ in sa.states)
        assert not ca.send_packet(SecretKey.from_seed("x").node_id, b"secret")
        assert real.clients == []

    run(net, scenario)


class _RawRelayHandler:
    """A misbehaving relay client: the test drives its connection by hand."""

    def __init__(self, conn: PeerConnection) -> None:
        self.conn = conn
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event: QuicEvent) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(b"\x01\x09garbage", id="unknown-type"),
        pytest.param(b"\x02\x01" + b"\x00" * 10, id="truncated-send"),
        pytest.param(b"\x01\x02" + b"\x00" * 40, id="recv-from-a-client"),
        pytest.param(None, id="opens-a-stream"),
    ],
)
def test_a_client_breaking_the_protocol_is_closed_and_others_are_unaffected(net: Harness, bad: bytes | None) -> None:
    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        _a, ca, _sa = await rig.client("a", relay)
        b, cb, sb = await rig.client("b", relay)
        await ca.wait_connected(10)
        await cb.wait_connected(10)
        evil = await rig.net.endpoint("evil")
        handlers: list[_RawRelayHandler] = []

        def factory(conn: PeerConnection) -> _RawRelayHandler:
            handlers.append(_RawRelayHandler(conn))
            return handlers[-1]

        evil.add_protocol(RELAY_ALPN, factory)
        url = relay.url
        conn = await evil.connect_quic(NodeAddr(url.node_id, [url.address]), RELAY_ALPN)
        assert evil.node_id in relay.clients or True  # registration races the first datagram
        if bad is None:
            sid = conn.quic.get_next_available_stream_id()
            conn.quic.send_stream_data(sid, b"hello", end_stream=True)
        else:
            conn.quic.send_datagram_frame(bad)
        conn.transmit()
        exc = await asyncio.wait_for(handlers[0].lost, 10)
        assert isinstance(exc, ConnectionClosed)
        assert "protocol violation" in str(exc)
        assert relay.stats.protocol_violations == 1
        assert evil.node_id not in relay.clients
        # the others carry on
        assert ca.connected and cb.connected
        assert ca.send_packet(b.node_id, b"still here")
        await sb.wait_for(lambda: len(sb.packets) == 1)

    run(net, scenario)


def test_relay_full_refuses_new_clients_with_an_error(net: Harness) -> None:
    async def scenario(rig: Rig) -> None:
        relay = await rig.relay(limits=RelayLimits(max_clients=1))
        a, ca, _sa = await rig.client("a", relay)
        await ca.wait_connected(10)
        _b, cb, sb = await rig.client("b", relay, reconnect_min=5.0, reconnect_max=10.0)
        await sb.wait_for(lambda: any(r.reason is RefusalReason.SERVER_FULL for _, r in sb.refusals))
        dest, refusal = sb.refusals[0]
        assert dest is None and refusal.reason is RefusalReason.SERVER_FULL and "limit-clients" in refusal.message
        await sb.wait_for(lambda: cb.stats.disconnects == 1)
        assert relay.stats.refused_full == 1
        assert relay.clients == [a.node_id]
        assert not cb.connected
        assert ca.connected

    run(net, scenario)


def test_the_relay_forwards_real_quic_and_never_sees_plaintext(net: Harness) -> None:
    """Two inner endpoints run QUIC over the relay; the relay handles only ciphertext.

    A relayed QUIC packet (at least 1200 bytes) plus the relay's 34 bytes and the relay
    connection's own QUIC overhead needs a path carrying 1264-byte datagrams: the relay
    builds them by default, the clients here start at 1452 (simulated links: MTU 1500).
    """
    secret = b"THE-RELAY-MUST-NEVER-SEE-THIS:" + bytes(range(32))

    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        seen: list[bytes] = []
        original = relay.router.handle_datagram

        def recording(src, data, now, room=None):  # type: ignore[no-untyped-def]
            seen.append(bytes(data))
            return original(src, data, now, room)

        relay.router.handle_datagram = recording  # type: ignore[method-assign]
        original_packet = relay.router.handle_packet

        def recording_plane(src, dst, packet, now, room=None):  # type: ignore[no-untyped-def]
            seen.append(bytes(packet))  # the same packets on the relay's data plane
            return original_packet(src, dst, packet, now, room)

        relay.router.handle_packet = recording_plane  # type: ignore[method-assign]
        va, vb = ("fd00::a", 1), ("fd00::b", 1)
        ta, tb = RelayTunnel(va), RelayTunnel(vb)
        a = await rig.net.endpoint("outer-a", config=BIG)
        b = await rig.net.endpoint("outer-b", config=BIG)
        ca = RelayClient(a, relay.url, ta)
        cb = RelayClient(b, relay.url, tb)
        rig.clients += [ca, cb]
        ta.client, tb.client = ca, cb
        ta.peers[vb] = b.node_id
        tb.peers[va] = a.node_id
        ca.start()
        cb.start()
        await ca.wait_connected(10)
        await cb.wait_connected(10)
        assert ca.max_packet_size >= 1200  # an inner QUIC packet fits the relay connection
        inner_a = await Node.bind(SecretKey.from_seed("inner-a"), host="::", network=ta)
        inner_b = await Node.bind(SecretKey.from_seed("inner-b"), host="::", network=tb)
        try:
            conn = await inner_a.connect(NodeAddr(inner_b.node_id, [vb]))
            await conn.send(secret)
            peer = await asyncio.wait_for(inner_b.listen().accept(), 10)
            assert peer.remote_node_id == inner_a.node_id  # mutual TLS end to end, through the relay
            assert await asyncio.wait_for(peer.recv(), 10) == secret
            await peer.send(secret[::-1])
            assert await asyncio.wait_for(conn.recv(), 10) == secret[::-1]
        finally:
            await inner_a.close(timeout=0.5)
            await inner_b.close(timeout=0.5)
        assert relay.router_stats.forwarded_packets >= 4
        assert len(seen) >= relay.router_stats.forwarded_packets
        for data in seen:
            assert secret not in data and secret[::-1] not in data
            assert b"THE-RELAY" not in data

    run(net, scenario)


def test_client_refuses_bad_arguments() -> None:
    async def main() -> None:
        ep = await Node.bind(SecretKey.from_seed("args"))
        try:
            with pytest.raises(ValueError, match="keepalive"):
                RelayClient(
                    ep,
                    RelayUrl(SecretKey.from_seed("r").node_id, "127.0.0.1", 9),
                    RecordingSink(),
                    keepalive_timeout=1,
                    keepalive_interval=2,
                )
            with pytest.raises(Exception, match="names this node itself"):
                RelayClient(ep, RelayUrl(ep.node_id, "127.0.0.1", 9), RecordingSink())
            with pytest.raises(Exception, match="invalid relay URL"):
                RelayClient(ep, "http://example.org", RecordingSink())
            client = RelayClient(ep, RelayUrl(SecretKey.from_seed("r").node_id, "127.0.0.1", 9), RecordingSink())
            assert not client.connected and client.max_packet_size == 0 and client.observed_address is None
            assert not client.send_packet(SecretKey.from_seed("x").node_id, b"p")  # not started: dropped
            with pytest.raises(ConnectionClosed, match="start"):
                await client.wait_connected(0.1)
        finally:
            await ep.close()

    asyncio.run(main())


def test_close_while_connecting_leaves_no_relay_connection_behind() -> None:
    from asgi_p2p.sim.harness import SimHarness

    net = SimHarness(seed=6, latency=0.05)

    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        a, ca, sa = await rig.client("a", relay)
        await asyncio.sleep(0.06)  # virtual time: the Initial is in flight, the handshake not done
        assert not ca.connected
        await ca.close()
        await asyncio.sleep(5)  # virtual time: whatever was in flight has finished
        assert not ca.connected and ca.stats.connects == 0
        assert sa.states == []
        assert [c for c in a.connections if c.alpn == RELAY_ALPN] == []
        assert relay.clients == []

    run(net, scenario)  # type: ignore[arg-type]


def test_a_relay_url_with_a_host_name_is_resolved_by_the_resolver(net: Harness) -> None:
    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        asked: list[tuple[str, int]] = []

        async def resolver(host: str, port: int) -> list[tuple[str, int]]:
            asked.append((host, port))
            return [relay.url.address]

        named = RelayUrl(relay.node_id, "relay.example.test", relay.url.port)
        a, ca, _sa = await rig.client("a", str(named), resolver=resolver)
        await ca.wait_connected(10)
        assert asked == [("relay.example.test", relay.url.port)]
        assert ca.relay_url == str(named)  # what goes into tickets: the name, not the address
        assert relay.clients == [a.node_id]

    run(net, scenario)


def test_connected_means_a_full_size_quic_packet_fits_both_ways() -> None:
    """The relay builds 1264-byte datagrams and the client waits for its connection to grow."""
    from asgi_p2p.sim.harness import SimHarness

    net = SimHarness(seed=12)

    async def scenario(rig: Rig) -> None:
        relay = await rig.relay()
        assert relay.endpoint.config.max_datagram_size == RELAY_DATAGRAM_SIZE == 1264
        a, ca, _sa = await rig.client("a", relay)
        b, cb, sb = await rig.client("b", relay)
        await ca.wait_connected(10)
        await cb.wait_connected(10)
        # at once: a relayed 1200-byte QUIC packet (what nodes build) fits a's connection and the relay's to b
        assert ca.max_packet_size >= 1200
        assert ca.send_packet(b.node_id, b"q" * 1200)
        await sb.wait_for(lambda: len(sb.packets) == 1)
        assert sb.packets == [(a.node_id, b"q" * 1200)]
        assert relay.stats.dropped_too_large == 0 and ca.stats.dropped_too_large == 0

    run(net, scenario)  # type: ignore[arg-type]


@pytest.mark.parametrize("net", ["sim"], indirect=True)
@pytest.mark.parametrize("wire", ["frame", "plane"])
def test_a_flooded_destination_shares_its_budget_fairly_through_the_server(net: Harness, wire: str) -> None:
    """The whole relay server (timer, room, dispatch): a 2,000/s flood and a 50/s client into a 200/s destination,
    with packets in DATAGRAM frames (``frame``: the relay offers no data plane) or on the data plane."""

    async def scenario(rig: Rig) -> None:
        limits = RelayLimits(destination_packets_per_second=200, destination_packet_burst=20)
        relay = await rig.relay(limits=limits, plane=wire == "plane")
        a, ca, sa = await rig.client("flooder", relay)
        b, cb, sb = await rig.client("destination", relay)
        c, cc, sc = await rig.client("light", relay)
        for client in (ca, cb, cc):
            await client.wait_connected(10)
        await asyncio.sleep(0.1)  # (the PLANE_TOKEN frames arrive)
        assert all(client.on_plane == (wire == "plane") for client in (ca, cb, cc))
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent_light = 0
        for tick in range(200):  # 2 s in 10 ms steps
            for i in range(20):
                ca.send_packet(b.node_id, b"F%d-%d" % (tick, i) + bytes(900))
            if tick % 2 == 0:
                assert cc.send_packet(b.node_id, b"L%d" % tick + bytes(900))
                sent_light += 1
            await asyncio.sleep(max(0.0, start + (tick + 1) * 0.01 - loop.time()))
        await asyncio.sleep(2.0)  # the queue (256 KiB, ~250 packets) drains at the destination's rate
        light = sum(1 for src, _ in sb.packets if src == c.node_id)
        flood = sum(1 for src, _ in sb.packets if src == a.node_id)
        print(f"\nlight client: {light}/{sent_light} delivered; flooder: {flood}/4000")
        assert light >= 0.95 * sent_light  # below its fair share (100/s): (almost) nothing lost
        assert flood + light <= 200 * 4.0 + 20 + 1  # the destination's budget, over the 4 s
        assert flood >= 200 * 2.0 * 0.8  # and the flooder gets the rest
        assert relay.router_stats.queued > 0 and relay.router_stats.dropped_destination_busy > 0
        assert relay.router.queued_bytes == 0  # drained: memory returned
        assert any(r.reason is RefusalReason.RATE_LIMITED for _, r in sa.refusals) and sc.refusals == []
        assert (relay.plane_stats.received >= 4000 + sent_light) == (wire == "plane")

    run(net, scenario)
