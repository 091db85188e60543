"""Fixtures of the gateway tests: real backends on loopback, a proxy served to a peer over HTTP/3."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from asgi_p2p import NetworkConfig, Node
from asgi_p2p.gateway.proxy import ProxyApp
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.http.types import ASGIApp


@dataclass
class Backend:
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]


async def start_uvicorn(app: ASGIApp, *, uds: Path | None = None) -> Backend:
    """``app`` served by uvicorn (HTTP/1.1, WebSocket Upgrade) on 127.0.0.1 or a unix socket."""
    if uds is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(uds))
        url = f"unix:{uds}"
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="websockets-sansio")
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    async with asyncio.timeout(10):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    return Backend(url, server, task)


@dataclass
class Proxied:
    proxy: ProxyApp
    server: H3Server
    client: httpx.AsyncClient
    node: Node  # the proxy's node
    peer: Node  # the caller's node


ProxyFactory = Callable[..., Awaitable[Proxied]]


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Awaitable[Backend]]]:
    started: list[Backend] = []

    async def start(app: ASGIApp, **kwargs: Any) -> Backend:
        b = await start_uvicorn(app, **kwargs)
        started.append(b)
        return b

    yield start
    for b in started:
        b.server.should_exit = True
    for b in started:
        await asyncio.wait_for(b.task, 10)


@pytest.fixture
async def proxied() -> AsyncIterator[ProxyFactory]:
    """``await proxied(backend_url, **ProxyApp options)``: the proxy served over HTTP/3 and a peer's client."""
    made: list[Proxied] = []
    nodes: list[Node] = []

    async def make(backend: str, **options: Any) -> Proxied:
        node = await Node.bind(host="127.0.0.1", config=NetworkConfig(keepalive_interval=0))
        nodes.append(node)
        peer = await Node.bind(host="127.0.0.1", config=NetworkConfig(keepalive_interval=0))
        nodes.append(peer)
        proxy = ProxyApp(backend, **options)
        server = H3Server(proxy, node, timeout_graceful_shutdown=2.0)
        await server.startup()
        transport = P2PTransport(peer)
        transport.add_addr(node.node_addr())
        client = httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}", timeout=30.0)
        p = Proxied(proxy, server, client, node, peer)
        made.append(p)
        return p

    yield make
    for p in made:
        await p.client.aclose()
        await p.server.shutdown()
    for n in nodes:
        await n.close(timeout=0.5)
