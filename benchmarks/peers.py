"""Many peers: one asgi-p2p node serving 100 peers with one request each in flight, against 4 peers
with 25 each (the same 100 requests in flight).

    python benchmarks/peers.py [--repeat 3] [--seconds 5] [--shapes 4x25,100x1]

The server is one asgi-p2p node (``H3Server``, a raw ASGI app answering a 13-byte body) in a
subprocess on 127.0.0.1; the clients are asgi-p2p nodes in this process, one node (its own
UDP socket, its own QUIC connection) per peer, each driving httpx over ``P2PTransport`` with
as many workers as the shape says.  Both rows use the same server and the same client code;
only how the 100 requests in flight are spread over connections differs.  Each run starts a
fresh server, connects every peer, warms up, then counts the requests completed in
``--seconds``.  Datagrams are 1200 bytes on both sides (path probing off), keepalives off.

All the peers share ONE client process, which does more work per request than the server
(httpx, and every peer's QUIC).  On a quiet machine that process saturates a core first, so
requests/s is then 1 / (client CPU per request): the client's rate, not the node's.  The table
therefore also reports what the server process spent, and the node's capacity from it.
Columns:

- req/s: requests completed per wall second, all peers together; bounded by whichever process
  saturates first (on a quiet machine, the client process), or by the round trips when few
  requests are in flight;
- server CPU ms/req: the server process's user + system CPU (psutil) over the measured seconds,
  per completed request;
- server capacity, req/s per core: 1000 / server CPU ms per request, the requests/s the node
  would answer with one full core of its own, whatever the client;
- client CPU ms/req: this process's ``time.process_time`` over the measured seconds, per request
  (all peers, httpx included);
- core share, client / server: each process's CPU seconds per wall second of the run (1.00 is a
  full core);
- client-bound runs: runs in which the client process used at least 90% of a core while the
  server used at most 80% of the client's share; their req/s measures the client, not the node;
- datagrams/req to / from the server: what the client connections sent / received per request.

Runs are interleaved (every shape once per round, the order rotating); cells show the median and
every run's value.  Below the table, the last shape against the first (100x1 / 4x25 by default),
per round and the median of the rounds: the req/s ratio, and the server capacity ratio (the
inverse ratio of the server's CPU per request), which is the node's own.
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


#: a run is client-bound when the client process used at least this share of a core ...
CLIENT_BOUND_CORE = 0.9
#: ... while the server used at most this fraction of the client's share
CLIENT_BOUND_SERVER_FRACTION = 0.8


@dataclass
class Run:
    shape: str
    rps: float
    server_cpu_ms: float  # per request
    client_cpu_ms: float  # per request
    sent: float  # client datagrams sent per request
    received: float  # client datagrams received per request
    client_core: float  # the client process's CPU seconds per wall second
    server_core: float  # the server process's CPU seconds per wall second

    @property
    def server_capacity(self) -> float:
        """Requests/s the server would answer with one full core: 1 / its CPU per request."""
        return 1e3 / self.server_cpu_ms if self.server_cpu_ms > 0 else float("inf")

    @property
    def client_bound(self) -> bool:
        return (
            self.client_core >= CLIENT_BOUND_CORE
            and self.server_core <= CLIENT_BOUND_SERVER_FRACTION * self.client_core
        )


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
        if done == 0:
            raise RuntimeError(f"no request completed in {seconds:g} s")
        return Run(
            f"{peers}x{streams}",
            done / wall,
            scpu / done * 1e3,
            ccpu / done * 1e3,
            (sent1 - sent0) / done,
            (recv1 - recv0) / done,
            ccpu / wall,
            scpu / wall,
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
    print(table(shapes, runs))


def _cell(values: list[float], fmt: str) -> str:
    """The median and every run's value: ``median (run 1 / run 2 / ...)``."""
    return f"{statistics.median(values):{fmt}} ({' / '.join(f'{v:{fmt}}' for v in values)})"


def table(shapes: list[str], runs: dict[str, list[Run]]) -> str:
    """The table (a row per shape) and, with two shapes or more, the last one's ratios to the first."""
    lines = [
        "| shape | req/s, median (runs) | server CPU ms/req | server capacity, req/s per core "
        "(1 / server CPU per request) | client CPU ms/req | core share, client / server (medians) "
        "| client-bound runs | datagrams/req to / from the server |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape in shapes:
        rs = runs[shape]
        lines.append(
            f"| {_shape_label(shape)} | {_cell([r.rps for r in rs], ',.0f')} "
            f"| {_cell([r.server_cpu_ms for r in rs], '.3f')} "
            f"| {_cell([r.server_capacity for r in rs], ',.0f')} "
            f"| {_cell([r.client_cpu_ms for r in rs], '.3f')} "
            f"| {statistics.median(r.client_core for r in rs):.2f} / "
            f"{statistics.median(r.server_core for r in rs):.2f} "
            f"| {sum(r.client_bound for r in rs)} of {len(rs)} "
            f"| {statistics.median(r.sent for r in rs):.2f} / {statistics.median(r.received for r in rs):.2f} |"
        )
    lines.append(
        f"\nclient-bound: the client process (all peers) used at least {CLIENT_BOUND_CORE:.0%} of a core "
        f"while the server used at most {CLIENT_BOUND_SERVER_FRACTION:.0%} of the client's share; such a "
        "run's req/s is the client's rate, the server capacity column the node's."
    )
    if len(shapes) >= 2:
        a, b = shapes[-1], shapes[0]
        pairs = list(zip(runs[a], runs[b], strict=True))
        rps = [x.rps / y.rps for x, y in pairs]
        capacity = [x.server_capacity / y.server_capacity for x, y in pairs]
        bound = sum(x.client_bound and y.client_bound for x, y in pairs)
        lines += [
            f"\n{_shape_label(a)} / {_shape_label(b)}, per round; median:",
            f"- req/s ratio: {' / '.join(f'{r:.2f}' for r in rps)}; median {statistics.median(rps):.2f} "
            f"(both runs client-bound in {bound} of {len(pairs)} rounds: there it is the client process's ratio)",
            f"- server capacity ratio (the node's): {' / '.join(f'{r:.2f}' for r in capacity)}; "
            f"median {statistics.median(capacity):.2f}",
        ]
    return "\n".join(lines)


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
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if len(set(shapes)) != len(shapes):
        parser.error(f"--shapes names a shape twice: {args.shapes!r}")
    print(f"Machine: {machine_description()}", flush=True)
    asyncio.run(run(args))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
