"""Swarm testing: one scenario over many seeds, each with its own random faults.

For every seed :func:`swarm` builds a fresh :class:`~asgi_p2p.sim.Simulation`, draws
faults from the seed (:meth:`FaultPlan.draw`: link loss and latency, NAT kinds, timed
partitions, isolations and crashes), creates the plan's hosts and links and runs:

0. **setup** (optional): ``setup(sim, faults)`` starts the system before any fault; the
   fault times and ``heal_at`` count from its end;
1. **faults**: ``scenario(sim, faults)`` runs while the faults happen (its return value
   is handed to ``check``); a crashed host restarts after its drawn downtime (or at the
   heal) and ``restart(sim, faults, host)`` runs for it, to serve again;
2. **heal** at ``heal_at`` virtual seconds: partitions end, every link's loss becomes
   ``plan.healed_loss`` (or stays), hosts still down restart, then
   ``check(sim, faults, state)`` must finish within ``deadline`` virtual seconds;
3. **settle**: ``settle`` virtual seconds later ``check`` runs again, within ``deadline``.

Each seed's failure (an exception, a deadlock, the time limit) is caught and kept in the
:class:`SwarmReport`, with a one-line replay; the run is deterministic per seed, so the
replay fails the same way.  As FoundationDB's and TigerBeetle's simulators do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import random
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import determinism
from .nat import NAT_PRESETS
from .network import Fault, Simulation

__all__ = ["MAX_SEEDS", "FaultPlan", "Faults", "SeedResult", "SwarmReport", "swarm"]

#: Most seeds one :func:`swarm` call runs (a report holds one result per seed).
MAX_SEEDS = 100_000
#: Most partitions or crashes one plan may draw per seed.
MAX_FAULTS = 100
#: Longest failure text a result keeps (the end of a traceback is cut).
MAX_ERROR_CHARS = 4000
#: NAT kinds a plan may draw ("none" = a public address).
NAT_KINDS = ("none", *sorted(NAT_PRESETS))
#: How link loss is drawn (see :class:`FaultPlan`).
LOSS_MODELS = ("link", "access")

Scenario = Callable[[Simulation, "Faults"], Awaitable[Any]]
Check = Callable[[Simulation, "Faults", Any], Awaitable[None]]
Restart = Callable[[Simulation, "Faults", str], Awaitable[None]]
Setup = Callable[[Simulation, "Faults"], Awaitable[None]]
Count = int | tuple[int, int]


@dataclass(frozen=True)
class FaultPlan:
    """What :func:`swarm` may draw for each seed.

    Times are virtual seconds from the start of the fault phase (the end of ``setup``).
    A count is a number ``n`` (draw 0 to ``n``) or a range ``(low, high)``.

    Args:
        hosts: hosts created before the scenario runs, each behind a NAT kind drawn
            from ``nat_types``; partitions, isolations and crashes pick among them.
        public: hosts with a public address (a relay, a backend), created first; partitions
            pick among them too; they crash only when named in ``crashable``.
        loss: range of the loss probability during the fault phase.  ``loss_model="link"``:
            one value per seed for every link; ``"access"``: each of ``hosts`` gets its own
            access-link loss, drawn so that the loss between any two hosts (direct, or
            through a lossless ``public`` host such as a relay) is in the range.
        loss_model: ``"link"`` or ``"access"`` (above).
        partitions: how many partitions (between two hosts; one way or both) per seed,
            each starting and ending at random before ``heal_at``.
        isolations: how many isolations per seed: a host of ``isolated`` (with its NAT box)
            cut off from every other node for a duration drawn from ``isolation_time``,
            until ``heal_at``.
        isolated: hosts an isolation may pick (None: ``hosts``).
        isolation_time: range of an isolation's duration (at most ``heal_at``).
        crashes: how many crashes per seed, of hosts drawn from ``crashable``.
        crashable: hosts that may crash (None: ``hosts``; may name ``public`` ones).
        crash_at: range of the crash times (None: 0 to 90% of ``heal_at``).
        downtime: range of how long a crashed host stays down before it restarts (None:
            until ``heal_at``); a restart comes at ``heal_at`` at the latest.
        nat_types: NAT kinds drawn for each of ``hosts``: ``"none"`` and the presets of
            :data:`~asgi_p2p.sim.NAT_PRESETS`.
        healed_loss: every link's loss after healing (None: the drawn losses stay).
        latency: every link's latency (a number; None: the simulation's default), or a
            range: each host (``public`` too) draws its distance to the core in it and a
            link's latency is the sum of its ends' distances (so the direct link is always
            the shortest route between two hosts).
    """

    hosts: tuple[str, ...] = ("server", "client")
    public: tuple[str, ...] = ()
    loss: tuple[float, float] = (0.0, 0.3)
    partitions: Count = 2
    crashes: Count = 0
    nat_types: tuple[str, ...] = ("none",)
    healed_loss: float | None = 0.0
    latency: float | tuple[float, float] | None = None
    loss_model: str = "link"
    isolations: Count = 0
    isolated: tuple[str, ...] | None = None
    isolation_time: tuple[float, float] = (5.0, 20.0)
    crashable: tuple[str, ...] | None = None
    crash_at: tuple[float, float] | None = None
    downtime: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        names = (*self.public, *self.hosts)
        if not self.hosts or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"FaultPlan needs at least one host and distinct host names, got {names!r}")
        lo, hi = self.loss
        if not 0.0 <= lo <= hi < 1.0:
            raise ValueError(f"FaultPlan loss must be a range 0 <= low <= high < 1, got {self.loss!r}")
        if self.loss_model not in LOSS_MODELS:
            raise ValueError(f"FaultPlan loss_model must be one of {', '.join(LOSS_MODELS)}, got {self.loss_model!r}")
        if self.healed_loss is not None and not 0.0 <= self.healed_loss < 1.0:
            raise ValueError(f"FaultPlan healed_loss must be in [0, 1) or None, got {self.healed_loss!r}")
        for what in ("partitions", "crashes", "isolations"):
            lo_n, hi_n = _count(getattr(self, what))
            if not 0 <= lo_n <= hi_n <= MAX_FAULTS:
                raise ValueError(
                    f"FaultPlan {what} must be between 0 and {MAX_FAULTS} (a number or a range), "
                    f"got {getattr(self, what)!r}"
                )
        if _count(self.partitions)[1] and len(names) < 2:
            raise ValueError("FaultPlan partitions need at least two hosts")
        unknown = [k for k in self.nat_types if k not in NAT_KINDS]
        if not self.nat_types or unknown:
            raise ValueError(f"FaultPlan nat_types must be among {', '.join(NAT_KINDS)}, got {self.nat_types!r}")
        for what in ("crashable", "isolated"):
            chosen = getattr(self, what)
            if chosen is not None and (not chosen or not set(chosen) <= set(names)):
                raise ValueError(f"FaultPlan {what} must name some of the plan's hosts {names!r}, got {chosen!r}")
        if isinstance(self.latency, tuple):
            _range("latency", self.latency, positive=False)
        elif self.latency is not None and not self.latency >= 0:
            raise ValueError(f"FaultPlan latency must be >= 0, got {self.latency!r}")
        _range("isolation_time", self.isolation_time, positive=True)
        if self.crash_at is not None:
            _range("crash_at", self.crash_at, positive=False)
        if self.downtime is not None:
            _range("downtime", self.downtime, positive=True)

    def draw(self, seed: int, heal_at: float) -> Faults:
        """The faults of ``seed``: the same for the same seed, plan and ``heal_at``."""
        if not heal_at > 0:
            raise ValueError(f"heal_at must be > 0 virtual seconds, got {heal_at!r}")
        if self.crash_at is not None and self.crash_at[1] > heal_at:
            raise ValueError(f"FaultPlan crash_at {self.crash_at!r} ends after heal_at ({heal_at!r})")
        # A string seed goes through SHA-512: the same draw in every process and PYTHONHASHSEED.
        rng = random.Random(f"asgi-p2p-swarm:{seed}")
        loss = rng.uniform(*self.loss)
        nats = tuple((name, rng.choice(self.nat_types)) for name in self.hosts)
        schedule: list[Fault] = []
        names = [*self.public, *self.hosts]
        for _ in range(rng.randint(*_count(self.partitions))):
            a, b = rng.sample(names, 2)
            start = rng.uniform(0.0, heal_at * 0.8)
            end = rng.uniform(start, heal_at)
            oneway = rng.random() < 0.5
            schedule += [Fault(start, "partition", a, b, oneway), Fault(end, "heal", a, b, oneway)]
        down: dict[str, list[tuple[float, float]]] = {}
        for _ in range(rng.randint(*_count(self.crashes))):
            at = rng.uniform(*(self.crash_at or (0.0, heal_at * 0.9)))
            host = rng.choice(self.crashable or self.hosts)
            if self.downtime is None:
                if host not in down:  # down until the heal: a second crash changes nothing
                    schedule.append(Fault(at, "crash", host))
                    down[host] = [(at, heal_at)]
                continue
            up = min(at + rng.uniform(*self.downtime), heal_at)
            if any(a <= up and at <= b for a, b in down.get(host, ())):
                continue  # still down then: nothing to crash
            down.setdefault(host, []).append((at, up))
            schedule += [Fault(at, "crash", host), Fault(up, "restart", host)]
        for _ in range(rng.randint(*_count(self.isolations))):
            host = rng.choice(self.isolated or self.hosts)
            start = max(0.0, heal_at - rng.uniform(*self.isolation_time))
            schedule.append(Fault(start, "isolate", host))
        host_loss: tuple[tuple[str, float], ...] = ()
        if self.loss_model == "access":
            # a path between two hosts crosses both access links: 1 - (1 - a)(1 - b) in self.loss
            lo, hi = (1.0 - math.sqrt(1.0 - x) for x in self.loss)
            host_loss = tuple((name, rng.uniform(lo, hi)) for name in self.hosts)
            worst = sorted((x for _, x in host_loss), reverse=True)[:2]
            loss = 1.0 - math.prod(1.0 - x for x in worst) if len(worst) == 2 else worst[0]
        distances: tuple[tuple[str, float], ...] = ()
        if isinstance(self.latency, tuple):
            distances = tuple((name, rng.uniform(*self.latency)) for name in names)
        schedule.sort(key=lambda f: f.at)
        return Faults(seed, loss, nats, tuple(schedule), heal_at, host_loss, distances)


def _count(n: Count) -> tuple[int, int]:
    if isinstance(n, tuple):
        if len(n) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in n):
            raise ValueError(f"a count must be a number or a (low, high) pair of integers, got {n!r}")
        return n
    if not isinstance(n, int) or isinstance(n, bool):
        raise ValueError(f"a count must be a number or a (low, high) pair of integers, got {n!r}")
    return (0, n)


def _range(what: str, r: tuple[float, float], *, positive: bool) -> None:
    ok = len(r) == 2 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in r)
    if not ok or not (0.0 < r[0] if positive else 0.0 <= r[0]) or not r[0] <= r[1]:
        bound = "0 < low" if positive else "0 <= low"
        raise ValueError(f"FaultPlan {what} must be a range {bound} <= high (finite seconds), got {r!r}")


@dataclass(frozen=True)
class Faults:
    """The faults drawn for one seed (handed to the scenario, ``check`` and ``restart``)."""

    seed: int
    #: Loss probability of every link until ``heal_at`` (``loss_model="access"``: the highest
    #: loss between two hosts).
    loss: float
    #: (host, NAT kind) for each of the plan's ``hosts``.
    nats: tuple[tuple[str, str], ...]
    #: Partitions (each with its heal), isolations (until ``heal_at``), crashes and restarts,
    #: by time (from the start of the fault phase); hosts still down restart at ``heal_at``.
    schedule: tuple[Fault, ...]
    heal_at: float
    #: (host, access-link loss) for each of the plan's ``hosts`` (``loss_model="access"``).
    host_loss: tuple[tuple[str, float], ...] = ()
    #: (host, distance to the core in seconds) for every host (``latency`` a range).
    distances: tuple[tuple[str, float], ...] = ()

    def nat(self, host: str) -> str:
        """The NAT kind of ``host`` (``"none"``: public)."""
        for name, kind in self.nats:
            if name == host:
                return kind
        raise KeyError(f"{host!r} is not one of the plan's hosts ({', '.join(n for n, _ in self.nats)})")

    @property
    def crashed(self) -> tuple[str, ...]:
        """Hosts that crash (in order of their first crash)."""
        return tuple(dict.fromkeys(f.a for f in self.schedule if f.action == "crash"))

    def link(self, a: str, b: str) -> tuple[float | None, float]:
        """(latency, loss) of the link between hosts ``a`` and ``b`` during the faults
        (latency None: the plan's fixed latency)."""
        distance, access = dict(self.distances), dict(self.host_loss)
        latency = distance[a] + distance[b] if distance else None
        loss = 1.0 - (1.0 - access.get(a, 0.0)) * (1.0 - access.get(b, 0.0)) if access else self.loss
        return latency, loss

    def describe(self) -> str:
        """One line: loss, NATs and the schedule."""
        nats = ", ".join(f"{n}={k}" for n, k in self.nats if k != "none") or "none"
        events = []
        for f in self.schedule:
            if f.action in ("crash", "restart"):
                events.append(f"{f.at:.2f}s {f.action} {f.a}")
            elif f.action == "isolate":
                events.append(f"{f.at:.2f}s isolate {f.a} until heal")
            else:
                arrow = "->" if f.oneway else "<->"
                events.append(f"{f.at:.2f}s {f.action} {f.a}{arrow}{f.b}")
        loss = f"loss={self.loss:.3f}"
        if self.host_loss:
            loss = f"loss<={self.loss:.3f} (access: " + ", ".join(f"{n}={x:.3f}" for n, x in self.host_loss) + ")"
        return f"{loss} nat: {nats}; " + ("; ".join(events) or "no partitions or crashes")


@dataclass(frozen=True)
class SeedResult:
    """How one seed went."""

    seed: int
    faults: Faults
    #: None when the seed passed; else "setup", "faults", "restart", "heal check",
    #: "settle check" or "close".
    failed_phase: str | None
    #: The failure (exception type, message, end of the traceback); "" when it passed.
    error: str
    #: Virtual seconds the seed's simulation ran.
    virtual_time: float
    #: Wall-clock seconds it took.
    wall_time: float
    #: The simulation's trace hash (the same on a replay).
    trace_hash: str
    #: One line that reruns this seed.
    replay: str

    @property
    def passed(self) -> bool:
        return self.failed_phase is None

    def summary(self) -> str:
        if self.passed:
            return f"seed {self.seed}: passed ({self.virtual_time:.1f} virtual s, {self.wall_time:.2f} s)"
        reason = self.error.strip().splitlines()[-1] if self.error.strip() else "?"
        return (
            f"seed {self.seed}: FAILED in {self.failed_phase} at {self.virtual_time:.2f} virtual s: {reason}\n"
            f"  faults: {self.faults.describe()}\n"
            f"  replay: {self.replay}"
        )


@dataclass(frozen=True)
class SwarmReport:
    """One :class:`SeedResult` per seed, in the order run."""

    results: tuple[SeedResult, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> tuple[SeedResult, ...]:
        return tuple(r for r in self.results if r.passed)

    @property
    def failed(self) -> tuple[SeedResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    @property
    def failing_seeds(self) -> list[int]:
        return [r.seed for r in self.failed]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def wall_time(self) -> float:
        return sum(r.wall_time for r in self.results)

    def __str__(self) -> str:
        head = (
            f"swarm: {len(self.passed)}/{len(self.results)} seeds passed "
            f"({sum(r.virtual_time for r in self.results):.0f} virtual s in {self.wall_time:.1f} s)"
        )
        return "\n".join([head, *(r.summary() for r in self.failed)])

    def assert_ok(self) -> None:
        """Raise ``AssertionError`` naming every failing seed with its replay line."""
        if not self.ok:
            raise AssertionError(str(self))


def default_replay(scenario: Callable[..., Any]) -> Callable[[int], str]:
    """Replay lines outside pytest: the :func:`swarm` call for one seed."""
    where = f"{getattr(scenario, '__module__', '?')}.{getattr(scenario, '__qualname__', repr(scenario))}"
    return lambda seed: f"swarm({where}, ..., seeds=[{seed}])"


def swarm(
    scenario: Scenario,
    check: Check | None = None,
    *,
    seeds: Iterable[int] = range(1, 21),
    plan: FaultPlan | None = None,
    heal_at: float = 30.0,
    settle: float = 30.0,
    restart: Restart | None = None,
    replay: Callable[[int], str] | None = None,
    setup: Setup | None = None,
    setup_timeout: float = 120.0,
    deadline: float | None = None,
    **sim_kwargs: Any,
) -> SwarmReport:
    """Run ``scenario`` once per seed under that seed's faults; see the module docstring.

    Args:
        scenario: ``async def scenario(sim, faults)``: the workload during the faults.  The
            plan's hosts exist already (``sim.serve(app, "server")`` uses them).
        check: ``async def check(sim, faults, state)``: the liveness check, run after healing
            and again after ``settle``; ``state`` is what ``scenario`` returned.  None: no check.
        seeds: the seeds (at most :data:`MAX_SEEDS`).
        plan: what to draw (default :class:`FaultPlan`\\ ()).
        heal_at: virtual second (from the end of ``setup``) at which every fault ends.
        settle: virtual seconds between the two checks.
        restart: ``async def restart(sim, faults, host)``, run when a crashed host restarts
            (after its downtime, or at the heal): serve again there; None: nothing runs.
        replay: ``seed -> one line`` rerunning that seed (the ``sim_swarm`` fixture gives
            the pytest command); default: the ``swarm(..., seeds=[N])`` call.
        setup: ``async def setup(sim, faults)``, run before any fault (start the relay, the
            servers and clients, a first round of requests); a failure fails the seed.
        setup_timeout: virtual seconds ``setup`` may take.
        deadline: virtual seconds each ``check`` may take (None: ``settle``).
        sim_kwargs: more :class:`~asgi_p2p.sim.Simulation` arguments (``keep_trace`` is False
            unless given).
    """
    plan = plan if plan is not None else FaultPlan()
    if not settle > 0:
        raise ValueError(f"settle must be > 0 virtual seconds, got {settle!r}")
    deadline = settle if deadline is None else deadline
    if not deadline > 0 or not setup_timeout > 0:
        raise ValueError(f"deadline and setup_timeout must be > 0 virtual seconds, got {deadline!r}, {setup_timeout!r}")
    if not callable(scenario) or (check is not None and not callable(check)):
        raise TypeError("swarm(scenario, check): both must be async functions")
    if (setup is not None and not callable(setup)) or (restart is not None and not callable(restart)):
        raise TypeError("swarm(setup=, restart=): async functions or None")
    seed_list: list[int] = []
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seeds must be integers, got {seed!r}")
        if len(seed_list) == MAX_SEEDS:
            raise ValueError(f"swarm runs at most {MAX_SEEDS} seeds per call")
        seed_list.append(seed)
    plan.draw(0, heal_at)  # bad heal_at: one clear error before any seed runs
    replay_line = replay or default_replay(scenario)
    sim_kwargs.setdefault("keep_trace", False)
    run = _Run(scenario, check, restart, setup, plan, heal_at, settle, deadline, setup_timeout, sim_kwargs)
    return SwarmReport(tuple(run.seed(seed, replay_line(seed)) for seed in seed_list))


@dataclass
class _Run:
    """One :func:`swarm` call's arguments."""

    scenario: Scenario
    check: Check | None
    restart: Restart | None
    setup: Setup | None
    plan: FaultPlan
    heal_at: float
    settle: float
    deadline: float
    setup_timeout: float
    sim_kwargs: dict[str, Any]

    def seed(self, seed: int, replay: str) -> SeedResult:
        plan = self.plan
        faults = plan.draw(seed, self.heal_at)
        phase = ["setup"]
        started = determinism.real_perf_counter()
        latency = plan.latency if not isinstance(plan.latency, tuple) else None
        sim = Simulation(seed=seed, latency=latency, loss=faults.loss, **self.sim_kwargs)
        failed: str | None = None
        error = ""
        limit = self.heal_at + 2 * self.deadline + 2 * self.settle + 60.0
        if self.setup is not None:
            limit += self.setup_timeout

        try:
            _build(sim, plan, faults)
            sim.run(self._main(sim, faults, phase), time_limit=limit)
        except Exception as exc:
            failed, error = phase[0], _format(exc)
        finally:
            virtual_time = sim.now
            try:
                sim.close()
            except Exception as exc:
                if failed is None:
                    failed, error = "close", _format(exc)
        return SeedResult(
            seed=seed,
            faults=faults,
            failed_phase=failed,
            error=error,
            virtual_time=virtual_time,
            wall_time=determinism.real_perf_counter() - started,
            trace_hash=sim.trace.hash(),
            replay=replay,
        )

    async def _main(self, sim: Simulation, faults: Faults, phase: list[str]) -> None:
        if self.setup is not None:
            await _within(self.setup(sim, faults), self.setup_timeout, "setup")
        phase[0] = "faults"
        start = sim.now
        heal_at = start + faults.heal_at
        shifted = [dataclasses.replace(f, at=start + f.at) for f in faults.schedule]
        sim.schedule(f for f in shifted if f.action != "restart")
        restarts = asyncio.ensure_future(self._restarts(sim, faults, [f for f in shifted if f.action == "restart"]))
        try:
            state = await self.scenario(sim, faults)
            if sim.now < heal_at:
                await asyncio.sleep(heal_at - sim.now)
            phase[0] = "restart"
            await restarts
        finally:
            if restarts.done() and not restarts.cancelled():
                restarts.exception()  # retrieved: the scenario's own failure is the one reported
            restarts.cancel()
        phase[0] = "heal"
        sim.heal()
        if self.plan.healed_loss is not None:
            for link in sim.links:
                link.configure(loss=self.plan.healed_loss)
        for host in faults.crashed:
            if not sim.node(host).up:
                phase[0] = "restart"
                sim.restart(host)
                if self.restart is not None:
                    await self.restart(sim, faults, host)
        if self.check is not None:
            phase[0] = "heal check"
            await _within(self.check(sim, faults, state), self.deadline, "the liveness check after healing")
            phase[0] = "settle"
            await asyncio.sleep(self.settle)
            phase[0] = "settle check"
            when = f"the liveness check {self.settle:g} virtual s after healing"
            await _within(self.check(sim, faults, state), self.deadline, when)

    async def _restarts(self, sim: Simulation, faults: Faults, restarts: list[Fault]) -> None:
        """Restart crashed hosts after their downtime (``restart`` hook included)."""
        for fault in restarts:
            if fault.at > sim.now:
                await asyncio.sleep(fault.at - sim.now)
            sim.restart(fault.a)
            if self.restart is not None:
                await self.restart(sim, faults, fault.a)


def _build(sim: Simulation, plan: FaultPlan, faults: Faults) -> None:
    """The plan's hosts, behind their NATs, and (access loss, latency ranges) every link."""
    for name in plan.public:
        sim.host(name)
    for name, kind in faults.nats:
        sim.host(name, nat=None if kind == "none" else kind)
    if not faults.host_loss and not faults.distances:
        return
    for a, b in itertools.combinations((*plan.public, *plan.hosts), 2):
        latency, loss = faults.link(a, b)
        if latency is None:
            sim.link(a, b, loss=loss)
        else:
            sim.link(a, b, latency=latency, loss=loss)


async def _within(work: Awaitable[None], limit: float, what: str) -> None:
    try:
        async with asyncio.timeout(limit):
            await work
    except TimeoutError as exc:
        raise AssertionError(f"{what} did not finish within {limit:g} virtual s") from exc


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))[-MAX_ERROR_CHARS:]
