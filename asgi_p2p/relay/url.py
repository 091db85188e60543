"""Relay URLs: ``p2p-relay://<node-id>@<host>:<port>``.

A relay is itself a node, so its URL names its NodeId as well as its UDP
address: a relay client checks the relay's key inside the QUIC handshake and
refuses anyone else answering at that address.  ``host`` is an IPv4 address,
an IPv6 address in brackets, or a DNS name (resolved when connecting)::

    p2p-relay://yb1...52 chars...@203.0.113.7:7842
    p2p-relay://yb1...@[2001:db8::7]:7842
    p2p-relay://yb1...@relay.example.org:7842

A relay that also serves over TCP (TLS + WebSocket, for networks that block
UDP) says so with the query parameter ``tcp``, its TCP port on the same host::

    p2p-relay://yb1...@relay.example.org:7842?tcp=443
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..errors import InvalidConfiguration, InvalidNodeId
from ..identity import NodeAddr, NodeId

__all__ = ["RELAY_URL_SCHEME", "InvalidRelayUrl", "RelayUrl"]

RELAY_URL_SCHEME = "p2p-relay"
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_MAX_LENGTH = 2048


class InvalidRelayUrl(InvalidConfiguration):
    """A relay URL could not be parsed; the message says why and shows the expected form."""

    def __init__(self, text: object, reason: str) -> None:
        self.text = text
        self.reason = reason
        super().__init__(
            f"invalid relay URL {text!r}: {reason} (expected {RELAY_URL_SCHEME}://NODE_ID@HOST:PORT[?tcp=PORT], "
            f"with an IPv6 HOST in brackets)"
        )


def _check_host(host: str, text: str) -> str:
    if host.startswith("["):
        if not host.endswith("]"):
            raise InvalidRelayUrl(text, "unterminated '[' in the IPv6 address")
        try:
            ip = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidRelayUrl(text, f"{host[1:-1]!r} in brackets is not an IPv6 address") from None
        if ip.scope_id:
            raise InvalidRelayUrl(text, "IPv6 scope ids (%zone) are not supported")
        return str(ip)
    if not host:
        raise InvalidRelayUrl(text, "missing host")
    if ":" in host:
        raise InvalidRelayUrl(text, "an IPv6 address must be in brackets, like [2001:db8::1]:7842")
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    name = host.lower().rstrip(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise InvalidRelayUrl(text, f"{host!r} is neither an IP address nor a valid DNS name")
    if all(part.isdigit() for part in name.split(".")):
        raise InvalidRelayUrl(text, f"{host!r} is not a valid IPv4 address")
    return name


@dataclass(frozen=True)
class RelayUrl:
    """Where a relay is and which node it must be; ``str()`` gives the canonical URL."""

    node_id: NodeId
    host: str
    port: int
    #: The relay's TCP port (relay over TLS + WebSocket), if it serves one.
    tcp_port: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, NodeId):
            raise InvalidRelayUrl(self.node_id, "node_id must be a NodeId")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise InvalidRelayUrl(self.port, "port must be an integer in 1..65535")
        tcp = self.tcp_port
        if tcp is not None and (isinstance(tcp, bool) or not isinstance(tcp, int) or not 1 <= tcp <= 65535):
            raise InvalidRelayUrl(tcp, "tcp_port must be an integer in 1..65535")
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        object.__setattr__(self, "host", _check_host(host, self.host))

    @classmethod
    def parse(cls, text: str) -> RelayUrl:
        """Parse a relay URL; raises :class:`InvalidRelayUrl` (an :class:`InvalidConfiguration`)."""
        if not isinstance(text, str):
            raise InvalidRelayUrl(text, f"expected a string, got {type(text).__name__}")
        s = text.strip()
        if len(s) > _MAX_LENGTH:
            raise InvalidRelayUrl(s[:40] + "...", f"longer than {_MAX_LENGTH} characters")
        scheme, sep, rest = s.partition("://")
        if not sep:
            raise InvalidRelayUrl(text, "missing scheme")
        if scheme.lower() != RELAY_URL_SCHEME:
            raise InvalidRelayUrl(text, f"unsupported scheme {scheme!r}")
        rest, question, query = rest.partition("?")
        if rest.endswith("/"):
            rest = rest[:-1]
        for ch in "/?#":
            if ch in rest:
                raise InvalidRelayUrl(text, "a relay URL has no path or fragment")
        tcp_port: int | None = None
        if question:
            name, eq, value = query.partition("=")
            if name != "tcp" or not eq:
                raise InvalidRelayUrl(text, "the only query a relay URL has is ?tcp=PORT")
            if not value.isdigit() or not value.isascii() or not 1 <= int(value) <= 65535:
                raise InvalidRelayUrl(text, f"tcp port {value!r} is not a number in 1..65535")
            tcp_port = int(value)
        node_text, at, hostport = rest.partition("@")
        if not at:
            raise InvalidRelayUrl(text, "missing NODE_ID@ (the relay's node id, so that impostors are refused)")
        if "@" in hostport:
            raise InvalidRelayUrl(text, "more than one '@'")
        try:
            node_id = NodeId.parse(node_text)
        except InvalidNodeId as exc:
            raise InvalidRelayUrl(text, f"bad node id: {exc.reason}") from None
        if hostport.startswith("["):
            end = hostport.find("]")
            if end < 0:
                raise InvalidRelayUrl(text, "unterminated '[' in the IPv6 address")
            host, after = hostport[: end + 1], hostport[end + 1 :]
            if not after.startswith(":"):
                raise InvalidRelayUrl(text, "missing :PORT")
            port_text = after[1:]
        else:
            host, colon, port_text = hostport.rpartition(":")
            if not colon:
                raise InvalidRelayUrl(text, "missing :PORT")
        if not port_text.isdigit() or not port_text.isascii():
            raise InvalidRelayUrl(text, f"port {port_text!r} is not a number")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise InvalidRelayUrl(text, f"port {port} is not in 1..65535")
        return cls(node_id, _check_host(host, text), port, tcp_port)

    @property
    def is_ip(self) -> bool:
        """True if the host is an IP address (no name resolution needed)."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``; the host may be a DNS name (see :attr:`is_ip`)."""
        return (self.host, self.port)

    def node_addr(self) -> NodeAddr:
        """The relay as a :class:`NodeAddr` (needs an IP host)."""
        if not self.is_ip:
            raise InvalidConfiguration(f"relay URL {self} names a host; resolve it to an IP address first")
        return NodeAddr(self.node_id, [self.address], relay_url=None)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        tcp = f"?tcp={self.tcp_port}" if self.tcp_port is not None else ""
        return f"{RELAY_URL_SCHEME}://{self.node_id}@{host}:{self.port}{tcp}"
