"""Gateway benchmarks: ``asgi-p2p proxy`` in front of nginx vs an ASGI app served directly vs nginx.

    python benchmarks/gateways.py [--mib 100] [--repeat 5]

Prints the machine (the machine is shared: other jobs run during the benchmark), then the
proxy table (see benchmarks/_proxy.py for what each row measures).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _proxy  # noqa: E402
from benchmarks._machine import machine_description  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=100, help="size of the downloaded file (default 100 MiB)")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds (default 5)")
    args = parser.parse_args()
    print(f"Machine: {machine_description()}\n")
    print(_proxy.run(args.mib, args.repeat))


if __name__ == "__main__":
    main()
