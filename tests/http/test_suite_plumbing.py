"""The suite's own plumbing: every async HTTP test runs on UDP and on the simulator, the
``real_network`` / ``sim_only`` markers pick one, and a failing ``[sim]`` run names its seed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

EXAMPLE = """
import pytest

async def test_both(endpoint_pair):
    assert endpoint_pair.network in ("udp", "sim")

@pytest.mark.real_network("needs a real loop")
async def test_udp_only(endpoint_pair):
    assert endpoint_pair.network == "udp"

@pytest.mark.sim_only("shapes the simulated network")
async def test_sim_only(endpoint_pair):
    assert endpoint_pair.network == "sim"

async def test_fails_on_sim(endpoint_pair):
    assert endpoint_pair.network == "udp"
"""


def test_networks_markers_and_replay_line(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.http.conftest"]\n')
    (tmp_path / "test_example.py").write_text(EXAMPLE)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-v",
            "-o",
            "addopts=",
            "-o",
            "asyncio_mode=auto",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            "-W",
            "error::pytest.PytestDeprecationWarning",
            "--rootdir",
            str(tmp_path),
            "--sim-seed",
            "5",
            "test_example.py",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    text = out.stdout + out.stderr
    for line in (
        "test_both[udp] PASSED",
        "test_both[sim] PASSED",
        "test_udp_only PASSED",
        "test_sim_only PASSED",
        "test_fails_on_sim[udp] PASSED",
        "test_fails_on_sim[sim] FAILED",
        "simulation seed: 5",
        "replay: python -m pytest 'test_example.py::test_fails_on_sim[sim]' --sim-seed 5",
        "1 failed, 5 passed",
    ):
        assert line in text, text
    assert "Deprecat" not in text, text
