"""The gateway rows of benchmarks/gateways.py: what ``asgi-p2p gateway`` adds per small request.

    python benchmarks/gateways.py --only gateway [--repeat 5] [--requests 300] [--size 100]

Three ways to fetch the same ``--size``-byte body, one request at a time on one kept-alive
connection, from this process (the client) on 127.0.0.1:

* ``P2PTransport -> peer``: httpx with asgi-p2p's transport, HTTP/3 straight to the peer
  (``asgi-p2p serve`` of a small raw ASGI app, its own process);
* ``httpx HTTP/1.1 -> asgi-p2p gateway -> peer``: httpx's own transport to
  ``asgi-p2p gateway TICKET`` (its own process), which forwards over HTTP/3 to the same peer;
* ``httpx HTTP/1.1 -> nginx``: nginx (Debian's ``nginx-light``) serving the same bytes as a
  static file: the floor any HTTP/1.1 hop on this machine has.

Rounds are interleaved (every row once per round, the order rotating); each row's number for
a round is the median latency of its ``--requests`` requests (after 20 warm-up requests).  The
gateway's cost is taken per round (gateway row minus the P2PTransport row of the same round),
then its median across rounds.  Target: at most 1 ms.  :func:`gateway_rows` returns the table
lines; benchmarks/gateways.py prints them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BODY_SIZE = 100
TARGET_MS = 1.0


async def small_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The peer's app: ``$GATEWAY_BENCH_SIZE`` bytes for any GET."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b"x" * int(os.environ.get("GATEWAY_BENCH_SIZE", BODY_SIZE))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _wait_file(path: Path, proc: subprocess.Popen[bytes], what: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (text := path.read_text().strip()):
            return text
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout:g} s")


@contextmanager
def _processes(size: int) -> Iterator[tuple[str, str, str, dict[str, int]]]:
    """(peer ticket, gateway URL, nginx URL, PIDs by role), each server its own process; all ended (by PID)."""
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "GATEWAY_BENCH_SIZE": str(size), "HOME": str(tmp)}
        env.pop("ASGI_P2P_RELAY_URL", None)
        log = (tmp / "log.txt").open("wb")
        try:
            ticket_file = tmp / "ticket"
            serve = [sys.executable, "-m", "asgi_p2p", "serve", "_gateway_rows:small_app", "--app-dir"]
            serve += [str(ROOT / "benchmarks"), "--ephemeral", "--log-level", "warning"]
            serve += ["--ticket-file", str(ticket_file)]
            procs.append(subprocess.Popen(serve, cwd=ROOT, env=env, stdout=log, stderr=log))
            ticket = _wait_file(ticket_file, procs[-1], "asgi-p2p serve")
            url_file = tmp / "url"
            gateway = [sys.executable, "-m", "asgi_p2p", "gateway", ticket, "--ephemeral", "--listen", "127.0.0.1:0"]
            gateway += ["--log-level", "warning", "--url-file", str(url_file)]
            procs.append(subprocess.Popen(gateway, cwd=ROOT, env=env, stdout=log, stderr=log))
            gateway_url = _wait_file(url_file, procs[-1], "asgi-p2p gateway")
            nginx_url = ""
            nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
            if nginx is not None:
                (tmp / "www").mkdir()
                (tmp / "www" / "small").write_bytes(b"x" * size)
                os.chmod(tmp, 0o755)
                port = _free_port()
                user = "user root;\n" if os.geteuid() == 0 else ""
                (tmp / "nginx.conf").write_text(
                    f"{user}worker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/nginx.err warn;\n"
                    "events { worker_connections 64; }\n"
                    f"http {{ access_log off; client_body_temp_path {tmp}/cb; proxy_temp_path {tmp}/pt;\n"
                    f"  fastcgi_temp_path {tmp}/ft; uwsgi_temp_path {tmp}/ut; scgi_temp_path {tmp}/st;\n"
                    f"  keepalive_requests 100000;\n"
                    f"  server {{ listen 127.0.0.1:{port}; root {tmp}/www; }} }}\n"
                )
                procs.append(
                    subprocess.Popen(
                        [nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"],
                        stdout=log,
                        stderr=log,
                    )
                )
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    with socket.socket() as s:
                        if s.connect_ex(("127.0.0.1", port)) == 0:
                            nginx_url = f"http://127.0.0.1:{port}/small"
                            break
                    if procs[-1].poll() is not None:
                        break
                    time.sleep(0.05)
            pids = {"peer": procs[0].pid, "gateway": procs[1].pid}
            if nginx_url:
                pids["nginx"] = procs[2].pid
            yield ticket, gateway_url + "/small", nginx_url, pids
        finally:
            for proc in reversed(procs):
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(10)
            log.close()


Fetch = Callable[[], Awaitable[int]]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (nginx's worker), in seconds."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        times = p.cpu_times()
        total += times.user + times.system
    return total


async def _run_row(fetch: Fetch, requests: int, size: int, pids: dict[str, int]) -> tuple[float, dict[str, float]]:
    """Median latency (ms) of ``requests`` sequential requests, and CPU ms per request of each process."""
    for _ in range(20):
        assert await fetch() == size
    times: list[float] = []
    before = {role: _cpu_seconds(pid) for role, pid in pids.items()}
    client_before = time.process_time()
    for _ in range(requests):
        start = time.perf_counter()
        n = await fetch()
        times.append((time.perf_counter() - start) * 1000)
        assert n == size
    cpu = {role: (_cpu_seconds(pid) - before[role]) * 1000 / requests for role, pid in pids.items()}
    cpu["client"] = (time.process_time() - client_before) * 1000 / requests
    return statistics.median(times), cpu


@dataclass
class Row:
    name: str
    fetch: Fetch
    #: the processes whose CPU this row's requests use
    roles: tuple[str, ...]
    latency: list[float] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=dict)


async def measure(rounds: int, requests: int, size: int) -> tuple[list[Row], list[float], list[float]]:
    """The rows (per-round latency medians and CPU per request), per-round gateway latency and CPU costs."""
    import httpx

    from asgi_p2p import Node
    from asgi_p2p.http import P2PTransport
    from asgi_p2p.ticket import Ticket

    overheads: list[float] = []
    gateway_cpu: list[float] = []
    with _processes(size) as (ticket, gateway_url, nginx_url, pids):
        addr = Ticket.parse(ticket).to_node_addr()
        node = await Node.bind()
        p2p = httpx.AsyncClient(transport=P2PTransport(node, addrs=[addr]), timeout=30)
        plain = httpx.AsyncClient(timeout=30)
        p2p_url = f"https://{addr.node_id}/small"

        async def via_p2p() -> int:
            return len((await p2p.get(p2p_url)).content)

        async def via_gateway() -> int:
            return len((await plain.get(gateway_url)).content)

        async def via_nginx() -> int:
            return len((await plain.get(nginx_url)).content)

        rows = [
            Row("P2PTransport -> peer (HTTP/3)", via_p2p, ("client", "peer")),
            Row("httpx HTTP/1.1 -> asgi-p2p gateway -> peer", via_gateway, ("client", "gateway", "peer")),
        ]
        if nginx_url:
            rows.append(Row("httpx HTTP/1.1 -> nginx (static file)", via_nginx, ("client", "nginx")))
        try:
            for r in range(rounds):
                for row in rows[r % len(rows) :] + rows[: r % len(rows)]:
                    latency, cpu = await _run_row(row.fetch, requests, size, pids)
                    row.latency.append(latency)
                    for role in row.roles:
                        row.cpu.setdefault(role, []).append(cpu[role])
                overheads.append(rows[1].latency[-1] - rows[0].latency[-1])
                gateway_cpu.append(rows[1].cpu["gateway"][-1])
        finally:
            await p2p.aclose()
            await plain.aclose()
            await node.close()
    return rows, overheads, gateway_cpu


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def gateway_rows(rounds: int = 5, requests: int = 300, size: int = BODY_SIZE) -> list[str]:
    """The gateway's table (markdown lines), measured now."""
    rows, overheads, gateway_cpu = asyncio.run(measure(rounds, requests, size))
    lines = [
        f"Gateway: one small GET ({size} B body) at a time on one kept-alive connection, 127.0.0.1; "
        f"{rounds} interleaved rounds of {requests} requests (+20 warm-up); per round the median latency "
        "and each process's CPU per request (psutil; nginx with its worker).",
        "",
        "| path | latency ms: median of rounds (per round) | CPU ms per request: median of rounds (per round) |",
        "| --- | --- | --- |",
    ]
    for row in rows:
        cpu = "; ".join(f"{role} {statistics.median(v):.3f} ({_runs(v)})" for role, v in row.cpu.items())
        lines.append(f"| {row.name} | {statistics.median(row.latency):.3f} ({_runs(row.latency)}) | {cpu} |")
    over = statistics.median(overheads)
    cpu_over = statistics.median(gateway_cpu)
    lines += [
        "",
        f"Gateway cost per request, latency (gateway row minus P2PTransport row, same round): median {over:.3f} ms "
        f"({_runs(overheads)}); target <= {TARGET_MS:g} ms: {'met' if over <= TARGET_MS else 'missed'}.",
        f"Gateway process CPU per request: median {cpu_over:.3f} ms ({_runs(gateway_cpu)}).",
    ]
    return lines
