"""Paths benchmark (issue 5): relayed vs direct connections, in the simulator and on real UDP.

One run prints one markdown table with, for each environment:

* **time to first byte via the relay**: ``connect(NodeAddr(server, relay_url=...))``
  (the client knows only the server's node id and relay) plus one 64-byte echo,
  from the call until the echo is back;
* **time until the path is direct**: from the same call until the client's
  connection reports ``path.kind == "direct"`` (hole punched, CALL_ME_MAYBE
  through the relay);
* **RTT**: median of N 64-byte echoes on an established connection, direct and
  relayed, and the client's RTT to the relay (its relay connection's smoothed RTT:
  "one relay hop");
* **bulk**: MB/s (10^6 bytes) of one connection sending M MiB one way in 64 KiB
  messages until the receiver confirms the count, direct and relayed, in the same
  run; plus direct with datagram size probing capped at 1264 bytes (relayed
  packets are 1200) to separate the datagram size from the relay.

The relayed connection is a second pair of endpoints whose paths layer is told to
use only the relay (the benchmark replaces ``PeerPaths.route_for`` on those two
endpoints), so both directions of every packet cross the relay for the whole run.

Environments:

* ``sim``: virtual time; relay on a public host, client and server each behind an
  endpoint-independent-mapping NAT (port-restricted cone); public links 20 ms,
  2% loss, 0-5 ms jitter, MTU 1500; NAT LAN links 0.5 ms, lossless.
* ``udp``: three processes on 127.0.0.1: ``asgi-p2p relay`` (the CLI with its
  defaults, except per-client rate limits raised so they do not cap the bulk
  run), a server process and this client process.  Relays cost CPU: on a
  2-core machine the three processes share two cores.
* ``sim-bw``: the ``sim`` hosts with a lossless 20 ms core and each home's access
  link (host <-> its NAT) at 6 Mbit/s, 10 ms: direct and relayed paths share
  that bottleneck, as on real home connections.
* ``netns`` (root only; otherwise skipped with a message): the real Linux NAT
  rig of tests/netns: the relay CLI on the rig's relay host, the server and the
  client processes in two homes behind ``eim`` routers with 10 ms one-way on
  each WAN link; torn down at the end.

Usage::

    .venv/bin/python benchmarks/paths.py                  # all environments (netns needs root)
    .venv/bin/python benchmarks/paths.py --env udp --bulk-mib 64 --pings 500
    .venv/bin/python benchmarks/paths.py --quick          # smoke run (sim, sim-bw, udp)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# this folder holds http.py, which would shadow the stdlib `http` (httpx imports it): keep it off
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from asgi_p2p import Endpoint, NetworkConfig, Node, NodeAddr, SecretKey  # noqa: E402
from asgi_p2p.endpoint.connection import PeerConnection  # noqa: E402
from asgi_p2p.identity import NodeId  # noqa: E402
from asgi_p2p.messages import MessageConnection  # noqa: E402
from asgi_p2p.paths.peer import PeerPaths  # noqa: E402
from asgi_p2p.paths.route import Route  # noqa: E402
from asgi_p2p.relay.server import RELAY_DATAGRAM_SIZE  # noqa: E402

ECHO = 0x01
SINK = 0x02
REPORT = 0x03
RTT_SIZE = 64
BULK_MESSAGE = 65535
MIB = 1024 * 1024
#: The three server endpoints (and client endpoints): default, relay only, probing off.
KINDS = ("direct", "relay", "small")


# -- endpoints -------------------------------------------------------------------


def force_relay(ep: Endpoint) -> None:
    """Make ``ep``'s paths layer route every peer connection through the relay (benchmark only)."""
    original = ep.router.peer_for

    def peer_paths(node_id: NodeId) -> PeerPaths:
        peer = original(node_id)
        if not getattr(peer, "_bench_relay_only", False):
            default_route = peer.route_for

            def route_for(route: Route) -> tuple[tuple[str, int] | None, NodeId | None]:
                if route.is_relay:
                    return default_route(route)
                relay = ep.relay
                return (None, peer.node_id if relay is not None and relay.connected else None)

            peer.route_for = route_for  # type: ignore[method-assign]
            peer._bench_relay_only = True  # type: ignore[attr-defined]
        return peer

    ep.router.peer_for = peer_paths  # type: ignore[method-assign]


def config_for(kind: str) -> NetworkConfig:
    cfg = NetworkConfig.from_env()
    if kind == "small":
        # probing up to the relay's size only: the relay connection needs 1264 bytes to carry
        # 1200-byte QUIC packets (probing off would leave it at 1200 and the relay unusable)
        cfg = cfg.replace(max_probe_datagram_size=RELAY_DATAGRAM_SIZE)
    return cfg


async def bind(kind: str, name: str, relay_url: str, **kwargs: Any) -> Endpoint:
    ep = await Node.bind(
        SecretKey.from_seed(f"paths-bench-{name}-{kind}"),
        config=config_for(kind),
        rng=random.Random(f"{name}-{kind}"),
        relay_url=relay_url,
        **kwargs,
    )
    if kind == "relay":
        force_relay(ep)
    return ep


async def serve(ep: Endpoint) -> None:
    """Echo ECHO messages, count SINK bytes, answer REPORT with the count."""
    listener = ep.listen()
    tasks: set[asyncio.Task[None]] = set()
    while True:
        conn = await listener.accept()
        task = asyncio.get_running_loop().create_task(_handle(conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def _handle(conn: MessageConnection) -> None:
    count = 0
    with contextlib.suppress(Exception):
        while True:
            msg = await conn.recv()
            kind = msg[0] if msg else 0
            if kind == ECHO:
                await conn.send(msg)
            elif kind == SINK:
                count += len(msg)
            elif kind == REPORT:
                await conn.send(struct.pack("!Q", count))
                count = 0


# -- measurements ---------------------------------------------------------------------


@dataclass
class Result:
    ttfb_ms: float | None = None
    direct_ms: float | None = None
    rtt_ms: dict[str, float] = field(default_factory=dict)
    hop_ms: float | None = None
    bulk_mbs: dict[str, float] = field(default_factory=dict)
    relay_drops: str = ""
    notes: list[str] = field(default_factory=list)


async def _until_direct(conn: PeerConnection, timeout: float) -> None:
    events = conn.path_events()
    if conn.path.kind == "direct":
        return

    async def watch() -> None:
        async for event in events:
            if event.path.kind == "direct":
                return

    await asyncio.wait_for(watch(), timeout)


async def _echo(conn: MessageConnection) -> None:
    await conn.send(bytes([ECHO]) + bytes(RTT_SIZE - 1))
    reply = await conn.recv()
    assert len(reply) == RTT_SIZE


async def _rtt(conn: MessageConnection, n: int) -> float:
    loop = asyncio.get_running_loop()
    samples = []
    for _ in range(n):
        t0 = loop.time()
        await _echo(conn)
        samples.append(loop.time() - t0)
    return statistics.median(samples) * 1000


async def _bulk(conn: MessageConnection, nbytes: int) -> float:
    loop = asyncio.get_running_loop()
    msg = bytes([SINK]) + bytes(BULK_MESSAGE - 1)
    t0 = loop.time()
    sent = 0
    while sent < nbytes:
        await conn.send(msg)
        sent += len(msg)
    await conn.send(bytes([REPORT]))
    (count,) = struct.unpack("!Q", await conn.recv())
    elapsed = loop.time() - t0
    assert count == sent, (count, sent)
    return sent / elapsed / 1e6


async def _hop_rtt(ep: Endpoint, relay_url: str, n: int) -> float:
    """Median round trip of a directory request to the relay process (one hop, processing included)."""
    from asgi_p2p.discovery.directory import DirectoryClient, Op, Status
    from asgi_p2p.relay.url import RelayUrl

    url = RelayUrl.parse(relay_url)
    client = DirectoryClient(ep, NodeAddr(url.node_id, [url.address]), refresh=False)
    nobody = SecretKey.from_seed("paths-bench-nobody").node_id.to_bytes()
    loop = asyncio.get_running_loop()
    samples = []
    for i in range(n + min(10, n)):
        t0 = loop.time()
        status, _ = await client.request(Op.RESOLVE, nobody)
        assert status == Status.NOT_FOUND
        if i >= min(10, n):  # the first ones open the connection and warm up
            samples.append(loop.time() - t0)
    return statistics.median(samples) * 1000


async def measure(
    clients: dict[str, Endpoint],
    servers: dict[str, NodeId],
    relay_url: str,
    *,
    pings: int,
    bulk_bytes: int,
    direct_timeout: float,
) -> Result:
    """Connect each client endpoint to its server (by node id + relay URL only) and measure."""
    loop = asyncio.get_running_loop()
    res = Result()
    for ep in clients.values():
        assert ep.relay is not None
        await ep.relay.wait_connected(30)
    size = getattr(clients["direct"].relay, "max_packet_size", 0)
    res.notes.append(f"relay connection fits {size}-byte packets when the first connect starts")
    conns: dict[str, MessageConnection] = {}
    # time to first byte via the relay, and until the path turns direct (default endpoints)
    t0 = loop.time()
    conn = await clients["direct"].connect(NodeAddr(servers["direct"], relay_url=relay_url))
    await _echo(conn)
    res.ttfb_ms = (loop.time() - t0) * 1000
    try:
        await _until_direct(conn.peer_connection, direct_timeout)
        res.direct_ms = (loop.time() - t0) * 1000
    except TimeoutError:
        res.notes.append(f"the path did not turn direct within {direct_timeout:g} s")
    conns["direct"] = conn
    for kind in ("relay", "small"):
        c = await clients[kind].connect(NodeAddr(servers[kind], relay_url=relay_url))
        await _echo(c)
        if kind == "small":
            with contextlib.suppress(TimeoutError):
                await _until_direct(c.peer_connection, direct_timeout)
        conns[kind] = c
    relay_conn = conns["relay"].peer_connection
    assert relay_conn.path.kind == "relay", relay_conn.path
    for kind, c in conns.items():
        await _rtt(c, min(10, pings))  # warm up
        res.rtt_ms[kind] = await _rtt(c, pings)
        if kind != "relay" and c.peer_connection.path.kind != "direct":
            res.notes.append(f"{kind} connection was not direct ({c.peer_connection.path})")
    res.hop_ms = await _hop_rtt(clients["direct"], relay_url, pings)
    for kind in ("direct", "relay", "small"):
        try:
            res.bulk_mbs[kind] = await _bulk(conns[kind], bulk_bytes)
        except Exception as exc:  # reported in the notes, the other rows still get measured
            pc = conns[kind].peer_connection
            res.notes.append(
                f"bulk on the {kind} connection failed ({pc.path}, datagram size {pc.datagram_size}): {exc}"
            )
    assert relay_conn.path.kind == "relay"
    drops = []
    for kind in ("direct", "relay"):
        rstats = getattr(clients[kind].relay, "stats", None)
        if rstats is not None:
            drops.append(f"{kind} client: queue full {rstats.dropped_queue_full}, too large {rstats.dropped_too_large}")
    res.relay_drops = "packets the relay client dropped: " + ", ".join(drops)
    for c in conns.values():
        await c.close()
    return res


# -- the simulator --------------------------------------------------------------------


#: Access-link rate of the bandwidth-limited simulator topology (``sim-bw``), bits/s.
SIM_ACCESS_RATE = 6e6
#: Its access links' send queue: 100 ms at that rate (a modest home-router buffer).
SIM_ACCESS_QUEUE = int(SIM_ACCESS_RATE / 8 * 0.1)


def run_sim(args: argparse.Namespace) -> Result:
    """Lossy core: public links 20 ms, 2% loss, 0-5 ms jitter; NAT LAN links 0.5 ms, lossless, unlimited."""
    return _run_sim(args, bandwidth=None)


def run_sim_bw(args: argparse.Namespace) -> Result:
    """Bandwidth-limited access: each home's link to its NAT 6 Mbit/s, 10 ms; lossless 20 ms core.

    Both the direct and the relayed path cross both homes' access links (the relay sits in the
    core), so they share the same bottleneck, as on real home connections.
    """
    return _run_sim(args, bandwidth=SIM_ACCESS_RATE)


def _run_sim(args: argparse.Namespace, *, bandwidth: float | None) -> Result:
    from asgi_p2p.relay.proto import RelayLimits
    from asgi_p2p.relay.server import RelayServer
    from asgi_p2p.sim import Simulation

    loss = 0.02 if bandwidth is None else 0.0
    sim = Simulation(seed=args.seed, latency=0.020, loss=loss, mtu=1500, keep_trace=False)
    with sim:
        relay_host = sim.host("relay")
        lan_latency = 0.0005 if bandwidth is None else 0.010
        client_host = sim.host("client", nat="port-restricted-cone", lan_latency=lan_latency)
        server_host = sim.host("server", nat="port-restricted-cone", lan_latency=lan_latency)
        for link in sim.links:
            if bandwidth is None and link.loss > 0:  # the public links (NAT LAN links are lossless)
                link.configure(jitter=0.005)
        if bandwidth is not None:
            for host in (client_host, server_host):
                sim.link(host, f"{host.name}-nat", bandwidth=bandwidth, queue_bytes=SIM_ACCESS_QUEUE)

        async def main() -> Result:
            limits = RelayLimits(packets_per_second=1e6, packet_burst=2e6, bytes_per_second=1e9, byte_burst=2e9)
            relay = await RelayServer.bind(
                SecretKey.from_seed("paths-bench-relay"), host="0.0.0.0", port=3478, network=relay_host, limits=limits
            )
            url = str(relay.url)
            servers = {k: await bind(k, "server", url, host="0.0.0.0", network=server_host) for k in KINDS}
            clients = {k: await bind(k, "client", url, host="0.0.0.0", network=client_host) for k in KINDS}
            tasks = [asyncio.get_running_loop().create_task(serve(ep)) for ep in servers.values()]
            try:
                return await measure(
                    clients,
                    {k: ep.node_id for k, ep in servers.items()},
                    url,
                    pings=args.pings,
                    bulk_bytes=int(args.sim_bulk_mib * MIB),
                    direct_timeout=30,
                )
            finally:
                for t in tasks:
                    t.cancel()
                for ep in [*clients.values(), *servers.values()]:
                    await ep.close(timeout=0.5)
                await relay.close(timeout=0.5)

        return sim.run(main(), time_limit=3600)


# -- real UDP: three processes ---------------------------------------------------------------


def server_process(relay_url: str, host: str) -> None:
    """``--serve-udp URL``: the server endpoints; prints ``kind node_id`` lines, then serves until killed."""

    async def main() -> None:
        eps = {k: await bind(k, "server", relay_url, host=host) for k in KINDS}
        for ep in eps.values():
            assert ep.relay is not None
            await ep.relay.wait_connected(30)
        for k, ep in eps.items():
            print(k, ep.node_id, flush=True)
        print("ready", flush=True)
        await asyncio.gather(*(serve(ep) for ep in eps.values()))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def _relay_cmd(url_file: Path, profile: str | None) -> list[str]:
    prof = ["-m", "cProfile", "-o", profile] if profile else []
    return [
        sys.executable,
        *prof,
        "-m",
        "asgi_p2p",
        "relay",
        "--ephemeral",
        "--url-file",
        str(url_file),
        "--limit-packets-per-second",
        "1000000",
        "--limit-bytes-per-second",
        "1000000000",
        "--log-level",
        "warning",
    ]


def run_udp(args: argparse.Namespace) -> Result:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory() as tmp:
        url_file = Path(tmp) / "relay.url"
        relay = subprocess.Popen(
            _relay_cmd(url_file, args.profile_relay), cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        server: subprocess.Popen[str] | None = None
        try:
            assert relay.stdout is not None
            for line in relay.stdout:
                if line.startswith("  url "):
                    break
            else:
                raise RuntimeError("relay exited before printing its URL")
            url = url_file.read_text().strip()
            server = subprocess.Popen(
                [sys.executable, __file__, "--serve-udp", url], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
            )
            assert server.stdout is not None
            ids: dict[str, NodeId] = {}
            for line in server.stdout:
                if line.strip() == "ready":
                    break
                kind, text = line.split()
                ids[kind] = NodeId.parse(text)
            else:
                raise RuntimeError("server exited before it was ready")

            async def main() -> Result:
                clients = {k: await bind(k, "client", url) for k in KINDS}
                try:
                    cpu0 = time.process_time()
                    res = await measure(
                        clients,
                        ids,
                        url,
                        pings=args.pings,
                        bulk_bytes=int(args.bulk_mib * MIB),
                        direct_timeout=10,
                    )
                    res.notes.append(f"client process CPU {time.process_time() - cpu0:.1f} s")
                    return res
                finally:
                    for ep in clients.values():
                        await ep.close(timeout=0.5)

            return asyncio.run(main())
        finally:
            for proc in (server, relay):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()


def client_process(args: argparse.Namespace) -> None:
    """``--client-udp URL``: the client endpoints of the netns environment; prints the Result as JSON."""
    ids = {k: NodeId.parse(v) for k, v in json.loads(args.server_ids).items()}

    async def main() -> Result:
        clients = {k: await bind(k, "client", args.client_udp, host=args.bind_host) for k in KINDS}
        try:
            cpu0 = time.process_time()
            res = await measure(
                clients, ids, args.client_udp, pings=args.pings, bulk_bytes=int(args.bulk_mib * MIB), direct_timeout=10
            )
            res.notes.append(f"client process CPU {time.process_time() - cpu0:.1f} s")
            return res
        finally:
            for ep in clients.values():
                await ep.close(timeout=0.5)

    print(json.dumps(asdict(asyncio.run(main()))), flush=True)


# -- the real Linux NAT rig (tests/netns): relay + two homes behind eim routers ---------------

#: One-way delay of each home's access link (router WAN <-> core) in the netns environment.
NETNS_ACCESS_DELAY_MS = 10.0


def netns_unavailable() -> str | None:
    """Why the netns environment cannot run here (not root, no ip/nft/tc), or None."""
    from tests.netns.rig import missing_requirements

    return missing_requirements()


def run_netns(args: argparse.Namespace) -> Result:
    """Relay on the rig's public relay host; server in home "a", client in home "b", both behind
    ``eim`` routers (endpoint-independent mapping, address-and-port-dependent filtering) whose WAN
    links get ``NETNS_ACCESS_DELAY_MS`` one-way delay (userspace delay lines); the relay's link is
    unimpaired.  Every process runs in its namespace; all are killed and the namespaces deleted at
    the end, also on failure."""
    from tests.netns.rig import Impair, Rig

    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(logdir=Path(tmp))
        try:
            access = Impair(delay_ms=NETNS_ACCESS_DELAY_MS)
            home_a = rig.home("a", nat="eim", wan=access)
            home_b = rig.home("b", nat="eim", wan=access)
            url_file = Path(tmp) / "relay.url"
            relay_argv = _relay_cmd(url_file, args.profile_relay)[1:]
            relay_argv += ["--host", "0.0.0.0", "--public-host", rig.relay.ip, "--port", "3340"]
            relay = rig.python(rig.relay, *relay_argv, env=env)
            url = rig.wait_file(url_file, relay)
            server = rig.python(home_a.host, __file__, "--serve-udp", url, "--bind-host", "0.0.0.0", env=env)
            assert server.stdout is not None
            ids: dict[str, str] = {}
            for line in server.stdout:
                if line.strip() == "ready":
                    break
                kind, text = line.split()
                ids[kind] = text
            else:
                raise RuntimeError(f"server exited before it was ready: {rig.log(server)}")
            argv = [__file__, "--client-udp", url, "--server-ids", json.dumps(ids), "--bind-host", "0.0.0.0"]
            argv += ["--pings", str(args.pings), "--bulk-mib", str(args.bulk_mib)]
            timeout = 120 + 60 * args.bulk_mib
            got = rig.run(home_b.host, [sys.executable, *argv], env=env, timeout=timeout)
            if got.returncode != 0:
                raise RuntimeError(f"netns client failed ({got.returncode}): {got.stderr}\nserver: {rig.log(server)}")
            data = json.loads(got.stdout.strip().splitlines()[-1])
            res = Result(**data)
            res.notes.append(
                f"eim x eim, {NETNS_ACCESS_DELAY_MS:g} ms one-way on each home's WAN link, relay link unimpaired"
            )
            return res
        finally:
            rig.close()


# -- the table ------------------------------------------------------------------------


def _f(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def table(results: dict[str, Result], args: argparse.Namespace) -> str:
    envs = list(results)
    head = {
        "sim": "simulator (virtual time)",
        "sim-bw": f"simulator, {SIM_ACCESS_RATE / 1e6:g} Mbit/s access links (virtual time)",
        "udp": "real UDP loopback (3 processes)",
        "netns": "Linux NAT rig (netns, eim x eim)",
    }
    out = [
        "| metric | " + " | ".join(head[e] for e in envs) + " | target |",
        "|---|" + "---|" * len(envs) + "---|",
    ]

    def row(name: str, cells: list[str], target: str = "") -> None:
        out.append(f"| {name} | " + " | ".join(cells) + f" | {target} |")

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    r = results
    row("time to first byte via the relay, ms (connect + 64 B echo)", [_f(r[e].ttfb_ms) for e in envs])
    row("time until the path is direct, ms (from the connect call)", [_f(r[e].direct_ms) for e in envs])
    row(f"RTT direct, ms (median of {args.pings})", [_f(r[e].rtt_ms.get("direct"), 2) for e in envs])
    row(f"RTT relayed, ms (median of {args.pings})", [_f(r[e].rtt_ms.get("relay"), 2) for e in envs])
    row(
        f"one relay hop: client<->relay round trip, ms (median of {args.pings} directory requests)",
        [_f(r[e].hop_ms, 2) for e in envs],
    )
    cells = []
    for e in envs:
        d, rl, hop = r[e].rtt_ms.get("direct"), r[e].rtt_ms.get("relay"), r[e].hop_ms
        if d is None or rl is None or hop is None:
            cells.append("n/a")
        else:
            cells.append(f"{rl - d:+.2f} ms vs hop {hop:.2f}: {'met' if rl <= d + hop else 'not met'}")
    row("relayed RTT - direct RTT", cells, "≤ one relay hop")
    bulk = {"sim": args.sim_bulk_mib, "sim-bw": args.sim_bulk_mib, "udp": args.bulk_mib, "netns": args.bulk_mib}
    row(
        "bulk direct, MB/s (default config: datagram size probed)",
        [f"{_f(r[e].bulk_mbs.get('direct'), 2)} ({bulk[e]:g} MiB)" for e in envs],
    )
    row("bulk relayed, MB/s", [_f(r[e].bulk_mbs.get("relay"), 2) for e in envs])
    row(
        f"bulk direct, datagrams capped at {RELAY_DATAGRAM_SIZE} bytes, MB/s",
        [_f(r[e].bulk_mbs.get("small"), 2) for e in envs],
    )
    cells = []
    for e in envs:
        q = ratio(r[e].bulk_mbs.get("relay"), r[e].bulk_mbs.get("direct"))
        cells.append("n/a" if q is None else f"{q:.2f}x: {'met' if q >= 0.8 else 'not met'}")
    row("bulk relayed / direct", cells, "≥ 0.8x")
    cells = []
    for e in envs:
        q = ratio(r[e].bulk_mbs.get("relay"), r[e].bulk_mbs.get("small"))
        cells.append("n/a" if q is None else f"{q:.2f}x")
    row("bulk relayed / direct at the same datagram size", cells)
    lines = ["\n".join(out), ""]
    for e in envs:
        notes = [*r[e].notes] + ([r[e].relay_drops] if r[e].relay_drops else [])
        if notes:
            lines.append(f"- {head[e]}: " + "; ".join(notes))
    cores = os.cpu_count()
    lines.append(
        f"- Machine: {cores} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
        + (" (the three UDP processes share them)" if cores is not None and cores < 3 else "")
    )
    return "\n".join(lines)


ALL_ENVS = ("sim", "sim-bw", "udp", "netns")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument(
        "--env",
        help="environments, comma separated: sim, sim-bw, udp, netns (default: all; with --quick all but netns);"
        " netns needs root and is left out of the table, with a message, without it",
    )
    p.add_argument("--pings", type=int, default=200, help="echoes per RTT median (default 200)")
    p.add_argument("--bulk-mib", type=float, default=32, help="MiB per bulk run on real UDP and netns (default 32)")
    p.add_argument("--sim-bulk-mib", type=float, default=4, help="MiB per bulk run in the simulator (default 4)")
    p.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: 10 pings, 0.25 MiB")
    p.add_argument("--profile-relay", metavar="PATH", help="run the UDP relay process under cProfile, stats to PATH")
    p.add_argument("--serve-udp", metavar="RELAY_URL", help=argparse.SUPPRESS)
    p.add_argument("--client-udp", metavar="RELAY_URL", help=argparse.SUPPRESS)
    p.add_argument("--server-ids", help=argparse.SUPPRESS)
    p.add_argument("--bind-host", default="127.0.0.1", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_udp:
        server_process(args.serve_udp, args.bind_host)
        return 0
    if args.client_udp:
        client_process(args)
        return 0
    if args.quick:
        args.pings, args.bulk_mib, args.sim_bulk_mib = 10, 0.25, 0.25
    runners: dict[str, Callable[[argparse.Namespace], Result]] = {
        "sim": run_sim,
        "sim-bw": run_sim_bw,
        "udp": run_udp,
        "netns": run_netns,
    }
    default = [e for e in ALL_ENVS if not (args.quick and e == "netns")]
    envs = [e.strip() for e in args.env.split(",") if e.strip()] if args.env else default
    for e in envs:
        if e not in runners:
            p.error(f"unknown environment {e!r} (known: {', '.join(ALL_ENVS)})")
    if "netns" in envs and (why := netns_unavailable()):
        print(f"netns environment skipped: {why}", flush=True)
        envs.remove("netns")
    results: dict[str, Result] = {}
    for e in envs:
        t0 = time.perf_counter()
        results[e] = runners[e](args)
        results[e].notes.append(f"wall {time.perf_counter() - t0:.1f} s")
    print(table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
