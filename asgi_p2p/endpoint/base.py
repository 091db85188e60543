"""Interfaces between the endpoint and the protocols that run on its connections.

An ALPN protocol (raw messages, HTTP/3, relay) registers a factory with
:meth:`Endpoint.add_protocol` (a ``HandlerFactory``, see
:mod:`asgi_p2p.endpoint.connection`).  For every QUIC connection negotiated with that
ALPN, on the dialing and on the accepting side, the endpoint calls the factory
with the :class:`PeerConnection` and feeds the returned
:class:`ConnectionHandler` every QUIC event of the connection.
"""

from __future__ import annotations

from typing import Protocol

from aioquic.quic.events import QuicEvent

__all__ = ["ConnectionHandler"]


class ConnectionHandler(Protocol):
    def quic_event_received(self, event: QuicEvent) -> None:
        """Called for each aioquic event after the handshake (in order)."""

    def connection_lost(self, exc: Exception | None) -> None:
        """Called once when the connection is gone (``exc`` says why)."""
