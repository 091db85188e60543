"""One ``h3`` protocol registration per endpoint, shared by the server and the clients.

The endpoint has one handler factory per ALPN, called for dialed and accepted
connections alike: dialed ones get the client's handler, accepted ones the
server's (or a refusal when no :class:`H3Server` runs on the endpoint).  Neither
side is imported here: each sets its own factory on :func:`h3_protocol`'s
registration (the client before it dials, the server when it starts).
"""

from __future__ import annotations

import weakref

from ..endpoint.base import ConnectionHandler
from ..endpoint.connection import HandlerFactory, PeerConnection
from ..endpoint.endpoint import Endpoint
from ..errors import ConnectionClosed
from ._common import H3_ALPN

__all__ = ["H3Protocol", "h3_protocol"]


class H3Protocol:
    """The endpoint's ``h3`` handler factory, dispatching to the client's or the server's."""

    def __init__(self) -> None:
        #: makes the handler of a connection we dialed (set by the client before it dials)
        self.client_factory: HandlerFactory | None = None
        #: makes the handler of an accepted connection (set while an H3Server serves)
        self.server_factory: HandlerFactory | None = None

    def factory(self, conn: PeerConnection) -> ConnectionHandler:
        if conn.is_client:
            if self.client_factory is None:
                raise ConnectionClosed("no HTTP/3 client is set up on this node")
            return self.client_factory(conn)
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
