"""Simulator speed: simulated seconds per wall second, delivered packets per wall second.

Workloads (default latency 50 ms, 1% loss, full mesh):

* ``udp``: every node sends a 200-byte datagram to a random other node every
  100 ms of virtual time; the receiver answers it.
* ``quic``: every node keeps a QUIC connection (the real asgi_p2p Endpoint) to two
  others and sends a 200-byte message on each every ``--quic-intervals`` seconds;
  the peer echoes it.

Baseline, measured in the same run: ``bare aioquic`` drives pairs of aioquic
``QuicConnection`` objects with the same message pattern and 50 ms one-way delay
from a minimal heap scheduler (no asyncio, no simulator, no endpoint, no loss), in a process
of its own that never imports asgi_p2p (importing it changes aioquic for the whole process), so
it is aioquic as shipped; that process checks it and says so on stderr.
Its simulated seconds per wall second is the floor cost of QUIC itself in this Python;
the ratio row gives the real endpoint's speed and packet rate relative to it (the
endpoint sends fewer packets per message: answers carry the pending ACK, and keepalives
go out only on idle connections).  Simulated seconds per wall second is packet capacity
divided by the offered packet rate, so the table sweeps the message interval.

``--patches`` measures what the simulator's determinism patches (seeded ``os.urandom``,
``random``, ``uuid``, virtual ``time``/``datetime``, the refusals of sleeps, threads and
blocking sockets: ``asgi_p2p.sim.determinism``) cost on these rows: each row runs
alternately with them (as every simulation does) and without them (``sim.loop.environment =
None``), ``--repeat`` times, in the same process; it prints simulated seconds per CPU second (medians
and every run's value), the ratio, and the wall-clock medians.

Usage: python benchmarks/sim.py [--seconds 300] [--nodes 2,10,100] [--quic-intervals 1,5,10]
       python benchmarks/sim.py --patches [--repeat 5] ...
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# measure the checkout this script is in, not whatever asgi_p2p is installed
# this folder holds http.py, which would shadow the stdlib `http` (httpx imports it): keep it off
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import StreamDataReceived
from aioquic.quic.packet import pull_quic_header

# asgi_p2p is imported where the simulator rows need it, never at the top: the bare aioquic
# row runs this script in a process that must not import it (it patches aioquic on import)
from benchmarks._bare import Credentials, check_unpatched, run_bare_child, unpatched, write_credentials
from benchmarks._machine import machine_description

if TYPE_CHECKING:
    from asgi_p2p import Endpoint, MessageConnection


@dataclass
class Result:
    workload: str
    nodes: int
    virtual: float
    wall: float
    delivered: int
    #: CPU seconds of this process over the same span (less sensitive to other load than wall)
    cpu: float = 0.0

    @property
    def speedup(self) -> float:
        return self.virtual / self.wall

    @property
    def packets_per_s(self) -> float:
        return self.delivered / self.wall


def bench_udp(n: int, seconds: float, seed: int = 1, interval: float = 0.1, patched: bool = True) -> Result:
    from asgi_p2p.sim import Simulation

    sim = Simulation(seed=seed, keep_trace=False)
    if not patched:
        sim.loop.environment = None  # no determinism patches while it runs
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

    wall, cpu = time.perf_counter(), time.process_time()
    sim.run(main(), time_limit=seconds + 60)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    result = Result(f"udp, 1 msg / {interval:g} s / node", n, sim.now, wall, sim.delivered, cpu)
    sim.close()
    return result


def bench_quic(n: int, seconds: float, seed: int = 1, interval: float = 1.0, patched: bool = True) -> Result:
    from asgi_p2p import NetworkConfig, Node, SecretKey
    from asgi_p2p.sim import Simulation
    from asgi_p2p.sim.determinism import real_perf_counter

    sim = Simulation(seed=seed, keep_trace=False)
    if not patched:
        sim.loop.environment = None  # no determinism patches while it runs
    marks: dict[str, tuple[float, float, int]] = {}
    cpu = [0.0]
    hosts = [sim.host(f"n{i}") for i in range(n)]

    async def main() -> None:
        config = NetworkConfig(connect_timeout=30.0)
        eps = [
            await Node.bind(SecretKey.from_seed(f"n{i}"), host="0.0.0.0", port=4433, config=config, network=h)
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

        peers = [1, 2] if n > 2 else [1]
        conns = await asyncio.gather(*(eps[i].connect(eps[(i + k) % n].node_addr()) for i in range(n) for k in peers))
        # Handshakes are excluded, as in the bare aioquic baseline.
        marks["start"] = (real_perf_counter(), sim.now, sim.delivered)
        cpu[0] = time.process_time()  # not replaced inside a simulation
        rng = random.Random(seed)

        async def talk(conn: MessageConnection) -> None:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(rng.random() * interval)
            end = loop.time() + seconds
            while loop.time() < end:
                await conn.send(b"m" * 200)
                await conn.recv()
                await asyncio.sleep(interval)

        await asyncio.gather(*(talk(c) for c in conns))
        marks["end"] = (real_perf_counter(), sim.now, sim.delivered)
        cpu[0] = time.process_time() - cpu[0]
        for t in servers:
            t.cancel()
        for ep in eps:
            await ep.close(timeout=0.5)

    sim.run(main(), time_limit=seconds + 600)
    (w0, v0, d0), (w1, v1, d1) = marks["start"], marks["end"]
    result = Result(f"quic (real Endpoint), 1 msg / {interval:g} s / connection", n, v1 - v0, w1 - w0, d1 - d0, cpu[0])
    sim.close()
    return result


def bare_aioquic_in_child(pairs: int, seconds: float, interval: float = 1.0) -> Result:
    """:func:`bench_bare_aioquic` in a fresh process that never imports asgi_p2p (``--bare-child``)."""
    from asgi_p2p import SecretKey
    from asgi_p2p.endpoint.tls import node_certificate

    key = SecretKey.from_seed("bare-server")
    with tempfile.TemporaryDirectory() as tmp:
        creds = write_credentials(node_certificate(key), key.private_key, tmp, "bare-server")
        job = {"pairs": pairs, "seconds": seconds, "interval": interval, "credentials": asdict(creds)}
        proc = run_bare_child(__file__, "--bare-child", job)
    print(f"# {check_unpatched(proc.stderr, 'the bare aioquic child')}", file=sys.stderr, flush=True)
    return Result(**json.loads(proc.stdout))


def _bare_child(job_json: str) -> None:
    job = json.loads(job_json)
    result = bench_bare_aioquic(job["pairs"], job["seconds"], Credentials(**job["credentials"]), job["interval"])
    print(unpatched(), file=sys.stderr)
    print(json.dumps(asdict(result)))


def bench_bare_aioquic(
    pairs: int, seconds: float, credentials: Credentials, interval: float = 1.0, latency: float = 0.05
) -> Result:
    """``pairs`` aioquic client/server pairs, 200-byte message + echo every ``interval``.

    A heap of (time, seq, action) drives delivery after ``latency`` and each
    connection's timer; handshakes are excluded from the timing.  Run it in a process that
    never imports asgi_p2p (:func:`bare_aioquic_in_child`).
    """
    heap: list[tuple[float, int, int, object]] = []
    seq = 0
    now = 0.0
    delivered = 0

    def push(at: float, kind: int, payload: object) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (at, seq, kind, payload))

    conns: list[tuple[QuicConnection, QuicConnection]] = []
    peer: dict[int, QuicConnection] = {}
    timers: dict[int, float | None] = {}

    def flush(c: QuicConnection) -> None:
        for data, _addr in c.datagrams_to_send(now=now):
            push(now + latency, 0, (peer[id(c)], data))
        t = c.get_timer()
        if t is not None and t != timers.get(id(c)):
            timers[id(c)] = t
            push(t, 1, c)

    def drain(c: QuicConnection) -> None:
        while (ev := c.next_event()) is not None:
            if isinstance(ev, StreamDataReceived) and not c._is_client and ev.data:
                c.send_stream_data(ev.stream_id, ev.data)

    for _ in range(pairs):
        client = QuicConnection(
            configuration=QuicConfiguration(is_client=True, alpn_protocols=["bench"], verify_mode=0)
        )
        client.connect(("10.0.0.2", 4433), now=now)
        first = client.datagrams_to_send(now=now)
        header = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=8)
        server_config = QuicConfiguration(is_client=False, alpn_protocols=["bench"])
        server_config.load_cert_chain(credentials.certificate, credentials.private_key)
        server = QuicConnection(configuration=server_config, original_destination_connection_id=header.destination_cid)
        peer[id(client)] = server
        peer[id(server)] = client
        conns.append((client, server))
        for data, _addr in first:
            push(now + latency, 0, (server, data))
        flush(client)

    def run_until(end: float) -> None:
        nonlocal now, delivered
        while heap and heap[0][0] <= end:
            at, _, kind, payload = heapq.heappop(heap)
            now = max(now, at)
            if kind == 0:
                dst, data = payload  # type: ignore[misc]
                delivered += 1
                src = ("10.0.0.2", 4433) if dst._is_client else ("10.0.0.1", 5000)
                dst.receive_datagram(data, src, now=now)
                drain(dst)
                flush(dst)
            elif kind == 1:
                c = payload
                assert isinstance(c, QuicConnection)
                if timers.get(id(c)) == at:
                    timers[id(c)] = None
                    c.handle_timer(now=now)
                    drain(c)
                    flush(c)
            else:
                c = payload
                assert isinstance(c, QuicConnection)
                sid = c.get_next_available_stream_id() if not hasattr(c, "_bench_sid") else c._bench_sid  # type: ignore[attr-defined]
                c._bench_sid = sid  # type: ignore[attr-defined]
                c.send_stream_data(sid, b"m" * 200)
                flush(c)
                push(now + interval, 2, c)
        now = max(now, end)

    run_until(5.0)  # handshakes
    start_virtual, start_delivered = now, delivered
    rng = random.Random(1)
    for client, _server in conns:
        push(now + rng.random() * interval, 2, client)
    wall = time.perf_counter()
    run_until(now + seconds)
    wall = time.perf_counter() - wall
    return Result(
        f"bare aioquic (no simulator), 1 msg / {interval:g} s / connection",
        pairs,
        now - start_virtual,
        wall,
        delivered - start_delivered,
    )


def compare_patches(runs: list[tuple[str, float]], sizes: list[int], seconds: float, repeat: int) -> None:
    """Each row with and without the determinism patches, interleaved, ``repeat`` times.

    Speeds are simulated seconds per CPU second of this process (on a machine shared with other
    work, wall time measures the other work too); the wall-clock medians follow.
    """
    for patched in (True, False):  # warm-up, not measured: imports, the first module scan for datetime names
        bench_udp(2, 1.0, patched=patched)
    print(
        "| workload | nodes | with patches, simulated s / CPU s | without | with / without "
        "| wall: with / without (medians) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for workload, interval in runs:
        for n in sizes:
            bench = bench_udp if workload == "udp" else bench_quic
            speeds: dict[bool, list[float]] = {True: [], False: []}
            walls: dict[bool, list[float]] = {True: [], False: []}
            name = ""
            for i in range(repeat):
                for patched in (True, False) if i % 2 == 0 else (False, True):
                    r = bench(n, seconds, interval=interval, patched=patched)
                    speeds[patched].append(r.virtual / r.cpu)
                    walls[patched].append(r.speedup)
                    name = r.workload
            on, off = statistics.median(speeds[True]), statistics.median(speeds[False])
            each = {k: ", ".join(f"{v:,.0f}" for v in vs) for k, vs in speeds.items()}
            print(
                f"| {name} | {n} | {on:,.0f}x ({each[True]}) | {off:,.0f}x ({each[False]}) | {on / off:.2f} "
                f"| {statistics.median(walls[True]):,.0f}x / {statistics.median(walls[False]):,.0f}x |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="virtual seconds per run (after the handshakes)")
    parser.add_argument("--nodes", default="2,10,100", help="comma-separated node counts")
    parser.add_argument("--workloads", default="udp,quic", help="udp,quic")
    parser.add_argument("--udp-intervals", default="0.1,1", help="seconds between a node's UDP messages")
    parser.add_argument("--quic-intervals", default="1,5,10", help="seconds between messages on a QUIC connection")
    parser.add_argument("--patches", action="store_true", help="compare each row with and without the patches")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each row and mode with --patches")
    parser.add_argument("--bare-child", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_child is not None:
        _bare_child(args.bare_child)
        return
    print(f"Machine: {machine_description()}")
    sizes = [int(x) for x in args.nodes.split(",")]
    workloads = args.workloads.split(",")
    if args.patches:
        runs_ = [("udp", float(x)) for x in args.udp_intervals.split(",")] if "udp" in workloads else []
        runs_ += [("quic", float(x)) for x in args.quic_intervals.split(",")] if "quic" in workloads else []
        compare_patches(runs_, sizes, args.seconds, args.repeat)
        return
    print("| workload | nodes | simulated s | wall s | simulated s / wall s | delivered packets | packets / wall s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    runs: list[tuple[str, float]] = []
    for workload in workloads:
        if workload == "udp":
            runs += [("udp", float(x)) for x in args.udp_intervals.split(",")]
        else:
            runs += [(workload, float(x)) for x in args.quic_intervals.split(",")]
    for workload, interval in runs:
        for n in sizes:
            if workload == "udp":
                r = bench_udp(n, args.seconds, interval=interval)
            else:
                # The same number of connections (2 per node) without the simulator first.
                base = bare_aioquic_in_child(n * (2 if n > 2 else 1), args.seconds, interval=interval)
                print(
                    f"| {base.workload} | {base.nodes} pairs | {base.virtual:.1f} | {base.wall:.3f} | "
                    f"{base.speedup:,.0f}x | {base.delivered:,} | {base.packets_per_s:,.0f} |",
                    flush=True,
                )
                r = bench_quic(n, args.seconds, interval=interval)
                print(
                    f"| real Endpoint on the simulator / bare aioquic | {n} | | | "
                    f"{r.speedup / base.speedup:.2f}x | | {r.packets_per_s / base.packets_per_s:.2f}x |",
                    flush=True,
                )
            print(
                f"| {r.workload} | {r.nodes} | {r.virtual:.1f} | {r.wall:.3f} | {r.speedup:,.0f}x | "
                f"{r.delivered:,} | {r.packets_per_s:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
