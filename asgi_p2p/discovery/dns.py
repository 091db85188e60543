"""DNS as the directory: signed node records in TXT records under a zone the operator controls.

A node's record (:class:`~asgi_p2p.discovery.records.SignedNodeRecord`: node id,
home relay URL, direct addresses, expiry, signed by the node's own key) lives at
``<node-id>.<zone>`` as one TXT record whose strings, joined, read
``p2pr1:`` followed by the record in base64 (split into strings of at most 255
characters).  Human names are CNAMEs the operator adds:
``music.example.org. CNAME <node-id>.<zone>.``

* Resolving (:meth:`DnsDiscovery.resolve`, :meth:`DnsDiscovery.resolve_name`) is
  ordinary DNS with dnspython (the system's resolvers, or the ``nameservers``
  given).  The dialer verifies every record itself: the signature by the node
  key, the expiry, and that the record found at ``<node-id>.<zone>`` (where a
  name's CNAME chain ends) is that node's.  So a forged or replayed answer cannot
  redirect a node: at worst it withholds it.  Answers are cached for the DNS TTL
  (at most until the record expires); a lookup that takes longer than
  ``timeout`` fails saying so, and a :class:`~asgi_p2p.discovery.ChainedDiscovery`
  goes on to its other sources.
* Publishing is off unless a :class:`DnsUpdate` (the authoritative server and a
  TSIG key the operator created) and the node's key are given: :meth:`publish`
  then replaces the node's TXT record by an RFC 2136 dynamic update signed with
  TSIG, and refreshes it before it expires; :meth:`unpublish` deletes it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.tsig
import dns.tsigkeyring
import dns.update
from dns.rdtypes.ANY.TXT import TXT

from ..errors import DiscoveryFailed, InvalidConfiguration
from ..identity import NodeAddr, NodeId, SecretKey
from .base import RecordPublisher
from .directory import record_addrs
from .records import InvalidRecord, NodeRecord, SignedNodeRecord, check_name

__all__ = ["TXT_PREFIX", "DnsDiscovery", "DnsUpdate", "decode_txt", "encode_txt", "parse_server"]

log = logging.getLogger("asgi_p2p.discovery")

#: What the TXT text of a node record starts with (then base64 of the signed record).
TXT_PREFIX = "p2pr1:"
_TXT_CHUNK = 255
#: TSIG algorithms accepted (dnspython names).
_TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1")


def parse_server(text: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or a bare IPv6 address -> ``(ip, port)`` (port 53 by default)."""
    import ipaddress

    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise InvalidConfiguration(f"DNS server {text!r}: expected [IPV6]:PORT")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p, text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise InvalidConfiguration(f"DNS server {text!r}: give an IP address (HOST or HOST:PORT)") from None
    return host, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise InvalidConfiguration(f"DNS server {whole!r}: bad port {text!r}")
    return int(text)


def encode_txt(signed: SignedNodeRecord) -> list[bytes]:
    """The TXT strings of a record."""
    text = (TXT_PREFIX + base64.b64encode(signed.data).decode("ascii")).encode("ascii")
    return [text[i : i + _TXT_CHUNK] for i in range(0, len(text), _TXT_CHUNK)]


def decode_txt(strings: Sequence[bytes]) -> SignedNodeRecord:
    """Parse the strings of one TXT record (structure only); raises :class:`InvalidRecord`."""
    text = b"".join(strings)
    if not text.startswith(TXT_PREFIX.encode()):
        raise InvalidRecord(f"TXT record does not start with {TXT_PREFIX!r}")
    try:
        data = base64.b64decode(text[len(TXT_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRecord(f"TXT record is not valid base64: {exc}") from None
    return SignedNodeRecord.parse(data)


@dataclass(frozen=True)
class DnsUpdate:
    """Where and how a node publishes its record: an RFC 2136 update signed with TSIG.

    Args:
        server: the zone's primary (authoritative) server, ``HOST[:PORT]``.
        key_name: the TSIG key's name, as configured on the server.
        secret: the TSIG secret, base64 (as in the server's configuration).
        algorithm: the TSIG algorithm (default ``hmac-sha256``).
    """

    server: str
    key_name: str
    secret: str
    algorithm: str = "hmac-sha256"

    def __post_init__(self) -> None:
        parse_server(self.server)
        if self.algorithm not in _TSIG_ALGORITHMS:
            raise InvalidConfiguration(
                f"TSIG algorithm {self.algorithm!r} is not supported; use one of {', '.join(_TSIG_ALGORITHMS)}"
            )
        try:
            if not base64.b64decode(self.secret, validate=True):
                raise ValueError("empty")
            dns.name.from_text(self.key_name)
        except (binascii.Error, ValueError, dns.exception.DNSException) as exc:
            raise InvalidConfiguration(f"TSIG key {self.key_name!r}: {exc}") from None

    @classmethod
    def parse_key(cls, server: str, text: str) -> DnsUpdate:
        """From ``[ALGORITHM:]NAME:SECRET`` (the form ``knsupdate -y`` and ``dig -y`` take)."""
        parts = text.strip().split(":")
        if len(parts) == 2:
            return cls(server, parts[0], parts[1])
        if len(parts) == 3:
            return cls(server, parts[1], parts[2], parts[0])
        raise InvalidConfiguration("TSIG key: expected [ALGORITHM:]NAME:SECRET")


class DnsDiscovery(RecordPublisher):
    """Resolve (and, if configured, publish) signed node records in DNS (a :class:`Discovery` source).

    Args:
        zone: the zone node records live under (``<node-id>.<zone>``).
        nameservers: resolvers to ask, ``HOST[:PORT]`` each (default: the system's).
        timeout: seconds a lookup or update may take in all.
        clock_offset: added to ``loop.time()`` to get the Unix clock records expire on.
        key: our node's key (signs what :meth:`publish` publishes).
        update: where to publish (None: :meth:`publish` publishes nothing).
        record_ttl: lifetime of the records we publish, seconds (refreshed at 3/4).
        dns_ttl: the TTL of the TXT records we publish (how long resolvers cache them).
        cache_size: records kept by the lookup cache.
    """

    label = "dns"

    def __init__(
        self,
        zone: str,
        *,
        nameservers: Sequence[str] | None = None,
        timeout: float = 5.0,
        clock_offset: float = 0.0,
        key: SecretKey | None = None,
        update: DnsUpdate | None = None,
        record_ttl: float = 3600.0,
        dns_ttl: int = 60,
        cache_size: int = 1024,
        refresh: bool = True,
    ) -> None:
        try:
            self.zone = dns.name.from_text(zone)
        except dns.exception.DNSException as exc:
            raise InvalidConfiguration(f"DNS zone {zone!r}: {exc}") from None
        if timeout <= 0 or record_ttl <= 0 or dns_ttl <= 0 or cache_size <= 0:
            raise ValueError("timeout, record_ttl, dns_ttl and cache_size must be positive")
        if update is not None and key is None:
            raise InvalidConfiguration("publishing to DNS needs the node's key (key=...) to sign the record")
        self.timeout = timeout
        self.clock_offset = clock_offset
        self.key = key
        self.update = update
        self.record_ttl = record_ttl
        self.dns_ttl = dns_ttl
        self.cache_size = cache_size
        self.refresh = refresh
        self._servers = [parse_server(s) for s in nameservers] if nameservers else None
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._cache: OrderedDict[str, tuple[NodeAddr, float]] = OrderedDict()
        self._seq = 0
        self._init_publisher()

    def _where(self) -> str:
        if self._servers:
            return "DNS server " + ", ".join(f"{h}:{p}" for h, p in self._servers)
        return "the system's DNS resolvers"

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            if self._servers is None:
                try:
                    resolver = dns.asyncresolver.Resolver()
                except dns.exception.DNSException as exc:
                    raise DiscoveryFailed(f"no DNS resolver configured on this system: {exc}") from None
            else:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in self._servers]
            resolver.cache = None  # we cache verified records ourselves
            self._resolver = resolver
        return self._resolver

    def now(self) -> float:
        """The shared (Unix) clock, seconds."""
        return asyncio.get_running_loop().time() + self.clock_offset

    def qname(self, node_id: NodeId) -> dns.name.Name:
        """Where ``node_id``'s record lives: ``<node-id>.<zone>``."""
        return dns.name.Name((str(node_id).encode("ascii"),)).concatenate(self.zone)

    # -- resolving ---------------------------------------------------------------

    async def _lookup(self, qname: dns.name.Name, expected: NodeId | None) -> NodeAddr:
        key = qname.to_text()
        loop = asyncio.get_running_loop()
        hit = self._cache.get(key)
        if hit is not None:
            if hit[1] > loop.time():
                self._cache.move_to_end(key)
                return hit[0]
            del self._cache[key]
        resolver = self._get_resolver()
        try:
            async with asyncio.timeout(self.timeout):
                answer = await resolver.resolve(qname, "TXT", lifetime=self.timeout, search=False)
        except TimeoutError:
            raise DiscoveryFailed(f"{self._where()} did not answer for {key} within {self.timeout:g} s") from None
        except dns.resolver.NXDOMAIN:
            raise DiscoveryFailed(f"no DNS record at {key} (NXDOMAIN)") from None
        except dns.resolver.NoAnswer:
            raise DiscoveryFailed(f"no TXT record at {key}") from None
        except dns.resolver.LifetimeTimeout:
            raise DiscoveryFailed(f"{self._where()} did not answer for {key} within {self.timeout:g} s") from None
        except dns.exception.DNSException as exc:
            raise DiscoveryFailed(f"DNS lookup of {key} at {self._where()} failed: {exc}") from None
        # where the CNAME chain ended must be <node-id>.<zone>, and the record there that node's
        end = answer.canonical_name
        if len(end) < 1 or not end.is_subdomain(self.zone) or len(end) != len(self.zone) + 1:
            raise DiscoveryFailed(f"DNS name {key} leads to {end}, which is not <node-id>.{self.zone}")
        try:
            owner = NodeId.parse(end.labels[0].decode("ascii"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DiscoveryFailed(f"DNS name {key} leads to {end}, whose first label is not a node id: {exc}") from None
        if expected is not None and owner != expected:
            raise DiscoveryFailed(f"DNS name {key} leads to the record of another node ({end})")
        now = self.now()
        reasons: list[str] = []
        best: NodeRecord | None = None
        for rdata in answer.rrset or ():
            try:
                rec = decode_txt(rdata.strings).verify(now, owner)
            except InvalidRecord as exc:
                reasons.append(str(exc))
                continue
            if best is None or rec.seq > best.seq:
                best = rec
        if best is None:
            why = "; ".join(reasons) or "no TXT record holds a node record"
            raise DiscoveryFailed(f"DNS record at {end} refused: {why}")
        addr = NodeAddr(best.node_id, best.addrs, best.relay_url)
        ttl = answer.rrset.ttl if answer.rrset is not None else 0
        until = loop.time() + min(float(ttl), best.expires_at - now)
        if until > loop.time():
            self._cache[key] = (addr, until)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        log.debug("dns: %s -> %s (seq %d)", key, best.node_id, best.seq)
        return addr

    async def resolve(self, node_id: NodeId) -> NodeAddr:
        return await self._lookup(self.qname(node_id), node_id)

    async def resolve_name(self, name: str) -> NodeAddr:
        """The node ``name`` (a DNS name the operator CNAMEs to ``<node-id>.<zone>``) names."""
        try:
            check_name(name)
            qname = dns.name.from_text(name)
        except (ValueError, dns.exception.DNSException) as exc:
            raise DiscoveryFailed(str(exc)) from None
        return await self._lookup(qname, None)

    # -- publishing --------------------------------------------------------------

    def make_record(self, addr: NodeAddr, name: str | None) -> SignedNodeRecord:
        assert self.key is not None
        now = self.now()
        self._seq = max(self._seq + 1, int(now * 1000))
        rec = NodeRecord(
            self.key.node_id, self._seq, now + self.record_ttl, addr.relay_url, tuple(record_addrs(addr)), name
        )
        return rec.sign(self.key)

    async def _send_update(self, message: dns.update.UpdateMessage, doing: str) -> None:
        assert self.update is not None
        host, port = parse_server(self.update.server)
        try:
            async with asyncio.timeout(self.timeout):
                response = await dns.asyncquery.tcp(message, host, timeout=self.timeout, port=port)
        except (TimeoutError, dns.exception.Timeout):
            raise DiscoveryFailed(
                f"{doing}: DNS server {host}:{port} did not answer within {self.timeout:g} s"
            ) from None
        except (OSError, dns.exception.DNSException) as exc:
            raise DiscoveryFailed(f"{doing}: DNS update at {host}:{port} failed: {exc}") from None
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            raise DiscoveryFailed(
                f"{doing}: DNS server {host}:{port} refused the update ({dns.rcode.to_text(rcode)}); "
                f"check the TSIG key and that it may update zone {self.zone}"
            )

    def _message(self) -> dns.update.UpdateMessage:
        u = self.update
        assert u is not None
        keyring = dns.tsigkeyring.from_text({u.key_name: (u.algorithm, u.secret)})
        return dns.update.UpdateMessage(self.zone, keyring=keyring, keyalgorithm=u.algorithm)

    async def publish(self, addr: NodeAddr, name: str | None = None) -> None:
        """Publish our record by dynamic update (nothing without an :class:`DnsUpdate`)."""
        if self.update is None or self.key is None:
            return
        if addr.node_id != self.key.node_id:
            raise ValueError(f"this source publishes only node {self.key.node_id}, not {addr.node_id}")
        await self._start_publishing(addr, name)

    async def _publish_once(self, addr: NodeAddr, name: str | None) -> None:
        assert self.key is not None
        signed = self.make_record(addr, name)
        message = self._message()
        rdata = TXT(dns.rdataclass.IN, dns.rdatatype.TXT, encode_txt(signed))
        message.replace(self.qname(self.key.node_id), self.dns_ttl, rdata)
        await self._send_update(message, f"publishing node {self.key.node_id} to DNS")
        self.record = signed
        log.info("dns: published our record (seq %d) at %s", signed.record.seq, self.qname(self.key.node_id))

    def _record_lifetime(self) -> float:
        return self.record_ttl

    def _log_refresh_failure(self, retry: float, exc: DiscoveryFailed) -> None:
        log.warning("dns: refreshing our record failed (retrying in %g s): %s", retry, exc)

    async def unpublish(self) -> None:
        """Stop refreshing and delete our TXT record (nothing if we published none)."""
        if not self._withdraw() or self.key is None:
            return
        message = self._message()
        message.delete(self.qname(self.key.node_id), "TXT")
        await self._send_update(message, f"unpublishing node {self.key.node_id} from DNS")
