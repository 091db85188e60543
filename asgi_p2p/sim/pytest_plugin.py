"""pytest plugin (entry point ``pytest11``: ``asgi_p2p_sim``).

* ``sim`` fixture: a fresh :class:`~asgi_p2p.sim.Simulation` per test, seeded from
  ``--sim-seed`` (default :data:`DEFAULT_SEED`), with a virtual-time limit per
  :meth:`~asgi_p2p.sim.Simulation.run` from ``--sim-time-limit`` (default 600 s).
  Closing it closes what ``sim.serve``/``sim.client``/``sim.relay`` made.
* **Async tests**: an ``async def`` test using ``sim`` (directly or through a fixture)
  runs on the simulation's virtual-time loop, as ``sim.run(test(...))``; so do the
  function-scoped async fixtures of such a test (``async def`` and async generator
  fixtures; their setup and teardown are each one ``sim.run``).  pytest-asyncio is not
  needed; when it is installed (any ``asyncio_mode``), these tests and fixtures are left
  to this plugin and every other async test stays pytest-asyncio's.
  A plain ``def`` test calls ``sim.run(main())`` itself.
* ``--sim-seeds N``: every test using ``sim`` runs for N seeds (``seed``, ``seed+1``, ...).
* On failure the report shows the seed and a one-line replay command.
* Marker ``@pytest.mark.sim(seed=..., time_limit=..., **Simulation kwargs)``
  configures one test.  The command line wins over the marker: ``--sim-seed`` (and
  each seed of a ``--sim-seeds`` sweep) replaces the marker's ``seed``, so the
  replay line of a failure always reruns the seed it names.
* ``sim_swarm`` fixture: :func:`~asgi_p2p.sim.swarm.swarm` whose failing seeds print this
  test's replay command; ``--sim-seed``/``--sim-seeds`` choose its seeds.
"""

from __future__ import annotations

import functools
import inspect
import re
import shlex
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator
from typing import Any

import pytest

from .network import Simulation
from .swarm import SwarmReport, swarm

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
    """A :class:`~asgi_p2p.sim.Simulation`: ``await`` on it in an ``async def`` test, or
    call ``sim.run(main())`` in a plain one."""
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


# -- async tests and fixtures on the simulation's loop ------------------------------------------


def _uses_sim(item: pytest.Function) -> bool:
    return "sim" in item.fixturenames


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> Generator[None, Any, Any]:
    """Turn each ``async def`` test using ``sim`` into a plain function running it on the simulation.

    This wrapper is the innermost one, so pytest-asyncio (whose wrapper claims coroutine
    functions when the result comes back) sees a synchronous test and leaves it alone.
    """
    result = yield
    items = result if isinstance(result, list) else [result]
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj) and _uses_sim(item):
            item.obj = _test_on_the_simulation(item, item.obj)
    return result


def _test_on_the_simulation(item: pytest.Function, test: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    @functools.wraps(test)
    def run_on_the_simulation(*args: Any, **kwargs: Any) -> Any:
        simulation = item.funcargs["sim"]
        assert isinstance(simulation, Simulation)
        return simulation.run(test(*args, **kwargs))

    return run_on_the_simulation


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, Any, Any]:
    """Run the function-scoped async fixtures of a test using ``sim`` on the simulation's loop.

    The outermost wrapper: the fixture function is swapped for a synchronous one before
    pytest-asyncio (or pytest's "async fixture without a plugin" check) looks at it.
    """
    func = fixturedef.func
    is_async = inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
    if not is_async or fixturedef.scope != "function" or "sim" not in request.fixturenames:
        return (yield)
    simulation = request.getfixturevalue("sim")  # set up first, so torn down last
    assert isinstance(simulation, Simulation)
    with pytest.MonkeyPatch.context() as patch:  # FixtureDef.func is Final: as pytest-asyncio does
        patch.setattr(fixturedef, "func", _fixture_on_the_simulation(func, fixturedef.argname, simulation, request))
        return (yield)


def _fixture_on_the_simulation(
    func: Callable[..., Any], name: str, simulation: Simulation, request: pytest.FixtureRequest
) -> Callable[..., Any]:
    instance = request.instance
    params = list(inspect.signature(func).parameters)
    if instance is not None and params and params[0] == "self" and not inspect.ismethod(func):
        func = func.__get__(instance, type(instance))  # a fixture defined in the test's class

    if inspect.isasyncgenfunction(func):

        def run_generator(**kwargs: Any) -> Generator[Any, None, None]:
            agen: AsyncGenerator[Any, None] = func(**kwargs)
            yield simulation.run(_first(agen, name))
            simulation.run(_rest(agen, name))

        return run_generator

    def run_coroutine(**kwargs: Any) -> Any:
        return simulation.run(func(**kwargs))

    return run_coroutine


async def _first(agen: AsyncGenerator[Any, None], name: str) -> Any:
    try:
        return await agen.__anext__()
    except StopAsyncIteration:
        raise ValueError(f"async fixture {name!r} did not yield a value") from None


async def _rest(agen: AsyncGenerator[Any, None], name: str) -> None:
    try:
        await agen.__anext__()
    except StopAsyncIteration:
        return
    await agen.aclose()
    raise ValueError(f"async fixture {name!r} yielded more than once")


# -- swarm testing --------------------------------------------------------------------------------


@pytest.fixture
def sim_swarm(request: pytest.FixtureRequest) -> Callable[..., SwarmReport]:
    """:func:`~asgi_p2p.sim.swarm.swarm` for this test: each failing seed's replay line is
    the pytest command for this test with ``--sim-seed N``.

    The command line wins over the call's ``seeds``: ``--sim-seed N`` runs seed N only (so
    a replay line reruns just that seed), ``--sim-seeds K`` runs K seeds from ``--sim-seed``
    (default :data:`DEFAULT_SEED`).  The report is returned; ``report.assert_ok()`` fails
    the test naming every failing seed.
    """
    item = request.node
    seed = request.config.getoption("--sim-seed")
    count = int(request.config.getoption("--sim-seeds") or 1)

    def run(scenario: Any, check: Any = None, **kwargs: Any) -> SwarmReport:
        if count > 1:
            base = DEFAULT_SEED if seed is None else int(seed)
            kwargs["seeds"] = range(base, base + count)
        elif seed is not None:
            kwargs["seeds"] = [int(seed)]
        kwargs.setdefault("replay", lambda n: replay_command(item, n))
        return swarm(scenario, check, **kwargs)

    return run
