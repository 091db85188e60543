"""A returning client's 0-RTT request rides its first contact: one end-to-end round trip.

A returning client sends its GET as 0-RTT data right behind its Initial.  The relay forwards
those 0-RTT packets within the Initial's first-contact entry (same claim, destination,
address and connection; bounded, rate limited), and holds the destination's 1-RTT answer
for the client's relay registration if it comes first; an older relay, or one that refuses
first contacts, drops them and the copies the client kept go behind its relay Finished, as
before.  Nothing more than before goes to a first contact's (unauthenticated) address.
Simulator (exact virtual time, the WAN rig's topology) and sans-I/O tests of the relay's table.
"""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from asgi_p2p import Node, SecretKey
from asgi_p2p.http import P2PTransport
from asgi_p2p.relay.client import RelayClient
from asgi_p2p.relay.first_contact import (
    EXPIRY,
    FIRST_CONTACT_OVERHEAD,
    MAX_EARLY_BYTES,
    MAX_EARLY_PACKETS,
    REPLY_FACTOR,
    FirstContacts,
    encode_first_contact,
    is_full_initial,
    is_zero_rtt,
)
from asgi_p2p.relay.server import RelayServer
from asgi_p2p.sim import Simulation
from asgi_p2p.sim.apps import SimServer
from tests.relay.test_first_contact import EIM, LATENCY, RTT, _fresh_get, _hello, _rig

CLIENT = SecretKey.from_seed("client").node_id
SERVER = SecretKey.from_seed("server").node_id
ADDR = ("192.0.2.1", 5000)
CIDS = (b"D" * 8, b"S" * 8)


def initial(dcid: bytes = CIDS[0], scid: bytes = CIDS[1]) -> bytes:
    """A client's Initial (long header, version 1) with these connection ids, padded to 1200 bytes."""
    head = bytes((0xC3, 0, 0, 0, 1, len(dcid))) + dcid + bytes((len(scid),)) + scid
    return head + bytes(1200 - len(head))


def zero_rtt(dcid: bytes = CIDS[0], scid: bytes = CIDS[1], size: int = 150) -> bytes:
    """A client's 0-RTT packet (long header, type 1, version 1) with these connection ids."""
    head = bytes((0xD3, 0, 0, 0, 1, len(dcid))) + dcid + bytes((len(scid),)) + scid
    return head + bytes(size - len(head))


def one_rtt(dcid: bytes = CIDS[1], size: int = 100) -> bytes:
    """A 1-RTT packet (short header) to connection id ``dcid``."""
    return bytes((0x43,)) + dcid + bytes(size - 1 - len(dcid))


INITIAL_SIZE = FIRST_CONTACT_OVERHEAD + 1200
EARLY_SIZE = FIRST_CONTACT_OVERHEAD + 150


async def _returning_get(
    sim: Simulation,
    relay: RelayServer,
    server: SimServer,
    lan: float = 0.0005,
    name: str = "returning",
    ip: str = "10.3.0.2",
) -> tuple[float, Node, RelayClient]:
    """A process that got a ticket before, then a fresh process with it (its own home ``name``,
    one-way ``lan`` to its NAT): (seconds to the early GET's response, the node, its relay link)."""
    phone = sim.host(name, ip, nat=EIM, lan_latency=lan)
    key = SecretKey.from_seed(name)
    _took, first, _ = await _fresh_get(name, phone, relay, server)
    tickets = first.export_session_tickets()
    await first.close(timeout=0.0)
    await asyncio.sleep(0.1)  # (its relay connection has gone: the new process's first contact is admitted)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    node = await Node.bind(key, host="0.0.0.0", network=phone, relay_url=str(relay.url), rng=random.Random(4))
    assert node.import_session_tickets(tickets) >= 1
    async with httpx.AsyncClient(
        transport=P2PTransport(node, addrs=[server.addr]), base_url=f"https://{server.node_id}"
    ) as http:
        r = await asyncio.wait_for(http.get("/"), 5)
    took = loop.time() - t0
    assert r.text == "hi 1"  # served from the 0-RTT data
    link = node.relay
    assert isinstance(link, RelayClient)
    return took, node, link


def test_what_counts_as_a_0rtt_packet() -> None:
    assert is_zero_rtt(zero_rtt()) and not is_full_initial(zero_rtt())
    assert not is_zero_rtt(initial()) and not is_zero_rtt(one_rtt())
    assert not is_zero_rtt(bytes((0xE3, 0, 0, 0, 1)) + bytes(60))  # Handshake
    assert not is_zero_rtt(bytes((0xD3, 0, 0, 0, 2)) + bytes(60))  # another version
    # a first-contact datagram carrying a 0-RTT packet parses; a short Initial still does not
    parsed = FirstContacts.parse(encode_first_contact(SERVER, CLIENT, zero_rtt()))
    assert parsed is not None and parsed[:2] == (SERVER, CLIENT) and parsed[3] == CIDS
    assert FirstContacts.parse(encode_first_contact(SERVER, CLIENT, initial()[:1199])) is None


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_returning_clients_first_response_takes_one_end_to_end_round_trip(sim: Simulation) -> None:
    """The WAN rig's topology: the early GET reaches the server with the Initial (41 ms), its
    answer comes back the same way: 82 ms, not 123 (relay handshake, then the request)."""
    relay, server, _phone = await _rig(sim)
    took, node, link = await _returning_get(sim, relay, server)
    stats = relay.first_contact_stats
    assert took == pytest.approx(2 * RTT, abs=0.005), took
    assert took < 3 * RTT - 0.02  # (main: 123 ms, the relay handshake and one round trip)
    assert link.stats.early_first_contacts_sent >= 1 and stats.early_forwarded == link.stats.early_first_contacts_sent
    assert stats.early_dropped_no_entry == stats.early_dropped_conflict == stats.early_dropped_limit == 0
    await node.close()


@pytest.mark.parametrize("relay_kind", ["first contact off", "drops 0-RTT first contacts"])
@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_relay_that_drops_the_early_packets_keeps_the_old_time(
    sim: Simulation, monkeypatch: pytest.MonkeyPatch, relay_kind: str
) -> None:
    """The copies the client kept go behind its relay Finished: 123 ms, as before."""
    relay, server, _phone = await _rig(sim, first_contact=relay_kind != "first contact off")
    if relay_kind == "drops 0-RTT first contacts":  # a relay from before this: Initials only
        monkeypatch.setattr(FirstContacts, "admit_early", lambda *_args: False)
    took, node, link = await _returning_get(sim, relay, server)
    assert took == pytest.approx(3 * RTT, abs=0.005), took
    assert link.stats.early_first_contacts_sent >= 1 and relay.first_contact_stats.early_forwarded == 0
    await node.close()


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_an_answer_before_the_clients_registration_is_held_for_its_relay_connection(
    sim: Simulation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client is 10 ms further from the relay (30 ms one way): the server's 1-RTT answer to
    the early GET reaches the relay before the client's relay Finished.  The relay holds it and
    sends it on the client's connection once it registered (not to the first contact's address,
    not refused): 120 ms, against 161 with the early packets kept for the relay Finished."""
    relay, server, _phone = await _rig(sim)
    stats = relay.first_contact_stats
    took, node, _link = await _returning_get(sim, relay, server, lan=0.01)
    assert stats.early_forwarded >= 1 and stats.held >= 1 and stats.held_delivered == stats.held
    assert stats.held_expired == stats.held_over_limit == 0
    assert took == pytest.approx(0.120, abs=0.005), took
    await node.close()
    # without the early first contacts (the client keeps them for its relay Finished): 161 ms
    monkeypatch.setattr(RelayClient, "_send_early", lambda *_args: None)
    relay2, server2 = await _second_rig(sim)
    before, node2, _ = await _returning_get(sim, relay2, server2, lan=0.01, name="returning 2", ip="10.5.0.2")
    assert before == pytest.approx(0.161, abs=0.005), before
    assert took < before - 0.035
    await node2.close()


async def _second_rig(sim: Simulation) -> tuple[RelayServer, SimServer]:
    """A second relay and server (other hosts) on the same simulated internet."""
    relay = await RelayServer.bind(
        SecretKey.from_seed("relay 2"), host="0.0.0.0", port=3478, network=sim.host("relay2")
    )
    server = await sim.serve(_hello, sim.host("srv2", "10.4.0.2", nat=EIM), relay_url=str(relay.url))
    assert server.node.relay is not None
    await server.node.relay.wait_connected(5)
    return relay, server


def test_the_relay_forwards_0rtt_packets_only_behind_a_live_initial_and_counts_each_refusal() -> None:
    table = FirstContacts(0.0)
    stats = table.stats
    # no live entry for (claimed, destination): dropped, nothing allocated
    assert not table.admit_early(CLIENT, SERVER, ADDR, EARLY_SIZE, 0.0, CIDS)
    assert stats.early_dropped_no_entry == 1 and len(table) == 0
    assert table.admit(CLIENT, SERVER, ADDR, INITIAL_SIZE, 0.0, CIDS)
    # another destination connection id, another source connection id, another address: dropped
    assert not table.admit_early(CLIENT, SERVER, ADDR, EARLY_SIZE, 0.01, (b"X" * 8, CIDS[1]))
    assert not table.admit_early(CLIENT, SERVER, ADDR, EARLY_SIZE, 0.01, (CIDS[0], b"X" * 8))
    assert not table.admit_early(CLIENT, SERVER, ("192.0.2.1", 5001), EARLY_SIZE, 0.01, CIDS)
    assert not table.admit_early(CLIENT, SERVER, ("192.0.2.66", 5000), EARLY_SIZE, 0.01, CIDS)
    assert stats.early_dropped_conflict == 4
    # another claim or destination has no entry
    other = SecretKey.from_seed("other").node_id
    assert not table.admit_early(other, SERVER, ADDR, EARLY_SIZE, 0.01, CIDS)
    assert not table.admit_early(CLIENT, other, ADDR, EARLY_SIZE, 0.01, CIDS)
    assert stats.early_dropped_no_entry == 3
    # the same connection from the same address: up to MAX_EARLY_PACKETS, then dropped
    for _ in range(MAX_EARLY_PACKETS):
        assert table.admit_early(CLIENT, SERVER, ADDR, EARLY_SIZE, 0.02, CIDS)
    assert not table.admit_early(CLIENT, SERVER, ADDR, EARLY_SIZE, 0.02, CIDS)
    assert stats.early_forwarded == MAX_EARLY_PACKETS and stats.early_dropped_limit == 1
    # the destination's answer (its connection id now known) may be the 0-RTT packets' destination id
    assert table.reply_to(CLIENT, SERVER, 200, 0.05, (CIDS[1], b"V" * 8)) == (True, ADDR)
    # the entry's life is its Initial's: no 0-RTT packet after it ends
    assert not table.admit_early(CLIENT, SERVER, ADDR, EARLY_SIZE, EXPIRY + 0.01, CIDS)
    assert stats.early_dropped_no_entry == 4 and len(table) == 0


def test_0rtt_packets_are_bounded_in_bytes_and_take_the_global_rate() -> None:
    table = FirstContacts(0.0, rate=4)
    stats = table.stats
    assert table.admit(CLIENT, SERVER, ADDR, INITIAL_SIZE, 0.0, CIDS)
    # bytes: two datagrams of half the byte bound fit, the third does not (a packet count left)
    half = MAX_EARLY_BYTES // 2
    assert table.admit_early(CLIENT, SERVER, ADDR, half, 0.0, CIDS)
    assert table.admit_early(CLIENT, SERVER, ADDR, half, 0.0, CIDS)
    assert not table.admit_early(CLIENT, SERVER, ADDR, 100, 0.0, CIDS)
    assert stats.early_dropped_limit == 1
    # the global rate (4 here, the Initial and two 0-RTT packets spent 3) counts 0-RTT packets too
    other = SecretKey.from_seed("other").node_id
    assert table.admit(other, SERVER, ("198.51.100.1", 1), INITIAL_SIZE, 0.0, CIDS)
    assert not table.admit_early(other, SERVER, ("198.51.100.1", 1), EARLY_SIZE, 0.0, CIDS)
    assert stats.dropped_rate_limited == 1 and stats.early_forwarded == 2


def test_0rtt_packets_add_nothing_to_what_goes_back_to_the_first_contacts_address() -> None:
    """Amplification as before: replies to the unauthenticated address stay within REPLY_FACTOR
    times the Initial's bytes, however many 0-RTT packets followed it, and the entry's life is
    its Initial's."""
    table = FirstContacts(0.0)
    assert table.admit(CLIENT, SERVER, ADDR, INITIAL_SIZE, 0.0, CIDS)
    for _ in range(MAX_EARLY_PACKETS):
        assert table.admit_early(CLIENT, SERVER, ADDR, EARLY_SIZE, 0.1, CIDS)
    sent = 0
    while True:
        handled, addr = table.reply_to(CLIENT, SERVER, 100, 0.2, CIDS[::-1])
        assert handled
        if addr is None:
            break
        sent += 100
    assert sent <= REPLY_FACTOR * INITIAL_SIZE < sent + 100
    assert table.stats.replies_over_budget == 1
    assert table.reply_to(CLIENT, SERVER, 10, EXPIRY + 0.01, CIDS[::-1]) == (False, None)


def test_the_destinations_1rtt_answers_are_held_for_the_claimed_nodes_registration_only() -> None:
    """A 1-RTT packet from the destination to the first contact's connection (its destination
    connection id starts with the Initial's source connection id) is held, bounded, and handed
    back when the claimed node registers; never sent to the first contact's address."""
    table = FirstContacts(0.0)
    stats = table.stats
    assert not table.hold(CLIENT, SERVER, one_rtt(), 0.0)  # no entry: refused as usual
    assert table.admit(CLIENT, SERVER, ADDR, INITIAL_SIZE, 0.0, CIDS)
    assert not table.hold(CLIENT, SERVER, one_rtt(b"X" * 8), 0.01)  # another connection
    other = SecretKey.from_seed("other").node_id
    assert not table.hold(CLIENT, other, one_rtt(), 0.01)  # from another node
    packets = [one_rtt(size=100 + i) for i in range(MAX_EARLY_PACKETS)]
    for packet in packets:
        assert table.hold(CLIENT, SERVER, packet, 0.02)
    assert not table.hold(CLIENT, SERVER, one_rtt(), 0.02)  # beyond the count: refused as usual
    assert stats.held == MAX_EARLY_PACKETS and stats.held_over_limit == 1
    assert table.forget(CLIENT) == [(SERVER, p) for p in packets]
    assert stats.held_expired == 0 and len(table) == 0
    # bytes are bounded too; and what its entry's end finds held is dropped and counted
    assert table.admit(CLIENT, SERVER, ADDR, INITIAL_SIZE, 1.0, CIDS)
    big = one_rtt(size=MAX_EARLY_BYTES // 2)
    assert table.hold(CLIENT, SERVER, big, 1.0) and table.hold(CLIENT, SERVER, big, 1.0)
    assert not table.hold(CLIENT, SERVER, one_rtt(size=50), 1.0)
    assert stats.held_over_limit == 2
    table.expire(1.0 + EXPIRY)
    assert stats.held_expired == 2 and table.forget(CLIENT) == []
    # an Initial with an empty source connection id: nothing can be told apart, nothing held
    assert table.admit(CLIENT, SERVER, ADDR, INITIAL_SIZE, 5.0, (b"D" * 8, b""))
    assert not table.hold(CLIENT, SERVER, one_rtt(b""), 5.0)


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_the_relay_server_forwards_0rtt_first_contacts_only_within_their_entry(
    sim: Simulation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the relay server: 0-RTT first contacts before any Initial, from another address or
    of another connection, and beyond the entry's packets are dropped (counted, nothing sent back
    to anyone); those within it reach the destination 1:1."""
    relay, server, _phone = await _rig(sim)
    stats = relay.first_contact_stats
    dest, claimed = server.node_id, SecretKey.from_seed("a").node_id
    first = ("192.0.2.7", 4433)
    sent: list[tuple[bytes, tuple[str, int]]] = []
    real_sendto = relay.endpoint.router.sendto

    def sendto(data: bytes, addr: tuple[str, int]) -> None:
        if addr[0].startswith("192.0.2."):
            sent.append((data, addr))
            return
        real_sendto(data, addr)

    monkeypatch.setattr(relay.endpoint.router, "sendto", sendto)
    received = server.node.router.stats.relay_packets_received

    def contact(packet: bytes) -> bytes:
        return encode_first_contact(dest, claimed, packet)

    relay.plane_datagram_received(contact(zero_rtt()), first)  # no Initial yet
    assert stats.early_dropped_no_entry == 1 and stats.early_forwarded == 0
    relay.plane_datagram_received(contact(initial()), first)
    assert stats.forwarded == 1
    relay.plane_datagram_received(contact(zero_rtt()), ("192.0.2.8", 4433))  # another address
    relay.plane_datagram_received(contact(zero_rtt(b"X" * 8)), first)  # another connection
    assert stats.early_dropped_conflict == 2
    for _ in range(MAX_EARLY_PACKETS + 3):
        relay.plane_datagram_received(contact(zero_rtt()), first)
    assert stats.early_forwarded == MAX_EARLY_PACKETS and stats.early_dropped_limit == 3
    await asyncio.sleep(RTT)
    # the Initial and the 0-RTT packets within the entry reached the server, one for one (it drops
    # them: they do not decrypt); nothing went back to any of the senders' addresses
    assert server.node.router.stats.relay_packets_received - received == 1 + MAX_EARLY_PACKETS
    assert sent == [] and stats.replies == 0
