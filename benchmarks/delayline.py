"""What one of the netns rig's delay lines costs: the C line against the Python fallback.

A rig (tests/netns/rig.py) with a public host whose link to the core has a delay line (``--delay-ms``
one way); a stream goes from that host through the line to the relay host, and the line's own CPU
time (user + system, from /proc/<pid>/stat) is read over the stream. Streams, each run for both lines
in alternating order (``--runs`` times, a fresh host and line per run and line):

- udp: QUIC-sized datagrams (1452 bytes of UDP payload, one 1494-byte frame each), paced at
  ``--mbit`` Mbit/s for ``--seconds``, dropped by an nftables rule on arrival (no receiving process);
- tcp: one TCP connection sending ``--tcp-mib`` MiB through ``tc tbf`` at ``--mbit`` Mbit/s;
- tcp-max: the same without the rate limit (what the line lets through: the rig's TCP ceiling).

Prints, per stream and line, the line's CPU in % of one core while the stream runs (and the share
of it spent in the kernel: system time, which includes the network stack's work on each frame the
line sends, up to the receiving socket, run in the line's context), its CPU µs per frame it
forwarded, frames per wakeup (forwarded frames over voluntary context switches) and the stream's
throughput: medians with every run's value in brackets.

    sudo python benchmarks/delayline.py [--runs 3] [--seconds 5] [--mbit 100] [--tcp-mib 20] [--delay-ms 20]

Needs root (network namespaces), like tests/netns.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
# this folder holds http.py: keep it off sys.path (it would shadow the stdlib `http`); the root goes on
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from benchmarks._machine import machine_description  # noqa: E402
from tests.netns.rig import DELAYLINE_ENV, Impair, Rig, expect_line, missing_requirements  # noqa: E402

LINES = ("c", "python")
STREAMS = ("udp", "tcp", "tcp-max")
UDP_PORT, TCP_PORT = 9, 5201
PAYLOAD = 1452  # a full QUIC datagram: 1480-byte IP packet, 1494-byte Ethernet frame

UDP_SOURCE = """
import json, socket, sys, time
dst, mbit, secs, size = (sys.argv[1], int(sys.argv[2])), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.connect(dst)
data, rate = b"x" * size, mbit * 1e6 / 8 / (size + 28)  # datagrams per second (IP + UDP headers)
print("ready", flush=True)
sys.stdin.readline()
start = time.monotonic()
sent = 0
while (now := time.monotonic()) - start < secs:
    due = int((now - start) * rate) + 1
    while sent < due:
        try:
            sock.send(data)
        except OSError:  # a full queue on the way: counted as not sent
            pass
        sent += 1
    time.sleep(0.0005)
print(json.dumps({"sent": sent, "secs": time.monotonic() - start}), flush=True)
"""

TCP_SINK = """
import socket, sys
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    while conn.recv(1 << 20):
        pass
    conn.close()
"""

TCP_SOURCE = """
import json, socket, sys, time
host, port, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
chunk = b"x" * (1 << 20)
print("ready", flush=True)
sys.stdin.readline()
start = time.monotonic()
with socket.create_connection((host, port), timeout=60) as s:
    for _ in range(nbytes // len(chunk)):
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # the sink closes once it has read everything
print(json.dumps({"bytes": nbytes, "secs": time.monotonic() - start}), flush=True)
"""


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, from /proc/<pid>/stat."""
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def wakeups(pid: int) -> int:
    """Voluntary context switches of a process: how often it slept and woke again."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def one_run(rig: Rig, n: int, line: str, stream: str, args: argparse.Namespace) -> dict[str, float]:
    os.environ[DELAYLINE_ENV] = line
    rate = 0 if stream != "tcp" else int(args.mbit * 1000)
    host = rig.public_host(f"s{n}", link=Impair(delay_ms=args.delay_ms, rate_kbit=rate))
    proc = rig.delay_lines[-1]
    if stream == "udp":
        src = rig.python(host, "-c", UDP_SOURCE, rig.relay.ip, str(UDP_PORT), str(args.mbit), str(args.seconds),
                         str(PAYLOAD))  # fmt: skip
    else:
        nbytes = args.tcp_mib << 20
        src = rig.python(host, "-c", TCP_SOURCE, rig.relay.ip, str(TCP_PORT), str(nbytes))
    expect_line(src, "^ready$", timeout=30)
    (u0, s0), w0, t0 = cpu_seconds(proc.pid), wakeups(proc.pid), time.monotonic()
    assert src.stdin is not None
    src.stdin.write("go\n")
    src.stdin.flush()
    got = json.loads(expect_line(src, r"^\{", timeout=600).string)
    time.sleep(args.delay_ms / 1000 + 0.05)  # the last frames leave the line
    (u1, s1), w1, wall = cpu_seconds(proc.pid), wakeups(proc.pid), time.monotonic() - t0
    cpu = u1 - u0 + s1 - s0
    proc.terminate()
    m = expect_line(proc, r"^stats forwarded=(\d+) dropped=(\d+)$", timeout=30)
    forwarded, dropped = int(m.group(1)), int(m.group(2))
    secs = float(got["secs"])
    mbit = (got["sent"] * (PAYLOAD + 28) if stream == "udp" else got["bytes"]) * 8 / secs / 1e6
    return {
        "cpu_pct": 100 * cpu / wall,
        "sys_share": (s1 - s0) / cpu if cpu else 0.0,
        "us_per_frame": 1e6 * cpu / max(1, forwarded),
        "frames_per_wakeup": forwarded / max(1, w1 - w0),
        "mbit": mbit,
        "forwarded": forwarded,
        "dropped": dropped,
    }


def cell(xs: list[float], digits: int) -> str:
    med = statistics.median(xs)
    if len(xs) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({' / '.join(f'{x:,.{digits}f}' for x in xs)})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs per stream and line, interleaved (default 3)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of the udp stream, s (default 5)")
    p.add_argument("--mbit", type=float, default=100.0, help="udp stream and tcp tbf rate, Mbit/s (default 100)")
    p.add_argument("--tcp-mib", type=int, default=20, help="bytes of each tcp stream, MiB (default 20)")
    p.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay of the line, ms (default 20)")
    p.add_argument("--streams", default=",".join(STREAMS), help=f"comma separated (default {','.join(STREAMS)})")
    p.add_argument("--json", metavar="PATH", help="also write every run's figures to PATH")
    args = p.parse_args()
    streams = [s for s in args.streams.split(",") if s]
    if not streams or set(streams) - set(STREAMS):
        p.error(f"--streams must name some of {', '.join(STREAMS)}")
    if args.runs < 1 or args.seconds <= 0 or args.mbit <= 0 or args.tcp_mib < 1 or args.delay_ms < 0:
        p.error("--runs, --seconds, --mbit and --tcp-mib must be positive, --delay-ms not negative")
    problem = missing_requirements()
    if problem:
        print(f"benchmarks/delayline.py: {problem}", file=sys.stderr)
        return 2
    machine = machine_description()
    results: dict[tuple[str, str], list[dict[str, float]]] = {(s, ln): [] for s in streams for ln in LINES}
    rig = Rig(tag="dlbench")
    try:
        drop = f"type filter hook input priority 0; policy accept; udp dport {UDP_PORT} drop"
        rig.nft(rig.relay.ns, f"table inet sink {{\n chain in {{\n {drop}\n }}\n}}\n")  # the udp stream ends here
        sink = rig.python(rig.relay, "-c", TCP_SINK, str(TCP_PORT))
        expect_line(sink, "^ready$", timeout=30)
        n = 0
        for run in range(args.runs):
            for stream in streams:
                for line in LINES if (run + streams.index(stream)) % 2 == 0 else LINES[::-1]:
                    n += 1
                    res = one_run(rig, n, line, stream, args)
                    results[(stream, line)].append(res)
                    print(f"run {run + 1} {stream} {line}: {json.dumps(res)}", file=sys.stderr, flush=True)
    finally:
        os.environ.pop(DELAYLINE_ENV, None)
        rig.close()
    print(f"One delay line ({args.delay_ms:g} ms one way) forwarding a stream from a host to the relay host; "
          f"{args.runs} interleaved run(s); medians (per-run values).")  # fmt: skip
    print()
    print("| stream | line | line CPU, % of a core | of it in the kernel, % | line CPU µs per forwarded frame "
          "| frames per wakeup | stream Mbit/s | dropped |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    titles = {
        "udp": f"UDP {PAYLOAD} B datagrams paced at {args.mbit:g} Mbit/s",
        "tcp": f"TCP {args.tcp_mib} MiB through tbf {args.mbit:g} Mbit/s",
        "tcp-max": f"TCP {args.tcp_mib} MiB, no rate limit",
    }
    for stream in streams:
        for line in LINES:
            rs = results[(stream, line)]
            print(f"| {titles[stream]} | {line} | {cell([r['cpu_pct'] for r in rs], 1)} | "
                  f"{cell([100 * r['sys_share'] for r in rs], 0)} | {cell([r['us_per_frame'] for r in rs], 1)} | "
                  f"{cell([r['frames_per_wakeup'] for r in rs], 1)} | {cell([r['mbit'] for r in rs], 1)} | "
                  f"{cell([r['dropped'] for r in rs], 0)} |")  # fmt: skip
    print()
    print(f"Machine: {machine}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{s}/{ln}": rs for (s, ln), rs in results.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
