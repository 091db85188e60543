"""CPU cost of metrics per small HTTP request: the same server with its metrics observer on and off.

    python benchmarks/metrics_overhead.py [--pairs 15] [--block 300] [--concurrency 10]
    python benchmarks/metrics_overhead.py --instructions     # needs valgrind, a few minutes

``--instructions`` counts the *server's* instructions per request under valgrind
(cachegrind), which a loaded machine does not disturb: the server runs alone in a child
process under valgrind, metrics on (observer attached, listener running) or off, and the
client (this process) sends it 100, then (another run) 500 small GETs, 10 concurrent; the
difference of the two counts over 400 is the instructions per request, without start-up.

Without it:

One process, real UDP on 127.0.0.1: an ``H3Server`` serving a tiny response, its metrics
listener running (``asgi_p2p.ops.start_metrics_server``), and an asgi-p2p client
(``P2PTransport``) on one connection.  Requests go in blocks; each pair of blocks runs one
with the server's metrics observer attached and one without (the order alternating),
back to back, so both see the same machine load.  Reported: process CPU per request
(client and server together: one process) with metrics on and off, per pair and the
median, their difference in microseconds, and the cost of one scrape of ``/metrics``.
Dividing the difference by the server's own CPU per request (``benchmarks/http.py``
measures it in a separate process) gives the share of the server's CPU.

``benchmarks/http.py --metrics-overhead`` compares two server processes instead (metrics
off, and on with the listener scraped every 5 s): the direct measurement, noisier on a
loaded machine.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._machine import machine_description

BODY = b"hello, world\n"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"13")]})
    await send({"type": "http.response.body", "body": BODY})


async def run(args: argparse.Namespace) -> None:
    import httpx

    from asgi_p2p import NetworkConfig, Node
    from asgi_p2p.http import H3Server, P2PTransport
    from asgi_p2p.ops import start_metrics_server

    config = NetworkConfig(max_probe_datagram_size=0, keepalive_interval=0)
    server_node = await Node.bind(host="127.0.0.1", config=config)
    client_node = await Node.bind(host="127.0.0.1", config=config)
    server = H3Server(app, server_node, lifespan="off", limit_peer_rate=0)  # one peer as fast as it can
    metrics = await start_metrics_server("127.0.0.1:0", endpoint=server_node, http=server)
    observer = server.observer
    transport = P2PTransport(client_node)
    transport.add_addr(server_node.node_addr())
    url = f"https://{server_node.node_id}/"
    try:
        await server.startup()
        async with httpx.AsyncClient(transport=transport) as client:

            async def block(on: bool) -> float:
                server.observer = observer if on else None
                per_worker = args.block // args.concurrency

                async def worker() -> None:
                    for _ in range(per_worker):
                        r = await client.get(url)
                        assert r.status_code == 200

                cpu0 = time.process_time()
                await asyncio.gather(*(worker() for _ in range(args.concurrency)))
                return (time.process_time() - cpu0) / (per_worker * args.concurrency) * 1e6

            for _ in range(2):  # warm up both ways
                await block(True)
                await block(False)
            on: list[float] = []
            off: list[float] = []
            for i in range(args.pairs):
                if i % 2:
                    off.append(await block(False))
                    on.append(await block(True))
                else:
                    on.append(await block(True))
                    off.append(await block(False))
            async with httpx.AsyncClient() as http:
                cpu0 = time.process_time()
                for _ in range(20):
                    text = (await http.get(f"{metrics.url}/metrics")).text
                scrape_ms = (time.process_time() - cpu0) / 20 * 1e3
            assert "asgi_p2p_http_requests_total" in text
    finally:
        await server.shutdown()
        await metrics.close()
        await client_node.close()
        await server_node.close()
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    diffs = [a - b for a, b in zip(on, off, strict=True)]
    print(
        f"{args.pairs} pairs of blocks of {args.block} small GETs ({args.concurrency} concurrent), "
        "metrics observer on and off back to back (order alternating)\n"
    )
    print("| | process CPU us/request (client + server), median | per pair |")
    print("| --- | --- | --- |")
    print(f"| metrics on | {statistics.median(on):.1f} | {', '.join(f'{v:.0f}' for v in on)} |")
    print(f"| metrics off | {statistics.median(off):.1f} | {', '.join(f'{v:.0f}' for v in off)} |")
    print(
        f"| on / off | {statistics.median(ratios):.3f}x | {', '.join(f'{v:.3f}' for v in ratios)} |\n"
        f"| on - off | {statistics.median(diffs):+.1f} us | {', '.join(f'{v:+.0f}' for v in diffs)} |"
    )
    print(f"\nOne scrape of /metrics (process CPU, the listener and the collectors): {scrape_ms:.2f} ms")


_SMALL, _LARGE = 100, 500  # the two request counts of --instructions


def serve_child(on: bool) -> None:
    """The server of --instructions: serve until stdin closes (run under valgrind)."""

    async def main() -> None:
        from asgi_p2p import NetworkConfig, Node
        from asgi_p2p.http import H3Server
        from asgi_p2p.ops import start_metrics_server

        config = NetworkConfig(max_probe_datagram_size=0, keepalive_interval=0, idle_timeout=600)
        node = await Node.bind(host="127.0.0.1", config=config)
        server = H3Server(app, node, lifespan="off", limit_peer_rate=0)
        metrics = await start_metrics_server("127.0.0.1:0", endpoint=node, http=server) if on else None
        await server.startup()
        print(f"READY {node.node_id} {node.local_address[1]}", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        await server.shutdown()
        if metrics is not None:
            await metrics.close()
        await node.close()

    asyncio.run(main())


async def drive(node_id: str, port: int, n: int, concurrency: int) -> None:
    import httpx

    from asgi_p2p import NetworkConfig, Node, NodeAddr, NodeId
    from asgi_p2p.http import P2PTransport

    node = await Node.bind(host="127.0.0.1", config=NetworkConfig(max_probe_datagram_size=0, idle_timeout=600))
    transport = P2PTransport(node, addrs=[NodeAddr(NodeId.parse(node_id), [("127.0.0.1", port)])])
    try:
        async with httpx.AsyncClient(transport=transport, timeout=300) as client:
            url = f"https://{node_id}/"

            async def worker(k: int) -> None:
                for _ in range(k):
                    assert (await client.get(url)).status_code == 200

            await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    finally:
        await node.close()


def count_instructions() -> int:
    """Server instructions per request, metrics on and off: (I(large) - I(small)) / (large - small)."""
    if shutil.which("valgrind") is None:
        print("--instructions needs valgrind on PATH", file=sys.stderr)
        return 2
    machine = machine_description()  # the load average at the start
    per: dict[str, float] = {}
    for mode in ("off", "on"):
        counts = []
        for n in (_SMALL, _LARGE):
            cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
            cmd += [sys.executable, __file__, "--serve", mode]
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            assert proc.stdin is not None and proc.stdout is not None
            try:
                ready = proc.stdout.readline().split()
                if not ready or ready[0] != "READY":
                    print(f"server did not start:\n{proc.communicate(timeout=60)[1][-2000:]}", file=sys.stderr)
                    return 1
                asyncio.run(drive(ready[1], int(ready[2]), n, 10))
                _, err = proc.communicate(input="", timeout=600)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            found = re.findall(r"I\s+refs:\s+([\d,]+)", err)
            if proc.returncode != 0 or not found:
                print(f"valgrind run failed (metrics {mode}, {n} requests):\n{err[-2000:]}", file=sys.stderr)
                return 1
            counts.append(int(found[-1].replace(",", "")))
            print(f"# metrics {mode}, {n} requests: {counts[-1]:,} server instructions", file=sys.stderr)
        per[mode] = (counts[1] - counts[0]) / (_LARGE - _SMALL)
    print(f"Machine: {machine}")
    print(
        f"Server instructions per small GET (valgrind cachegrind; ({_LARGE} - {_SMALL} requests) difference; "
        "10 concurrent; the server process alone):\n"
    )
    print("| metrics off | metrics on | on / off |\n| --- | --- | --- |")
    print(f"| {per['off'] / 1e3:.1f} k | {per['on'] / 1e3:.1f} k | {per['on'] / per['off']:.4f}x |")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instructions", action="store_true", help="server instructions per request (valgrind)")
    parser.add_argument("--serve", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--block", type=int, default=300, help="requests per block (default 300)")
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    if args.serve is not None:
        serve_child(args.serve == "on")
        return
    if args.instructions:
        sys.exit(count_instructions())
    if args.pairs < 1 or args.block < args.concurrency or args.concurrency < 1:
        parser.error("--pairs and --concurrency must be positive, --block at least --concurrency")
    print(f"Machine: {machine_description()}", flush=True)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
