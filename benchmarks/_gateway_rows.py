"""The gateway rows of benchmarks/gateways.py: what ``asgi-p2p gateway`` adds per small request.

    python benchmarks/_gateway_rows.py [--rounds 5] [--requests 300] [--size 100]

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
lines, for benchmarks/gateways.py.
"""

from __future__ import annotations

import argparse
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
def _processes(size: int) -> Iterator[tuple[str, str, str]]:
    """(peer ticket, gateway URL, nginx URL), each server its own process; all ended (by PID) on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "GATEWAY_BENCH_SIZE": str(size), "HOME": str(tmp)}
        env.pop("ASGI_P2P_RELAY_URL", None)
        log = (tmp / "log.txt").open("wb")
        try:
            ticket_file = tmp / "ticket"
            serve = [sys.executable, "-m", "asgi_p2p", "serve", "_gateway_rows:small_app", "--app-dir"]
            serve += [str(ROOT / "benchmarks"), "--ephemeral", "--log-level", "warning", "--ticket-file", str(ticket_file)]
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
            yield ticket, gateway_url + "/small", nginx_url
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


async def _median_ms(fetch: Fetch, requests: int, size: int) -> float:
    for _ in range(20):
        assert await fetch() == size
    times: list[float] = []
    for _ in range(requests):
        start = time.perf_counter()
        n = await fetch()
        times.append((time.perf_counter() - start) * 1000)
        assert n == size
    return statistics.median(times)


async def measure(rounds: int, requests: int, size: int) -> tuple[dict[str, list[float]], list[float]]:
    """Per-row lists of per-round median latencies (ms), and the per-round gateway overheads (ms)."""
    import httpx

    from asgi_p2p import Node
    from asgi_p2p.http import P2PTransport
    from asgi_p2p.ticket import Ticket

    results: dict[str, list[float]] = {}
    overheads: list[float] = []
    with _processes(size) as (ticket, gateway_url, nginx_url):
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

        rows: list[tuple[str, Fetch]] = [
            ("P2PTransport -> peer (HTTP/3)", via_p2p),
            ("httpx HTTP/1.1 -> asgi-p2p gateway -> peer", via_gateway),
        ]
        if nginx_url:
            rows.append(("httpx HTTP/1.1 -> nginx (static file)", via_nginx))
        try:
            for r in range(rounds):
                this_round: dict[str, float] = {}
                for name, fetch in rows[r % len(rows) :] + rows[: r % len(rows)]:
                    this_round[name] = await _median_ms(fetch, requests, size)
                    results.setdefault(name, []).append(this_round[name])
                overheads.append(this_round[rows[1][0]] - this_round[rows[0][0]])
        finally:
            await p2p.aclose()
            await plain.aclose()
            await node.close()
    return results, overheads


def gateway_rows(rounds: int = 5, requests: int = 300, size: int = BODY_SIZE) -> list[str]:
    """The gateway's table (markdown lines), measured now."""
    results, overheads = asyncio.run(measure(rounds, requests, size))
    lines = [
        f"Gateway: one small GET ({size} B body) at a time on one kept-alive connection, 127.0.0.1; "
        f"{rounds} interleaved rounds of {requests} requests (+20 warm-up); per round the median latency.",
        "",
        "| path | latency ms: median of rounds | per-round medians |",
        "| --- | --- | --- |",
    ]
    for name, values in results.items():
        lines.append(f"| {name} | {statistics.median(values):.3f} | {', '.join(f'{v:.3f}' for v in values)} |")
    over = statistics.median(overheads)
    verdict = "meets" if over <= TARGET_MS else "misses"
    lines += [
        "",
        f"Gateway cost per request (gateway row minus P2PTransport row, same round): median {over:.3f} ms "
        f"(per round: {', '.join(f'{v:.3f}' for v in overheads)}); target <= {TARGET_MS:g} ms: {verdict} it.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--size", type=int, default=BODY_SIZE, help="response body bytes")
    args = parser.parse_args()
    from benchmarks._machine import machine_description

    print(f"Machine: {machine_description()}")
    print()
    print("\n".join(gateway_rows(args.rounds, args.requests, args.size)))


if __name__ == "__main__":
    main()
