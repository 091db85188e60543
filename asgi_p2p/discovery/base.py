"""The discovery interface, static discovery and the chain of sources.

A discovery source turns a :class:`~asgi_p2p.identity.NodeId` (or a name) into a
:class:`~asgi_p2p.identity.NodeAddr` and, if it can, publishes our own address.
Sources: :class:`StaticDiscovery` (tickets and addresses given by the user),
:class:`~asgi_p2p.discovery.directory.DirectoryClient` (a directory served over
QUIC, normally by the relay), :class:`~asgi_p2p.discovery.mdns.MdnsDiscovery`
(the LAN, opt-in) and the simulator's :class:`~asgi_p2p.sim.discovery.MockDNS`.
:class:`ChainedDiscovery` asks them in order.

Nothing here publishes anything to a third party: only sources the user added
to the chain are asked, and static discovery keeps everything in memory.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from ..errors import DiscoveryFailed, P2PError
from ..identity import NodeAddr, NodeId
from ..ticket import Ticket
from .records import SignedNodeRecord, check_name

__all__ = [
    "ChainedDiscovery",
    "Discovery",
    "DiscoveryChainFailed",
    "RecordPublisher",
    "StaticDiscovery",
    "merge_node_addrs",
]

log = logging.getLogger("asgi_p2p.discovery")


@runtime_checkable
class Discovery(Protocol):
    """A source of node addresses (and, optionally, a place to publish ours)."""

    #: Short name of the source, used in error messages ("static", "directory", "mdns", ...).
    label: str

    async def resolve(self, node_id: NodeId) -> NodeAddr:
        """How to reach ``node_id``; raises :class:`~asgi_p2p.errors.DiscoveryFailed` saying why not."""
        ...

    async def resolve_name(self, name: str) -> NodeAddr:
        """The node holding ``name``; sources without names raise :class:`DiscoveryFailed`."""
        ...

    async def publish(self, addr: NodeAddr, name: str | None = None) -> None:
        """Tell this source how to reach us (a no-op for sources that cannot publish)."""
        ...

    async def unpublish(self) -> None:
        """Withdraw what :meth:`publish` published (no error if nothing was)."""
        ...


class DiscoveryChainFailed(DiscoveryFailed):
    """Every source of a :class:`ChainedDiscovery` failed; :attr:`reasons` says why, per source."""

    def __init__(self, message: str, reasons: Sequence[tuple[str, str]]) -> None:
        self.reasons: list[tuple[str, str]] = list(reasons)
        detail = "; ".join(f"{label}: {reason}" for label, reason in self.reasons) or "no discovery source configured"
        super().__init__(f"{message}: {detail}")


def merge_node_addrs(first: NodeAddr, *others: NodeAddr) -> NodeAddr:
    """One NodeAddr for ``first.node_id``: the first relay URL seen, every direct address once, in order."""
    relay = first.relay_url
    seen: dict[tuple[str, int], None] = dict.fromkeys(first.direct_addresses)
    for other in others:
        if other.node_id != first.node_id:
            raise ValueError(f"cannot merge addresses of {other.node_id} into {first.node_id}")
        if relay is None:
            relay = other.relay_url
        for a in other.direct_addresses:
            seen.setdefault(a, None)
    return NodeAddr(first.node_id, list(seen), relay)


def _usable(addr: NodeAddr) -> bool:
    return bool(addr.direct_addresses) or addr.relay_url is not None


class RecordPublisher(abc.ABC):
    """Publishing one signed record of our node and republishing it before it expires.

    Shared by the sources that publish to a third party (the directory client, DNS).
    A subclass calls :meth:`_init_publisher` in ``__init__``, sets ``refresh``, and
    supplies :meth:`_publish_once` (one publication; raises
    :class:`~asgi_p2p.errors.DiscoveryFailed`), :meth:`_record_lifetime` and
    :meth:`_log_refresh_failure`; its ``publish`` checks the node id, then calls
    :meth:`_start_publishing`, and its ``unpublish`` calls :meth:`_withdraw` first.
    The record is republished at 3/4 of its lifetime (sooner after a failure).
    """

    refresh: bool
    #: The record we last published successfully.
    record: SignedNodeRecord | None

    def _init_publisher(self) -> None:
        self._published: tuple[NodeAddr, str | None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self.record = None

    @abc.abstractmethod
    async def _publish_once(self, addr: NodeAddr, name: str | None) -> None:
        """Publish the record once (raises :class:`~asgi_p2p.errors.DiscoveryFailed`)."""

    @abc.abstractmethod
    def _record_lifetime(self) -> float:
        """Seconds a record we publish stays valid."""

    def _first_refresh_delay(self) -> float:
        return self._record_lifetime() * 0.75

    @abc.abstractmethod
    def _log_refresh_failure(self, retry: float, exc: DiscoveryFailed) -> None:
        """Say that a refresh failed and when it is retried."""

    async def _start_publishing(self, addr: NodeAddr, name: str | None) -> None:
        """Publish once now, then (if ``refresh``) keep the record fresh in the background."""
        if name is not None:
            check_name(name)
        await self._publish_once(addr, name)
        self._published = (addr, name)
        if self.refresh and (self._refresher is None or self._refresher.done()):
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        retry = min(30.0, max(1.0, self._record_lifetime() / 20))
        delay = self._first_refresh_delay()
        while True:
            await asyncio.sleep(delay)
            if self._published is None:
                return
            try:
                await self._publish_once(*self._published)
                delay = self._record_lifetime() * 0.75
            except DiscoveryFailed as exc:
                self._log_refresh_failure(retry, exc)
                delay = retry

    def _withdraw(self) -> bool:
        """Stop refreshing and forget the record; whether there was one to delete."""
        self._stop_refresh()
        if self._published is None:
            return False
        self._published = None
        self.record = None
        return True

    def _stop_refresh(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None

    async def close(self) -> None:
        """Stop refreshing (the record stays until it expires)."""
        self._stop_refresh()
        self._published = None


class StaticDiscovery:
    """Addresses the user gave: tickets, ``NodeAddr`` values and names for them.

    Publishing is a no-op: static knowledge lives only in this process.
    """

    label = "static"

    def __init__(
        self,
        addrs: Iterable[NodeAddr | Ticket | str] = (),
        names: Mapping[str, NodeAddr | Ticket | str] | None = None,
    ) -> None:
        self._by_node: dict[NodeId, NodeAddr] = {}
        self._by_name: dict[str, NodeId] = {}
        for a in addrs:
            self.add(a)
        for name, a in (names or {}).items():
            self.add(a, name=name)

    def add(self, addr: NodeAddr | Ticket | str, name: str | None = None) -> NodeAddr:
        """Remember ``addr`` (a NodeAddr, a Ticket or ticket text), merged with what is known; returns it."""
        if isinstance(addr, str):
            addr = Ticket.parse(addr)
        if isinstance(addr, Ticket):
            addr = addr.to_node_addr()
        old = self._by_node.get(addr.node_id)
        merged = addr if old is None else merge_node_addrs(addr, old)
        self._by_node[addr.node_id] = merged
        if name is not None:
            self._by_name[check_name(name)] = addr.node_id
        return merged

    def remove(self, node_id: NodeId) -> None:
        """Forget ``node_id`` and its names (no error if unknown)."""
        self._by_node.pop(node_id, None)
        for name in [n for n, node in self._by_name.items() if node == node_id]:
            del self._by_name[name]

    async def resolve(self, node_id: NodeId) -> NodeAddr:
        addr = self._by_node.get(node_id)
        if addr is None:
            raise DiscoveryFailed(f"no static address for node {node_id}; pass a ticket")
        return addr

    async def resolve_name(self, name: str) -> NodeAddr:
        node = self._by_name.get(name)
        if node is None:
            raise DiscoveryFailed(f"no static entry for name {name!r}")
        return await self.resolve(node)

    async def publish(self, addr: NodeAddr, name: str | None = None) -> None:
        return None

    async def unpublish(self) -> None:
        return None


class ChainedDiscovery:
    """Ask sources in order; the first usable answer wins.

    Each source gets at most ``timeout`` seconds.  An answer is *usable* if it
    has a relay URL or a direct address; answers without either (a source that
    knows the node but no address) are merged into the result and the chain
    goes on.  The result merges addresses: the winner's relay URL (or the
    first one seen) and every direct address, the winner's first.  If no
    source gives a usable answer, :class:`DiscoveryChainFailed` lists each
    source's reason.

    :meth:`publish` and :meth:`unpublish` go to every source, in order; they
    raise :class:`DiscoveryChainFailed` only if every source failed.
    """

    label = "chain"

    def __init__(self, sources: Iterable[Discovery], *, timeout: float = 5.0) -> None:
        if timeout <= 0:
            raise ValueError(f"discovery timeout must be positive, got {timeout!r}")
        self.sources: list[Discovery] = list(sources)
        self.timeout = timeout

    async def _ask(self, source: Discovery, arg: NodeId | str) -> NodeAddr:
        async with asyncio.timeout(self.timeout):
            if isinstance(arg, NodeId):
                return await source.resolve(arg)
            return await source.resolve_name(arg)

    async def _resolve(self, arg: NodeId | str, what: str) -> NodeAddr:
        reasons: list[tuple[str, str]] = []
        partial: list[NodeAddr] = []
        for source in self.sources:
            label = getattr(source, "label", type(source).__name__)
            try:
                addr = await self._ask(source, arg)
            except TimeoutError:
                reasons.append((label, f"no answer within {self.timeout:g} s"))
                continue
            except P2PError as exc:
                reasons.append((label, str(exc)))
                continue
            if isinstance(arg, NodeId) and addr.node_id != arg:
                reasons.append((label, f"answered for node {addr.node_id} instead"))
                continue
            if partial and addr.node_id != partial[0].node_id:
                reasons.append((label, f"names node {addr.node_id}, not {partial[0].node_id}"))
                continue
            if _usable(addr):
                result = merge_node_addrs(addr, *partial)
                log.debug("resolved %s via %s: %r", what, label, result)
                return result
            partial.append(addr)
            reasons.append((label, "knows the node but no address"))
        raise DiscoveryChainFailed(f"could not resolve {what}", reasons)

    async def resolve(self, node_id: NodeId) -> NodeAddr:
        return await self._resolve(node_id, f"node {node_id}")

    async def resolve_name(self, name: str) -> NodeAddr:
        return await self._resolve(name, f"name {name!r}")

    async def publish(self, addr: NodeAddr, name: str | None = None) -> None:
        await self._each("publish", lambda s: s.publish(addr, name))

    async def unpublish(self) -> None:
        await self._each("unpublish", lambda s: s.unpublish())

    async def _each(self, what: str, call: Callable[[Discovery], Awaitable[None]]) -> None:
        reasons: list[tuple[str, str]] = []
        for source in self.sources:
            label = getattr(source, "label", type(source).__name__)
            try:
                async with asyncio.timeout(self.timeout):
                    await call(source)
            except TimeoutError:
                reasons.append((label, f"no answer within {self.timeout:g} s"))
            except P2PError as exc:
                reasons.append((label, str(exc)))
        if reasons:
            for label, reason in reasons:
                log.warning("%s via %s failed: %s", what, label, reason)
            if len(reasons) == len(self.sources):
                raise DiscoveryChainFailed(f"{what} failed on every source", reasons)
