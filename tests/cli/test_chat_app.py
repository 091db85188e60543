"""``asgi-p2p apps.chat:app``: two peers in the room over WebSockets on HTTP/3, named by their node ids."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from asgi_p2p import Node, SecretKey
from asgi_p2p.http import WebSocketSession, websocket_connect
from asgi_p2p.ticket import Ticket

from .conftest import Cli, Starter


async def next_of(ws: WebSocketSession, kind: str) -> dict[str, Any]:
    while True:
        raw = await asyncio.wait_for(ws.receive(), 10)
        msg: dict[str, Any] = json.loads(raw)
        if msg["type"] == kind:
            return msg


async def test_chat_broadcasts_with_proven_node_ids(cli: Cli, start_server: Starter) -> None:
    server = start_server("apps.chat:app", "--ephemeral")
    addr = Ticket.parse(server.wait_ready()).to_node_addr()
    alice_key, bob_key = SecretKey.generate(), SecretKey.generate()
    alice = await Node.bind(alice_key)
    bob = await Node.bind(bob_key)
    try:
        async with websocket_connect(alice, addr, "/ws") as a:
            assert (await next_of(a, "join"))["from"] == str(alice_key.node_id)
            async with websocket_connect(bob, addr, "/ws") as b:
                assert (await next_of(a, "join"))["from"] == str(bob_key.node_id)
                await a.send("hello bob")
                got = await next_of(b, "message")
                assert got["from"] == str(alice_key.node_id)
                assert got["text"] == "hello bob"
                assert (await next_of(a, "message"))["text"] == "hello bob"  # the sender hears it too
            left = await next_of(a, "leave")
            assert left["from"] == str(bob_key.node_id)
    finally:
        await alice.close()
        await bob.close()
    # the history is there for late comers, over plain HTTP too
    ticket = str(Ticket.from_node_addr(addr))
    r = cli.run("get", "-d", "hi from curl", "-H", "content-type: text/plain", f"{ticket}/messages")
    assert r.returncode == 0, r.stderr
    history = json.loads(cli.run("get", f"{ticket}/messages").stdout)
    assert [m["text"] for m in history] == ["hello bob", "hi from curl"]
