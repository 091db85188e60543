"""Real QUIC endpoints on a lossy simulated network; prints the trace hash.

Usage: python quic_scenario.py SEED [LOSS]
Used by the cross-process determinism test.
"""

from __future__ import annotations

import asyncio
import sys

from asgi_p2p import Endpoint, NetworkConfig, Node, SecretKey
from asgi_p2p.sim import Simulation


def run(seed: int, loss: float, messages: int = 40) -> tuple[str, int]:
    with Simulation(seed=seed, loss=loss, latency=0.02) as sim:
        config = NetworkConfig(connect_timeout=120.0, idle_timeout=300.0)
        names = ["alice", "bob", "carol"]
        hosts = [sim.host(n) for n in names]
        for lk in sim.links:
            lk.configure(jitter=0.005, reorder=0.05, duplicate=0.02)
        result: list[str] = []

        async def main() -> int:
            eps = [
                await Node.bind(SecretKey.from_seed(n), host="0.0.0.0", port=4433, config=config, network=h)
                for n, h in zip(names, hosts, strict=True)
            ]

            echoes: list[asyncio.Task[None]] = []

            async def serve(ep: Endpoint) -> None:
                async for inc in ep.listen():
                    echoes.append(asyncio.create_task(echo(inc)))

            async def echo(inc) -> None:  # type: ignore[no-untyped-def]
                async for msg in inc:
                    await inc.send(msg[::-1])

            servers = [asyncio.create_task(serve(ep)) for ep in eps]
            got = 0

            # bob and carol each talk to alice; carol also talks to bob
            async def client(src: Endpoint, dst: Endpoint) -> int:
                conn = await src.connect(dst.node_addr())
                n = 0
                for i in range(messages):
                    msg = f"{i:05d}".encode() * (1 + i % 50)
                    await conn.send(msg)
                    assert await conn.recv() == msg[::-1]
                    n += 1
                return n

            counts = await asyncio.gather(client(eps[1], eps[0]), client(eps[2], eps[0]), client(eps[2], eps[1]))
            got = sum(counts)
            result.append(sim.trace.hash())  # before closing: close order is not part of the scenario
            for t in servers:
                t.cancel()
            for ep in eps:
                await ep.close(timeout=0.5)
            return got

        total = sim.run(main(), time_limit=3600)
        return result[0], total


if __name__ == "__main__":
    h, n = run(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.3)
    print(n)
    print(h)
