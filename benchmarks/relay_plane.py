"""Relayed bulk: the relay's UDP data plane vs DATAGRAM frames, CPU per MB and throughput.

Two environments, each run once per code tree given with ``--tree`` (a checkout of
asgi-p2p; the first is "before", e.g. a ``git archive`` of the commit before the data
plane, the second "after"), interleaved and repeated:

* ``udp``: three processes on 127.0.0.1: ``asgi-p2p relay`` (per-client budgets raised
  out of the way), a server node and a client node, both routed only through the relay
  (their paths layer is told so, as in benchmarks/paths.py).  The client downloads
  ``--mib`` MiB over the raw message API; the table shows MB/s and the CPU time of each
  process over the download, per MB.  ``ASGI_P2P_MAX_PROBE_DATAGRAM_SIZE`` (default here
  1472: an internet path with a 1500-byte MTU) is passed to every process.
* ``sim``: virtual time; a relay on a public host, server and client behind symmetric
  NATs (no direct path), each home's link to the relay 20 ms one way, 100 Mbit/s,
  1 MB queue; a ``--sim-mib`` MiB download.  The simulator charges no CPU time, so this
  shows what the wire forms do to the flow itself (relay legs without congestion control
  on the plane).

Usage::

    git archive <base> asgi_p2p | tar -x -C /tmp/base
    python benchmarks/relay_plane.py --tree /tmp/base --tree . [--runs 3] [--mib 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# this folder holds dns.py and http.py, which would shadow the packages asgi_p2p imports: keep it off
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
TICKS = os.sysconf("SC_CLK_TCK")
CHUNK = 65536


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def force_relay(ep: Any) -> None:
    """Route every peer connection of ``ep`` through the relay (benchmark only; see benchmarks/paths.py)."""
    original = ep.router.peer_for

    def peer_paths(node_id: Any) -> Any:
        peer = original(node_id)
        if not getattr(peer, "_bench_relay_only", False):
            default_route = peer.route_for

            def route_for(route: Any) -> Any:
                if route.is_relay:
                    return default_route(route)
                relay = ep.relay
                return (None, peer.node_id if relay is not None and relay.connected else None)

            peer.route_for = route_for
            peer._bench_relay_only = True
        return peer

    ep.router.peer_for = peer_paths


# -- roles (run in child processes with the tree under test on sys.path) --------------------


async def _server(url: str, id_file: Path) -> None:
    from asgi_p2p import Node, SecretKey

    node = await Node.bind(SecretKey.from_seed("plane-bench-server"), host="127.0.0.1", port=0, relay_url=url)
    force_relay(node)
    assert node.relay is not None
    await node.relay.wait_connected(20)
    id_file.write_text(str(node.node_id))  # noqa: ASYNC240 (once, before serving)
    conn = await node.listen().accept()
    payload = b"x" * CHUNK
    while True:  # one connection: each request names how many bytes to send back
        size = int((await conn.recv()).decode())
        for _ in range(size // CHUNK):
            await conn.send(payload)


async def _client(url: str, server_id: str, total: int) -> dict[str, float]:
    from asgi_p2p import Node, NodeAddr, SecretKey
    from asgi_p2p.identity import NodeId

    node = await Node.bind(SecretKey.generate(), host="127.0.0.1", port=0, relay_url=url)
    force_relay(node)
    assert node.relay is not None
    await node.relay.wait_connected(20)
    await asyncio.sleep(1.5)  # both relay connections settled (PLANE_TOKEN, size search)
    conn = await node.connect(NodeAddr(NodeId.parse(server_id), relay_url=url))
    await conn.send(b"%d" % CHUNK)  # warm-up: one chunk (handshake, windows)
    await conn.recv()
    loop = asyncio.get_running_loop()
    cpu0, t0 = time.process_time(), loop.time()
    await conn.send(b"%d" % total)
    got = 0
    while got < total:
        got += len(await conn.recv())
    wall, cpu = loop.time() - t0, time.process_time() - cpu0
    path = str(conn.peer_connection.path.kind)
    await node.close()
    return {"wall": wall, "cpu": cpu, "path": path}  # type: ignore[dict-item]


def role_main(args: argparse.Namespace) -> None:
    if args.role == "server":
        asyncio.run(_server(args.url, Path(args.id_file)))
    else:
        print(json.dumps(asyncio.run(_client(args.url, args.server_id, args.bytes))))


# -- udp: three processes ---------------------------------------------------------------------


def run_udp(tree: Path, mib: float, probe: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree), ASGI_P2P_MAX_PROBE_DATAGRAM_SIZE=str(probe))
    total = int(mib * (1 << 20)) // CHUNK * CHUNK
    with tempfile.TemporaryDirectory() as tmp:
        url_file, id_file = Path(tmp) / "url", Path(tmp) / "id"
        relay = subprocess.Popen(
            [
                *(sys.executable, "-m", "asgi_p2p", "relay", "--ephemeral", "--no-directory", "--log-level", "error"),
                *("--url-file", str(url_file), "--limit-bytes-per-second", "1e10", "--limit-packets-per-second", "1e8"),
                *("--limit-destination-bytes-per-second", "1e10", "--limit-destination-packets-per-second", "1e8"),
            ],
            cwd=tree,
            env=env,
        )
        server: subprocess.Popen[bytes] | None = None
        try:
            _wait_file(url_file, relay)
            url = url_file.read_text().strip()
            me = [sys.executable, str(Path(__file__).resolve())]
            server = subprocess.Popen([*me, "--role", "server", "--url", url, "--id-file", str(id_file)], env=env)
            _wait_file(id_file, server)
            client = subprocess.Popen(
                [*me, "--role", "client", "--url", url, "--server-id", id_file.read_text(), "--bytes", str(total)],
                env=env,
                stdout=subprocess.PIPE,
            )
            # the client's download starts after its warm-up: sample the others around the whole
            # client run and subtract their idle CPU (keepalives) at the end (small)
            r0, s0 = cpu_seconds(relay.pid), cpu_seconds(server.pid)
            out, _ = client.communicate(timeout=600)
            r1, s1 = cpu_seconds(relay.pid), cpu_seconds(server.pid)
            result = json.loads(out.decode().strip().splitlines()[-1])
        finally:
            for proc in (server, relay):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)
    mb = total / 1e6
    return {
        "MB/s": mb / result["wall"],
        "relay ms/MB": 1000 * (r1 - r0) / mb,
        "server ms/MB": 1000 * (s1 - s0) / mb,
        "client ms/MB": 1000 * result["cpu"] / mb,
        "path": result["path"],
    }


def _wait_file(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not path.exists() or not path.read_text().strip():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"{proc.args[:4]} did not start")
        time.sleep(0.05)


# -- sim -----------------------------------------------------------------------------------


def sim_main(mib: float, seed: int) -> None:
    from asgi_p2p import NetworkConfig, Node, SecretKey
    from asgi_p2p.sim import Simulation

    total = int(mib * (1 << 20)) // CHUNK * CHUNK
    sim = Simulation(seed=seed, latency=0.02, loss=0.0)
    r = sim.host("relayh")
    a = sim.host("srv", nat="symmetric")
    b = sim.host("phone", nat="symmetric")
    sim.link(a, r, latency=0.02, bandwidth=100e6, queue_bytes=1_000_000)
    sim.link(b, r, latency=0.02, bandwidth=100e6, queue_bytes=1_000_000)
    out: dict[str, Any] = {}

    async def main() -> None:
        url = await sim.relay(r)
        cfg = NetworkConfig(connect_timeout=60.0)
        common: dict[str, Any] = {"host": "0.0.0.0", "port": 4433, "config": cfg, "relay_url": url}
        ea = await Node.bind(SecretKey.from_seed("alice"), network=a, **common)
        eb = await Node.bind(SecretKey.from_seed("bob"), network=b, **common)
        assert ea.relay is not None and eb.relay is not None
        await ea.relay.wait_connected(10)
        await eb.relay.wait_connected(10)
        await asyncio.sleep(1.5)
        conn = await eb.connect(ea.node_addr())

        async def send() -> None:
            for _ in range(total // CHUNK):
                await conn.send(b"x" * CHUNK)

        task = asyncio.create_task(send())
        inc = await ea.listen().accept()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        got = 0
        while got < total:
            got += len(await inc.recv())
        out["MB/s"] = total / 1e6 / (loop.time() - t0)
        out["path"] = str(conn.peer_connection.path.kind)
        paths = ea.router.stats  # the receiver's: the relayed packets' average size
        out["bytes/packet"] = paths.relay_bytes_received / max(paths.relay_packets_received, 1)
        await task
        await eb.close()
        await ea.close()

    try:
        sim.run(main(), time_limit=3600.0)
    finally:
        sim.close()
    print(json.dumps(out))


def run_sim(tree: Path, mib: float, seed: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    me = [sys.executable, str(Path(__file__).resolve())]
    out = subprocess.run(
        [*me, "--role", "sim", "--sim-mib", str(mib), "--seed", str(seed)],
        env=env,
        capture_output=True,
        check=True,
        timeout=1800,
    )
    return json.loads(out.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", type=Path, help="asgi-p2p checkout to measure (repeat: before, after)")
    ap.add_argument("--env", choices=["udp", "sim", "both"], default="both")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=float, default=16, help="MiB per download on real UDP (default 16)")
    ap.add_argument("--sim-mib", type=float, default=4, help="MiB per download in the simulator (default 4)")
    ap.add_argument("--probe", type=int, default=1472, help="ASGI_P2P_MAX_PROBE_DATAGRAM_SIZE for udp (default 1472)")
    ap.add_argument("--seed", type=int, default=1)
    # child roles
    ap.add_argument("--role", choices=["server", "client", "sim"], help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--id-file", help=argparse.SUPPRESS)
    ap.add_argument("--server-id", help=argparse.SUPPRESS)
    ap.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "sim":
        sim_main(args.sim_mib, args.seed)
        return
    if args.role is not None:
        role_main(args)
        return
    sys.path.append(str(HERE))  # (the parent imports no asgi_p2p: nothing left to shadow)
    from _machine import machine_description

    trees = [t.resolve() for t in (args.tree or [HERE.parent])]
    print(machine_description())
    envs = ["udp", "sim"] if args.env == "both" else [args.env]
    results: dict[tuple[str, Path], list[dict[str, float]]] = {}
    for run in range(args.runs):
        for env in envs:
            for tree in trees:  # interleaved: before, after, before, after, ...
                if env == "udp":
                    row = run_udp(tree, args.mib, args.probe)
                else:
                    row = run_sim(tree, args.sim_mib, args.seed + run)
                results.setdefault((env, tree), []).append(row)
                shown = " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
                print(f"run {run + 1} {env} {tree}: {shown}", flush=True)
    print()
    for (env, tree), rows in results.items():
        keys = [k for k in rows[0] if k != "path"]
        medians = ", ".join(f"{k} {statistics.median(r[k] for r in rows):.2f}" for k in keys)
        total = ""
        if env == "udp":
            cpu = [r["relay ms/MB"] + r["server ms/MB"] + r["client ms/MB"] for r in rows]
            total = f", all three ms/MB {statistics.median(cpu):.1f} (runs: {', '.join(f'{c:.0f}' for c in cpu)})"
        print(f"{env} {tree}: median of {len(rows)}: {medians}{total}")


if __name__ == "__main__":
    main()
