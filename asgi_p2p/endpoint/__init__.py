"""QUIC endpoint with mutual Ed25519 authentication over the paths layer's one socket."""

from .base import ConnectionHandler
from .connection import HandlerFactory, PeerConnection
from .endpoint import AllowPolicy, Endpoint

__all__ = ["AllowPolicy", "ConnectionHandler", "Endpoint", "HandlerFactory", "PeerConnection"]
