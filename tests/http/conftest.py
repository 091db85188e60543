"""Fixtures of the HTTP/3 suite.

Every test gets its endpoints from :func:`endpoint_pair`, parametrized by
network: today the real UDP loopback; the simulator (``asgi_p2p.sim``) plugs
in as another parameter without touching the tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from asgi_p2p import Endpoint, NetworkConfig
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.http.types import ASGIApp
from asgi_p2p.sim import Simulation

#: "sim" runs the same tests on the simulated network, in virtual time, at 5% loss.
NETWORKS = ["udp", "sim"]
SIM_LOSS = 0.05


class _SimLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """pytest-asyncio asks this policy for the test's loop: a simulation's virtual-time loop."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        sim = Simulation(seed=1, latency=0.005, loss=SIM_LOSS, keep_trace=False)  # hash only: bounded memory
        sim.loop.simulation = sim  # type: ignore[attr-defined]
        return sim.loop


@pytest.fixture(params=NETWORKS)
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Each HTTP test runs twice: on a real loop with UDP on loopback, and on the simulator."""
    if request.param == "sim":
        return _SimLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


def _current_simulation() -> Simulation | None:
    return getattr(asyncio.get_running_loop(), "simulation", None)


_host_counter = iter(range(1, 1_000_000))


@dataclass
class EndpointPair:
    server: Endpoint
    client: Endpoint
    network: str
    extra: list[Endpoint] = field(default_factory=list)

    async def new_endpoint(self) -> Endpoint:
        """Another node on the same network (a second client, say)."""
        ep = await _bind()
        self.extra.append(ep)
        return ep


async def _bind() -> Endpoint:
    sim = _current_simulation()
    if sim is None:
        return await Endpoint.bind(host="127.0.0.1", config=_config())
    host = sim.host(f"h{next(_host_counter)}")
    return await Endpoint.bind(host="0.0.0.0", port=4433, config=_config(), network=host)


def _config(**overrides: Any) -> NetworkConfig:
    return NetworkConfig(keepalive_interval=0, **overrides)


@pytest.fixture
async def endpoint_pair() -> AsyncIterator[EndpointPair]:
    server = await _bind()
    client = await _bind()
    pair = EndpointPair(server, client, "sim" if _current_simulation() else "udp")
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
        "markers", "real_network: the test needs a real event loop (not the simulator's virtual-time loop)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``real_network`` run on UDP only; they are not collected for the simulator."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_sim = callspec is not None and callspec.params.get("event_loop_policy") == "sim"
        (drop if on_sim and item.get_closest_marker("real_network") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
