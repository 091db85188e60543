"""The raw message API as ``typing.Protocol`` classes (the seed's P2PSystem, P2PConnection, P2PListener).

Code written against these types works with any implementation: today the
QUIC :class:`~asgi_p2p.Endpoint` on real UDP and the same endpoint on the
simulator's network; tests can also substitute their own fakes.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .identity import NodeAddr, NodeId
from .messages import ConnectionStats

__all__ = ["P2PConnection", "P2PListener", "P2PSystem"]


@runtime_checkable
class P2PConnection(Protocol):
    """An ordered, message-delimited connection with one authenticated peer."""

    @property
    def remote_node_id(self) -> NodeId: ...

    @property
    def is_connected(self) -> bool: ...

    @property
    def stats(self) -> ConnectionStats: ...

    async def send(self, data: bytes) -> None: ...

    async def recv(self) -> bytes: ...

    async def close(self) -> None: ...


@runtime_checkable
class P2PListener(Protocol):
    """Incoming connections."""

    async def accept(self) -> P2PConnection: ...


@runtime_checkable
class P2PSystem(Protocol):
    """A node that dials and accepts message connections."""

    @property
    def local_node_id(self) -> NodeId: ...

    async def connect(self, addr: NodeAddr | NodeId) -> P2PConnection: ...

    def listen(self) -> P2PListener: ...
