"""A DNS-like discovery service inside the simulation (names to node ids and addresses)."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import DiscoveryFailed
from ..net.base import Address

__all__ = ["MockDNS", "PeerRecord", "discovery_delay_from_env"]

log = logging.getLogger("asgi_p2p.sim")


def discovery_delay_from_env() -> float:
    """``SIMULATOR_DISCOVERY_DELAY_MS`` (default 100) in seconds."""
    raw = os.environ.get("SIMULATOR_DISCOVERY_DELAY_MS", "100")
    try:
        return float(raw) / 1000.0
    except ValueError:
        raise ValueError(f"SIMULATOR_DISCOVERY_DELAY_MS={raw!r} is not a number") from None


@dataclass(frozen=True)
class PeerRecord:
    """What a name resolves to."""

    name: str
    #: The peer's :class:`~asgi_p2p.identity.NodeId` (or whatever the test registered).
    node_id: Any
    addresses: tuple[Address, ...] = field(default_factory=tuple)


class MockDNS:
    """Names registered by tests, answered after a virtual-time delay.

    Args:
        delay: seconds of virtual time each :meth:`discover` takes; default from
            ``SIMULATOR_DISCOVERY_DELAY_MS`` (100 ms).
    """

    def __init__(self, delay: float | None = None) -> None:
        self.delay = discovery_delay_from_env() if delay is None else delay
        self._records: dict[str, PeerRecord] = {}
        #: Number of lookups answered (found or not).
        self.lookups = 0

    def register_peer(self, name: str, node_id: Any, addresses: list[Address] | tuple[Address, ...] = ()) -> PeerRecord:
        """Register (or replace) ``name``; returns the record."""
        if not name:
            raise ValueError("name must not be empty")
        record = PeerRecord(name.lower(), node_id, tuple(addresses))
        self._records[record.name] = record
        log.debug("dns: registered %s -> %s", name, node_id)
        return record

    def unregister(self, name: str) -> None:
        """Forget ``name`` (no error if unknown)."""
        self._records.pop(name.lower(), None)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._records)

    async def discover(self, name: str) -> PeerRecord:
        """Resolve ``name`` after :attr:`delay`; raises :class:`DiscoveryFailed` if unknown."""
        await asyncio.sleep(self.delay)
        self.lookups += 1
        record = self._records.get(name.lower())
        if record is None:
            raise DiscoveryFailed(f"name {name!r} is not registered in the simulated DNS")
        return record

    async def resolve(self, name: str) -> Any:
        """Resolve ``name`` to its node id."""
        return (await self.discover(name)).node_id

    async def connect_by_name(self, endpoint: Any, name: str, **kwargs: Any) -> Any:
        """Discover ``name`` and connect ``endpoint`` to it.

        Calls ``endpoint.connect(node_id, addresses=..., **kwargs)`` when the record
        has addresses, else ``endpoint.connect(node_id, **kwargs)``.
        """
        record = await self.discover(name)
        if record.addresses:
            return await endpoint.connect(record.node_id, addresses=list(record.addresses), **kwargs)
        return await endpoint.connect(record.node_id, **kwargs)
