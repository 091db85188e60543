"""The seam between the paths layer and a relay client.

The paths layer (:class:`~asgi_p2p.paths.router.Router`) sends a peer's packets
either directly over the endpoint's socket or through a relay.  It talks to the
relay only through :class:`RelayLink`, and a relay client reports what arrives
through :class:`RelaySink`, which the router implements.  The paths layer defines
both; the relay client (a higher layer) implements one and calls the other, and
whoever assembles the node wires them together.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol, runtime_checkable

from ..errors import P2PError
from ..identity import NodeId
from ..net.base import Address

__all__ = [
    "ManagedRelayLink",
    "PlaneReceiver",
    "RefusalReason",
    "RelayLink",
    "RelayRefusal",
    "RelayRoutes",
    "RelaySink",
]


class RefusalReason(Enum):
    """Why a relay refused something; the value is how logs name it."""

    RATE_LIMITED = "rate limited"  #: we exceeded our packet or byte rate; the packet was dropped
    UNKNOWN_DESTINATION = "unknown destination"  #: the destination is not connected to the relay
    TOO_LARGE = "too large"  #: the packet does not fit the destination's relay connection
    SERVER_FULL = "relay full"  #: the relay has no room for us; try another relay
    PROTOCOL = "protocol violation"  #: the relay says we broke its protocol
    OTHER = "other"  #: a reason this node does not know (a newer relay)


@dataclass(frozen=True)
class RelayRefusal:
    """What a relay refused and why.

    ``message`` is the relay's own words, for logs only: act on ``reason`` and
    ``fits``.  ``fits`` comes with TOO_LARGE when the relay says it: the largest
    packet, in bytes, the relay would forward to that destination.
    """

    reason: RefusalReason
    message: str
    fits: int | None = None

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"


class RelayLink(Protocol):
    """What the paths layer needs from a connected relay client."""

    @property
    def relay_url(self) -> str:
        """The relay's URL, as it goes into tickets and node records."""

    @property
    def connected(self) -> bool:
        """True while the relay connection is up and carries a full-size (1200-byte) QUIC packet.

        A relay connection that cannot (yet) carry one is not connected: a peer's Initial
        through it would be dropped.  Connected also means the relay accepted us (its
        handshake is confirmed: it registered us and forwards packets to us).
        """

    @property
    def can_send(self) -> bool:
        """True while :meth:`send_packet` takes full-size (1200-byte) QUIC packets.

        From our TLS Finished on (one round trip before :attr:`connected`, which waits
        for the relay to confirm the handshake): what is sent then leaves right behind the
        Finished, and the relay forwards it once it has checked that Finished.  Implies
        nothing about packets *to* us; :attr:`connected` implies this.
        """

    @property
    def takes_first_contact(self) -> bool:
        """True while not :attr:`can_send` but :meth:`send_packet` takes a full-size QUIC Initial
        and sends it at once as a *first contact* (:mod:`asgi_p2p.relay.first_contact`): a fresh
        dial's first flight need not wait for the relay handshake.  Other packets are dropped
        as while disconnected.
        """

    @property
    def max_packet_size(self) -> int:
        """Largest packet :meth:`send_packet` accepts now (0 while disconnected)."""

    @property
    def max_probe_packet_size(self) -> int:
        """Largest packet end-to-end connections through the relay may grow to, once a size probe
        through it (:mod:`asgi_p2p.paths.prober`) confirmed that the far side carries it too.

        :attr:`max_packet_size` while packets go on the relay's UDP data plane; at most QUIC's
        minimum (1200) in the relay connection's DATAGRAM frames or over TCP, where relayed
        connections keep that size (0 while disconnected).
        """

    @property
    def observed_address(self) -> Address | None:
        """Our public address as the relay sees it (the NAT mapping of our socket)."""

    @property
    def last_failure(self) -> P2PError | None:
        """Why the relay is not usable: the last connection attempt's failure, a relay connection
        that does not carry a full-size packet, or the relay refusing us (None while connected,
        and before the first attempt ends).  For error messages and logs."""

    def send_packet(self, dest: NodeId, packet: bytes) -> bool:
        """Forward one packet (QUIC or disco) to ``dest``; False if it was not sent.

        Never blocks and never raises for a full queue, a disconnected relay or a
        packet that is too large: like UDP, the packet is dropped and counted.
        """

    def send_signal(self, dest: NodeId, payload: bytes) -> bool:
        """Send a hole-punching signal (a sealed disco packet) to ``dest``."""


class RelaySink(Protocol):
    """What a relay client calls on the endpoint that owns it."""

    def relay_packet_received(self, src: NodeId, packet: bytes) -> None:
        """A packet ``src`` sent us through the relay (QUIC or disco)."""

    def relay_signal_received(self, src: NodeId, payload: bytes) -> None:
        """A hole-punching signal ``src`` sent us through the relay."""

    def relay_state_changed(self, link: RelayLink) -> None:
        """The relay takes packets, connected, disconnected, or reported a new observed address."""

    def relay_refused(self, dest: NodeId | None, refusal: RelayRefusal) -> None:
        """The relay refused something (a packet or signal to ``dest``, or us when ``dest`` is None)."""


class ManagedRelayLink(RelayLink, Protocol):
    """A relay client an endpoint owns (``Endpoint.use_relay``): started there, closed with the endpoint."""

    def start(self) -> None:
        """Start connecting in the background (returns at once); reconnects by itself."""

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until :attr:`connected`; raises :class:`~asgi_p2p.errors.Timeout` saying why if not in time."""

    async def wait_can_send(self, timeout: float | None = None) -> None:
        """Wait until :attr:`can_send`; raises :class:`~asgi_p2p.errors.Timeout` saying why if not in time."""

    async def close(self) -> None:
        """Disconnect for good."""


@runtime_checkable
class RelayRoutes(Protocol):
    """A relay link over several relays (:class:`asgi_p2p.relay.fleet.RelayFleet`): peers on other relays too."""

    def link_for(self, dest: NodeId, relay_url: str | None) -> ManagedRelayLink:
        """The relay link that reaches ``dest``, whose home relay is ``relay_url`` (None: unknown).

        Packets to ``dest`` go through it from now on; a relay this node is not connected
        to is connected to on demand.  Raises a :class:`~asgi_p2p.errors.P2PError` saying
        why when it cannot be.
        """


class PlaneReceiver(Protocol):
    """Takes the socket's relay data plane datagrams (:meth:`asgi_p2p.paths.router.Router.use_plane`).

    A relay's data plane (:mod:`asgi_p2p.relay.plane`) sends forwarded packets as plain
    datagrams that start with a magic of its own (first byte 0x00, like disco's, so
    never QUIC); the router hands each one that starts with it here, from any address:
    the receiver checks who sent it.
    """

    def plane_datagram_received(self, data: bytes, addr: Address) -> None:
        """One datagram starting with the magic the receiver was registered with."""
