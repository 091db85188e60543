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
    assert (
        "| metric | max_datagram_size | asgi-p2p: median (runs) | aioquic: median (runs) | asgi-p2p / aioquic "
        "| per-run ratio: median (min-max) | target |"
    ) in out
    for size in ("1200", "16000"):
        for metric in (
            "handshake incl. mutual auth, wall ms until the client holds HANDSHAKE_DONE (median of 3)",
            "handshake, client CPU ms per connect, until HANDSHAKE_DONE (median)",
            "handshake, server CPU ms per connection (incl. close)",
            "64 B message round trip, µs (median of 20)",
            "bulk 1 MiB one way, one connection, MB/s, same limits",
            "bulk 1 MiB one way, MB/s, each with its defaults",
        ):
            rows = [line for line in out.splitlines() if line.startswith(f"| {metric} | {size} |")]
            assert len(rows) == 1, f"missing row {metric!r} at {size}:\n{out}"
            cells = [c.strip() for c in rows[0].strip("|").split("|")]
            assert cells[2] != "n/a" and cells[3] != "n/a", rows[0]
    # both bulk configurations are stated above the table
    assert "- bulk, same limits: both senders hold at most 256 KiB unacknowledged" in out
    assert "- bulk, defaults: asgi-p2p send buffer 256 KiB" in out
    assert "Machine:" in out


def test_iroh_column_refused_outside_a_private_network_namespace() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--iroh", "--quick"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    if proc.returncode == 0:  # pragma: no cover - only when iroh is installed and we run under `unshare -n`
        return
    assert proc.returncode == 2
    assert "--iroh refused:" in proc.stderr


def test_sim_benchmark_prints_simulator_and_bare_aioquic_rows() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "sim.py"),
            "--nodes",
            "3",
            "--seconds",
            "5",
            "--udp-intervals",
            "1",
            "--quic-intervals",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert "udp, 1 msg / 1 s / node" in rows
    assert "quic (real Endpoint), 1 msg / 1 s / connection" in rows
    assert "bare aioquic (no simulator), 1 msg / 1 s / connection" in rows
    # Every message is echoed, so both QUIC runs deliver packets; the ratio row is filled in.
    for name in (
        "quic (real Endpoint), 1 msg / 1 s / connection",
        "bare aioquic (no simulator), 1 msg / 1 s / connection",
    ):
        delivered = int(rows[name].split("|")[6].strip().replace(",", ""))
        assert delivered >= 2 * 3 * 5, rows[name]
    ratio = rows["real Endpoint on the simulator / bare aioquic"].split("|")
    assert ratio[5].strip().endswith("x") and ratio[7].strip().endswith("x")


def test_paths_benchmark_quick_run_prints_every_environment_but_netns() -> None:
    """--quick runs the lossy simulator, the bandwidth-limited simulator and loopback UDP (never the
    netns rig, which needs root), each column filled in."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "paths.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert (
        "| metric | simulator (virtual time) | simulator, 6 Mbit/s access links (virtual time)"
        " | real UDP loopback (3 processes) | target |"
    ) in out
    assert "netns" not in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    for metric in (
        "time to first byte via the relay, ms (connect + 64 B echo)",
        "time until the path is direct, ms (from the connect call)",
        "RTT direct, ms (median of 10)",
        "RTT relayed, ms (median of 10)",
        "bulk relayed, MB/s",
    ):
        assert metric in rows, f"missing row {metric!r}:\n{out}"
        cells = [c.strip() for c in rows[metric].strip().strip("|").split("|")]
        assert len(cells) == 5 and "n/a" not in cells[1:4], rows[metric]
    ratio = [c.strip() for c in rows["bulk relayed / direct"].strip().strip("|").split("|")]
    assert all("met" in c for c in ratio[1:4]), ratio
    assert "Machine:" in out


def test_http_benchmark_interleaves_rounds_and_reports_client_cpu() -> None:
    """benchmarks/http.py, asgi-p2p rows only (no optional servers needed): two rounds, every
    run's values, the datagram sizes used, the machine named."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "http.py"),
            "--only-p2p",
            "--repeat",
            "2",
            "--requests",
            "40",
            "--concurrency",
            "4",
            "--big-mib",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.startswith("Machine: "), out
    assert "seq client CPU ms/req" in out and "conc client CPU ms/req" in out
    medians, runs = out.split("Every run (in round order):")
    for name in (
        "asgi-p2p h3, aioquic client (datagram 1200)",
        "asgi-p2p h3, asgi-p2p client (datagram 1200)",
    ):
        assert f"| {name} |" in medians, out
        (row,) = [line for line in runs.splitlines() if line.startswith(f"| {name} |")]
        cells = [c.strip() for c in row.strip().strip("|").split("|")][1:]
        assert all(len(c.split(", ")) == 2 for c in cells), row  # one value per round
    # the probed row names the sizes its connection used (16384 on loopback once probed)
    assert "16384, probed) |" in out, out
