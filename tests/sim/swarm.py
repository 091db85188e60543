"""The swarm scenario: a relay, a server and 3 clients on the simulator, under loss and faults.

The real stack on simulated hosts: :meth:`Node.bind` nodes, the relay
(:class:`RelayServer` and each node's relay client), an
:class:`~asgi_p2p.http.H3Server` serving a Starlette app with three blobs, and
clients using ``httpx.AsyncClient`` over :class:`P2PTransport`.  Everything
random (NAT types, link latency and loss, which node crashes and when) is drawn
from the seed, so one seed is one run.  See ``tests/sim/test_swarm.py`` for the
rules a run is judged by, and run this module to sweep seeds::

    python -m tests.sim.swarm --band lossy-faults --seeds 200

This is the project's own regression scenario, not a tool: to swarm-test your own
app (your scenario over many seeds with random faults, heal and settle checks, a
report with one-line replays), use :mod:`asgi_p2p.sim.swarm` (``swarm``,
``FaultPlan``, the ``sim_swarm`` pytest fixture; docs/testing.md, "Swarms").
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import math
import random
import sys
from dataclasses import dataclass, field

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from asgi_p2p import NetworkConfig, Node, NodeAddr, SecretKey
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.relay.server import RelayServer
from asgi_p2p.sim import START_TIME, Simulation
from asgi_p2p.sim.determinism import real_perf_counter

# -- the scenario's parameters (the test's docstring explains each choice) -----------------

#: NAT kinds a server or client is behind ("none": a public address).
NAT_KINDS = ("none", "full-cone", "restricted-cone", "port-restricted-cone", "symmetric")
#: One-way latency of each internet link, seconds: the sum of its two ends' "distance to the
#: core", each in ``HALF_LATENCY``, so a direct link is always the shortest route between its
#: ends (the simulator routes along the lowest-latency path; with independent random latencies
#: packets would take detours through other nodes' NAT boxes and cross several lossy links).
HALF_LATENCY = (0.010, 0.040)
#: How long the server is cut off from everyone, seconds.
PARTITION = 20.0
#: Every request of a phase must have succeeded this long after the phase started (virtual s).
DEADLINE = 30.0
#: Virtual seconds between the heal and the second check.
SETTLE = 60.0
#: What the user's client does: each attempt bounded by httpx's timeout, a few attempts, backoff.
ATTEMPT_TIMEOUT = 10.0
MAX_ATTEMPTS = 4
BACKOFF = (0.5, 1.0, 2.0)
#: Blob sizes in bytes (one small, one of a few dozen packets, one of ~100 packets).
BLOB_SIZES = (1_000, 8_000, 24_000)
CLIENTS = 3
#: Which node crashes (and restarts with the same key and port) during the partition.
VICTIMS = ("server", "client", "relay")
#: "access": loss on each node's access link (the test's); "link": on every link alike
LOSS_MODELS = ("access", "link")
RELAY_PORT = 3478
NODE_PORT = 4433


@dataclass(frozen=True)
class Band:
    """A loss band and whether the partition and the crash happen."""

    name: str
    loss: tuple[float, float]
    faults: bool


BANDS = {
    b.name: b
    for b in (
        Band("lossy-faults", (0.10, 0.30), True),
        Band("light-faults", (0.01, 0.03), True),
        Band("lossy", (0.10, 0.30), False),
    )
}


@dataclass(frozen=True)
class Plan:
    """Everything one seed decides."""

    seed: int
    band: Band
    server_nat: str
    client_nats: tuple[str, ...]
    #: (a, b) -> (latency, loss) for each internet link
    links: dict[tuple[str, str], tuple[float, float]]
    victim: str  # "server", "client" or "relay"
    victim_client: int
    partition_after: float  # seconds after the warm-up
    crash_after: float  # seconds into the partition
    restart_after: float  # seconds into the partition

    @classmethod
    def draw(cls, seed: int, band: Band, *, loss_model: str = "access") -> Plan:
        """The run of ``seed``; ``loss_model="link"``: every link loses within ``band.loss``
        on its own (the outside tester's model; relayed paths then cross two lossy links)."""
        if loss_model not in LOSS_MODELS:
            raise ValueError(f"loss_model must be one of {LOSS_MODELS}, not {loss_model!r}")
        rng = random.Random(f"swarm {seed}")  # the same topology and faults in every band
        server_nat = rng.choice(NAT_KINDS)
        client_nats = tuple(rng.choice(NAT_KINDS) for _ in range(CLIENTS))
        ends = ["relay", _edge("server", server_nat)] + [_edge(f"client{i}", nat) for i, nat in enumerate(client_nats)]
        reach = {end: rng.uniform(*HALF_LATENCY) for end in ends}
        # loss lives on each node's access link (the relay's, in a data centre, loses nothing):
        # between any two nodes, direct or through the relay, 1 - (1 - a)(1 - b) is in band.loss
        lo, hi = (1.0 - math.sqrt(1.0 - x) for x in band.loss)
        access = {end: 0.0 if end == "relay" else rng.uniform(lo, hi) for end in ends}
        links: dict[tuple[str, str], tuple[float, float]] = {}
        link_rng = random.Random(f"swarm links {seed}")  # the other draws stay the same
        for i, a in enumerate(ends):
            for b in ends[i + 1 :]:
                loss = 1.0 - (1.0 - access[a]) * (1.0 - access[b])
                if loss_model == "link":
                    loss = link_rng.uniform(*band.loss)
                links[(a, b)] = (reach[a] + reach[b], loss)
        crash_after = rng.uniform(1.0, 9.0)
        return cls(
            seed=seed,
            band=band,
            server_nat=server_nat,
            client_nats=client_nats,
            links=links,
            victim=VICTIMS[seed % len(VICTIMS)],
            victim_client=rng.randrange(CLIENTS),
            partition_after=rng.uniform(1.0, 5.0),
            crash_after=crash_after,
            restart_after=rng.uniform(crash_after + 1.0, PARTITION - 1.0),
        )

    def describe(self) -> str:
        faults = "no faults"
        if self.band.faults:
            who = f"client{self.victim_client}" if self.victim == "client" else self.victim
            faults = (
                f"server partitioned {PARTITION:g}s, {who} crashed at +{self.crash_after:.1f}s "
                f"and restarted at +{self.restart_after:.1f}s"
            )
        nats = ", ".join([f"server:{self.server_nat}"] + [f"client{i}:{n}" for i, n in enumerate(self.client_nats)])
        return f"seed {self.seed} [{self.band.name}] {nats}; {faults}"


def _edge(name: str, nat: str) -> str:
    """The simulated node on the internet side of a host: its NAT box, or itself."""
    return name if nat == "none" else f"{name}-nat"


@dataclass
class Outcome:
    """One request as the user saw it."""

    phase: str
    client: int
    blob: int
    ok: bool
    attempts: int
    elapsed: float  # virtual seconds from the phase's start to success or giving up
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        status = "ok" if self.ok else "FAILED"
        errors = f": {' | '.join(self.errors)}" if self.errors else ""
        return (
            f"{self.phase} client{self.client} blob{self.blob}: {status} after {self.elapsed:.2f}s, "
            f"{self.attempts} attempt(s){errors}"
        )


@dataclass
class Result:
    plan: Plan
    outcomes: list[Outcome] = field(default_factory=list)
    setup_error: str | None = None
    wall: float = 0.0

    @property
    def passed(self) -> bool:
        return self.setup_error is None and bool(self.outcomes) and all(o.ok for o in self.outcomes)

    def summary(self) -> str:
        lines = [self.plan.describe()]
        if self.setup_error is not None:
            lines.append(f"setup failed: {self.setup_error}")
        lines += [o.line() for o in self.outcomes if not o.ok or o.attempts > 1]
        return "\n".join(lines)


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


class Swarm:
    """The nodes of one run, rebuilt after crashes."""

    def __init__(self, sim: Simulation, plan: Plan) -> None:
        self.sim = sim
        self.plan = plan
        self.data = blobs(plan.seed)
        self.digests = [hashlib.sha256(b).hexdigest() for b in self.data]
        self.relay_host = sim.host("relay")
        self.server_host = sim.host("server", nat=plan.server_nat)
        self.client_hosts = [sim.host(f"client{i}", nat=nat) for i, nat in enumerate(plan.client_nats)]
        for (a, b), (latency, loss) in plan.links.items():
            sim.link(a, b, latency=latency, loss=loss)
        self.relay: RelayServer | None = None
        self.server: Node | None = None
        self.h3: H3Server | None = None
        self.clients: list[tuple[Node, httpx.AsyncClient] | None] = [None] * CLIENTS
        self.server_addr: NodeAddr | None = None
        self.lives: dict[str, int] = {}

    @property
    def url(self) -> str:
        assert self.relay is not None
        return str(self.relay.url)

    def _rng(self, name: str) -> random.Random:
        life = self.lives.get(name, 0)
        self.lives[name] = life + 1
        return random.Random(f"swarm {self.plan.seed} {name} life {life}")

    async def start_relay(self) -> None:
        self.relay = await RelayServer.bind(
            SecretKey.from_seed("swarm relay"), host="0.0.0.0", port=RELAY_PORT, network=self.relay_host
        )

    async def start_server(self) -> None:
        self.server = await Node.bind(
            SecretKey.from_seed("swarm server"),
            host="0.0.0.0",
            port=NODE_PORT,
            config=NetworkConfig(),
            network=self.server_host,
            rng=self._rng("server"),
            relay_url=self.url,
        )
        self.h3 = H3Server(blob_app(self.data), self.server, timeout_graceful_shutdown=0.5)
        await self.h3.startup()

    async def start_client(self, i: int) -> None:
        assert self.server_addr is not None
        node = await Node.bind(
            SecretKey.from_seed(f"swarm client {i}"),
            host="0.0.0.0",
            port=NODE_PORT,
            config=NetworkConfig(),
            network=self.client_hosts[i],
            rng=self._rng(f"client{i}"),
            relay_url=self.url,
        )
        transport = P2PTransport(node, addrs=[self.server_addr])
        client = httpx.AsyncClient(
            transport=transport, base_url=f"https://{self.server_addr.node_id}", timeout=ATTEMPT_TIMEOUT
        )
        self.clients[i] = (node, client)

    async def crash(self, victim: str) -> None:
        """Crash ``victim`` (its process dies: nothing it held survives)."""
        if victim == "relay":
            self.sim.crash(self.relay_host)
            assert self.relay is not None
            await self.relay.close(timeout=0.01)
            self.relay = None
        elif victim == "server":
            self.sim.crash(self.server_host)
            assert self.server is not None
            await _die(self.server)
            self.server = self.h3 = None
        else:
            i = self.plan.victim_client
            self.sim.crash(self.client_hosts[i])
            entry = self.clients[i]
            assert entry is not None
            await _die(entry[0])
            self.clients[i] = None

    async def restart(self, victim: str) -> None:
        """Bring ``victim`` back: a new process with the same key and port."""
        if victim == "relay":
            self.sim.restart(self.relay_host)
            await self.start_relay()
        elif victim == "server":
            self.sim.restart(self.server_host)
            await self.start_server()
        else:
            self.sim.restart(self.client_hosts[self.plan.victim_client])
            await self.start_client(self.plan.victim_client)

    async def phase(self, name: str) -> list[Outcome]:
        """Every client fetches every blob at once; all must be done within :data:`DEADLINE`."""
        jobs = []
        outcomes = []
        for i, entry in enumerate(self.clients):
            assert entry is not None
            for b, digest in enumerate(self.digests):
                out = Outcome(name, i, b, False, 0, 0.0)
                outcomes.append(out)
                jobs.append(asyncio.ensure_future(fetch(entry[1], out, digest)))
        _, pending = await asyncio.wait(jobs, timeout=DEADLINE)
        for job in pending:
            job.cancel()
        for job in pending:
            try:
                await job
            except asyncio.CancelledError:
                pass
        for out in outcomes:
            if not out.ok:
                continue
            if out.elapsed > DEADLINE:
                out.ok = False
                out.errors.append(f"took {out.elapsed:.1f}s > {DEADLINE:g}s")
        for job, out in zip(jobs, outcomes, strict=True):
            if job in pending:
                out.elapsed = DEADLINE
                out.errors.append(f"not done within {DEADLINE:g}s")
        return outcomes

    async def close(self) -> None:
        for entry in self.clients:
            if entry is not None:
                await entry[1].aclose()
                await entry[0].close(timeout=0.2)
        if self.h3 is not None:
            await self.h3.shutdown()
        if self.server is not None:
            await self.server.close(timeout=0.2)
        if self.relay is not None:
            await self.relay.close(timeout=0.2)


async def _die(node: Node) -> None:
    """Stop what a crashed process would no longer run (its socket is closed already)."""
    await node.close(timeout=0.01)


async def scenario(sim: Simulation, plan: Plan, result: Result) -> None:
    swarm = Swarm(sim, plan)
    loop = asyncio.get_running_loop()
    try:
        await swarm.start_relay()
        await swarm.start_server()
        assert swarm.server is not None and swarm.server.relay is not None
        try:
            await swarm.server.relay.wait_connected(60)
        except Exception as exc:  # reported as the run's failure
            result.setup_error = f"server's relay client: {exc}"
            return
        swarm.server_addr = swarm.server.node_addr()  # the server's ticket, as a user would paste it
        for i in range(CLIENTS):
            await swarm.start_client(i)
        for entry in swarm.clients:
            assert entry is not None and entry[0].relay is not None
            try:
                await entry[0].relay.wait_connected(60)
            except Exception as exc:
                result.setup_error = f"client's relay client: {exc}"
                return
        result.outcomes += await swarm.phase("warm-up")

        await asyncio.sleep(plan.partition_after)
        if plan.band.faults:
            cut_off = [n for n in sim.nodes if n.name.startswith("server")]
            rest = [n for n in sim.nodes if not n.name.startswith("server")]
            t0 = loop.time()
            sim.partition(cut_off, rest)
            await asyncio.sleep(plan.crash_after)
            await swarm.crash(plan.victim)
            await asyncio.sleep(t0 + plan.restart_after - loop.time())
            await swarm.restart(plan.victim)
            await asyncio.sleep(t0 + PARTITION - loop.time())
            sim.heal()
        else:
            await asyncio.sleep(PARTITION)
        healed = loop.time()
        result.outcomes += await swarm.phase("heal")
        await asyncio.sleep(healed + SETTLE - loop.time())
        result.outcomes += await swarm.phase("settle")
    finally:
        await swarm.close()


def run(
    seed: int,
    band: Band,
    *,
    loss_model: str = "access",
) -> Result:
    """Run one seed of ``band``; never raises for a failing run (see :attr:`Result.passed`)."""
    plan = Plan.draw(seed, band, loss_model=loss_model)
    result = Result(plan)
    t0 = real_perf_counter()  # wall time (time.perf_counter is virtual inside a simulation)
    sim = Simulation(seed=seed, mtu=1500, latency=0.05, loss=0.0, keep_trace=False)
    with sim:
        sim.run(scenario(sim, plan, result), time_limit=600)
    result.wall = real_perf_counter() - t0
    return result


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
    parser.add_argument("--loss-model", choices=LOSS_MODELS, default="access")
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
    for name in args.band or list(BANDS):
        band = BANDS[name]
        passed = 0
        walls: list[float] = []
        failures: list[Result] = []
        results: list[Result] = []
        for seed in range(args.first, args.first + args.seeds):
            res = run(seed, band, loss_model=args.loss_model)
            results.append(res)
            walls.append(res.wall)
            if res.passed:
                passed += 1
            else:
                failures.append(res)
                print(res.summary(), flush=True)
            if args.verbose:
                print(f"seed {seed}: {'pass' if res.passed else 'FAIL'} {res.wall:.2f}s", flush=True)
        walls.sort()
        times = sorted(o.elapsed for r in results for o in r.outcomes if o.ok and o.phase == "heal")
        if times:
            print(
                f"{band.name}: after heal, successful requests took median {times[len(times) // 2]:.2f}s, "
                f"p99 {times[int(len(times) * 0.99)]:.2f}s, max {times[-1]:.2f}s (virtual)",
                flush=True,
            )
        print(
            f"{band.name}: {passed}/{args.seeds} passed; wall {sum(walls):.1f}s total, "
            f"per seed median {walls[len(walls) // 2]:.2f}s max {walls[-1]:.2f}s; "
            f"failing seeds {[r.plan.seed for r in failures]}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
