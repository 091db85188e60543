"""Bulk over a WAN-shaped simulated path: flow-control windows and congestion controllers.

Two hosts on one simulated link: 40 ms one way (80 ms RTT: two homes 20 ms from the
internet each), 100 Mbit/s, so the bandwidth-delay product is 1 MB; the link's queue
holds ``--queues`` bytes (one BDP, and a shallow quarter BDP). Bob sends ``--mb`` MB
of 64 KiB messages to Alice, who reads at once. Virtual time, so the numbers do not
depend on the machine; each row is run for ``--seeds`` seeds (the seed draws the
losses). Columns: the whole transfer's rate, the rate over its second half (after
slow start), the receiver's final stream window and the sender's final send buffer.

Rows: windows fixed at the old 256 KiB defaults vs auto-tuned (the defaults), and
Reno vs CUBIC, at 0% and ``--loss`` random loss (lossy rows send an eighth of ``--mb``:
they run at a few hundred kB/s), for each initial congestion window of ``--iw`` (packets;
default: the configured default). Window and send buffer: the last seed's, at the end.

With ``--compare cubic,bbr`` (any controllers), instead: one row per condition of
``CONDITIONS``, a cell per controller with the median and the per-seed values (``--seeds``;
lossy rows ``--lossy-seeds``, default 1-15), each flow timed from its first send to its last
byte read (the handshake left out): the rig's path at a 1 MB and a 262 kB queue, the LAN
path (10 ms one way, 1 Gbit/s, 262 kB queue), relayed (both hosts behind symmetric NATs, 20
ms / 100 Mbit/s / 1 MB queue each from the relay), 2 MiB at 1% loss, the rig's lossy profile
(100 ms one way, 20 Mbit/s, 500 kB queue) at 0.1%, 1% and 3% loss, four 5 MiB flows
(separate nodes, so separate controllers) after 3 s idle, at once and 0.3 s apart
(aggregate MB/s, Jain's fairness index, slowest flow's MB/s); then, for two controllers,
one flow of each at once (10 MiB each, 1 MB and 262 kB queue): the first one's share of
the bytes both had read when the first flow finished. ``--only TEXT`` runs the conditions
whose name contains it (``compet``: the shared-link pair only).

Usage: python benchmarks/windows.py [--mb 16] [--seeds 1,2,3] [--loss 0.01] [--queues 1000000,262144] [--iw 32,64]
       python benchmarks/windows.py --compare cubic,bbr [--seeds 1,2,3] [--lossy-seeds 1-15] [--only TEXT]
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# this folder holds http.py, which would shadow the stdlib `http` (httpx imports it): keep it off
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asgi_p2p import NetworkConfig, Node, SecretKey
from asgi_p2p.messages import MessageConnection
from asgi_p2p.sim import Simulation

ONE_WAY = 0.040
BANDWIDTH = 100e6
CHUNK = b"x" * 65536


@dataclass
class Result:
    rate: float  # bytes per virtual second, whole transfer
    steady: float  # second half
    window: int
    send_buffer: int


def bulk(config: NetworkConfig, total: int, *, loss: float, queue: int, seed: int) -> Result:
    sim = Simulation(seed=seed, latency=ONE_WAY, loss=0.0)
    a, b = sim.host("alice"), sim.host("bob")
    sim.link(a, b, latency=ONE_WAY, loss=loss, bandwidth=BANDWIDTH, queue_bytes=queue)
    marks: list[tuple[float, int]] = []
    final: list[tuple[int, int]] = []

    async def main() -> None:
        ea = await Node.bind(SecretKey.from_seed("alice"), host="0.0.0.0", port=4433, config=config, network=a)
        eb = await Node.bind(SecretKey.from_seed("bob"), host="0.0.0.0", port=4433, config=config, network=b)
        conn = await eb.connect(ea.node_addr())

        async def send() -> None:
            for _ in range(total // len(CHUNK)):
                await conn.send(CHUNK)

        task = asyncio.create_task(send())
        inc = await ea.listen().accept()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        got = 0
        while got < total:
            got += len(await inc.recv())
            marks.append((loop.time() - t0, got))
        await task
        (window,) = inc.peer_connection.receive_windows[1].values()
        out = conn._out_stream
        assert out is not None
        final.append((window, conn.peer_connection.send_buffer_limit(out)))
        await eb.close()
        await ea.close()

    try:
        sim.run(main(), time_limit=3600.0)
    finally:
        sim.close()
    end, done = marks[-1]
    t_half, half = next(m for m in marks if m[1] >= done // 2)
    return Result(done / end, (done - half) / (end - t_half), *final[0])


# -- controllers compared on more paths (--compare) ------------------------------------------


@dataclass(frozen=True)
class Path_:
    """A simulated path: one link (or two, via a relay), its one-way delay, rate, queue and loss."""

    one_way: float = ONE_WAY
    bandwidth: float = BANDWIDTH
    queue: int = 1_000_000
    loss: float = 0.0
    relayed: bool = False


@dataclass(frozen=True)
class Flow:
    cc: str
    mib: float
    start: float = 0.0  # seconds after the first flow starts


def flows(path: Path_, specs: list[Flow], *, seed: int, idle: float = 0.0) -> tuple[list[float], list[int]]:
    """Run ``specs`` (one connection each, between separate nodes, so separate controllers)
    over ``path``; each flow's rate (bytes per virtual second from its first send to its
    last byte read), and the bytes each had read when the first finished. With ``idle``,
    the connections wait that long after the handshake."""
    sim = Simulation(seed=seed, latency=path.one_way, loss=0.0)
    link = {"latency": path.one_way, "loss": path.loss, "bandwidth": path.bandwidth, "queue_bytes": path.queue}
    if path.relayed:  # both behind symmetric NATs: no direct path; each half the delay from the relay
        r = sim.host("relayh")
        a, b = sim.host("alice", nat="symmetric"), sim.host("bob", nat="symmetric")
        half = {**link, "latency": path.one_way / 2}
        sim.link(a, r, **half)
        sim.link(b, r, **half)
    else:
        a, b = sim.host("alice"), sim.host("bob")
        sim.link(a, b, **link)
    rates: list[float] = []
    #: bytes each flow had read when the first one finished (the competition while all ran)
    overlap: list[int] = []

    async def main() -> None:
        url = await sim.relay(r) if path.relayed else None
        pairs = []
        for i, spec in enumerate(specs):
            cfg = NetworkConfig(connect_timeout=60.0, congestion_control=spec.cc)
            common: dict[str, Any] = {"host": "0.0.0.0", "port": 4433 + i, "config": cfg, "relay_url": url}
            ea = await Node.bind(SecretKey.from_seed(f"alice{i}"), network=a, **common)
            eb = await Node.bind(SecretKey.from_seed(f"bob{i}"), network=b, **common)
            if url is not None:
                assert ea.relay is not None and eb.relay is not None
                await ea.relay.wait_connected(10)
                await eb.relay.wait_connected(10)
            pairs.append((ea, eb))
        if url is not None:
            await asyncio.sleep(1.5)  # as benchmarks/relay_plane.py: the relay paths settle
        conns = []
        for ea, eb in pairs:
            conn = await eb.connect(ea.node_addr())
            await conn.send(b"hello")
            inc = await ea.listen().accept()
            assert await inc.recv() == b"hello"
            conns.append((conn, inc))
        loop = asyncio.get_running_loop()
        await asyncio.sleep(idle)
        t0 = loop.time()

        got = [0] * len(specs)

        async def one(k: int, spec: Flow, conn: MessageConnection, inc: MessageConnection) -> float:
            await asyncio.sleep(max(0.0, t0 + spec.start - loop.time()))
            total = int(spec.mib * (1 << 20)) // len(CHUNK) * len(CHUNK)
            start = loop.time()

            async def send() -> None:
                for _ in range(total // len(CHUNK)):
                    await conn.send(CHUNK)

            task = asyncio.create_task(send())
            while got[k] < total:
                got[k] += len(await inc.recv())
            if not overlap:
                overlap.extend(got)
            await task
            return total / (loop.time() - start)

        rates.extend(
            await asyncio.gather(*(one(k, s, c, i) for k, (s, (c, i)) in enumerate(zip(specs, conns, strict=True))))
        )
        for ea, eb in pairs:
            await eb.close()
            await ea.close()

    try:
        sim.run(main(), time_limit=3600.0)
    finally:
        sim.close()
    return rates, overlap


def jain(xs: list[float]) -> float:
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))


RIG = Path_()
LOSSY = Path_(one_way=0.100, bandwidth=20e6, queue=500_000, loss=0.01)
#: condition -> (path, flows per controller, idle, lossy): "X" stands for the controller compared
CONDITIONS: dict[str, tuple[Path_, list[Flow], float, bool]] = {
    "rig path, 10 MiB, 1 MB queue": (RIG, [Flow("X", 10)], 0.0, False),
    "rig path, 10 MiB, 262 kB queue": (Path_(queue=262_144), [Flow("X", 10)], 0.0, False),
    "LAN (10 ms, 1 Gbit/s), 50 MiB, 262 kB queue": (
        Path_(one_way=0.010, bandwidth=1e9, queue=262_144),
        [Flow("X", 50)],
        0.0,
        False,
    ),
    "relayed, 10 MiB": (Path_(relayed=True), [Flow("X", 10)], 0.0, False),
    "rig path, 2 MiB, 1% loss": (Path_(loss=0.01), [Flow("X", 2)], 0.0, True),
    "lossy profile (100 ms, 20 Mbit/s), 2 MiB, 0.1% loss": (
        Path_(**{**LOSSY.__dict__, "loss": 0.001}),
        [Flow("X", 2)],
        0.0,
        True,
    ),
    "lossy profile, 2 MiB, 1% loss": (LOSSY, [Flow("X", 2)], 0.0, True),
    "lossy profile, 2 MiB, 3% loss": (Path_(**{**LOSSY.__dict__, "loss": 0.03}), [Flow("X", 2)], 0.0, True),
    "4 flows x 5 MiB at once": (RIG, [Flow("X", 5)] * 4, 3.0, False),
    "4 flows x 5 MiB 0.3 s apart": (RIG, [Flow("X", 5, 0.3 * i) for i in range(4)], 3.0, False),
}


def compare(ccs: list[str], seeds: list[int], lossy_seeds: list[int], only: str | None) -> None:
    print("| condition | " + " | ".join(f"{cc}: median (per seed)" for cc in ccs) + " |")
    print("|---|" + "---|" * len(ccs))
    for name, (path, specs, idle, lossy) in CONDITIONS.items():
        if only and only not in name:
            continue
        cells = []
        for cc in ccs:
            runs = [
                flows(path, [Flow(cc, s.mib, s.start) for s in specs], seed=seed, idle=idle)[0]
                for seed in (lossy_seeds if lossy else seeds)
            ]
            if len(specs) == 1:
                vals = [r[0] / 1e6 for r in runs]
                cells.append(f"{statistics.median(vals):.2f} (" + " / ".join(f"{v:.2f}" for v in vals) + ")")
            else:
                total = sum(s.mib for s in specs) * (1 << 20)
                # aggregate: all bytes over the time from the first start to the last byte
                agg = [
                    total / max(s.start + s.mib * (1 << 20) / x for s, x in zip(specs, r, strict=True)) / 1e6
                    for r in runs
                ]
                fair = [jain(r) for r in runs]
                slow = [min(r) / 1e6 for r in runs]
                cells.append(
                    f"{statistics.median(agg):.2f}, {statistics.median(fair):.3f}, {statistics.median(slow):.2f} ("
                    + " / ".join(f"{x:.2f}, {j:.3f}, {s:.2f}" for x, j, s in zip(agg, fair, slow, strict=True))
                    + ")"
                )
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    if len(ccs) == 2 and (not only or only in "competing"):
        for path, label in ((RIG, "rig path, 1 MB queue"), (Path_(queue=262_144), "rig path, 262 kB queue")):
            # the share: of the bytes both had read when the first finished
            shares = []
            for seed in seeds:
                _, (x, y) = flows(path, [Flow(ccs[0], 10), Flow(ccs[1], 10)], seed=seed, idle=3.0)
                shares.append(x / (x + y))
            per_seed = " / ".join(f"{v:.0%}" for v in shares)
            print(
                f"| 1 {ccs[0]} + 1 {ccs[1]} flow, 10 MiB each at once, {label}: {ccs[0]}'s share of the bytes "
                f"while both ran | {statistics.median(shares):.0%} ({per_seed}) |",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=16, help="MiB per transfer (default 16)")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--loss", type=float, default=0.01)
    ap.add_argument("--queues", default="1000000,262144", help="bottleneck queue sizes in bytes")
    ap.add_argument(
        "--iw",
        default=str(NetworkConfig().initial_congestion_window),
        help="initial congestion windows in packets, comma separated (default: the configured default)",
    )
    ap.add_argument("--compare", help="controllers to compare on more paths instead, e.g. cubic,bbr")
    ap.add_argument("--lossy-seeds", default="1-15", help="seeds of --compare's lossy rows (default 1-15)")
    ap.add_argument("--only", help="--compare: only the conditions whose name contains this")
    args = ap.parse_args()
    if args.compare:
        lo, _, hi = args.lossy_seeds.partition("-")
        lossy = list(range(int(lo), int(hi or lo) + 1))
        compare(args.compare.split(","), [int(s) for s in args.seeds.split(",")], lossy, args.only)
        return
    iws = [int(w) for w in args.iw.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    queues = [int(q) for q in args.queues.split(",")]
    fixed = {"max_stream_receive_window": 256 * 1024, "max_stream_send_buffer": 256 * 1024}
    rows: list[tuple[str, float, int, dict[str, object]]] = []
    for queue in queues:
        rows.append(
            ("fixed 256 KiB", 0.0, queue, {**fixed, "congestion_control": "cubic", "initial_congestion_window": iws[0]})
        )
        for iw in iws:
            for loss in (0.0, args.loss):
                for cc in ("reno", "cubic"):
                    rows.append(
                        ("auto-tuned", loss, queue, {"congestion_control": cc, "initial_congestion_window": iw})
                    )
    print(f"link: {BANDWIDTH / 1e6:g} Mbit/s ({BANDWIDTH / 8e6:g} MB/s), {2 * ONE_WAY * 1000:g} ms RTT, {args.mb} MiB")
    print(
        "| windows | cc | loss | queue | MB/s whole (per seed) | MB/s 2nd half (per seed) | median 2nd half "
        "| stream window | send buffer | initial window |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, loss, queue, extra in rows:
        cfg = NetworkConfig(connect_timeout=60.0, **extra)  # type: ignore[arg-type]
        mb = args.mb if loss == 0 else max(1, args.mb // 8)
        res = [bulk(cfg, mb * 1024 * 1024, loss=loss, queue=queue, seed=s) for s in seeds]
        whole = " / ".join(f"{r.rate / 1e6:.2f}" for r in res)
        steady = " / ".join(f"{r.steady / 1e6:.2f}" for r in res)
        med = statistics.median(r.steady for r in res) / 1e6
        print(
            f"| {name} | {cfg.congestion_control} | {loss:.0%} | {queue / 1e3:g} kB | {whole} | {steady} | "
            f"{med:.2f} | {res[-1].window >> 10} KiB | {res[-1].send_buffer >> 10} KiB | "
            f"{cfg.initial_congestion_window} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
