"""Disco: authenticated hole-punching messages (sans-I/O).

Disco packets share the endpoint's UDP socket with QUIC.  Every packet starts
with :data:`DISCO_MAGIC` (``00 50 32 50 44``, ``"\\x00P2PD"``).  Its first byte
has both the 0x80 (long header) and the 0x40 (fixed bit) bits clear, and no
QUIC packet of version 1 or 2 can look like that: a long header has 0x80 set,
and a short header must have the fixed bit set (RFC 9000 §17.2, §17.3.1; a
stateless reset is built to look like a short header, so it has 0x40 set too).
Only a peer that negotiated RFC 9287 "greasing the QUIC bit" may clear 0x40;
aioquic 1.7.2 neither offers it nor accepts such packets, and the endpoint must
never enable it.  :func:`is_disco` is the one-byte-plus-magic check the socket
demultiplexer uses.

Wire format (all integers big-endian)::

    magic     5   b"\\x00P2PD"
    version   1   1
    type      1   1 PING, 2 PONG, 3 CALL_ME_MAYBE
    sender    32  the sender's NodeId (Ed25519 public key)
    time      8   milliseconds on the shared clock when the packet was sealed
    body      *   PING: tx_id (12) + padding (zero or more 0x00 bytes)
                  PONG: tx_id (12) + address (the source address the PING came from)
                        + size (2: the length of the PING datagram as received)
                  CALL_ME_MAYBE: count (1) + count addresses
    signature 64  Ed25519 by the sender over
                  b"asgi-p2p disco v1\\x00" + receiver NodeId + every byte above

A PING padded to N bytes probes whether the path carries N-byte datagrams
(datagram packetization layer PMTU discovery, RFC 8899): its PONG stays small
and echoes N, so each side learns the size its own sending direction carries.
Padding bytes must be zero, and a padded PING is at most
:data:`MAX_DISCO_DATAGRAM` bytes.

An address is ``4`` + 4 bytes IPv4 + 2 bytes port, or ``6`` + 16 bytes IPv6 +
2 bytes port (:mod:`asgi_p2p.net.addr`, the encoding the relay protocol and
node records use too).

Why Ed25519 signatures and not an HMAC keyed by an X25519 shared secret: a
node's only key is its Ed25519 identity key, so a signature can be checked
against the NodeId we want to talk to with nothing else known, and no
Ed25519-to-X25519 key conversion (not offered by ``cryptography``) or key cache
is needed.  The cost is one signature (~50 µs) per packet sent and one
verification (~150 µs) per packet received, at a rate of a few packets per
second per peer.  The receiver's id is signed but not sent, so a packet meant
for one node is worthless to every other; the context string keeps these
signatures apart from node-record signatures made with the same key.

Replays: a packet is accepted only if its time lies within ``max_clock_skew``
of the receiver's shared clock and the digest of its signed content was not
seen before (:class:`ReplayGuard`, bounded).  A PONG is accepted only for a
``tx_id`` we sent, from the address we sent it to, once (the prober's job:
:class:`~asgi_p2p.paths.prober.PathProber`).

Time: packet timestamps are seconds on a clock both peers share; the caller
passes them (:func:`seal`, :meth:`ReplayGuard.check`).  Nothing here reads a
clock or the global random generator.
"""

from __future__ import annotations

import hashlib
import heapq
import struct
from dataclasses import dataclass

from ..errors import ProtocolError
from ..identity import NodeId, SecretKey
from ..net.addr import WireReader, encode_address, normalize_address
from ..net.base import Address

__all__ = [
    "DISCO_MAGIC",
    "DISCO_VERSION",
    "MAX_CALL_ME_MAYBE_ADDRS",
    "MAX_DISCO_DATAGRAM",
    "PING_SIZE",
    "TX_ID_LEN",
    "CallMeMaybe",
    "DiscoAuthError",
    "DiscoMessage",
    "DiscoPacket",
    "Ping",
    "Pong",
    "ReplayGuard",
    "is_disco",
    "open_packet",
    "peek_sender",
    "seal",
]

#: First bytes of every disco packet; the first byte can never start a QUIC packet.
DISCO_MAGIC = b"\x00P2PD"
DISCO_VERSION = 1
TX_ID_LEN = 12
#: The most addresses one CALL_ME_MAYBE may carry.
MAX_CALL_ME_MAYBE_ADDRS = 32

_SIG_CONTEXT = b"asgi-p2p disco v1\x00"
_SIG_LEN = 64
#: The largest UDP payload (IPv4: 65535 - 20 - 8); a padded PING never exceeds it.
MAX_DISCO_DATAGRAM = 65507
_TYPE_PING = 1
_TYPE_PONG = 2
_TYPE_CALL_ME_MAYBE = 3
_HEADER = struct.Struct("!5sBB32sQ")  # magic, version, type, sender, time_ms
_MIN_LEN = _HEADER.size + _SIG_LEN
#: Length of an unpadded PING datagram.
PING_SIZE = _MIN_LEN + TX_ID_LEN
_MAX_TIME_MS = 2**64 - 1


# -- messages ----------------------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    """Are you there on this path?  ``tx_id`` is echoed by the PONG.

    ``padding`` zero bytes make the datagram ``PING_SIZE + padding`` bytes long:
    a size probe (see :meth:`padded_to`).
    """

    tx_id: bytes
    padding: int = 0

    def __post_init__(self) -> None:
        if len(self.tx_id) != TX_ID_LEN:
            raise ValueError(f"tx_id must be {TX_ID_LEN} bytes, got {len(self.tx_id)}")
        if not 0 <= self.padding <= MAX_DISCO_DATAGRAM - PING_SIZE:
            raise ValueError(f"PING padding must be in 0..{MAX_DISCO_DATAGRAM - PING_SIZE}, got {self.padding}")

    @classmethod
    def padded_to(cls, tx_id: bytes, size: int) -> Ping:
        """A PING whose sealed datagram is exactly ``size`` bytes (``PING_SIZE``..``MAX_DISCO_DATAGRAM``)."""
        if not PING_SIZE <= size <= MAX_DISCO_DATAGRAM:
            raise ValueError(f"a PING datagram is {PING_SIZE}..{MAX_DISCO_DATAGRAM} bytes, not {size}")
        return cls(tx_id, size - PING_SIZE)


@dataclass(frozen=True)
class Pong:
    """Answer to a PING: its ``tx_id``, the source address and the datagram size it arrived with."""

    tx_id: bytes
    observed: Address
    size: int = 0

    def __post_init__(self) -> None:
        if len(self.tx_id) != TX_ID_LEN:
            raise ValueError(f"tx_id must be {TX_ID_LEN} bytes, got {len(self.tx_id)}")
        if not 0 <= self.size <= 0xFFFF:
            raise ValueError(f"PONG size must be in 0..65535, got {self.size}")
        object.__setattr__(self, "observed", normalize_address(self.observed))


@dataclass(frozen=True)
class CallMeMaybe:
    """Sent through the relay: "here are my candidate addresses, ping me there now"."""

    addrs: tuple[Address, ...]

    def __post_init__(self) -> None:
        if len(self.addrs) > MAX_CALL_ME_MAYBE_ADDRS:
            raise ValueError(
                f"CALL_ME_MAYBE carries at most {MAX_CALL_ME_MAYBE_ADDRS} addresses, got {len(self.addrs)}"
            )
        object.__setattr__(self, "addrs", tuple(normalize_address(a) for a in self.addrs))


DiscoMessage = Ping | Pong | CallMeMaybe


@dataclass(frozen=True)
class DiscoPacket:
    """A verified disco packet."""

    sender: NodeId
    timestamp: float  #: seconds on the shared clock
    message: DiscoMessage
    digest: bytes  #: SHA-256 of the signed content, the replay-cache key


class DiscoAuthError(ProtocolError):
    """A disco packet is well formed but not authentic (wrong sender or bad signature)."""


def is_disco(data: bytes) -> bool:
    """True if ``data`` is a disco packet (and so certainly not a QUIC packet)."""
    return data[:5] == DISCO_MAGIC


def _encode_body(message: DiscoMessage) -> tuple[int, bytes]:
    out = bytearray()
    if isinstance(message, Ping):
        out += message.tx_id
        out += bytes(message.padding)
        return _TYPE_PING, bytes(out)
    if isinstance(message, Pong):
        out += message.tx_id
        encode_address(out, message.observed)
        out += message.size.to_bytes(2, "big")
        return _TYPE_PONG, bytes(out)
    if isinstance(message, CallMeMaybe):
        out.append(len(message.addrs))
        for addr in message.addrs:
            encode_address(out, addr)
        return _TYPE_CALL_ME_MAYBE, bytes(out)
    raise TypeError(f"not a disco message: {message!r}")


def seal(message: DiscoMessage, sender: SecretKey, receiver: NodeId, timestamp: float) -> bytes:
    """Encode and sign ``message`` from ``sender`` to ``receiver`` at ``timestamp`` (shared clock, s)."""
    time_ms = round(timestamp * 1000)
    if not 0 <= time_ms <= _MAX_TIME_MS:
        raise ValueError(f"timestamp {timestamp!r} is outside the encodable range")
    msg_type, body = _encode_body(message)
    head = _HEADER.pack(DISCO_MAGIC, DISCO_VERSION, msg_type, sender.node_id.to_bytes(), time_ms) + body
    return head + sender.sign(_SIG_CONTEXT + receiver.to_bytes() + head)


def peek_sender(data: bytes) -> NodeId:
    """The claimed (not yet verified) sender of a disco packet, to pick the peer's prober."""
    if not is_disco(data):
        raise ProtocolError("malformed disco packet: missing the disco magic prefix")
    if len(data) < _MIN_LEN:
        raise ProtocolError(f"malformed disco packet: {len(data)} bytes is shorter than the minimum {_MIN_LEN}")
    return NodeId(data[7:39])


def _parse_body(msg_type: int, body: bytes) -> DiscoMessage:
    reader = WireReader(body, "disco packet")
    message: DiscoMessage
    if msg_type == _TYPE_PING:
        tx_id = reader.take(TX_ID_LEN, "PING tx_id")
        padding = reader.rest()
        if padding.count(0) != len(padding):
            raise reader.error("PING padding must be zero bytes")
        if len(padding) > MAX_DISCO_DATAGRAM - PING_SIZE:
            raise reader.error(f"PING is longer than {MAX_DISCO_DATAGRAM} bytes")
        message = Ping(tx_id, len(padding))
    elif msg_type == _TYPE_PONG:
        tx_id = reader.take(TX_ID_LEN, "PONG tx_id")
        observed = reader.address("PONG observed address")
        message = Pong(tx_id, observed, reader.u16("PONG size"))
    elif msg_type == _TYPE_CALL_ME_MAYBE:
        count = reader.u8("CALL_ME_MAYBE address count")
        if count > MAX_CALL_ME_MAYBE_ADDRS:
            raise reader.error(f"CALL_ME_MAYBE lists {count} addresses, more than the limit {MAX_CALL_ME_MAYBE_ADDRS}")
        message = CallMeMaybe(tuple(reader.address(f"CALL_ME_MAYBE address {i}") for i in range(count)))
    else:
        raise reader.error(f"unknown message type {msg_type} (expected 1 PING, 2 PONG or 3 CALL_ME_MAYBE)")
    reader.end()
    return message


def open_packet(data: bytes, receiver: NodeId, expected_sender: NodeId | None = None) -> DiscoPacket:
    """Parse and authenticate a disco packet addressed to ``receiver``.

    Raises :class:`ProtocolError` if it is malformed and :class:`DiscoAuthError`
    if the sender is not ``expected_sender`` or the signature does not verify.
    Freshness (time window, replays) is the caller's job: see :class:`ReplayGuard`.
    """
    data = bytes(data)
    sender = peek_sender(data)
    _magic, version, msg_type, _sender, time_ms = _HEADER.unpack_from(data)
    if version != DISCO_VERSION:
        raise ProtocolError(f"malformed disco packet: unsupported version {version} (this node speaks {DISCO_VERSION})")
    head, signature = data[:-_SIG_LEN], data[-_SIG_LEN:]
    message = _parse_body(msg_type, head[_HEADER.size :])
    if expected_sender is not None and sender != expected_sender:
        raise DiscoAuthError(f"disco packet claims sender {sender}, expected {expected_sender}")
    signed = _SIG_CONTEXT + receiver.to_bytes() + head
    if not sender.verify(signature, signed):
        raise DiscoAuthError(f"disco packet from {sender} has a bad signature")
    return DiscoPacket(sender, time_ms / 1000, message, hashlib.sha256(signed).digest()[:16])


# -- replay protection -------------------------------------------------------------


class ReplayGuard:
    """Bounded memory of recently accepted packets, with a time window.

    A packet is fresh if its timestamp is within ``window`` seconds of the local
    shared clock and its digest was not seen.  Digests are forgotten once their
    timestamp leaves the window (the window check rejects them from then on).
    When the cache is full the oldest entry is evicted and every packet not newer
    than it is refused from then on, so a bounded cache never re-admits a replay.

    :meth:`refuse_until` carries what was seen before this guard existed (packets
    of the node checked and dropped before it had a connection, or seen by an
    earlier connection's guard): packets not newer than that are refused as
    replays.  :attr:`latest` is the newest timestamp this guard accepted.
    """

    def __init__(self, *, window: float = 120.0, capacity: int = 1024) -> None:
        if window <= 0 or capacity <= 0:
            raise ValueError("ReplayGuard window and capacity must be positive")
        self.window = window
        self.capacity = capacity
        self._seen: set[bytes] = set()
        self._heap: list[tuple[float, bytes]] = []
        self._floor = float("-inf")
        self._seen_before = float("-inf")
        #: the newest timestamp accepted (None: none yet)
        self.latest: float | None = None

    def __len__(self) -> int:
        return len(self._seen)

    def refuse_until(self, timestamp: float) -> None:
        """Refuse, as replays, packets timestamped ``timestamp`` or earlier (seen elsewhere before)."""
        self._seen_before = max(self._seen_before, timestamp)

    def check(self, digest: bytes, timestamp: float, now_shared: float) -> str | None:
        """Record the packet and return None if fresh, else the reason it is refused."""
        self._expire(now_shared)
        if timestamp < now_shared - self.window:
            return f"timestamp {now_shared - timestamp:.1f} s old, outside the {self.window:.0f} s window"
        if timestamp > now_shared + self.window:
            return f"timestamp {timestamp - now_shared:.1f} s in the future, outside the {self.window:.0f} s window"
        if digest in self._seen:
            return "replayed packet"
        if timestamp <= self._seen_before:
            return "replayed packet: not newer than this node's packets seen before its connection"
        if timestamp <= self._floor:
            return "packet older than the replay cache can vouch for (cache was full)"
        while len(self._seen) >= self.capacity:
            ts, old = heapq.heappop(self._heap)
            self._seen.discard(old)
            self._floor = max(self._floor, ts)
            if timestamp <= self._floor:
                return "packet older than the replay cache can vouch for (cache was full)"
        self._seen.add(digest)
        heapq.heappush(self._heap, (timestamp, digest))
        if self.latest is None or timestamp > self.latest:
            self.latest = timestamp
        return None

    def _expire(self, now_shared: float) -> None:
        horizon = now_shared - self.window
        while self._heap and self._heap[0][0] < horizon:
            _ts, old = heapq.heappop(self._heap)
            self._seen.discard(old)
