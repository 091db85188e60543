"""Swarm testing: one scenario over many seeds, each with its own random faults.

For every seed :func:`swarm` builds a fresh :class:`~asgi_p2p.sim.Simulation`, draws
faults from the seed (:meth:`FaultPlan.draw`: a loss rate for every link, NAT kinds,
timed partitions and crashes), creates the plan's hosts and runs three phases:

1. **faults**: ``scenario(sim, faults)`` runs while the faults happen (its return value
   is handed to ``check``);
2. **heal** at ``heal_at`` virtual seconds: partitions end, every link's loss becomes
   ``plan.healed_loss``, crashed hosts restart (``restart(sim, faults, host)`` runs for
   each, to serve again), then ``check(sim, faults, state)`` must finish within
   ``settle`` virtual seconds;
3. **settle**: ``settle`` virtual seconds later ``check`` runs again, within ``settle``.

Each seed's failure (an exception, a deadlock, the time limit) is caught and kept in the
:class:`SwarmReport`, with a one-line replay; the run is deterministic per seed, so the
replay fails the same way.  As FoundationDB's and TigerBeetle's simulators do.
"""

from __future__ import annotations

import asyncio
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

Scenario = Callable[[Simulation, "Faults"], Awaitable[Any]]
Check = Callable[[Simulation, "Faults", Any], Awaitable[None]]
Restart = Callable[[Simulation, "Faults", str], Awaitable[None]]


@dataclass(frozen=True)
class FaultPlan:
    """What :func:`swarm` may draw for each seed.

    Args:
        hosts: hosts created before the scenario runs, each behind a NAT kind drawn
            from ``nat_types``; partitions and crashes pick among them.
        public: hosts with a public address (a relay, a backend), created first; partitions
            pick among them too, crashes do not.
        loss: range of the loss probability of every link during the fault phase
            (one value per seed, drawn uniformly).
        partitions: at most this many partitions (between two hosts; one way or both)
            per seed, each starting and ending at random before ``heal_at``.
        crashes: at most this many crashes of ``hosts`` per seed, at random times before
            ``heal_at``; a crashed host restarts at ``heal_at``.
        nat_types: NAT kinds drawn for each of ``hosts``: ``"none"`` and the presets of
            :data:`~asgi_p2p.sim.NAT_PRESETS`.
        healed_loss: every link's loss after healing.
        latency: every link's latency (None: the simulation's default).
    """

    hosts: tuple[str, ...] = ("server", "client")
    public: tuple[str, ...] = ()
    loss: tuple[float, float] = (0.0, 0.3)
    partitions: int = 2
    crashes: int = 0
    nat_types: tuple[str, ...] = ("none",)
    healed_loss: float = 0.0
    latency: float | None = None

    def __post_init__(self) -> None:
        names = (*self.public, *self.hosts)
        if not self.hosts or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"FaultPlan needs at least one host and distinct host names, got {names!r}")
        lo, hi = self.loss
        if not 0.0 <= lo <= hi < 1.0:
            raise ValueError(f"FaultPlan loss must be a range 0 <= low <= high < 1, got {self.loss!r}")
        if not 0.0 <= self.healed_loss < 1.0:
            raise ValueError(f"FaultPlan healed_loss must be in [0, 1), got {self.healed_loss!r}")
        for what in ("partitions", "crashes"):
            n = getattr(self, what)
            if not 0 <= n <= MAX_FAULTS:
                raise ValueError(f"FaultPlan {what} must be between 0 and {MAX_FAULTS}, got {n!r}")
        if self.partitions and len(names) < 2:
            raise ValueError("FaultPlan partitions need at least two hosts")
        unknown = [k for k in self.nat_types if k not in NAT_KINDS]
        if not self.nat_types or unknown:
            raise ValueError(f"FaultPlan nat_types must be among {', '.join(NAT_KINDS)}, got {self.nat_types!r}")
        if self.latency is not None and not self.latency >= 0:
            raise ValueError(f"FaultPlan latency must be >= 0, got {self.latency!r}")

    def draw(self, seed: int, heal_at: float) -> Faults:
        """The faults of ``seed``: the same for the same seed, plan and ``heal_at``."""
        if not heal_at > 0:
            raise ValueError(f"heal_at must be > 0 virtual seconds, got {heal_at!r}")
        # A string seed goes through SHA-512: the same draw in every process and PYTHONHASHSEED.
        rng = random.Random(f"asgi-p2p-swarm:{seed}")
        loss = rng.uniform(*self.loss)
        nats = tuple((name, rng.choice(self.nat_types)) for name in self.hosts)
        schedule: list[Fault] = []
        names = [*self.public, *self.hosts]
        for _ in range(rng.randint(0, self.partitions)):
            a, b = rng.sample(names, 2)
            start = rng.uniform(0.0, heal_at * 0.8)
            end = rng.uniform(start, heal_at)
            oneway = rng.random() < 0.5
            schedule += [Fault(start, "partition", a, b, oneway), Fault(end, "heal", a, b, oneway)]
        for _ in range(rng.randint(0, self.crashes)):
            schedule.append(Fault(rng.uniform(0.0, heal_at * 0.9), "crash", rng.choice(self.hosts)))
        schedule.sort(key=lambda f: f.at)
        return Faults(seed, loss, nats, tuple(schedule), heal_at)


@dataclass(frozen=True)
class Faults:
    """The faults drawn for one seed (handed to the scenario, ``check`` and ``restart``)."""

    seed: int
    #: Loss probability of every link until ``heal_at``.
    loss: float
    #: (host, NAT kind) for each of the plan's ``hosts``.
    nats: tuple[tuple[str, str], ...]
    #: Partitions (each with its heal) and crashes, by time; crashed hosts restart at ``heal_at``.
    schedule: tuple[Fault, ...]
    heal_at: float

    def nat(self, host: str) -> str:
        """The NAT kind of ``host`` (``"none"``: public)."""
        for name, kind in self.nats:
            if name == host:
                return kind
        raise KeyError(f"{host!r} is not one of the plan's hosts ({', '.join(n for n, _ in self.nats)})")

    @property
    def crashed(self) -> tuple[str, ...]:
        """Hosts that crash (once each, in order), so restart at ``heal_at``."""
        return tuple(dict.fromkeys(f.a for f in self.schedule if f.action == "crash"))

    def describe(self) -> str:
        """One line: loss, NATs and the schedule."""
        nats = ", ".join(f"{n}={k}" for n, k in self.nats if k != "none") or "none"
        events = []
        for f in self.schedule:
            if f.action == "crash":
                events.append(f"{f.at:.2f}s crash {f.a}")
            else:
                arrow = "->" if f.oneway else "<->"
                events.append(f"{f.at:.2f}s {f.action} {f.a}{arrow}{f.b}")
        return f"loss={self.loss:.3f} nat: {nats}; " + ("; ".join(events) or "no partitions or crashes")


@dataclass(frozen=True)
class SeedResult:
    """How one seed went."""

    seed: int
    faults: Faults
    #: None when the seed passed; else "faults", "heal check", "settle check" or "close".
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
        heal_at: virtual second at which every fault ends.
        settle: virtual seconds each ``check`` may take, and the wait between the two.
        restart: ``async def restart(sim, faults, host)``, run after healing for each
            crashed host (serve again there); None: nothing runs.
        replay: ``seed -> one line`` rerunning that seed (the ``sim_swarm`` fixture gives
            the pytest command); default: the ``swarm(..., seeds=[N])`` call.
        sim_kwargs: more :class:`~asgi_p2p.sim.Simulation` arguments (``keep_trace`` is False
            unless given).
    """
    plan = plan if plan is not None else FaultPlan()
    if not settle > 0:
        raise ValueError(f"settle must be > 0 virtual seconds, got {settle!r}")
    if not callable(scenario) or (check is not None and not callable(check)):
        raise TypeError("swarm(scenario, check): both must be async functions")
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
    results = [
        _run_seed(seed, scenario, check, restart, plan, heal_at, settle, replay_line(seed), sim_kwargs)
        for seed in seed_list
    ]
    return SwarmReport(tuple(results))


def _run_seed(
    seed: int,
    scenario: Scenario,
    check: Check | None,
    restart: Restart | None,
    plan: FaultPlan,
    heal_at: float,
    settle: float,
    replay: str,
    sim_kwargs: dict[str, Any],
) -> SeedResult:
    faults = plan.draw(seed, heal_at)
    phase = ["setup"]
    started = determinism.real_perf_counter()
    sim = Simulation(seed=seed, latency=plan.latency, loss=faults.loss, **sim_kwargs)
    failed: str | None = None
    error = ""

    async def main() -> None:
        phase[0] = "faults"
        state = await scenario(sim, faults)
        if sim.now < heal_at:
            await asyncio.sleep(heal_at - sim.now)
        phase[0] = "heal"
        _heal(sim, plan, faults)
        if restart is not None:
            for host in faults.crashed:
                await restart(sim, faults, host)
        if check is not None:
            phase[0] = "heal check"
            await _within(check(sim, faults, state), settle, "after healing")
            phase[0] = "settle"
            await asyncio.sleep(settle)
            phase[0] = "settle check"
            await _within(check(sim, faults, state), settle, f"{settle:g} virtual s after healing")

    try:
        for name in plan.public:
            sim.host(name)
        for name, kind in faults.nats:
            sim.host(name, nat=None if kind == "none" else kind)
        sim.schedule(faults.schedule)
        sim.run(main(), time_limit=heal_at + 4 * settle + 60.0)
    except Exception as exc:
        failed, error = phase[0], _format(exc)
    finally:
        virtual_time = sim.now
        try:
            sim.close()
        except Exception as exc:
            if failed is None:
                failed, error = "close", _format(exc)
    trace_hash = sim.trace.hash()
    return SeedResult(
        seed=seed,
        faults=faults,
        failed_phase=failed,
        error=error,
        virtual_time=virtual_time,
        wall_time=determinism.real_perf_counter() - started,
        trace_hash=trace_hash,
        replay=replay,
    )


async def _within(check: Awaitable[None], settle: float, when: str) -> None:
    try:
        async with asyncio.timeout(settle):
            await check
    except TimeoutError as exc:
        raise AssertionError(f"the liveness check {when} did not finish within {settle:g} virtual s") from exc


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))[-MAX_ERROR_CHARS:]


def _heal(sim: Simulation, plan: FaultPlan, faults: Faults) -> None:
    """End every fault: partitions, loss, crashed hosts."""
    sim.heal()
    for link in sim.links:
        link.configure(loss=plan.healed_loss)
    for host in faults.crashed:
        sim.restart(host)
