"""Join the chat room (``asgi-p2p apps.chat:app``) from a terminal, over a WebSocket on direct P2P.

::

    asgi-p2p apps.chat:app                      # on one machine: prints a ticket
    python examples/chat_cli.py TICKET          # on another: type lines to talk, Ctrl-D to leave

The WebSocket is RFC 9220 (extended CONNECT on HTTP/3) on the same QUIC connection
any HTTP request to the node would use: end-to-end encrypted, and the room names
you by the node id your key proves.  ``--key-file`` keeps one identity across runs
(default: a new random one each time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout: asgi_p2p lives next door

from asgi_p2p import Node
from asgi_p2p.errors import P2PError
from asgi_p2p.http import WebSocketDisconnect, WebSocketSession, websocket_connect
from asgi_p2p.identity import SecretKey, load_or_create_key
from asgi_p2p.ticket import Ticket


def line_for(msg: dict[str, object]) -> str:
    """One terminal line for a room message."""
    when = time.strftime("%H:%M:%S", time.localtime(float(str(msg.get("time") or 0))))
    who = str(msg.get("from", "?"))
    if msg.get("type") == "message":
        return f"[{when}] {who[:10]}: {msg.get('text', '')}"
    return f"[{when}] * {who} {'joined' if msg.get('type') == 'join' else 'left'}"


async def stdin_lines() -> asyncio.StreamReader:
    """Standard input as an asyncio stream (a terminal or a pipe)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def talk(ws: WebSocketSession, lines: asyncio.StreamReader) -> None:
    """Send every typed line; return at the end of input."""
    while raw := await lines.readline():
        text = raw.decode("utf-8", "replace").strip()
        if text:
            await ws.send(text)


async def listen(ws: WebSocketSession) -> None:
    """Print every message of the room until it closes."""
    while True:
        try:
            data = await ws.receive()
        except WebSocketDisconnect as exc:
            print(f"* the room closed the connection ({exc.code}{': ' + exc.reason if exc.reason else ''})")
            return
        print(line_for(json.loads(data)), flush=True)


async def main(ticket: str, key_file: Path | None) -> int:
    key = load_or_create_key(key_file) if key_file is not None else SecretKey.generate()
    addr = Ticket.parse(ticket).to_node_addr()
    node = await Node.bind(key, host="127.0.0.1" if _loopback_only(addr.direct_addresses) else "0.0.0.0")
    try:
        async with websocket_connect(node, addr, "/ws") as ws:
            print(f"* joined the room on node {addr.node_id} as {key.node_id}", flush=True)
            lines = await stdin_lines()
            tasks = [asyncio.ensure_future(talk(ws, lines)), asyncio.ensure_future(listen(ws))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, P2PError):
                    await task
        print("* left the room", flush=True)
        return 0
    except P2PError as exc:
        print(f"chat_cli: error: {exc}", file=sys.stderr)
        return 1
    finally:
        await node.close()


def _loopback_only(addresses: Sequence[tuple[str, int]]) -> bool:
    return bool(addresses) and all(host.startswith("127.") or host == "::1" for host, _ in addresses)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="join the asgi-p2p chat room from a terminal")
    parser.add_argument("ticket", help="the ticket `asgi-p2p apps.chat:app` printed")
    parser.add_argument("--key-file", type=Path, help="keep this identity (created 0600 if missing)")
    options = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main(options.ticket, options.key_file)))
