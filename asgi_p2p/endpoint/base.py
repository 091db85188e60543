"""Interfaces between the endpoint and the protocols that run on its connections.

An ALPN protocol (raw messages, HTTP/3, relay) registers a factory with
:meth:`Endpoint.add_protocol`.  For every QUIC connection negotiated with that
ALPN, on the dialing and on the accepting side, the endpoint calls the factory
with the :class:`PeerConnection` and feeds the returned
:class:`ConnectionHandler` every QUIC event of the connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from aioquic.quic.events import QuicEvent

if TYPE_CHECKING:
    from .connection import PeerConnection

__all__ = ["ConnectionHandler", "ConnectionStats", "HandlerFactory"]


class ConnectionHandler(Protocol):
    def quic_event_received(self, event: QuicEvent) -> None:
        """Called for each aioquic event after the handshake (in order)."""

    def connection_lost(self, exc: Exception | None) -> None:
        """Called once when the connection is gone (``exc`` says why)."""


HandlerFactory = Callable[["PeerConnection"], ConnectionHandler]


@dataclass
class ConnectionStats:
    """Counters of a message connection."""

    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    #: Seconds since the connection was established (loop time).
    duration: float = 0.0
    #: Smoothed round-trip time in seconds, as QUIC measures it.
    smoothed_rtt: float = 0.0
