"""A peer serving an app over HTTP/3 and a gateway (uvicorn on loopback) reaching it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from asgi_p2p import Node, SecretKey
from asgi_p2p.gateway.gateway import Gateway, GatewayServer, Lookup, Routing
from asgi_p2p.http import H3Server
from asgi_p2p.identity import NodeId


@dataclass
class Peer:
    node: Node
    server: H3Server

    @property
    def node_id(self) -> NodeId:
        return self.node.node_id


@asynccontextmanager
async def peer(app: Callable[..., Awaitable[None]] | Any, **bind: Any) -> AsyncIterator[Peer]:
    """A node serving ``app`` over HTTP/3 on loopback."""
    node = await Node.bind(**bind)
    server = H3Server(app, node)
    await server.startup()
    try:
        yield Peer(node, server)
    finally:
        await server.shutdown()
        await node.close()


@asynccontextmanager
async def gateway(
    routing: Routing,
    *,
    lookup: Lookup | None = None,
    key: SecretKey | None = None,
    opt_in: bool = False,
    **server_kwargs: Any,
) -> AsyncIterator[GatewayServer]:
    """A gateway node and its HTTP server on 127.0.0.1 (any free port); ``opt_in``: check nodes opted in."""
    node = await Node.bind(key)
    probe = await Node.bind() if opt_in else None
    gw = Gateway(node, routing, lookup=lookup, connect_timeout=5.0, opt_in_probe=probe)
    server = GatewayServer(gw, "127.0.0.1", 0, **server_kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        await node.close()
        if probe is not None:
            await probe.close()
