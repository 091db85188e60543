"""The relay's UDP data plane: forwarded packets as plain datagrams beside the relay connection.

Every relayed packet riding a QUIC DATAGRAM frame of the relay connection costs
the relay connection's own per-packet work (packet building and parsing, AEAD,
ACKs, loss detection, congestion control) on both legs, at both ends and twice
at the relay.  The packets it carries are end-to-end QUIC packets (or signed
disco packets) already, so, as TURN's ChannelData beside its authenticated
allocation (RFC 8656 section 12), they may travel as plain UDP datagrams on the
same sockets, with a short header saying whose they are::

    client -> relay   PLANE_MAGIC (5) + sender's token (8)      + destination NodeId (32) + packet
    relay  -> client  PLANE_MAGIC (5) + destination's token (8) + source NodeId (32)      + packet

:data:`PLANE_MAGIC` (``00 50 32 50 52``, ``"\\x00P2PR"``) starts with a byte no
QUIC packet starts with, as disco's does (:mod:`asgi_p2p.paths.disco`), so the
endpoint's socket tells the three apart by their first bytes.

The relay connection stays the authenticated control channel: the relay issues
each registered client a token in a PLANE_TOKEN frame (:mod:`asgi_p2p.relay.proto`)
on its QUIC connection, ``HMAC-SHA256(plane key, salt | NodeId | serial)[:8]``
with a plane key derived from the relay's secret key, a salt drawn once per
relay process (a restarted relay issues new tokens: the old ones die with it) and
a serial per connection.  Nobody off the path can guess a token (64 bits).

* The relay accepts a plane datagram only with a token it issued to a client still
  registered and only from the address that client's relay connection uses (the
  address QUIC validated; it follows NAT rebinding as the connection does); anything
  else is dropped and counted, allocating nothing.  What it accepts goes through the
  same :class:`~asgi_p2p.relay.proto.RelayRouter` as a SEND frame (budgets, fair
  queues, refusals as ERROR frames on the relay connection).
* The relay sends a client plane datagrams only once that client sent it one (so
  an older client, which ignores PLANE_TOKEN, keeps getting RECV frames), to the
  address its relay connection uses, from the relay endpoint's socket.  A client
  answers each PLANE_TOKEN with a *hello*: a plane datagram addressed to the relay's
  own NodeId (nothing is ever forwarded to a relay) carrying one byte, so that a
  client that only receives gets plane datagrams too; the relay answers it in kind
  (source: the relay's NodeId), and only then does the client send on the plane: the
  plane has carried a datagram each way (a network that drops them leaves the client
  on SEND frames; it says hello again at most once a second while it waits).
* A client accepts a plane datagram only from its relay's address and with its own
  token (compared in constant time).

The plane adds :data:`PLANE_OVERHEAD` (45) bytes to a packet; a packet that fits a
SEND or RECV frame (34 bytes of frame in a QUIC packet of at least 30 more) always
fits a plane datagram on the same path, so the largest relayed packet is the same in
both wire forms.  End-to-end connections on the plane grow their packets to that size
only as far as a size probe through the relay confirmed (the far side's relay connection
must carry them too; :attr:`~asgi_p2p.paths.link.RelayLink.max_probe_packet_size`).
Relay legs have no congestion control of their own then, as with
TURN: the end-to-end QUIC connection controls the whole path.  An on-path attacker
who reads a token can inject datagrams in the client's name; the end-to-end AEAD
drops them, as it drops anything injected into a TURN channel.

Everything here is sans-I/O: :class:`PlaneTokens` and :class:`ClientPlane` are
used by :class:`~asgi_p2p.relay.server.RelayServer` and
:class:`~asgi_p2p.relay.client.RelayClient`, which own the sockets.
"""

from __future__ import annotations

import hmac
import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..identity import NodeId, SecretKey
from ..net.base import Address
from ..paths.router import Router
from .proto import PLANE_TOKEN_SIZE

__all__ = [
    "HELLO",
    "PLANE_MAGIC",
    "PLANE_OVERHEAD",
    "ClientPlane",
    "PlaneDemux",
    "PlaneStats",
    "PlaneTokens",
    "client_demux",
    "encode_plane",
    "is_plane",
]

#: The first bytes of every data plane datagram (never a QUIC packet, never disco).
PLANE_MAGIC = b"\x00P2PR"
_MAGIC_LEN = len(PLANE_MAGIC)
_NODE_AT = _MAGIC_LEN + PLANE_TOKEN_SIZE
#: Bytes a data plane datagram adds to the packet it carries: magic, token, NodeId.
PLANE_OVERHEAD = _NODE_AT + 32
_KEY_LABEL = b"asgi-p2p relay plane key v1"
_SALT_SIZE = 16
#: the packet of a hello (to the relay's own NodeId, and its answer from it)
HELLO = b"\x00"

_H = TypeVar("_H", bound=Hashable)


def is_plane(data: bytes) -> bool:
    """True if ``data`` is a data plane datagram (by its magic)."""
    return data[:_MAGIC_LEN] == PLANE_MAGIC


def encode_plane(token: bytes, node: NodeId, packet: bytes | memoryview) -> bytes:
    """A data plane datagram: ``token`` (the sender's to the relay, the receiver's from it), the
    destination (to the relay) or source (from it) ``node``, and ``packet``."""
    return b"".join((PLANE_MAGIC, token, node.to_bytes(), packet))


@dataclass
class PlaneStats:
    """Counters of one side of the data plane."""

    #: plane datagrams accepted (their packets forwarded or delivered)
    received: int = 0
    #: plane datagrams sent
    sent: int = 0
    #: hellos accepted (relay) or sent (client): a client saying it uses the plane
    hellos: int = 0
    #: dropped: shorter than a header and one byte of packet
    dropped_malformed: int = 0
    #: dropped: a token not issued (or no longer valid), or not this client's
    dropped_unknown_token: int = 0
    #: dropped: a valid token from an address other than its relay connection's
    dropped_wrong_address: int = 0


class PlaneTokens(Generic[_H]):
    """The relay's side: issues tokens to registered clients and checks datagrams against them.

    ``holder`` is whatever the relay knows a client's connection by (its handler);
    :meth:`receive` gives it back with the datagram's destination and packet.
    """

    def __init__(self, secret_key: SecretKey, rng: random.Random) -> None:
        self._key = hmac.digest(secret_key.to_bytes(), _KEY_LABEL, "sha256")
        # tokens of this relay process only: a restarted relay (same key) issues new ones
        self._salt = rng.randbytes(_SALT_SIZE)
        self._serial = 0
        self._holders: dict[bytes, _H] = {}
        self.stats = PlaneStats()

    def __len__(self) -> int:
        return len(self._holders)

    def issue(self, node: NodeId, holder: _H) -> bytes:
        """A new token for ``node``'s connection ``holder`` (valid until :meth:`revoke`)."""
        token = bytes(PLANE_TOKEN_SIZE)
        while not any(token):  # never all zeros: that token marks a first contact (relay.first_contact)
            self._serial += 1
            message = b"".join((self._salt, node.to_bytes(), self._serial.to_bytes(8, "big")))
            token = hmac.digest(self._key, message, "sha256")[:PLANE_TOKEN_SIZE]
        self._holders[token] = holder
        return token

    def revoke(self, token: bytes) -> None:
        """The connection holding ``token`` is gone: its datagrams are dropped from now on."""
        self._holders.pop(token, None)

    def receive(self, data: bytes) -> tuple[_H, NodeId, memoryview] | None:
        """Check a plane datagram that arrived at the relay: (holder, destination, packet), or None
        when dropped (counted in :attr:`stats`).  The caller checks the holder's address.

        The lookup is by a dict of the issued tokens: the hash of attacker-chosen bytes
        is SipHash keyed per process, so timing tells nothing about the tokens held.
        """
        if len(data) <= PLANE_OVERHEAD:
            self.stats.dropped_malformed += 1
            return None
        holder = self._holders.get(data[_MAGIC_LEN:_NODE_AT])
        if holder is None:
            self.stats.dropped_unknown_token += 1
            return None
        return holder, NodeId(data[_NODE_AT:PLANE_OVERHEAD]), memoryview(data)[PLANE_OVERHEAD:]


class ClientPlane:
    """A relay client's side of the data plane for one relay connection.

    ``token``: the one the relay issued for this connection; ``relay``: the relay's
    address (where plane datagrams go; :class:`PlaneDemux` accepts them only from it);
    ``relay_node``: the relay's NodeId (hellos go to it, and their answers come from it).
    """

    __slots__ = ("confirmed", "relay", "relay_node", "stats", "token")

    def __init__(self, token: bytes, relay: Address, relay_node: NodeId) -> None:
        if len(token) != PLANE_TOKEN_SIZE:
            raise ValueError(f"a plane token is {PLANE_TOKEN_SIZE} bytes")
        self.token = token
        self.relay = relay
        self.relay_node = relay_node
        #: the relay answered a hello: the plane carries datagrams both ways
        self.confirmed = False
        self.stats = PlaneStats()

    def wrap(self, dest: NodeId, packet: bytes) -> bytes:
        """The plane datagram carrying ``packet`` to ``dest`` through the relay."""
        self.stats.sent += 1
        return encode_plane(self.token, dest, packet)

    def hello(self) -> bytes:
        """The datagram that tells the relay this client uses the plane (answered in kind)."""
        self.stats.hellos += 1
        return encode_plane(self.token, self.relay_node, HELLO)

    def open(self, data: bytes) -> tuple[NodeId, bytes] | None:
        """(source, packet) of a plane datagram from the relay; None when dropped (counted) or
        when it answers our hello (the plane is then :attr:`confirmed`)."""
        if len(data) <= PLANE_OVERHEAD:
            self.stats.dropped_malformed += 1
            return None
        if not hmac.compare_digest(data[_MAGIC_LEN:_NODE_AT], self.token):
            self.stats.dropped_unknown_token += 1
            return None
        src = NodeId(data[_NODE_AT:PLANE_OVERHEAD])
        if src == self.relay_node:  # nobody sends a packet as the relay: the hello's answer
            self.confirmed = True
            return None
        self.stats.received += 1
        return src, data[PLANE_OVERHEAD:]


class PlaneDemux:
    """An endpoint's relay clients' plane datagrams, by relay address (a
    :class:`~asgi_p2p.paths.link.PlaneReceiver`; :func:`client_demux` registers one)."""

    def __init__(self) -> None:
        self._receivers: dict[Address, Callable[[bytes], None]] = {}
        #: plane datagrams from an address none of the endpoint's relay clients uses
        self.dropped_wrong_address = 0

    @property
    def relays(self) -> list[Address]:
        """The relay addresses whose plane datagrams are taken (one receiver each)."""
        return list(self._receivers)

    def plane_datagram_received(self, data: bytes, addr: Address) -> None:
        receive = self._receivers.get(addr)
        if receive is None:
            self.dropped_wrong_address += 1
            return
        receive(data)

    def add(self, relay: Address, receive: Callable[[bytes], None]) -> None:
        """Hand plane datagrams from ``relay`` to ``receive`` (replacing an earlier receiver)."""
        self._receivers[relay] = receive

    def remove(self, relay: Address, receive: Callable[[bytes], None]) -> None:
        """Stop handing ``relay``'s plane datagrams to ``receive`` (if it still takes them)."""
        if self._receivers.get(relay) == receive:
            del self._receivers[relay]


def client_demux(router: Router) -> PlaneDemux:
    """The :class:`PlaneDemux` of an endpoint's socket (registered with it on first use)."""
    current = router.plane
    if isinstance(current, PlaneDemux):
        return current
    demux = PlaneDemux()
    router.use_plane(PLANE_MAGIC, demux)  # raises if a relay server takes this socket's plane datagrams
    return demux
