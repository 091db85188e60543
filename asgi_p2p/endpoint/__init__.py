"""QUIC endpoint with mutual Ed25519 authentication on one owned datagram socket."""

from .base import ConnectionHandler, ConnectionStats, HandlerFactory
from .connection import PeerConnection
from .endpoint import AllowPolicy, Endpoint

__all__ = ["AllowPolicy", "ConnectionHandler", "ConnectionStats", "Endpoint", "HandlerFactory", "PeerConnection"]
