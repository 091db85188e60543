"""Apps, clients and relays on simulated hosts: what :meth:`Simulation.serve`,
:meth:`Simulation.client` and :meth:`Simulation.relay` build.

Every node made here gets a key and a random source derived from its host's
name (so node ids are the same in every run and every seed), binds on the
simulated host, and is closed by the simulation in a fixed order when it
closes: clients, then servers (graceful shutdown, lifespan shutdown), then
relays, then the network.

A crash of the host (:meth:`Simulation.crash`) kills what runs on it as a
crashed process dies: its node is closed without a word on the network (its
sockets are gone), and its app gets no lifespan shutdown.  After
``sim.restart(host)``, serving again on the same port gives the same node id.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from ..config import NetworkConfig
from ..errors import InvalidNodeId
from ..http.client import P2PTransport
from ..http.lifespan import LifespanMode
from ..http.server import H3Server
from ..http.types import ASGIApp
from ..identity import NodeAddr, NodeId, SecretKey
from ..net.base import DatagramNetwork
from ..node import Node
from ..relay.proto import RelayLimits
from ..relay.server import RelayServer
from .discovery import MockDNS

__all__ = ["SimApps", "SimClient", "SimHost", "SimRelay", "SimServer"]

log = logging.getLogger("asgi_p2p.sim")

#: Port :meth:`SimApps.serve` binds by default (so a restarted server has the same address).
SERVE_PORT = 443
#: Port :meth:`SimApps.relay` binds by default.
RELAY_PORT = 3478
#: Virtual seconds a server's graceful shutdown waits for requests in flight (unless given).
SHUTDOWN_GRACE = 5.0
#: Virtual seconds a node waits for its peers to acknowledge the close.
NODE_CLOSE_TIMEOUT = 1.0


class SimHost(DatagramNetwork, Protocol):
    """What the helpers need of a simulated host (:class:`asgi_p2p.sim.Host` is one)."""

    name: str
    up: bool
    on_crash: list[Callable[[], None]]


@dataclass(eq=False)
class SimServer:
    """An ASGI app served on a simulated host (made by :meth:`Simulation.serve`)."""

    #: The ASGI application.
    app: ASGIApp
    #: The HTTP/3 server running it (``server.lifespan.state`` is the lifespan state).
    server: H3Server
    #: The node it is served on.
    node: Node
    #: Name of the simulated host.
    host: str
    #: The name it is registered under in the simulated DNS (None: its node id text).
    name: str | None
    #: Whether its host crashed while it ran.
    crashed: bool = False
    #: Whether it was closed (by :meth:`close`, by the simulation or by a crash).
    closed: bool = False
    _forget: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def node_id(self) -> NodeId:
        return self.node.node_id

    @property
    def addr(self) -> NodeAddr:
        """How clients reach it now (its socket address, its NAT's mapping, its relay)."""
        return self.node.node_addr()

    @property
    def url(self) -> str:
        """``https://<node id>``: a base URL for clients given its address (or the simulated DNS)."""
        return f"https://{self.node.node_id}"

    async def close(self) -> None:
        """Graceful shutdown (GOAWAY, requests in flight finish, lifespan shutdown), then close
        the node and remove its DNS record.  Idempotent; nothing to do after a crash."""
        if self.closed:
            return
        self.closed = True
        for forget in self._forget:
            forget()
        try:
            await self.server.shutdown()
        finally:
            await self.node.close(timeout=NODE_CLOSE_TIMEOUT)


@dataclass(eq=False)
class SimClient:
    """An httpx client of a simulated host (the object behind :meth:`Simulation.client`)."""

    client: httpx.AsyncClient
    node: Node
    host: str
    closed: bool = False

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self.client.aclose()
        finally:
            await self.node.close(timeout=NODE_CLOSE_TIMEOUT)


@dataclass(eq=False)
class SimRelay:
    """A relay server on a simulated host (made by :meth:`Simulation.relay`)."""

    relay: RelayServer
    host: str
    closed: bool = False

    @property
    def url(self) -> str:
        return str(self.relay.url)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.relay.close(timeout=NODE_CLOSE_TIMEOUT)


class SimApps:
    """The servers, clients and relays of one simulation, and their shutdown.

    Args:
        seed: the simulation's seed (node random sources derive from it).
        dns: the simulation's DNS; servers are registered there, clients resolve there.
        loop: the simulation's loop.
    """

    def __init__(self, seed: int, dns: MockDNS, loop: asyncio.AbstractEventLoop) -> None:
        self.seed = seed
        self.loop = loop
        self.dns = dns
        self.servers: list[SimServer] = []
        self.clients: list[SimClient] = []
        self.relays: list[SimRelay] = []
        self._client_count: dict[str, int] = {}
        self._lives: dict[str, int] = {}

    def _rng(self, key_seed: str) -> random.Random:
        """A node's random source: the same in every run, another one for each new life of
        the same key (a restarted process draws new connection ids, as a real one does)."""
        life = self._lives.get(key_seed, 0)
        self._lives[key_seed] = life + 1
        return random.Random(f"{self.seed}:node:{key_seed}" + (f"#{life}" if life else ""))

    def _on_crash(self, host: SimHost, item: SimServer | SimClient | SimRelay) -> None:
        """Close ``item`` quietly when ``host`` crashes (its sockets are already gone)."""

        def crashed() -> None:
            if item.closed:
                return
            item.closed = True
            if isinstance(item, SimServer):
                item.crashed = True
                for forget in item._forget:
                    forget()
            closing = item.relay.close(timeout=0.0) if isinstance(item, SimRelay) else item.node.close(timeout=0.0)
            task = self.loop.create_task(closing, name=f"crash of {host.name}")
            task.add_done_callback(_log_failure)
            log.info("%s crashed: closed %s quietly", host.name, _describe(item))

        host.on_crash.append(crashed)

    # -- serving ----------------------------------------------------------------------------

    async def serve(
        self,
        app: ASGIApp,
        host: SimHost,
        *,
        name: str | None = None,
        port: int = SERVE_PORT,
        secret_key: SecretKey | None = None,
        config: NetworkConfig | None = None,
        relay_url: str | None = None,
        relay_urls: Sequence[str] | None = None,
        lifespan: LifespanMode = "auto",
        **server_options: Any,
    ) -> SimServer:
        """Serve ``app`` on ``host`` (see :meth:`Simulation.serve`)."""
        if name is not None:
            _check_name(name)
        key_seed = f"{host.name}:{port}" if port else f"{host.name}:0#{len(self.servers)}"
        key = secret_key if secret_key is not None else SecretKey.from_seed(key_seed)
        for other in self.servers:
            if not other.closed and other.node.node_id == key.node_id:
                raise ValueError(
                    f"node {key.node_id} already serves {other.host}:{other.node.local_address[1]}; "
                    "pass another secret_key= (or port=) to serve a second app"
                )
        node = await Node.bind(
            key,
            host="0.0.0.0",
            port=port,
            config=config if config is not None else NetworkConfig(),
            network=host,
            rng=self._rng(key_seed),
            relay_url=relay_url,
            relay_urls=relay_urls,
        )
        server_options.setdefault("timeout_graceful_shutdown", SHUTDOWN_GRACE)
        try:
            server = H3Server(app, node, lifespan=lifespan, **server_options)
            await server.startup()
        except BaseException:
            await node.close(timeout=0.0)
            raise
        served = SimServer(app, server, node, host.name, name)
        record = name if name is not None else str(node.node_id)

        def publish(addr: NodeAddr) -> None:
            self.dns.register_peer(record, addr.node_id, addr.direct_addresses, addr.relay_url)

        publish(node.node_addr())
        served._forget.append(node.on_node_addr_change(publish))
        self.servers.append(served)
        self._on_crash(host, served)
        log.info("serving an app on %s as node %s (dns: %s)", host.name, node.node_id, record)
        return served

    # -- clients ----------------------------------------------------------------------------

    async def client(
        self,
        host: SimHost,
        target: SimServer | NodeAddr | NodeId | str | None = None,
        *,
        secret_key: SecretKey | None = None,
        config: NetworkConfig | None = None,
        relay_url: str | None = None,
        relay_urls: Sequence[str] | None = None,
        timeout: float = 30.0,
        port: int = 0,
        wait_for_relay: float | None = None,
        **client_options: Any,
    ) -> httpx.AsyncClient:
        """An httpx client on ``host`` (see :meth:`Simulation.client`)."""
        if wait_for_relay is not None and ((relay_url is None and not relay_urls) or not wait_for_relay > 0):
            raise ValueError(
                f"wait_for_relay needs a relay_url (or relay_urls) and > 0 virtual seconds, got {wait_for_relay!r}"
            )
        if port:
            key_seed = f"{host.name}/client:{port}"
        else:
            n = self._client_count.get(host.name, 0)
            self._client_count[host.name] = n + 1
            key_seed = f"{host.name}/client/{n}"
        base_url, known = _base_url(target)
        if base_url is not None:
            client_options.setdefault("base_url", base_url)
        node = await Node.bind(
            secret_key if secret_key is not None else SecretKey.from_seed(key_seed),
            host="0.0.0.0",
            port=port,
            config=config if config is not None else NetworkConfig(),
            network=host,
            rng=self._rng(key_seed),
            relay_url=relay_url,
            relay_urls=relay_urls,
        )
        if wait_for_relay is not None and node.relay is not None:
            try:
                await node.relay.wait_connected(wait_for_relay)
            except BaseException:
                await node.close(timeout=0.0)
                raise
        transport = P2PTransport(node, addrs=[known] if known is not None else (), resolve=self.resolve)
        client = httpx.AsyncClient(transport=transport, timeout=timeout, **client_options)
        made = SimClient(client, node, host.name)
        self.clients.append(made)
        self._on_crash(host, made)
        return client

    async def resolve(self, url_host: str) -> NodeAddr:
        """A URL host (node id text or a registered name) to a NodeAddr, via the simulated DNS."""
        try:
            node_id = NodeId.parse(url_host)
        except (InvalidNodeId, ValueError):
            return await self.dns.resolve_name(url_host)
        return await self.dns.resolve(node_id)

    # -- relays -----------------------------------------------------------------------------

    async def relay(
        self,
        host: SimHost,
        *,
        port: int = RELAY_PORT,
        secret_key: SecretKey | None = None,
        limits: RelayLimits | None = None,
        config: NetworkConfig | None = None,
    ) -> str:
        """Run a relay server on ``host``; its URL (see :meth:`Simulation.relay`)."""
        key_seed = f"{host.name}/relay:{port}"
        relay = await RelayServer.bind(
            secret_key if secret_key is not None else SecretKey.from_seed(key_seed),
            host="0.0.0.0",
            port=port,
            limits=limits,
            config=config,
            network=host,
        )
        made = SimRelay(relay, host.name)
        self.relays.append(made)
        self._on_crash(host, made)
        log.info("relay on %s: %s", host.name, made.url)
        return made.url

    # -- shutdown ---------------------------------------------------------------------------

    async def aclose(self) -> list[BaseException]:
        """Close clients, then servers, then relays (each newest first); the errors, in order."""
        errors: list[BaseException] = []
        for group in (self.clients, self.servers, self.relays):
            items: list[SimServer | SimClient | SimRelay] = list(group)
            for item in reversed(items):
                try:
                    await item.close()
                except Exception as exc:
                    log.exception("closing %s failed", _describe(item))
                    errors.append(exc)
        return errors


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("closing after a crash failed: %r", task.exception())


def _describe(item: SimServer | SimClient | SimRelay) -> str:
    if isinstance(item, SimServer):
        return f"the app served by node {item.node.node_id} on {item.host}"
    if isinstance(item, SimClient):
        return f"the client node {item.node.node_id} on {item.host}"
    return f"the relay {item.url} on {item.host}"


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", name):
        raise ValueError(
            f"DNS name {name!r} must be lowercase letters, digits, '.' and '-' (a URL host such as 'shop.sim')"
        )
    try:
        NodeId.parse(name)
    except (InvalidNodeId, ValueError):
        return
    raise ValueError(f"DNS name {name!r} reads as a node id; pick a name that does not")


def _base_url(target: SimServer | NodeAddr | NodeId | str | None) -> tuple[str | None, NodeAddr | None]:
    """The base URL for ``target`` and the address to tell the transport (if known)."""
    if target is None:
        return None, None
    if isinstance(target, SimServer):
        return target.url, target.addr
    if isinstance(target, NodeAddr):
        return f"https://{target.node_id}", target
    if isinstance(target, NodeId):
        return f"https://{target}", None
    if isinstance(target, str):
        if not target:
            raise ValueError("target must not be empty")
        return f"https://{target.lower()}", None
    raise TypeError(f"target must be a SimServer, NodeAddr, NodeId or str, got {type(target).__name__}")
