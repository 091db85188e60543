"""Signed node records and an in-memory directory of them (sans-I/O).

A node publishes a :class:`NodeRecord` saying how to reach it (home relay URL,
direct addresses, an optional name), signed with its own key, so any store (a
relay's directory, DNS, a file) can serve it and nobody can forge one.

Binary form (integers big-endian)::

    magic       4   b"P2PR"
    version     1   1
    node id     32  Ed25519 public key of the publisher
    seq         8   sequence number; a directory keeps the highest
    expires     8   expiry, milliseconds on the shared (Unix) clock
    flags       1   bit 0: relay URL present, bit 1: name present, others 0
    [relay URL] 2-byte length (1..2048) + UTF-8
    [name]      1-byte length (1..253) + ASCII name (lowercase DNS-style labels)
    count       1   number of direct addresses (0..32), then each
                    4 + IPv4 (4) + port (2) | 6 + IPv6 (16) + port (2)
    signature   64  Ed25519 over b"asgi-p2p node-record v1\\x00" + every byte above

:meth:`SignedNodeRecord.parse` checks structure only; :meth:`SignedNodeRecord.verify`
checks the signature, the expiry against ``now`` and, if given, the expected
node.  Names are a convenience, not an identity: a directory gives a name to the
first node holding it in an unexpired record; the NodeId is what TLS checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import P2PError, ProtocolError
from ..identity import NodeId, SecretKey
from ..net.addr import WireReader, encode_address, normalize_address
from ..net.base import Address

__all__ = [
    "MAX_ADDRS",
    "RECORD_MAGIC",
    "RECORD_VERSION",
    "Directory",
    "DirectoryFull",
    "InvalidRecord",
    "NameTaken",
    "NodeRecord",
    "SignedNodeRecord",
    "StaleRecord",
    "check_name",
]

RECORD_MAGIC = b"P2PR"
RECORD_VERSION = 1
MAX_ADDRS = 32
MAX_RELAY_URL = 2048
MAX_NAME = 253
_SIG_CONTEXT = b"asgi-p2p node-record v1\x00"
_SIG_LEN = 64
_FLAG_RELAY = 1
_FLAG_NAME = 2
_MAX_U64 = 2**64 - 1
#: expiry limit (about the year 37648): keeps milliseconds exact through a float
_MAX_EXPIRY_MS = 2**50
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


class InvalidRecord(ProtocolError):
    """A node record is malformed, forged, expired or for the wrong node."""


class StaleRecord(InvalidRecord):
    """A directory holds a newer record (higher sequence number) for this node."""


class NameTaken(P2PError):
    """Another node holds this name in an unexpired record."""


class DirectoryFull(P2PError):
    """The directory holds its maximum number of unexpired records."""


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid record name (lowercase DNS-style labels), else raise ValueError."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid node name {name!r}: use 1-253 characters of lowercase DNS labels (a-z, 0-9, '-', '.')"
        )
    return name


@dataclass(frozen=True)
class NodeRecord:
    """How to reach ``node_id``, valid until ``expires_at`` (seconds, shared clock)."""

    node_id: NodeId
    seq: int
    expires_at: float
    relay_url: str | None = None
    addrs: tuple[Address, ...] = ()
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.seq, int) or not 0 <= self.seq <= _MAX_U64:
            raise ValueError(f"seq must be an integer in 0..2**64-1, got {self.seq!r}")
        if not 0 <= round(self.expires_at * 1000) <= _MAX_EXPIRY_MS:
            raise ValueError(f"expires_at {self.expires_at!r} is outside the encodable range")
        if self.relay_url is not None:
            if not self.relay_url or len(self.relay_url.encode("utf-8")) > MAX_RELAY_URL:
                raise ValueError(f"relay_url must be 1..{MAX_RELAY_URL} bytes of UTF-8")
        if self.name is not None:
            check_name(self.name)
        if len(self.addrs) > MAX_ADDRS:
            raise ValueError(f"a record holds at most {MAX_ADDRS} addresses, got {len(self.addrs)}")
        object.__setattr__(self, "addrs", tuple(normalize_address(a) for a in self.addrs))
        object.__setattr__(self, "expires_at", round(self.expires_at * 1000) / 1000)

    def _payload(self) -> bytes:
        out = bytearray(RECORD_MAGIC)
        out.append(RECORD_VERSION)
        out += self.node_id.to_bytes()
        out += self.seq.to_bytes(8, "big")
        out += round(self.expires_at * 1000).to_bytes(8, "big")
        out.append((_FLAG_RELAY if self.relay_url is not None else 0) | (_FLAG_NAME if self.name is not None else 0))
        if self.relay_url is not None:
            url = self.relay_url.encode("utf-8")
            out += len(url).to_bytes(2, "big") + url
        if self.name is not None:
            out.append(len(self.name))
            out += self.name.encode("ascii")
        out.append(len(self.addrs))
        for addr in self.addrs:
            encode_address(out, addr)
        return bytes(out)

    def sign(self, key: SecretKey) -> SignedNodeRecord:
        """Sign with the node's own key; raises ValueError if ``key`` is another node's."""
        if key.node_id != self.node_id:
            raise ValueError(
                f"record for {self.node_id.fmt_short()} cannot be signed by the key of {key.node_id.fmt_short()}"
            )
        payload = self._payload()
        return SignedNodeRecord(self, payload + key.sign(_SIG_CONTEXT + payload))


@dataclass(frozen=True)
class SignedNodeRecord:
    """A record with its encoded, signed form (:attr:`data`)."""

    record: NodeRecord
    data: bytes

    def encode(self) -> bytes:
        return self.data

    @classmethod
    def parse(cls, data: bytes) -> SignedNodeRecord:
        """Parse the binary form (structure only); raises :class:`InvalidRecord`."""
        reader = WireReader(data, "node record")
        try:
            if reader.take(4, "magic") != RECORD_MAGIC:
                raise reader.error("missing the b'P2PR' magic")
            version = reader.u8("version")
            if version != RECORD_VERSION:
                raise reader.error(f"unsupported version {version} (this node speaks {RECORD_VERSION})")
            node = reader.node_id("node id")
            seq = reader.u64("seq")
            expires_ms = reader.u64("expiry")
            if expires_ms > _MAX_EXPIRY_MS:
                raise reader.error(f"expiry {expires_ms} ms is beyond the supported range")
            flags = reader.u8("flags")
            if flags & ~(_FLAG_RELAY | _FLAG_NAME):
                raise reader.error(f"unknown flag bits {flags:#04x}")
            relay_url = None
            if flags & _FLAG_RELAY:
                length = reader.u16("relay URL length")
                if not 1 <= length <= MAX_RELAY_URL:
                    raise reader.error(f"relay URL length {length} is outside 1..{MAX_RELAY_URL}")
                relay_url = reader.utf8(length, "relay URL")
            name = None
            if flags & _FLAG_NAME:
                length = reader.u8("name length")
                name = reader.utf8(length, "name")
                try:
                    check_name(name)
                except ValueError as exc:
                    raise reader.error(str(exc)) from None
            count = reader.u8("address count")
            if count > MAX_ADDRS:
                raise reader.error(f"{count} addresses exceed the limit {MAX_ADDRS}")
            addrs = tuple(reader.address(f"address {i}") for i in range(count))
            reader.take(_SIG_LEN, "signature")
            reader.end()
        except InvalidRecord:
            raise
        except ProtocolError as exc:
            raise InvalidRecord(str(exc)) from None
        record = NodeRecord(node, seq, expires_ms / 1000, relay_url, addrs, name)
        return cls(record, bytes(data))

    @property
    def signature(self) -> bytes:
        return self.data[-_SIG_LEN:]

    def verify(self, now: float, expected_node: NodeId | None = None) -> NodeRecord:
        """Check signature, expiry (``now`` on the shared clock) and node; return the record.

        Raises :class:`InvalidRecord` naming the problem.
        """
        record = self.record
        if expected_node is not None and record.node_id != expected_node:
            raise InvalidRecord(
                f"record is for node {record.node_id.fmt_short()}, expected {expected_node.fmt_short()}"
            )
        if not record.node_id.verify(self.signature, _SIG_CONTEXT + self.data[:-_SIG_LEN]):
            raise InvalidRecord(f"record for node {record.node_id.fmt_short()} has a bad signature")
        if record.expires_at <= now:
            raise InvalidRecord(
                f"record for node {record.node_id.fmt_short()} (seq {record.seq}) expired "
                f"{now - record.expires_at:.0f} s ago"
            )
        return record


class Directory:
    """A bounded in-memory store of signed node records.

    :meth:`publish` verifies a record and keeps it if its sequence number is the
    highest seen for its node; :meth:`resolve` and :meth:`resolve_name` return the
    signed record, so whoever asked can verify it again.  ``now`` is the shared
    (Unix) clock in seconds.
    """

    def __init__(self, *, capacity: int = 10_000, max_ttl: float = 7 * 86400.0) -> None:
        if capacity <= 0 or max_ttl <= 0:
            raise ValueError("Directory capacity and max_ttl must be positive")
        self.capacity = capacity
        self.max_ttl = max_ttl
        self._by_node: dict[NodeId, SignedNodeRecord] = {}
        self._by_name: dict[str, NodeId] = {}

    def __len__(self) -> int:
        return len(self._by_node)

    def publish(self, record: SignedNodeRecord | bytes, now: float) -> NodeRecord:
        """Verify and store a record; raises :class:`InvalidRecord`, :class:`StaleRecord`,
        :class:`NameTaken` or :class:`DirectoryFull`."""
        signed = record if isinstance(record, SignedNodeRecord) else SignedNodeRecord.parse(record)
        rec = signed.verify(now)
        if rec.expires_at > now + self.max_ttl:
            raise InvalidRecord(
                f"record for node {rec.node_id.fmt_short()} expires in {rec.expires_at - now:.0f} s, "
                f"more than this directory's maximum of {self.max_ttl:.0f} s"
            )
        old = self._by_node.get(rec.node_id)
        if old is not None:
            if old.data == signed.data:
                return rec
            if rec.seq <= old.record.seq:
                raise StaleRecord(
                    f"record for node {rec.node_id.fmt_short()} has seq {rec.seq}, "
                    f"but seq {old.record.seq} is already published; publish a higher seq"
                )
        if rec.name is not None:
            holder = self._by_name.get(rec.name)
            if holder is not None and holder != rec.node_id and self.resolve(holder, now) is not None:
                raise NameTaken(f"name {rec.name!r} is held by node {holder.fmt_short()} until its record expires")
        if old is None and len(self._by_node) >= self.capacity and not self.expire(now):
            raise DirectoryFull(f"directory holds its maximum of {self.capacity} records; try again later")
        if old is not None and old.record.name is not None:
            self._by_name.pop(old.record.name, None)
        self._by_node[rec.node_id] = signed
        if rec.name is not None:
            self._by_name[rec.name] = rec.node_id
        return rec

    def resolve(self, node: NodeId, now: float) -> SignedNodeRecord | None:
        """The unexpired record of ``node``, or None."""
        signed = self._by_node.get(node)
        if signed is None:
            return None
        if signed.record.expires_at <= now:
            self._remove(node)
            return None
        return signed

    def resolve_name(self, name: str, now: float) -> SignedNodeRecord | None:
        """The unexpired record holding ``name``, or None."""
        node = self._by_name.get(name)
        return None if node is None else self.resolve(node, now)

    def remove(self, node: NodeId) -> bool:
        """Forget the record of ``node`` (its own request); returns whether there was one."""
        if node not in self._by_node:
            return False
        self._remove(node)
        return True

    def expire(self, now: float) -> int:
        """Drop every expired record; returns how many."""
        dead = [node for node, signed in self._by_node.items() if signed.record.expires_at <= now]
        for node in dead:
            self._remove(node)
        return len(dead)

    def records(self, now: float) -> Iterable[SignedNodeRecord]:
        """Every unexpired record."""
        self.expire(now)
        return list(self._by_node.values())

    def _remove(self, node: NodeId) -> None:
        signed = self._by_node.pop(node)
        if signed.record.name is not None and self._by_name.get(signed.record.name) == node:
            del self._by_name[signed.record.name]
