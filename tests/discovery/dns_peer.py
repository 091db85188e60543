"""Run inside the DNS test's network namespace (see test_dns_knot.py): publish, resolve, dial, refuse.

Usage: dns_peer.py ZONE SERVER_IP:PORT TSIG_NAME TSIG_SECRET; prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import dns.asyncquery
import dns.rcode
import dns.tsigkeyring
import dns.update
import httpx
from dns.rdtypes.ANY.TXT import TXT

from asgi_p2p import Node, SecretKey
from asgi_p2p.discovery import ChainedDiscovery, DnsDiscovery, DnsUpdate, StaticDiscovery
from asgi_p2p.discovery.dns import encode_txt
from asgi_p2p.discovery.records import NodeRecord, SignedNodeRecord
from asgi_p2p.errors import DiscoveryFailed
from asgi_p2p.http import H3Server, P2PTransport

_CONTEXT = b"asgi-p2p node-record v1\x00"  # what node records are signed over (records.py)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = f"found by DNS: {scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def main(zone: str, server: str, key_name: str, secret: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    offset = time.time() - loop.time()
    update = DnsUpdate(server, key_name, secret)
    out: dict[str, Any] = {}
    a = await Node.bind(SecretKey.from_seed("dns-server-node"), host="127.0.0.1")
    h3 = H3Server(app, a, timeout_graceful_shutdown=1.0)
    await h3.startup()
    publisher = DnsDiscovery(zone, nameservers=[server], key=a.secret_key, update=update, clock_offset=offset)
    await publisher.publish(a.node_addr())
    out["published"] = str(a.node_id)

    # the operator (plain dnspython, the same TSIG key) maps a human name with a CNAME
    host, port = server.split(":")

    async def operator(change: Callable[[dns.update.UpdateMessage], object]) -> None:
        keyring = dns.tsigkeyring.from_text({key_name: ("hmac-sha256", secret)})
        m = dns.update.UpdateMessage(zone, keyring=keyring, keyalgorithm="hmac-sha256")
        change(m)
        response = await dns.asyncquery.tcp(m, host, timeout=5, port=int(port))
        assert response.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(response.rcode())

    await operator(lambda m: m.replace("music", 60, "CNAME", f"{a.node_id}.{zone}."))

    async def put(node: SecretKey, signed: SignedNodeRecord) -> None:
        await operator(lambda m: m.replace(str(node.node_id), 60, TXT("IN", "TXT", encode_txt(signed))))

    # a second node, knowing nothing but the node id (and the name), dials through DNS alone
    b = await Node.bind(SecretKey.from_seed("dns-client-node"), host="127.0.0.1")
    dns_source = DnsDiscovery(zone, nameservers=[server], clock_offset=offset, timeout=3.0)
    b.discovery = dns_source
    start = loop.time()
    async with httpx.AsyncClient(transport=P2PTransport(b, discovery=dns_source), timeout=20) as client:
        r = await client.get(f"https://{a.node_id}/by-id")
        out["first_response_ms"] = (loop.time() - start) * 1000
        out["by_id"] = [r.status_code, r.text]
        r = await client.get(f"https://music.{zone}/by-name")
        out["by_name"] = [r.status_code, r.text]

    # refusals: a record signed by another key, an expired record, a record for another node
    mallory = SecretKey.from_seed("dns-mallory")
    v1, v2, v3 = (SecretKey.from_seed(f"dns-victim-{i}") for i in range(3))
    now = loop.time() + offset
    genuine = NodeRecord(v1.node_id, 1, now + 600, None, (("127.0.0.1", 9),)).sign(v1)
    forged_payload = genuine.data[:-64].replace(bytes([127, 0, 0, 1]), bytes([127, 6, 6, 6]))
    forged = SignedNodeRecord(genuine.record, forged_payload + mallory.sign(_CONTEXT + forged_payload))
    await put(v1, forged)
    await put(v2, NodeRecord(v2.node_id, 1, now - 30, None, (("127.0.0.1", 9),)).sign(v2))
    await put(v3, NodeRecord(mallory.node_id, 1, now + 600, None, (("127.0.0.1", 9),)).sign(mallory))
    refused: dict[str, str] = {}
    for label, victim in (("other_key", v1), ("expired", v2), ("other_node", v3)):
        try:
            found = await dns_source.resolve(victim.node_id)
            refused[label] = f"ACCEPTED {found}"
        except DiscoveryFailed as exc:
            refused[label] = str(exc)
    out["refused"] = refused

    # a maximal record (32 IPv6 addresses, a long relay URL: about 4 KB of TXT) comes back whole
    big = SecretKey.from_seed("dns-big-record")
    addrs = tuple((f"2001:db8::{i:x}", 4433) for i in range(32))
    await put(big, NodeRecord(big.node_id, 1, now + 600, "p2p-relay://" + "r" * 1500, addrs).sign(big))
    found_big = await dns_source.resolve(big.node_id)
    out["big"] = [len(found_big.direct_addresses), len(found_big.relay_url or "")]

    # a DNS server that does not answer fails after its timeout with the reason; the chain goes on
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    slow = DnsDiscovery(zone, nameservers=[f"127.0.0.1:{silent.getsockname()[1]}"], timeout=1.0)
    chain = ChainedDiscovery([slow, StaticDiscovery([a.node_addr()])], timeout=5.0)
    t0 = loop.time()
    found = await chain.resolve(a.node_id)
    out["chain"] = {"node": str(found.node_id), "seconds": loop.time() - t0}
    try:
        await slow.resolve(a.node_id)
    except DiscoveryFailed as exc:
        out["slow"] = str(exc)
    silent.close()

    # unpublish removes the record; a resolver that has it cached answers until the DNS TTL (60 s) ends
    await publisher.unpublish()
    out["cached"] = str((await dns_source.resolve(a.node_id)).node_id)
    try:
        await DnsDiscovery(zone, nameservers=[server], clock_offset=offset).resolve(a.node_id)
        out["after_unpublish"] = "still there"
    except DiscoveryFailed as exc:
        out["after_unpublish"] = str(exc)
    await h3.shutdown()
    await a.close()
    await b.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:5]))), flush=True)
