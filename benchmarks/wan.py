"""WAN benchmark (issue 11): asgi-p2p direct and relayed vs a WebSocket tunnel, on a real NAT rig.

Builds the network-namespace rig of tests/netns (needs root, ``ip``, ``tc``, ``nft``)::

    public host (unimpaired link): `asgi-p2p relay` + the tunnel servers (plain :8080, TLS :8443)
    home "srv" behind an endpoint-independent NAT (eim): `asgi-p2p benchmarks.wan_app:app --relay URL`,
        the app under uvicorn on 127.0.0.1:8000 and the two tunnel senders
    home "cli" behind eim: the clients of the direct and tunnel rows
    home "sym" behind a symmetric NAT: the clients of the relayed row (no hole can be punched)
    home "blk" behind eim whose router drops every UDP packet from its LAN (nftables, an office or hotel
        network): the clients of the relayed-over-TCP row (the relay also listens on TLS + WebSocket)

Each home's access link (its router <-> the core) gets a userspace delay line (``--delay-ms`` one
way, so a round trip between two homes is 4x that) and ``tc tbf`` (``--rate-mbit``) in both
directions; ``--loss-pct`` drops packets (nftables) on the serving home's access link only, so
every path between a client and the server crosses exactly one lossy link. Each drop decision is one
wire frame for every protocol (the rig draws where frames arrive, never on a TCP sender's GSO
super-packets); the frames that arrived and were dropped during each download are printed per row
and direction under the table. Profiles: ``wan``
(default: 20 ms, 100 Mbit/s), ``lan`` (5 ms, 1 Gbit/s), ``lossy`` (50 ms, 20 Mbit/s, 1% loss).

Rows (all serve the same Starlette app, benchmarks/wan_app.py; clients are httpx.AsyncClient; in the
50-concurrent run asgi-p2p's requests share its one QUIC connection, the tunnel's 50 workers each
have their own client and TCP connection, since one shared httpx pool of 50 HTTP/1.1 connections
costs ~5.6 ms of client CPU per request and would measure httpx, not the tunnel):

* ``direct``: asgi-p2p, the client in "cli" dials the server's ticket (its addresses + relay URL),
  waits for the paths layer to go direct, then measures;
* ``relayed``: the same server, the client in "sym" (stays on the relay);
* ``relayed-tcp``: the same server, the client in "blk": no UDP leaves its home, so it reaches the relay
  over TLS + WebSocket (port 443) after the UDP head start (1 s), and stays there. Its "returning" client
  and a third fresh process with a new identity ("first response with the network memory") read the
  per-network memory the first process wrote (asgi_p2p.relay.netmemory), so they dial TCP at once;
* ``tunnel``: benchmarks/tunnel.py, plain HTTP and ws:// (as the issue measured it);
* ``tunnel-tls``: the same over HTTPS and wss:// (as the replaced system is deployed).

For each repeat (``--repeat``, default 3) the rows run in a rotated order (interleaved), each in a
fresh client process that measures: the first response (``GET /small``) from creating its client,
and from the process being spawned; whether and when the path went direct; ``--steady`` sequential
small requests (p50/p99); ``--requests`` small requests with 50 in flight (req/s); one
``--bulk-mib`` MiB download (MB/s, 10^6 bytes). A second fresh process with the same identity then
times its first response ("returning client"; an asgi-p2p client imports the session tickets the
first process exported, so it resumes and sends its GET as 0-RTT data; ``--no-resume``: it does not).
CPU per request and per MB is the CPU time (user + system) of every process of the row (client,
server, relay / tunnel server, sender, app) over the 50-concurrent phase and the download; the delay
lines are the network, not counted. The raw TCP figures are a ``--bulk-mib`` MiB TCP download (10 by
default) between the two homes' hosts (a port forward on the serving home's router) over the same links,
once per repeat: on a new connection, then as much again on the warm one (the link's ceiling).

Usage (root)::

    .venv/bin/python benchmarks/wan.py                    # wan profile, 3 repeats
    .venv/bin/python benchmarks/wan.py --profile lossy --repeat 1
    .venv/bin/python benchmarks/wan.py --quick            # smoke run (~1 min)

``ASGI_P2P_*`` variables in the environment reach every asgi-p2p process (e.g. to try other
windows by hand) and are listed under the table. Needs the ``bench`` extra (uvicorn, websockets).
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
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
TUNNEL = os.path.join(_HERE, "tunnel.py")
RELAY_PORT, SERVE_PORT, APP_PORT, TUNNEL_PORT, TUNNEL_TLS_PORT, TCP_PORT = 3340, 40000, 8000, 8080, 8443, 5201
RELAY_TCP_PORT = 443
#: the relay's Prometheus metrics (loopback in its namespace): its drops around each download (diagnostics)
RELAY_METRICS_PORT = 9464
ROWS = ("direct", "relayed", "relayed-tcp", "tunnel", "tunnel-tls")
P2P_ROWS = ("direct", "relayed", "relayed-tcp")
TITLES = {
    "direct": "asgi-p2p direct",
    "relayed": "asgi-p2p relayed",
    "relayed-tcp": "asgi-p2p relayed over TCP",
    "tunnel": "tunnel",
    "tunnel-tls": "tunnel (TLS)",
}
#: --tcp-cc choices (net.ipv4.tcp_congestion_control; the rig checks the kernel offers the one chosen)
TCP_CCS = ("cubic", "bbr", "reno")
#: name -> (one-way delay ms per access link, rate Mbit/s, loss % on the serving home's access link)
PROFILES = {"wan": (20.0, 100.0, 0), "lan": (5.0, 1000.0, 0), "lossy": (50.0, 20.0, 1)}
#: the blocking home's router: drop every UDP packet its LAN sends out (as tests/netns/test_relay_tcp.py)
BLOCK_UDP = """table inet udpblock {
    chain forward {
        type filter hook forward priority filter - 10; policy accept;
        iifname "lan" meta l4proto udp counter drop
    }
}
"""
#: the largest response the app serves (benchmarks/wan_app.py MAX_MIB)
MAX_BULK_MIB = 64


# -- client process (runs in a home's namespace) ---------------------------------------------------


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def _await_go() -> None:
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"client: expected 'go' from the driver, got {line!r}")


def client_main(args: argparse.Namespace) -> None:
    import ssl

    import httpx

    if args.client in P2P_ROWS:
        from asgi_p2p import Node, SecretKey
        from asgi_p2p.http import H3_ALPN, P2PTransport
        from asgi_p2p.ticket import Ticket

        key_file = Path(args.key_file)
        tickets_file = key_file.with_suffix(".tickets")
        if key_file.exists():  # a returning client: the identity of the earlier process
            key = SecretKey.load(key_file)
        else:
            key = SecretKey.generate()
            key.save(key_file)

    async def main() -> dict[str, Any]:
        res: dict[str, Any] = {"row": args.client}
        node: Any = None
        t0 = time.perf_counter()
        if args.client in P2P_ROWS:
            addr = Ticket.parse(args.target).to_node_addr()
            factory = None
            if args.net_memory:  # the networks where UDP to the relay was blocked, kept between processes
                import functools

                from asgi_p2p.relay.client import RelayClient
                from asgi_p2p.relay.netmemory import TransportMemory

                factory = functools.partial(RelayClient, transport_memory=TransportMemory(args.net_memory))
            node = await Node.bind(key, host="0.0.0.0", relay_url=addr.relay_url, relay_factory=factory)
            if tickets_file.exists() and not args.no_resume:  # the TLS session tickets of the earlier process
                res["tickets"] = node.import_session_tickets(tickets_file.read_bytes())
            transport = P2PTransport(node)
            transport.add_addr(addr)
            client = httpx.AsyncClient(transport=transport, base_url=f"https://{addr.node_id}", timeout=120)
        else:
            verify: Any = ssl.create_default_context(cafile=args.cafile) if args.target.startswith("https:") else True
            client = httpx.AsyncClient(base_url=args.target, verify=verify, timeout=120)

        def path_kind() -> str:
            if node is None:
                return "tcp"
            for conn in node.connections:
                if conn.remote_node_id == addr.node_id and conn.alpn == H3_ALPN:
                    peer = node.peer_paths(addr.node_id)
                    kind = conn.path.kind if peer is None else peer.path.kind
                    if kind == "direct" and conn.path.kind == "direct":
                        return "direct"
                    return "relay-tcp" if getattr(node.relay, "transport", None) == "tcp" else "relay"
            return "none"

        workers = [client]

        async def get_small(c: Any = client) -> float:
            s = time.perf_counter()
            r = await c.get("/small")
            if r.status_code != 200 or r.text != "hello, world\n":
                raise RuntimeError(f"GET /small: {r.status_code} {r.text[:200]!r}")
            return time.perf_counter() - s

        try:
            await get_small()
            res["first_ms"] = (time.perf_counter() - t0) * 1000
            res["first_spawn_ms"] = (time.time() - args.spawned_at) * 1000
            res["first_path"] = path_kind()
            if args.first_only:
                return res
            if args.client == "direct":
                deadline = time.perf_counter() + args.wait_direct
                while path_kind() != "direct" and time.perf_counter() < deadline:  # noqa: ASYNC110 - bounded poll
                    await asyncio.sleep(0.02)
                if path_kind() == "direct":
                    res["direct_after_ms"] = (time.perf_counter() - t0) * 1000
            res["path"] = path_kind()
            for _ in range(5):
                await get_small()
            lat = sorted([await get_small() for _ in range(args.steady)])
            res["p50_ms"] = statistics.median(lat) * 1000
            res["p99_ms"] = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] * 1000
            # The 50-concurrent run: asgi-p2p multiplexes every request on its one QUIC connection (the
            # transport's); for the tunnel each worker has its own httpx client (own HTTP/1.1 connection),
            # as 50 separate users would: one shared client's connection pool costs ~5.6 ms CPU per request
            # at 50 connections (httpcore scans every connection per event) and would cap the tunnel, not test it.
            if node is None:
                ctx = verify if not isinstance(verify, bool) else ssl.create_default_context()  # built once, shared
                workers += [
                    httpx.AsyncClient(base_url=args.target, verify=ctx, timeout=120)
                    for _ in range(args.concurrency - 1)
                ]
            else:
                workers = [client] * args.concurrency
            # one warm-up round (opens the tunnel clients' connections), then the measured run
            await asyncio.gather(*(get_small(c) for c in workers))
            left = args.requests

            async def worker(c: Any) -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    await get_small(c)

            _emit({"phase": "concurrent"})
            _await_go()
            c0, w0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker(c) for c in workers))
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            _emit({"done": "concurrent", "cpu_s": cpu})
            res["rps"] = args.requests / wall
            _emit({"phase": "bulk"})
            _await_go()
            c0, w0 = time.process_time(), time.perf_counter()
            got = 0
            rtts: list[float] = []

            async def sample_rtt() -> None:  # the client's smoothed RTT during the download (diagnostics)
                while True:
                    for conn in node.connections if node is not None else ():
                        if conn.remote_node_id == addr.node_id and conn.alpn == H3_ALPN:
                            rtts.append(conn.smoothed_rtt * 1000)
                    await asyncio.sleep(0.1)

            sampler = asyncio.ensure_future(sample_rtt())
            async with client.stream("GET", f"/big/{args.bulk_mib}") as r:
                if r.status_code != 200:
                    raise RuntimeError(f"GET /big/{args.bulk_mib}: {r.status_code}")
                async for chunk in r.aiter_raw():
                    got += len(chunk)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            sampler.cancel()
            if rtts:
                res["bulk_rtt_ms"] = {"median": statistics.median(rtts), "max": max(rtts)}
            _emit({"done": "bulk", "cpu_s": cpu})
            if got != args.bulk_mib * MIB:
                raise RuntimeError(f"download: {got} bytes, expected {args.bulk_mib * MIB}")
            res["bulk_mbs"] = got / wall / 1e6
            res["path_end"] = path_kind()
            return res
        finally:
            for c in {id(c): c for c in workers}.values():
                await c.aclose()
            if node is not None:
                fd = os.open(tickets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(node.export_session_tickets())
                await node.close()

    _emit({"result": asyncio.run(main())})


# -- raw TCP ceiling ---------------------------------------------------------------------------------------


def tcp_serve(port: int) -> None:
    """Serve a TCP client: for each 8-byte big-endian ``n`` it sends (n <= 1 GiB), send ``n`` bytes."""
    block = os.urandom(MIB)
    srv = socket.create_server(("0.0.0.0", port), reuse_port=True)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            while True:
                want = b""
                while len(want) < 8:
                    chunk = conn.recv(8 - len(want))
                    if not chunk:
                        break
                    want += chunk
                if len(want) < 8:
                    break
                n = min(int.from_bytes(want, "big"), 1 << 30)
                while n > 0:
                    conn.sendall(block[: min(n, MIB)])
                    n -= min(n, MIB)


def tcp_fetch(target: str, nbytes: int) -> None:
    """Download ``nbytes`` twice over one TCP connection: timed from connect (a new connection, slow
    start included) and then again on the warm connection (the link's steady rate)."""
    host, _, port = target.rpartition(":")
    t0 = time.perf_counter()
    rates = []
    with socket.create_connection((host, int(port)), timeout=120) as s:
        for _ in range(2):
            s.sendall(nbytes.to_bytes(8, "big"))
            got = 0
            while got < nbytes:
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise SystemExit(f"tcp: connection closed after {got} of {nbytes} bytes")
                got += len(chunk)
            rates.append(nbytes / (time.perf_counter() - t0) / 1e6)
            t0 = time.perf_counter()
    _emit({"tcp_new_mbs": rates[0], "tcp_warm_mbs": rates[1]})


# -- the driver -------------------------------------------------------------------------------------------


@dataclass
class RowRun:
    """One row in one repeat: the client's figures plus the CPU of every process of the row."""

    row: str
    client: dict[str, Any]
    returning_ms: float | None = None
    #: relayed-tcp: a fresh process (new identity) that reads the network memory the first one wrote
    memory_ms: float | None = None
    cpu_concurrent: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds
    cpu_bulk: dict[str, float] = field(default_factory=dict)
    #: the relay's counters over the download (relayed rows): forwarded packets, drops by reason
    relay_bulk: dict[str, float] = field(default_factory=dict)
    #: with --loss-pct: the loss rules' (arrived, dropped) wire frames over the download, per direction
    loss_bulk: dict[str, tuple[int, int]] = field(default_factory=dict)


def _cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def machine_name() -> str:
    model = cores = None
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() == "Model name":
                model = v.strip()
            elif k.strip() == "CPU(s)":
                cores = v.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return (
        f"{model or platform.processor() or 'unknown CPU'}, {cores or os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


class Bench:
    """Builds the rig and the servers, runs rows, tears everything down in close()."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        from tests.netns.rig import Rig

        self.args, self.tmp = args, tmp
        (tmp / "home" / "config").mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
        env.update(HOME=str(tmp / "home"), XDG_CONFIG_HOME=str(tmp / "home" / "config"), PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
        self.env = env
        (tmp / "logs").mkdir()
        # tears down what it built if it fails halfway
        self.rig = rig = Rig(logdir=tmp / "logs", tcp_congestion_control=args.tcp_cc)
        try:
            self._build()
        except BaseException:
            rig.close()
            raise

    def _build(self) -> None:
        from tests.netns.rig import Impair

        args, rig = self.args, self.rig
        rate = int(args.rate_mbit * 1000)
        access = Impair(delay_ms=args.delay_ms, rate_kbit=rate)
        self.srv = rig.home(
            "srv", nat="eim", wan=Impair(delay_ms=args.delay_ms, rate_kbit=rate, loss_pct=args.loss_pct)
        )
        self.cli = rig.home("cli", nat="eim", wan=access)
        self.sym = rig.home("sym", nat="symmetric", wan=access)
        self.blk = rig.home("blk", nat="eim", wan=access)
        assert self.blk.router is not None
        rig.nft(self.blk.router.ns, BLOCK_UDP)
        self.pub = rig.relay

    def start(self) -> None:
        from benchmarks.tunnel import make_certificate
        from tests.netns.rig import expect_line

        rig, py, tmp, env = self.rig, sys.executable, self.tmp, self.env
        url_file, ticket_file = tmp / "relay.url", tmp / "ticket"
        relay = rig.python(
            self.pub,
            *("-m", "asgi_p2p", "relay", "--ephemeral", "--host", "0.0.0.0", "--public-host", self.pub.ip),
            *("--port", str(RELAY_PORT), "--tcp-port", str(RELAY_TCP_PORT), "--url-file", str(url_file)),
            *("--metrics", f"127.0.0.1:{RELAY_METRICS_PORT}"),
            *("--log-level", "warning"),
            env=env,
        )
        self.relay_url = rig.wait_file(url_file, relay, timeout=60)
        p2p = rig.python(
            self.srv.host,
            *("-m", "asgi_p2p", "benchmarks.wan_app:app", "--ephemeral", "--host", "0.0.0.0"),
            *("--port", str(SERVE_PORT), "--relay", self.relay_url, "--ticket-file", str(ticket_file)),
            # the 50-concurrent run starts ~560 requests/s from one peer, above the default per-peer rate
            # limit (500/s, bursts of 1000): off, so a longer run cannot be answered 429
            *("--limit-peer-rate", "0"),
            *("--log-level", "warning"),
            env=env,
        )
        self.ticket = rig.wait_file(ticket_file, p2p, timeout=60)
        app = rig.spawn(self.srv.host, [py, TUNNEL, "app", "--port", str(APP_PORT)], env=env)
        expect_line(app, "^ready", timeout=60)
        self.cert, key = make_certificate(self.pub.ip, tmp)
        tun = rig.spawn(self.pub, [py, TUNNEL, "server", "--port", str(TUNNEL_PORT)], env=env)
        tls_argv = ["--port", str(TUNNEL_TLS_PORT), "--certfile", str(self.cert), "--keyfile", str(key)]
        tun_tls = rig.spawn(self.pub, [py, TUNNEL, "server", *tls_argv], env=env)
        expect_line(tun, "^ready", timeout=60)
        expect_line(tun_tls, "^ready", timeout=60)
        local = f"http://127.0.0.1:{APP_PORT}"
        snd = rig.spawn(
            self.srv.host,
            [py, TUNNEL, "sender", "--tunnel", f"ws://{self.pub.ip}:{TUNNEL_PORT}/ws", "--local", local],
            env=env,
        )
        snd_tls = rig.spawn(
            self.srv.host,
            [
                py,
                TUNNEL,
                "sender",
                "--tunnel",
                f"wss://{self.pub.ip}:{TUNNEL_TLS_PORT}/ws",
                "--local",
                local,
                "--cafile",
                str(self.cert),
            ],
            env=env,
        )
        expect_line(snd, "^ready", timeout=60)
        expect_line(snd_tls, "^ready", timeout=60)
        # raw TCP ceiling: a sink in the serving home behind a port forward on its router
        tcp = rig.spawn(self.srv.host, [py, __file__, "--tcp-serve", str(TCP_PORT)], env=env)
        expect_line(tcp, "^ready", timeout=60)
        router = self.srv.router
        assert router is not None
        rig.nft(
            router.ns,
            f"""table ip bench_fwd {{
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "wan" tcp dport {TCP_PORT} dnat to {self.srv.host.ip}
    }}
}}
insert rule inet filter forward iifname "wan" tcp dport {TCP_PORT} accept
""",
        )
        self.procs = {
            "direct": {"asgi-p2p server": p2p.pid, "relay": relay.pid},
            "relayed": {"asgi-p2p server": p2p.pid, "relay": relay.pid},
            "relayed-tcp": {"asgi-p2p server": p2p.pid, "relay": relay.pid},
            "tunnel": {"tunnel server": tun.pid, "sender": snd.pid, "app (uvicorn)": app.pid},
            "tunnel-tls": {"tunnel server": tun_tls.pid, "sender": snd_tls.pid, "app (uvicorn)": app.pid},
        }
        self._all = [relay, p2p, app, tun, tun_tls, snd, snd_tls, tcp]

    def relay_counters(self) -> dict[str, float]:
        """The relay's forwarded packets and drops by reason (its metrics endpoint, read in its namespace)."""
        url = f"http://127.0.0.1:{RELAY_METRICS_PORT}/metrics"
        code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
        out = self.rig.run(self.pub, [sys.executable, "-c", code], env=self.env, timeout=30).stdout
        got: dict[str, float] = {}
        for line in out.splitlines():
            if line.startswith("asgi_p2p_relay_forwarded_packets_total "):
                got["forwarded"] = float(line.split()[-1])
            elif line.startswith("asgi_p2p_relay_dropped_total{"):
                reason = line.split('reason="', 1)[1].split('"', 1)[0]
                got[f"dropped_{reason}"] = float(line.split()[-1])
        return got

    def loss_counts(self) -> dict[str, tuple[int, int]]:
        """The serving home's loss rules: (arrived, dropped) frames, "out" of the home (a download's data)
        and "in" (its acknowledgements and the requests)."""
        return {
            ("out" if ns == self.rig.pub else "in"): counts for (ns, _ifname), counts in self.rig.loss_counts().items()
        }

    def check_alive(self) -> None:
        for proc in self._all:
            if proc.poll() is not None:
                raise RuntimeError(f"server process {proc.args} exited ({proc.returncode}):\n{self.rig.log(proc)}")

    def _client_argv(
        self, row: str, key_file: Path, *, first_only: bool, net_memory: Path | None = None
    ) -> tuple[Any, list[str]]:
        a = self.args
        if row in P2P_ROWS:
            target = self.ticket
        elif row == "tunnel":
            target = f"http://{self.pub.ip}:{TUNNEL_PORT}"
        else:
            target = f"https://{self.pub.ip}:{TUNNEL_TLS_PORT}"
        argv = [sys.executable, __file__, "--client", row, "--target", target, "--key-file", str(key_file)]
        argv += ["--cafile", str(self.cert), "--spawned-at", repr(time.time())]
        argv += ["--steady", str(a.steady), "--requests", str(a.requests), "--concurrency", str(a.concurrency)]
        argv += ["--bulk-mib", str(a.bulk_mib), "--wait-direct", str(a.wait_direct)]
        if first_only:
            argv.append("--first-only")
        if a.no_resume:
            argv.append("--no-resume")
        if net_memory is not None:
            argv += ["--net-memory", str(net_memory)]
        where = {"relayed": self.sym.host, "relayed-tcp": self.blk.host}.get(row, self.cli.host)
        return where, argv

    def run_row(self, row: str, tag: str) -> RowRun:
        """One fresh client process (everything), then a returning one (first response only)."""
        from tests.netns.rig import expect_line

        self.check_alive()
        key_file = self.tmp / f"client-{row}-{tag}.key"
        # relayed-tcp: a memory that starts empty (this process pays the head start) and is then kept
        memory = self.tmp / f"networks-{row}-{tag}.json" if row == "relayed-tcp" else None
        where, argv = self._client_argv(row, key_file, first_only=False, net_memory=memory)
        proc = self.rig.spawn(where, argv, env=self.env)
        assert proc.stdin is not None
        run = RowRun(row, {})
        pids = self.procs[row]
        before: dict[str, float] = {}
        relay_before: dict[str, float] = {}
        loss_before: dict[str, tuple[int, int]] = {}
        timeout = 120 + 10 * self.args.bulk_mib + self.args.steady + self.args.requests / 10
        deadline = time.monotonic() + timeout
        try:
            while True:
                m = expect_line(proc, r"^\{", timeout=max(1.0, deadline - time.monotonic()))
                msg = json.loads(m.string)
                if "phase" in msg:
                    if msg["phase"] == "bulk" and row in ("relayed", "relayed-tcp"):
                        relay_before = self.relay_counters()
                    if msg["phase"] == "bulk" and self.args.loss_pct > 0:
                        loss_before = self.loss_counts()
                    before = {role: _cpu_seconds(pid) for role, pid in pids.items()}
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                elif "done" in msg:
                    after = {role: _cpu_seconds(pid) for role, pid in pids.items()}
                    cpu = {role: after[role] - before[role] for role in pids}
                    cpu["client"] = float(msg["cpu_s"])
                    if msg["done"] == "concurrent":
                        run.cpu_concurrent = cpu
                    else:
                        run.cpu_bulk = cpu
                        if row in ("relayed", "relayed-tcp"):
                            after_relay = self.relay_counters()
                            run.relay_bulk = {k: v - relay_before.get(k, 0.0) for k, v in after_relay.items()}
                        if self.args.loss_pct > 0:
                            run.loss_bulk = {
                                way: (seen - loss_before[way][0], dropped - loss_before[way][1])
                                for way, (seen, dropped) in self.loss_counts().items()
                            }
                elif "result" in msg:
                    run.client = msg["result"]
                    break
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        where, argv = self._client_argv(row, key_file, first_only=True, net_memory=memory)
        again = self.rig.spawn(where, argv, env=self.env)
        m = expect_line(again, r"^\{", timeout=120)
        run.returning_ms = float(json.loads(m.string)["result"]["first_ms"])
        again.wait(timeout=30)
        if memory is not None:
            if not memory.exists():
                raise RuntimeError(f"{row}: the client kept no network memory in {memory}")
            fresh = self.tmp / f"client-{row}-{tag}-memory.key"
            where, argv = self._client_argv(row, fresh, first_only=True, net_memory=memory)
            third = self.rig.spawn(where, argv, env=self.env)
            m = expect_line(third, r"^\{", timeout=120)
            got = json.loads(m.string)["result"]
            if got.get("first_path") != "relay-tcp":
                raise RuntimeError(f"{row}: the fresh process with the network memory went {got.get('first_path')}")
            run.memory_ms = float(got["first_ms"])
            third.wait(timeout=30)
        return run

    def warm_up(self, row: str) -> None:
        """One unreported first-response client per row (server-side caches, the relay's first peer)."""
        from tests.netns.rig import expect_line

        where, argv = self._client_argv(row, self.tmp / f"warm-{row}.key", first_only=True)
        proc = self.rig.spawn(where, argv, env=self.env)
        expect_line(proc, r"^\{", timeout=120)
        proc.wait(timeout=30)

    def tcp_ceiling(self, nbytes: int) -> tuple[float, float]:
        from tests.netns.rig import expect_line

        proc = self.rig.spawn(
            self.cli.host, [sys.executable, __file__, "--tcp-fetch", f"{self.srv.router.ip}:{TCP_PORT}",  # type: ignore[union-attr]
                            "--bytes", str(nbytes)], env=self.env,
        )  # fmt: skip
        m = expect_line(proc, r"^\{", timeout=300)
        proc.wait(timeout=30)
        got = json.loads(m.string)
        return float(got["tcp_new_mbs"]), float(got["tcp_warm_mbs"])

    def close(self) -> None:
        self.rig.close()


# -- the table --------------------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _cell(xs: list[float | None], digits: int) -> str:
    vals = [x for x in xs if x is not None]
    if not vals:
        return "n/a"
    med = statistics.median(vals)
    if len(xs) == 1:
        return _fmt(med, digits)
    return f"{_fmt(med, digits)} ({' / '.join(_fmt(x, digits) for x in xs)})"


def metrics(run: RowRun, args: argparse.Namespace) -> dict[str, float | None]:
    c = run.client
    mb = args.bulk_mib * MIB / 1e6
    cpu_req = sum(run.cpu_concurrent.values()) / args.requests * 1000 if run.cpu_concurrent else None
    cpu_mb = sum(run.cpu_bulk.values()) / mb * 1000 if run.cpu_bulk else None
    return {
        "first": c.get("first_ms"),
        "first_spawn": c.get("first_spawn_ms"),
        "returning": run.returning_ms,
        "memory": run.memory_ms,
        "p50": c.get("p50_ms"),
        "p99": c.get("p99_ms"),
        "rps": c.get("rps"),
        "bulk": c.get("bulk_mbs"),
        "cpu_req": cpu_req,
        "cpu_mb": cpu_mb,
        "direct_after": c.get("direct_after_ms"),
    }


METRIC_ROWS = (
    ("first", "first response from a fresh process, ms (client created -> response)", 0),
    ("first_spawn", "the same from the process's spawn (interpreter start + imports included), ms", 0),
    ("returning", "returning client's first response (fresh process, same identity), ms", 0),
    ("memory", "first response from a fresh process with a new identity and the network memory, ms", 0),
    ("p50", "steady small request p50, ms", 1),
    ("p99", "steady small request p99, ms", 1),
    ("rps", "50 concurrent small requests, req/s", 0),
    ("bulk", "{bulk} MiB download, MB/s", 2),
    ("cpu_req", "CPU per request, ms (all processes, 50-concurrent run)", 2),
    ("cpu_mb", "CPU per MB, ms (all processes, the download)", 1),
)

#: (metric, row, baseline row, ratio to the baseline, higher is better); the issue's targets
TARGETS = (
    ("bulk", "direct", "tunnel", 0.9, True),
    ("bulk", "relayed", "tunnel", 0.8, True),
    ("bulk", "relayed", "direct", 0.8, True),
    ("first", "direct", "tunnel", 1.0, False),
    ("first", "relayed", "tunnel", 1.0, False),
    ("returning", "direct", "tunnel", 1.0, False),
    ("returning", "relayed", "tunnel", 1.0, False),
    ("p50", "direct", "tunnel", 1.0, False),
    ("p50", "relayed", "tunnel", 1.0, False),
    ("rps", "direct", "tunnel", 2.0, True),
    ("rps", "relayed", "tunnel", 2.0, True),
)


def round_ratios(mine: list[float | None], base: list[float | None]) -> list[float]:
    """Per-round ratios mine[i] / base[i] (the same round), skipping rounds where either is missing."""
    return [a / b for a, b in zip(mine, base, strict=False) if a is not None and b]


def table(runs: list[RowRun], tcp: list[tuple[float, float]], args: argparse.Namespace, notes: list[str]) -> str:
    rows = [r for r in ROWS if any(run.row == r for run in runs)]
    per: dict[str, list[dict[str, float | None]]] = {r: [metrics(x, args) for x in runs if x.row == r] for r in rows}
    out = [
        f"| metric | {' | '.join(TITLES[r] for r in rows)} |",
        "|---|" + "---|" * len(rows),
    ]
    for key, label, digits in METRIC_ROWS:
        label = label.format(bulk=_fmt(args.bulk_mib, 0))
        out.append(f"| {label} | " + " | ".join(_cell([m[key] for m in per[r]], digits) for r in rows) + " |")
    paths = []
    for r in rows:
        seen = []
        for x in runs:
            if x.row != r:
                continue
            c = x.client
            text = f"{c.get('first_path', '?')} -> {c.get('path_end', c.get('path', '?'))}"
            if c.get("direct_after_ms") is not None:
                text += f" ({c['direct_after_ms'] / 1000:.1f} s)"
            seen.append(text)
        paths.append(" / ".join(seen))
    out.append("| path: at the first response -> during the measurements | " + " | ".join(paths) + " |")
    mib = _fmt(args.bulk_mib, 0)
    out.append(
        f"| raw TCP between the two homes, {mib} MiB on a new connection, MB/s | {_cell([t[0] for t in tcp], 2)} |"
        + " |" * (len(rows) - 1)
    )
    out.append(
        f"| the same, {mib} MiB more on the warm connection (the link's ceiling), MB/s "
        f"| {_cell([t[1] for t in tcp], 2)} |" + " |" * (len(rows) - 1)
    )
    lines = ["\n".join(out), ""]

    def med(row: str, key: str) -> float | None:
        return _median([m[key] for m in per.get(row, []) if m[key] is not None])  # type: ignore[misc]

    if "tunnel" in per or "direct" in per:
        tl = [
            "| target: ratio to the baseline, median of the per-round ratios (per round) | value (median) "
            "| ratio | vs tunnel (TLS) | met? |",
            "|---|---|---|---|---|",
        ]
        names = {
            "bulk": "download MB/s",
            "first": "first response ms",
            "returning": "returning client's first response ms",
            "p50": "steady p50 ms",
            "rps": "50-concurrent req/s",
        }
        for key, row, base_row, target, higher in TARGETS:
            if row not in per or base_row not in per:
                continue
            qs = round_ratios([m[key] for m in per[row]], [m[key] for m in per[base_row]])
            mine = med(row, key)
            if not qs or mine is None:
                continue
            q = statistics.median(qs)
            qs_tls = round_ratios([m[key] for m in per[row]], [m[key] for m in per.get("tunnel-tls", [])])
            q_tls = f"{statistics.median(qs_tls):.2f}x" if qs_tls and base_row == "tunnel" else "n/a"
            ok = q >= target if higher else q <= target
            want = f"{'≥' if higher else '≤'} {target:g}x {TITLES[base_row]}"
            each = f" ({' / '.join(f'{x:.2f}' for x in qs)})" if len(qs) > 1 else ""
            tl.append(
                f"| {TITLES[row]} {names[key]} {want} | {_fmt(mine, 2 if key == 'bulk' else 0)} | {q:.2f}x{each} "
                f"| {q_tls} | {'met' if ok else 'not met'} |"
            )
        lines += ["\n".join(tl), ""]
    # CPU breakdown by process role (medians over repeats)
    for r in rows:
        parts = []
        for phase, attr, div, unit in (
            ("per request", "cpu_concurrent", args.requests, "ms/req"),
            ("per MB", "cpu_bulk", args.bulk_mib * MIB / 1e6, "ms/MB"),
        ):
            roles = sorted({k for x in runs if x.row == r for k in getattr(x, attr)})
            vals = []
            for role in roles:
                m = _median(
                    [getattr(x, attr)[role] / div * 1000 for x in runs if x.row == r and role in getattr(x, attr)]
                )
                vals.append(f"{role} {_fmt(m, 2)}")
            parts.append(f"{phase} ({unit}): " + ", ".join(vals))
        lines.append(f"- CPU of {TITLES[r]}: " + "; ".join(parts))
    if args.loss_pct > 0:
        for r in rows:
            cells = []
            for way, what in (("out", "data out of the serving home"), ("in", "into it")):
                got = [x.loss_bulk[way] for x in runs if x.row == r and way in x.loss_bulk]
                fracs = " / ".join(f"{d / n * 100:.2f}%" if n else "n/a" for n, d in got)
                cells.append(f"{what} {fracs} of {' / '.join(f'{n:,}' for n, _ in got)} frames")
            lines.append(f"- Lost during the download ({TITLES[r]}, per run): " + "; ".join(cells))
        lines.append("")
    if "relayed" in per and "relayed-tcp" in per:
        tl = [
            "| relay over TCP vs over UDP (same run, medians) | over UDP | over TCP | ratio | target |",
            "|---|---|---|---|---|",
        ]
        for key, what, target in (
            ("bulk", f"{mib} MiB download through the relay, MB/s", 0.7),
            ("first", "first response, fresh process, ms", None),
            ("memory", "the same with the network memory (new identity), ms", None),
            ("returning", "returning client's first response, ms", None),
        ):
            udp_key = "first" if key == "memory" else key  # over UDP there is no head start to skip
            udp, tcp_ = med("relayed", udp_key), med("relayed-tcp", key)
            if udp is None or tcp_ is None:
                continue
            q = tcp_ / udp
            goal = "" if target is None else f"≥ {target:g}x: {'met' if q >= target else 'not met'}"
            digits = 2 if key == "bulk" else 0
            tl.append(f"| {what} | {_fmt(udp, digits)} | {_fmt(tcp_, digits)} | {q:.2f}x | {goal} |")
        lines += ["\n".join(tl), ""]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def quic_cc() -> str:
    """asgi-p2p's QUIC congestion control in the benchmark's processes (the environment, else the default)."""
    return os.environ.get("ASGI_P2P_CONGESTION_CONTROL") or "cubic"


def host_tcp_cc() -> str:
    try:
        return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    except OSError:
        return "unknown"


def _git_head() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "asgi_p2p"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() + (" (asgi_p2p modified)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_bench(args: argparse.Namespace) -> int:
    from tests.netns.rig import delay_line_kind, missing_requirements, sweep_leftovers, tcp_congestion_controls

    problem = missing_requirements()
    if not problem and args.tcp_cc not in (available := tcp_congestion_controls()):
        problem = (
            f"--tcp-cc {args.tcp_cc}: not available in this kernel (net.ipv4.tcp_available_congestion_control: "
            f"{' '.join(available) or 'none'}; try: modprobe tcp_{args.tcp_cc})"
        )
    if problem:
        print(f"wan.py: error: {problem}", file=sys.stderr)
        return 2
    missing = [m for m in ("uvicorn", "websockets", "psutil", "starlette") if _find_spec(m) is None]
    if missing:
        print(
            f"wan.py: error: {', '.join(missing)} not installed: pip install -e '.[bench]' (or '.[test]')",
            file=sys.stderr,
        )
        return 2

    def on_signal(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below: processes killed, namespaces deleted

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    sweep_leftovers()
    tmp = Path(tempfile.mkdtemp(prefix="wan-bench-"))
    bench: Bench | None = None
    runs: list[RowRun] = []
    tcp: list[tuple[float, float]] = []
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    keep_logs = False
    line_kinds: list[str] = []
    try:
        bench = Bench(args, tmp)
        line_kinds = sorted({delay_line_kind(proc) for proc in bench.rig.delay_lines})  # C, or Python without gcc
        bench.start()
        rows = list(args.rows)
        for row in rows:
            bench.warm_up(row)
        for i in range(args.repeat):
            order = rows[i % len(rows) :] + rows[: i % len(rows)]  # rotated: each row takes each slot once
            for row in order:
                run = bench.run_row(row, f"r{i}")
                runs.append(run)
                progress = {k: None if v is None else round(v, 2) for k, v in metrics(run, args).items()}
                print(f"  repeat {i + 1}/{args.repeat} {row}: {progress}", file=sys.stderr, flush=True)
            tcp.append(bench.tcp_ceiling(args.bulk_mib * MIB))
    except Exception:  # a failure, not Ctrl-C / SIGTERM: keep the logs to look at
        keep_logs = bench is not None
        if keep_logs:
            print(f"wan.py: failed; the processes' stderr is kept under {tmp / 'logs'}", file=sys.stderr)
        raise
    finally:
        if bench is not None:
            bench.close()  # kills every process (by pid) and deletes every namespace
        if not keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
    d, rate, loss = args.delay_ms, args.rate_mbit, args.loss_pct
    knobs = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("ASGI_P2P_"))
    notes = [
        f"Link: each home's access link {d:g} ms one way (userspace delay line: {'/'.join(line_kinds) or 'none'}) "
        f"and {rate:g} Mbit/s (tc tbf), "
        f"both directions; {loss}% loss (nftables, one draw per wire frame) on the serving home's access link; "
        "a round trip between homes "
        f"crosses two access links ({4 * d:g} ms added). NAT: server and direct/tunnel clients behind "
        "endpoint-independent NATs, relayed clients behind a symmetric NAT, relayed-over-TCP clients behind an "
        "endpoint-independent NAT that drops all UDP from its LAN.",
        f"Repeats: {args.repeat}, rows interleaved in rotated order; each cell: median (per-run values). "
        f"Steady: {args.steady} sequential requests; concurrent: {args.requests} requests, {args.concurrency} in "
        f"flight; download: {args.bulk_mib} MiB, MB = 10^6 bytes.",
        f"asgi-p2p {_git_head()}, CLI defaults (`asgi-p2p benchmarks.wan_app:app --relay URL --log-level warning "
        "--limit-peer-rate 0`, `asgi-p2p relay`); "
        + (f"environment: {', '.join(knobs)}" if knobs else "no ASGI_P2P_* settings"),
        f"Congestion control: asgi-p2p's QUIC {quic_cc()} "
        f"({'ASGI_P2P_CONGESTION_CONTROL' if os.environ.get('ASGI_P2P_CONGESTION_CONTROL') else 'library default'}); "
        f"the tunnel's, the raw figures' and the relayed-over-TCP row's TCP {args.tcp_cc} "
        f"(net.ipv4.tcp_congestion_control in every namespace; "
        f"the host's default: {host_tcp_cc()})",
        f"Machine: {machine_name()}; wall {time.perf_counter() - t_start:.0f} s; load average (1/5/15 min) "
        f"{' '.join(f'{x:.2f}' for x in load_start)} at the start, {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        "at the end",
    ]
    text = table(runs, tcp, args, notes)
    print(text)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"runs": [r.__dict__ for r in runs], "tcp_mbs": tcp, "args": vars(args)}, indent=1, default=str)
        )
    return 0


def _find_spec(name: str) -> Any:
    import importlib.util

    return importlib.util.find_spec(name)


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="wan", help="link profile (default wan)")
    p.add_argument("--delay-ms", type=float, help="one-way delay of each access link (overrides the profile)")
    p.add_argument("--rate-mbit", type=float, help="rate of each access link, Mbit/s (overrides the profile)")
    p.add_argument("--loss-pct", type=int, help="loss on the serving home's access link, %% (overrides the profile)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved repeats (default 3)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"rows, comma separated (default {','.join(ROWS)})")
    p.add_argument("--steady", type=int, default=100, help="sequential small requests per run (default 100)")
    p.add_argument("--requests", type=int, default=500, help="requests of the 50-concurrent run (default 500)")
    p.add_argument("--concurrency", type=int, default=50, help="requests in flight (default 50)")
    p.add_argument("--bulk-mib", type=int, default=10, help="download size, MiB (default 10)")
    p.add_argument(
        "--tcp-cc",
        choices=TCP_CCS,
        default="cubic",
        help="TCP congestion control in every namespace of the rig (the tunnel's, the raw TCP figures' and the "
        "relayed-over-TCP row's TCP leg); default cubic, upstream Linux's default (CONFIG_DEFAULT_TCP_CONG; a "
        "host's kernel may default to another, e.g. bbr, and a new namespace would otherwise inherit it)",
    )
    p.add_argument("--wait-direct", type=float, default=10.0, help="direct row: wait up to S s for a direct path")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, 5 + 60 requests, 1 MiB")
    p.add_argument("--json", metavar="PATH", help="also write every run's raw figures to PATH")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="asgi-p2p clients keep no TLS session tickets between processes (the returning client's "
        "first connection is then a full handshake)",
    )
    # internal modes (the processes the driver starts inside the namespaces)
    p.add_argument("--client", choices=ROWS, help=argparse.SUPPRESS)
    p.add_argument("--target", help=argparse.SUPPRESS)
    p.add_argument("--key-file", help=argparse.SUPPRESS)
    p.add_argument("--cafile", help=argparse.SUPPRESS)
    p.add_argument("--spawned-at", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--first-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--net-memory", help=argparse.SUPPRESS)
    p.add_argument("--tcp-serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--tcp-fetch", metavar="HOST:PORT", help=argparse.SUPPRESS)
    p.add_argument("--bytes", type=int, default=10 * MIB, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        client_main(args)
        return 0
    if args.tcp_serve:
        tcp_serve(args.tcp_serve)
        return 0
    if args.tcp_fetch:
        tcp_fetch(args.tcp_fetch, args.bytes)
        return 0
    d, r, loss = PROFILES[args.profile]
    args.delay_ms = d if args.delay_ms is None else args.delay_ms
    args.rate_mbit = r if args.rate_mbit is None else args.rate_mbit
    args.loss_pct = loss if args.loss_pct is None else args.loss_pct
    if args.quick:
        args.repeat, args.steady, args.requests, args.bulk_mib = 1, 5, 60, 1
    args.rows = [x.strip() for x in args.rows.split(",") if x.strip()]
    bad = [x for x in args.rows if x not in ROWS]
    if bad or not args.rows:
        p.error(f"--rows: unknown {bad} (known: {', '.join(ROWS)})")
    if args.repeat < 1 or args.steady < 1 or args.requests < 1 or args.concurrency < 1:
        p.error("--repeat, --steady, --requests and --concurrency must be at least 1")
    if not 1 <= args.bulk_mib <= MAX_BULK_MIB:
        p.error(f"--bulk-mib must be 1..{MAX_BULK_MIB}")
    if args.delay_ms < 0 or args.rate_mbit <= 0 or not 0 <= args.loss_pct <= 100:
        p.error("--delay-ms must be >= 0, --rate-mbit > 0, --loss-pct 0..100")
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
