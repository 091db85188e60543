"""Smoke test of the transport benchmark (issue 2): it runs and prints its table; no speed assertions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "transport.py"


def test_transport_benchmark_quick_run_prints_table() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--bulk-mib", "1", "--handshakes", "3", "--rtts", "20"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "| metric | max_datagram_size | asgi-p2p | aioquic | asgi-p2p / aioquic | target |" in out
    for size in ("1200", "16000"):
        for metric in (
            "handshake incl. mutual auth, wall ms (median of 3)",
            "handshake, client CPU ms per connect (median)",
            "handshake, server CPU ms per connection (incl. close)",
            "64 B message round trip, µs (median of 20)",
            "bulk 1 MiB one way, one connection, MB/s",
        ):
            rows = [line for line in out.splitlines() if line.startswith(f"| {metric} | {size} |")]
            assert len(rows) == 1, f"missing row {metric!r} at {size}:\n{out}"
            cells = [c.strip() for c in rows[0].strip("|").split("|")]
            assert cells[2] != "n/a" and cells[3] != "n/a", rows[0]
    assert "Machine:" in out


def test_iroh_column_refused_outside_a_private_network_namespace() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--iroh", "--quick"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    if proc.returncode == 0:  # pragma: no cover - only when iroh is installed and we run under `unshare -n`
        return
    assert proc.returncode == 2
    assert "--iroh refused:" in proc.stderr
