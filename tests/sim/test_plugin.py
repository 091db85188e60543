"""The pytest plugin: seed options, seed sweep, replay line on failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TEST_FILE = """
import asyncio
import pytest

def test_uses_sim(sim):
    async def main():
        await asyncio.sleep(1)
        return sim.seed
    assert sim.run(main()) == sim.seed

def test_fails(sim):
    assert sim.seed == -1

@pytest.mark.sim(seed=77, time_limit=5)
def test_marker(sim):
    print(f"marker test seed={sim.seed}")
    async def main():
        await asyncio.sleep(10)
    with pytest.raises(TimeoutError):
        sim.run(main())
"""


def _pytest(tmp_path: Path, *args: str, source: str = TEST_FILE) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_plugin_example.py").write_text(source)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-v",
            str(tmp_path / "test_plugin_example.py"),
            "-o",
            "addopts=",
            "--rootdir",
            str(tmp_path),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_marker_configures_a_test_without_command_line_seed(tmp_path: Path) -> None:
    out = _pytest(tmp_path, "-s", "-k", "marker")
    assert "marker test seed=77\nPASSED" in out.stdout  # and its time_limit applies


def test_seed_option_and_replay_line(tmp_path: Path) -> None:
    out = _pytest(tmp_path, "--sim-seed", "9", "-s")
    assert "test_uses_sim PASSED" in out.stdout
    # the command line wins over the marker's seed (its other settings still apply)
    assert "marker test seed=9\nPASSED" in out.stdout
    assert "test_fails FAILED" in out.stdout
    assert "simulation seed: 9" in out.stdout
    assert "replay: python -m pytest test_plugin_example.py::test_fails --sim-seed 9" in out.stdout


def test_seed_sweep(tmp_path: Path) -> None:
    out = _pytest(tmp_path, "--sim-seeds", "3", "--sim-seed", "100", "-k", "uses_sim or fails")
    for s in (100, 101, 102):
        assert f"test_uses_sim[seed={s}] PASSED" in out.stdout
        assert f"test_fails[seed={s}] FAILED" in out.stdout
        assert f"replay: python -m pytest test_plugin_example.py::test_fails --sim-seed {s}" in out.stdout


ASYNC_TEST_FILE = """
import asyncio
import pytest

events = []

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].split(".")[1]
            events.append(f"app {kind}")
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["path"].encode()})

@pytest.fixture
async def served(sim):
    assert asyncio.get_running_loop() is sim.loop
    server = await sim.serve(app, "web", name="shop")
    yield server
    assert asyncio.get_running_loop() is sim.loop
    events.append("served teardown")

@pytest.fixture
async def client(sim, served):
    return await sim.client("alice", "shop")

async def test_sim_async(sim, client):
    assert asyncio.get_running_loop() is sim.loop
    before = sim.now
    assert (await client.get("/hi")).text == "/hi"
    await asyncio.sleep(300)
    assert sim.now - before >= 300
    print(f"async test seed={sim.seed} loop={type(asyncio.get_running_loop()).__name__}")

async def test_sim_async_fails(sim):
    await asyncio.sleep(1)
    assert sim.now == -1

def test_sync_with_async_fixture(sim, served):
    async def main():
        return served.node_id
    assert sim.run(main()) == served.node_id

def test_teardown_order():
    print("EVENTS", events)

@pytest.mark.asyncio
async def test_plain_async():
    print(f"plain async test loop={type(asyncio.get_running_loop()).__name__}")
"""


def test_async_tests_and_fixtures_run_on_the_simulation_without_pytest_asyncio(tmp_path: Path) -> None:
    out = _pytest(
        tmp_path,
        "-p",
        "no:asyncio",
        "-s",
        "-k",
        "not plain",
        "-W",
        "ignore::pytest.PytestUnknownMarkWarning",
        source=ASYNC_TEST_FILE,
    )
    assert "async test seed=1 loop=VirtualTimeLoop\nPASSED" in out.stdout, out.stdout + out.stderr
    assert "test_sync_with_async_fixture PASSED" in out.stdout
    # the async test's failure reads like any test's, with the seed and the replay line
    assert "test_sim_async_fails FAILED" in out.stdout
    assert "assert 1001.0 == -1" not in out.stdout and "sim.now == -1" in out.stdout
    assert "replay: python -m pytest test_plugin_example.py::test_sim_async_fails --sim-seed 1" in out.stdout
    # fixture teardown on the sim loop before the simulation closes (app shutdown last), twice
    once = ["app startup", "served teardown", "app shutdown"]
    assert f"EVENTS {once + once}" in out.stdout


def test_async_sim_tests_with_pytest_asyncio_in_auto_mode(tmp_path: Path) -> None:
    out = _pytest(
        tmp_path,
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "-s",
        "--sim-seeds",
        "2",
        source=ASYNC_TEST_FILE,
    )
    for seed in (1, 2):
        assert f"async test seed={seed} loop=VirtualTimeLoop\nPASSED" in out.stdout, out.stdout + out.stderr
        assert f"test_sim_async_fails[seed={seed}] FAILED" in out.stdout
        assert f"test_sync_with_async_fixture[seed={seed}] PASSED" in out.stdout
    # an async test without sim stays pytest-asyncio's (a real loop)
    assert "plain async test loop=_UnixSelectorEventLoop\nPASSED" in out.stdout
    assert "Warning" not in out.stdout.split("short test summary")[0].split("FAILURES")[0]


def test_async_sim_tests_with_pytest_asyncio_in_strict_mode(tmp_path: Path) -> None:
    out = _pytest(
        tmp_path,
        "-o",
        "asyncio_mode=strict",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        "-s",
        source=ASYNC_TEST_FILE,
    )
    assert "async test seed=1 loop=VirtualTimeLoop\nPASSED" in out.stdout, out.stdout + out.stderr
    assert "test_sync_with_async_fixture PASSED" in out.stdout
    assert "plain async test loop=_UnixSelectorEventLoop\nPASSED" in out.stdout
    assert "PytestDeprecationWarning" not in out.stdout  # no "async fixture in strict mode" complaint
