"""Flood benchmark (issue 12): a node and a relay under 2,000 hostile Initials per second.

Each target runs in its own process on 127.0.0.1: a node, a relay server, or both at once
(``both``: a relay and a node registered with it, the node's ticket naming its address and
the relay).  This process floods every target process from 100 UDP source ports on 10
loopback addresses (127.0.0.2-11) at ``--rate`` packets per second each, for ``--seconds``,
with either junk (well-formed 1,200-byte Initial headers around random bytes: they never
decrypt) or genuine ClientHellos from sockets that never answer.  Halfway through, a
legitimate peer connects: to the node, a new node dials it by its ticket (for ``both`` that
peer has the relay too, and the ticket names it); to the relay, a node whose relay client
connects.  Measured from /proc: each target's CPU (percent of one core) and RSS before,
during and after the flood (after: ``handshake_timeout`` + 1 s later), and the legitimate
connect time (from before the peer binds its node), and the datagrams the kernel dropped
at each target's socket because its receive buffer was full (``/proc/net/udp``).  Every (target, flood) pair runs
``--runs`` times, interleaved (round 1 of every pair, then round 2, ...); each row gives
the medians over the runs and every run's connect time.

    python benchmarks/flood.py                      # node, relay and both; junk and hellos; 10 s; 3 runs
    python benchmarks/flood.py --seconds 1 --after 0.5 --targets both --floods hellos --runs 1  # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# this folder holds http.py, which would shadow the stdlib `http` (httpx imports it): keep it off
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from asgi_p2p import NetworkConfig, Node, P2PError, SecretKey  # noqa: E402
from asgi_p2p.identity import NodeId  # noqa: E402
from asgi_p2p.net.udp import UdpNetwork  # noqa: E402
from asgi_p2p.relay.proto import RELAY_ALPN  # noqa: E402
from asgi_p2p.relay.server import RelayServer  # noqa: E402
from asgi_p2p.ticket import Ticket  # noqa: E402
from benchmarks._machine import load_average, machine_description  # noqa: E402
from tests.endpoint.initials import ALPN, ClientHellos, junk_initial  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
TARGETS = ("node", "relay", "both")
FLOODS = ("junk", "hellos")
#: how long the legitimate peer may take before its connect counts as failed
CONNECT_LIMIT = 10.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _udp_drops(port: int) -> int:
    """Datagrams the kernel dropped for the UDP socket bound to 127.0.0.1:``port`` (receive buffer full)."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            return int(fields[-1])
    return 0


# -- the target processes ----------------------------------------------------------------


async def _serve(kind: str, relay_url: str | None) -> None:
    """Print ``NODE_ID HOST PORT EXTRA`` (EXTRA: a node's ticket, a relay's URL), run until stdin closes."""
    if kind == "node":
        node = await Node.bind(SecretKey.from_seed("flood-target"), host="127.0.0.1", port=0, relay_url=relay_url)
        if node.relay is not None:
            await node.relay.wait_connected(CONNECT_LIMIT)  # the ticket names the relay
        host, port = node.local_address
        print(f"{node.node_id} {host} {port} {Ticket.from_node_addr(node.node_addr())}", flush=True)
    else:
        relay = await RelayServer.bind(SecretKey.from_seed("flood-relay"), host="127.0.0.1", port=0)
        host, port = relay.endpoint.local_address
        print(f"{relay.node_id} {host} {port} {relay.url}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin


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


@dataclass
class Target:
    """One target process: a node or a relay server."""

    kind: str
    proc: subprocess.Popen[str]
    node_id: str
    addr: tuple[str, int]
    extra: str  # a node's ticket, a relay's URL
    sampler: Sampler
    packets: list[bytes] = field(default_factory=list)
    answers: int = 0
    rss_before: float = 0.0
    rss_after: float = 0.0
    cpu: list[float] = field(default_factory=list)  # idle, during, after
    drops: int = 0  # datagrams the kernel dropped at the target's socket during the run

    @classmethod
    def spawn(cls, kind: str, relay_url: str | None = None) -> Target:
        argv = [sys.executable, __file__, "--serve", kind]
        if relay_url is not None:
            argv += ["--serve-relay-url", relay_url]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            raise RuntimeError(f"the {kind} process exited before it was ready ({proc.wait()})")
        node_id, host, port, extra = line.split()
        return cls(kind, proc, node_id, (host, int(port)), extra, Sampler(proc.pid))

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Run:
    """One run of one (target, flood) pair."""

    kind: str
    flood: str
    targets: list[Target]
    rate: float  # packets per second actually sent to each target
    seconds: float
    sent: int  # to each target
    connect_ms: float | None  # None: failed
    failure: str = ""


# -- one run -------------------------------------------------------------------------------


async def _legitimate(kind: str, targets: dict[str, Target], delay: float) -> tuple[float | None, str]:
    """The legitimate peer's connect time in ms (None and why if it failed)."""
    await asyncio.sleep(delay)
    started = time.monotonic()
    relay_url = targets["relay"].extra if "relay" in targets else None
    peer = await Node.bind(SecretKey.generate(), host="127.0.0.1", port=0, relay_url=relay_url)
    try:
        if kind == "relay":
            assert peer.relay is not None
            await peer.relay.wait_connected(CONNECT_LIMIT)
        else:
            node = targets["node"]
            # by its ticket, as a user would paste it (for "both" it names the relay too)
            ticket = Ticket.parse(node.extra).to_node_addr()
            assert ticket.node_id == NodeId.parse(node.node_id) and node.addr in ticket.direct_addresses
            await asyncio.wait_for(peer.connect(ticket), CONNECT_LIMIT)
        return (time.monotonic() - started) * 1000, ""
    except (P2PError, TimeoutError) as exc:
        return None, f"failed after {time.monotonic() - started:.1f} s: {exc or type(exc).__name__}"
    finally:
        await peer.close()


async def _run(kind: str, flood: str, args: argparse.Namespace, seed: int) -> Run:
    targets: dict[str, Target] = {}
    try:
        if kind in ("relay", "both"):
            targets["relay"] = Target.spawn("relay")
        if kind in ("node", "both"):
            targets["node"] = Target.spawn("node", targets["relay"].extra if kind == "both" else None)
        await asyncio.sleep(0.5)
        for t in targets.values():
            t.drops = -_udp_drops(t.addr[1])
            t.rss_before = _rss_mib(t.proc.pid)
            t.sampler.start()
        await asyncio.sleep(1.0)
        for t in targets.values():
            t.cpu.append(t.sampler.cpu_percent())
        rng = random.Random(seed)
        total = int(args.rate * args.seconds)
        for t in targets.values():
            if flood == "junk":
                t.packets = [junk_initial(rng) for _ in range(total)]
            else:
                hellos = ClientHellos(rng, alpn=ALPN if t.kind == "node" else RELAY_ALPN)
                t.packets = [hellos() for _ in range(total)]
        by_addr = {t.addr: t for t in targets.values()}

        def count(data: bytes, addr: tuple[str, int]) -> None:
            t = by_addr.get((addr[0], addr[1]))
            if t is not None:
                t.answers += 1

        net = UdpNetwork()
        # 10 source addresses (127.0.0.2-11) x 10 ports: more than one address's share of half-open slots
        sockets = [await net.bind(f"127.0.0.{2 + i % 10}", 0, count) for i in range(100)]
        task = asyncio.create_task(_legitimate(kind, targets, args.seconds / 2))
        for t in targets.values():
            t.sampler.start()
        loop = asyncio.get_running_loop()
        begin = loop.time()
        sent = 0
        while sent < total:
            due = min(total, int((loop.time() - begin) * args.rate) + 1)
            while sent < due:
                sock = sockets[sent % len(sockets)]
                for t in targets.values():
                    sock.sendto(t.packets[sent], t.addr)
                sent += 1
            for t in targets.values():
                t.sampler.sample()
            await asyncio.sleep(0.01)
        flood_wall = loop.time() - begin
        for t in targets.values():
            t.cpu.append(t.sampler.cpu_percent())
            t.packets = []
        connect_ms, failure = await task
        await asyncio.sleep(NetworkConfig().handshake_timeout + 1 if args.after is None else args.after)
        for t in targets.values():
            t.sampler.start()
        await asyncio.sleep(1.0)
        for t in targets.values():
            t.cpu.append(t.sampler.cpu_percent())
            t.rss_after = _rss_mib(t.proc.pid)
            t.drops += _udp_drops(t.addr[1])
        for sock in sockets:
            sock.close()
        return Run(kind, flood, list(targets.values()), sent / flood_wall, flood_wall, sent, connect_ms, failure)
    finally:
        for t in reversed(targets.values()):
            t.stop()


# -- the table -----------------------------------------------------------------------------


def _connect_cell(runs: list[Run]) -> str:
    """Median connect ms over the runs (a failed run counts as slower than any), then every run's."""
    times = [r.connect_ms if r.connect_ms is not None else float("inf") for r in runs]
    median = statistics.median(times)
    head = f"{median:.0f}" if median != float("inf") else "failed"
    each = ", ".join(f"{r.connect_ms:.0f}" if r.connect_ms is not None else r.failure for r in runs)
    return f"{head} ({each})"


def _per_target(runs: list[Run], cell: str) -> str:
    """Medians per target process (``node ...; relay ...`` when a row floods both)."""
    parts = []
    for i, target in enumerate(runs[0].targets):
        ts = [r.targets[i] for r in runs]
        if cell == "cpu":
            text = " / ".join(f"{statistics.median([t.cpu[k] for t in ts]):.0f}" for k in range(3))
        elif cell == "rss":
            values = ([t.rss_before for t in ts], [t.sampler.peak_rss for t in ts], [t.rss_after for t in ts])
            text = " / ".join(f"{statistics.median(v):.0f}" for v in values)
        elif cell == "drops":
            text = f"{statistics.median([t.drops for t in ts]):,.0f}"
        else:
            text = f"{statistics.median([t.answers for t in ts]):,.0f}"
        parts.append(f"{target.kind} {text}" if len(runs[0].targets) > 1 else text)
    return "; ".join(parts)


def row(runs: list[Run]) -> dict[str, str]:
    first = runs[0]
    each = " to each" if len(first.targets) > 1 else ""
    packets = " each" if len(first.targets) > 1 else ""
    rate = statistics.median([r.rate for r in runs])
    seconds = statistics.median([r.seconds for r in runs])
    return {
        "target": "node + its relay" if first.kind == "both" else first.kind,
        "flood": f"{first.flood}, {rate:,.0f}/s{each} for {seconds:.0f} s ({first.sent:,} packets{packets})",
        f"legitimate connect ms: median ({len(runs)} run{'s' if len(runs) != 1 else ''})": _connect_cell(runs),
        "CPU % idle / during / after (median)": _per_target(runs, "cpu"),
        "RSS MiB before / peak / after (median)": _per_target(runs, "rss"),
        "answers to the flood (median)": _per_target(runs, "answers"),
        "dropped by the kernel, receive buffer full (median)": _per_target(runs, "drops"),
    }


async def _main(args: argparse.Namespace) -> None:
    print(f"Machine: {machine_description()}", flush=True)
    kinds = args.targets.split(",")
    floods = args.floods.split(",")
    results: dict[tuple[str, str], list[Run]] = {(k, f): [] for k in kinds for f in floods}
    for n in range(args.runs):  # interleaved: every pair once per round
        for kind in kinds:
            for flood in floods:
                run = await _run(kind, flood, args, seed=n + 1)
                results[(kind, flood)].append(run)
                print(
                    f"round {n + 1}: {kind}, {flood}: connect "
                    + (f"{run.connect_ms:.0f} ms" if run.connect_ms is not None else run.failure),
                    file=sys.stderr,
                    flush=True,
                )
    rows = [row(runs) for runs in results.values()]
    headers = list(rows[0])
    print("| " + " | ".join(headers) + " |")
    print("|" + " --- |" * len(headers))
    for r in rows:
        print("| " + " | ".join(r[h] for h in headers) + " |")
    print(f"\nLoad average (1/5/15 min) at the end: {load_average()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2000.0, help="packets per second to each target (default 2000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="flood duration (default 10)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="node,relay,both (default: all three)")
    parser.add_argument("--floods", default=",".join(FLOODS), help="junk,hellos (default: both)")
    parser.add_argument("--runs", type=int, default=3, help="runs of every (target, flood) pair (default 3)")
    parser.add_argument(
        "--after", type=float, help="seconds after the flood before the 'after' sample (default handshake_timeout + 1)"
    )
    parser.add_argument("--serve", choices=["node", "relay"], help=argparse.SUPPRESS)
    parser.add_argument("--serve-relay-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.serve_relay_url))
        return
    for name, allowed in (("targets", TARGETS), ("floods", FLOODS)):
        bad = [x for x in getattr(args, name).split(",") if x not in allowed]
        if bad:
            parser.error(f"--{name}: unknown {', '.join(bad)} (choose from {', '.join(allowed)})")
    if args.runs < 1 or not args.rate > 0 or not args.seconds > 0:
        parser.error("--runs must be at least 1, --rate and --seconds positive")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
