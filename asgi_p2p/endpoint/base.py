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
        """Called once, as soon as the connection is lost (``exc`` says why): a CONNECTION_CLOSE
        was sent or received (QUIC's closing or draining period may still run, but nothing is
        delivered any more), or it ended otherwise (a stateless reset, an idle timeout)."""
