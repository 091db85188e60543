"""One behaviour suite, several networks: how tests get endpoints.

A test receives a :class:`Harness` (fixture ``net``) and calls
``net.run(scenario)`` with an async function taking the harness.  The UDP
harness runs it on a fresh real event loop with endpoints on 127.0.0.1; the
simulator harness (added by ``asgi_p2p.sim``) runs it on the virtual-time loop
with each endpoint on its own simulated host.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asgi_p2p import NetworkConfig, Node, SecretKey

T = TypeVar("T")


class Harness(abc.ABC):
    name = "abstract"
    #: True when a "slow" wait (e.g. to prove something did NOT happen) costs no wall time.
    virtual_time = False

    @abc.abstractmethod
    def run(self, scenario: Callable[[Harness], Awaitable[T]], *, timeout: float = 60.0) -> T:
        """Run ``scenario(self)`` to completion on this harness's loop."""

    @abc.abstractmethod
    async def endpoint(self, name: str, **kwargs: Any) -> Node:
        """A bound endpoint named ``name`` on this harness's network."""


class UdpHarness(Harness):
    name = "udp"

    def __init__(self) -> None:
        self._endpoints: list[Node] = []

    def run(self, scenario: Callable[[Harness], Awaitable[T]], *, timeout: float = 60.0) -> T:
        async def main() -> T:
            try:
                return await asyncio.wait_for(scenario(self), timeout)
            finally:
                for ep in self._endpoints:
                    await ep.close(timeout=0.5)
                self._endpoints.clear()

        return asyncio.run(main())

    async def endpoint(self, name: str, **kwargs: Any) -> Node:
        config = kwargs.pop("config", None) or NetworkConfig()
        ep = await Node.bind(SecretKey.from_seed(name), host="127.0.0.1", port=0, config=config, **kwargs)
        self._endpoints.append(ep)
        return ep
