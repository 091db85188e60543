"""Flood benchmark (issue 12): a node and a relay under 2,000 hostile Initials per second.

Each target (a node, a relay server) runs in its own process on 127.0.0.1.  This
process floods it from 100 UDP source ports on 10 loopback addresses (127.0.0.2-11)
at ``--rate`` packets per second for
``--seconds``, with either junk (well-formed 1,200-byte Initial headers around random
bytes: they never decrypt) or genuine ClientHellos from sockets that never answer.
Halfway through, a legitimate peer connects (to the relay: a node whose relay client
connects).  Measured from /proc: the target's CPU (percent of one core) and RSS before,
during and after the flood (after: ``handshake_timeout`` + 1 s later), and the
legitimate connect time.

    python benchmarks/flood.py                      # node and relay, junk and hellos, 10 s each
    python benchmarks/flood.py --seconds 1 --after 0.5 --targets node --floods hellos  # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# this folder holds http.py, which would shadow the stdlib `http` (httpx imports it): keep it off
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from asgi_p2p import NetworkConfig, Node, P2PError, SecretKey  # noqa: E402
from asgi_p2p.identity import NodeAddr, NodeId  # noqa: E402
from asgi_p2p.net.udp import UdpNetwork  # noqa: E402
from asgi_p2p.relay.proto import RELAY_ALPN  # noqa: E402
from asgi_p2p.relay.server import RelayServer  # noqa: E402
from tests.endpoint.initials import ALPN, ClientHellos, junk_initial  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- the target process ----------------------------------------------------------------


async def _serve(kind: str) -> None:
    if kind == "node":
        node = await Node.bind(SecretKey.from_seed("flood-target"), host="127.0.0.1", port=0)
        host, port = node.local_address
        print(f"{node.node_id} {host} {port} -", flush=True)
    else:
        relay = await RelayServer.bind(SecretKey.from_seed("flood-relay"), host="127.0.0.1", port=0)
        host, port = relay.endpoint.local_address
        print(f"{relay.node_id} {host} {port} {relay.url}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin


# -- the flood ---------------------------------------------------------------------------


class Sampler:
    """CPU and RSS of a process over a time window."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss = 0.0

    def start(self) -> None:
        self._cpu, self._wall = _cpu_seconds(self.pid), time.monotonic()

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, _rss_mib(self.pid))

    def cpu_percent(self) -> float:
        return 100 * (_cpu_seconds(self.pid) - self._cpu) / (time.monotonic() - self._wall)


def _spawn(kind: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--serve", kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )


async def _run(kind: str, flood: str, args: argparse.Namespace) -> dict[str, str]:
    proc = _spawn(kind)
    try:
        assert proc.stdout is not None
        node_id, host, port, url = proc.stdout.readline().split()
        target = (host, int(port))
        await asyncio.sleep(0.5)
        sampler = Sampler(proc.pid)
        rss_before = _rss_mib(proc.pid)
        sampler.start()
        await asyncio.sleep(1.0)
        cpu_idle = sampler.cpu_percent()
        rng = random.Random(1)
        total = int(args.rate * args.seconds)
        if flood == "junk":
            packets = [junk_initial(rng) for _ in range(total)]
        else:
            hellos = ClientHellos(rng, alpn=ALPN if kind == "node" else RELAY_ALPN)
            packets = [hellos() for _ in range(total)]
        received = 0

        def count(data: bytes, addr: tuple[str, int]) -> None:
            nonlocal received
            received += 1

        net = UdpNetwork()
        # 10 source addresses (127.0.0.2-11) x 10 ports: more than one address's share of half-open slots
        sockets = [await net.bind(f"127.0.0.{2 + i % 10}", 0, count) for i in range(100)]
        connect: list[str] = []

        async def legitimate() -> None:
            await asyncio.sleep(args.seconds / 2)
            started = time.monotonic()
            peer = await Node.bind(
                SecretKey.generate(), host="127.0.0.1", port=0, relay_url=None if kind == "node" else url
            )
            try:
                if kind == "node":
                    await peer.connect(NodeAddr(NodeId.parse(node_id), [target]))
                else:
                    assert peer.relay is not None
                    await peer.relay.wait_connected(10)
                connect.append(f"{(time.monotonic() - started) * 1000:.0f}")
            except P2PError as exc:
                connect.append(f"failed after {time.monotonic() - started:.1f} s: {exc}")
            finally:
                await peer.close()

        task = asyncio.create_task(legitimate())
        sampler.start()
        loop = asyncio.get_running_loop()
        begin = loop.time()
        sent = 0
        step = 0.01
        while sent < total:
            due = min(total, int((loop.time() - begin) * args.rate) + 1)
            while sent < due:
                sockets[sent % len(sockets)].sendto(packets[sent], target)
                sent += 1
            sampler.sample()
            await asyncio.sleep(step)
        flood_wall = loop.time() - begin
        cpu_during = sampler.cpu_percent()
        await task
        await asyncio.sleep(NetworkConfig().handshake_timeout + 1 if args.after is None else args.after)
        sampler.start()
        await asyncio.sleep(1.0)
        cpu_after = sampler.cpu_percent()
        rss_after = _rss_mib(proc.pid)
        for sock in sockets:
            sock.close()
        return {
            "target": kind,
            "flood": f"{flood}, {sent / flood_wall:,.0f}/s for {flood_wall:.0f} s ({sent:,} packets)",
            "legitimate connect ms": connect[0],
            "CPU % idle / during / after": f"{cpu_idle:.0f} / {cpu_during:.0f} / {cpu_after:.0f}",
            "RSS MiB before / peak / after": f"{rss_before:.0f} / {sampler.peak_rss:.0f} / {rss_after:.0f}",
            "answers to the flood": f"{received:,}",
        }
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _main(args: argparse.Namespace) -> None:
    rows = []
    for kind in args.targets.split(","):
        for flood in args.floods.split(","):
            rows.append(await _run(kind, flood, args))
    headers = list(rows[0])
    print("| " + " | ".join(headers) + " |")
    print("|" + " --- |" * len(headers))
    for row in rows:
        print("| " + " | ".join(row[h] for h in headers) + " |")
    print(f"\nMachine: {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2000.0, help="packets per second (default 2000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="flood duration (default 10)")
    parser.add_argument("--targets", default="node,relay", help="node,relay")
    parser.add_argument("--floods", default="junk,hellos", help="junk,hellos")
    parser.add_argument(
        "--after", type=float, help="seconds after the flood before the 'after' sample (default handshake_timeout + 1)"
    )
    parser.add_argument("--serve", choices=["node", "relay"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
        return
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
