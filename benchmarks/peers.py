"""Many peers: requests/s of one asgi-p2p node serving 100 peers with one request each in flight,
against 4 peers with 25 each (the same 100 requests in flight).

    python benchmarks/peers.py [--repeat 3] [--seconds 5] [--shapes 4x25,100x1]

The server is one asgi-p2p node (``H3Server``, a raw ASGI app answering a 13-byte body) in a
subprocess on 127.0.0.1; the clients are asgi-p2p nodes in this process, one node (its own
UDP socket, its own QUIC connection) per peer, each driving httpx over ``P2PTransport`` with
as many workers as the shape says.  Both rows use the same server and the same client code;
only how the 100 requests in flight are spread over connections differs.  Each run starts a
fresh server, connects every peer, warms up, then counts the requests completed in
``--seconds``.  Datagrams are 1200 bytes on both sides (path probing off), keepalives off.

Runs are interleaved (every shape once per round, the order rotating); the tables show medians
and every run's values; the ratio is taken per round, then its median.  Server CPU is the
server process's (psutil); client CPU is this process's ``time.process_time``.
``--profile-server FILE`` writes a cProfile (CPU time) of the server of the last run of each shape
(``FILE.<shape>``), ``--profile-client FILE`` one of the clients during the measured seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

# this folder holds http.py, which would shadow the stdlib `http` (httpx imports it): keep it off
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import httpx  # noqa: E402

from asgi_p2p import NetworkConfig, Node, NodeAddr, NodeId  # noqa: E402
from asgi_p2p.http import H3Server, P2PTransport  # noqa: E402
from benchmarks._machine import load_average, machine_description  # noqa: E402

SMALL = b"hello, world\n"
_SCRIPT = os.path.abspath(__file__)


async def app(scope: dict[str, object], receive: object, send: object) -> None:
    if scope["type"] != "http":
        return
    await send(  # type: ignore[operator]
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(SMALL)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": SMALL})  # type: ignore[operator]


def _config() -> NetworkConfig:
    return NetworkConfig.from_env(max_datagram_size=1200, max_probe_datagram_size=0, keepalive_interval=0)


def serve(profile: str | None) -> None:
    async def main() -> None:
        endpoint = await Node.bind(host="127.0.0.1", config=_config())
        server = H3Server(app, endpoint, limit_peer_rate=0)
        await server.startup()
        host, port = endpoint.local_address
        print(f"READY {endpoint.node_id} {host} {port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.shutdown()
        await endpoint.close()

    if profile is None:
        asyncio.run(main())
        return
    import cProfile

    prof = cProfile.Profile(time.process_time)  # CPU time: a shared machine preempts us (wall time would count that)
    prof.enable()
    try:
        asyncio.run(main())
    finally:
        prof.disable()
        prof.dump_stats(profile)


@dataclass
class Run:
    shape: str
    rps: float
    server_cpu_ms: float  # per request
    client_cpu_ms: float  # per request
    sent: float  # client datagrams sent per request
    received: float  # client datagrams received per request


def _server_cpu(pid: int) -> float:
    import psutil  # type: ignore[import-untyped]

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


async def run_shape(
    peers: int, streams: int, seconds: float, profile: str | None, client_profile: str | None = None
) -> Run:
    cmd = [sys.executable, _SCRIPT, "--serve"]
    if profile:
        cmd += ["--profile-out", profile]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)  # noqa: ASYNC220 (before any timing)
    try:
        assert proc.stdout is not None
        line = (await asyncio.to_thread(proc.stdout.readline)).split()
        if not line or line[0] != "READY":
            raise RuntimeError("the server did not start")
        node_id = NodeId.parse(line[1])
        addr = NodeAddr(node_id, [(line[2], int(line[3]))])
        nodes = [await Node.bind(host="127.0.0.1", config=_config()) for _ in range(peers)]
        clients = [
            httpx.AsyncClient(transport=P2PTransport(n, addrs=[addr]), timeout=30, base_url=f"https://{node_id}")
            for n in nodes
        ]
        try:
            # connect every peer (ten handshakes at a time) and warm up (code paths, connection state)
            for i in range(0, peers, 10):
                await asyncio.gather(*(c.get("/") for c in clients[i : i + 10]))
            for _ in range(5):
                await asyncio.gather(*(c.get("/") for c in clients))

            def datagrams() -> tuple[int, int]:
                conns = [c for n in nodes for c in n.connections]
                return sum(c.datagrams_sent for c in conns), sum(c.datagrams_received for c in conns)

            stop_at = 0.0
            done = 0
            go = asyncio.Event()

            async def worker(client: httpx.AsyncClient) -> None:
                nonlocal done
                await go.wait()
                while time.perf_counter() < stop_at:
                    r = await client.get("/")
                    if r.status_code != 200:
                        raise RuntimeError(f"status {r.status_code}")
                    done += 1

            tasks = [asyncio.ensure_future(worker(c)) for c in clients for _ in range(streams)]
            await asyncio.sleep(0)
            sent0, recv0 = datagrams()
            prof = None
            if client_profile:
                import cProfile

                prof = cProfile.Profile(time.process_time)
                prof.enable()
            cpu0, c0, t0 = _server_cpu(proc.pid), time.process_time(), time.perf_counter()
            stop_at = t0 + seconds
            go.set()
            await asyncio.gather(*tasks)
            wall = time.perf_counter() - t0
            scpu, ccpu = _server_cpu(proc.pid) - cpu0, time.process_time() - c0
            if prof is not None and client_profile:
                prof.disable()
                prof.dump_stats(client_profile)
            sent1, recv1 = datagrams()
        finally:
            for c in clients:
                await c.aclose()
            for n in nodes:
                await n.close()
        return Run(
            f"{peers}x{streams}",
            done / wall,
            scpu / done * 1e3,
            ccpu / done * 1e3,
            (sent1 - sent0) / done,
            (recv1 - recv0) / done,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _shape_label(shape: str) -> str:
    peers, streams = shape.split("x")
    return f"{peers} peers x {streams} stream{'s' if streams != '1' else ''}"


async def run(args: argparse.Namespace) -> None:
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    runs: dict[str, list[Run]] = {s: [] for s in shapes}
    for rnd in range(args.repeat):
        shift = rnd % len(shapes)
        for shape in shapes[shift:] + shapes[:shift]:
            peers, streams = (int(x) for x in shape.split("x"))
            last = rnd == args.repeat - 1
            profile = f"{args.profile_server}.{shape}" if args.profile_server and last else None
            print(f"round {rnd + 1}/{args.repeat}: {shape} (load {load_average()}) ...", file=sys.stderr, flush=True)
            client_profile = f"{args.profile_client}.{shape}" if args.profile_client and last else None
            runs[shape].append(await run_shape(peers, streams, args.seconds, profile, client_profile))
    print(
        f"\nRuns: {args.repeat}, interleaved; {args.seconds:g} s of small GETs per run; load at the end: "
        f"{load_average()}\n"
    )
    print(
        "| shape | req/s median | server CPU ms/req | client CPU ms/req | datagrams/req to / from the server "
        "| req/s per run |"
    )
    print("|---|---|---|---|---|---|")
    for shape, rs in runs.items():
        per = " / ".join(f"{r.rps:,.0f}" for r in rs)
        print(
            f"| {_shape_label(shape)} | {statistics.median(r.rps for r in rs):,.0f} "
            f"| {statistics.median(r.server_cpu_ms for r in rs):.3f} "
            f"| {statistics.median(r.client_cpu_ms for r in rs):.3f} "
            f"| {statistics.median(r.sent for r in rs):.2f} / {statistics.median(r.received for r in rs):.2f} | {per} |"
        )
    if len(shapes) >= 2:
        a, b = shapes[-1], shapes[0]
        ratios = [x.rps / y.rps for x, y in zip(runs[a], runs[b], strict=True)]
        print(
            f"\n{_shape_label(a)} / {_shape_label(b)}, req/s ratio per round: "
            + " / ".join(f"{r:.2f}" for r in ratios)
            + f"; median {statistics.median(ratios):.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument(
        "--shapes",
        default="4x25,100x1",
        help="PEERSxSTREAMS, comma-separated (default 4x25,100x1; the ratio is last / first)",
    )
    parser.add_argument("--profile-server", metavar="FILE", help="cProfile the server of each shape's last run")
    parser.add_argument(
        "--profile-client", metavar="FILE", help="cProfile the clients (measured seconds only) of each shape's last run"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.profile_out)
        return
    if args.repeat < 1 or args.seconds <= 0:
        parser.error("--repeat must be at least 1 and --seconds positive")
    for shape in args.shapes.split(","):
        try:
            peers, streams = (int(x) for x in shape.split("x"))
        except ValueError:
            parser.error(f"bad shape {shape!r}: expected PEERSxSTREAMS, e.g. 100x1")
        if peers < 1 or streams < 1:
            parser.error(f"bad shape {shape!r}: peers and streams must be at least 1")
    print(f"Machine: {machine_description()}", flush=True)
    asyncio.run(run(args))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
