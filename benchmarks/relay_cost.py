"""What a relay costs per forwarded MB: relay process CPU on loopback.

Starts ``asgi-p2p relay`` in its own process (per-client budgets, as source and as
destination, raised out of the way, so the relay forwards as fast as it can), connects two relay clients from
this process and sends 1,150-byte packets (a full relayed QUIC packet) from one
to the other for ``--seconds``, one way or both ways.  The relay's CPU time comes
from ``/proc/<pid>/stat`` (user + system) over the sending period; MB are the
packet bytes the receiving client got.  Prints CPU ms per forwarded MB and the
forwarding rate, per run, then the median.

The relay connections' datagram sizes are probed as usual (up to 16 KB on loopback,
so several relayed packets share one datagram); ``ASGI_P2P_MAX_PROBE_DATAGRAM_SIZE=1472``
(inherited by the relay process) models an internet path with a 1500-byte MTU.

Usage: python benchmarks/relay_cost.py [--seconds 5] [--runs 3] [--both-ways]
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# this folder holds http.py, which would shadow the stdlib `http` (httpx imports it): keep it off
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from asgi_p2p import Node, SecretKey
from asgi_p2p.relay.client import RelayClient

PACKET = 1150
TICKS = os.sysconf("SC_CLK_TCK")


class Counter:
    """A RelaySink that counts received packet bytes."""

    def __init__(self) -> None:
        self.bytes = 0

    def relay_packet_received(self, src: object, packet: bytes) -> None:
        self.bytes += len(packet)

    def relay_signal_received(self, src: object, payload: bytes) -> None:
        pass

    def relay_state_changed(self, link: object) -> None:
        pass

    def relay_refused(self, dest: object, refusal: object) -> None:
        pass


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


async def one_run(url: str, pid: int, seconds: float, both_ways: bool) -> tuple[float, float]:
    a = await Node.bind(SecretKey.generate(), host="127.0.0.1", port=0)
    b = await Node.bind(SecretKey.generate(), host="127.0.0.1", port=0)
    sa, sb = Counter(), Counter()
    ca, cb = RelayClient(a, url, sa), RelayClient(b, url, sb)  # type: ignore[arg-type]
    ca.start()
    cb.start()
    await ca.wait_connected(10)
    await cb.wait_connected(10)
    packet = b"p" * PACKET
    senders = [(ca, b.node_id)] + ([(cb, a.node_id)] if both_ways else [])
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds

    async def pump(client: RelayClient, dest: object) -> None:
        while loop.time() < stop:
            for _ in range(64):
                if not client.send_packet(dest, packet):  # type: ignore[arg-type]
                    break
            await asyncio.sleep(0.0005)

    cpu0 = cpu_seconds(pid)
    got0 = sa.bytes + sb.bytes
    await asyncio.gather(*(pump(c, d) for c, d in senders))
    await asyncio.sleep(0.3)  # let the last packets arrive
    cpu = cpu_seconds(pid) - cpu0
    mb = (sa.bytes + sb.bytes - got0) / 1e6
    for c in (ca, cb):
        await c.close()
    await a.close()
    await b.close()
    return cpu, mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--both-ways", action="store_true", help="both clients send (two flows through the relay)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url_file = Path(tmp) / "url"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "asgi_p2p",
                "relay",
                "--ephemeral",
                "--no-directory",
                "--log-level",
                "warning",
                "--url-file",
                str(url_file),
                "--limit-bytes-per-second",
                "1e10",
                "--limit-packets-per-second",
                "1e8",
                "--limit-destination-bytes-per-second",
                "1e10",
                "--limit-destination-packets-per-second",
                "1e8",
            ],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        try:
            deadline = time.monotonic() + 20
            while not url_file.exists():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("relay did not start")
                time.sleep(0.05)
            url = url_file.read_text().strip()
            per_mb: list[float] = []
            print(f"{'run':>4} {'forwarded MB':>13} {'MB/s':>7} {'relay CPU s':>12} {'CPU ms/MB':>10}")
            for i in range(args.runs):
                cpu, mb = asyncio.run(one_run(url, proc.pid, args.seconds, args.both_ways))
                if mb <= 0:
                    raise SystemExit("nothing was forwarded (do the relay connections carry full-size packets?)")
                per_mb.append(1000 * cpu / mb)
                print(f"{i + 1:>4} {mb:>13.1f} {mb / args.seconds:>7.1f} {cpu:>12.2f} {per_mb[-1]:>10.1f}")
            print(f"median relay CPU per forwarded MB: {statistics.median(per_mb):.1f} ms")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
