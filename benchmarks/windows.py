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

Usage: python benchmarks/windows.py [--mb 16] [--seeds 1,2,3] [--loss 0.01] [--queues 1000000,262144] [--iw 32,64]
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

# this folder holds http.py, which would shadow the stdlib `http` (httpx imports it): keep it off
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asgi_p2p import NetworkConfig, Node, SecretKey
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
    args = ap.parse_args()
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
