"""The swarm scenario: a relay, a server and 3 clients on the simulator, under loss and faults,
run by the user tool :func:`asgi_p2p.sim.swarm` (the same one docs/testing.md, "Swarms", shows).

The real stack on simulated hosts, built with the simulator's helpers: ``sim.relay`` (a
:class:`RelayServer`), ``sim.serve`` (a server node with the relay's URL serving a Starlette
app with three blobs through ``H3Server``) and ``sim.client`` (nodes behind NATs with
``httpx.AsyncClient`` over ``P2PTransport``, knowing only the server's ticket).  The tool
draws everything random from the seed (NAT kinds, each host's distance to the core and
access-link loss, when the server is isolated, which node crashes, when, and for how long),
so one seed is one run.  See ``tests/sim/test_swarm.py`` for the rules a run is judged by,
and run this module to sweep seeds::

    python -m tests.sim.swarm --band lossy-faults --seeds 200
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from asgi_p2p import NodeAddr
from asgi_p2p.sim import START_TIME, FaultPlan, Faults, SimServer, Simulation, SwarmReport, swarm
from asgi_p2p.sim.swarm import MAX_ERROR_CHARS

# -- the scenario's parameters (the test's docstring explains each choice) -----------------

#: NAT kinds a server or client is behind ("none": a public address).
NAT_KINDS = ("none", "full-cone", "restricted-cone", "port-restricted-cone", "symmetric")
#: Each host's one-way distance to the core, seconds; a link's latency is the sum of its ends'
#: (20-80 ms), so a direct link is always the shortest route between its ends.
HALF_LATENCY = (0.010, 0.040)
#: How long the server is cut off from everyone, seconds (it ends at the heal).
PARTITION = 20.0
#: Fault phase length: the isolation starts 1-5 s after the warm-up and lasts until the heal.
HEAL_AT = PARTITION + 5.0
#: A crash comes 6-14 s into the fault phase (inside the isolation), the host is back 1-10 s
#: later (before the heal).
CRASH_AT = (6.0, 14.0)
DOWNTIME = (1.0, 10.0)
#: Every request of a check must have succeeded this long after the check started (virtual s).
DEADLINE = 30.0
#: Virtual seconds between the heal check and the settle check.
SETTLE = 60.0
#: What the user's client does: each attempt bounded by httpx's timeout, a few attempts, backoff.
ATTEMPT_TIMEOUT = 10.0
MAX_ATTEMPTS = 4
BACKOFF = (0.5, 1.0, 2.0)
#: Blob sizes in bytes (one small, one of a few dozen packets, one of ~100 packets).
BLOB_SIZES = (1_000, 8_000, 24_000)
CLIENTS = tuple(f"client{i}" for i in range(3))
#: Nodes that may crash (and restart with the same key and port) during the isolation.
VICTIMS = ("server", *CLIENTS, "relay")
NODE_PORT = 4433
RELAY_WAIT = 60.0


@dataclass(frozen=True)
class Band:
    """A loss band and whether the isolation and the crash happen."""

    name: str
    loss: tuple[float, float]
    faults: bool

    def plan(self) -> FaultPlan:
        """What the swarm tool draws for each seed of this band."""
        return FaultPlan(
            hosts=("server", *CLIENTS),
            public=("relay",),
            loss=self.loss,
            loss_model="access",  # the relay, in a data centre, loses nothing
            latency=HALF_LATENCY,
            nat_types=NAT_KINDS,
            healed_loss=None,  # the loss stays after the heal: the checks run under it
            partitions=0,
            isolations=(1, 1) if self.faults else 0,
            isolated=("server",),
            isolation_time=(PARTITION, PARTITION + 4.0),
            crashes=(1, 1) if self.faults else 0,
            crashable=VICTIMS,
            crash_at=CRASH_AT,
            downtime=DOWNTIME,
        )


BANDS = {
    b.name: b
    for b in (
        Band("lossy-faults", (0.10, 0.30), True),
        Band("light-faults", (0.01, 0.03), True),
        Band("lossy", (0.10, 0.30), False),
    )
}


@dataclass
class Outcome:
    """One request as the user saw it."""

    phase: str
    client: str
    blob: int
    ok: bool = False
    attempts: int = 0
    elapsed: float = 0.0  # virtual seconds from the check's start to success or giving up
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        status = "ok" if self.ok else "FAILED"
        errors = f": {' | '.join(self.errors)}" if self.errors else ""
        return (
            f"{self.phase} {self.client} blob{self.blob}: {status} after {self.elapsed:.2f}s, "
            f"{self.attempts} attempt(s){errors}"
        )


def blobs(seed: int) -> list[bytes]:
    rng = random.Random(f"swarm blobs {seed}")
    return [rng.randbytes(n) for n in BLOB_SIZES]


def blob_app(data: list[bytes]) -> Starlette:
    async def blob(request: Request) -> Response:
        return Response(data[int(request.path_params["i"])], media_type="application/octet-stream")

    return Starlette(routes=[Route("/blob/{i:int}", blob)])


async def fetch(client: httpx.AsyncClient, out: Outcome, expected: str) -> None:
    """Fetch one blob as a user's program would: bounded attempts with backoff, sha256 checked."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while out.attempts < MAX_ATTEMPTS:
        out.attempts += 1
        try:
            response = await client.get(f"/blob/{out.blob}")
        except httpx.TransportError as exc:
            out.errors.append(f"{loop.time() - started:.2f}s {type(exc).__name__}: {exc}")
        else:
            digest = hashlib.sha256(response.content).hexdigest()
            if response.status_code == 200 and digest == expected:
                out.ok = True
                break
            # a wrong answer is a failure at once: retrying would hide it
            out.errors.append(f"status {response.status_code}, sha256 {digest[:16]} != {expected[:16]}")
            break
        if out.attempts < MAX_ATTEMPTS:
            await asyncio.sleep(BACKOFF[out.attempts - 1])
    out.elapsed = loop.time() - started


@dataclass
class Run:
    """One seed's system: what the restart hook rebuilds and the checks use."""

    data: list[bytes]
    digests: list[str]
    relay_url: str = ""
    ticket: NodeAddr | None = None
    server: SimServer | None = None
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)


class BlobSwarm:
    """The scenario's hooks for :func:`asgi_p2p.sim.swarm` (seeds run one after another, so
    the current seed's :class:`Run` lives here)."""

    def __init__(self) -> None:
        self.run: Run | None = None
        #: Every seed's outcomes, for the CLI's statistics.
        self.outcomes: dict[int, list[Outcome]] = {}

    def current(self) -> Run:
        assert self.run is not None, "setup did not run"
        return self.run

    async def start_server(self, sim: Simulation) -> None:
        run = self.current()
        run.server = await sim.serve(
            blob_app(run.data), "server", port=NODE_PORT, relay_url=run.relay_url, timeout_graceful_shutdown=0.5
        )

    async def start_client(self, sim: Simulation, host: str, *, wait: bool) -> None:
        run = self.current()
        run.clients[host] = await sim.client(
            host,
            run.ticket,
            port=NODE_PORT,
            relay_url=run.relay_url,
            timeout=ATTEMPT_TIMEOUT,
            wait_for_relay=RELAY_WAIT if wait else None,
        )

    async def setup(self, sim: Simulation, faults: Faults) -> None:
        data = blobs(faults.seed)
        self.run = run = Run(data, [hashlib.sha256(b).hexdigest() for b in data])
        self.outcomes[faults.seed] = run.outcomes
        run.relay_url = await sim.relay("relay")
        await self.start_server(sim)
        assert run.server is not None and run.server.node.relay is not None
        await run.server.node.relay.wait_connected(RELAY_WAIT)
        run.ticket = run.server.addr  # the server's ticket, as a user would paste it
        for host in CLIENTS:
            await self.start_client(sim, host, wait=True)
        await self.check(sim, faults, None, phase="warm-up")

    async def idle(self, sim: Simulation, faults: Faults) -> None:
        """Nothing runs during the faults (the clients' connections idle)."""

    async def restart(self, sim: Simulation, faults: Faults, host: str) -> None:
        """A new process on ``host`` with the same key and port."""
        if host == "relay":
            assert await sim.relay("relay") == self.current().relay_url
        elif host == "server":
            await self.start_server(sim)
        else:
            await self.start_client(sim, host, wait=False)

    async def check(self, sim: Simulation, faults: Faults, state: None, *, phase: str = "") -> None:
        """Every client fetches every blob at once; all must succeed within :data:`DEADLINE`."""
        run = self.current()
        phase = phase or ("heal" if "heal" not in run.checks else "settle")
        run.checks.append(phase)
        jobs: list[asyncio.Future[None]] = []
        outcomes: list[Outcome] = []
        for host, client in run.clients.items():
            for b, digest in enumerate(run.digests):
                out = Outcome(phase, host, b)
                outcomes.append(out)
                jobs.append(asyncio.ensure_future(fetch(client, out, digest)))
        _, pending = await asyncio.wait(jobs, timeout=DEADLINE)
        for job in pending:
            job.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for job, out in zip(jobs, outcomes, strict=True):
            if job in pending:
                out.ok = False
                out.elapsed = DEADLINE
                out.errors.append(f"not done within {DEADLINE:g}s")
        run.outcomes += outcomes
        failed = [o.line() for o in outcomes if not o.ok]
        assert len(outcomes) == len(CLIENTS) * len(BLOB_SIZES), f"{len(outcomes)} requests"
        assert not failed, f"{len(failed)} of {len(outcomes)} requests failed:\n" + "\n".join(failed)


def run_band(
    band: Band, seeds: range | list[int], replay: Callable[[int], str] | None = None
) -> tuple[SwarmReport, BlobSwarm]:
    """Run ``seeds`` of ``band`` on the swarm tool."""
    hooks = BlobSwarm()
    report = swarm(
        hooks.idle,
        hooks.check,
        seeds=seeds,
        plan=band.plan(),
        heal_at=HEAL_AT,
        settle=SETTLE,
        deadline=DEADLINE + 1.0,  # the check gives up after DEADLINE itself, naming each request
        setup=hooks.setup,
        setup_timeout=4 * RELAY_WAIT + DEADLINE,
        restart=hooks.restart,
        replay=replay,
        mtu=1500,
    )
    return report, hooks


def first_attempt_share(outcomes: Iterable[Outcome], phase: str = "heal") -> tuple[int, int]:
    """(requests of ``phase`` that succeeded on the user's client's first attempt, all of them).

    A pass counts a request that needed several attempts (up to :data:`MAX_ATTEMPTS`); this
    says how often recovery needed none (the transport's own retry on a fresh connection, which
    the user's client does not see, is part of an attempt).
    """
    of_phase = [o for o in outcomes if o.phase == phase]
    return sum(1 for o in of_phase if o.ok and o.attempts == 1), len(of_phase)


#: The columns of the table :func:`main` prints (docs/benchmarks.md, "The swarm", has the same).
TABLE_COLUMNS = (
    "band",
    "loss each way between two nodes",
    "faults",
    "seeds",
    "passed",
    "after the heal, time to success: median / p99 / max",
    "after the heal, succeeded at the first attempt",
    "wall per seed, median (max)",
    "CPU per seed",
)


def table_row(band: Band, report: SwarmReport, hooks: BlobSwarm, cpu: float) -> list[str]:
    """One band's row of :data:`TABLE_COLUMNS` (``cpu``: this process's CPU seconds for the band)."""
    outcomes = [o for outs in hooks.outcomes.values() for o in outs]
    results = report.results
    n = len(results)
    times = sorted(o.elapsed for o in outcomes if o.ok and o.phase == "heal")
    after = (
        f"{statistics.median(times):.1f} / {times[int(len(times) * 0.99)]:.1f} / {times[-1]:.1f} s" if times else "—"
    )
    first, heal = first_attempt_share(outcomes)
    share = f"{first} of {heal} ({100 * first / heal:.0f}%)" if heal else "—"
    walls = sorted(r.wall_time for r in results)
    wall = f"{statistics.median(walls):.2f} s ({walls[-1]:.1f} s)" if walls else "—"
    victims = [r.faults.crashed[0] for r in results if r.faults.crashed]
    faults = "none"
    if band.faults:
        clients = sum(victims.count(c) for c in CLIENTS)
        faults = (
            f"isolation {PARTITION:g}-{PARTITION + 4:g} s + crash/restart (server {victims.count('server')}, "
            f"clients {clients}, relay {victims.count('relay')} of {n})"
        )
    passed = len(report.passed)
    return [
        band.name,
        f"{band.loss[0] * 100:g}-{band.loss[1] * 100:g}%",
        faults,
        str(n),
        f"{passed} ({100 * passed / n:.0f}%)" if n else "0",
        after,
        share,
        wall,
        f"{cpu / n:.2f} s" if n else "—",
    ]


def _virtual_time(record: logging.LogRecord) -> bool:
    try:
        record.vt = asyncio.get_running_loop().time() - START_TIME
    except RuntimeError:
        record.vt = -1.0
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--band", choices=sorted(BANDS), action="append")
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--log", default="CRITICAL", help="log level of asgi_p2p (lines start with virtual time)")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(_virtual_time)
    handler.setFormatter(logging.Formatter("%(vt)9.3f %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger("asgi_p2p").addHandler(handler)
    logging.getLogger("asgi_p2p").setLevel(args.log.upper())
    logging.getLogger("asgi_p2p").propagate = False
    failed_any = False
    rows: list[list[str]] = []
    for name in args.band or list(BANDS):
        band = BANDS[name]
        seeds = range(args.first, args.first + args.seeds)
        cpu = time.process_time()
        report, hooks = run_band(
            band, seeds, replay=lambda s, band=name: f"python -m tests.sim.swarm --band {band} --first {s} --seeds 1"
        )
        rows.append(table_row(band, report, hooks, time.process_time() - cpu))
        if args.verbose:
            for r in report.results:
                print(f"seed {r.seed}: {'pass' if r.passed else 'FAIL'} {r.wall_time:.2f}s", flush=True)
        print(str(report)[: MAX_ERROR_CHARS * 4], flush=True)
        walls = sorted(r.wall_time for r in report.results)
        times = sorted(o.elapsed for outs in hooks.outcomes.values() for o in outs if o.ok and o.phase == "heal")
        if times:
            print(
                f"{band.name}: after heal, successful requests took median {statistics.median(times):.2f}s, "
                f"p99 {times[int(len(times) * 0.99)]:.2f}s, max {times[-1]:.2f}s (virtual)",
                flush=True,
            )
        victims = [r.faults.crashed[0] for r in report.results if r.faults.crashed]
        print(
            f"{band.name}: {len(report.passed)}/{len(report.results)} passed; wall {sum(walls):.1f}s total, "
            f"per seed median {statistics.median(walls):.2f}s max {walls[-1]:.2f}s; crashed: "
            + ", ".join(f"{v} {victims.count(v)}" for v in VICTIMS)
            + f"; failing seeds {report.failing_seeds}",
            flush=True,
        )
        failed_any |= not report.ok
    print()
    print("| " + " | ".join(TABLE_COLUMNS) + " |")
    print("| --- | --- | --- | ---: | ---: | --- | --- | --- | ---: |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 1 if failed_any else 0


if __name__ == "__main__":
    sys.exit(main())
