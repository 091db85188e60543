"""Smoke test of benchmarks/gateways.py (gateway rows): one short round prints every row; no speed assertion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(180)


def test_gateway_benchmark_prints_its_rows() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gateways.py"),
            *("--only", "gateway", "--repeat", "1", "--requests", "5"),
        ],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.startswith("Machine:")
    for row in (
        "| P2PTransport -> peer (HTTP/3) |",
        "| httpx HTTP/1.1 -> asgi-p2p gateway -> peer |",
        "| httpx HTTP/1.1 -> nginx (static file) |",
    ):
        assert row in out, out
    assert "Gateway cost per request, latency" in out and "Gateway process CPU per request" in out
