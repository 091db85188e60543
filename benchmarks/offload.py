"""UDP offload with GSO and without: bulk throughput and CPU of asgi-p2p (``udp_offload``).

    python benchmarks/offload.py [--repeat 3] [--bulk-mib 20] [--datagram-sizes 1200,16000]

Runs ``benchmarks/transport.py``'s bulk phase (asgi-p2p only: one connection, raw messages,
server and client in separate processes on 127.0.0.1, path probing off) with
``ASGI_P2P_UDP_OFFLOAD=gso+gro`` and ``=off`` in both processes, alternating (``--repeat``
rounds, the order swapping each round), and prints medians and every run's values of
MB/s and CPU ms per MiB (client + server), same-limits rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

from benchmarks._machine import load_average, machine_description  # noqa: E402

_ROWS = {
    "bulk {mib} MiB one way, one connection, MB/s, same limits": "MB/s",
    "bulk, same limits: CPU ms per MiB (client + server)": "CPU ms/MiB",
}


def one_run(setting: str, args: argparse.Namespace) -> dict[tuple[str, int], float]:
    env = dict(os.environ, ASGI_P2P_UDP_OFFLOAD=setting, PYTHONPATH=os.path.dirname(_HERE))
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(_HERE, "transport.py"),
            "--phases",
            "bulk",
            "--only",
            "asgi-p2p",
            "--bulk-mib",
            f"{args.bulk_mib:g}",
            "--datagram-sizes",
            args.datagram_sizes,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    values: dict[tuple[str, int], float] = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3:
            continue
        for pattern, metric in _ROWS.items():
            if cells[0] == pattern.format(mib=f"{args.bulk_mib:g}"):
                values[(metric, int(cells[1]))] = float(cells[2].split()[0])
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bulk-mib", type=float, default=20)
    parser.add_argument("--datagram-sizes", default="1200,16000")
    args = parser.parse_args()
    if args.repeat < 1 or args.bulk_mib <= 0:
        parser.error("--repeat must be at least 1 and --bulk-mib positive")
    print(f"Machine: {machine_description()}", flush=True)
    runs: dict[str, list[dict[tuple[str, int], float]]] = {"gso+gro": [], "off": []}
    for rnd in range(args.repeat):
        order = ["gso+gro", "off"] if rnd % 2 == 0 else ["off", "gso+gro"]
        for setting in order:
            print(f"round {rnd + 1}/{args.repeat}: udp_offload={setting} (load {load_average()})", file=sys.stderr)
            runs[setting].append(one_run(setting, args))
    print(f"\nRuns: {args.repeat}, alternating; load at the end: {load_average()}\n")
    print("| metric | datagram size | udp_offload=gso+gro: median (runs) | off: median (runs) | gso+gro / off |")
    print("|---|---|---|---|---|")
    for key in runs["gso+gro"][0]:
        on = [r[key] for r in runs["gso+gro"]]
        off = [r[key] for r in runs["off"]]

        def cell(vs: list[float]) -> str:
            return f"{statistics.median(vs):.1f} ({' / '.join(f'{v:.1f}' for v in vs)})"

        ratio = statistics.median(on) / statistics.median(off)
        print(f"| {key[0]} | {key[1]} | {cell(on)} | {cell(off)} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
