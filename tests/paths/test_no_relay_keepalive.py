"""Without a relay, an idle direct connection carries no signed disco keepalives.

There is nothing to fall back to, so the paths layer leaves liveness to QUIC (its
keepalive holds NAT mappings, its idle timeout detects a dead peer); with a relay
the disco keepalive runs (tests/paths/test_relay_paths.py, test_failover.py).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from asgi_p2p import Endpoint, NetworkConfig, SecretKey
from asgi_p2p.sim import Simulation


def test_idle_direct_connection_without_relay_sends_no_disco_keepalives() -> None:
    sim = Simulation(seed=5, latency=0.02, loss=0.0)
    with sim:
        ha, hb = sim.host("a"), sim.host("b")

        async def main() -> tuple[int, int, bytes]:
            cfg = NetworkConfig()
            ea = await Endpoint.bind(
                SecretKey.from_seed("a"), host="0.0.0.0", port=4433, config=cfg, network=ha, rng=random.Random(1)
            )
            eb = await Endpoint.bind(
                SecretKey.from_seed("b"), host="0.0.0.0", port=4433, config=cfg, network=hb, rng=random.Random(2)
            )
            seen: list[float] = []
            loop = asyncio.get_running_loop()
            original = eb._disco_received

            def counting(*args: Any, **kwargs: Any) -> None:
                seen.append(loop.time())
                original(*args, **kwargs)

            eb._disco_received = counting  # type: ignore[method-assign]
            conn = await ea.connect(eb.node_addr())
            inc = await eb.listen().accept()
            await conn.send(b"x" * 100_000)  # enough datagrams to start the size search
            got = await inc.recv()
            await asyncio.sleep(20)  # size probing settles
            before = len(seen)
            await asyncio.sleep(60)  # idle: QUIC keepalives only
            after = len(seen)
            await conn.send(b"still here")
            last = await inc.recv()
            await ea.close()
            await eb.close()
            assert len(got) == 100_000
            return before, after, last

        before, after, last = sim.run(main(), time_limit=300)
        assert before > 0  # the size search did use disco probes
        assert after == before, f"{after - before} disco packets on an idle connection without a relay"
        assert last == b"still here"
