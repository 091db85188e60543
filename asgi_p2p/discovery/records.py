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

import ipaddress
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from ..errors import P2PError, ProtocolError
from ..identity import NodeId, SecretKey
from ..net.addr import WireReader, encode_address, normalize_address
from ..net.base import Address

if TYPE_CHECKING:
    from .store import SqliteRecordStore

__all__ = [
    "MAX_ADDRS",
    "RECORD_MAGIC",
    "RECORD_VERSION",
    "Directory",
    "DirectoryFull",
    "InvalidRecord",
    "NameTaken",
    "NodeRecord",
    "PublishLimited",
    "SignedNodeRecord",
    "StaleRecord",
    "address_key",
    "check_name",
]

log = logging.getLogger("asgi_p2p.discovery")

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
#: publish-rate buckets a directory keeps per table (nodes, addresses) before pruning idle ones
_MAX_LIMITERS = 65_536
_K = TypeVar("_K", NodeId, str)
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


class InvalidRecord(ProtocolError):
    """A node record is malformed, forged, expired or for the wrong node."""


class StaleRecord(InvalidRecord):
    """A directory holds a newer record (higher sequence number) for this node."""


class NameTaken(P2PError):
    """Another node holds this name in an unexpired record."""


class DirectoryFull(P2PError):
    """The directory holds its maximum number of unexpired records (in all, or from one address)."""


class PublishLimited(P2PError):
    """Too many publish requests from this node or this address; try again later."""


def address_key(host: str) -> str:
    """The unit a directory limits publishers by: an IPv4 address, or an IPv6 /64 network.

    One IPv6 host usually holds a whole /64, so counting its addresses one by one
    would limit nothing.  IPv4-mapped IPv6 addresses count as their IPv4 address.
    Anything else (a name) is its own unit.
    """
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class _Bucket:
    """A token bucket on the caller's clock (a clock stepping back neither refills nor drains)."""

    __slots__ = ("last", "tokens")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        self.last = now

    def take(self, rate: float, burst: float, now: float) -> bool:
        if now > self.last:
            self.tokens = min(burst, self.tokens + (now - self.last) * rate)
            self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def full(self, rate: float, burst: float, now: float) -> bool:
        return self.tokens + max(now - self.last, 0.0) * rate >= burst


@dataclass(slots=True)
class _Held:
    """What a directory remembers about a stored record besides the record."""

    first: float  #: when this node's record was first published (since it was last absent)
    last: float  #: the latest accepted publish (a refresh)
    live: bool  #: refreshed at least ``live_after`` after ``first``
    source: str | None  #: the publisher's address unit (:func:`address_key`), if known


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
            raise ValueError(f"record for {self.node_id} cannot be signed by the key of {key.node_id}")
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
            raise InvalidRecord(f"record is for node {record.node_id}, expected {expected_node}")
        if not record.node_id.verify(self.signature, _SIG_CONTEXT + self.data[:-_SIG_LEN]):
            raise InvalidRecord(f"record for node {record.node_id} has a bad signature")
        if record.expires_at <= now:
            raise InvalidRecord(
                f"record for node {record.node_id} (seq {record.seq}) expired {now - record.expires_at:.0f} s ago"
            )
        return record


class Directory:
    """A bounded in-memory store of signed node records.

    :meth:`publish` verifies a record and keeps it if its sequence number is the
    highest seen for its node; :meth:`resolve` and :meth:`resolve_name` return the
    signed record, so whoever asked can verify it again.  ``now`` is the shared
    (Unix) clock in seconds.

    Bounds (any key may publish, so each of these is what one party can take):

    * ``capacity`` records in all, each for at most ``max_ttl`` seconds;
    * ``max_per_address`` records published from one address (an IPv4 address
      or an IPv6 /64: :func:`address_key`), when the caller names it;
    * publish requests per node (``node_publish_rate`` per second, burst
      ``node_publish_burst``) and per address (``address_publish_rate``, burst
      ``address_publish_burst``), checked before any signature is: refused with
      :class:`PublishLimited`.

    When the store is full, a new node's record replaces a *stale* one: a record
    whose node stopped refreshing it.  A node that re-publishes its record at
    least ``live_after`` seconds after it first did is *live*; a live record is
    stale once 7/8 of its lifetime passed without a refresh (a
    :class:`~asgi_p2p.discovery.directory.DirectoryClient` refreshes at 3/4), and
    a record never refreshed so is stale after ``probation`` seconds (or 7/8 of
    its lifetime, if shorter).  The stale record published longest ago goes
    first; with none stale, the publish is refused (:class:`DirectoryFull`).  So
    records published once and abandoned (a Sybil flood) hold the store for
    minutes, not for their whole lifetime, and nodes that keep refreshing are
    never evicted for newcomers.
    """

    def __init__(
        self,
        *,
        capacity: int = 10_000,
        max_ttl: float = 3600.0,
        max_per_address: int = 64,
        node_publish_rate: float = 1 / 30,
        node_publish_burst: float = 10.0,
        address_publish_rate: float = 4.0,
        address_publish_burst: float = 64.0,
        live_after: float = 60.0,
        probation: float = 300.0,
        store: SqliteRecordStore | None = None,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0:
            raise ValueError(f"Directory capacity must be a positive integer, got {capacity!r}")
        if isinstance(max_per_address, bool) or not isinstance(max_per_address, int) or max_per_address <= 0:
            raise ValueError(f"Directory max_per_address must be a positive integer, got {max_per_address!r}")
        for what, value in (
            ("max_ttl", max_ttl),
            ("node_publish_rate", node_publish_rate),
            ("address_publish_rate", address_publish_rate),
            ("live_after", live_after),
            ("probation", probation),
        ):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"Directory {what} must be a positive finite number, got {value!r}")
        for what, value in (
            ("node_publish_burst", node_publish_burst),
            ("address_publish_burst", address_publish_burst),
        ):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1:
                raise ValueError(f"Directory {what} must be a finite number of at least 1, got {value!r}")
        if probation <= live_after:
            raise ValueError(
                f"Directory probation ({probation:g} s) must exceed live_after ({live_after:g} s): "
                "a new node needs time to refresh before its record counts as stale"
            )
        self.capacity = capacity
        self.max_ttl = max_ttl
        self.max_per_address = max_per_address
        self.node_publish_rate = node_publish_rate
        self.node_publish_burst = node_publish_burst
        self.address_publish_rate = address_publish_rate
        self.address_publish_burst = address_publish_burst
        self.live_after = live_after
        self.probation = probation
        #: records by node, the least recently published first (the eviction order)
        self._by_node: dict[NodeId, SignedNodeRecord] = {}
        self._by_name: dict[str, NodeId] = {}
        self._held: dict[NodeId, _Held] = {}
        self._per_address: dict[str, int] = {}
        self._node_buckets: dict[NodeId, _Bucket] = {}
        self._address_buckets: dict[str, _Bucket] = {}
        #: counters (for metrics)
        self.evicted_stale = 0
        self.refused_rate = 0
        self.refused_address = 0
        #: Where records persist (None: in memory only); see :meth:`load`.
        self.store = store

    def load(self, now: float) -> tuple[int, list[str]]:
        """Read the records :attr:`store` kept, checking each one; returns ``(loaded, reasons refused)``.

        Each row is checked as a publish would be (signature, expiry at ``now``, the
        row's node id against the record's, capacity, records per address, names),
        except the publish rates; refused rows are deleted from the store.  Call it
        once, on an empty directory.
        """
        if self.store is None:
            return 0, []
        if self._by_node:
            raise RuntimeError("Directory.load() needs an empty directory")
        refused: list[str] = []
        rows = list(self.store.rows(self.capacity))  # the most recently published first
        total = self.store.count()
        if total > len(rows):
            refused.append(f"{total - len(rows)} records beyond this directory's capacity of {self.capacity}")
        kept: list[tuple[SignedNodeRecord, _Held]] = []
        names: set[str] = set()
        for row in rows:
            try:
                signed = SignedNodeRecord.parse(row.data)
                rec = signed.verify(now)
                if row.node_id != rec.node_id.to_bytes():
                    raise InvalidRecord(f"row keyed {row.node_id.hex()[:16]}... holds the record of {rec.node_id}")
                if rec.expires_at > now + self.max_ttl:
                    raise InvalidRecord(f"record for node {rec.node_id} outlives this directory's max_ttl")
                if rec.name is not None and rec.name in names:
                    raise InvalidRecord(f"name {rec.name!r} of node {rec.node_id} is held by a newer record")
                unit = row.source
                if unit is not None and self._per_address.get(unit, 0) >= self.max_per_address:
                    raise InvalidRecord(f"address {unit} already holds {self.max_per_address} records")
            except InvalidRecord as exc:
                refused.append(str(exc))
                log.warning("directory: not loading a stored record: %s", exc)
                continue
            if rec.name is not None:
                names.add(rec.name)
            held = _Held(first=min(row.first, now), last=min(row.last, now), live=row.live, source=None)
            kept.append((signed, held))
            if unit is not None:
                self._per_address[unit] = self._per_address.get(unit, 0) + 1
                held.source = unit
        for signed, held in reversed(kept):  # the least recently published first (the eviction order)
            node = signed.record.node_id
            self._by_node[node] = signed
            self._held[node] = held
            if signed.record.name is not None:
                self._by_name[signed.record.name] = node
        if refused or total > len(rows):
            self.store.delete_except([s.record.node_id.to_bytes() for s, _ in kept])
        log.info("directory: loaded %d records from %s (%d refused)", len(kept), self.store.path, len(refused))
        return len(kept), refused

    def _persist(self, node: NodeId) -> None:
        if self.store is None:
            return
        from .store import StoredRecord

        held = self._held[node]
        self.store.put(
            StoredRecord(node.to_bytes(), self._by_node[node].data, held.first, held.last, held.live, held.source)
        )

    def __len__(self) -> int:
        return len(self._by_node)

    def count_from(self, source: str) -> int:
        """How many stored records were published from ``source`` (its :func:`address_key`)."""
        return self._per_address.get(address_key(source), 0)

    def is_live(self, node: NodeId) -> bool:
        """True if ``node``'s record is stored and its node has refreshed it (see the class docs)."""
        held = self._held.get(node)
        return held is not None and held.live

    def publish(self, record: SignedNodeRecord | bytes, now: float, *, source: str | None = None) -> NodeRecord:
        """Verify and store a record published from ``source`` (an IP address; None: not limited by address).

        Raises :class:`PublishLimited`, :class:`InvalidRecord`, :class:`StaleRecord`,
        :class:`NameTaken` or :class:`DirectoryFull`.
        """
        signed = record if isinstance(record, SignedNodeRecord) else SignedNodeRecord.parse(record)
        unit = address_key(source) if source is not None else None
        self._check_rates(signed.record.node_id, unit, now)  # before the signature costs anything
        rec = signed.verify(now)
        if rec.expires_at > now + self.max_ttl:
            raise InvalidRecord(
                f"record for node {rec.node_id} expires in {rec.expires_at - now:.0f} s, "
                f"more than this directory's maximum of {self.max_ttl:.0f} s"
            )
        old = self._by_node.get(rec.node_id)
        if old is not None:
            if old.data == signed.data:
                self._refreshed(rec.node_id, now, unit)
                self._persist(rec.node_id)
                return rec
            if rec.seq <= old.record.seq:
                raise StaleRecord(
                    f"record for node {rec.node_id} has seq {rec.seq}, "
                    f"but seq {old.record.seq} is already published; publish a higher seq"
                )
        if rec.name is not None:
            holder = self._by_name.get(rec.name)
            if holder is not None and holder != rec.node_id and self.resolve(holder, now) is not None:
                raise NameTaken(f"name {rec.name!r} is held by node {holder} until its record expires")
        held = self._held.get(rec.node_id)
        if unit is not None and (held is None or held.source != unit):
            if self._per_address.get(unit, 0) >= self.max_per_address:
                self.refused_address += 1
                raise DirectoryFull(
                    f"address {unit} holds its maximum of {self.max_per_address} records in this directory; "
                    "try again when one of them expires"
                )
        if old is None and len(self._by_node) >= self.capacity and not self.expire(now) and not self._evict(now):
            raise DirectoryFull(
                f"directory holds its maximum of {self.capacity} records, none of them stale; try again later"
            )
        if old is not None and old.record.name is not None:
            self._by_name.pop(old.record.name, None)
        self._by_node.pop(rec.node_id, None)
        self._by_node[rec.node_id] = signed  # the most recently published last
        if rec.name is not None:
            self._by_name[rec.name] = rec.node_id
        if held is None:
            self._held[rec.node_id] = _Held(first=now, last=now, live=False, source=None)
            self._move(rec.node_id, unit)
        else:
            self._refreshed(rec.node_id, now, unit)
        self._persist(rec.node_id)
        return rec

    def _refreshed(self, node: NodeId, now: float, unit: str | None) -> None:
        held = self._held[node]
        held.last = max(held.last, now)
        if not held.live and now - held.first >= self.live_after:
            held.live = True
        self._by_node[node] = self._by_node.pop(node)  # to the back of the eviction order
        self._move(node, unit)

    def _move(self, node: NodeId, unit: str | None) -> None:
        """Count ``node``'s record against ``unit`` (its latest publisher's address)."""
        held = self._held[node]
        if unit is None or held.source == unit:
            return
        self._uncount(held)
        held.source = unit
        self._per_address[unit] = self._per_address.get(unit, 0) + 1

    def _uncount(self, held: _Held) -> None:
        if held.source is None:
            return
        left = self._per_address[held.source] - 1
        if left:
            self._per_address[held.source] = left
        else:
            del self._per_address[held.source]
        held.source = None

    def _check_rates(self, node: NodeId, unit: str | None, now: float) -> None:
        if unit is not None and not self._take(
            self._address_buckets, unit, self.address_publish_rate, self.address_publish_burst, now
        ):
            self.refused_rate += 1
            raise PublishLimited(
                f"too many publish requests from address {unit} "
                f"(at most {self.address_publish_rate:g} per second, burst {self.address_publish_burst:g}); "
                "try again later"
            )
        if not self._take(self._node_buckets, node, self.node_publish_rate, self.node_publish_burst, now):
            self.refused_rate += 1
            raise PublishLimited(
                f"node {node} publishes too often (at most one record per {1 / self.node_publish_rate:g} s "
                f"after a burst of {self.node_publish_burst:g}); try again later"
            )

    def _take(self, table: dict[_K, _Bucket], key: _K, rate: float, burst: float, now: float) -> bool:
        bucket = table.get(key)
        if bucket is None:
            if len(table) >= _MAX_LIMITERS:
                # forget the buckets that refilled (a full bucket is what a new one would be)
                for k in [k for k, b in table.items() if b.full(rate, burst, now)]:
                    del table[k]
                if len(table) >= _MAX_LIMITERS:
                    return False
            bucket = table[key] = _Bucket(burst, now)
        return bucket.take(rate, burst, now)

    def _stale_at(self, signed: SignedNodeRecord, held: _Held) -> float:
        lifetime = max(signed.record.expires_at - held.last, 0.0)
        grace = 0.875 * lifetime
        return held.last + (grace if held.live else min(self.probation, grace))

    def _evict(self, now: float) -> bool:
        """Remove the stale record published longest ago; False if no record is stale."""
        for node, signed in self._by_node.items():
            if now >= self._stale_at(signed, self._held[node]):
                log.info(
                    "directory full: evicting the stale record of %s (last published %.0f s ago)",
                    node,
                    now - self._held[node].last,
                )
                self._remove(node)
                self.evicted_stale += 1
                return True
        return False

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
        held = self._held.pop(node, None)
        if held is not None:
            self._uncount(held)
        if self.store is not None:
            self.store.delete(node.to_bytes())
