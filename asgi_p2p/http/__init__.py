"""HTTP/3 for asgi-p2p: an ASGI server for peers and httpx transports to call them.

::

    server = H3Server(app, endpoint)
    await server.startup()

    async with httpx.AsyncClient(transport=P2PTransport(endpoint)) as client:
        r = await client.get(f"https://{node_id}/tracks")
"""

from ._common import H3_ALPN, ClientDisconnected, Headers, clean_header_fields
from .client import P2PTransport, PeerGoingAway, SyncP2PTransport
from .lifespan import LifespanFailed
from .server import H3Server
from .websocket import WebSocketDisconnect, WebSocketRejected, WebSocketSession, websocket_connect

__all__ = [
    "H3_ALPN",
    "ClientDisconnected",
    "H3Server",
    "Headers",
    "LifespanFailed",
    "P2PTransport",
    "PeerGoingAway",
    "SyncP2PTransport",
    "WebSocketDisconnect",
    "WebSocketRejected",
    "WebSocketSession",
    "clean_header_fields",
    "websocket_connect",
]
