"""Smoke test of benchmarks/gateways.py (proxy rows): it runs briefly and prints its table; no speed assertions."""

from __future__ import annotations

import subprocess
import sys

from tests.cli.conftest import REPO


def test_gateways_benchmark_prints_the_proxy_table() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gateways.py"), "--only", "proxy", "--mib", "2", "--repeat", "2"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Machine:" in out and "other jobs run during the benchmark" in out
    for row in ("ASGI app, served directly", "nginx behind asgi-p2p proxy", "nginx, HTTP/1.1 direct"):
        lines = [line for line in out.splitlines() if line.startswith(f"| {row} |")]
        assert len(lines) == 1, out
        cells = [c.strip() for c in lines[0].strip("|").split("|")]
        assert len(cells[2].split(", ")) == 2  # one value per round
    assert "Target: the proxy row reaches at least 0.8x" in out
