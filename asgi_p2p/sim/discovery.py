"""A DNS-like discovery service inside the simulation (names to node ids and addresses).

:class:`MockDNS` implements :class:`asgi_p2p.discovery.Discovery`, so it plugs
into a :class:`~asgi_p2p.discovery.ChainedDiscovery` like the directory or mDNS:
``resolve(node_id)`` and ``resolve_name(name)`` answer a
:class:`~asgi_p2p.identity.NodeAddr` after the lookup delay, ``publish`` registers
a node (under its name, or its node id text).  One MockDNS is shared by the whole
simulation; :meth:`MockDNS.client` gives a node its own view whose
``unpublish`` removes only what that view published.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any, overload

from ..errors import DiscoveryFailed
from ..identity import NodeAddr, NodeId
from ..net.base import Address

__all__ = ["MockDNS", "MockDNSClient", "PeerRecord", "discovery_delay_from_env"]

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
    #: The relay the peer can be reached through (None: direct addresses only).
    relay_url: str | None = None


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

    def register_peer(
        self,
        name: str,
        node_id: Any,
        addresses: list[Address] | tuple[Address, ...] = (),
        relay_url: str | None = None,
    ) -> PeerRecord:
        """Register (or replace) ``name``; returns the record."""
        if not name:
            raise ValueError("name must not be empty")
        record = PeerRecord(name.lower(), node_id, tuple(addresses), relay_url)
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

    label = "sim-dns"

    @overload
    async def resolve(self, key: NodeId) -> NodeAddr: ...
    @overload
    async def resolve(self, key: str) -> Any: ...
    async def resolve(self, key: NodeId | str) -> Any:
        """A :class:`NodeId` resolves to its :class:`NodeAddr` (the Discovery interface).

        A name (str) resolves to the registered node id, as before; prefer
        :meth:`resolve_name`, which gives a NodeAddr.
        """
        if isinstance(key, NodeId):
            return await self._resolve_node(key)
        return (await self.discover(key)).node_id

    async def _resolve_node(self, node_id: NodeId) -> NodeAddr:
        await asyncio.sleep(self.delay)
        self.lookups += 1
        for record in self._records.values():
            if record.node_id == node_id:
                return NodeAddr(node_id, record.addresses, record.relay_url)
        raise DiscoveryFailed(f"node {node_id} is not registered in the simulated DNS")

    async def resolve_name(self, name: str) -> NodeAddr:
        """Resolve ``name`` to a :class:`NodeAddr`; raises :class:`DiscoveryFailed`."""
        record = await self.discover(name)
        if not isinstance(record.node_id, NodeId):
            raise DiscoveryFailed(f"name {name!r} is registered with {record.node_id!r}, not a NodeId")
        return NodeAddr(record.node_id, record.addresses, record.relay_url)

    async def publish(self, addr: NodeAddr, name: str | None = None) -> None:
        """Register ``addr`` under ``name`` (or its node id text) after the lookup delay."""
        await asyncio.sleep(self.delay)
        self.register_peer(name or str(addr.node_id), addr.node_id, addr.direct_addresses, addr.relay_url)

    async def unpublish(self) -> None:
        """The shared MockDNS cannot tell whose records to remove: use :meth:`client` per node."""
        return None

    def client(self) -> MockDNSClient:
        """A per-node view: its :meth:`MockDNSClient.unpublish` removes what it published."""
        return MockDNSClient(self)

    async def connect_by_name(self, endpoint: Any, name: str, **kwargs: Any) -> Any:
        """Discover ``name`` and connect ``endpoint`` (a :class:`~asgi_p2p.Node`, or anything
        whose ``connect`` takes a :class:`NodeAddr`) to it: ``endpoint.connect(addr, **kwargs)``
        with the record's node id, addresses and relay.  Raises :class:`DiscoveryFailed` if
        the name is unknown or registered with something that is not a ``NodeId``.
        """
        return await endpoint.connect(await self.resolve_name(name), **kwargs)


class MockDNSClient:
    """One node's view of a :class:`MockDNS` (the Discovery interface with a working ``unpublish``)."""

    label = "sim-dns"

    def __init__(self, dns: MockDNS) -> None:
        self.dns = dns
        self._names: list[str] = []

    async def resolve(self, node_id: NodeId) -> NodeAddr:
        return await self.dns.resolve(node_id)

    async def resolve_name(self, name: str) -> NodeAddr:
        return await self.dns.resolve_name(name)

    async def publish(self, addr: NodeAddr, name: str | None = None) -> None:
        await self.dns.publish(addr, name)
        key = (name or str(addr.node_id)).lower()
        if key not in self._names:
            self._names.append(key)

    async def unpublish(self) -> None:
        for key in self._names:
            self.dns.unregister(key)
        self._names.clear()
