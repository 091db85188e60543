"""Fixtures of the HTTP/3 suite.

Every async test runs once per network, through pytest-asyncio's loop factories
(:func:`pytest_asyncio_loop_factories`): ``[udp]`` on a real loop with UDP on
loopback, ``[sim]`` on the simulator's virtual-time loop at 5% loss.  The
fixtures (:func:`endpoint_pair`) look at the running loop to bind endpoints on
the right network, so tests never name the network themselves.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from asgi_p2p import Endpoint, NetworkConfig, Node
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.http.types import ASGIApp
from asgi_p2p.sim import Simulation
from asgi_p2p.sim.pytest_plugin import record_seed

#: The simulated network ("sim"): one link between any two nodes, 5 ms latency, 5% loss,
#: and an Ethernet MTU (1472-byte datagrams at most), like a path across the internet.
SIM_LOSS = 0.05
SIM_LATENCY = 0.005
SIM_MTU = 1500


def _sim_loop(seed: int) -> asyncio.AbstractEventLoop:
    """A fresh simulation's virtual-time loop (the test's fixtures find the simulation on it)."""
    sim = Simulation(seed=seed, latency=SIM_LATENCY, loss=SIM_LOSS, keep_trace=False)  # hash only: bounded memory
    sim.loop.simulation = sim  # type: ignore[attr-defined]
    return sim.loop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Each HTTP test runs twice: on a real loop with UDP on loopback (``[udp]``), and on the
    simulator (``[sim]``, seeded by ``--sim-seed``, default 1).

    Tests marked ``real_network`` get the real loop only (the marker states why at each use);
    tests marked ``sim_only`` the simulator only (they need to shape the network).
    """
    seed = config.getoption("--sim-seed", default=None)
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "udp": asyncio.new_event_loop,
        "sim": functools.partial(_sim_loop, 1 if seed is None else int(seed)),
    }
    if item.get_closest_marker("real_network") is not None:
        del factories["sim"]
    elif item.get_closest_marker("sim_only") is not None:
        del factories["udp"]
    return factories


def _current_simulation() -> Simulation | None:
    return getattr(asyncio.get_running_loop(), "simulation", None)


#: host numbers per simulation, so each test's hosts are h1, h2, ... whatever ran before it
#: (the simulator draws a link's loss from its hosts' names: a run-wide counter made a test's
#: losses depend on which tests ran first)
_host_counters: weakref.WeakKeyDictionary[Simulation, Iterator[int]] = weakref.WeakKeyDictionary()


@dataclass
class EndpointPair:
    server: Endpoint
    client: Endpoint
    network: str
    extra: list[Endpoint] = field(default_factory=list)
    #: simulated host name of each endpoint (by ``id``), on the simulator
    hosts: dict[int, str] = field(default_factory=dict)

    @property
    def simulation(self) -> Simulation:
        """The running simulation (only on the simulator)."""
        sim = _current_simulation()
        assert sim is not None, "not running on the simulator"
        return sim

    def host(self, endpoint: Endpoint) -> str:
        """The simulated host ``endpoint`` is bound on (only on the simulator)."""
        return self.hosts[id(endpoint)]

    async def new_endpoint(self, **config: Any) -> Endpoint:
        """Another node on the same network (a second client, say), with ``config`` set
        in its :class:`NetworkConfig`."""
        ep = await self._bind(**config)
        self.extra.append(ep)
        return ep

    async def _bind(self, **config: Any) -> Endpoint:
        ep, host = await _bind(**config)
        if host is not None:
            self.hosts[id(ep)] = host
        return ep


async def _bind(**config: Any) -> tuple[Endpoint, str | None]:
    sim = _current_simulation()
    if sim is None:
        return await Node.bind(host="127.0.0.1", config=_config(**config)), None
    counter = _host_counters.setdefault(sim, iter(range(1, 1_000_000)))
    host = sim.host(f"h{next(counter)}")
    for link in host.links.values():  # auto-linked to every node already there
        link.configure(mtu=SIM_MTU)
    ep = await Node.bind(host="0.0.0.0", port=4433, config=_config(**config), network=host)
    return ep, host.name


def _config(**overrides: Any) -> NetworkConfig:
    return NetworkConfig(keepalive_interval=0, **overrides)


@pytest.fixture
async def endpoint_pair() -> AsyncIterator[EndpointPair]:
    server, server_host = await _bind()
    client, client_host = await _bind()
    pair = EndpointPair(server, client, "sim" if _current_simulation() else "udp")
    for ep, host in ((server, server_host), (client, client_host)):
        if host is not None:
            pair.hosts[id(ep)] = host
    yield pair
    for ep in (client, *pair.extra, server):
        await ep.close(timeout=0.5)


@dataclass
class Served:
    server: H3Server
    client: httpx.AsyncClient
    transport: P2PTransport
    pair: EndpointPair

    @property
    def base_url(self) -> str:
        return f"https://{self.pair.server.node_id}"

    async def new_client(self, endpoint: Endpoint | None = None, **kwargs: Any) -> httpx.AsyncClient:
        ep = endpoint or await self.pair.new_endpoint()
        transport = P2PTransport(ep)
        transport.add_addr(self.pair.server.node_addr())
        return httpx.AsyncClient(transport=transport, base_url=self.base_url, **kwargs)


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(endpoint_pair: EndpointPair) -> AsyncIterator[Serve]:
    """``await serve(app, **H3Server options)`` -> a running server and an httpx client for it."""
    started: list[Served] = []

    async def _serve(app: ASGIApp, **options: Any) -> Served:
        options.setdefault("timeout_graceful_shutdown", 2.0)
        server = H3Server(app, endpoint_pair.server, **options)
        await server.startup()
        transport = P2PTransport(endpoint_pair.client)
        transport.add_addr(endpoint_pair.server.node_addr())
        client = httpx.AsyncClient(
            transport=transport, base_url=f"https://{endpoint_pair.server.node_id}", timeout=30.0
        )
        served = Served(server, client, transport, endpoint_pair)
        started.append(served)
        return served

    yield _serve
    for served in started:
        await served.client.aclose()
        await served.server.shutdown()


@pytest.fixture(autouse=True)
async def _sim_seed_in_report(request: pytest.FixtureRequest) -> None:
    """A failing ``[sim]`` test's report names the seed and how to replay it."""
    sim = _current_simulation()
    if sim is not None:
        record_seed(request.node, sim.seed)


@pytest.fixture(autouse=True)
def _quiet_access_log() -> None:
    logging.getLogger("asgi_p2p.http.access").setLevel(logging.WARNING)


class RssSampler:
    """Peak resident memory growth of this process (server and client both live here)."""

    def __init__(self) -> None:
        import psutil  # type: ignore[import-untyped]

        self._proc = psutil.Process()
        self.baseline = 0
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RssSampler:
        import gc

        gc.collect()
        self.baseline = self.peak = self._proc.memory_info().rss
        self._task = asyncio.create_task(self._sample())
        return self

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self._proc.memory_info().rss)
            await asyncio.sleep(0.01)

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it holds (fails the test after ``timeout`` seconds)."""
    for _ in range(int(timeout / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"condition not met within {timeout}s")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "real_network(reason): the test needs a real event loop, not the simulator's virtual-time loop; "
        "it runs on UDP only",
    )
    config.addinivalue_line(
        "markers",
        "sim_only(reason): the test shapes the simulated network (loss, partitions); it runs on the simulator only",
    )
