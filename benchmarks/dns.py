"""DNS lookup + dial to first response, beside a dial by ticket, against a real Knot DNS.

Runs as root: starts knotd in a network namespace of its own (loopback only,
see tests/discovery/knot.py), a node there publishes its signed record by TSIG
update, and each run a fresh client node (no pooled connection, no cache)
fetches one small response from it, interleaved (ABBA order):

* ``ticket``: the addresses are known (as from a ticket): QUIC handshake + request;
* ``dns``: ``P2PTransport(discovery=DnsDiscovery(...))`` given the bare node id:
  TXT lookup + signature check + handshake + request;
* ``lookup``: the TXT lookup and signature check alone.

Prints medians and every run's value, with the machine it ran on.  Loopback
inside one namespace: the numbers are CPU costs, not network latency.
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
# this folder holds http.py: keep it off sys.path (it would shadow the stdlib `http`); the root goes on
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ZONE = "bench.test"


async def _inner(server: str, secret: str, runs: int) -> dict[str, list[float]]:
    import httpx

    from asgi_p2p import Node, SecretKey
    from asgi_p2p.discovery import DnsDiscovery, DnsUpdate
    from asgi_p2p.http import H3Server, P2PTransport

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    loop = asyncio.get_running_loop()
    offset = time.time() - loop.time()
    a = await Node.bind(SecretKey.from_seed("bench-dns-server"), host="127.0.0.1")
    h3 = H3Server(app, a, timeout_graceful_shutdown=1.0)
    await h3.startup()
    pub = DnsDiscovery(
        ZONE,
        nameservers=[server],
        key=a.secret_key,
        update=DnsUpdate(server, "update-key", secret),
        clock_offset=offset,
        refresh=False,
    )
    await pub.publish(a.node_addr())
    results: dict[str, list[float]] = {"ticket": [], "dns": [], "lookup": []}

    async def fetch(kind: str) -> None:
        b = await Node.bind(host="127.0.0.1")
        try:
            dns = DnsDiscovery(ZONE, nameservers=[server], clock_offset=offset)
            start = loop.time()
            if kind == "lookup":
                await dns.resolve(a.node_id)
            else:
                transport = P2PTransport(b, discovery=dns) if kind == "dns" else P2PTransport(b)
                if kind == "ticket":
                    transport.add_addr(a.node_addr())
                async with httpx.AsyncClient(transport=transport, timeout=20) as client:
                    r = await client.get(f"https://{a.node_id}/")
                    assert r.status_code == 200
            results[kind].append((loop.time() - start) * 1000)
        finally:
            await b.close(timeout=0.2)

    for i in range(runs):
        order = ["ticket", "dns", "lookup"]
        for kind in order if i % 2 == 0 else reversed(order):
            await fetch(kind)
    await pub.unpublish()
    await h3.shutdown()
    await a.close()
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="runs of each kind (default 20)")
    ap.add_argument("--inner", nargs=2, metavar=("SERVER", "SECRET"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inner:
        print(json.dumps(asyncio.run(_inner(args.inner[0], args.inner[1], args.runs))))
        return 0
    from benchmarks._machine import machine_description
    from tests.discovery.knot import knot_in_netns

    with tempfile.TemporaryDirectory(prefix="asgi-p2p-dns-bench-") as tmp, knot_in_netns(Path(tmp), ZONE) as knot:
        env = dict(os.environ, PYTHONPATH=ROOT)
        run = subprocess.run(
            [
                *("ip", "netns", "exec", knot.netns, sys.executable, os.path.abspath(__file__)),
                *("--runs", str(args.runs), "--inner", knot.address, knot.secret),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=ROOT,
        )
    if run.returncode != 0:
        print(run.stderr, file=sys.stderr)
        return 1
    results: dict[str, list[float]] = json.loads(run.stdout)
    print(f"machine: {machine_description()}")
    print(f"Knot DNS in a network namespace, loopback; {args.runs} runs of each, interleaved; fresh client each run")
    print()
    print("| ms to first response | median | per run |")
    print("| --- | --- | --- |")
    labels = {
        "ticket": "dial by ticket (addresses known)",
        "dns": "DNS lookup + verify + dial (bare node id)",
        "lookup": "DNS lookup + verify alone",
    }
    for kind, label in labels.items():
        values = results[kind]
        per_run = " ".join(f"{v:.1f}" for v in values)
        print(f"| {label} | {statistics.median(values):.1f} | {per_run} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
