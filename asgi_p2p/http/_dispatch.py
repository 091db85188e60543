"""One ``h3`` protocol registration per endpoint, shared by the server and the clients.

The endpoint has one handler factory per ALPN, called for dialed and accepted
connections alike: dialed ones get a client handler, accepted ones the
server's handler (or a refusal when no :class:`H3Server` runs on the endpoint).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from ..endpoint.base import ConnectionHandler
from ..endpoint.connection import PeerConnection
from ..endpoint.endpoint import Endpoint
from ..errors import ConnectionClosed
from ._common import H3_ALPN

__all__ = ["H3Protocol", "h3_protocol"]


class H3Protocol:
    def __init__(self) -> None:
        self.server_factory: Callable[[PeerConnection], ConnectionHandler] | None = None

    def factory(self, conn: PeerConnection) -> ConnectionHandler:
        if conn.is_client:
            from .client import ClientConnection

            return ClientConnection(conn)
        if self.server_factory is None:
            raise ConnectionClosed("no HTTP/3 server is running on this node")
        return self.server_factory(conn)


_protocols: weakref.WeakKeyDictionary[Endpoint, H3Protocol] = weakref.WeakKeyDictionary()


def h3_protocol(endpoint: Endpoint) -> H3Protocol:
    """The endpoint's ``h3`` protocol, registering it on first use."""
    proto = _protocols.get(endpoint)
    if proto is None:
        proto = H3Protocol()
        _protocols[endpoint] = proto
        endpoint.add_protocol(H3_ALPN, proto.factory)
    return proto
