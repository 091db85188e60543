"""Relay over TCP vs relay over UDP on loopback: download throughput and time to first response.

One process on 127.0.0.1: a relay serving UDP and TCP, a server node (UDP) serving
blobs over HTTP/3, and two clients: one over the relay's UDP (its paths layer is told
to use only the relay, as in benchmarks/paths.py) and one whose UDP is dropped
entirely, which therefore reaches the relay over TLS + WebSocket.  Per run, and
interleaved (UDP, TCP, UDP, TCP, ...):

* **time to first response**: from binding a new client node to the first response
  of a small GET (relay connection + end-to-end QUIC handshake + request); the TCP
  client's includes the head start it gives UDP (``udp_head_start``, 1 s by default);
* **download**: ``--mib`` MiB over the client's established connection, in MB/s.

Prints per-run values, then medians, and the TCP/UDP throughput ratio.  Loopback has
no latency or loss: this measures the relay-over-TCP path's CPU cost (TLS, WebSocket
framing, one message per packet), not a WAN.

Usage: python benchmarks/relay_tcp.py [--runs 3] [--mib 10]
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# this folder holds http.py, which would shadow the stdlib `http` (httpx imports it): keep it off
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

import httpx

from asgi_p2p import NodeAddr, SecretKey
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.net.base import Address, DatagramReceiver
from asgi_p2p.net.udp import UdpNetwork, UdpSocket
from asgi_p2p.node import Node
from asgi_p2p.relay.client import RelayClient
from asgi_p2p.relay.server import RelayServer
from benchmarks._machine import machine_description
from benchmarks.paths import force_relay


class _Dropping:
    def __init__(self, inner: UdpSocket) -> None:
        self.inner = inner

    @property
    def local_address(self) -> Address:
        return self.inner.local_address

    def local_addresses(self) -> list[Address]:
        return self.inner.local_addresses()

    def sendto(self, data: bytes, addr: Address) -> None:
        pass  # a firewall dropping all outbound UDP

    def close(self) -> None:
        self.inner.close()


class NoUdp:
    def __init__(self) -> None:
        self.real = UdpNetwork()

    def wall_clock_offset(self) -> float:
        return self.real.wall_clock_offset()

    async def bind(self, host: str, port: int, receiver: DatagramReceiver) -> _Dropping:
        return _Dropping(await self.real.bind(host, port, receiver))


def make_app(blob: bytes) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = blob if scope["path"] == "/blob" else b"ok"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        for i in range(0, len(body), 65536):
            await send({"type": "http.response.body", "body": body[i : i + 65536], "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def factory(endpoint: Any, url: str, sink: Any, *, rng: random.Random | None = None) -> RelayClient:
    return RelayClient(endpoint, url, sink, rng=rng, proxy=None)


async def one_run(relay: RelayServer, server: Node, kind: str, blob_sha: str, size: int) -> tuple[float, float]:
    started = time.perf_counter()
    kwargs: dict[str, Any] = {"network": NoUdp()} if kind == "tcp" else {}
    client = await Node.bind(SecretKey.generate(), relay_url=str(relay.url), relay_factory=factory, **kwargs)
    try:
        if kind == "udp":
            force_relay(client)
        assert client.relay is not None
        await client.relay.wait_connected(10)
        transport = P2PTransport(client)
        transport.add_addr(NodeAddr(server.node_id, [], str(relay.url)))
        async with httpx.AsyncClient(transport=transport, timeout=120) as http:
            r = await http.get(f"https://{server.node_id}/small")
            first = time.perf_counter() - started
            assert r.content == b"ok"
            link = client.relay
            assert isinstance(link, RelayClient) and link.transport == kind, (kind, link.transport)
            t0 = time.perf_counter()
            r = await http.get(f"https://{server.node_id}/blob")
            elapsed = time.perf_counter() - t0
            assert hashlib.sha256(r.content).hexdigest() == blob_sha
            conn = next(c for c in client.connections if c.remote_node_id == server.node_id)
            assert conn.path.kind == "relay", conn.path
        return first, size / elapsed / 1e6
    finally:
        await client.close(timeout=0.5)


async def main(runs: int, mib: int) -> None:
    print(machine_description())
    blob = random.Random(1).randbytes(mib * 1024 * 1024)
    sha = hashlib.sha256(blob).hexdigest()
    relay = await RelayServer.bind(SecretKey.generate(), host="127.0.0.1", tcp_port=0)
    server = await Node.bind(SecretKey.generate(), relay_url=str(relay.url), relay_factory=factory)
    force_relay(server)
    h3 = H3Server(make_app(blob), server, timeout_graceful_shutdown=1.0)
    await h3.startup()
    assert server.relay is not None
    await server.relay.wait_connected(10)
    results: dict[str, list[tuple[float, float]]] = {"udp": [], "tcp": []}
    try:
        print(f"{'run':>4} {'relay via':>9} {'first response s':>17} {f'{mib} MiB MB/s':>12}")
        for i in range(runs):
            for kind in ("udp", "tcp"):
                first, rate = await one_run(relay, server, kind, sha, len(blob))
                results[kind].append((first, rate))
                print(f"{i + 1:>4} {kind:>9} {first:>17.3f} {rate:>12.1f}")
        med = {k: (statistics.median(f for f, _ in v), statistics.median(r for _, r in v)) for k, v in results.items()}
        for k, (f, r) in med.items():
            print(f"median over {runs} runs, relay via {k}: first response {f:.3f} s, download {r:.1f} MB/s")
        print(f"TCP/UDP download ratio (medians): {med['tcp'][1] / med['udp'][1]:.2f}")
    finally:
        await h3.shutdown()
        await server.close(timeout=0.5)
        await relay.close(timeout=0.5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mib", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.mib))
