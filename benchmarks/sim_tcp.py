"""Simulated TCP speed: MB of virtual data moved per wall second.

Workloads (two public hosts, 20 ms one way, asyncio streams on both ends):

* ``bulk``: one connection, the client writes ``--megabytes`` MB in 64 KiB writes (awaiting
  ``drain()``), the server reads it all with ``read(65536)`` and answers the byte count.
* ``bulk, 1% loss``: the same over a link losing 1% of packets (retransmission delays).
* ``echo``: ``--connections`` connections each send 4 KiB and read it back, repeated until
  ``--megabytes`` MB went each way (request/response traffic, many small segments).

MB = 10^6 bytes of payload delivered to the receiving application; wall time covers the
transfer only (the real ``time.perf_counter``: inside a simulation ``time.perf_counter`` is
the virtual clock, so the script reads ``asgi_p2p.sim.determinism.real_perf_counter``).
Target (issue 16): at least 20 MB per wall second.

Usage: python benchmarks/sim_tcp.py [--megabytes 200] [--connections 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

# measure the checkout this script is in, not whatever asgi_p2p is installed; and drop this
# script's directory from the path: benchmarks/http.py would shadow the standard library's http
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from asgi_p2p.sim import Simulation  # noqa: E402 - after the path fix above
from asgi_p2p.sim.determinism import real_perf_counter  # noqa: E402 - after the path fix above
from benchmarks._machine import machine_description  # noqa: E402 - after the path fix above

TARGET_MB_PER_S = 20.0


@dataclass
class Result:
    workload: str
    megabytes: float
    wall: float
    virtual: float
    segments: int

    @property
    def mb_per_wall_s(self) -> float:
        return self.megabytes / self.wall


def bench_bulk(megabytes: float, loss: float = 0.0, seed: int = 1) -> Result:
    sim = Simulation(seed=seed, latency=0.02, loss=loss, keep_trace=False)
    a, b = sim.host("a"), sim.host("b")
    total = int(megabytes * 1e6)
    marks: dict[str, float] = {}

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        while data := await reader.read(65536):
            n += len(data)
        writer.write(str(n).encode())
        await writer.drain()
        writer.close()

    async def main() -> None:
        await b.start_server(sink, port=9000)
        reader, writer = await a.open_connection(b.address, 9000)
        chunk = b"x" * 65536
        marks["wall"], marks["virtual"] = real_perf_counter(), sim.now
        sent = 0
        while sent < total:
            piece = chunk[: total - sent]
            writer.write(piece)
            sent += len(piece)
            await writer.drain()
        writer.write_eof()
        received = int(await reader.read())
        marks["wall"], marks["virtual"] = real_perf_counter() - marks["wall"], sim.now - marks["virtual"]
        if received != total:
            raise RuntimeError(f"received {received} bytes, sent {total}")
        writer.close()
        await asyncio.sleep(1)

    sim.run(main(), time_limit=1e6)
    result = Result(
        f"bulk, 1 connection{f', {loss:.0%} loss' if loss else ''}",
        total / 1e6,
        marks["wall"],
        marks["virtual"],
        sim.tcp.segments,
    )
    sim.close()
    return result


def bench_echo(megabytes: float, connections: int, seed: int = 1) -> Result:
    sim = Simulation(seed=seed, latency=0.02, loss=0.0, keep_trace=False)
    a, b = sim.host("a"), sim.host("b")
    size = 4096
    rounds = max(1, int(megabytes * 1e6 / size / connections))
    marks: dict[str, float] = {}

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def client() -> None:
        reader, writer = await a.open_connection(b.address, 9000)
        message = b"m" * size
        for _ in range(rounds):
            writer.write(message)
            await reader.readexactly(size)
        writer.close()

    async def main() -> None:
        await b.start_server(echo, port=9000)
        marks["wall"], marks["virtual"] = real_perf_counter(), sim.now
        await asyncio.gather(*(client() for _ in range(connections)))
        marks["wall"], marks["virtual"] = real_perf_counter() - marks["wall"], sim.now - marks["virtual"]
        await asyncio.sleep(1)  # the servers see the clients' FINs and finish

    sim.run(main(), time_limit=1e6)
    moved = 2 * rounds * connections * size / 1e6  # both directions
    result = Result(
        f"echo, {connections} connections, 4 KiB messages", moved, marks["wall"], marks["virtual"], sim.tcp.segments
    )
    sim.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=200.0, help="MB per bulk run")
    parser.add_argument("--echo-megabytes", type=float, default=20.0, help="MB each way in the echo run")
    parser.add_argument("--connections", type=int, default=10, help="connections of the echo run")
    args = parser.parse_args()
    print(f"Machine: {machine_description()}")
    print("| workload | MB moved | wall s | virtual s | segments | MB / wall s | target |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in (
        bench_bulk(args.megabytes),
        bench_bulk(args.megabytes, loss=0.01),
        bench_echo(args.echo_megabytes, args.connections),
    ):
        verdict = "met" if r.mb_per_wall_s >= TARGET_MB_PER_S else "MISSED"
        print(
            f"| {r.workload} | {r.megabytes:,.1f} | {r.wall:.3f} | {r.virtual:,.1f} | {r.segments:,} | "
            f"{r.mb_per_wall_s:,.0f} | >= {TARGET_MB_PER_S:g} {verdict} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
