"""A process for the mDNS test: announce a node, or resolve one (run inside a network namespace only).

python mdns_peer.py announce SEED PORT NAME    # prints "ready", announces until stdin closes
python mdns_peer.py resolve NODE_ID NAME       # prints the resolved NodeAddr (by id, then by name) as JSON
"""

from __future__ import annotations

import asyncio
import json
import sys

from asgi_p2p.discovery.mdns import MdnsDiscovery
from asgi_p2p.identity import NodeAddr, NodeId, SecretKey

INTERFACES = ["127.0.0.1"]  # the namespace's loopback: nothing else exists in it


def _json(addr: NodeAddr) -> dict[str, object]:
    return {"node": str(addr.node_id), "addrs": [list(a) for a in addr.direct_addresses], "relay": addr.relay_url}


async def announce(seed: str, port: int, name: str) -> None:
    key = SecretKey.from_seed(seed)
    async with MdnsDiscovery(interfaces=INTERFACES) as mdns:
        await mdns.publish(NodeAddr(key.node_id, [("127.0.0.1", port)], "https://relay.example/"), name)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def resolve(node: str, name: str) -> None:
    async with MdnsDiscovery(interfaces=INTERFACES, timeout=10.0) as mdns:
        by_id = await mdns.resolve(NodeId.parse(node))
        by_name = await mdns.resolve_name(name)
        print(json.dumps({"by_id": _json(by_id), "by_name": _json(by_name)}), flush=True)


def main() -> None:
    mode = sys.argv[1]
    if mode == "announce":
        asyncio.run(announce(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    elif mode == "resolve":
        asyncio.run(resolve(sys.argv[2], sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
