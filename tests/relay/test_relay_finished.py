"""The relay link takes packets from our TLS Finished on (issue 11, item 2: first response).

On the simulator (exact virtual time, the WAN rig's topology: two homes behind NATs on
distinct subnets, the relay on a public host, 20 ms per link one way): a node that starts
and dials at once sends its first packet to the peer through the relay right behind its
relay connection's Finished, before the relay confirmed that connection (``connected``),
so a fresh client's and a returning client's first response arrive one relay round trip
(41 ms here) sooner than when the dial waited for ``connected``.  Before the Finished the
relay link takes nothing (dropped and counted, like UDP); a relay that refuses us after
our Finished forwards nothing we sent, and a dial through it fails naming the refusal; a
relay that is not the one the URL names fails the dial with an error that says so.  With a
relay list, a dial through a peer's home relay (connected to on demand) starts at that
relay connection's Finished too.

The dials timed here have first contact off (``relay_first_contact="off"``): with it (the
default), a fresh dial's Initial also goes to the relay before the relay handshake, one
relay round trip sooner still (tests/relay/test_first_contact.py).
"""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest
from aioquic.quic.events import QuicEvent

from asgi_p2p import NetworkConfig, Node, SecretKey
from asgi_p2p.endpoint.connection import PeerConnection
from asgi_p2p.http import P2PTransport
from asgi_p2p.http.types import Receive, Scope, Send
from asgi_p2p.identity import NodeAddr, NodeId
from asgi_p2p.paths.link import RelaySink
from asgi_p2p.relay import proto
from asgi_p2p.relay.client import RelayClient
from asgi_p2p.relay.proto import RELAY_ALPN, RelayLimits
from asgi_p2p.relay.server import RelayServer
from asgi_p2p.relay.url import RelayUrl
from asgi_p2p.sim import Simulation
from asgi_p2p.sim.apps import SimServer
from asgi_p2p.sim.nat import Filtering, Mapping, NatConfig
from asgi_p2p.sim.network import Host

LATENCY = 0.02  # one way, per link: a round trip to the relay is 41 ms (with the home LAN hops)
RTT = 2 * LATENCY
EIM = NatConfig(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, port_assignment="random")
#: the Initial waits for the relay Finished (see the module docstring)
BEHIND_FINISHED = NetworkConfig(relay_first_contact="off")


async def _early(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers ``path early-data`` (the header the server adds to a 0-RTT request)."""
    if scope["type"] != "http":
        return
    body = f"{scope['path']} {dict(scope['headers']).get(b'early-data', b'-').decode()}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def _homes(sim: Simulation, limits: RelayLimits | None = None) -> tuple[str, SimServer, Host]:
    relay = await sim.relay("relay", limits=limits)
    sim.host("srv", "10.1.0.2", nat=EIM)
    phone = sim.host("phone", "10.2.0.2", nat=EIM)
    server = await sim.serve(_early, "srv", relay_url=relay)
    assert server.node.relay is not None
    await server.node.relay.wait_connected(5)
    return relay, server, phone


async def _node(
    key: SecretKey, phone: Host, relay: str, config: NetworkConfig | None = None
) -> tuple[Node, RelayClient]:
    """A node that starts now (its relay connection too), without waiting for anything."""
    node = await Node.bind(
        key,
        host="0.0.0.0",
        port=0,
        config=config or NetworkConfig(),
        network=phone,
        relay_url=relay,
        rng=random.Random(3),
    )
    link = node.relay
    assert isinstance(link, RelayClient)
    return node, link


def _record_sends(link: RelayClient) -> list[tuple[float, bool, bool, bool]]:
    """Each packet the paths layer hands the relay link: (when, can_send, connected, taken)."""
    loop = asyncio.get_running_loop()
    sent: list[tuple[float, bool, bool, bool]] = []
    original = link.send_packet

    def send_packet(dest: NodeId, packet: bytes) -> bool:
        taken = original(dest, packet)
        sent.append((loop.time(), link.can_send, link.connected, taken))
        return taken

    link.send_packet = send_packet  # type: ignore[method-assign]
    return sent


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_fresh_client_dials_through_the_relay_right_behind_its_relay_finished(sim: Simulation) -> None:
    _relay, server, phone = await _homes(sim)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    node, link = await _node(SecretKey.from_seed("fresh"), phone, _relay, BEHIND_FINISHED)
    sent = _record_sends(link)
    transport = P2PTransport(node, addrs=[server.addr])
    async with httpx.AsyncClient(transport=transport, base_url=f"https://{server.node_id}") as http:
        r = await asyncio.wait_for(http.get("/"), 5)
        took = loop.time() - t0
    assert r.text == "/ -"
    first_at, can_send, connected, taken = sent[0]
    # the dial's Initial went into the relay connection one relay round trip after the start
    # (our Finished), before the relay confirmed that connection (one round trip later)
    assert can_send and taken and not connected
    assert first_at - t0 == pytest.approx(RTT, abs=0.002)
    # relay Finished (1 relay RTT), then the end-to-end handshake and the request through the
    # relay (2 relayed RTTs of 2 relay RTTs each): 5 relay round trips, 205 ms here; waiting
    # for the relay's HANDSHAKE_DONE made it 6 (246 ms)
    assert took <= 5 * RTT + 0.01, took
    await node.close()


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_returning_client_sends_its_early_request_right_behind_its_relay_finished(sim: Simulation) -> None:
    relay, server, phone = await _homes(sim)
    loop = asyncio.get_running_loop()
    key = SecretKey.from_seed("returning")
    first, _ = await _node(key, phone, relay, BEHIND_FINISHED)
    async with httpx.AsyncClient(
        transport=P2PTransport(first, addrs=[server.addr]), base_url=f"https://{server.node_id}"
    ) as http:
        assert (await asyncio.wait_for(http.get("/first"), 5)).text == "/first -"
    tickets = first.export_session_tickets()
    await first.close(timeout=0.0)

    t0 = loop.time()
    second, link = await _node(key, phone, relay, BEHIND_FINISHED)
    assert second.import_session_tickets(tickets) >= 1
    sent = _record_sends(link)
    async with httpx.AsyncClient(
        transport=P2PTransport(second, addrs=[server.addr]), base_url=f"https://{server.node_id}"
    ) as http:
        r = await asyncio.wait_for(http.get("/again"), 5)
        took = loop.time() - t0
    assert r.text == "/again 1"  # served from the 0-RTT data
    assert sent[0][1:] == (True, False, True)  # taken, before the relay connection was confirmed
    # relay Finished (1 relay RTT), then the 0-RTT request and its answer through the relay
    # (2): 3 relay round trips, 123 ms here; waiting for the relay's HANDSHAKE_DONE made it 4
    assert took <= 3 * RTT + 0.01, took
    await second.close()


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_the_relay_link_takes_packets_from_its_finished_on_and_drops_earlier_ones(sim: Simulation) -> None:
    relay, server, phone = await _homes(sim)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    node, link = await _node(SecretKey.from_seed("early bird"), phone, relay)
    packet = bytes(1200)  # full size (the server drops it: not QUIC it knows)
    # before our Finished: not taken, counted like a packet UDP would drop
    assert not link.can_send and not link.connected and link.max_packet_size == 0
    assert not link.send_packet(server.node_id, packet)
    assert link.stats.dropped_disconnected == 1 and link.stats.packets_sent == 0
    await link.wait_can_send(5)
    assert loop.time() - t0 == pytest.approx(RTT, abs=0.002)  # one relay round trip: our Finished
    assert link.can_send and not link.connected and link.transport == "udp"
    assert link.max_packet_size >= 1200  # the padded handshake proved the size both ways
    received = server.node.router.stats.relay_packets_received
    assert link.send_packet(server.node_id, packet)
    await link.wait_connected(5)
    assert loop.time() - t0 == pytest.approx(2 * RTT, abs=0.002)  # HANDSHAKE_DONE: one round trip later
    await asyncio.sleep(RTT)
    # the relay checked our Finished (it came first) and forwarded the packet
    assert server.node.router.stats.relay_packets_received == received + 1
    assert link.stats.connects == 1 and link.stats.dropped_disconnected == 1
    await node.close()


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_relay_that_refuses_us_after_our_finished_forwards_nothing_we_sent(sim: Simulation) -> None:
    """The relay is full (the server holds its one place): it refuses us once it has our Finished;
    a packet we sent right behind that Finished is dropped there, not forwarded."""
    relay, server, phone = await _homes(sim, RelayLimits(max_clients=1))
    node, link = await _node(SecretKey.from_seed("one too many"), phone, relay)
    received = server.node.router.stats.relay_packets_received
    await link.wait_can_send(5)
    assert link.send_packet(server.node_id, bytes(1200))  # taken here: the relay decides
    conn = link.connection
    assert conn is not None
    for _ in range(2000):  # the relay closes it after its ERROR frame (the link learns it then)
        if conn.closing:
            break
        await asyncio.sleep(0.001)
    assert conn.closing
    assert node.router.relay_errors >= 1  # the relay said why (full)
    assert not link.can_send and not link.connected and link.stats.disconnects == 1
    assert server.node.router.stats.relay_packets_received == received  # nothing forwarded
    with pytest.raises(Exception, match="not connected within"):
        await link.wait_connected(0.1)
    await node.close()


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_dial_through_an_impostor_relay_fails_saying_so_and_sends_nothing(sim: Simulation) -> None:
    """The relay URL names a key the server at its address does not hold: the handshake fails
    before our Finished, so the relay link never takes a packet, and the dial (the peer has no
    direct address) fails with the reason, not a silent timeout."""
    real = await sim.relay("relay", secret_key=SecretKey.from_seed("impostor"))
    url = RelayUrl.parse(real)
    wanted = str(RelayUrl(SecretKey.from_seed("the real relay").node_id, url.host, url.port))
    phone = sim.host("phone", "10.2.0.2", nat=EIM)
    peer = SecretKey.from_seed("somebody").node_id
    node, link = await _node(SecretKey.from_seed("dupe"), phone, wanted, NetworkConfig(connect_timeout=2.0))
    transport = P2PTransport(node, addrs=[NodeAddr(peer, [], wanted)])
    async with httpx.AsyncClient(transport=transport, base_url=f"https://{peer}") as http:
        with pytest.raises(httpx.ConnectError, match="authentication failed"):
            await http.get("/")
    assert link.stats.auth_failures >= 1 and link.stats.packets_sent == 0
    assert not link.can_send
    await node.close()


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_dial_through_a_relay_that_refuses_us_fails_saying_why(sim: Simulation) -> None:
    """The dial starts at our relay Finished; the relay then refuses us (full): the dial (the
    peer has no direct address) fails within its connect timeout, naming the relay's refusal."""
    relay, server, phone = await _homes(sim, RelayLimits(max_clients=1))
    node, link = await _node(SecretKey.from_seed("refused"), phone, relay, NetworkConfig(connect_timeout=2.0))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    transport = P2PTransport(node, addrs=[NodeAddr(server.node_id, [], relay)])
    async with httpx.AsyncClient(transport=transport, base_url=f"https://{server.node_id}") as http:
        with pytest.raises(httpx.ConnectError, match=r"relay .* is not usable: the relay refused us: relay full"):
            await http.get("/")
    assert loop.time() - t0 <= 2.0 + 0.1  # the connect timeout, no hang
    assert link.stats.packets_sent >= 1  # the Initial went behind our Finished; the relay dropped it
    assert not link.can_send
    await node.close()


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_dial_to_a_peer_on_another_relay_starts_at_that_relays_finished(sim: Simulation) -> None:
    """A relay list (``RelayFleet``): the peer's home relay is not in ours, so the dial connects
    to it on demand and sends its first packet through it right behind that connection's Finished."""
    url_a, url_b = await sim.relay("relay-a"), await sim.relay("relay-b")
    clients: list[tuple[RelayClient, list[tuple[float, bool, bool, bool]]]] = []

    def factory(endpoint: Node, url: RelayUrl, sink: RelaySink, *, rng: random.Random) -> RelayClient:
        client = RelayClient(endpoint, url, sink, rng=rng)
        clients.append((client, _record_sends(client)))
        return client

    alice = await Node.bind(
        SecretKey.from_seed("alice"), host="0.0.0.0", network=sim.host("alice", nat=EIM), relay_urls=[url_a]
    )
    bob = await Node.bind(
        SecretKey.from_seed("bob"),
        host="0.0.0.0",
        network=sim.host("bob", nat=EIM),
        config=NetworkConfig(relay_first_contact="off"),  # (this file: the Finished path)
        relay_urls=[url_b],
        relay_factory=factory,  # type: ignore[arg-type]
    )
    assert alice.relay is not None and bob.relay is not None
    await alice.relay.wait_connected(5)
    await bob.relay.wait_connected(5)
    assert bob.relay.can_send
    conn = await bob.connect(NodeAddr(alice.node_id, relay_url=url_a))
    inc = await asyncio.wait_for(alice.listen().accept(), 5)
    await conn.send(b"through alice's relay")
    assert await asyncio.wait_for(inc.recv(), 5) == b"through alice's relay"
    extra, sent = next((c, s) for c, s in clients if c.relay_url == url_a)
    assert sent[0][1:] == (True, False, True)  # taken before that relay confirmed the connection
    assert extra.connected
    await bob.close()
    await alice.close()


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_the_relay_forwards_nothing_sent_as_early_data(sim: Simulation) -> None:
    """A relay client resuming its session could send SEND frames as 0-RTT data (ours never
    does), before the relay has its Finished: the relay accepts no early data on relay
    connections, so such a frame is never forwarded; one sent once the handshake is done is."""
    relay = await RelayServer.bind(SecretKey.from_seed("relay"), host="0.0.0.0", port=3478, network=sim.host("relay"))
    url = relay.url
    server = await sim.serve(_early, sim.host("srv", "10.1.0.2", nat=EIM), relay_url=str(url))
    assert server.node.relay is not None
    await server.node.relay.wait_connected(5)
    phone = sim.host("phone", "10.2.0.2", nat=EIM)

    class Eager:
        """Queues a SEND frame as soon as the connection is made (early, when resuming)."""

        def __init__(self, conn: PeerConnection) -> None:
            conn.quic.send_datagram_frame(proto.Send(server.node_id, bytes(300)).encode())
            conn.schedule_transmit()

        def quic_event_received(self, event: QuicEvent) -> None:
            pass

        def connection_lost(self, exc: Exception | None) -> None:
            pass

    key = SecretKey.from_seed("eager")
    first = await Node.bind(key, host="0.0.0.0", network=phone, rng=random.Random(6))
    first.add_protocol(RELAY_ALPN, Eager, relay=True)
    received = server.node.router.stats.relay_packets_received
    await first.connect_quic(NodeAddr(url.node_id, [url.address]), RELAY_ALPN)
    await asyncio.sleep(2 * RTT)
    assert server.node.router.stats.relay_packets_received == received + 1  # sent after the Finished
    tickets = first.export_session_tickets()
    await first.close()

    second = await Node.bind(key, host="0.0.0.0", network=phone, rng=random.Random(7))
    second.add_protocol(RELAY_ALPN, Eager, relay=True)
    assert second.import_session_tickets(tickets) == 1
    refused = relay.endpoint.early_data_refused
    conn = await second.connect_quic(NodeAddr(url.node_id, [url.address]), RELAY_ALPN, early_data=True)
    assert conn.early  # the frame went out as 0-RTT data
    await conn.wait_handshake()
    await asyncio.sleep(2 * RTT)
    assert relay.endpoint.early_data_refused == refused + 1
    assert server.node.router.stats.relay_packets_received == received + 1  # the early frame: dropped
    await second.close()
    await relay.close()
