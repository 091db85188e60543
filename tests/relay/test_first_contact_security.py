"""First contact's hardening: what an unauthenticated sender (or someone spoofing the relay) can do.

The dialing node takes a first-contact reply only as an answer to a connection it dialed
with a first contact still in its window, from the relay address that first contact went
to; it keeps one reply receiver at a time, whatever addresses a relay's host name resolves
to.  The relay counts per-source limits per IPv4 address and per IPv6 /64, lets a
retransmitted Initial add budget but never time, forwards no other Initial under a live
claim, and never answers an address a spoofer could use to make it a reflector at itself.
Simulator (virtual time) and unit tests; nothing here touches a real network.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from asgi_p2p import Endpoint, NetworkConfig, SecretKey
from asgi_p2p.net.base import Address
from asgi_p2p.relay.client import FIRST_CONTACT_REPLY_WINDOW, RelayClient
from asgi_p2p.relay.first_contact import (
    EXPIRY,
    FIRST_CONTACT_OVERHEAD,
    MAX_PER_SOURCE,
    MAX_RETRANSMISSIONS,
    REPLY_FACTOR,
    FirstContacts,
    encode_first_contact,
    encode_first_reply,
    long_header_cids,
    open_first_reply,
    refused_reply_address,
)
from asgi_p2p.relay.plane import client_demux
from asgi_p2p.relay.server import RelayServer
from asgi_p2p.relay.url import RelayUrl
from asgi_p2p.sim import Simulation
from tests.relay.rig import RecordingSink

LATENCY = 0.02
RELAY = SecretKey.from_seed("relay")
DEST = SecretKey.from_seed("dest").node_id
OTHER = SecretKey.from_seed("other").node_id


def initial(dcid: bytes, scid: bytes) -> bytes:
    """A client's Initial (long header, version 1) with these connection ids, padded to 1200 bytes."""
    head = bytes((0xC3, 0, 0, 0, 1, len(dcid))) + dcid + bytes((len(scid),)) + scid
    return head + bytes(1200 - len(head))


def answer(dcid: bytes, scid: bytes = b"server-1") -> bytes:
    """A destination's Handshake packet (long header, version 1) to connection id ``dcid``."""
    return bytes((0xE3, 0, 0, 0, 1, len(dcid))) + dcid + bytes((len(scid),)) + scid + bytes(100)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (virtual time) until ``predicate()`` holds."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - state flags without an event, polled in virtual time
            await asyncio.sleep(0.001)


def test_connection_ids_of_long_header_packets() -> None:
    assert long_header_cids(initial(b"D" * 8, b"S" * 20)) == (b"D" * 8, b"S" * 20)
    assert long_header_cids(answer(b"")) == (b"", b"server-1")
    assert long_header_cids(bytes((0x40,)) + bytes(60)) is None  # short header (1-RTT)
    assert long_header_cids(bytes((0xC3, 0, 0, 0, 2, 0, 0)) + bytes(60)) is None  # another version
    assert long_header_cids(bytes((0xC3, 0, 0, 0, 1, 21)) + bytes(60)) is None  # a 21-byte connection id
    assert long_header_cids(bytes((0xC3, 0, 0, 0, 1, 8)) + bytes(8)) is None  # truncated


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_dialer_takes_first_contact_replies_only_for_its_live_first_contact_connections(
    sim: Simulation,
) -> None:
    """Nothing answers the relay handshake at the relay's address: an attacker there (as one who
    spoofs the relay's address) sees our first contact.  Of its zero-token datagrams only a
    long-header packet from the node we dialed, to our connection's id, within the first
    contact's window, reaches the node; a retransmitted Initial does not extend that window.
    The window outlasts the relay's own (which it counts from its receipt): the relay's last
    answer still gets through.  After the window the reply receiver goes at the next datagram
    it receives, whatever that is."""
    relay_host = sim.host("relay")
    seen: list[bytes] = []
    spoofer = await relay_host.bind("0.0.0.0", 3478, lambda data, _addr: seen.append(data))
    elsewhere = await sim.host("elsewhere").bind("0.0.0.0", 3478, lambda _data, _addr: None)
    ep = await Endpoint.bind(SecretKey.from_seed("dialer"), host="0.0.0.0", network=sim.host("phone"))
    sink = RecordingSink()
    relay_host_addr = (relay_host.address, 3478)
    link = RelayClient(ep, str(RelayUrl(RELAY.node_id, *relay_host_addr)), sink)
    link.start()
    loop = asyncio.get_running_loop()
    try:
        ours, theirs = b"S" * 8, b"T" * 8
        sent = initial(b"D" * 8, ours)
        assert link.takes_first_contact and link.send_packet(DEST, sent)
        await until(lambda: encode_first_contact(DEST, ep.node_id, sent) in seen)
        t0 = loop.time()

        def inject(sock: object, src: object, packet: bytes) -> None:
            sock.sendto(encode_first_reply(src, packet), ep.local_address)  # type: ignore[attr-defined]

        inject(spoofer, DEST, answer(ours))  # an answer to our connection: taken
        inject(spoofer, DEST, answer(theirs))  # to a connection we did not dial
        inject(spoofer, DEST, bytes((0x40,)) + ours + bytes(50))  # a 1-RTT packet
        inject(spoofer, OTHER, answer(ours))  # from a node we did not dial
        inject(elsewhere, DEST, answer(ours))  # from another address than the relay's
        await asyncio.sleep(2 * LATENCY)
        assert sink.packets == [(DEST, answer(ours))]
        assert link.stats.dropped_invalid == 3
        assert client_demux(ep.router).dropped_wrong_address == 1

        # the dialer's Initial retransmitted within the window: the window still ends a fixed time
        # after the first one (as the relay's entry does)
        await asyncio.sleep(EXPIRY / 2)
        assert link.takes_first_contact and link.send_packet(DEST, sent)
        # the relay's last answer (sent just before its EXPIRY from receipt ends) is still taken
        await asyncio.sleep(t0 + EXPIRY - 0.001 - loop.time())
        inject(spoofer, DEST, answer(ours))
        await asyncio.sleep(2 * LATENCY)
        assert len(sink.packets) == 2 and link.stats.dropped_invalid == 3
        # after the window (from our first send), the next datagram there (even one that is no
        # long-header packet) removes the receiver; no connection attempt or keepalive came between
        await asyncio.sleep(t0 + FIRST_CONTACT_REPLY_WINDOW - loop.time())
        assert client_demux(ep.router).relays == [relay_host_addr]
        inject(spoofer, DEST, bytes((0x40,)) + ours + bytes(50))
        await asyncio.sleep(2 * LATENCY)
        assert loop.time() - t0 < ep.config.connect_timeout  # (the first connection attempt goes on)
        assert client_demux(ep.router).relays == []  # no first dial live: no reply receiver either
        assert link.stats.dropped_invalid == 4
        inject(spoofer, DEST, answer(ours))
        await asyncio.sleep(2 * LATENCY)
        assert len(sink.packets) == 2 and client_demux(ep.router).dropped_wrong_address == 2
        # a retransmission after the window ended is a new first contact with a window of its own
        assert link.takes_first_contact and link.send_packet(DEST, sent)
        await asyncio.sleep(2 * LATENCY)
        inject(spoofer, DEST, answer(ours))
        await asyncio.sleep(2 * LATENCY)
        assert len(sink.packets) == 3
    finally:
        await link.close()
        await ep.close(timeout=0.1)


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_relay_named_by_dns_keeps_one_first_contact_receiver_across_new_addresses(
    sim: Simulation,
) -> None:
    """The relay's host name resolves to another address for each connection attempt (nothing
    answers at any): each attempt's first contact moves the reply receiver to that address, none
    is left behind at an earlier one, and once no first contact is live there is none at all."""
    addrs = [(sim.host(f"relay{i}").address, 3478) for i in range(4)]
    resolved: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[tuple[str, int]]:
        assert (host, port) == ("relay.example.test", 3478)
        resolved.append(addrs[len(resolved) % len(addrs)])
        return [resolved[-1]]

    ep = await Endpoint.bind(
        SecretKey.from_seed("dialer"),
        host="0.0.0.0",
        network=sim.host("phone"),
        config=NetworkConfig(connect_timeout=0.3),
    )
    url = RelayUrl(RELAY.node_id, "relay.example.test", 3478)
    link = RelayClient(ep, str(url), RecordingSink(), resolver=resolver, reconnect_min=0.05, reconnect_max=0.1)
    link.start()
    demux = client_demux(ep.router)
    try:
        for i, addr in enumerate(addrs):
            await until(lambda i=i: link.takes_first_contact and len(resolved) == i + 1)  # type: ignore[misc]
            assert link.send_packet(DEST, initial(b"D" * 8, bytes((i,)) * 8))
            assert demux.relays == [addr]
            await until(lambda: not link.takes_first_contact)  # that attempt gave up
        assert link.stats.first_contacts_sent == len(addrs)
        # every first contact's window ends: the next attempt finds none live, and no receiver is left
        await asyncio.sleep(FIRST_CONTACT_REPLY_WINDOW)
        attempts = len(resolved)
        await until(lambda: len(resolved) > attempts)
        assert demux.relays == []
    finally:
        await link.close()
        await ep.close(timeout=0.1)


def test_per_source_limits_count_an_ipv6_64_as_one_source() -> None:
    """One home's /64 is one source (as an IPv4 address is); an IPv4-mapped IPv6 address is its
    IPv4 address."""
    table = FirstContacts(0.0)
    claims = [SecretKey.from_seed(f"claim {i}").node_id for i in range(12)]
    dests = [SecretKey.from_seed(f"dest {i}").node_id for i in range(12)]
    cids = (b"", b"")
    for i in range(MAX_PER_SOURCE):
        assert table.admit(claims[i], dests[i], (f"2001:db8:1:2::{i + 1:x}", 4433), 1277, 0.0, cids)
    # another interface id in the same /64: over the limit
    assert not table.admit(claims[4], dests[4], ("2001:db8:1:2:ffff:ffff:ffff:ffff", 1), 1277, 0.0, cids)
    assert table.stats.dropped_source_limit == 1
    # the next /64 is another source
    assert table.admit(claims[5], dests[5], ("2001:db8:1:3::1", 4433), 1277, 0.0, cids)
    # IPv4 and its IPv4-mapped IPv6 form are the same source
    for i in range(MAX_PER_SOURCE):
        addr = ("192.0.2.7", 1000 + i) if i % 2 else ("::ffff:192.0.2.7", 1000 + i)
        assert table.admit(claims[6 + i], dests[6 + i], addr, 1277, 0.0, cids)
    assert not table.admit(claims[10], dests[10], ("::ffff:c000:207", 9), 1277, 0.0, cids)
    assert table.stats.dropped_source_limit == 2
    # expired entries free their sources
    assert table.admit(claims[11], dests[11], ("2001:db8:1:2::99", 1), 1277, EXPIRY + 0.1, cids)


def test_a_retransmitted_initial_adds_budget_but_not_time_and_another_initial_is_dropped() -> None:
    table = FirstContacts(0.0)
    client, server = SecretKey.from_seed("client").node_id, SecretKey.from_seed("server").node_id
    addr = ("192.0.2.1", 5000)
    size = 1200 + FIRST_CONTACT_OVERHEAD
    cids = (b"D" * 8, b"S" * 8)
    assert table.admit(client, server, addr, size, 0.0, cids)
    # the same Initial again (a retransmission): forwarded, and the budget grows by its bytes...
    assert table.admit(client, server, addr, size, 1.5, cids)
    assert table.stats.forwarded == 2
    for _ in range(2 * REPLY_FACTOR):
        assert table.reply_to(client, server, size, 1.6, (b"S" * 8, b"V" * 8)) == (True, addr)
    assert table.reply_to(client, server, size, 1.6, (b"S" * 8, b"V" * 8)) == (True, None)
    # ... the client's next Initial to the connection id the destination answered from belongs to
    # the same connection: forwarded
    assert table.admit(client, server, addr, size, 1.7, (b"V" * 8, b"S" * 8))
    # another connection under the same claim (another destination or source connection id): a
    # new half-open connection at the destination, which a live entry does not give
    assert not table.admit(client, server, addr, size, 1.8, (b"E" * 8, b"S" * 8))
    assert not table.admit(client, server, addr, size, 1.8, (b"D" * 8, b"R" * 8))
    assert table.stats.dropped_conflict == 2 and table.stats.forwarded == 3
    # ... but never the time: the entry ends EXPIRY after the first Initial
    assert table.reply_to(client, server, 10, EXPIRY + 0.01, (b"S" * 8, b"V" * 8)) == (False, None)
    assert len(table) == 0


def test_the_destinations_own_dial_to_the_claimed_node_is_not_an_answer() -> None:
    """A dials B by first contact (A not registered yet) while B dials A through the relay: B's own
    client Initial to A (to a connection id B made up, from B's client connection id) answers
    nothing of A's.  It takes the normal (refusing) path, spends none of A's budget, and does not
    change the connection id A's next Initials may be addressed to."""
    table = FirstContacts(0.0)
    a, b = SecretKey.from_seed("a").node_id, SecretKey.from_seed("b").node_id
    addr = ("192.0.2.1", 5000)
    size = 1200 + FIRST_CONTACT_OVERHEAD
    assert table.admit(a, b, addr, size, 0.0, (b"D" * 8, b"S" * 8))
    # B's answer to A's Initial: to A's connection id, from B's server connection id V
    assert table.reply_to(a, b, size, 0.1, (b"S" * 8, b"V" * 8)) == (True, addr)
    # B's own client Initial to A: not an answer (not sent to A's address, budget untouched)
    assert table.reply_to(a, b, size, 0.1, (b"R" * 8, b"X" * 8)) == (False, None)
    assert table.stats.replies == 1 and table.stats.replies_over_budget == 0
    # A's next Initial flight, to B's server connection id, still belongs to A's connection
    assert table.admit(a, b, addr, size, 0.2, (b"V" * 8, b"S" * 8))
    assert table.stats.dropped_conflict == 0
    # and the budget was spent only by the answer: two more answers fit
    assert table.reply_to(a, b, size, 0.3, (b"S" * 8, b"V" * 8)) == (True, addr)
    assert table.reply_to(a, b, size, 0.3, (b"S" * 8, b"V" * 8)) == (True, addr)


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_the_relay_sends_the_destinations_own_dial_the_normal_way_not_to_the_first_contact(
    sim: Simulation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the relay server: the destination's client Initial to the claimed node (which has
    no relay connection) is refused as to any node not connected here, never sent to the first
    contact's address; the answer to the first contact's Initial is."""
    from tests.relay.test_first_contact import _rig

    relay, server, _phone = await _rig(sim)
    claimed = SecretKey.from_seed("a").node_id
    first = ("192.0.2.7", 4433)
    sent: list[bytes] = []
    real_sendto = relay.endpoint.router.sendto

    def sendto(data: bytes, addr: tuple[str, int]) -> None:
        if addr == first:
            sent.append(data)
            return
        real_sendto(data, addr)

    monkeypatch.setattr(relay.endpoint.router, "sendto", sendto)
    relay.plane_datagram_received(encode_first_contact(server.node_id, claimed, initial(b"D" * 8, b"S" * 8)), first)
    stats = relay.first_contact_stats
    assert stats.forwarded == 1
    link = server.node.relay
    assert link is not None
    refused = relay.router.stats.dropped_unknown_destination
    assert link.send_packet(claimed, initial(b"R" * 8, b"X" * 8))  # the server's own dial to the claimed node
    await until(lambda: relay.router.stats.dropped_unknown_destination == refused + 1)
    assert sent == [] and stats.replies == 0
    assert link.send_packet(claimed, answer(b"S" * 8, b"V" * 8))  # its answer to the first contact
    await until(lambda: len(sent) == 1)
    assert sent == [encode_first_reply(server.node_id, answer(b"S" * 8, b"V" * 8))] and stats.replies == 1
    # the first contact's next Initial, to the server's connection id, is forwarded
    relay.plane_datagram_received(encode_first_contact(server.node_id, claimed, initial(b"V" * 8, b"S" * 8)), first)
    assert stats.forwarded == 2 and stats.dropped_conflict == 0


def test_retransmissions_of_one_first_contact_are_capped_per_entry() -> None:
    """One source retransmitting one Initial cannot spend the global rate: after
    MAX_RETRANSMISSIONS within the entry's life the rest are dropped and counted, and the rate
    is left to others."""
    table = FirstContacts(0.0, rate=2 + MAX_RETRANSMISSIONS)
    client, server = SecretKey.from_seed("client").node_id, SecretKey.from_seed("server").node_id
    addr = ("192.0.2.1", 5000)
    cids = (b"D" * 8, b"S" * 8)
    for i in range(1 + MAX_RETRANSMISSIONS):
        assert table.admit(client, server, addr, 1277, 0.1 * i, cids)
    for _ in range(20):
        assert not table.admit(client, server, addr, 1277, 0.5, cids)
    assert table.stats.dropped_retransmissions == 20 and table.stats.dropped_rate_limited == 0
    assert table.stats.forwarded == 1 + MAX_RETRANSMISSIONS
    # another source's first contact still finds the rate's last token
    other = SecretKey.from_seed("other").node_id
    assert table.admit(other, server, ("198.51.100.1", 1), 1277, 0.5, cids)
    # the entry's end starts a new one, with retransmissions of its own
    assert table.admit(client, server, addr, 1277, EXPIRY + 0.1, cids)


def test_a_first_reply_is_checked_before_anything_is_copied() -> None:
    """The dialer reads a reply's connection ids and source on views into the datagram: a reply
    it drops costs no copy of the packet and no NodeId."""
    data = encode_first_reply(DEST, answer(b"S" * 8))
    opened = open_first_reply(data)
    assert opened is not None
    dcid, src, packet = opened
    assert dcid == b"S" * 8
    assert isinstance(src, memoryview) and src.obj is data and src == DEST.to_bytes()
    assert isinstance(packet, memoryview) and packet.obj is data and packet == answer(b"S" * 8)
    assert open_first_reply(encode_first_reply(DEST, bytes((0x40,)) + bytes(60))) is None  # 1-RTT
    assert open_first_reply(data[:40]) is None  # no packet


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_a_first_contact_reply_is_taken_through_the_relays_data_plane_receiver(sim: Simulation) -> None:
    """Once the relay connection's data plane is up, its receiver takes over the relay address
    from the first-contact receiver: a first contact's reply arriving then still reaches the node
    (the plane's relay address, from the connection, is the one the first contact went to)."""
    relay = await RelayServer.bind(RELAY, host="0.0.0.0", port=3478, network=sim.host("relay"))
    phone = sim.host("phone")
    ep = await Endpoint.bind(SecretKey.from_seed("dialer"), host="0.0.0.0", network=phone)
    sink = RecordingSink()
    link = RelayClient(ep, str(relay.url), sink)
    link.start()
    try:
        ours = b"S" * 8
        assert link.takes_first_contact and link.send_packet(DEST, initial(b"D" * 8, ours))
        await until(lambda: link.on_plane)
        assert client_demux(ep.router).relays == [relay.url.address]
        # the relay's socket sends it (as it sends any reply to a first contact)
        relay.endpoint.router.sendto(encode_first_reply(DEST, answer(ours)), (phone.address, ep.local_address[1]))
        await until(lambda: len(sink.packets) == 1)
        assert sink.packets == [(DEST, answer(ours))] and link.stats.dropped_invalid == 0
        relay.endpoint.router.sendto(encode_first_reply(DEST, answer(b"T" * 8)), (phone.address, ep.local_address[1]))
        await until(lambda: link.stats.dropped_invalid == 1)
        assert len(sink.packets) == 1
    finally:
        await link.close()
        await ep.close(timeout=0.1)
        await relay.close(timeout=0.1)


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_the_relay_refuses_first_contacts_it_must_not_answer(
    sim: Simulation, caplog: pytest.LogCaptureFixture
) -> None:
    """Spoofed sources that would make the relay answer itself, its host, loopback, every host
    of a group or link, or nobody: refused and counted; nothing is forwarded.  The first refusal
    is logged (a client on the relay's own host would otherwise not learn why), once."""
    relay = await RelayServer.bind(RELAY, host="0.0.0.0", port=3478, network=sim.host("relay"))
    server = await Endpoint.bind(SecretKey.from_seed("srv"), host="0.0.0.0", network=sim.host("srv"))
    link = RelayClient(server, str(relay.url), RecordingSink())
    link.start()
    try:
        await link.wait_connected(5)
        stats = relay.first_contact_stats
        own_ip, own_port = relay.endpoint.local_address
        refused: list[Address] = [
            (own_ip, own_port),  # the relay's own socket
            (own_ip, 53),  # its own host
            ("127.0.0.1", 5000),
            ("::1", 5000),
            ("::ffff:127.0.0.1", 5000),
            ("0.0.0.0", 5000),
            ("::", 5000),
            ("224.0.0.251", 5353),
            ("ff02::1", 5000),
            ("255.255.255.255", 5000),
            ("192.0.2.1", 0),
        ]
        caplog.set_level(logging.INFO, logger="asgi_p2p.relay")
        for i, addr in enumerate(refused):
            claimed = SecretKey.from_seed(f"spoofed {i}").node_id
            relay.plane_datagram_received(encode_first_contact(server.node_id, claimed, initial(b"", b"")), addr)
        said = [r.getMessage() for r in caplog.records if "refusing first contacts" in r.getMessage()]
        assert said == [
            f"relay: refusing first contacts from {own_ip}:{own_port}: answers must not go there (this relay's own "
            "socket or host, loopback, multicast, broadcast, unspecified or port 0); a client on this host dials the "
            "normal way, one relay round trip later (logged once; counted as dropped_bad_address)"
        ]
        assert stats.dropped_bad_address == len(refused) and stats.forwarded == 0 and len(relay.first_contacts) == 0
        fine = encode_first_contact(server.node_id, SecretKey.from_seed("fine").node_id, initial(b"", b""))
        relay.plane_datagram_received(fine, ("192.0.2.1", 1))
        assert stats.forwarded == 1
    finally:
        await link.close()
        await server.close(timeout=0.1)
        await relay.close(timeout=0.1)


def test_which_addresses_a_first_contact_may_be_answered_at() -> None:
    own = {"203.0.113.5"}
    # a relay on a public address: its host's addresses (loopback or its own) are refused
    assert refused_reply_address(("127.0.0.2", 4000), own, 3478, loopback_ok=False)
    assert refused_reply_address(("203.0.113.5", 4000), own, 3478, loopback_ok=False)
    assert refused_reply_address(("198.51.100.7", 0), own, 3478, loopback_ok=False)
    assert refused_reply_address(("not an address", 4000), own, 3478, loopback_ok=False)
    assert not refused_reply_address(("198.51.100.7", 3478), own, 3478, loopback_ok=False)
    assert not refused_reply_address(("2001:db8::7", 4000), own, 3478, loopback_ok=False)
    assert not refused_reply_address(("fe80::1%eth0", 4000), own, 3478, loopback_ok=False)
    # a relay listening on loopback only: every sender is on its host; never its own socket
    lo = {"127.0.0.1"}
    assert not refused_reply_address(("127.0.0.1", 4000), lo, 3478, loopback_ok=True)
    assert refused_reply_address(("127.0.0.1", 3478), lo, 3478, loopback_ok=True)
    assert refused_reply_address(("224.0.0.1", 4000), lo, 3478, loopback_ok=True)


@pytest.mark.sim(loss=0.0, latency=LATENCY)
async def test_the_relays_first_contacts_expire_without_further_traffic_even_after_their_destination_left(
    sim: Simulation,
) -> None:
    """A flood's first contacts leave the relay's table within ``EXPIRY`` and one check interval
    with nothing else arriving (the table no longer waits for the next first contact to expire
    its entries), also once the destination they named (the relay's only client) has gone."""
    relay = await RelayServer.bind(RELAY, host="0.0.0.0", port=3478, network=sim.host("relay"))
    loop = asyncio.get_running_loop()
    for stays in (True, False):
        server = await Endpoint.bind(SecretKey.from_seed("srv"), host="0.0.0.0", network=sim.host(f"srv-{stays}"))
        link = RelayClient(server, str(relay.url), RecordingSink())
        link.start()
        try:
            await link.wait_connected(5)
            for i in range(MAX_PER_SOURCE):
                claimed = SecretKey.from_seed(f"flood {stays} {i}").node_id
                contact = encode_first_contact(server.node_id, claimed, initial(b"D%d" % i, b"S%d" % i))
                relay.plane_datagram_received(contact, ("192.0.2.9", 4000 + i))
            assert len(relay.first_contacts) == MAX_PER_SOURCE
            made = loop.time()
            if not stays:
                await link.close()
                await until(lambda: relay.clients == [])
            await until(lambda: len(relay.first_contacts) == 0, timeout=EXPIRY + 2 * relay.check_interval)
            assert loop.time() - made >= EXPIRY
        finally:
            await link.close()
            await server.close(timeout=0.1)
    await relay.close(timeout=0.1)
