"""asgi-p2p: serve ASGI apps to peers over HTTP/3 on direct, mutually authenticated QUIC."""

from .config import NetworkConfig
from .endpoint import Endpoint, PeerConnection
from .errors import (
    AuthenticationFailed,
    ConnectionClosed,
    ConnectionFailed,
    ConnectionReset,
    ConnectionTimedOut,
    DiscoveryFailed,
    InvalidConfiguration,
    InvalidNodeId,
    MessageTooLarge,
    NetworkError,
    NodeNotFound,
    NoRoute,
    P2PError,
    ProtocolError,
    SerializationError,
    StreamReset,
    Timeout,
)
from .identity import NodeAddr, NodeId, SecretKey
from .messages import MSG_ALPN, ConnectionStats, MessageConnection, MessageListener
from .node import Node

__version__ = "0.1.0"

__all__ = [
    "MSG_ALPN",
    "AuthenticationFailed",
    "ConnectionClosed",
    "ConnectionFailed",
    "ConnectionReset",
    "ConnectionStats",
    "ConnectionTimedOut",
    "DiscoveryFailed",
    "Endpoint",
    "InvalidConfiguration",
    "InvalidNodeId",
    "MessageConnection",
    "MessageListener",
    "MessageTooLarge",
    "NetworkConfig",
    "NetworkError",
    "NoRoute",
    "Node",
    "NodeAddr",
    "NodeId",
    "NodeNotFound",
    "P2PError",
    "PeerConnection",
    "ProtocolError",
    "SecretKey",
    "SerializationError",
    "StreamReset",
    "Timeout",
]
