"""First contact: a fresh dial's Initial goes to the relay at once, not behind the relay handshake.

On the simulator (exact virtual time, the WAN rig's topology: two homes behind NATs, the
relay on a public host, 20 ms per link one way, a relay round trip 41 ms): a fresh
client's first response arrives one relay round trip sooner than when its Initial waits
for its relay connection's Finished, whichever comes first at the relay, the server's
answer or the client's own registration.  A relay that refuses first contacts (as an
older one drops them) keeps the old timing.  The unauthenticated sender cannot make the
relay divert a registered node's traffic, cannot pass for another node (the end-to-end
handshake fails, saying so), and a flood of first contacts allocates bounded state and
gets bounded answers, everything dropped counted.
"""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from asgi_p2p import NetworkConfig, Node, NodeAddr, SecretKey
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.http.types import Receive, Scope, Send
from asgi_p2p.identity import NodeId
from asgi_p2p.relay import client as relay_client
from asgi_p2p.relay.client import RelayClient
from asgi_p2p.relay.first_contact import (
    EXPIRY,
    FIRST_CONTACT_OVERHEAD,
    MAX_ENTRIES,
    MAX_PER_DESTINATION,
    MAX_PER_SOURCE,
    RATE,
    REPLY_FACTOR,
    FirstContacts,
    encode_first_contact,
    is_full_initial,
)
from asgi_p2p.relay.plane import PlaneTokens
from asgi_p2p.relay.server import RelayServer
from asgi_p2p.relay.url import RelayUrl
from asgi_p2p.sim import Simulation
from asgi_p2p.sim.apps import SimServer
from asgi_p2p.sim.nat import Filtering, Mapping, NatConfig
from asgi_p2p.sim.network import Host

LATENCY = 0.02
RTT = 2 * LATENCY  # a relay round trip is 41 ms here (with the home LAN hops)
EIM = NatConfig(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, port_assignment="random")
#: the smallest forwarded Initial: long header, type Initial, version 1, padded to 1200 bytes
INITIAL = bytes((0xC3, 0, 0, 0, 1)) + bytes(1195)
#: its connection ids (destination, source): both empty
CIDS = (b"", b"")


async def _hello(scope: Scope, receive: Receive, send: Send) -> None:
    """``hi`` and the ``early-data`` header the server adds to a 0-RTT request (``-``: none)."""
    if scope["type"] != "http":
        return
    body = b"hi " + dict(scope["headers"]).get(b"early-data", b"-")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def _rig(
    sim: Simulation, *, first_contact: bool = True, server_lan: float = 0.0005
) -> tuple[RelayServer, SimServer, Host]:
    relay = await RelayServer.bind(
        SecretKey.from_seed("relay"), host="0.0.0.0", port=3478, network=sim.host("relay"), first_contact=first_contact
    )
    server = await sim.serve(
        _hello, sim.host("srv", "10.1.0.2", nat=EIM, lan_latency=server_lan), relay_url=str(relay.url)
    )
    assert server.node.relay is not None
    await server.node.relay.wait_connected(5)
    return relay, server, sim.host("phone", "10.2.0.2", nat=EIM)


async def _fresh_get(
    seed: str, phone: Host, relay: RelayServer, server: SimServer, config: NetworkConfig | None = None
) -> tuple[float, Node, RelayClient]:
    """Start a node now and GET / from the server through the relay: (seconds, node, its relay link)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    node = await Node.bind(
        SecretKey.from_seed(seed),
        host="0.0.0.0",
        config=config or NetworkConfig(),
        network=phone,
        relay_url=str(relay.url),
        rng=random.Random(3),
    )
    link = node.relay
    assert isinstance(link, RelayClient)
    async with httpx.AsyncClient(
        transport=P2PTransport(node, addrs=[server.addr]), base_url=f"https://{server.node_id}"
    ) as http:
        r = await asyncio.wait_for(http.get("/"), 5)
    assert r.text == "hi -"
    return loop.time() - t0, node, link


def _connections_from(server: SimServer, node: NodeId) -> int:
    return sum(1 for c in server.node.all_connections if c.remote_node_id == node and not c.closed)


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_fresh_first_response_is_one_relay_round_trip_sooner(sim: Simulation) -> None:
    relay, server, phone = await _rig(sim)
    stats = relay.first_contact_stats
    before, old, _ = await _fresh_get("without", phone, relay, server, NetworkConfig(relay_first_contact="off"))
    assert stats.forwarded == 0
    took, node, link = await _fresh_get("with", phone, relay, server)
    # relay handshake (1 RTT) + e2e handshake and request through the relay (2 relayed round
    # trips of 2 RTTs each): 205 ms; with the Initial sent at once, the relay handshake is off
    # the critical path: 164 ms
    assert before == pytest.approx(5 * RTT, abs=0.01), before
    assert took == pytest.approx(4 * RTT, abs=0.01), took
    assert took <= before - RTT + 0.003
    assert link.stats.first_contacts_sent == 1 and stats.forwarded == 1
    # the server's answer came before the client's relay registration: to the first contact's address
    assert stats.replies >= 1 and stats.reply_bytes <= REPLY_FACTOR * (len(INITIAL) + FIRST_CONTACT_OVERHEAD)
    # the Initial also went the normal way behind the relay Finished: the duplicate did no harm
    assert _connections_from(server, node.node_id) == 1
    assert len(relay.first_contacts) == 0  # forgotten once the client registered
    await node.close()
    await old.close()


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_returning_client_still_sends_its_early_request(sim: Simulation) -> None:
    """A returning client's 0-RTT packets follow its Initial as first contacts too (and the normal
    way at can_send): the request is served from early data, one end-to-end round trip after
    the start (tests/relay/test_first_contact_early.py has the details)."""
    relay, server, phone = await _rig(sim)
    key = SecretKey.from_seed("returning")
    _took, first, _ = await _fresh_get("returning", phone, relay, server)
    tickets = first.export_session_tickets()
    await first.close(timeout=0.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    second = await Node.bind(key, host="0.0.0.0", network=phone, relay_url=str(relay.url), rng=random.Random(4))
    assert second.import_session_tickets(tickets) >= 1
    async with httpx.AsyncClient(
        transport=P2PTransport(second, addrs=[server.addr]), base_url=f"https://{server.node_id}"
    ) as http:
        r = await asyncio.wait_for(http.get("/"), 5)
    took = loop.time() - t0
    assert r.text == "hi 1"  # served from the 0-RTT data
    assert took <= 3 * RTT + 0.01, took  # at most: relay Finished, then the 0-RTT request and its answer
    # (the first process's relay connection may still be registered: then this process's first
    # contact is refused, its Initial goes behind its relay Finished)
    stats = relay.first_contact_stats
    assert stats.forwarded + stats.dropped_claimed_registered == 2
    await second.close()


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_answers_after_the_clients_registration_go_to_its_relay_connection(sim: Simulation) -> None:
    """The server's home is slower (30 ms more each way): its answer reaches the relay after the
    client's Finished did, so it goes to the client's authenticated relay connection."""
    relay, server, phone = await _rig(sim, server_lan=0.03)
    before, old, _ = await _fresh_get("without", phone, relay, server, NetworkConfig(relay_first_contact="off"))
    took, node, _ = await _fresh_get("with", phone, relay, server)
    stats = relay.first_contact_stats
    assert stats.forwarded == 1 and stats.replies == 0 and stats.replies_over_budget == 0
    assert took <= before - RTT + 0.003, (took, before)
    await node.close()
    await old.close()


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_relay_that_refuses_first_contacts_keeps_the_old_timing(sim: Simulation) -> None:
    relay, server, phone = await _rig(sim, first_contact=False)
    took, node, link = await _fresh_get("fresh", phone, relay, server)
    assert took == pytest.approx(5 * RTT, abs=0.01), took
    assert link.stats.first_contacts_sent == 1
    assert relay.first_contact_stats.dropped_refused == 1 and relay.first_contact_stats.forwarded == 0
    assert _connections_from(server, node.node_id) == 1
    await node.close()


def test_an_older_relay_drops_a_first_contact_as_an_unknown_token() -> None:
    """A relay without first contact takes the datagram for a plane datagram whose (zero) token it
    never issued: dropped and counted, nothing forwarded; and no relay issues the zero token."""
    tokens: PlaneTokens[str] = PlaneTokens(SecretKey.from_seed("relay"), random.Random(1))
    tokens.issue(SecretKey.from_seed("a").node_id, "a")
    datagram = encode_first_contact(SecretKey.from_seed("b").node_id, SecretKey.from_seed("c").node_id, INITIAL)
    assert tokens.receive(datagram) is None
    assert tokens.stats.dropped_unknown_token == 1


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_claiming_another_nodes_id_fails_the_handshake_saying_so(
    sim: Simulation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mallory's first contact claims Victor's NodeId (Victor has no relay connection): the
    server's answers reach Mallory, but its handshake requires Victor's certificate."""
    relay, server, phone = await _rig(sim)
    victor = SecretKey.from_seed("victor").node_id
    monkeypatch.setattr(relay_client, "encode_first_contact", lambda d, _c, p: encode_first_contact(d, victor, p))
    with pytest.raises(httpx.ConnectError, match=rf"the relay says it forwards node {victor}, TLS says"):
        await _fresh_get("mallory", phone, relay, server, NetworkConfig(connect_timeout=3.0))
    assert relay.first_contact_stats.forwarded == 1
    assert not any(c.remote_node_id == victor and c.is_connected for c in server.node.all_connections)


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_claiming_a_registered_node_is_refused_and_diverts_nothing(
    sim: Simulation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mallory claims Victor's NodeId while Victor is connected to the relay: the relay drops the
    first contact (answers to Victor go to Victor's connection only); Mallory's dial goes on the
    normal way, under its own authenticated NodeId, and Victor receives nothing of it."""
    relay, server, phone = await _rig(sim)
    victor = await Node.bind(
        SecretKey.from_seed("victor"), host="0.0.0.0", network=sim.host("victor", nat=EIM), relay_url=str(relay.url)
    )
    assert victor.relay is not None
    await victor.relay.wait_connected(5)
    received = victor.router.stats.relay_packets_received
    monkeypatch.setattr(
        relay_client, "encode_first_contact", lambda d, _c, p: encode_first_contact(d, victor.node_id, p)
    )
    took, mallory, _ = await _fresh_get("mallory", phone, relay, server)
    stats = relay.first_contact_stats
    assert stats.dropped_claimed_registered == 1 and stats.forwarded == 0 and stats.replies == 0
    assert took == pytest.approx(5 * RTT, abs=0.01)  # the old timing
    assert _connections_from(server, mallory.node_id) == 1 and _connections_from(server, victor.node_id) == 0
    await asyncio.sleep(RTT)
    assert victor.router.stats.relay_packets_received == received
    await mallory.close()
    await victor.close()


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_malformed_and_flooding_first_contacts_are_dropped_and_counted(sim: Simulation) -> None:
    relay, server, _phone = await _rig(sim)
    dest = server.node_id
    stats = relay.first_contact_stats
    received = server.node.router.stats.relay_packets_received

    def contact(claimed: int, packet: bytes = INITIAL) -> bytes:
        return encode_first_contact(dest, SecretKey.from_seed(f"claim {claimed}").node_id, packet)

    # short, not an Initial (a Handshake packet), another version: dropped, nothing forwarded
    relay.plane_datagram_received(contact(0, INITIAL[:1199]), ("192.0.2.1", 1))
    relay.plane_datagram_received(contact(0, bytes((0xE3,)) + INITIAL[1:]), ("192.0.2.1", 1))
    relay.plane_datagram_received(contact(0, INITIAL[:1] + b"\x00\x00\x00\x02" + INITIAL[5:]), ("192.0.2.1", 1))
    # to a node that has no relay connection here
    unknown = encode_first_contact(SecretKey.from_seed("nobody").node_id, SecretKey.from_seed("x").node_id, INITIAL)
    relay.plane_datagram_received(unknown, ("192.0.2.1", 1))
    assert stats.dropped_malformed == 3 and stats.dropped_unknown_destination == 1 and stats.forwarded == 0

    # one source address, many claimed NodeIds: a few entries, the rest dropped
    for i in range(50):
        relay.plane_datagram_received(contact(i), ("192.0.2.1", 1000 + i))
    assert stats.forwarded == MAX_PER_SOURCE and len(relay.first_contacts) == MAX_PER_SOURCE
    assert stats.dropped_source_limit == 50 - MAX_PER_SOURCE
    # many source addresses at once, to one destination: at most a few live first contacts there
    for i in range(1000):
        relay.plane_datagram_received(contact(100 + i), (f"198.51.{i // 250}.{i % 250}", 4433))
    assert len(relay.first_contacts) == stats.forwarded == MAX_PER_DESTINATION
    assert stats.dropped_destination_limit == 1000 - (MAX_PER_DESTINATION - MAX_PER_SOURCE)
    await asyncio.sleep(RTT)
    # no more reached the server than were forwarded, one for one (it drops them: they do not
    # decrypt); a burst beyond the server's relay connection's queue is dropped at the relay
    assert 0 < server.node.router.stats.relay_packets_received - received <= stats.forwarded
    # entries expire: the table empties
    await asyncio.sleep(EXPIRY + 0.1)
    relay.plane_datagram_received(contact(0), ("192.0.2.9", 1))
    assert len(relay.first_contacts) == 1


def test_answers_to_a_first_contacts_address_are_bounded_and_expire() -> None:
    table = FirstContacts(0.0)
    client, server, other = (SecretKey.from_seed(s).node_id for s in ("client", "server", "other"))
    size = len(INITIAL) + FIRST_CONTACT_OVERHEAD
    addr = ("192.0.2.1", 5000)
    assert is_full_initial(INITIAL) and not is_full_initial(INITIAL[:1199])
    assert table.admit(client, server, addr, size, 0.0, CIDS)
    # the same claim from another address does not take the entry over
    assert not table.admit(client, server, ("192.0.2.66", 5000), size, 0.1, CIDS)
    assert table.stats.dropped_conflict == 1
    # answers: up to 3x the bytes received, to the first contact's address only
    assert table.reply_to(client, server, 1200, 0.2, CIDS) == (True, addr)
    assert table.reply_to(client, server, 1200, 0.2, CIDS) == (True, addr)
    assert table.reply_to(client, server, 1200, 0.2, CIDS) == (True, addr)
    assert table.reply_to(client, server, 1200, 0.2, CIDS) == (True, None)  # beyond the budget: dropped
    assert table.stats.replies == 3 and table.stats.replies_over_budget == 1
    assert table.stats.reply_bytes <= REPLY_FACTOR * size
    # from anyone else: not a first contact's answer (the relay goes on as before)
    assert table.reply_to(client, other, 100, 0.3, CIDS) == (False, None)
    # expired after EXPIRY seconds
    assert table.reply_to(client, server, 10, EXPIRY + 0.1, CIDS) == (False, None)
    assert len(table) == 0
    # once the claimed node registers, its entries go (answers go to its connection)
    assert table.admit(client, server, addr, size, 5.0, CIDS)
    table.forget(client)
    assert len(table) == 0 and table.reply_to(client, server, 10, 5.1, CIDS) == (False, None)


def test_the_table_and_the_global_rate_bound_a_flood_from_everywhere() -> None:
    """Made-up sources, claims and destinations: at most RATE first contacts a second (bursts of as
    many) and MAX_ENTRIES entries; entries go as they expire."""
    table = FirstContacts(0.0)
    dests = [SecretKey.from_seed(f"dest {i}").node_id for i in range(80)]
    claims = [SecretKey.from_seed(f"claim {i}").node_id for i in range(50)]
    admitted = 0
    for step in range(400):  # 4 virtual seconds, 100 tries every 10 ms
        now = step * 0.01
        for i in range(100):
            n = step * 100 + i
            addr = (f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}", 1)
            admitted += table.admit(claims[n % 50], dests[n // 50 % 80], addr, 1277, now, CIDS)
        assert len(table) <= MAX_ENTRIES
    stats = table.stats
    assert admitted == stats.forwarded <= RATE * 4 + RATE
    assert stats.dropped_rate_limited > 0 and stats.dropped_table_full + stats.dropped_rate_limited > 30_000
    assert table.reply_to(claims[0], dests[0], 10, 100.0, CIDS) == (False, None) and len(table) == 0


@pytest.mark.parametrize("first_contact", ["on", "off"])
@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_dial_with_direct_addresses_goes_direct_when_the_relay_never_answers(
    sim: Simulation, first_contact: str
) -> None:
    """The relay's host is up but no relay runs there: the first contact goes nowhere, and the dial
    goes to the peer's direct address (reachable: no NAT in front of it) at full TTL once the
    relay did not come up in 3 s, as a dial that waited for the relay does."""
    dead = str(RelayUrl(SecretKey.from_seed("no relay").node_id, sim.host("relay").address, 3478))
    server = await sim.serve(_hello, sim.host("srv"))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    node = await Node.bind(
        SecretKey.from_seed("hopeful"),
        host="0.0.0.0",
        network=sim.host("phone", nat=EIM),
        relay_url=dead,
        config=NetworkConfig(relay_first_contact=first_contact),
    )
    link = node.relay
    assert isinstance(link, RelayClient)
    async with httpx.AsyncClient(
        transport=P2PTransport(node, addrs=[server.addr]), base_url=f"https://{server.node_id}"
    ) as http:
        r = await asyncio.wait_for(http.get("/"), 8)
    assert r.text == "hi -"
    assert (link.stats.first_contacts_sent >= 1) == (first_contact == "on") and not link.can_send
    assert 3.0 <= loop.time() - t0 <= 3.0 + 1.0
    await node.close()


async def test_a_nodes_first_request_right_after_bind_goes_as_a_first_contact_on_real_udp() -> None:
    """Real UDP on 127.0.0.1, as a fresh process does it: bind, then GET at once.  The dial is
    made before the relay client's connecting task has run; it still goes as a first contact
    (the relay URL names an address, so the attempt's target is known from the start), which
    the WAN rig showed it did not before (a fresh process's first response stayed at 223 ms)."""
    relay = await RelayServer.bind(SecretKey.from_seed("relay"), host="127.0.0.1", port=0)
    server_node = await Node.bind(SecretKey.from_seed("srv"), host="127.0.0.1", relay_url=str(relay.url))
    server = H3Server(_hello, server_node)
    await server.startup()
    assert server_node.relay is not None
    await server_node.relay.wait_connected(5)
    node = await Node.bind(SecretKey.from_seed("fresh"), host="127.0.0.1", relay_url=str(relay.url))
    try:
        link = node.relay
        assert isinstance(link, RelayClient)
        assert link.takes_first_contact and not link.can_send  # right after bind
        # the server's relay URL only (no direct address): the dial's one way in is the relay
        addr = NodeAddr(server_node.node_id, relay_url=str(relay.url))
        async with httpx.AsyncClient(
            transport=P2PTransport(node, addrs=[addr]), base_url=f"https://{server_node.node_id}"
        ) as http:
            r = await asyncio.wait_for(http.get("/"), 10)
        assert r.text == "hi -"
        assert link.stats.first_contacts_sent == 1
        assert relay.first_contact_stats.forwarded == 1  # (a relay on loopback takes loopback sources)
        # but never one that would have it answer its own socket
        spoofed = encode_first_contact(server_node.node_id, SecretKey.from_seed("x").node_id, INITIAL)
        relay.plane_datagram_received(spoofed, relay.endpoint.local_address)
        assert relay.first_contact_stats.dropped_bad_address == 1
    finally:
        await node.close()
        await server.shutdown()
        await server_node.close()
        await relay.close()


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_claim_does_not_divert_a_nodes_other_packets_to_the_first_contact(
    sim: Simulation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Victor is between relay connections; Mallory keeps a first contact claiming Victor alive.
    The server's packets to Victor on an existing connection (1-RTT: a short header) are not an
    answer to an Initial: they are not sent to Mallory's address, the server is told as usual
    that Victor is not connected; only long-header packets (handshake answers) go there."""
    relay, server, _phone = await _rig(sim)
    victor = SecretKey.from_seed("victor").node_id
    mallory = ("192.0.2.7", 4433)
    sent: list[tuple[bytes, tuple[str, int]]] = []
    real_sendto = relay.endpoint.router.sendto

    def sendto(data: bytes, addr: tuple[str, int]) -> None:
        if addr == mallory:
            sent.append((data, addr))
            return
        real_sendto(data, addr)

    monkeypatch.setattr(relay.endpoint.router, "sendto", sendto)
    relay.plane_datagram_received(encode_first_contact(server.node_id, victor, INITIAL), mallory)
    assert relay.first_contact_stats.forwarded == 1
    link = server.node.relay
    assert link is not None
    refused = relay.router.stats.dropped_unknown_destination
    assert link.send_packet(victor, bytes((0x40,)) + bytes(99))  # a 1-RTT packet
    await asyncio.sleep(RTT)
    assert sent == [] and relay.first_contact_stats.replies == 0
    assert relay.router.stats.dropped_unknown_destination == refused + 1  # refused as usual
    # a handshake answer (long header, version 1) does go to the first contact, within its budget
    assert link.send_packet(victor, INITIAL)
    await asyncio.sleep(RTT)
    assert len(sent) == 1 and relay.first_contact_stats.replies == 1
    for _ in range(5):  # beyond the budget: refused as usual, not silently dropped
        link.send_packet(victor, INITIAL)
    await asyncio.sleep(RTT)
    # 3 x 1277 bytes received: three 1245-byte answers fit, the other three are refused
    assert len(sent) == 3 and relay.first_contact_stats.replies_over_budget == 3
    assert relay.router.stats.dropped_unknown_destination == refused + 1 + 3


async def test_a_dial_held_as_a_first_contact_goes_over_tcp_as_soon_as_tcp_wins() -> None:
    """Real loopback, UDP to the relay blocked, the relay URL with a TCP port: the dial right after
    bind goes as a first contact into the blocked UDP; its held copy goes through the relay over
    TCP the moment TCP can send, so the response comes within a few loopback round trips of
    that, not after the dial's Initial retransmission timeout (the regression)."""
    from tests.relay.test_tcp import BlockedUdpNetwork, _factory

    loop = asyncio.get_running_loop()
    relay = await RelayServer.bind(SecretKey.from_seed("relay"), host="127.0.0.1", tcp_port=0)
    server_node = await Node.bind(SecretKey.from_seed("srv"), host="127.0.0.1", relay_url=str(relay.url))
    server = H3Server(_hello, server_node)
    await server.startup()
    node: Node | None = None
    try:
        assert server_node.relay is not None
        await server_node.relay.wait_connected(5)
        node = await Node.bind(
            SecretKey.from_seed("fresh"),
            host="127.0.0.1",
            network=BlockedUdpNetwork(),
            relay_url=str(relay.url),
            relay_factory=_factory(udp_head_start=0.3, proxy=None),
        )
        link = node.relay
        assert isinstance(link, RelayClient) and link.takes_first_contact
        sendable: list[float] = []

        async def watch() -> None:
            while not link.can_send:  # noqa: ASYNC110 - a state flag, bounded by the request's timeout
                await asyncio.sleep(0.002)
            sendable.append(loop.time())

        watcher = loop.create_task(watch())
        addr = NodeAddr(server_node.node_id, relay_url=str(relay.url))
        async with httpx.AsyncClient(
            transport=P2PTransport(node, addrs=[addr]), base_url=f"https://{server_node.node_id}"
        ) as http:
            r = await asyncio.wait_for(http.get("/"), 10)
        done = loop.time()
        await watcher
        assert r.text == "hi -" and link.transport == "tcp"
        assert link.stats.first_contacts_sent >= 1
        # the e2e handshake and the request: two relayed round trips on loopback, ~10 ms (waiting
        # for the dial's next Initial retransmission took ~0.3 s more)
        assert done - sendable[0] < 0.2, done - sendable[0]
    finally:
        if node is not None:
            await node.close(timeout=0.5)
        await server.shutdown()
        await server_node.close(timeout=0.5)
        await relay.close(timeout=0.5)
