"""``examples/chat_cli.py``: a terminal joins the chat room over a WebSocket on P2P, hears and talks."""

from __future__ import annotations

import asyncio
import json
import sys

from asgi_p2p import Node
from asgi_p2p.http import websocket_connect
from asgi_p2p.ticket import Ticket

from .conftest import REPO, Cli, Starter


async def test_chat_cli_hears_the_room_and_talks(cli: Cli, start_server: Starter) -> None:
    ticket = start_server("apps.chat:app", "--ephemeral").wait_ready()
    addr = Ticket.parse(ticket).to_node_addr()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "examples" / "chat_cli.py"),
        ticket,
        cwd=REPO,
        env=cli.env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None

    async def line_with(text: str) -> str:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            while True:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError(f"chat_cli ended before printing {text!r}")
                if text in line:
                    return line

    other = await Node.bind()
    try:
        joined = await line_with("* joined the room")
        terminal_id = joined.rsplit(" as ", 1)[1].strip()
        async with websocket_connect(other, addr, "/ws") as ws:
            await line_with(f"* {other.node_id} joined")
            await ws.send("hello terminal")
            assert f"{str(other.node_id)[:10]}: hello terminal" in await line_with("hello terminal")
            proc.stdin.write(b"hello from the terminal\n")
            await proc.stdin.drain()
            async with asyncio.timeout(20):
                while True:
                    msg = json.loads(await ws.receive())
                    if msg["type"] == "message" and msg["text"] == "hello from the terminal":
                        assert msg["from"] == terminal_id  # proven by the terminal's key
                        break
        proc.stdin.close()  # Ctrl-D: leave the room
        await line_with("* left the room")
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        await other.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
