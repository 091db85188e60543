"""Relay wire frames and the relay server's routing state (sans-I/O).

Relay clients hold a QUIC connection with ALPN :data:`RELAY_ALPN` to their
relay; every frame below travels as one QUIC DATAGRAM frame payload.  The
relay learns the client's NodeId from the mutual-TLS handshake, never from a
frame, so a client cannot speak as another node.

Frame layout (integers big-endian)::

    version  1   RELAY_VERSION (1)
    type     1
    body     *

    type 1 SEND           client -> relay  dst NodeId (32) + packet (1.. bytes, the rest)
    type 2 RECV           relay -> client  src NodeId (32) + packet (1.. bytes, the rest)
    type 3 OBSERVED_ADDR  relay -> client  address: 4 + IPv4 (4) + port (2) | 6 + IPv6 (16) + port (2)
    type 4 SIGNAL         both ways        peer NodeId (32) + payload (1.. bytes, the rest);
                                           peer = destination from a client, source from the relay
    type 5 ERROR          relay -> client  code (1) + flags (1) + [NodeId (32)] + [fits (4)]
                                           + message length (2) + UTF-8 message (the rest, <= 1024)
    type 6 PLANE_TOKEN    relay -> client  plane version (1, PLANE_VERSION) + token (8)

PLANE_TOKEN offers the client the relay's UDP data plane (:mod:`asgi_p2p.relay.plane`):
forwarded packets may travel as plain UDP datagrams carrying ``token`` instead of SEND
and RECV frames.  A client that does not know the frame (or the plane version) drops
it and keeps using SEND frames; the relay sends a client plane datagrams only after
that client sent it one, so either side may be older.

ERROR ``flags``: bit 0 (0x01) a NodeId follows (the destination concerned), bit 1
(0x02) a ``fits`` u32 follows: for TOO_LARGE only, the largest packet the relay
would forward to that destination.  Other bits must be 0; frames without
``fits`` have the same bytes as before it existed (flags 0 or 1).  The message
is for people (logs); what a client acts on is the code, node and ``fits``.

SEND and RECV have the same size, so a packet fits the destination when
``len(packet) + FORWARD_OVERHEAD <= max_datagram_size``.  Parsing is strict:
unknown versions and types, truncation, trailing bytes, empty packets, unknown
ERROR flags, a ``fits`` with a code other than TOO_LARGE and invalid UTF-8 all
raise :class:`~asgi_p2p.errors.ProtocolError` saying what was wrong, and every
frame that parses re-encodes to the same bytes.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, fields
from enum import IntEnum

from ..config import MAX_UDP_PAYLOAD, Limit
from ..errors import InvalidConfiguration, P2PError, ProtocolError
from ..identity import NodeId
from ..net.addr import WireReader, encode_address, normalize_address
from ..net.base import Address

__all__ = [
    "FORWARD_OVERHEAD",
    "PLANE_TOKEN_SIZE",
    "PLANE_VERSION",
    "QUEUE_ENTRY_OVERHEAD",
    "QUIC_MIN_DATAGRAM_SIZE",
    "RELAY_ALPN",
    "RELAY_DATAGRAM_SIZE",
    "RELAY_LIMITS",
    "RELAY_PACKET_OVERHEAD",
    "RELAY_VERSION",
    "Action",
    "Error",
    "ErrorCode",
    "Frame",
    "ObservedAddr",
    "PlaneToken",
    "Recv",
    "RelayFull",
    "RelayLimits",
    "RelayRouter",
    "RelayStats",
    "Room",
    "Send",
    "Signal",
    "TokenBucket",
    "parse_frame",
]

logger = logging.getLogger("asgi_p2p.relay")

RELAY_ALPN = "asgi-p2p/relay/1"
RELAY_VERSION = 1
#: Bytes a SEND or RECV frame adds to the packet it carries.
FORWARD_OVERHEAD = 2 + 32
#: Bytes a relay connection's 1-RTT packet adds around one DATAGRAM frame: first byte (1),
#: destination connection id (8, what endpoints issue), packet number (2), AEAD tag (16),
#: DATAGRAM frame type (1) and length (2).
RELAY_PACKET_OVERHEAD = 1 + 8 + 2 + 16 + 1 + 2
#: Smallest QUIC datagram (RFC 9000 section 14): what nodes build whenever a packet may be relayed.
QUIC_MIN_DATAGRAM_SIZE = 1200
#: The relay endpoint's default datagram size: one full 1200-byte QUIC packet in a RECV frame in a
#: 1-RTT packet (1264 bytes).  Every client<->relay path must carry UDP payloads this large.
RELAY_DATAGRAM_SIZE = QUIC_MIN_DATAGRAM_SIZE + FORWARD_OVERHEAD + RELAY_PACKET_OVERHEAD
MAX_ERROR_MESSAGE = 1024
#: ERROR flags: a NodeId follows; a ``fits`` u32 follows
_ERROR_HAS_NODE = 0x01
_ERROR_HAS_FITS = 0x02
_MAX_FITS = 0xFFFF_FFFF

FRAME_SEND = 1
FRAME_RECV = 2
_OBSERVED_ADDR = 3
_SIGNAL = 4
_ERROR = 5
_PLANE_TOKEN = 6
#: The data plane version a PLANE_TOKEN frame offers (see :mod:`asgi_p2p.relay.plane`).
PLANE_VERSION = 1
#: Bytes of a data plane token.
PLANE_TOKEN_SIZE = 8
_RECV_PREFIX = bytes((RELAY_VERSION, FRAME_RECV))
_NAMES = {FRAME_SEND: "SEND", FRAME_RECV: "RECV", _OBSERVED_ADDR: "OBSERVED_ADDR", _SIGNAL: "SIGNAL", _ERROR: "ERROR"}
_NAMES[_PLANE_TOKEN] = "PLANE_TOKEN"


class ErrorCode(IntEnum):
    """Why the relay refused something (the ERROR frame's ``code``)."""

    RATE_LIMITED = 1  #: the client exceeded its packet or byte rate; the packet was dropped
    UNKNOWN_DESTINATION = 2  #: the destination node is not connected to this relay
    TOO_LARGE = 3  #: the frame would not fit the destination's QUIC datagram size
    SERVER_FULL = 4  #: the relay's client table is full; try another relay
    PROTOCOL = 5  #: the client broke the protocol; the relay closes the connection


def _check_packet(packet: bytes, what: str) -> bytes:
    if not isinstance(packet, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, got {type(packet).__name__}")
    if len(packet) == 0:
        raise ValueError(f"{what} must not be empty")
    return bytes(packet)


@dataclass(frozen=True)
class Send:
    """Client -> relay: forward ``packet`` to the client ``dst``."""

    dst: NodeId
    packet: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "packet", _check_packet(self.packet, "SEND packet"))

    def encode(self) -> bytes:
        return bytes((RELAY_VERSION, FRAME_SEND)) + self.dst.to_bytes() + self.packet


@dataclass(frozen=True)
class Recv:
    """Relay -> client: ``packet`` sent by ``src``."""

    src: NodeId
    packet: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "packet", _check_packet(self.packet, "RECV packet"))

    def encode(self) -> bytes:
        return bytes((RELAY_VERSION, FRAME_RECV)) + self.src.to_bytes() + self.packet


@dataclass(frozen=True)
class ObservedAddr:
    """Relay -> client: the public address the relay sees the client's packets come from."""

    ip: str
    port: int

    def __post_init__(self) -> None:
        ip, port = normalize_address((self.ip, self.port))
        object.__setattr__(self, "ip", ip)
        object.__setattr__(self, "port", port)

    @property
    def addr(self) -> Address:
        return (self.ip, self.port)

    def encode(self) -> bytes:
        out = bytearray((RELAY_VERSION, _OBSERVED_ADDR))
        encode_address(out, (self.ip, self.port))
        return bytes(out)


@dataclass(frozen=True)
class Signal:
    """An opaque hole-punching message (e.g. a disco CALL_ME_MAYBE) to or from ``peer``."""

    peer: NodeId
    payload: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "payload", _check_packet(self.payload, "SIGNAL payload"))

    def encode(self) -> bytes:
        return bytes((RELAY_VERSION, _SIGNAL)) + self.peer.to_bytes() + self.payload


@dataclass(frozen=True)
class Error:
    """Relay -> client: something was refused; ``node`` names the destination concerned, if any.

    ``fits`` (TOO_LARGE only, optional): the largest packet the relay would
    forward to ``node``, in bytes.
    """

    code: int
    message: str
    node: NodeId | None = None
    fits: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.code <= 255:
            raise ValueError(f"error code must be 0..255, got {self.code}")
        if len(self.message.encode("utf-8")) > MAX_ERROR_MESSAGE:
            raise ValueError(f"error message longer than {MAX_ERROR_MESSAGE} bytes")
        if self.fits is not None:
            if self.code != ErrorCode.TOO_LARGE:
                raise ValueError(f"only a TOO_LARGE error carries fits, not code {self.code}")
            if not 0 <= self.fits <= _MAX_FITS:
                raise ValueError(f"fits must be 0..{_MAX_FITS}, got {self.fits}")

    def encode(self) -> bytes:
        flags = (0 if self.node is None else _ERROR_HAS_NODE) | (0 if self.fits is None else _ERROR_HAS_FITS)
        out = bytearray((RELAY_VERSION, _ERROR, self.code, flags))
        if self.node is not None:
            out += self.node.to_bytes()
        if self.fits is not None:
            out += self.fits.to_bytes(4, "big")
        msg = self.message.encode("utf-8")
        out += len(msg).to_bytes(2, "big")
        out += msg
        return bytes(out)

    @property
    def error_code(self) -> ErrorCode | None:
        """The code as an :class:`ErrorCode`, or None if this node does not know it."""
        try:
            return ErrorCode(self.code)
        except ValueError:
            return None


@dataclass(frozen=True)
class PlaneToken:
    """Relay -> client: the token that makes the client's data plane datagrams its own."""

    token: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.token, bytes) or len(self.token) != PLANE_TOKEN_SIZE:
            raise ValueError(f"a plane token is {PLANE_TOKEN_SIZE} bytes")

    def encode(self) -> bytes:
        return bytes((RELAY_VERSION, _PLANE_TOKEN, PLANE_VERSION)) + self.token


Frame = Send | Recv | ObservedAddr | Signal | Error | PlaneToken


def parse_frame(data: bytes) -> Frame:
    """Parse one relay frame; raises :class:`ProtocolError` for anything malformed."""
    reader = WireReader(data, "relay frame")
    version = reader.u8("version")
    if version != RELAY_VERSION:
        raise reader.error(f"unsupported version {version} (this node speaks {RELAY_VERSION})")
    kind = reader.u8("frame type")
    frame: Frame
    if kind in (FRAME_SEND, FRAME_RECV, _SIGNAL):
        name = _NAMES[kind]
        node = reader.node_id(f"{name} node id")
        payload = reader.rest()
        if not payload:
            raise reader.error(f"{name} carries an empty {'payload' if kind == _SIGNAL else 'packet'}")
        frame = (
            Send(node, payload)
            if kind == FRAME_SEND
            else Recv(node, payload)
            if kind == FRAME_RECV
            else Signal(node, payload)
        )
    elif kind == _OBSERVED_ADDR:
        ip, port = reader.address("OBSERVED_ADDR address")
        frame = ObservedAddr(ip, port)
    elif kind == _ERROR:
        code = reader.u8("ERROR code")
        flags = reader.u8("ERROR flags")
        if flags & ~(_ERROR_HAS_NODE | _ERROR_HAS_FITS):
            raise reader.error(f"ERROR flags {flags:#04x} set unknown bits (0x01 node and 0x02 fits are defined)")
        if flags & _ERROR_HAS_FITS and code != ErrorCode.TOO_LARGE:
            raise reader.error(f"ERROR code {code} carries fits, which only TOO_LARGE ({ErrorCode.TOO_LARGE}) does")
        about = reader.node_id("ERROR node id") if flags & _ERROR_HAS_NODE else None
        fits = int.from_bytes(reader.take(4, "ERROR fits"), "big") if flags & _ERROR_HAS_FITS else None
        length = reader.u16("ERROR message length")
        if length > MAX_ERROR_MESSAGE:
            raise reader.error(f"ERROR message of {length} bytes exceeds the limit {MAX_ERROR_MESSAGE}")
        frame = Error(code, reader.utf8(length, "ERROR message"), about, fits)
    elif kind == _PLANE_TOKEN:
        plane = reader.u8("PLANE_TOKEN version")
        if plane != PLANE_VERSION:
            raise reader.error(f"PLANE_TOKEN offers plane version {plane} (this node speaks {PLANE_VERSION})")
        frame = PlaneToken(bytes(reader.take(PLANE_TOKEN_SIZE, "PLANE_TOKEN token")))
    else:
        raise reader.error(f"unknown frame type {kind} (expected 1 SEND .. 6 PLANE_TOKEN)")
    reader.end()
    return frame


# -- server-side routing -----------------------------------------------------------


#: tokens a bucket may be short and still count as holding them (float rounding of refills)
_TOKEN_SLACK = 1e-6


class TokenBucket:
    """A token bucket refilled at ``rate`` per second up to ``burst``; time comes from the caller."""

    __slots__ = ("_last", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("token bucket rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._last = now

    def _refill(self, now: float) -> None:
        if now > self._last:  # a clock that stepped back never refills nor drains
            self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
            self._last = now

    def peek(self, amount: float, now: float) -> bool:
        """True if ``amount`` tokens are available at ``now`` (takes none)."""
        self._refill(now)
        return self.tokens >= amount - _TOKEN_SLACK

    def take(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens if available at ``now``."""
        self._refill(now)
        if self.tokens >= amount - _TOKEN_SLACK:
            self.tokens -= amount
            return True
        return False

    def wait(self, amount: float, now: float) -> float:
        """Seconds from ``now`` until ``amount`` tokens are available (0: now); ``amount`` is capped at the burst.

        Waiting that long makes :meth:`peek` true (a rounding error short counts as there).
        """
        self._refill(now)
        missing = min(amount, self.burst) - self.tokens
        return missing / self.rate if missing > _TOKEN_SLACK else 0.0


#: The largest rate or burst a :class:`RelayLimits` field may have (finite, far above any link).
MAX_RATE = 1e15


@dataclass(frozen=True)
class RelayLimits:
    """Limits a relay enforces (per client unless stated).

    Every field must be a finite number in the range :data:`RELAY_LIMITS` gives it;
    ``byte_burst`` and ``destination_byte_burst`` at least ``max_datagram_size`` (so a
    full packet can pass); ``destination_queue_bytes`` and ``max_queued_bytes`` at least
    ``max_datagram_size`` + :data:`QUEUE_ENTRY_OVERHEAD` (so a full packet can wait), and
    ``max_queued_bytes`` at least ``destination_queue_bytes``.  Otherwise
    :class:`~asgi_p2p.errors.InvalidConfiguration` names the field and the range.
    """

    max_clients: int = 10_000  #: the whole client table
    #: 16,000 packets/s: 16 MB/s of full relayed QUIC packets (1,200 bytes or less)
    packets_per_second: float = 16_000.0
    packet_burst: float = 32_000.0
    #: forwarded payload bytes (SEND packets, SIGNAL payloads): 16 MB/s, so that one
    #: download over a 100 Mbit/s link (12.5 MB/s at most) is never capped by the relay
    bytes_per_second: float = 16_000_000.0
    byte_burst: float = 32_000_000.0
    errors_per_second: float = 10.0  #: ERROR frames the relay sends back to one client
    error_burst: float = 20.0
    max_datagram_size: int = 1200  #: default QUIC datagram payload limit of a destination
    #: what one client may *receive* through the relay, all its sources together (RECV
    #: packets and SIGNALs); while a destination's budget is contended, its sources share
    #: it fairly (deficit round robin over per-source queues); the same as a source's
    #: budget, so that one download over a 100 Mbit/s link is not capped on this side either
    destination_packets_per_second: float = 16_000.0
    destination_packet_burst: float = 32_000.0
    destination_bytes_per_second: float = 16_000_000.0
    destination_byte_burst: float = 32_000_000.0
    #: memory for packets waiting for one destination's budget (each packet costs its
    #: frame plus :data:`QUEUE_ENTRY_OVERHEAD`); when full, the longest source queue drops
    destination_queue_bytes: int = 262_144
    #: memory for waiting packets of all destinations together; when full, new ones are dropped
    max_queued_bytes: int = 33_554_432

    def __post_init__(self) -> None:
        for f in fields(self):
            RELAY_LIMITS[f.name].check(f.name, getattr(self, f.name), "RelayLimits.")
        if self.byte_burst < self.max_datagram_size:
            raise InvalidConfiguration(
                f"RelayLimits.byte_burst must be at least max_datagram_size ({self.max_datagram_size}), "
                f"so that a full packet can pass, got {self.byte_burst:g}",
                setting="byte_burst",
            )
        if self.destination_byte_burst < self.max_datagram_size:
            raise InvalidConfiguration(
                f"RelayLimits.destination_byte_burst must be at least max_datagram_size ({self.max_datagram_size}), "
                f"so that a full packet can pass, got {self.destination_byte_burst:g}",
                setting="destination_byte_burst",
            )
        one = self.max_datagram_size + QUEUE_ENTRY_OVERHEAD
        for name in ("destination_queue_bytes", "max_queued_bytes"):
            value = getattr(self, name)
            if value < one:
                raise InvalidConfiguration(
                    f"RelayLimits.{name} must be at least max_datagram_size + {QUEUE_ENTRY_OVERHEAD} ({one} bytes), "
                    f"so that a full packet can wait, got {value}",
                    setting=name,
                )
        if self.max_queued_bytes < self.destination_queue_bytes:
            raise InvalidConfiguration(
                f"RelayLimits.max_queued_bytes must be at least destination_queue_bytes "
                f"({self.destination_queue_bytes}), got {self.max_queued_bytes}",
                setting="max_queued_bytes",
            )


#: Bookkeeping bytes a queued frame is charged on top of its length (object, deque slot).
QUEUE_ENTRY_OVERHEAD = 64
#: The most memory a :class:`RelayLimits` queue bound may allow, in bytes (16 GiB).
MAX_QUEUE_BYTES = 1 << 34


def _rate(low: float = 0.0, *, open_low: bool = True, unit: str = "") -> Limit:
    return Limit(low, MAX_RATE, integer=False, open_low=open_low, unit=unit)


#: The allowed values of every :class:`RelayLimits` field.
RELAY_LIMITS: dict[str, Limit] = {
    # the relay endpoint allows max_clients + 16 connections (NetworkConfig.max_connections <= 2**20)
    "max_clients": Limit(1, 1_000_000),
    "packets_per_second": _rate(unit="packets per second"),
    "packet_burst": _rate(1, open_low=False, unit="packets"),
    "bytes_per_second": _rate(unit="bytes per second"),
    "byte_burst": _rate(1200, open_low=False, unit="bytes"),
    "errors_per_second": _rate(unit="frames per second"),
    "error_burst": _rate(1, open_low=False, unit="frames"),
    "max_datagram_size": Limit(1200, MAX_UDP_PAYLOAD, unit="bytes"),
    "destination_packets_per_second": _rate(unit="packets per second"),
    "destination_packet_burst": _rate(1, open_low=False, unit="packets"),
    "destination_bytes_per_second": _rate(unit="bytes per second"),
    "destination_byte_burst": _rate(1200, open_low=False, unit="bytes"),
    # at least one full packet (max_datagram_size + QUEUE_ENTRY_OVERHEAD) can wait
    "destination_queue_bytes": Limit(1200 + QUEUE_ENTRY_OVERHEAD, MAX_QUEUE_BYTES, unit="bytes"),
    "max_queued_bytes": Limit(1200 + QUEUE_ENTRY_OVERHEAD, MAX_QUEUE_BYTES, unit="bytes"),
}


@dataclass
class RelayStats:
    """Counters of a :class:`RelayRouter` (for metrics)."""

    forwarded_packets: int = 0
    forwarded_bytes: int = 0
    signals: int = 0
    dropped_rate_limited: int = 0
    dropped_unknown_destination: int = 0
    dropped_too_large: int = 0
    errors_sent: int = 0
    errors_suppressed: int = 0
    refused_full: int = 0
    #: packets that waited for their destination's budget (fair queueing), then went out
    queued: int = 0
    #: dropped because their destination's queue was full (its longest source queue drops)
    dropped_destination_busy: int = 0
    #: dropped because the queues of all destinations together were full
    dropped_relay_busy: int = 0


class _FairQueue:
    """Frames waiting for one destination's budget: a bounded queue per source, served by
    deficit round robin (Shreedhar and Varghese, 1996), so every source gets an equal share
    of bytes whatever the others send."""

    __slots__ = ("deficit", "flow_bytes", "flows", "granted", "need", "size")

    def __init__(self) -> None:
        #: sources with waiting frames, in round-robin order (the first is being served)
        self.flows: dict[NodeId, deque[bytes]] = {}
        self.flow_bytes: dict[NodeId, int] = {}  #: charged bytes per source
        self.deficit: dict[NodeId, int] = {}
        self.granted = False  #: the first source got its quantum for this round
        self.size = 0  #: charged bytes of every waiting frame
        self.need = 0  #: budget bytes the frame due next needs (set when the budget ran out)

    def push(self, src: NodeId, frame: bytes) -> None:
        flow = self.flows.get(src)
        if flow is None:
            flow = self.flows[src] = deque()
            self.flow_bytes[src] = 0
            self.deficit[src] = 0
        flow.append(frame)
        cost = len(frame) + QUEUE_ENTRY_OVERHEAD
        self.flow_bytes[src] += cost
        self.size += cost

    def drop_tail(self, src: NodeId) -> int:
        """Drop the newest frame of ``src``; returns its charged size."""
        frame = self.flows[src].pop()
        cost = len(frame) + QUEUE_ENTRY_OVERHEAD
        self.flow_bytes[src] -= cost
        self.size -= cost
        if not self.flows[src]:
            self._remove(src)
        return cost

    def longest(self) -> NodeId:
        return max(self.flow_bytes, key=self.flow_bytes.__getitem__)

    def _remove(self, src: NodeId) -> None:
        if self.granted and next(iter(self.flows)) == src:
            self.granted = False
        del self.flows[src], self.flow_bytes[src], self.deficit[src]

    def next_frame(self, quantum: int) -> tuple[NodeId, bytes]:
        """The frame deficit round robin sends next (not removed: see :meth:`pop`)."""
        while True:
            src = next(iter(self.flows))
            if not self.granted:
                self.deficit[src] += quantum
                self.granted = True
            frame = self.flows[src][0]
            if len(frame) <= self.deficit[src]:
                return src, frame
            self.flows[src] = self.flows.pop(src)  # its turn is over: to the back of the round
            self.granted = False

    def pop(self, src: NodeId) -> bytes:
        """Remove the frame :meth:`next_frame` returned."""
        flow = self.flows[src]
        frame = flow.popleft()
        cost = len(frame) + QUEUE_ENTRY_OVERHEAD
        self.flow_bytes[src] -= cost
        self.size -= cost
        self.deficit[src] -= len(frame)
        if not flow:
            self._remove(src)  # an emptied queue keeps no credit (DRR)
        return frame


def _take_budget(target: _Client, size: int, now: float) -> bool:
    """Take one packet of ``size`` bytes from ``target``'s receive budget, if it has them.

    A packet larger than the byte burst (a destination whose connection carries more
    than ``max_datagram_size``) is charged the whole burst, so it can ever pass.
    """
    size = min(size, int(target.in_bytes.burst))
    if target.in_packets.peek(1, now) and target.in_bytes.peek(size, now):
        target.in_packets.take(1, now)
        target.in_bytes.take(size, now)
        return True
    return False


@dataclass
class _Client:
    conn: Hashable
    max_datagram_size: int
    packets: TokenBucket
    bytes: TokenBucket
    errors: TokenBucket
    #: what this client may receive (all sources together)
    in_packets: TokenBucket
    in_bytes: TokenBucket
    observed: Address | None = None
    counters: dict[str, int] = field(default_factory=lambda: {"sent": 0, "received": 0})
    #: frames waiting for this client's receive budget (None: none)
    queue: _FairQueue | None = None


class RelayFull(P2PError):
    """The relay's client table is full; :attr:`frame` is the ERROR to send before closing."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"relay is full ({limit} clients); connect to another relay or raise --limit-clients")
        self.frame = Error(ErrorCode.SERVER_FULL, str(self)).encode()


#: What a router asks its caller to do: send ``frame`` (one DATAGRAM) to the client ``node``.
Action = tuple[NodeId, bytes]
#: How many more frames a destination's connection takes now (its DATAGRAM queue's free slots).
Room = Callable[[NodeId], int]


class RelayRouter:
    """The relay server's client table and forwarding decisions.

    The caller authenticates each client (the NodeId comes from the QUIC
    handshake), calls :meth:`register` when its connection is up and
    :meth:`unregister` when it closes, and passes every received DATAGRAM to
    :meth:`handle_datagram`.  Each call returns the datagrams to send as
    ``(destination NodeId, frame bytes)``; every frame fits its destination's
    ``max_datagram_size``, which the caller must keep current (aioquic's
    ``send_datagram_frame`` checks nothing, and an oversized datagram blocks
    its queue for good).

    Fairness: each client's *sending* is limited (packets, bytes per second), and
    so is what each client *receives*, all sources together
    (``destination_*`` limits).  A packet for a destination whose budget is spent
    waits in that destination's queue for its source; the queues of one
    destination are served by deficit round robin, so sources share a contended
    destination equally (each gets at least its fair share of bytes, and a source
    sending less than that loses nothing), and a destination's flood never
    touches another destination's budget.  The caller may pass ``room``: how many
    more frames a destination's connection takes now (its DATAGRAM queue); while
    it is 0, packets wait in the fair queues instead of being dropped in arrival
    order.  Waiting packets go out from :meth:`poll`, due at :meth:`next_timer`
    (and whenever room may have appeared: :attr:`waiting_for_room`).  Every
    queue is bounded: per destination (``destination_queue_bytes``; when full,
    the source with the most bytes waiting loses its newest packet) and for the
    whole relay (``max_queued_bytes``).
    """

    def __init__(self, limits: RelayLimits | None = None) -> None:
        self.limits = limits or RelayLimits()
        self.stats = RelayStats()
        self._clients: dict[NodeId, _Client] = {}
        #: destinations with waiting frames (insertion order: served in turn by poll)
        self._backlog: dict[NodeId, None] = {}
        #: destinations whose frames wait for room on their connection, not for tokens
        self._blocked: set[NodeId] = set()
        self._queued_bytes = 0

    def __len__(self) -> int:
        return len(self._clients)

    def __contains__(self, node: object) -> bool:
        return node in self._clients

    def register(
        self,
        node: NodeId,
        now: float,
        *,
        conn: Hashable = None,
        observed_addr: tuple[str, int] | None = None,
        max_datagram_size: int | None = None,
    ) -> list[Action]:
        """Add an authenticated client; a newer connection of the same node replaces the old one.

        ``conn`` identifies the connection (so that :meth:`unregister` of a
        replaced connection does not remove its successor).  Returns the
        OBSERVED_ADDR frame for the client if ``observed_addr`` is given.
        Raises :class:`RelayFull` when the table is full.
        """
        limits = self.limits
        if node not in self._clients and len(self._clients) >= limits.max_clients:
            self.stats.refused_full += 1
            raise RelayFull(limits.max_clients)
        size = limits.max_datagram_size if max_datagram_size is None else max_datagram_size
        old = self._clients.get(node)
        if old is not None:
            self._drop_queue(node, old)  # frames for the old connection
        self._clients[node] = _Client(
            conn=conn,
            max_datagram_size=size,
            packets=TokenBucket(limits.packets_per_second, limits.packet_burst, now),
            bytes=TokenBucket(limits.bytes_per_second, limits.byte_burst, now),
            errors=TokenBucket(limits.errors_per_second, limits.error_burst, now),
            in_packets=TokenBucket(limits.destination_packets_per_second, limits.destination_packet_burst, now),
            in_bytes=TokenBucket(limits.destination_bytes_per_second, limits.destination_byte_burst, now),
        )
        logger.debug("relay client %s registered (%d clients)", node, len(self._clients))
        if observed_addr is None:
            return []
        return self.update_observed_addr(node, observed_addr)

    def unregister(self, node: NodeId, conn: Hashable = None) -> bool:
        """Remove a client (only if its connection is ``conn``, when given); True if removed."""
        client = self._clients.get(node)
        if client is None or (conn is not None and client.conn != conn):
            return False
        self._drop_queue(node, client)
        del self._clients[node]
        return True

    @property
    def queued_bytes(self) -> int:
        """Memory charged to waiting frames, all destinations (at most ``max_queued_bytes``)."""
        return self._queued_bytes

    def queued_for(self, node: NodeId) -> int:
        """Memory charged to frames waiting for ``node`` (at most ``destination_queue_bytes``)."""
        client = self._clients.get(node)
        return 0 if client is None or client.queue is None else client.queue.size

    @property
    def waiting_for_room(self) -> bool:
        """True if frames wait for room on a destination's connection (poll again soon)."""
        return bool(self._blocked)

    def poll(self, now: float, room: Room | None = None) -> list[Action]:
        """Send the waiting frames that the destinations' budgets (and ``room``) allow at ``now``."""
        actions: list[Action] = []
        for dst in list(self._backlog):
            target = self._clients[dst]
            self._drain(dst, target, now, room, actions)
        return actions

    def next_timer(self, now: float) -> float | None:
        """When a waiting frame's budget refills (None: nothing waits for tokens).

        Frames that wait for room are not covered: see :attr:`waiting_for_room`.
        """
        due: float | None = None
        for dst in self._backlog:
            if dst in self._blocked:
                continue
            target = self._clients[dst]
            assert target.queue is not None
            # the frame due next (deficit round robin is deterministic): its bytes, capped at the burst
            need = min(target.queue.need, target.in_bytes.burst)
            wait = max(target.in_packets.wait(1, now), target.in_bytes.wait(need, now))
            at = now + wait
            if due is None or at < due:
                due = at
        return due

    def _drop_queue(self, node: NodeId, client: _Client) -> None:
        if client.queue is not None:
            self._queued_bytes -= client.queue.size
            client.queue = None
        self._backlog.pop(node, None)
        self._blocked.discard(node)

    def update_observed_addr(self, node: NodeId, addr: tuple[str, int]) -> list[Action]:
        """Record the client's public address; returns an OBSERVED_ADDR frame if it changed."""
        client = self._client(node)
        normalized = normalize_address(addr)
        if client.observed == normalized:
            return []
        client.observed = normalized
        return [(node, ObservedAddr(*normalized).encode())]

    def observed_addr_frame(self, node: NodeId) -> list[Action]:
        """An OBSERVED_ADDR frame repeating the client's recorded public address (none if unknown)."""
        observed = self._client(node).observed
        return [] if observed is None else [(node, ObservedAddr(*observed).encode())]

    def set_max_datagram_size(self, node: NodeId, size: int) -> None:
        """Update the largest DATAGRAM payload the client's connection accepts."""
        self._client(node).max_datagram_size = size

    def observed_addr(self, node: NodeId) -> Address | None:
        return self._client(node).observed

    def handle_datagram(self, src: NodeId, data: bytes, now: float, room: Room | None = None) -> list[Action]:
        """Process one DATAGRAM from the registered client ``src``.

        ``room(node)``: how many more frames ``node``'s connection takes now (None:
        unlimited).  Raises :class:`ProtocolError` if the frame is malformed or is
        one only a relay may send; the caller then closes the client's connection.
        """
        client = self._client(src)
        if len(data) > FORWARD_OVERHEAD and data[0] == RELAY_VERSION and data[1] == FRAME_SEND:
            # the per-packet path: SEND -> RECV with one copy of the packet and no frame objects
            # (the same checks as parse_frame: a 32-byte node id and a non-empty packet)
            dst = NodeId(data[2:FORWARD_OVERHEAD])
            recv = b"".join((_RECV_PREFIX, src.to_bytes(), memoryview(data)[FORWARD_OVERHEAD:]))
            return self._forward(src, client, dst, recv, len(data) - FORWARD_OVERHEAD, now, room)
        frame = parse_frame(data)
        if isinstance(frame, Send):
            packet = Recv(src, frame.packet).encode()
            return self._forward(src, client, frame.dst, packet, len(frame.packet), now, room)
        if isinstance(frame, Signal):
            payload = Signal(src, frame.payload).encode()
            return self._forward(src, client, frame.peer, payload, len(frame.payload), now, room)
        raise ProtocolError(
            f"relay client {src} sent a {type(frame).__name__.upper()} frame, which only a relay may send"
        )

    def handle_packet(
        self, src: NodeId, dst: NodeId, packet: bytes | memoryview, now: float, room: Room | None = None
    ) -> list[Action]:
        """Forward one packet from the registered client ``src`` to ``dst``: a SEND frame's
        content that arrived in another wire form (a data plane datagram).

        The same budgets, queues and refusals as :meth:`handle_datagram`; the RECV frames
        returned are what :meth:`handle_datagram` returns for ``Send(dst, packet)``.
        """
        if len(packet) == 0:
            raise ProtocolError(f"relay client {src} sent an empty packet")
        recv = b"".join((_RECV_PREFIX, src.to_bytes(), packet))
        return self._forward(src, self._client(src), dst, recv, len(packet), now, room)

    def _client(self, node: NodeId) -> _Client:
        client = self._clients.get(node)
        if client is None:
            raise KeyError(f"node {node} is not registered with this relay")
        return client

    def _forward(
        self, src: NodeId, client: _Client, dst: NodeId, frame: bytes, size: int, now: float, room: Room | None
    ) -> list[Action]:
        client.counters["sent"] += 1
        if not (client.packets.peek(1, now) and client.bytes.peek(size, now)):
            self.stats.dropped_rate_limited += 1
            return self._error(
                src,
                client,
                now,
                ErrorCode.RATE_LIMITED,
                lambda: (
                    f"rate limit exceeded ({self.limits.packets_per_second:g} packets/s, "
                    f"{self.limits.bytes_per_second:g} bytes/s); packet to {dst} dropped"
                ),
                dst,
            )
        client.packets.take(1, now)
        client.bytes.take(size, now)
        target = self._clients.get(dst)
        if target is None:
            self.stats.dropped_unknown_destination += 1
            return self._error(
                src,
                client,
                now,
                ErrorCode.UNKNOWN_DESTINATION,
                lambda: f"node {dst} is not connected to this relay",
                dst,
            )
        if len(frame) > target.max_datagram_size:
            self.stats.dropped_too_large += 1
            fits = max(target.max_datagram_size - FORWARD_OVERHEAD, 0)
            return self._error(
                src,
                client,
                now,
                ErrorCode.TOO_LARGE,
                lambda: (
                    f"{size}-byte packet does not fit node {dst}'s datagram size "
                    f"{target.max_datagram_size} (at most {fits} bytes)"
                ),
                dst,
                fits=fits,
            )
        if (
            target.queue is None and (room is None or room(dst) > 0) and _take_budget(target, size, now)
        ):  # the destination's budget is not contended: straight through
            self._count_forwarded(target, frame)
            return [(dst, frame)]
        return self._enqueue(src, client, dst, target, frame, now, room)

    def _count_forwarded(self, target: _Client, frame: bytes) -> None:
        target.counters["received"] += 1
        if frame[1] == _SIGNAL:
            self.stats.signals += 1
        else:
            self.stats.forwarded_packets += 1
            self.stats.forwarded_bytes += len(frame) - FORWARD_OVERHEAD

    def _enqueue(
        self, src: NodeId, client: _Client, dst: NodeId, target: _Client, frame: bytes, now: float, room: Room | None
    ) -> list[Action]:
        """Queue ``frame`` behind the destination's budget (bounded), then send what is due."""
        limits = self.limits
        queue = target.queue
        if queue is None:
            queue = target.queue = _FairQueue()
        cost = len(frame) + QUEUE_ENTRY_OVERHEAD
        actions: list[Action] = []
        while queue.size + cost > limits.destination_queue_bytes:
            # longest queue drop: the source with the most bytes waiting loses its newest
            # packet, so a flooding source cannot crowd the others out of the queue
            longest = queue.longest() if queue.flow_bytes else src
            if longest == src or queue.flow_bytes[longest] <= queue.flow_bytes.get(src, 0) + cost:
                self.stats.dropped_destination_busy += 1
                self._settle(dst, target)
                return self._error(
                    src,
                    client,
                    now,
                    ErrorCode.RATE_LIMITED,
                    lambda: (
                        f"node {dst} receives more than its limit "
                        f"({limits.destination_packets_per_second:g} packets/s, "
                        f"{limits.destination_bytes_per_second:g} bytes/s) and this client's share of it "
                        "is queued full; packet dropped"
                    ),
                    dst,
                )
            self._queued_bytes -= queue.drop_tail(longest)
            self.stats.dropped_destination_busy += 1
        if self._queued_bytes + cost > limits.max_queued_bytes:
            self.stats.dropped_relay_busy += 1
            self._settle(dst, target)
            return self._error(
                src,
                client,
                now,
                ErrorCode.RATE_LIMITED,
                lambda: f"relay busy ({limits.max_queued_bytes} bytes of packets waiting); packet to {dst} dropped",
                dst,
            )
        queue.push(src, frame)
        self._queued_bytes += cost
        self.stats.queued += 1
        self._backlog[dst] = None
        self._drain(dst, target, now, room, actions)
        return actions

    def _settle(self, dst: NodeId, target: _Client) -> None:
        """Forget an empty queue (after drops)."""
        if target.queue is not None and not target.queue.flows:
            self._drop_queue(dst, target)

    def _drain(self, dst: NodeId, target: _Client, now: float, room: Room | None, out: list[Action]) -> None:
        """Send ``dst``'s waiting frames while its budget (and room) lasts."""
        queue = target.queue
        assert queue is not None
        space = room(dst) if room is not None else None
        quantum = max(target.max_datagram_size, 1)
        while queue.flows:
            if space is not None and space <= 0:
                self._blocked.add(dst)
                return
            src, frame = queue.next_frame(quantum)
            if not _take_budget(target, len(frame) - FORWARD_OVERHEAD, now):
                queue.need = len(frame) - FORWARD_OVERHEAD
                self._blocked.discard(dst)
                return
            queue.pop(src)
            self._queued_bytes -= len(frame) + QUEUE_ENTRY_OVERHEAD
            self._count_forwarded(target, frame)
            out.append((dst, frame))
            if space is not None:
                space -= 1
        self._drop_queue(dst, target)

    def _error(
        self,
        src: NodeId,
        client: _Client,
        now: float,
        code: ErrorCode,
        describe: Callable[[], str],
        node: NodeId,
        *,
        fits: int | None = None,
    ) -> list[Action]:
        """An ERROR frame for ``src``, if its error budget allows; ``describe()`` makes the
        message (only then: a flood of dropped packets must not cost a string each)."""
        if not client.errors.take(1, now):
            self.stats.errors_suppressed += 1
            return []
        message = describe()
        frame = Error(code, message, node, fits).encode()
        if len(frame) > client.max_datagram_size:
            room = client.max_datagram_size - (len(frame) - len(message.encode("utf-8")))
            frame = Error(code, message[: max(room, 0)], node, fits).encode()
            if len(frame) > client.max_datagram_size:
                self.stats.errors_suppressed += 1
                return []
        self.stats.errors_sent += 1
        return [(src, frame)]
