"""A UDP scenario for the cross-process determinism test: prints its trace hash.

Usage: python determinism_scenario.py SEED [LOSS]
"""

from __future__ import annotations

import asyncio
import sys

from asgi_p2p.sim import Simulation


def run(seed: int, loss: float, keep_trace: bool = True) -> str:
    with Simulation(seed=seed, loss=loss, keep_trace=keep_trace) as sim:
        kinds = ["none", "full-cone", "port-restricted-cone", "symmetric", "none", "restricted-cone"]
        hosts = [sim.host(f"h{i}", nat=k) for i, k in enumerate(kinds)]
        for lk in sim.links:
            lk.configure(jitter=0.01, reorder=0.1, duplicate=0.05)

        async def main() -> None:
            socks = [await h.bind("0.0.0.0", 7000, lambda d, a: None) for h in hosts]
            replies: dict[str, int] = {}

            def make_receiver(i: int):  # type: ignore[no-untyped-def]
                def receive(data: bytes, addr: tuple[str, int]) -> None:
                    replies[f"{i}:{addr}"] = replies.get(f"{i}:{addr}", 0) + 1
                    if not data.startswith(b"r"):
                        socks[i].sendto(b"r" + data, addr)

                return receive

            for i, s in enumerate(socks):
                s.receiver = make_receiver(i)
            for rnd in range(30):
                for i, s in enumerate(socks):
                    for j, h in enumerate(hosts):
                        if i != j and h.nat is None:
                            s.sendto(b"x" * (100 + 37 * ((i + j + rnd) % 20)), (h.address, 7000))
                await asyncio.sleep(sim.rng.uniform(0.01, 0.1))
            await asyncio.sleep(2)

        sim.run(main())
        return sim.trace.hash()


if __name__ == "__main__":
    print(run(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.3))
