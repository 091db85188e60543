"""The direct-P2P client of the tunnel-migration example: fetch a file from nginx, through the node, and check it.

::

    python client.py --key-file run/client.key "$(cat run/ticket.txt)"

It reads ``SHA256SUMS`` from the site, downloads every file listed there over HTTP/3
to the node (``P2PTransport``: end-to-end encrypted, no gateway in between), streams
each one through sha256 and prints one line per file.  Exit status 0 when every digest
matches, 1 otherwise.  The node's nginx logs each request with this client's node id
(``X-P2P-Peer-Id``), proven by ``--key-file``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout: asgi_p2p is two levels up

import httpx

from asgi_p2p import Node
from asgi_p2p.errors import P2PError
from asgi_p2p.http import P2PTransport
from asgi_p2p.identity import SecretKey
from asgi_p2p.ticket import Ticket


async def main(ticket_text: str, key_file: Path) -> int:
    key = SecretKey.load(key_file)
    addr = Ticket.parse(ticket_text).to_node_addr()
    loopback = all(host.startswith("127.") or host == "::1" for host, _ in addr.direct_addresses)
    node = await Node.bind(key, host="127.0.0.1" if loopback and addr.relay_url is None else "0.0.0.0")
    transport = P2PTransport(node)
    transport.add_addr(addr)
    ok = True
    try:
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{addr.node_id}") as client:
            sums = await client.get("/SHA256SUMS")
            sums.raise_for_status()
            for line in sums.text.splitlines():
                expected, name = line.split(maxsplit=1)
                digest = hashlib.sha256()
                size = 0
                async with client.stream("GET", f"/{name}") as r:
                    r.raise_for_status()
                    async for chunk in r.aiter_raw():
                        digest.update(chunk)
                        size += len(chunk)
                match = digest.hexdigest() == expected
                ok = ok and match
                print(f"{name}  {size} bytes  sha256 {digest.hexdigest()}  {'OK' if match else 'MISMATCH'}")
    except (P2PError, httpx.HTTPError) as exc:
        print(f"client: error: {exc}", file=sys.stderr)
        return 1
    finally:
        await node.close()
    print(f"as node {key.node_id}, from node {addr.node_id}: {'all verified' if ok else 'digest mismatch'}")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="fetch the example's files over direct P2P and check their sha256")
    parser.add_argument("ticket", help="the node's ticket (run/ticket.txt)")
    parser.add_argument("--key-file", type=Path, required=True, help="this client's key (its node id is allowed)")
    options = parser.parse_args()
    sys.exit(asyncio.run(main(options.ticket, options.key_file)))
