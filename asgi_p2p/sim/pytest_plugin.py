"""pytest plugin (entry point ``pytest11``: ``asgi_p2p_sim``).

* ``sim`` fixture: a fresh :class:`~asgi_p2p.sim.Simulation` per test, seeded from
  ``--sim-seed`` (default :data:`DEFAULT_SEED`), with a virtual-time limit per
  :meth:`~asgi_p2p.sim.Simulation.run` from ``--sim-time-limit`` (default 600 s).
  The fixture is synchronous: write plain ``def`` tests that call ``sim.run(main())``.
* ``--sim-seeds N``: every test using ``sim`` runs for N seeds (``seed``, ``seed+1``, ...).
* On failure the report shows the seed and a one-line replay command.
* Marker ``@pytest.mark.sim(seed=..., time_limit=..., **Simulation kwargs)``
  configures one test.  The command line wins over the marker: ``--sim-seed`` (and
  each seed of a ``--sim-seeds`` sweep) replaces the marker's ``seed``, so the
  replay line of a failure always reruns the seed it names.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Generator
from typing import Any

import pytest

from .network import Simulation

__all__ = ["DEFAULT_SEED", "DEFAULT_TIME_LIMIT", "record_seed"]

DEFAULT_SEED = 1
DEFAULT_TIME_LIMIT = 600.0

_SEED_KEY = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("asgi-p2p simulator")
    group.addoption("--sim-seed", type=int, default=None, help=f"seed of the sim fixture (default {DEFAULT_SEED})")
    group.addoption("--sim-seeds", type=int, default=1, help="run each test using the sim fixture for N seeds")
    group.addoption(
        "--sim-time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT,
        help=f"virtual seconds each sim.run() may take (default {DEFAULT_TIME_LIMIT:g})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sim(seed=None, time_limit=None, **kwargs): configure the sim fixture (asgi_p2p.sim)"
    )


def _base_seed(config: pytest.Config) -> int:
    seed = config.getoption("--sim-seed")
    return DEFAULT_SEED if seed is None else int(seed)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    n = int(metafunc.config.getoption("--sim-seeds") or 1)
    if "sim" in metafunc.fixturenames and n > 1:
        base = _base_seed(metafunc.config)
        seeds = list(range(base, base + n))
        metafunc.parametrize("sim", seeds, indirect=True, ids=[f"seed={s}" for s in seeds])


@pytest.fixture
def sim(request: pytest.FixtureRequest) -> Generator[Simulation, None, None]:
    """A :class:`~asgi_p2p.sim.Simulation`; call ``sim.run(main())`` in a plain test."""
    marker = request.node.get_closest_marker("sim")
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
    # precedence: a --sim-seeds sweep's seed, then --sim-seed, then the marker, then the default
    marker_seed = kwargs.pop("seed", None)
    seed = getattr(request, "param", None)
    if seed is None:
        seed = request.config.getoption("--sim-seed")
    if seed is None:
        seed = marker_seed
    if seed is None:
        seed = DEFAULT_SEED
    time_limit = kwargs.pop("time_limit", None)
    if time_limit is None:
        time_limit = float(request.config.getoption("--sim-time-limit"))
    record_seed(request.node, int(seed))
    simulation = Simulation(seed=int(seed), time_limit=time_limit, **kwargs)
    try:
        yield simulation
    finally:
        simulation.close()


def record_seed(item: pytest.Item, seed: int) -> None:
    """Name ``seed`` in ``item``'s failure report, with a replay command.

    The ``sim`` fixture does this itself; call it from fixtures that build their own
    :class:`~asgi_p2p.sim.Simulation` seeded from ``--sim-seed``.
    """
    item.stash[_SEED_KEY] = int(seed)


def replay_command(item: pytest.Item, seed: int) -> str:
    """A shell command that reruns ``item`` with ``seed``."""
    nodeid = item.nodeid
    nodeid = re.sub(r"seed=\d+-?", "", nodeid)
    nodeid = re.sub(r"-?\[\]$", "", nodeid.replace("-]", "]"))
    return f"python -m pytest {shlex.quote(nodeid)} --sim-seed {seed}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    seed = item.stash.get(_SEED_KEY, None)
    if seed is None or not report.failed:
        return
    report.sections.append(("asgi-p2p simulation", f"simulation seed: {seed}\nreplay: {replay_command(item, seed)}"))
