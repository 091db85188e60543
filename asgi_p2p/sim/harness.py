"""Run the behaviour suite's scenarios on the simulator.

``tests/harness.py`` defines the harness interface (``run(scenario, timeout=...)``,
``await endpoint(name, **kwargs)``); :class:`SimHarness` implements it with one
simulated host per endpoint, on a fresh :class:`~asgi_p2p.sim.Simulation`
per :meth:`SimHarness.run`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .network import Simulation

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["SimHarness"]

T = TypeVar("T")


class SimHarness:
    """Endpoints on simulated hosts, scenarios on the virtual-time loop.

    Args:
        seed: the simulation seed.
        latency: link latency in seconds (10 ms: behaviour tests are not about delay).
        loss: link loss probability (0: behaviour tests are not about loss; the
            simulator's own tests cover lossy links).
        configure: called with the new :class:`Simulation` before the scenario runs
            (to add NATs, faults, ...).
    """

    name = "sim"
    #: Waiting costs no wall time here.
    virtual_time = True

    def __init__(
        self,
        seed: int = 1,
        *,
        latency: float = 0.010,
        loss: float = 0.0,
        configure: Callable[[Simulation], None] | None = None,
    ) -> None:
        self.seed = seed
        self.latency = latency
        self.loss = loss
        self.configure = configure
        self._sim: Simulation | None = None
        self._endpoints: list[Node] = []

    @property
    def sim(self) -> Simulation:
        """The simulation of the running scenario."""
        if self._sim is None:
            raise RuntimeError("no scenario is running")
        return self._sim

    def run(self, scenario: Callable[[Any], Awaitable[T]], *, timeout: float = 60.0) -> T:
        """Run ``scenario(self)`` in virtual time (``timeout`` virtual seconds)."""
        sim = Simulation(seed=self.seed, latency=self.latency, loss=self.loss)
        self._sim = sim
        if self.configure is not None:
            self.configure(sim)

        async def main() -> T:
            try:
                async with asyncio.timeout(timeout):
                    return await scenario(self)
            finally:
                for ep in self._endpoints:
                    await ep.close(timeout=0.5)
                self._endpoints.clear()

        try:
            return sim.run(main(), time_limit=timeout + 60.0)
        finally:
            self._endpoints.clear()
            self._sim = None
            sim.close()

    async def endpoint(self, name: str, **kwargs: Any) -> Node:
        """A node with key ``SecretKey.from_seed(name)`` on a new simulated host."""
        from ..config import NetworkConfig
        from ..identity import SecretKey
        from ..node import Node

        sim = self.sim
        host_name = name
        n = 1
        while host_name in {node.name for node in sim.nodes}:
            n += 1
            host_name = f"{name}-{n}"
        host = sim.host(host_name, nat=kwargs.pop("nat", None))
        config = kwargs.pop("config", None) or NetworkConfig()
        ep = await Node.bind(
            SecretKey.from_seed(name), host="0.0.0.0", port=kwargs.pop("port", 0), config=config, network=host, **kwargs
        )
        self._endpoints.append(ep)
        return ep
