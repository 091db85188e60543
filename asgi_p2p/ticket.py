"""Tickets: one copy-pasteable string that says how to reach a node.

A ticket holds a :class:`~asgi_p2p.identity.NodeId`, an optional relay URL and
the node's direct addresses.  Its text form is::

    p2p1<z-base-32 of: payload + 4-byte checksum>

``p2p1`` names the text format (the ``2`` is not a z-base-32 character, so a
ticket can never be mistaken for a bare node id).  The payload is:

========  =====================================================================
bytes     meaning
========  =====================================================================
1         binary format version (1)
32        node id (Ed25519 public key)
varint    length of the relay URL in bytes (0 = no relay), then its UTF-8
1         number of direct addresses, then each address:
          ``4`` + 4-byte IPv4 + 2-byte port, ``6`` + 16-byte IPv6 + 2-byte port,
          or ``0`` + 1-byte length + UTF-8 host name + 2-byte port
========  =====================================================================

The checksum is the first 4 bytes of SHA-256 over the payload, so a ticket
mangled by copy and paste is rejected with :class:`~asgi_p2p.errors.InvalidTicket`
instead of dialing the wrong node.  This module does no I/O.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from .errors import InvalidNodeId, InvalidTicket
from .identity import NodeAddr, NodeId, zbase32_decode, zbase32_encode

__all__ = ["TICKET_PREFIX", "Target", "Ticket", "parse_target"]

#: Text prefix of every ticket (format 1).
TICKET_PREFIX = "p2p1"
#: Binary format version inside the payload.
TICKET_VERSION = 1
_CHECKSUM_LEN = 4
_MAX_RELAY_URL = 2048
_MAX_ADDRESSES = 255
_MAX_HOST_NAME = 253
_FAMILY_NAME = 0
_FAMILY_V4 = 4
_FAMILY_V6 = 6


def _checksum(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()[:_CHECKSUM_LEN]


def _put_varint(out: bytearray, value: int) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise InvalidTicket(f"ticket is truncated (while reading {what})")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str) -> int:
        value = 0
        for shift in range(0, 35, 7):
            b = self.byte(what)
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
        raise InvalidTicket(f"ticket has an overlong number (while reading {what})")

    def port(self) -> int:
        return int.from_bytes(self.take(2, "port"), "big")


def _encode_address(out: bytearray, host: str, port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise InvalidTicket(f"port {port} of address {host!r} is out of range")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if isinstance(ip, ipaddress.IPv4Address):
        out.append(_FAMILY_V4)
        out += ip.packed
    elif isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is None:
        out.append(_FAMILY_V6)
        out += ip.packed
    else:  # a host name (or an IPv6 address with a zone, which only text keeps)
        raw = host.encode("utf-8")
        if not raw or len(raw) > _MAX_HOST_NAME:
            raise InvalidTicket(f"host {host!r} must be 1 to {_MAX_HOST_NAME} bytes")
        out.append(_FAMILY_NAME)
        out.append(len(raw))
        out += raw
    out += port.to_bytes(2, "big")


def _decode_address(r: _Reader) -> tuple[str, int]:
    family = r.byte("address family")
    if family == _FAMILY_V4:
        host = str(ipaddress.IPv4Address(r.take(4, "IPv4 address")))
    elif family == _FAMILY_V6:
        host = str(ipaddress.IPv6Address(r.take(16, "IPv6 address")))
    elif family == _FAMILY_NAME:
        n = r.byte("host name length")
        if n == 0:
            raise InvalidTicket("ticket has an empty host name")
        try:
            host = r.take(n, "host name").decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidTicket("ticket has a host name that is not UTF-8") from None
    else:
        raise InvalidTicket(f"ticket has an unknown address family {family}")
    return host, r.port()


@dataclass(frozen=True, init=False)
class Ticket:
    """How to reach a node: its id, an optional relay URL and direct addresses."""

    node_id: NodeId
    relay_url: str | None
    direct_addresses: tuple[tuple[str, int], ...]

    def __init__(
        self,
        node_id: NodeId,
        relay_url: str | None = None,
        direct_addresses: Iterable[tuple[str, int]] = (),
    ) -> None:
        object.__setattr__(self, "node_id", node_id)
        object.__setattr__(self, "relay_url", relay_url or None)
        object.__setattr__(self, "direct_addresses", tuple((str(h), int(p)) for h, p in direct_addresses))

    # -- conversions ------------------------------------------------------------

    @classmethod
    def from_node_addr(cls, addr: NodeAddr) -> Ticket:
        return cls(addr.node_id, addr.relay_url, addr.direct_addresses)

    def to_node_addr(self) -> NodeAddr:
        return NodeAddr(self.node_id, self.direct_addresses, self.relay_url)

    # -- binary -------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The checksummed binary form (payload + 4-byte checksum)."""
        out = bytearray([TICKET_VERSION])
        out += self.node_id.to_bytes()
        relay = (self.relay_url or "").encode("utf-8")
        if len(relay) > _MAX_RELAY_URL:
            raise InvalidTicket(f"relay URL is longer than {_MAX_RELAY_URL} bytes")
        _put_varint(out, len(relay))
        out += relay
        if len(self.direct_addresses) > _MAX_ADDRESSES:
            raise InvalidTicket(f"a ticket holds at most {_MAX_ADDRESSES} addresses, got {len(self.direct_addresses)}")
        out.append(len(self.direct_addresses))
        for host, port in self.direct_addresses:
            _encode_address(out, host, port)
        out += _checksum(bytes(out))
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Ticket:
        """Parse the binary form; raises :class:`InvalidTicket`."""
        if len(data) < 1 + 32 + 1 + 1 + _CHECKSUM_LEN:
            raise InvalidTicket("ticket is too short; was it cut off while copying?")
        payload, checksum = data[:-_CHECKSUM_LEN], data[-_CHECKSUM_LEN:]
        if _checksum(payload) != checksum:
            raise InvalidTicket("ticket checksum does not match; it was mistyped or cut off while copying")
        r = _Reader(payload)
        version = r.byte("version")
        if version != TICKET_VERSION:
            raise InvalidTicket(f"ticket version {version} is not supported (this asgi-p2p reads version 1)")
        node_id = NodeId(r.take(32, "node id"))
        relay_len = r.varint("relay URL length")
        if relay_len > _MAX_RELAY_URL:
            raise InvalidTicket(f"ticket relay URL is longer than {_MAX_RELAY_URL} bytes")
        try:
            relay = r.take(relay_len, "relay URL").decode("utf-8") or None
        except UnicodeDecodeError:
            raise InvalidTicket("ticket relay URL is not UTF-8") from None
        count = r.byte("address count")
        addresses = tuple(_decode_address(r) for _ in range(count))
        if r.pos != len(payload):
            raise InvalidTicket(f"ticket has {len(payload) - r.pos} unexpected trailing bytes")
        return cls(node_id, relay, addresses)

    # -- text -----------------------------------------------------------------------

    def encode(self) -> str:
        """The copy-pasteable text form: ``p2p1`` + z-base-32."""
        return TICKET_PREFIX + zbase32_encode(self.to_bytes())

    def __str__(self) -> str:
        return self.encode()

    @classmethod
    def parse(cls, text: str) -> Ticket:
        """Parse the text form; raises :class:`InvalidTicket` saying what is wrong."""
        if not isinstance(text, str):
            raise InvalidTicket(f"expected a ticket string, got {type(text).__name__}")
        s = "".join(text.split()).lower()  # tolerate line breaks and spaces from copy and paste
        if not s.startswith(TICKET_PREFIX):
            if s.startswith("p2p") and len(s) > 3:
                raise InvalidTicket(f"ticket format {s[3]!r} is not supported (expected a ticket starting with p2p1)")
            raise InvalidTicket(f"not a ticket (tickets start with {TICKET_PREFIX!r}): {_clip(text)!r}")
        body = s[len(TICKET_PREFIX) :]
        nbytes = len(body) * 5 // 8
        try:
            data = zbase32_decode(body, nbytes)
        except ValueError as exc:
            raise InvalidTicket(f"ticket is damaged ({exc}); copy it again") from None
        return cls.from_bytes(data)

    @staticmethod
    def is_ticket(text: str) -> bool:
        """True if ``text`` looks like a ticket (it may still be damaged)."""
        return text.strip().lower().startswith(TICKET_PREFIX)


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "..."


class Target(NamedTuple):
    """A node to reach and an HTTP path (with query string) on it."""

    addr: NodeAddr
    path: str


def parse_target(text: str) -> Target:
    """Parse ``TICKET_OR_NODE[/path]`` (optionally prefixed by ``https://``).

    A ticket carries addresses; a bare node id (z-base-32 or hex) gives a
    :class:`NodeAddr` without addresses.  The path defaults to ``/``.  Raises
    :class:`InvalidTicket` (a :class:`ValueError`) with a clear message.
    """
    s = text.strip()
    for scheme in ("https://", "http://", "p2p://"):
        if s.lower().startswith(scheme):
            s = s[len(scheme) :]
            break
    cut = min((i for i in (s.find("/"), s.find("?")) if i >= 0), default=len(s))
    head, path = s[:cut], s[cut:]
    if not path.startswith("/"):
        path = "/" + path
    if not head:
        raise InvalidTicket(f"expected a ticket or node id before the path in {_clip(text)!r}")
    if Ticket.is_ticket(head):
        return Target(Ticket.parse(head).to_node_addr(), path)
    try:
        node_id = NodeId.parse(head)
    except InvalidNodeId as exc:
        raise InvalidTicket(
            f"{_clip(head)!r} is neither a ticket (p2p1...) nor a node id (52 z-base-32 or 64 hex characters): "
            f"{exc.reason}"
        ) from None
    return Target(NodeAddr(node_id), path)
