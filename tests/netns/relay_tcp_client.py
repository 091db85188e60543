"""A long-lived client for tests/netns/test_relay_tcp.py, run inside a home whose router drops UDP.

``python -m tests.netns.relay_tcp_client RELAY_URL TICKET PATH`` (from the repository root):
binds a node with that relay
(retrying UDP to it every 2 s while on TCP), downloads ``https://<node>PATH`` and prints
``got1 <sha256> <path kind> <relay transport>``; then waits for a line on stdin (the test
unblocks UDP first), waits until the relay client is back on UDP and the end-to-end QUIC
connection has a direct path, prints ``moved <path kind>``, downloads again over the same
connection and prints ``got2 <sha256> <same connection: yes|no>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import sys
from typing import Any

import httpx

from asgi_p2p import SecretKey
from asgi_p2p.http import P2PTransport
from asgi_p2p.node import Node
from asgi_p2p.relay.client import RelayClient
from asgi_p2p.ticket import Ticket


def factory(endpoint: Any, url: str, sink: Any, *, rng: random.Random | None = None) -> RelayClient:
    return RelayClient(endpoint, url, sink, rng=rng, udp_retry_interval=2.0, proxy=None)


async def until(predicate: Any, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # polls two objects' state, bounded by the deadline
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def main() -> None:
    relay_url, ticket_text, path = sys.argv[1:4]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    node = await Node.bind(SecretKey.generate(), host="0.0.0.0", relay_url=relay_url, relay_factory=factory)
    relay = node.relay
    assert isinstance(relay, RelayClient)
    await relay.wait_connected(30)
    ticket = Ticket.parse(ticket_text)
    transport = P2PTransport(node)
    transport.add_addr(ticket.to_node_addr())
    async with httpx.AsyncClient(transport=transport, timeout=60) as http:
        r = await http.get(f"https://{ticket.node_id}{path}")
        r.raise_for_status()
        conn = next(c for c in node.connections if c.remote_node_id == ticket.node_id and not c.closed)
        print("got1", hashlib.sha256(r.content).hexdigest(), conn.path.kind, relay.transport, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await until(lambda: relay.transport == "udp", 30)
        await until(lambda: conn.path.kind == "direct", 30)
        print("moved", relay.transport, conn.path.kind, flush=True)
        r = await http.get(f"https://{ticket.node_id}{path}")
        r.raise_for_status()
        same = any(c is conn for c in node.connections) and not conn.closed
        print("got2", hashlib.sha256(r.content).hexdigest(), "yes" if same else "no", flush=True)
    await node.close(timeout=1.0)


if __name__ == "__main__":
    asyncio.run(main())
