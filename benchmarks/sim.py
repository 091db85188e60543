"""Simulator speed: simulated seconds per wall second, delivered packets per wall second.

Workloads (default latency 50 ms, 1% loss, full mesh):

* ``udp``: every node sends a 200-byte datagram to a random other node every
  100 ms of virtual time; the receiver answers it.
* ``quic``: every node keeps a QUIC connection (the real asgi_p2p Endpoint) to two
  others and sends a 200-byte message on each every second; the peer echoes it.

Usage: python benchmarks/sim.py [--seconds 60] [--nodes 2,10,100]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass

from asgi_p2p import Endpoint, MessageConnection, NetworkConfig, SecretKey
from asgi_p2p.sim import Simulation


@dataclass
class Result:
    workload: str
    nodes: int
    virtual: float
    wall: float
    delivered: int

    @property
    def speedup(self) -> float:
        return self.virtual / self.wall

    @property
    def packets_per_s(self) -> float:
        return self.delivered / self.wall


def bench_udp(n: int, seconds: float, seed: int = 1, interval: float = 0.1) -> Result:
    sim = Simulation(seed=seed, keep_trace=False)
    hosts = [sim.host(f"n{i}") for i in range(n)]
    rng = random.Random(seed)

    async def main() -> None:
        socks = []
        for h in hosts:
            holder: list = []  # type: ignore[type-arg]

            def receive(data: bytes, addr: tuple[str, int], holder: list = holder) -> None:  # type: ignore[type-arg]
                if data[0] == 0x71:  # "q": answer
                    holder[0].sendto(b"r" + data[1:], addr)

            s = await h.bind("0.0.0.0", 9000, receive)
            holder.append(s)
            socks.append(s)
        payload = b"q" + b"\0" * 199

        async def node(i: int) -> None:
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            await asyncio.sleep(rng.random() * interval)
            while loop.time() < end:
                j = rng.randrange(n - 1)
                j = j + 1 if j >= i else j
                socks[i].sendto(payload, (hosts[j].address, 9000))
                await asyncio.sleep(interval)

        await asyncio.gather(*(node(i) for i in range(n)))
        await asyncio.sleep(1)

    wall = time.perf_counter()
    sim.run(main(), time_limit=seconds + 60)
    wall = time.perf_counter() - wall
    result = Result(f"udp, 1 msg / {interval:g} s / node", n, sim.now, wall, sim.delivered)
    sim.close()
    return result


def bench_quic(n: int, seconds: float, seed: int = 1) -> Result:
    sim = Simulation(seed=seed, keep_trace=False)
    hosts = [sim.host(f"n{i}") for i in range(n)]

    async def main() -> None:
        config = NetworkConfig(connect_timeout=30.0)
        eps = [
            await Endpoint.bind(SecretKey.from_seed(f"n{i}"), host="0.0.0.0", port=4433, config=config, network=h)
            for i, h in enumerate(hosts)
        ]

        async def echo(inc: MessageConnection) -> None:
            async for msg in inc:
                await inc.send(msg)

        echoes: list[asyncio.Task[None]] = []

        async def serve(ep: Endpoint) -> None:
            async for inc in ep.listen():
                echoes.append(asyncio.create_task(echo(inc)))

        servers = [asyncio.create_task(serve(ep)) for ep in eps]

        async def talk(i: int, k: int) -> None:
            conn = await eps[i].connect(eps[(i + k) % n].node_addr())
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            while loop.time() < end:
                await conn.send(b"m" * 200)
                await conn.recv()
                await asyncio.sleep(1.0)

        peers = [1, 2] if n > 2 else [1]
        await asyncio.gather(*(talk(i, k) for i in range(n) for k in peers))
        for t in servers:
            t.cancel()
        for ep in eps:
            await ep.close(timeout=0.5)

    wall = time.perf_counter()
    sim.run(main(), time_limit=seconds + 600)
    wall = time.perf_counter() - wall
    result = Result("quic, 1 msg / s / connection", n, sim.now, wall, sim.delivered)
    sim.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="virtual seconds per run")
    parser.add_argument("--nodes", default="2,10,100", help="comma-separated node counts")
    parser.add_argument("--workloads", default="udp,quic", help="udp,quic")
    parser.add_argument("--udp-intervals", default="0.1,1", help="seconds between a node's UDP messages")
    args = parser.parse_args()
    sizes = [int(x) for x in args.nodes.split(",")]
    workloads = args.workloads.split(",")
    print("| workload | nodes | simulated s | wall s | simulated s / wall s | delivered packets | packets / wall s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    runs: list[tuple[str, float]] = []
    for workload in workloads:
        if workload == "udp":
            runs += [("udp", float(x)) for x in args.udp_intervals.split(",")]
        else:
            runs.append((workload, 1.0))
    for workload, interval in runs:
        for n in sizes:
            if workload == "udp":
                r = bench_udp(n, args.seconds, interval=interval)
            else:
                r = bench_quic(n, args.seconds)
            print(
                f"| {r.workload} | {r.nodes} | {r.virtual:.1f} | {r.wall:.3f} | {r.speedup:,.0f}x | "
                f"{r.delivered:,} | {r.packets_per_s:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
