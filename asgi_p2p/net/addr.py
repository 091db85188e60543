"""The binary IP address codec and the strict wire reader (sans-I/O).

Every wire format that carries addresses uses this one encoding: disco messages
(:mod:`asgi_p2p.paths.disco`), relay frames (:mod:`asgi_p2p.relay.proto`) and
node records (:mod:`asgi_p2p.discovery.records`).  An address is ``4`` + 4
bytes IPv4 + 2 bytes port, or ``6`` + 16 bytes IPv6 + 2 bytes port (port
big-endian).

IP addresses only: host names are resolved before they become paths.
:func:`normalize_address` and parsing give IPs in ``ipaddress`` canonical text
form (``"2001:db8::1"``), so every parsed value re-encodes to the same bytes.
:class:`WireReader` is the strict cursor those parsers read with; every short or
malformed read raises :class:`~asgi_p2p.errors.ProtocolError`.
"""

from __future__ import annotations

import ipaddress

from ..errors import ProtocolError
from ..identity import NodeId
from .base import Address

__all__ = ["WireReader", "decode_address", "encode_address", "normalize_address"]


#: normalized addresses by (ip text, port): the paths layer normalizes the same few addresses
#: many times per connection (parsing one costs microseconds); bounded, started over when full
_NORMALIZED: dict[tuple[str, int], Address] = {}
_NORMALIZED_MAX = 4096


def normalize_address(addr: tuple[str, int]) -> Address:
    """Canonical ``(ip, port)``: IP text as ``ipaddress`` prints it; raises ValueError."""
    host, port = addr[0], addr[1]
    exact = type(host) is str and type(port) is int  # not a bool, nor an int subclass
    if exact:
        hit = _NORMALIZED.get((host, port))
        if hit is not None:
            return hit
    result = _normalize(host, port)
    if exact:
        if len(_NORMALIZED) >= _NORMALIZED_MAX:
            _NORMALIZED.clear()
        _NORMALIZED[(host, port)] = result
    return result


def _normalize(host: str, port: int) -> Address:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (resolve host names before using them as paths)") from None
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port {port!r} is not an integer in 0..65535")
    return (str(ip), port)


def encode_address(out: bytearray, addr: tuple[str, int]) -> None:
    """Append the binary form of an IP address and port to ``out``; raises ValueError."""
    host, port = normalize_address(addr)
    ip = ipaddress.ip_address(host)
    out.append(4 if ip.version == 4 else 6)
    out += ip.packed
    out += port.to_bytes(2, "big")


class WireReader:
    """Strict cursor over a received message; every short read raises :class:`ProtocolError`."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = bytes(data)
        self.pos = 0
        self.what = what

    def error(self, message: str) -> ProtocolError:
        return ProtocolError(f"malformed {self.what}: {message}")

    def take(self, n: int, field_name: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.error(
                f"truncated while reading {field_name} (needs {n} bytes at offset {self.pos}, "
                f"{len(self.data)} bytes in total)"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, field_name: str) -> int:
        return self.take(1, field_name)[0]

    def u16(self, field_name: str) -> int:
        return int.from_bytes(self.take(2, field_name), "big")

    def u64(self, field_name: str) -> int:
        return int.from_bytes(self.take(8, field_name), "big")

    def node_id(self, field_name: str) -> NodeId:
        return NodeId(self.take(32, field_name))

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def utf8(self, n: int, field_name: str) -> str:
        raw = self.take(n, field_name)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.error(f"{field_name} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None

    def address(self, field_name: str) -> Address:
        family = self.u8(f"{field_name} family")
        if family == 4:
            host = str(ipaddress.IPv4Address(self.take(4, f"{field_name} IPv4 address")))
        elif family == 6:
            host = str(ipaddress.IPv6Address(self.take(16, f"{field_name} IPv6 address")))
        else:
            raise self.error(f"{field_name} has unknown address family {family} (expected 4 or 6)")
        return (host, self.u16(f"{field_name} port"))

    def end(self) -> None:
        if self.pos != len(self.data):
            raise self.error(f"{len(self.data) - self.pos} unexpected trailing bytes")


def decode_address(data: bytes) -> Address:
    """Parse exactly one binary address (see :func:`encode_address`)."""
    reader = WireReader(data, "address")
    addr = reader.address("address")
    reader.end()
    return addr
