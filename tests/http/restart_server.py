"""A node serving a tiny ASGI app on 127.0.0.1:PORT with the key of SEED, until killed.

Usage: python restart_server.py SEED PORT  (prints "ready <node id>" once serving)
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from asgi_p2p import NetworkConfig, Node, SecretKey
from asgi_p2p.http import H3Server


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = f"{scope['method']} {scope['path']}".encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]}
    )
    await send({"type": "http.response.body", "body": body})


async def main(seed: str, port: int) -> None:
    node = await Node.bind(SecretKey.from_seed(seed), host="127.0.0.1", port=port, config=NetworkConfig())
    server = H3Server(app, node)
    await server.startup()
    print("ready", node.node_id, flush=True)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
