"""A raw ASGI app for the CLI tests, imported with ``--app-dir`` (it is not on sys.path otherwise).

It echoes what it saw as JSON; ``/slow`` answers after ``SLOW_SECONDS`` (default 1);
``FAIL_STARTUP=1`` fails the lifespan startup, ``HANG_STARTUP=1`` never finishes it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

STATE: dict[str, Any] = {}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                if os.environ.get("HANG_STARTUP"):
                    print("sample_app: startup hanging", file=sys.stderr, flush=True)  # tests wait for it
                    await asyncio.sleep(3600)
                if os.environ.get("FAIL_STARTUP"):
                    await send({"type": "lifespan.startup.failed", "message": "sample app refuses to start"})
                    return
                STATE["started"] = True
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = b""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    if scope["path"] == "/slow":
        print("sample_app: slow request started", file=sys.stderr, flush=True)  # tests wait for it
        await asyncio.sleep(float(os.environ.get("SLOW_SECONDS", "1")))
    p2p = (scope.get("extensions") or {}).get("p2p") or {}
    data = {
        "path": scope["path"],
        "root_path": scope.get("root_path", ""),
        "method": scope["method"],
        "query": scope["query_string"].decode(),
        "peer": str(p2p.get("peer_id")),
        "client": list(scope["client"]) if scope.get("client") else None,
        "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
        "body": body.decode("utf-8", "replace"),
        "greeting": os.environ.get("GREETING"),
        "started": STATE.get("started", False),
    }
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(data).encode()})


def make_app() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """For ``--factory sample_app:make_app``."""
    STATE["factory"] = True
    return app
