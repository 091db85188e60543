"""Gateway benchmarks (issue 13): what ``asgi-p2p proxy`` and ``asgi-p2p gateway`` cost.

    python benchmarks/gateways.py [--only proxy|gateway] [--mib 100] [--repeat 5] [--requests 300]

Prints the machine (the machine is shared: other jobs run during the benchmark), then

* the proxy table (benchmarks/_proxy.py): a ``--mib`` MiB download through
  ``asgi-p2p proxy`` in front of nginx vs the same file from an ASGI app served directly vs
  nginx over HTTP/1.1, ``--repeat`` interleaved rounds;
* the gateway table (benchmarks/_gateway_rows.py): one small GET at a time through
  ``asgi-p2p gateway`` vs ``P2PTransport`` straight to the peer vs nginx, ``--repeat``
  interleaved rounds of ``--requests`` requests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _gateway_rows, _proxy  # noqa: E402
from benchmarks._machine import machine_description  # noqa: E402


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("proxy", "gateway"), help="run one table only (default: both)")
    parser.add_argument("--mib", type=_positive, default=100, help="proxy: size of the downloaded file (default 100)")
    parser.add_argument("--repeat", type=_positive, default=5, help="interleaved rounds of each table (default 5)")
    parser.add_argument(
        "--requests", type=_positive, default=300, help="gateway: requests per row and round (default 300)"
    )
    parser.add_argument(
        "--size", type=_positive, default=_gateway_rows.BODY_SIZE, help="gateway: response body bytes (default 100)"
    )
    args = parser.parse_args()
    print(f"Machine: {machine_description()}\n", flush=True)
    if args.only in (None, "proxy"):
        print(_proxy.run(args.mib, args.repeat), flush=True)
    if args.only is None:
        print()
    if args.only in (None, "gateway"):
        print("\n".join(_gateway_rows.gateway_rows(args.repeat, args.requests, args.size)), flush=True)


if __name__ == "__main__":
    main()
