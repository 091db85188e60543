"""First contact: a fresh client's end-to-end Initial forwarded before its relay handshake completes.

A fresh client dialing through the relay would send the end-to-end Initial only
behind its relay connection's Finished, and the relay reads it only once that
handshake is complete: one client-relay round trip on the critical path of every
fresh dial.  So the client also sends that Initial at once, next to its relay
connection's own Initial, as a *first-contact* datagram on the data plane's wire
format with an all-zero token (a token the relay never issues)::

    client -> relay   PLANE_MAGIC (5) + 8 zero bytes + destination NodeId (32) + claimed NodeId (32) + packet
    relay  -> client  PLANE_MAGIC (5) + 8 zero bytes + source NodeId (32)                           + packet

The sender is not authenticated: the claimed NodeId is only a claim.  What keeps that
safe (the whole reasoning is in docs/security.md, "First contact"):

* The relay forwards only a QUIC version 1 Initial (long header) of at least 1200
  bytes, 1:1, and only to a registered destination; the destination's end-to-end
  handshake then authenticates the client (its certificate must name the claimed
  NodeId, or the destination closes the connection).
* Within a live entry it also forwards what a returning client sends right behind that
  Initial: QUIC version 1 0-RTT packets (long header) of the same connection (the
  Initial's source connection id, and its destination connection id or the one the
  destination answered from), from the same address, for the same (claimed NodeId,
  destination), at most :data:`MAX_EARLY_PACKETS` packets and :data:`MAX_EARLY_BYTES`
  bytes per entry, each taking a token of the global :data:`RATE`.  They add nothing to
  the entry's reply budget or lifetime: the relay sends the first contact's address no
  more than before.  A 0-RTT packet is readable and acceptable only with the session
  ticket's keys, and the destination's own 0-RTT anti-replay (ticket age, strike
  register, safe methods only) applies as to any 0-RTT packet (docs/security.md).
  The destination's 1-RTT answer to such an early request (a short-header packet whose
  destination connection id starts with the Initial's source connection id) that arrives
  before the claimed node registered is held, within the same per-entry bounds, and sent
  on that node's relay connection once it registers: never to the first contact's address.
* Answers to the claimed NodeId go to its registered relay connection whenever it has
  one (never to an unauthenticated address then); only while it has none do QUIC v1
  long-header packets (answers to the Initial; anything else is refused as usual) go
  to the first contact's address, and only those addressed to the first contact's
  connection (their destination connection id is its Initial's source connection id:
  the destination's own client Initials to the claimed node are not answers), within a
  budget of :data:`REPLY_FACTOR` times the bytes that address sent, for :data:`EXPIRY`
  seconds from its first Initial (QUIC's own anti-amplification factor, RFC 9000
  section 8.1).  A retransmission of that Initial (the same connection: same source
  connection id, the same destination connection id or the one the destination
  answered from) is forwarded too, at most :data:`MAX_RETRANSMISSIONS` times per entry,
  and adds to the budget, never to the time; another Initial under the same claim is
  dropped while the entry lives.
* The relay answers no address it knows it must not send to (:func:`refused_reply_address`:
  unspecified, port 0, multicast, broadcast, its own socket's, and its own host's as far
  as it knows them, unless it listens on loopback only): a spoofed source there would
  make it a reflector at itself.  It knows loopback, its bound address and, bound to a
  wildcard, one IPv4 address per interface (``SIOCGIFADDR``: the primary one; no
  aliases, no IPv6 addresses).
* The dialing client (:class:`~asgi_p2p.relay.client.RelayClient`) takes a zero-token
  datagram from the relay's address only as a QUIC v1 long-header packet from the node
  it dialed, to the connection id of a connection it dialed with a first contact through
  that address, within :data:`EXPIRY` seconds (plus a margin for the trip back) of that
  first contact's first Initial; it takes them at one relay address at a time, and stops
  taking them once no such window is open (noticed at the next datagram there, first
  contact, relay connection attempt or keepalive).
* State is a small bounded table (:class:`FirstContacts`): at most
  :data:`MAX_ENTRIES` entries, :data:`MAX_PER_SOURCE` per source (an IPv4 address, an
  IPv6 /64), :data:`MAX_PER_DESTINATION` per destination, each expiring
  :data:`EXPIRY` seconds after it was made, and a global rate of :data:`RATE` first
  contacts per second (retransmissions included).  Everything refused is dropped and
  counted (:class:`FirstContactStats`).

An older relay finds no client holding the zero token and drops the datagram (counted
as an unknown token); the client sends the same Initial again the normal way once its
relay connection takes packets, so nothing is slower with it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Hashable
from dataclasses import dataclass

from ..endpoint.admission import source_of
from ..identity import NodeId
from ..net.base import Address
from .plane import PLANE_MAGIC, PLANE_OVERHEAD
from .proto import PLANE_TOKEN_SIZE, TokenBucket

__all__ = [
    "EXPIRY",
    "FIRST_CONTACT_OVERHEAD",
    "FIRST_CONTACT_TOKEN",
    "MAX_EARLY_BYTES",
    "MAX_EARLY_PACKETS",
    "MAX_ENTRIES",
    "MAX_PER_DESTINATION",
    "MAX_PER_SOURCE",
    "MAX_RETRANSMISSIONS",
    "MIN_INITIAL_SIZE",
    "RATE",
    "REPLY_FACTOR",
    "FirstContactStats",
    "FirstContacts",
    "encode_first_contact",
    "encode_first_reply",
    "is_first_contact",
    "is_full_initial",
    "is_zero_rtt",
    "long_header_cids",
    "open_first_reply",
    "refused_reply_address",
]

#: The token of a first-contact datagram and of its replies (never issued to a client).
FIRST_CONTACT_TOKEN = bytes(PLANE_TOKEN_SIZE)
_MAGIC_LEN = len(PLANE_MAGIC)
_TOKEN_END = _MAGIC_LEN + PLANE_TOKEN_SIZE
#: The longest QUIC version 1 connection id (RFC 9000 section 17.2).
_MAX_CID = 20
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
#: Bytes a first-contact datagram adds to its packet: magic, zero token, destination, claimed sender.
FIRST_CONTACT_OVERHEAD = PLANE_OVERHEAD + 32
#: The smallest packet forwarded: a client's Initial is padded to at least this (RFC 9000 section 14.1).
MIN_INITIAL_SIZE = 1200
#: Seconds a first contact's entry (its reply address and budget) lives, from its first Initial.
EXPIRY = 2.0
#: Reply bytes sent to a first contact's (unvalidated) address per byte it sent (RFC 9000 section 8.1).
REPLY_FACTOR = 3
#: The most first contacts the relay remembers at once.
MAX_ENTRIES = 256
#: The most live first contacts from one source: an IPv4 address, or an IPv6 address's /64
#: (one home's prefix; :func:`~asgi_p2p.endpoint.admission.source_of`).
MAX_PER_SOURCE = 4
#: The most live first contacts to one destination (whose per-source admission limits an
#: unauthenticated sender could spread over made-up NodeIds): with :data:`EXPIRY`, at most
#: 2 new validated half-open connections a second there (docs/security.md, "First contact").
MAX_PER_DESTINATION = 4
#: First contacts per second the relay accepts from everybody together (bursts of as many).
RATE = 64.0
#: Retransmissions of a first contact's Initial (and its other Initials of the same connection)
#: forwarded per entry, so per :data:`EXPIRY` seconds: one source cannot spend the global
#: :data:`RATE` by retransmitting.  A real dial needs fewer: its probe timeouts (0.2, 0.4, 0.8 s
#: from aioquic's 100 ms initial RTT) retransmit its Initial 3 times within 2 s, and its answer
#: to the destination's Initial is one more (if its relay connection cannot carry it yet).
MAX_RETRANSMISSIONS = 4
#: 0-RTT packets forwarded per entry (behind its Initial): as many as a dialing client keeps to
#: send again at its relay Finished (its Initial among them), so one entry never forwards more
#: than the client would send the normal way a moment later.
MAX_EARLY_PACKETS = 8
#: 0-RTT bytes (whole first-contact datagrams) forwarded per entry: :data:`MAX_EARLY_PACKETS`
#: datagrams the size of a first contact's Initial.
MAX_EARLY_BYTES = MAX_EARLY_PACKETS * (FIRST_CONTACT_OVERHEAD + MIN_INITIAL_SIZE)


def is_first_contact(data: bytes) -> bool:
    """True if the plane datagram ``data`` (its magic checked) carries the first-contact token."""
    return data[_MAGIC_LEN:_TOKEN_END] == FIRST_CONTACT_TOKEN


def is_full_initial(packet: bytes | memoryview) -> bool:
    """True if ``packet`` starts a QUIC version 1 Initial (long header) and is at least 1200 bytes."""
    return len(packet) >= MIN_INITIAL_SIZE and packet[0] & 0xF0 == 0xC0 and bytes(packet[1:5]) == b"\x00\x00\x00\x01"


def is_zero_rtt(packet: bytes | memoryview) -> bool:
    """True if ``packet`` starts a QUIC version 1 0-RTT packet (long header, type 1)."""
    return len(packet) >= 7 and packet[0] & 0xF0 == 0xD0 and bytes(packet[1:5]) == b"\x00\x00\x00\x01"


def long_header_cids(packet: bytes | memoryview) -> tuple[bytes, bytes] | None:
    """(destination, source) connection ids of a QUIC version 1 long-header packet; None if not one."""
    if len(packet) < 7 or not packet[0] & 0x80 or bytes(packet[1:5]) != b"\x00\x00\x00\x01":
        return None
    dcid_len = packet[5]
    scid_at = 6 + dcid_len
    if dcid_len > _MAX_CID or len(packet) <= scid_at:
        return None
    scid_len = packet[scid_at]
    if scid_len > _MAX_CID or len(packet) < scid_at + 1 + scid_len:
        return None
    return bytes(packet[6:scid_at]), bytes(packet[scid_at + 1 : scid_at + 1 + scid_len])


def refused_reply_address(addr: Address, own: Collection[str], own_port: int, loopback_ok: bool) -> bool:
    """True if a first contact's replies must not go to ``addr``: the relay refuses that first contact.

    Refused: a host that is not an IP address, port 0, the unspecified address, multicast,
    the limited broadcast address, and the relay's own host: a loopback address unless
    ``loopback_ok`` (the relay listens on loopback only, so every sender is on its host and
    reaches loopback anyway) and the relay's own addresses ``own`` (at any port, unless
    ``loopback_ok``; at ``own_port``, its own socket, always).  A spoofed source there would
    make the relay a reflector at itself or its host's services.  (``own`` is what the
    socket reports: its bound address, or bound to a wildcard one IPv4 address per
    interface, the primary one; aliases and IPv6 addresses are not in it.  A directed broadcast
    address of a subnet is not known here; the kernel refuses sending to it without
    ``SO_BROADCAST``, which the relay's socket does not set.)
    """
    host, port = addr[0], addr[1]
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if port == 0 or ip.is_unspecified or ip.is_multicast or ip == _BROADCAST:
        return True
    mine = str(ip) in own
    if mine and port == own_port:
        return True
    return not loopback_ok and (ip.is_loopback or mine)


def encode_first_contact(dest: NodeId, claimed: NodeId, packet: bytes) -> bytes:
    """The first-contact datagram carrying the Initial ``packet`` to ``dest`` from (it says) ``claimed``."""
    return b"".join((PLANE_MAGIC, FIRST_CONTACT_TOKEN, dest.to_bytes(), claimed.to_bytes(), packet))


def encode_first_reply(src: NodeId, packet: bytes | memoryview) -> bytes:
    """A packet from ``src`` to a first contact's address (no relay session there yet)."""
    return b"".join((PLANE_MAGIC, FIRST_CONTACT_TOKEN, src.to_bytes(), packet))


def open_first_reply(data: bytes) -> tuple[bytes, memoryview, memoryview] | None:
    """(destination connection id, source NodeId's bytes, packet) of a first contact's reply (its
    token checked by the caller); None unless it carries a QUIC v1 long-header packet.

    The source and the packet are views into ``data``: nothing is copied before the caller
    knows it takes the reply."""
    if len(data) <= PLANE_OVERHEAD:
        return None
    view = memoryview(data)
    packet = view[PLANE_OVERHEAD:]
    cids = long_header_cids(packet)
    if cids is None:
        return None
    return cids[0], view[_TOKEN_END:PLANE_OVERHEAD], packet


@dataclass
class FirstContactStats:
    """What the relay did with first contacts and their replies."""

    #: first contacts forwarded to their destination
    forwarded: int = 0
    #: replies sent to a first contact's address (its claimed node had no relay connection)
    replies: int = 0
    #: bytes of those replies
    reply_bytes: int = 0
    #: dropped: this relay refuses first contacts (``RelayServer(first_contact=False)``)
    dropped_refused: int = 0
    #: dropped: too short, not a full-size QUIC v1 Initial, or naming the relay or itself
    dropped_malformed: int = 0
    #: dropped: the destination has no relay connection here
    dropped_unknown_destination: int = 0
    #: dropped: the claimed node has a relay connection here (answers would go to it)
    dropped_claimed_registered: int = 0
    #: dropped: over the global rate
    dropped_rate_limited: int = 0
    #: dropped: its source (IPv4 address, IPv6 /64) has :data:`MAX_PER_SOURCE` live first contacts already
    dropped_source_limit: int = 0
    #: dropped: its destination has :data:`MAX_PER_DESTINATION` live first contacts already
    dropped_destination_limit: int = 0
    #: dropped: the table is full
    dropped_table_full: int = 0
    #: dropped: the same (claimed node, destination) is live from another address, or for another
    #: connection (an Initial that is not a retransmission of the first one's; the first one holds)
    dropped_conflict: int = 0
    #: dropped: from an address answers must not go to (:func:`refused_reply_address`)
    dropped_bad_address: int = 0
    #: dropped: a retransmission beyond its entry's :data:`MAX_RETRANSMISSIONS`
    dropped_retransmissions: int = 0
    #: replies not sent to the first contact: beyond its byte budget (refused as to an unknown destination)
    replies_over_budget: int = 0
    #: 0-RTT packets forwarded behind their entry's Initial (a returning client's early request)
    early_forwarded: int = 0
    #: 0-RTT packets dropped: no live entry for their (claimed node, destination)
    early_dropped_no_entry: int = 0
    #: 0-RTT packets dropped: from another address than their entry's Initial, or of another
    #: connection (connection ids)
    early_dropped_conflict: int = 0
    #: 0-RTT packets dropped: beyond their entry's :data:`MAX_EARLY_PACKETS` or :data:`MAX_EARLY_BYTES`
    early_dropped_limit: int = 0
    #: the destination's 1-RTT packets to a first contact's connection held until the claimed node
    #: registers (its answer to an early request, sent before the client's relay Finished arrived)
    held: int = 0
    #: held packets sent to the claimed node's relay connection once it registered (counted by the relay)
    held_delivered: int = 0
    #: held packets dropped: their entry expired before the claimed node registered (or it left at once)
    held_expired: int = 0
    #: 1-RTT packets not held: beyond the entry's :data:`MAX_EARLY_PACKETS` or :data:`MAX_EARLY_BYTES`
    #: (refused as to an unknown destination)
    held_over_limit: int = 0


class _Entry:
    __slots__ = (
        "addr",
        "budget",
        "dcid",
        "early_bytes",
        "early_packets",
        "expires",
        "held",
        "held_bytes",
        "retransmissions",
        "scid",
        "server_cid",
        "source",
    )

    def __init__(self, addr: Address, source: Hashable, expires: float, dcid: bytes, scid: bytes) -> None:
        self.addr = addr
        self.source = source
        self.budget = 0
        self.expires = expires
        self.retransmissions = 0
        #: 0-RTT packets (and their datagrams' bytes) forwarded behind the Initial
        self.early_packets = 0
        self.early_bytes = 0
        #: the destination's 1-RTT packets to this connection, held for the claimed node's registration
        self.held: list[bytes] = []
        self.held_bytes = 0
        #: the first Initial's connection ids, and the one the destination answers from (once known)
        self.dcid = dcid
        self.scid = scid
        self.server_cid: bytes | None = None

    def same_connection(self, cids: tuple[bytes, bytes]) -> bool:
        """True if an Initial with ``cids`` (destination, source) belongs to this entry's connection."""
        dcid, scid = cids
        return scid == self.scid and (dcid == self.dcid or dcid == self.server_cid)


class FirstContacts:
    """The relay's bounded table of first contacts, keyed by (claimed NodeId, destination).

    Sans-I/O: :class:`~asgi_p2p.relay.server.RelayServer` calls :meth:`admit` for each
    first contact (Initial) it would forward, :meth:`admit_early` for each 0-RTT one,
    :meth:`reply_to` for each long-header packet to a node that has no relay connection and
    :meth:`hold` for each short-header one, and :meth:`forget` when a node registers.
    Entries expire :data:`EXPIRY` seconds after they were made (a retransmitted Initial
    does not extend that), in the order they were made, so expiry costs O(1) per entry.
    """

    def __init__(
        self,
        now: float,
        *,
        max_entries: int = MAX_ENTRIES,
        max_per_source: int = MAX_PER_SOURCE,
        max_per_destination: int = MAX_PER_DESTINATION,
        rate: float = RATE,
        expiry: float = EXPIRY,
    ) -> None:
        if min(max_entries, max_per_source, max_per_destination) <= 0 or expiry <= 0:
            raise ValueError("first contact limits must be positive")
        self.max_entries = max_entries
        self.max_per_source = max_per_source
        self.max_per_destination = max_per_destination
        self.expiry = expiry
        self._bucket = TokenBucket(rate, rate, now)
        self._entries: dict[tuple[NodeId, NodeId], _Entry] = {}
        self._per_source: dict[Hashable, int] = {}
        self._per_destination: dict[Hashable, int] = {}
        self.stats = FirstContactStats()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def parse(data: bytes) -> tuple[NodeId, NodeId, memoryview, tuple[bytes, bytes]] | None:
        """(destination, claimed sender, packet, its connection ids) of a first-contact datagram
        carrying a full-size Initial or a 0-RTT packet (:func:`is_zero_rtt` tells which); None if
        malformed."""
        if len(data) <= FIRST_CONTACT_OVERHEAD:
            return None
        packet = memoryview(data)[FIRST_CONTACT_OVERHEAD:]
        cids = long_header_cids(packet) if is_full_initial(packet) or is_zero_rtt(packet) else None
        if cids is None:
            return None
        dest = NodeId(data[_TOKEN_END:PLANE_OVERHEAD])
        claimed = NodeId(data[PLANE_OVERHEAD:FIRST_CONTACT_OVERHEAD])
        if dest == claimed:
            return None
        return dest, claimed, packet, cids

    def expire(self, now: float) -> None:
        """Forget the entries expired at ``now`` (also done by :meth:`admit` and :meth:`reply_to`;
        the relay calls it periodically too, so that a flood's entries go when they expire)."""
        entries = self._entries
        while entries:
            key, entry = next(iter(entries.items()))
            if entry.expires > now:
                return
            del entries[key]
            self._release(key, entry)

    def _release(self, key: tuple[NodeId, NodeId], entry: _Entry) -> None:
        self.stats.held_expired += len(entry.held)
        _decrement(self._per_source, entry.source)
        _decrement(self._per_destination, key[1])

    def admit(
        self, claimed: NodeId, dest: NodeId, addr: Address, size: int, now: float, cids: tuple[bytes, bytes]
    ) -> bool:
        """Note a first contact of ``size`` bytes from ``addr`` whose Initial has connection ids
        ``cids`` (destination, source; :func:`long_header_cids`); False: drop it (counted).

        A first contact for a live entry is forwarded only if it comes from the same address
        and retransmits the same connection, at most :data:`MAX_RETRANSMISSIONS` times (its
        budget grows by :data:`REPLY_FACTOR` times ``size``, its lifetime does not); the global
        rate applies to every one forwarded.
        """
        self.expire(now)
        stats = self.stats
        key = (claimed, dest)
        entry = self._entries.get(key)
        source: Hashable = None
        if entry is not None:
            if entry.addr != addr or not entry.same_connection(cids):
                stats.dropped_conflict += 1
                return False
            if entry.retransmissions >= MAX_RETRANSMISSIONS:
                stats.dropped_retransmissions += 1
                return False
        else:
            if len(self._entries) >= self.max_entries:
                stats.dropped_table_full += 1
                return False
            source = source_of(addr)
            if self._per_source.get(source, 0) >= self.max_per_source:
                stats.dropped_source_limit += 1
                return False
            if self._per_destination.get(dest, 0) >= self.max_per_destination:
                stats.dropped_destination_limit += 1
                return False
        if not self._bucket.take(1, now):
            stats.dropped_rate_limited += 1
            return False
        if entry is None:
            entry = self._entries[key] = _Entry(addr, source, now + self.expiry, *cids)
            self._per_source[source] = self._per_source.get(source, 0) + 1
            self._per_destination[dest] = self._per_destination.get(dest, 0) + 1
        else:
            entry.retransmissions += 1
        entry.budget += REPLY_FACTOR * size
        stats.forwarded += 1
        return True

    def admit_early(
        self, claimed: NodeId, dest: NodeId, addr: Address, size: int, now: float, cids: tuple[bytes, bytes]
    ) -> bool:
        """Note a first contact of ``size`` bytes from ``addr`` carrying a 0-RTT packet with
        connection ids ``cids``; False: drop it (counted).

        Forwarded only within a live entry for (``claimed``, ``dest``): from its Initial's
        address, of its connection (:meth:`_Entry.same_connection`), within
        :data:`MAX_EARLY_PACKETS` and :data:`MAX_EARLY_BYTES`, and taking a token of the global
        rate.  Nothing is allocated, and the entry's reply budget and lifetime do not change.
        """
        self.expire(now)
        stats = self.stats
        entry = self._entries.get((claimed, dest))
        if entry is None:
            stats.early_dropped_no_entry += 1
            return False
        if entry.addr != addr or not entry.same_connection(cids):
            stats.early_dropped_conflict += 1
            return False
        if entry.early_packets >= MAX_EARLY_PACKETS or entry.early_bytes + size > MAX_EARLY_BYTES:
            stats.early_dropped_limit += 1
            return False
        if not self._bucket.take(1, now):
            stats.dropped_rate_limited += 1
            return False
        entry.early_packets += 1
        entry.early_bytes += size
        stats.early_forwarded += 1
        return True

    def reply_to(
        self, dst: NodeId, src: NodeId, size: int, now: float, cids: tuple[bytes, bytes]
    ) -> tuple[bool, Address | None]:
        """Where a ``size``-byte long-header packet from ``src`` to ``dst`` (which has no relay
        connection) with connection ids ``cids`` (destination, source) goes.

        (False, None): it answers no live first contact of ``dst`` to ``src``: none is live, or
        the packet is addressed to another connection than the first contact's (its destination
        connection id is not that Initial's source connection id: say the destination's own
        client Initial to ``dst``); the caller goes on as before first contact existed (unknown
        destination).  (True, address): send it there (budget taken; its source connection id,
        the destination's, is one the first contact's retransmissions may then be addressed to).
        (True, None): beyond the budget (counted; the relay refuses it as usual).
        """
        self.expire(now)
        entry = self._entries.get((dst, src))
        if entry is None or cids[0] != entry.scid:
            return False, None
        if size > entry.budget:
            self.stats.replies_over_budget += 1
            return True, None
        entry.server_cid = cids[1]
        entry.budget -= size
        self.stats.replies += 1
        self.stats.reply_bytes += size
        return True, entry.addr

    def hold(self, dst: NodeId, src: NodeId, packet: bytes | memoryview, now: float) -> bool:
        """Hold the short-header (1-RTT) ``packet`` from ``src`` to ``dst`` (which has no relay
        connection) for ``dst``'s registration, if it is addressed to a live first contact's
        connection of ``dst`` to ``src`` (its destination connection id starts with that Initial's
        non-empty source connection id): a destination's answer to an early request that arrives
        before the client's relay Finished.  Nothing held ever goes to the first contact's
        address: :meth:`forget` hands it back to be sent to the registered node's connection.

        False: not such a packet, or beyond the entry's :data:`MAX_EARLY_PACKETS` or
        :data:`MAX_EARLY_BYTES` (counted); the caller refuses it as usual.
        """
        self.expire(now)
        entry = self._entries.get((dst, src))
        scid = entry.scid if entry is not None else b""
        if entry is None or not scid or len(packet) <= len(scid) or bytes(packet[1 : 1 + len(scid)]) != scid:
            return False
        if len(entry.held) >= MAX_EARLY_PACKETS or entry.held_bytes + len(packet) > MAX_EARLY_BYTES:
            self.stats.held_over_limit += 1
            return False
        entry.held.append(bytes(packet))
        entry.held_bytes += len(packet)
        self.stats.held += 1
        return True

    def forget(self, claimed: NodeId) -> list[tuple[NodeId, bytes]]:
        """``claimed`` registered with the relay: its replies go to its connection from now on.

        Returns the packets held for it (:meth:`hold`) as (sender, packet), in the order they came,
        for the caller to send to that connection (and count in ``held_delivered``)."""
        held: list[tuple[NodeId, bytes]] = []
        for key in [k for k in self._entries if k[0] == claimed]:
            entry = self._entries.pop(key)
            held.extend((key[1], packet) for packet in entry.held)
            entry.held.clear()
            self._release(key, entry)
        return held


def _decrement(counts: dict[Hashable, int], key: Hashable) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]
