"""``NetworkConfig.max_websocket_message_size``: the largest WebSocket message a node accepts,
as a server and as a client; a larger one closes the WebSocket with 1009 (message too big)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from asgi_p2p.http import H3Server, WebSocketDisconnect, websocket_connect
from asgi_p2p.http.types import Receive, Scope, Send

from .conftest import EndpointPair

LIMIT = 1000


class EchoApp:
    """Echoes every message; ``send:N`` answers with N bytes instead.  Records the close code."""

    def __init__(self) -> None:
        self.disconnect_codes: list[int] = []
        self.closed = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert scope["type"] == "websocket"
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            msg: dict[str, Any] = dict(await receive())
            if msg["type"] == "websocket.disconnect":
                self.disconnect_codes.append(msg["code"])
                self.closed.set()
                return
            text = msg.get("text")
            if text is not None and text.startswith("send:"):
                await send({"type": "websocket.send", "bytes": b"x" * int(text[5:])})
            else:
                await send({"type": "websocket.send", "bytes": msg.get("bytes"), "text": text})


async def test_server_refuses_a_message_above_its_limit(endpoint_pair: EndpointPair) -> None:
    server_ep = await endpoint_pair.new_endpoint(max_websocket_message_size=LIMIT)
    app = EchoApp()
    server = H3Server(app, server_ep, timeout_graceful_shutdown=2.0)
    await server.startup()
    try:
        async with websocket_connect(endpoint_pair.client, server_ep.node_addr(), "/") as ws:
            await ws.send(b"a" * LIMIT)  # at the limit: passes
            assert await ws.receive() == b"a" * LIMIT
            await ws.send(b"b" * (LIMIT + 1))
            with pytest.raises(WebSocketDisconnect) as info:
                await ws.receive()
            assert info.value.code == 1009
        await asyncio.wait_for(app.closed.wait(), 10)
        assert app.disconnect_codes == [1009]
    finally:
        await server.shutdown()


async def test_client_refuses_a_message_above_its_limit(endpoint_pair: EndpointPair) -> None:
    client_ep = await endpoint_pair.new_endpoint(max_websocket_message_size=LIMIT)
    app = EchoApp()
    server = H3Server(app, endpoint_pair.server, timeout_graceful_shutdown=2.0)
    await server.startup()
    try:
        async with websocket_connect(client_ep, endpoint_pair.server.node_addr(), "/") as ws:
            await ws.send(f"send:{LIMIT}")  # at the limit: passes
            assert await ws.receive() == b"x" * LIMIT
            await ws.send(f"send:{LIMIT + 1}")
            with pytest.raises(WebSocketDisconnect) as info:
                await ws.receive()
            assert info.value.code == 1009
        await asyncio.wait_for(app.closed.wait(), 10)
        # the client sent its close frame (1009) and stopped reading the stream: the server app
        # sees that close, or, when the STOP_SENDING is handled first, 1006 (no close frame)
        assert app.disconnect_codes in ([1009], [1006])
    finally:
        await server.shutdown()
