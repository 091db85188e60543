"""The proxy rows of ``benchmarks/gateways.py``: a large download through ``asgi-p2p proxy``.

Three ways to fetch the same file (``--mib`` MiB of random bytes, page-cached), all to a
client in this process:

* ``ASGI app, served directly``: ``asgi-p2p serve`` running a small ASGI app that streams
  the file in 1 MiB chunks; the client is httpx over ``P2PTransport``;
* ``nginx behind asgi-p2p proxy``: Debian's nginx serves the file on 127.0.0.1 and
  ``asgi-p2p proxy http://127.0.0.1:PORT`` exposes it; the same client;
* ``nginx, HTTP/1.1 direct``: httpx over TCP straight to nginx (the floor: no QUIC, no TLS).

Both asgi-p2p servers are the CLI as users run it (subprocesses, default settings, the
client's defaults too), so the two asgi-p2p rows differ only in what produces the bytes.
Rows are interleaved: every round runs each row once, rotating the order; ratios are
per round (proxy / direct in the same round), then their median.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

FILE_APP = """
import os

PATH = os.environ["BENCH_FILE"]
SIZE = os.path.getsize(PATH)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/octet-stream"), (b"content-length", str(SIZE).encode())]})
    with open(PATH, "rb") as f:
        while chunk := f.read(1024 * 1024):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
"""

ROWS = ("ASGI app, served directly", "nginx behind asgi-p2p proxy", "nginx, HTTP/1.1 direct")


class Cli:
    """An ``asgi-p2p`` server subprocess; its ticket once ready."""

    def __init__(self, workdir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.ticket_file = workdir / "ticket"
        self.log = (workdir / "log").open("wb")
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "asgi_p2p", *args, "--ephemeral", "--ticket-file", str(self.ticket_file)],
            cwd=workdir,
            env=full_env,
            stdout=self.log,
            stderr=self.log,
        )

    def cpu(self) -> float:
        import psutil  # type: ignore[import-untyped]

        t = psutil.Process(self.proc.pid).cpu_times()
        return float(t.user + t.system)

    def ticket(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ticket_file.exists() and self.ticket_file.read_text().strip():
                return self.ticket_file.read_text().strip()
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError("server not ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


async def _download(client: httpx.AsyncClient, url: str, size: int, digest: str) -> float:
    """Seconds for one full download (the body is hashed as it arrives, in every row alike)."""
    h = hashlib.sha256()
    got = 0
    start = time.perf_counter()
    async with client.stream("GET", url) as r:
        r.raise_for_status()
        async for chunk in r.aiter_raw():
            h.update(chunk)
            got += len(chunk)
    elapsed = time.perf_counter() - start
    if got != size or h.hexdigest() != digest:
        raise RuntimeError(f"{url}: got {got} bytes, digest mismatch")
    return elapsed


async def measure(mib: int, repeat: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """MB/s per row, one value per round; and the serving process's CPU ms per MiB (asgi-p2p rows)."""
    from asgi_p2p import Node
    from asgi_p2p.http import P2PTransport
    from asgi_p2p.ticket import Ticket
    from tests.proxy.nginx import Nginx

    results: dict[str, list[float]] = {row: [] for row in ROWS}
    cpu: dict[str, list[float]] = {row: [] for row in ROWS[:2]}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        nginx = Nginx(base / "nginx")
        nginx.www.mkdir(parents=True)
        path = nginx.www / "file.bin"
        with path.open("wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1024 * 1024))
        size = path.stat().st_size
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        (base / "app").mkdir()
        (base / "app" / "fileapp.py").write_text(FILE_APP)
        servers: list[Cli] = []
        node = None
        try:
            nginx.start()
            direct = Cli(
                base / "direct", "serve", "fileapp:app", "--app-dir", str(base / "app"), env={"BENCH_FILE": str(path)}
            )
            servers.append(direct)
            proxy = Cli(base / "proxy", "proxy", nginx.url)
            servers.append(proxy)
            tickets = {ROWS[0]: direct.ticket(), ROWS[1]: proxy.ticket()}
            node = await Node.bind(host="127.0.0.1")
            addrs = {row: Ticket.parse(t).to_node_addr() for row, t in tickets.items()}
            p2p = httpx.AsyncClient(transport=P2PTransport(node, addrs=addrs.values()), timeout=120)
            tcp = httpx.AsyncClient(timeout=120, trust_env=False)
            fetchers: dict[str, Callable[[], Awaitable[float]]] = {
                ROWS[0]: lambda: _download(p2p, f"https://{addrs[ROWS[0]].node_id}/file.bin", size, digest),
                ROWS[1]: lambda: _download(p2p, f"https://{addrs[ROWS[1]].node_id}/file.bin", size, digest),
                ROWS[2]: lambda: _download(tcp, f"{nginx.url}/file.bin", size, digest),
            }
            for fetch in fetchers.values():  # warm up: connections, path probing, page cache
                await fetch()
            for rnd in range(repeat):
                order = ROWS[rnd % len(ROWS) :] + ROWS[: rnd % len(ROWS)]
                for row in order:
                    server = {ROWS[0]: direct, ROWS[1]: proxy}.get(row)
                    before = server.cpu() if server is not None else 0.0
                    seconds = await fetchers[row]()
                    results[row].append(size / seconds / 1e6)
                    if server is not None:
                        cpu[row].append((server.cpu() - before) * 1000 / mib)
            await p2p.aclose()
            await tcp.aclose()
        finally:
            if node is not None:
                await node.close()
            for server in servers:
                server.stop()
            nginx.stop()
    return results, cpu


def table(results: dict[str, list[float]], cpu: dict[str, list[float]], mib: int) -> str:
    direct = results[ROWS[0]]
    lines = [
        f"### {mib} MiB download to an httpx client in this process, MB/s (higher is better)",
        "",
        "| row | median MB/s | runs | vs ASGI app served directly: median of per-round ratios (min-max) "
        "| serving process CPU ms per MiB: median (runs) |",
        "|---|---|---|---|---|",
    ]
    for row in ROWS:
        runs = results[row]
        ratios = [r / d for r, d in zip(runs, direct, strict=True)]
        ratio = "1.00" if row == ROWS[0] else (f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
        ms = cpu.get(row)
        cpu_cell = f"{statistics.median(ms):.1f} ({', '.join(f'{v:.1f}' for v in ms)})" if ms else "n/a (nginx)"
        values = ", ".join(f"{v:.1f}" for v in runs)
        lines.append(f"| {row} | {statistics.median(runs):.1f} | {values} | {ratio} | {cpu_cell} |")
    proxy = [p / d for p, d in zip(results[ROWS[1]], direct, strict=True)]
    lines += [
        "",
        f"Target: the proxy row reaches at least 0.8x of the direct ASGI row; measured "
        f"{statistics.median(proxy):.2f}x (median of {len(proxy)} interleaved rounds).",
    ]
    return "\n".join(lines)


def run(mib: int, repeat: int) -> str:
    results, cpu = asyncio.run(measure(mib, repeat))
    return table(results, cpu, mib)
