"""A chat room over WebSockets, served to peers with ``asgi-p2p apps.chat:app``.

Routes::

    GET       /           who is here and the recent messages (JSON)
    GET       /ui         a web page: the room over the WebSocket, and a box to talk
    GET       /messages   recent messages (JSON)
    POST      /messages   say something without a WebSocket (text body, or JSON {"text": ...})
    WEBSOCKET /ws         join: receive history then every message; send text to talk

Every message is JSON ``{"type": "message"|"join"|"leave", "from": NODE_ID, "text": ..., "time": ...}``.
Peers are named by their node id, which asgi-p2p proves in the TLS handshake
(``scope["extensions"]["p2p"]["peer_id"]``), so nobody can speak as somebody else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

__all__ = ["ChatRoom", "app", "create_app"]

log = logging.getLogger("apps.chat")

HISTORY = 50
MAX_TEXT = 4000
#: Messages queued for a member that reads too slowly before it is dropped from the room.
MEMBER_QUEUE = 100


def peer_of(conn: HTTPConnection) -> str:
    """The caller's node id (or, outside asgi-p2p, its client address)."""
    ext: Mapping[str, Any] = conn.scope.get("extensions") or {}
    peer = (ext.get("p2p") or {}).get("peer_id")
    if peer is not None:
        return str(peer)
    client = conn.scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "anonymous"


class ChatRoom:
    """Members (one bounded queue each) and the recent history."""

    def __init__(self, history: int = HISTORY) -> None:
        self.history: deque[dict[str, Any]] = deque(maxlen=history)
        self.members: dict[int, tuple[str, asyncio.Queue[dict[str, Any] | None]]] = {}
        self._next = 0

    def join(self, peer: str) -> tuple[int, asyncio.Queue[dict[str, Any] | None]]:
        self._next += 1
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(MEMBER_QUEUE)
        self.members[self._next] = (peer, queue)
        return self._next, queue

    def leave(self, member: int) -> None:
        self.members.pop(member, None)

    def peers(self) -> list[str]:
        return sorted({peer for peer, _ in self.members.values()})

    def publish(self, kind: str, peer: str, text: str = "") -> dict[str, Any]:
        msg = {"type": kind, "from": peer, "text": text, "time": round(time.time(), 3)}
        if kind == "message":
            self.history.append(msg)
        for member, (who, queue) in list(self.members.items()):
            try:
                queue.put_nowait(msg)
            except asyncio.QueueFull:  # a member that does not read is dropped, never buffered without bound
                log.warning("dropping slow chat member %s", who[:10])
                self.members.pop(member, None)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)
        return msg


def _room(conn: HTTPConnection) -> ChatRoom:
    room: ChatRoom = conn.app.state.room
    return room


async def index(request: Request) -> JSONResponse:
    room = _room(request)
    return JSONResponse(
        {"app": "asgi-p2p chat", "you": peer_of(request), "here": room.peers(), "messages": list(room.history)}
    )


#: The web page (for browsers reaching the app through ``asgi-p2p gateway``); its URLs are
#: relative, so it also works below a path prefix.
UI_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>asgi-p2p chat</title>
<style>
body { font: 15px system-ui, sans-serif; margin: 2em; background: #f2f4f6; }
#log { list-style: none; padding: 0; } #log li { margin: .3em 0; } .from { color: #567; font-size: .8em; }
</style></head>
<body><h1>asgi-p2p chat</h1><p id="state">connecting</p><ul id="log"></ul>
<form id="say"><input id="text" autocomplete="off" size="40"> <button>send</button></form>
<script>
const url = new URL("ws", location.href);
url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
const ws = new WebSocket(url);
const log = document.getElementById("log");
ws.onopen = () => { document.getElementById("state").textContent = "connected"; document.body.dataset.open = "1"; };
ws.onclose = (e) => { document.getElementById("state").textContent = "closed (" + e.code + ")"; };
ws.onmessage = (e) => {
  const msg = JSON.parse(e.data);
  const li = document.createElement("li");
  li.className = msg.type;
  const who = document.createElement("span");
  who.className = "from";
  who.textContent = msg.from.slice(0, 10) + ": ";
  li.append(who, msg.type === "message" ? msg.text : "(" + msg.type + ")");
  log.append(li);
};
document.getElementById("say").onsubmit = (e) => {
  e.preventDefault();
  const box = document.getElementById("text");
  if (box.value) ws.send(box.value);
  box.value = "";
};
</script></body></html>
"""


async def ui(request: Request) -> HTMLResponse:
    return HTMLResponse(UI_PAGE)


async def get_messages(request: Request) -> JSONResponse:
    return JSONResponse(list(_room(request).history))


async def post_message(request: Request) -> JSONResponse:
    body = await request.body()
    if len(body) > MAX_TEXT:
        return JSONResponse({"error": f"messages are limited to {MAX_TEXT} bytes"}, status_code=413)
    text = body.decode("utf-8", "replace")
    if "json" in request.headers.get("content-type", ""):
        try:
            text = str(json.loads(body)["text"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'expected JSON {"text": ...}'}, status_code=400)
    if not text.strip():
        return JSONResponse({"error": "empty message"}, status_code=400)
    msg = _room(request).publish("message", peer_of(request), text)
    return JSONResponse(msg, status_code=201)


async def chat_socket(ws: WebSocket) -> None:
    room = _room(ws)
    peer = peer_of(ws)
    await ws.accept()
    member, queue = room.join(peer)
    for past in list(room.history):
        await ws.send_json(past)
    room.publish("join", peer)

    async def pump() -> None:
        while True:
            msg = await queue.get()
            if msg is None:
                await ws.close(code=1008, reason="too slow")
                return
            await ws.send_json(msg)

    sender = asyncio.create_task(pump())
    try:
        while True:
            text = await ws.receive_text()
            if len(text) > MAX_TEXT:
                await ws.close(code=1009, reason=f"messages are limited to {MAX_TEXT} characters")
                break
            if text.strip():
                room.publish("message", peer, text)
    except WebSocketDisconnect:
        pass
    finally:
        room.leave(member)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        room.publish("leave", peer)


def create_app() -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.room = ChatRoom()
        yield

    return Starlette(
        routes=[
            Route("/", index),
            Route("/ui", ui),
            Route("/messages", get_messages, methods=["GET"]),
            Route("/messages", post_message, methods=["POST"]),
            WebSocketRoute("/ws", chat_socket),
        ],
        lifespan=lifespan,
    )


app = create_app()
