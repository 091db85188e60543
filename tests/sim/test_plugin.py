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


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_plugin_example.py").write_text(TEST_FILE)
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
