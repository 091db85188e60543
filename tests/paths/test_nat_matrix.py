"""The NAT traversal matrix on the simulator (issue 5).

For every pair of {no NAT, EIM/EIF (full cone), EIM/APDF (port-restricted cone),
symmetric}, two endpoints that know only each other's node id and their shared
relay connect; the connection must work at once (through the relay) for every
pair and every seed, become direct exactly where RFC 4787 theory says hole
punching can work, and stay on the relay otherwise.  Swept over 50 seeds with 2%
loss and jitter on every link; the time until direct is reported per pair.

Theory (both sides learn each other's relay-reflected address and punch at the
same time; an authenticated probe from an unknown address becomes a candidate):

* endpoint-independent mapping on both sides: direct (the reflected addresses are
  the ones the peer's probes come from);
* a symmetric NAT facing no NAT or a full cone: direct (the symmetric side's probe
  reaches the open side from a new port, which the open side learns and answers);
* a symmetric NAT facing a port-restricted cone or another symmetric NAT: relay
  (each side's probes leave from a port the other side never learned, and the
  filtering side drops them).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import statistics

from asgi_p2p import Endpoint, NetworkConfig, Node, NodeAddr, SecretKey
from asgi_p2p.endpoint.connection import PeerConnection
from asgi_p2p.relay.server import RelayServer
from asgi_p2p.sim import Host, Simulation

KINDS: dict[str, str | None] = {
    "none": None,
    "EIM/EIF": "full-cone",
    "EIM/APDF": "port-restricted-cone",
    "symmetric": "symmetric",
}
PAIRS = list(itertools.combinations_with_replacement(KINDS, 2))
SEEDS = int(os.environ.get("ASGI_P2P_NAT_MATRIX_SEEDS", "50"))
#: Virtual seconds a pair gets to go direct (and that a relayed pair must stay relayed).
WINDOW = 20.0


def theory_direct(a: str, b: str) -> bool:
    return {a, b} not in ({"symmetric"}, {"symmetric", "EIM/APDF"})


def _peer_conn(ep: Endpoint, other: Endpoint) -> PeerConnection:
    (conn,) = [c for c in ep.connections if c.remote_node_id == other.node_id]
    return conn


async def _wait_direct(conn: PeerConnection, timeout: float) -> bool:
    if conn.path.kind == "direct":
        return True
    events = conn.path_events()

    async def watch() -> None:
        async for event in events:
            if event.path.kind == "direct":
                return

    try:
        await asyncio.wait_for(watch(), timeout)
    except TimeoutError:
        return False
    return True


def run_seed(seed: int) -> list[float | None]:
    """Time until direct (virtual seconds) per pair, None where it stayed relayed."""
    sim = Simulation(seed=seed, latency=0.02, loss=0.02, mtu=1500, keep_trace=False)
    with sim:
        relay_host = sim.host("relay")
        ends: list[tuple[Host, Host]] = [
            (sim.host(f"a{i}", nat=KINDS[ka]), sim.host(f"b{i}", nat=KINDS[kb])) for i, (ka, kb) in enumerate(PAIRS)
        ]
        for a, b in ends:
            for x, y in ((a, b), (a, relay_host), (b, relay_host)):
                sim.link(x, y, jitter=0.005)

        async def main() -> list[float | None]:
            relay = await RelayServer.bind(SecretKey.from_seed("relay"), host="0.0.0.0", port=3478, network=relay_host)
            url = str(relay.url)
            loop = asyncio.get_running_loop()

            async def bind(name: str, host: Host) -> Endpoint:
                return await Node.bind(
                    SecretKey.from_seed(name),
                    host="0.0.0.0",
                    port=4433,
                    config=NetworkConfig(),
                    network=host,
                    rng=random.Random(f"{name}-{seed}"),
                    relay_url=url,
                )

            async def pair(i: int) -> float | None:
                ea, eb = await bind(f"a{i}", ends[i][0]), await bind(f"b{i}", ends[i][1])
                try:
                    assert ea.relay is not None and eb.relay is not None
                    await ea.relay.wait_connected(20)
                    await eb.relay.wait_connected(20)
                    start = loop.time()
                    conn = await eb.connect(NodeAddr(ea.node_id, relay_url=url))
                    inc = await ea.listen().accept()
                    await conn.send(b"hello")
                    assert await inc.recv() == b"hello"
                    dialer = _peer_conn(eb, ea)
                    direct = await _wait_direct(dialer, WINDOW)
                    took = loop.time() - start if direct else None
                    if direct:  # and the accepting side agrees
                        assert await _wait_direct(_peer_conn(ea, eb), WINDOW), f"pair {PAIRS[i]}: acceptor not direct"
                    # The connection still carries data both ways, whatever the path.
                    await conn.send(b"x" * 20_000)
                    assert await inc.recv() == b"x" * 20_000
                    await inc.send(b"back")
                    assert await conn.recv() == b"back"
                    return took
                finally:
                    await ea.close(timeout=0.5)
                    await eb.close(timeout=0.5)

            try:
                return list(await asyncio.gather(*(pair(i) for i in range(len(PAIRS)))))
            finally:
                await relay.close(timeout=0.5)

        return sim.run(main(), time_limit=600)


def test_nat_matrix_over_seeds() -> None:
    results: dict[tuple[str, str], list[float | None]] = {p: [] for p in PAIRS}
    wrong: list[str] = []
    for seed in range(1, SEEDS + 1):
        for p, took in zip(PAIRS, run_seed(seed), strict=True):
            results[p].append(took)
            expect = theory_direct(*p)
            if (took is not None) != expect:
                seen, want = ("direct" if took is not None else "relay"), ("direct" if expect else "relay")
                wrong.append(f"seed {seed} {p[0]} x {p[1]}: {seen}, theory says {want}")
    lines = ["| NAT a | NAT b | theory | direct | time to direct, median / max (virtual s) |", "|---|---|---|---|---|"]
    for p, times in results.items():
        got = [t for t in times if t is not None]
        span = f"{statistics.median(got):.2f} / {max(got):.2f}" if got else "-"
        theory = "direct" if theory_direct(*p) else "relay"
        lines.append(f"| {p[0]} | {p[1]} | {theory} | {len(got)}/{len(times)} | {span} |")
    print("\n".join(lines))
    assert not wrong, "\n".join(wrong) + "\n" + "\n".join(lines)
