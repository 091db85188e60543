"""Smoke tests of the benchmarks: each runs briefly and prints its table; no speed assertions."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert "- bulk, same limits: both senders hold at most 256 KiB unacknowledged (asgi-p2p's send buffer fixed" in out
    assert "- bulk, defaults: asgi-p2p auto-tuned: send buffer 256 KiB growing to two congestion windows" in out
    assert "- congestion control differs (each as it ships, in every row): aioquic New Reno" in out
    assert "asgi-p2p cubic with HyStart++, a 64-packet initial window" in out
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


def test_sim_benchmark_compares_rows_with_and_without_the_patches() -> None:
    proc = subprocess.run(
        [
            *(sys.executable, str(ROOT / "benchmarks" / "sim.py"), "--patches", "--repeat", "2"),
            *("--nodes", "2", "--seconds", "3", "--udp-intervals", "1", "--quic-intervals", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("Machine: ") and "load average" in proc.stdout
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    for name in ("udp, 1 msg / 1 s / node", "quic (real Endpoint), 1 msg / 1 s / connection"):
        cells = [c.strip() for c in rows[name].strip("|").split("|")]
        for cell in cells[2:4]:  # median and the two runs (simulated s per CPU s), with patches and without
            median, runs = cell.split(" ", 1)
            assert median.endswith("x") and len(runs.strip("()").split(", ")) == 2, rows[name]
        assert float(cells[4]) > 0, rows[name]
        assert cells[5].count("x") == 2, rows[name]  # wall-clock medians


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


def test_flood_benchmark_floods_a_node_and_its_relay_at_once_and_the_peer_connects() -> None:
    """The combined row (issue 12's clause: junk at the node *and* its relay): both processes
    flooded, the peer dials the node by its ticket; one short run."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "flood.py"),
            *("--seconds", "1", "--after", "0.2", "--targets", "both", "--floods", "hellos", "--runs", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("Machine: ") and "load average" in proc.stdout, proc.stdout
    assert "| legitimate connect ms: median (1 run) |" in proc.stdout, proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| node + its relay | hellos,")]
    assert len(rows) == 1, proc.stdout
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert "/s to each for 1 s" in cells[1], rows[0]
    median, runs = cells[2].split(" ", 1)
    assert median.isdigit() and runs == f"({median})", rows[0]  # the legitimate connect succeeded (milliseconds)
    for cell in cells[3:6]:  # CPU, RSS and answers of each process
        relay, node = cell.split("; ")
        assert relay.startswith("relay ") and node.startswith("node "), rows[0]


def test_flood_benchmark_rows_give_the_median_and_every_runs_connect_time() -> None:
    import importlib

    flood = importlib.import_module("benchmarks.flood")

    def run(ms: float | None) -> object:
        target = flood.Target("node", None, "id", ("127.0.0.1", 1), "", flood.Sampler(0), cpu=[0.0, 10.0, 1.0])
        failure = "" if ms is not None else "failed after 10.0 s: no QUIC handshake"
        return flood.Run("node", "junk", [target], 1990.0, 10.0, 20_000, ms, failure)

    cells = flood.row([run(120.0), run(None), run(80.0)])
    assert cells["legitimate connect ms: median (3 runs)"] == "120 (120, failed after 10.0 s: no QUIC handshake, 80)"
    assert cells["CPU % idle / during / after (median)"] == "0 / 10 / 1"
    assert cells["flood"] == "junk, 1,990/s for 10 s (20,000 packets)"
    assert flood.row([run(None)])["legitimate connect ms: median (1 run)"].startswith("failed (failed after")


# -- the WAN benchmark (issue 11) and its WebSocket tunnel baseline -----------------------------------


def _start(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    """Start a benchmarks/tunnel.py process; returns it and the port its ``ready PORT`` line names."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # the process prints nothing else on stdout; EOF if it died
    if not line.startswith("ready"):
        proc.kill()
        raise AssertionError(f"{argv} did not start: {line!r}\n{proc.communicate()[1]}")
    parts = line.split()
    return proc, int(parts[1]) if len(parts) > 1 else 0


def test_tunnel_baseline_forwards_requests_through_its_websocket() -> None:
    """benchmarks/tunnel.py on loopback: client -> tunnel server -> WebSocket -> sender -> app, byte for byte;
    the app's errors come through; without a sender the tunnel answers 502."""
    import asyncio

    import httpx

    for dep in ("uvicorn", "websockets"):
        if importlib.util.find_spec(dep) is None:
            pytest.fail(f"{dep} is missing: pip install -e '.[test]' (the WAN benchmark's tunnel needs it)")
    tunnel = str(ROOT / "benchmarks" / "tunnel.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    procs: list[subprocess.Popen[str]] = []
    try:
        app, app_port = _start([sys.executable, tunnel, "app", "--port", "0"], env)
        procs.append(app)
        server, port = _start([sys.executable, tunnel, "server", "--host", "127.0.0.1", "--port", "0"], env)
        procs.append(server)
        base = f"http://127.0.0.1:{port}"
        r = httpx.get(f"{base}/small", timeout=30)
        assert (r.status_code, r.text) == (502, "no sender connected to the tunnel\n")
        ws = f"ws://127.0.0.1:{port}/ws"
        sender, _ = _start(
            [sys.executable, tunnel, "sender", "--tunnel", ws, "--local", f"http://127.0.0.1:{app_port}"], env
        )
        procs.append(sender)
        r = httpx.get(f"{base}/small", timeout=30)
        assert (r.status_code, r.text) == (200, "hello, world\n")
        assert r.headers["content-type"].startswith("text/plain")
        big = httpx.get(f"{base}/big/3", timeout=60)
        direct = httpx.get(f"http://127.0.0.1:{app_port}/big/3", timeout=60)
        assert big.status_code == 200 and len(big.content) == 3 * 1024 * 1024
        assert big.content == direct.content  # 49 packets of at most 64 KiB (header included), in order
        assert httpx.get(f"{base}/nowhere", timeout=30).status_code == 404
        assert httpx.get(f"{base}/big/65", timeout=30).status_code == 400

        async def many() -> list[str]:
            async with httpx.AsyncClient(base_url=base, timeout=30) as c:
                rs = await asyncio.gather(*(c.get("/small") for _ in range(30)))
                return [x.text for x in rs]

        assert asyncio.run(many()) == ["hello, world\n"] * 30
    finally:
        for p in procs:
            p.kill()
            p.communicate()


def test_tunnel_packets_round_trip_and_malformed_ones_are_refused() -> None:
    from benchmarks.tunnel import TunnelError, decode_packet, encode_packet

    first = encode_packet(7, 1, False, b"abc", 200, {"content-type": "text/plain"})
    assert decode_packet(first) == (7, 1, False, 200, {"content-type": "text/plain"}, b"abc")
    assert decode_packet(encode_packet(7, 2, True, b"")) == (7, 2, True, None, None, b"")
    with pytest.raises(ValueError, match="status and the headers"):
        encode_packet(7, 1, True, b"")
    for bad in (
        b"",
        first[:12],
        first[:14],
        encode_packet(7, 2, False, b"")[:8] + b"\0\0\0\0\0",
        first[:13] + b"\0\xc8\xff\xff\xff\xff",
    ):
        with pytest.raises(TunnelError):
            decode_packet(bad)


def _run_on_the_netns_rig(argv: list[str], *, timeout: float) -> str:
    """Run ``benchmarks/<argv[0]> argv[1:]``, which builds netns rigs; its stdout once it exited 0 and
    left none of its namespaces behind.  Needs root like tests/netns (`make test` runs as root):
    without it the calling test fails with the reason, it is never skipped."""
    from tests.netns.rig import list_namespaces, missing_requirements

    problem = missing_requirements()
    if problem:
        pytest.fail(problem, pytrace=False)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / argv[0]), *argv[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err
    assert not [n for n in list_namespaces() if n.startswith(f"ap2p{proc.pid}-")], list_namespaces()
    return out


def test_wan_benchmark_quick_run_on_the_netns_rig() -> None:
    """`benchmarks/wan.py --quick` builds the NAT rig, runs every row once and prints the table; afterwards
    none of its namespaces is left. Needs root like tests/netns (`make test` runs as root): without it
    this test fails with the reason, it is never skipped."""
    out = _run_on_the_netns_rig(["wan.py", "--quick"], timeout=400)
    header = "| metric | asgi-p2p direct | asgi-p2p relayed | asgi-p2p relayed over TCP | tunnel | tunnel (TLS) |"
    assert header in out, out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    for metric in (
        "first response from a fresh process, ms (client created -> response)",
        "returning client's first response (fresh process, same identity), ms",
        "steady small request p50, ms",
        "steady small request p99, ms",
        "50 concurrent small requests, req/s",
        "1 MiB download, MB/s",
        "CPU per request, ms (all processes, 50-concurrent run)",
        "CPU per MB, ms (all processes, the download)",
    ):
        assert metric in rows, f"missing row {metric!r}:\n{out}"
        cells = [c.strip() for c in rows[metric].strip().strip("|").split("|")][1:]
        assert len(cells) == 5 and all(c != "n/a" and float(c.replace(",", "")) > 0 for c in cells), rows[metric]
    # only the relayed-over-TCP row has a fresh process with the network memory (dials TCP at once)
    memory = "first response from a fresh process with a new identity and the network memory, ms"
    cells = [c.strip() for c in rows[memory].strip().strip("|").split("|")][1:]
    assert cells[2] != "n/a" and [c for i, c in enumerate(cells) if i != 2] == ["n/a"] * 4, rows[memory]
    paths = [c.strip() for c in rows["path: at the first response -> during the measurements"].strip("| \n").split("|")]
    # the direct row went direct (eim x eim), the relayed one stayed on the relay (symmetric NAT), the one
    # whose home drops UDP used the relay over TCP
    assert paths[1].split(" (")[0].endswith("-> direct") and paths[2].endswith("-> relay"), paths
    assert paths[3] == "relay-tcp -> relay-tcp", paths
    assert (
        "| 1 MiB download through the relay, MB/s |"
        in out.split("| relay over TCP vs over UDP (same run, medians) |")[1]
    ), out
    tcp = [
        c.strip()
        for c in rows["the same, 1 MiB more on the warm connection (the link's ceiling), MB/s"].strip("| \n").split("|")
    ]
    assert float(tcp[1]) > 0, tcp
    assert "| asgi-p2p direct download MB/s ≥ 0.9x tunnel |" in out and "Machine: " in out
    assert "| asgi-p2p relayed download MB/s ≥ 0.8x asgi-p2p direct |" in out, out
    assert "the tunnel's, the raw figures' and the relayed-over-TCP row's TCP cubic" in out, out


def test_windows_benchmark_prints_every_row() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "windows.py"), "--mb", "1", "--seeds", "1", "--queues", "1000000"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| fixed") or line.startswith("| auto")]
    assert len(rows) == 5, proc.stdout  # fixed; reno and cubic at 0% and 1% loss
    assert "| fixed 256 KiB | cubic | 0% | 1000 kB |" in rows[0]


def test_windows_benchmark_compares_controllers() -> None:
    args = ["--compare", "cubic,bbr", "--seeds", "1", "--lossy-seeds", "1", "--only", "rig path, 2 MiB"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "windows.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| condition | cubic: median (per seed) | bbr: median (per seed) |" in proc.stdout
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith("| rig path, 2 MiB, 1% loss |")]
    cells = [c.strip() for c in row.strip("| ").split("|")]
    assert all(float(c.split()[0]) > 0 for c in cells[1:]), row


def test_relay_cost_benchmark_measures_the_relay_process() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "relay_cost.py"), "--seconds", "0.5", "--runs", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "median relay CPU per forwarded MB:" in proc.stdout, proc.stdout


def test_sim_tcp_benchmark_prints_its_rows() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sim_tcp.py"), "--megabytes", "5", "--echo-megabytes", "1"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    for name in ("bulk, 1 connection", "bulk, 1 connection, 1% loss", "echo, 10 connections, 4 KiB messages"):
        cells = [c.strip() for c in rows[name].strip("|").split("|")]
        assert float(cells[1].replace(",", "")) >= 1.0, rows[name]  # MB moved
        assert float(cells[5].replace(",", "")) > 0, rows[name]  # MB per wall second
        # wall seconds come from the real clock (time.perf_counter is the virtual one inside a simulation)
        assert float(cells[2]) != float(cells[3].replace(",", "")), rows[name]


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


def test_restart_benchmark_prints_every_row_in_round_trips() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "restart.py"), "--delay-ms", "5", "--runs", "1"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RTT 10 ms" in proc.stdout
    rows = {
        cells[0]: cells
        for line in proc.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| next GET")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert set(rows) == {
        "restart, GET at ready",
        "restart, GET 0.2 s later",
        "restart, reactive",
        "returning",
        "pooled",
    }, proc.stdout
    for cells in rows.values():
        assert float(cells[1]) > 0 and float(cells[2]) > 0 and len(cells[3].split(",")) == 1


def test_http_benchmark_metrics_overhead_rows() -> None:
    """benchmarks/http.py --metrics-overhead: the same asgi-p2p row with metrics off and on
    (the listener scraped while it runs), and their per-round ratios."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "http.py"),
            "--metrics-overhead",
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
    medians, _ = out.split("Every run (in round order):")
    assert "| asgi-p2p h3, asgi-p2p client (datagram 1200) |" in medians, out
    assert re.search(r"\| asgi-p2p h3, asgi-p2p client \(datagram 1200\), metrics on \([1-9]\d* scrapes\) \|", medians)
    assert "metrics on (scraped every 5 s) / metrics off" in out
    # a ratio per round (a round whose CPU reads 0 at this size is left out of that ratio)
    assert re.search(r"- sequential requests/s: [\d.]+x \(per run: [\d.]+, [\d.]+\)", out), out


def test_metrics_overhead_benchmark_prints_both_rows_and_a_scrape() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "metrics_overhead.py"), "--pairs", "2", "--block", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.startswith("Machine: "), out
    assert re.search(r"\| metrics on \| [\d.]+ \| \d+, \d+ \|", out), out
    assert re.search(r"\| metrics off \| [\d.]+ \| \d+, \d+ \|", out), out
    assert re.search(r"One scrape of /metrics .*: [\d.]+ ms", out), out


def test_delayline_benchmark_measures_both_lines_on_the_netns_rig() -> None:
    """`benchmarks/delayline.py`: one rig delay line's CPU, the C line and the Python fallback, per stream.
    Needs root like tests/netns: without it this test fails with the reason, it is never skipped."""
    out = _run_on_the_netns_rig(
        ["delayline.py", "--runs", "1", "--seconds", "0.5", "--tcp-mib", "1", "--streams", "udp,tcp-max"], timeout=180
    )
    rows = [[c.strip() for c in line.strip("| \n").split("|")] for line in out.splitlines() if line.startswith("| ")]
    got = {(r[0].split()[0], r[1]): r for r in rows[2:]}
    assert set(got) == {(s, line) for s in ("UDP", "TCP") for line in ("c", "python")}, out
    for cells in got.values():
        assert float(cells[2]) > 0 and float(cells[6]) > 0, cells  # CPU spent, stream through
    assert "Machine: " in out


def test_quic_datagram_benchmark_compares_trees_and_aioquics_write() -> None:
    root = str(ROOT)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "quic_datagram.py"),
            "--exchanges",
            "60",
            "--repeat",
            "2",
            "--trees",
            f"{root},{root}:aioquic-write",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(root) and " / " not in line}
    assert set(rows) == {root, f"{root}:aioquic-write"}, out
    for cells in rows.values():
        assert float(cells[1]) > 0 and 1.9 < float(cells[2]) < 2.2  # about a request and a response per exchange
        assert len(cells) == 3 + 2  # the median, datagrams per exchange, and both runs
    assert f"{root}:aioquic-write / {root} per round: median" in out
    assert "load average before:" in out and "load average after:" in out


# -- many peers, handshake cost, UDP offload (issue 11 parts 4 and 5) ---------------------------------


def _run_benchmark(script: str, *args: str, timeout: float = 120) -> str:
    """``benchmarks/<script> args``: its stdout once it exited 0."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("Machine: "), proc.stdout
    return proc.stdout


def _table_rows(out: str) -> dict[str, list[str]]:
    """The cells of every markdown table row (header and separator left out), keyed by the first cell."""
    rows: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def _median_and_runs(cell: str) -> tuple[float, list[float]]:
    """``"1,234 (1,200 / 1,268)"`` -> (1234.0, [1200.0, 1268.0])."""
    m = re.fullmatch(r"([\d,.]+) \(([\d,. /]+)\)", cell)
    assert m is not None, cell
    return float(m.group(1).replace(",", "")), [float(v.replace(",", "")) for v in m.group(2).split(" / ")]


def test_peers_benchmark_reports_the_server_capacity_beside_req_per_s() -> None:
    """benchmarks/peers.py, two small shapes, one round: req/s, the server's CPU per request and its
    capacity (1 / that), the client's CPU, each process's core share, client-bound runs, and the
    last shape's ratios to the first (req/s and server capacity)."""
    out = _run_benchmark("peers.py", "--repeat", "1", "--seconds", "1", "--shapes", "2x4,8x1")
    assert (
        "| shape | req/s, median (runs) | server CPU ms/req | server capacity, req/s per core "
        "(1 / server CPU per request) | client CPU ms/req | core share, client / server (medians) "
        "| client-bound runs | datagrams/req to / from the server |"
    ) in out, out
    rows = _table_rows(out)
    for label in ("2 peers x 4 streams", "8 peers x 1 stream"):
        cells = rows[label]
        assert len(cells) == 8, cells
        rps, rps_runs = _median_and_runs(cells[1])
        server_ms, _ = _median_and_runs(cells[2])
        capacity, _ = _median_and_runs(cells[3])
        client_ms, _ = _median_and_runs(cells[4])
        assert rps > 0 and len(rps_runs) == 1, cells
        assert server_ms > 0 and client_ms > 0, cells
        assert capacity == pytest.approx(1000 / server_ms, rel=0.01, abs=1), cells  # 1 / server CPU per request
        client_core, server_core = (float(x) for x in cells[5].split(" / "))
        assert 0 < client_core <= 2.5 and 0 < server_core <= 2.5, cells  # CPU seconds per wall second
        assert re.fullmatch(r"[01] of 1", cells[6]), cells
        to_server, from_server = (float(x) for x in cells[7].split(" / "))
        assert to_server > 0 and from_server > 0, cells
    assert "client-bound: the client process (all peers) used at least 90% of a core" in out
    assert "8 peers x 1 stream / 2 peers x 4 streams, per round; median:" in out
    for name in (r"req/s ratio", r"server capacity ratio \(the node's\)"):
        m = re.search(rf"^- {name}: ([\d.]+); median ([\d.]+)", out, re.MULTILINE)
        assert m is not None, out
        assert 0 < float(m.group(2)) < 2 and m.group(1) == m.group(2), m.group(0)  # one round: its ratio


def test_handshake_benchmark_prints_both_implementations_per_run() -> None:
    out = _run_benchmark("handshake.py", "--handshakes", "5", "--repeat", "2")
    assert (
        "| metric | asgi-p2p, median (per run) | aioquic, median (per run) | ratio of medians "
        "| ratio per run: median (min-max) |"
    ) in out, out
    rows = _table_rows(out)
    for metric in ("wall ms to HANDSHAKE_DONE (median of the run)", "CPU ms per handshake, both ends"):
        cells = rows[metric]
        for cell in cells[1:3]:  # asgi-p2p, aioquic: a median and the two runs' values
            median, runs = cell.split(" (")
            values = [float(v) for v in runs.rstrip(")").split(", ")]
            assert float(median) > 0 and len(values) == 2 and all(v > 0 for v in values), cells
        assert cells[3].endswith("x") and 0 < float(cells[3][:-1]) < 20, cells
        assert re.fullmatch(r"[\d.]+x \([\d.]+-[\d.]+\)", cells[4]), cells


def test_offload_benchmark_prints_gso_against_off() -> None:
    out = _run_benchmark("offload.py", "--repeat", "1", "--bulk-mib", "1", "--datagram-sizes", "1200")
    assert "| metric | datagram size | udp_offload=gso+gro: median (runs) | off: median (runs) | gso+gro / off |" in out
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in out.splitlines()
        if line.startswith("| MB/s |") or line.startswith("| CPU ms/MiB |")
    ]
    assert [r[:2] for r in rows] == [["MB/s", "1200"], ["CPU ms/MiB", "1200"]], out
    for cells in rows:
        for cell in cells[2:4]:
            median, runs = _median_and_runs(cell)
            assert median > 0 and runs == [median], cells
        assert cells[4].endswith("x") and float(cells[4][:-1]) > 0, cells


def test_peers_table_marks_client_bound_runs_and_takes_the_server_capacity_ratio() -> None:
    """The quiet run at bd290e0 (docs/benchmarks.md, "Many peers"): both shapes client-bound, req/s
    ratio 0.55 (the client's), server capacity 10,101 and 3,546 req/s per core, ratio 0.35."""
    from benchmarks.peers import Run, table

    runs = {
        "4x25": [Run("4x25", 3844, 0.099, 0.260, 0.15, 0.14, 1.00, 0.38)],
        "100x1": [Run("100x1", 2133, 0.282, 0.470, 1.01, 1.01, 1.00, 0.60)],
    }
    out = table(["4x25", "100x1"], runs)
    rows = _table_rows(out)
    assert rows["4 peers x 25 streams"][3] == "10,101 (10,101)"
    assert rows["100 peers x 1 stream"][3] == "3,546 (3,546)"
    assert rows["4 peers x 25 streams"][5:7] == ["1.00 / 0.38", "1 of 1"]
    assert "- req/s ratio: 0.55; median 0.55 (both runs client-bound in 1 of 1 rounds" in out
    assert "- server capacity ratio (the node's): 0.35; median 0.35" in out
    # a client short of a core, or a server as busy as the client: not client-bound
    assert not Run("x", 1, 1, 1, 1, 1, 0.85, 0.30).client_bound
    assert not Run("x", 1, 1, 1, 1, 1, 1.00, 0.95).client_bound
    assert Run("x", 1, 1, 1, 1, 1, 0.95, 0.70).client_bound


#: what a bare aioquic process prints once it checked that aioquic ran as shipped (benchmarks/_bare.py)
UNPATCHED = (
    "bare aioquic unpatched: asgi_p2p never imported, QuicConnection._write_application from aioquic.quic.connection"
)


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=240, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_bare_aioquic_check_refuses_a_process_that_imported_asgi_p2p() -> None:
    """The check every bare child runs fails where asgi_p2p patched aioquic, even once unloaded."""
    code = (
        "import sys\n"
        "from benchmarks._bare import unpatched\n"
        "print(unpatched())\n"
        "import asgi_p2p\n"
        "for name in [m for m in sys.modules if m.startswith('asgi_p2p')]:\n"
        "    del sys.modules[name]\n"
        "try:\n"
        "    unpatched()\n"
        "except AssertionError as exc:\n"
        "    print('refused:', exc)\n"
    )
    out = _bench("-c", code).stdout.splitlines()
    assert out == [UNPATCHED, "refused: QuicConnection._write_application from asgi_p2p.aioquic_compat"]


def test_transport_benchmark_bare_aioquic_runs_unpatched() -> None:
    proc = _bench(
        *(str(SCRIPT), "--quick", "--only", "aioquic", "--datagram-sizes", "1200"),
        *("--handshakes", "3", "--rtts", "20", "--bulk-mib", "1"),
    )
    assert f"# {UNPATCHED} (the client process and its 2 server processes)" in proc.stderr.splitlines()
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith("| 64 B message round trip")]
    assert row.split("|")[4].strip() != "n/a", row  # the child's numbers reached the table


def test_transport_benchmark_bare_client_holds_at_most_the_send_buffer_unacknowledged() -> None:
    """Same limits means the same bytes in flight: the bare client, like asgi-p2p's ``send``, writes
    only what keeps at most the send buffer unacknowledged (a whole 64 KiB message written once
    fewer than the limit were unacknowledged held up to a message more) and all of it arrives."""
    code = (
        "import asyncio, struct, tempfile\n"
        "from aioquic.asyncio import connect, serve\n"
        "from benchmarks.transport import (BULK_MESSAGE, HOST, REPORT, SINK, BareClientProtocol,\n"
        "    BareCredentials, BareServerProtocol, bare_config)\n"
        "async def main():\n"
        "    with tempfile.TemporaryDirectory() as d:\n"
        "        creds = BareCredentials.write(d)\n"
        "        server = await serve(HOST, 0, configuration=bare_config(False, creds.server, 1200),\n"
        "            create_protocol=BareServerProtocol)\n"
        "        port = server._transport.get_extra_info('socket').getsockname()[1]\n"
        "        limit, most = 100_000, 0\n"
        "        async with connect(HOST, port, configuration=bare_config(True, creds.client, 1200),\n"
        "                create_protocol=BareClientProtocol) as proto:\n"
        "            write = proto._quic.send_stream_data\n"
        "            def counted(*args, **kwargs):\n"
        "                nonlocal most\n"
        "                write(*args, **kwargs)\n"
        "                most = max(most, proto.unacked())\n"
        "            proto._quic.send_stream_data = counted\n"
        "            msg = bytes([SINK]) + bytes(BULK_MESSAGE - 1)\n"
        "            for _ in range(20):\n"
        "                await proto.send_bounded(msg, limit)\n"
        "            await proto.send(bytes([REPORT]))\n"
        "            (got,) = struct.unpack('!Q', await proto.recv())\n"
        "        server.close()\n"
        "        print(got, most, limit)\n"
        "asyncio.run(main())\n"
    )
    got, most, limit = map(int, _bench("-c", code).stdout.split())
    assert got == 20 * 65535  # every message arrived whole
    assert limit - 65535 < most <= limit


def test_handshake_benchmark_runs_each_bare_round_unpatched_and_interleaved() -> None:
    proc = _bench(str(ROOT / "benchmarks" / "handshake.py"), "--handshakes", "3", "--repeat", "2")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("# ")]
    rounds = [line.split(":")[0] for line in lines if line.startswith("# round")]
    assert rounds == [
        "# round 1/2 asgi-p2p",
        "# round 1/2 aioquic",
        "# round 2/2 aioquic",
        "# round 2/2 asgi-p2p",
    ], lines
    # each bare round: a fresh process saying it ran unpatched, just before its round's line
    for i, line in enumerate(lines):
        if line.startswith("# round") and "aioquic:" in line:
            assert lines[i - 1] == f"# {UNPATCHED}", lines
    assert lines.count(f"# {UNPATCHED}") == 2
    assert "| CPU ms per handshake, both ends |" in proc.stdout


def test_sim_benchmark_bare_aioquic_row_runs_unpatched() -> None:
    proc = _bench(
        *(str(ROOT / "benchmarks" / "sim.py"), "--workloads", "quic", "--nodes", "2"),
        *("--seconds", "3", "--quic-intervals", "1"),
    )
    assert proc.stderr.splitlines().count(f"# {UNPATCHED}") == 1, proc.stderr
    assert "| bare aioquic (no simulator), 1 msg / 1 s / connection | 2 pairs |" in proc.stdout


def test_http_benchmark_aioquic_client_runs_unpatched() -> None:
    proc = _bench(
        *(str(ROOT / "benchmarks" / "http.py"), "--only-p2p", "--repeat", "1"),
        *("--requests", "20", "--concurrency", "2", "--big-mib", "1"),
    )
    lines = proc.stderr.splitlines()
    # the aioquic client's row, and only it, runs in a process of its own that says so
    assert lines[lines.index("round 1/1: p2p-aioquic ...") + 1] == f"  {UNPATCHED}", lines
    assert lines.count(f"  {UNPATCHED}") == 1, lines
    assert "| asgi-p2p h3, aioquic client (datagram 1200) |" in proc.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sendmmsg is Linux's")
def test_sendmmsg_benchmark_sends_every_datagram_every_way() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "sendmmsg.py"),
            "--repeat",
            "1",
            "--rounds",
            "5",
            "--datagrams",
            "8,2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr  # it exits non-zero if a datagram went missing
    out = proc.stdout
    for n in (8, 2):
        for how in ("sendto", "sendmmsg, packed", "sendmmsg, arrays prebuilt (the system call alone)"):
            assert f"| {n} | {how} | " in out, out
    assert "Machine:" in out


def test_tunnel_sender_packs_responses_as_moosicbox_does_and_reuses_its_app_connection() -> None:
    """The sender fills each WebSocket message up to 64 KiB (header included) before sending it, as
    MoosicBox's send_binary_stream: a small response is one packet with last=1, a download full packets
    then the rest; the second request reuses the first one's connection to the app; an app that is gone
    becomes one 502 packet."""
    import asyncio

    from benchmarks.tunnel import PACKET_BYTES, LocalApp, decode_packet, forward_request

    class Recorder:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        async def send(self, data: bytes) -> None:
            self.sent.append(data)

    async def exchange(local: LocalApp, path: str, rid: int) -> list[tuple[int, int, bool, int | None, bytes]]:
        ws = Recorder()
        req = {"type": "HTTP", "request_id": rid, "method": "GET", "path": path, "query": "", "headers": {}}
        await asyncio.wait_for(forward_request(ws, local, req, rid, asyncio.Event()), 30)
        assert all(len(m) <= PACKET_BYTES for m in ws.sent)
        return [(r, p, last, status, body) for r, p, last, status, _h, body in map(decode_packet, ws.sent)]

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    app, port = _start([sys.executable, str(ROOT / "benchmarks" / "tunnel.py"), "app", "--port", "0"], env)

    async def main() -> None:
        local = LocalApp(f"http://127.0.0.1:{port}")
        assert await exchange(local, "small", 5) == [(5, 1, True, 200, b"hello, world\n")]
        assert len(local.idle) == 1
        kept = local.idle[0]
        packets = await exchange(local, "big/1", 6)
        assert local.idle == [kept]  # the same connection served both
        assert [p for _, p, _, _, _ in packets] == list(range(1, len(packets) + 1))
        assert [last for _, _, last, _, _ in packets] == [False] * (len(packets) - 1) + [True]
        body = b"".join(b for *_, b in packets)
        assert len(body) == 1024 * 1024 and len(packets) == 17  # the headers and a body start, 15 full, the rest
        assert all(len(b) == PACKET_BYTES - 13 for *_, b in packets[1:-1])
        local.close()
        app.kill()
        app.communicate()
        gone = await exchange(LocalApp(f"http://127.0.0.1:{port}"), "small", 7)
        assert [(r, p, last, status) for r, p, last, status, _ in gone] == [(7, 1, True, 502)]
        assert gone[0][4].startswith(b"local app failed:")

    try:
        asyncio.run(main())
    finally:
        if app.poll() is None:
            app.kill()
            app.communicate()
