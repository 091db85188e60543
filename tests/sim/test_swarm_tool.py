"""asgi_p2p.sim.swarm: a scenario over many seeds with random faults, a liveness phase after
healing, and a report naming the failing seeds with one-line replays."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from asgi_p2p.sim import FaultPlan, Faults, Simulation, swarm
from asgi_p2p.sim.swarm import MAX_SEEDS

BODY = bytes(range(256)) * 20  # 5 KiB: several packets
DIGEST = hashlib.sha256(BODY).hexdigest()


async def _body(request: Any) -> Response:
    return Response(BODY)


app = Starlette(routes=[Route("/", _body)])


async def serve_and_fetch(sim: Simulation, faults: Faults) -> httpx.AsyncClient:
    """The workload during the faults: requests may fail; the liveness check may not."""
    await sim.serve(app, "server", name="api")
    client = await sim.client("client", "api", timeout=5.0)
    for _ in range(3):
        try:
            await client.get("/")
        except httpx.HTTPError:
            pass
    return client


async def body_matches(sim: Simulation, faults: Faults, client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert hashlib.sha256(response.content).hexdigest() == DIGEST


async def lossy_check(sim: Simulation, faults: Faults, client: httpx.AsyncClient) -> None:
    """Fails (deterministically) for every seed whose drawn loss exceeds 25%."""
    await body_matches(sim, faults, client)
    assert faults.loss <= 0.25, f"loss {faults.loss:.3f} > 0.25"


PLAN = FaultPlan(hosts=("server", "client"), loss=(0.1, 0.3), partitions=2)


def test_a_scenario_that_always_passes_passes_for_every_seed() -> None:
    report = swarm(serve_and_fetch, body_matches, seeds=range(1, 6), plan=PLAN, heal_at=10.0, settle=30.0)
    assert report.ok, str(report)
    assert [r.seed for r in report.results] == [1, 2, 3, 4, 5]
    assert report.failing_seeds == []
    for r in report.results:
        # the scenario, then heal at 10 s, a check, settle 30 s, a second check
        assert 40.0 < r.virtual_time < 40.0 + 2 * 30.0
        assert 0 < r.wall_time < 30
        assert len(r.trace_hash) == 64
    # faults were really drawn: some seed had a partition, losses vary across the range
    assert any(f.action == "partition" for r in report.results for f in r.faults.schedule)
    assert len({round(r.faults.loss, 6) for r in report.results}) == 5
    assert str(report).startswith("swarm: 5/5 seeds passed")


def test_the_report_names_exactly_the_failing_seeds_and_a_replay_reruns_one() -> None:
    seeds = range(1, 11)
    expected = [s for s in seeds if PLAN.draw(s, 10.0).loss > 0.25]
    assert expected and len(expected) < len(seeds)  # some pass, some fail
    report = swarm(serve_and_fetch, lossy_check, seeds=seeds, plan=PLAN, heal_at=10.0, settle=30.0)
    assert report.failing_seeds == expected
    text = str(report)
    assert text.startswith(f"swarm: {10 - len(expected)}/10 seeds passed")
    for r in report.failed:
        assert r.failed_phase == "heal check"
        assert "AssertionError: loss" in r.error
        assert r.replay == f"swarm({__name__}.serve_and_fetch, ..., seeds=[{r.seed}])"
        assert f"seed {r.seed}: FAILED in heal check" in text and r.replay in text
        assert r.faults.describe() in text
    # the replay: the same seed alone fails the same way, at the same virtual time, same packets
    first = report.failed[0]
    (again,) = swarm(serve_and_fetch, lossy_check, seeds=[first.seed], plan=PLAN, heal_at=10.0, settle=30.0).results
    assert (again.failed_phase, again.virtual_time, again.trace_hash, again.faults) == (
        first.failed_phase,
        first.virtual_time,
        first.trace_hash,
        first.faults,
    )
    assert again.error.splitlines()[-1] == first.error.splitlines()[-1]
    with pytest.raises(AssertionError, match=rf"seed {first.seed}: FAILED"):
        report.assert_ok()


def test_fault_drawing_is_deterministic_per_seed_and_bounded() -> None:
    plan = FaultPlan(
        hosts=("a", "b", "c"),
        public=("relay",),
        loss=(0.05, 0.3),
        partitions=3,
        crashes=2,
        nat_types=("none", "full-cone", "port-restricted-cone", "symmetric"),
    )
    draws = [plan.draw(seed, 20.0) for seed in range(300)]
    assert draws == [plan.draw(seed, 20.0) for seed in range(300)]
    assert len({d.describe() for d in draws}) == 300  # every seed its own faults
    kinds = set()
    for d in draws:
        assert 0.05 <= d.loss <= 0.3
        partitions = [f for f in d.schedule if f.action == "partition"]
        heals = [f for f in d.schedule if f.action == "heal"]
        crashes = [f for f in d.schedule if f.action == "crash"]
        assert len(partitions) == len(heals) <= 3 and len(crashes) <= 2
        assert len(d.schedule) == len(partitions) + len(heals) + len(crashes)
        assert all(0.0 <= f.at <= 20.0 for f in d.schedule)
        assert [f.at for f in d.schedule] == sorted(f.at for f in d.schedule)
        assert {f.a for f in crashes} <= {"a", "b", "c"}  # never the public relay
        assert all(f.a != f.b for f in partitions)
        kinds |= {kind for _, kind in d.nats}
    assert kinds == {"none", "full-cone", "port-restricted-cone", "symmetric"}
    assert max(d.loss for d in draws) > 0.29 and min(d.loss for d in draws) < 0.06
    # the same in another process under another hash seed
    code = "from asgi_p2p.sim import FaultPlan; print(FaultPlan(hosts=('a','b','c'), public=('relay',), " + (
        "loss=(0.05, 0.3), partitions=3, crashes=2, nat_types=('none','full-cone','port-restricted-cone',"
        "'symmetric')).draw(17, 20.0).describe())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(__file__).parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert out.stdout.strip() == draws[17].describe()


def test_crashed_hosts_restart_at_heal_and_the_restart_hook_serves_again() -> None:
    plan = FaultPlan(hosts=("server", "client"), loss=(0.0, 0.05), partitions=0, crashes=1)
    seeds = [s for s in range(1, 40) if plan.draw(s, 10.0).crashed == ("server",)][:2]
    assert len(seeds) == 2
    restarted: list[tuple[int, str, float]] = []

    async def restart(sim: Simulation, faults: Faults, host: str) -> None:
        restarted.append((faults.seed, host, sim.now))
        await sim.serve(app, host, name="api")

    async def check(sim: Simulation, faults: Faults, client: httpx.AsyncClient) -> None:
        # the client's old connection is to the dead process: a new client dials the new one
        fresh = await sim.client("client", "api", timeout=5.0)
        response = await fresh.get("/")
        assert hashlib.sha256(response.content).hexdigest() == DIGEST

    report = swarm(serve_and_fetch, check, seeds=seeds, plan=plan, heal_at=10.0, settle=30.0, restart=restart)
    assert report.ok, str(report)
    assert [(s, h) for s, h, _ in restarted] == [(s, "server") for s in seeds]
    assert all(t == pytest.approx(10.0, abs=0.01) for _, _, t in restarted)
    # without the hook the check fails: nothing serves after the crash
    failed = swarm(serve_and_fetch, body_matches, seeds=seeds[:1], plan=plan, heal_at=10.0, settle=30.0)
    assert failed.failing_seeds == seeds[:1]
    assert failed.failed[0].failed_phase == "heal check"


def test_a_hanging_check_fails_with_the_phase_and_the_settle_time() -> None:
    async def quiet(sim: Simulation, faults: Faults) -> None:
        return None

    async def hangs(sim: Simulation, faults: Faults, state: None) -> None:
        if sim.now > 10:  # passes after healing (5 s), hangs after settling (15 s)
            await sim.loop.create_future()

    plan = FaultPlan(hosts=("x",), partitions=0)
    (result,) = swarm(quiet, hangs, seeds=[3], plan=plan, heal_at=5.0, settle=10.0).results
    assert result.failed_phase == "settle check"
    assert "the liveness check 10 virtual s after healing did not finish within 10 virtual s" in result.error
    assert result.virtual_time == pytest.approx(25.0)


def test_bad_input_is_a_clear_error() -> None:
    async def scenario(sim: Simulation, faults: Faults) -> None:
        return None

    with pytest.raises(ValueError, match="loss must be a range"):
        FaultPlan(loss=(0.3, 0.1))
    with pytest.raises(ValueError, match="nat_types must be among"):
        FaultPlan(nat_types=("carrier-grade",))
    with pytest.raises(ValueError, match="distinct host names"):
        FaultPlan(hosts=("a", "a"))
    with pytest.raises(ValueError, match="partitions must be between 0 and 100"):
        FaultPlan(partitions=10_000)
    with pytest.raises(ValueError, match="heal_at must be > 0"):
        swarm(scenario, seeds=[1], heal_at=0)
    with pytest.raises(ValueError, match="settle must be > 0"):
        swarm(scenario, seeds=[1], settle=-1)
    with pytest.raises(TypeError, match="seeds must be integers"):
        swarm(scenario, seeds=["7"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=f"at most {MAX_SEEDS} seeds"):
        swarm(scenario, seeds=iter(range(10**9)))  # stops counting, never builds the list


SWARM_TEST_FILE = """
from asgi_p2p.sim import FaultPlan


async def scenario(sim, faults):
    return None


async def check(sim, faults, state):
    assert faults.loss <= 0.2, f"loss {faults.loss:.3f}"


def test_swarm(sim_swarm):
    report = sim_swarm(scenario, check, seeds=range(1, 9), plan=FaultPlan(hosts=("x",), partitions=0),
                       heal_at=1.0, settle=1.0)
    print("ran seeds", [r.seed for r in report.results])
    report.assert_ok()
"""


def _run_pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_swarm_example.py").write_text(SWARM_TEST_FILE)
    return subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", "test_swarm_example.py"),
            *("-o", "addopts=", "--rootdir", str(tmp_path), *args),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_the_sim_swarm_fixture_prints_pytest_replays_and_honours_the_seed_options(tmp_path: Path) -> None:
    plan = FaultPlan(hosts=("x",), partitions=0)
    failing = [s for s in range(1, 9) if plan.draw(s, 1.0).loss > 0.2]
    assert failing and len(failing) < 8
    out = _run_pytest(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "ran seeds [1, 2, 3, 4, 5, 6, 7, 8]" in out.stdout
    for seed in failing:
        assert f"replay: python -m pytest test_swarm_example.py::test_swarm --sim-seed {seed}" in out.stdout
    # the replay line: that seed only, failing the same way
    seed = failing[0]
    replay = _run_pytest(tmp_path, "--sim-seed", str(seed))
    assert replay.returncode == 1 and f"ran seeds [{seed}]" in replay.stdout
    assert f"seed {seed}: FAILED in heal check" in replay.stdout
    passing = next(s for s in range(1, 9) if s not in failing)
    assert _run_pytest(tmp_path, "--sim-seed", str(passing)).returncode == 0
    sweep = _run_pytest(tmp_path, "--sim-seed", "100", "--sim-seeds", "3")
    assert "ran seeds [100, 101, 102]" in sweep.stdout


# -- what the project's own swarm needs (tests/sim/swarm.py), as any user would -------------------


def test_access_loss_latency_ranges_isolation_and_crash_with_downtime_are_drawn_as_planned() -> None:
    plan = FaultPlan(
        hosts=("server", "a", "b"),
        public=("relay",),
        loss=(0.1, 0.3),
        loss_model="access",
        latency=(0.01, 0.04),
        partitions=0,
        isolations=(1, 1),
        isolated=("server",),
        isolation_time=(20.0, 24.0),
        crashes=(1, 1),
        crashable=("server", "a", "relay"),
        crash_at=(6.0, 14.0),
        downtime=(1.0, 10.0),
    )
    victims = set()
    for seed in range(60):
        f = plan.draw(seed, 25.0)
        isolate, crash, restart = f.schedule
        assert (isolate.action, isolate.a) == ("isolate", "server") and 1.0 <= isolate.at <= 5.0
        assert crash.action == "crash" and restart.action == "restart" and crash.a == restart.a
        assert 6.0 <= crash.at <= 14.0 and 1.0 <= restart.at - crash.at <= 10.0 and restart.at <= 25.0
        victims.add(crash.a)
        access = dict(f.host_loss)
        assert set(access) == {"server", "a", "b"}
        distance = dict(f.distances)
        assert set(distance) == {"relay", "server", "a", "b"} and all(0.01 <= d <= 0.04 for d in distance.values())
        for x, y in (("server", "a"), ("a", "b"), ("relay", "b")):
            latency, loss = f.link(x, y)
            assert latency == pytest.approx(distance[x] + distance[y])
            expected = 1 - (1 - access.get(x, 0.0)) * (1 - access.get(y, 0.0))
            assert loss == pytest.approx(expected)
            if "relay" not in (x, y):  # between two hosts, direct or through the lossless relay
                assert 0.1 <= loss <= 0.3
        assert f.link("relay", "a")[1] == pytest.approx(access["a"])  # the relay loses nothing
        assert 0.1 <= f.loss <= 0.3  # the worst pair
        assert "isolate server until heal" in f.describe() and f"restart {crash.a}" in f.describe()
    assert victims == {"server", "a", "relay"}  # a public host crashes when named


class Recorder:
    """A setup, scenario, restart and check that note what they saw of the network."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, float]] = []
        self.start = 0.0

    async def setup(self, sim: Simulation, faults: Faults) -> None:
        self.relay = await sim.relay("relay")
        await sim.serve(app, "server", name="api", relay_url=self.relay)
        self.client = await sim.client("a", "api", timeout=5.0, relay_url=self.relay, wait_for_relay=10.0)
        self.events.append(("setup done", "", sim.now))

    async def scenario(self, sim: Simulation, faults: Faults) -> None:
        self.start = sim.now
        isolate = next(f for f in faults.schedule if f.action == "isolate")
        await asyncio.sleep(isolate.at + 0.5)
        assert sim.is_partitioned("server", "a") and sim.is_partitioned("a", "server")
        assert sim.is_partitioned("relay", "server-nat") and not sim.is_partitioned("server", "server-nat")
        assert sim.find_path("a", "relay") is not None

    async def restart(self, sim: Simulation, faults: Faults, host: str) -> None:
        self.events.append(("restart", host, sim.now - self.start))
        assert sim.node(host).up
        if host == "relay":
            await sim.relay(host)
        elif host == "server":
            await sim.serve(app, host, name="api", relay_url=self.relay)

    async def check(self, sim: Simulation, faults: Faults, state: None) -> None:
        assert not sim.is_partitioned("server", "a")
        for link in sim.links:  # healed_loss=None: the drawn losses stay
            if {link.a.name, link.b.name} == {"server-nat", "a"}:
                assert link.loss == pytest.approx(faults.link("server", "a")[1])
        self.events.append(("check", "", sim.now - self.start))
        response = await self.client.get("/")
        assert hashlib.sha256(response.content).hexdigest() == DIGEST


def test_setup_isolation_and_a_restart_before_the_heal_run_in_order() -> None:
    plan = FaultPlan(
        hosts=("server", "a"),
        public=("relay",),
        loss=(0.0, 0.02),
        loss_model="access",
        latency=(0.01, 0.02),
        nat_types=("port-restricted-cone",),
        healed_loss=None,
        partitions=0,
        isolations=(1, 1),
        isolated=("server",),
        isolation_time=(4.0, 5.0),
        crashes=(1, 1),
        crashable=("relay", "server"),
        crash_at=(6.0, 7.0),
        downtime=(1.0, 2.0),
    )
    seed = next(s for s in range(1, 50) if plan.draw(s, 10.0).crashed == ("server",))
    faults = plan.draw(seed, 10.0)
    rec = Recorder()
    report = swarm(
        rec.scenario,
        rec.check,
        seeds=[seed],
        plan=plan,
        heal_at=10.0,
        settle=5.0,
        deadline=20.0,
        setup=rec.setup,
        restart=rec.restart,
    )
    report.assert_ok()
    restart_at = next(f.at for f in faults.schedule if f.action == "restart")
    assert [e[:2] for e in rec.events] == [("setup done", ""), ("restart", "server"), ("check", ""), ("check", "")]
    assert rec.events[1][2] == pytest.approx(restart_at, abs=1e-6)  # before the heal, not at it
    assert rec.events[2][2] == pytest.approx(10.0, abs=1e-6)  # counted from the end of setup


def test_a_failing_setup_or_restart_hook_fails_the_seed_in_its_phase() -> None:
    plan = FaultPlan(hosts=("x",), partitions=0, crashes=(1, 1), downtime=(1.0, 1.0))

    async def quiet(sim: Simulation, faults: Faults) -> None:
        return None

    async def bad_setup(sim: Simulation, faults: Faults) -> None:
        raise RuntimeError("no database")

    async def bad_restart(sim: Simulation, faults: Faults, host: str) -> None:
        raise RuntimeError(f"{host} did not come back")

    async def hangs(sim: Simulation, faults: Faults) -> None:
        await sim.loop.create_future()

    (r,) = swarm(quiet, seeds=[1], plan=plan, heal_at=5.0, setup=bad_setup).results
    assert r.failed_phase == "setup" and "RuntimeError: no database" in r.error
    (r,) = swarm(quiet, seeds=[1], plan=plan, heal_at=5.0, restart=bad_restart).results
    assert r.failed_phase == "restart" and "RuntimeError: x did not come back" in r.error
    (r,) = swarm(quiet, seeds=[1], plan=plan, heal_at=5.0, setup=hangs, setup_timeout=7.0).results
    assert r.failed_phase == "setup" and "setup did not finish within 7 virtual s" in r.error


def test_new_plan_fields_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="loss_model must be one of link, access"):
        FaultPlan(loss_model="per-packet")
    with pytest.raises(ValueError, match="crashable must name some of the plan's hosts"):
        FaultPlan(crashable=("mainframe",))
    with pytest.raises(ValueError, match="isolated must name some"):
        FaultPlan(isolated=())
    with pytest.raises(ValueError, match="isolations must be between 0 and 100"):
        FaultPlan(isolations=(2, 1))
    with pytest.raises(ValueError, match="crashes must be between 0 and 100"):
        FaultPlan(crashes=(0, 101))
    with pytest.raises(ValueError, match=r"a count must be a number or a \(low, high\) pair"):
        FaultPlan(partitions=(1, 2, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="downtime must be a range 0 < low <= high"):
        FaultPlan(downtime=(0.0, 1.0))
    with pytest.raises(ValueError, match="latency must be a range 0 <= low <= high"):
        FaultPlan(latency=(0.04, 0.01))
    with pytest.raises(ValueError, match="isolation_time must be a range"):
        FaultPlan(isolation_time=(1.0, float("inf")))
    with pytest.raises(ValueError, match="healed_loss must be in"):
        FaultPlan(healed_loss=1.0)
    with pytest.raises(ValueError, match=r"crash_at \(1.0, 20.0\) ends after heal_at"):
        FaultPlan(crash_at=(1.0, 20.0)).draw(1, 10.0)

    async def scenario(sim: Simulation, faults: Faults) -> None:
        return None

    with pytest.raises(ValueError, match="deadline and setup_timeout must be > 0"):
        swarm(scenario, seeds=[1], deadline=0)
    with pytest.raises(TypeError, match="async functions or None"):
        swarm(scenario, seeds=[1], setup="setup")  # type: ignore[arg-type]


def test_isolate_cuts_a_host_and_its_own_nat_box_off_and_rejoin_undoes_it() -> None:
    sim = Simulation(seed=1)
    sim.host("relay")
    sim.host("server", nat="full-cone")
    sim.host("laptop", nat="symmetric")
    sim.isolate("server")
    assert sim.find_path("laptop", "server") is None and sim.find_path("server", "relay") is None
    assert sim.is_partitioned("server-nat", "relay") and not sim.is_partitioned("server", "server-nat")
    assert sim.find_path("laptop", "relay") is not None
    sim.partition("laptop", "relay")
    sim.rejoin("server")
    assert sim.find_path("laptop", "server") is not None
    assert sim.is_partitioned("laptop", "relay")  # other partitions stay
    with pytest.raises(TypeError, match="server-nat is not a host"):
        sim.isolate("server-nat")
    sim.close()
