"""Shared pieces of the failover tests (tests/paths/test_failover.py).

A world on the simulator: a public relay host and nodes behind their own NAT
boxes, every public link with the same latency (and optional jitter, loss and
bandwidth); endpoints bound with the relay URL and a seeded rng; an ASGI app
serving deterministic blobs for HTTP downloads; helpers to wait for path
changes (events, never sleeps) and to reboot a NAT box.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from asgi_p2p import Endpoint, NetworkConfig, Node, NodeAddr, SecretKey
from asgi_p2p.endpoint.connection import PathEvent, PeerConnection
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.relay.client import RelayClient
from asgi_p2p.relay.server import RelayServer
from asgi_p2p.sim import Host, Simulation
from asgi_p2p.sim.loop import START_TIME
from asgi_p2p.sim.nat import NatConfig, NatTable
from asgi_p2p.sim.network import NatBox

RELAY_PORT = 3478
NODE_PORT = 4433
RELAY_KEY = SecretKey.from_seed("failover-relay")


@dataclass
class World:
    """The relay host and NATed hosts of one simulation."""

    sim: Simulation
    relay_host: Host
    hosts: dict[str, Host]
    relay: RelayServer | None = None
    endpoints: dict[str, Endpoint] = field(default_factory=dict)

    @property
    def url(self) -> str:
        assert self.relay is not None
        return str(self.relay.url)

    def nat(self, name: str) -> NatBox:
        box = self.hosts[name].nat
        assert box is not None
        return box

    async def start_relay(self) -> RelayServer:
        if not self.relay_host.up:
            self.sim.restart(self.relay_host)
        self.relay = await RelayServer.bind(RELAY_KEY, host="0.0.0.0", port=RELAY_PORT, network=self.relay_host)
        return self.relay

    async def node(self, name: str, config: NetworkConfig | None = None) -> Endpoint:
        """Bind ``name``'s endpoint with the relay and wait until the relay client is connected."""
        ep = await Node.bind(
            SecretKey.from_seed(name),
            host="0.0.0.0",
            port=NODE_PORT,
            config=config or NetworkConfig(),
            network=self.hosts[name],
            rng=random.Random(name),
            relay_url=self.url,
        )
        self.endpoints[name] = ep
        assert ep.relay is not None
        await ep.relay.wait_connected(10)
        return ep

    async def close(self) -> None:
        for ep in reversed(list(self.endpoints.values())):
            await ep.close(timeout=0.5)
        if self.relay is not None:
            await self.relay.close(timeout=0.5)


def build_world(
    sim: Simulation,
    names: tuple[str, ...] = ("alice", "bob"),
    *,
    nat: NatConfig | str = "port-restricted-cone",
    latency: float = 0.02,
    jitter: float = 0.0,
    loss: float = 0.0,
    bandwidth: float | None = None,
    distinct_lans: bool = True,
    addrs: dict[str, str] | None = None,
) -> World:
    """A relay host and one host per name behind its own NAT; every public link alike.

    ``bandwidth`` (bits/s) limits each host's access link (host <-> its NAT box, both
    directions), the bottleneck shared by its relayed and direct paths.
    """
    relay_host = sim.host("relay")
    # distinct private subnets (192.168.1.2, 192.168.2.2, ...): with the simulator's default
    # every NATed host is 192.168.0.2, so a peer's private candidate is our own address
    # (test_identical_private_addresses covers that case on its own)
    hosts = {
        name: sim.host(name, (addrs or {}).get(name) or (f"192.168.{i + 1}.2" if distinct_lans else None), nat=nat)
        for i, name in enumerate(names)
    }
    public = [relay_host, *(h.nat for h in hosts.values())]
    for i, x in enumerate(public):
        for y in public[i + 1 :]:
            assert x is not None and y is not None
            sim.link(x, y, latency=latency, jitter=jitter, loss=loss)
    if bandwidth is not None:
        for h in hosts.values():
            assert h.nat is not None
            sim.link(h, h.nat, bandwidth=bandwidth, queue_bytes=64 * 1024)
    return World(sim, relay_host, hosts)


def reboot_nat(sim: Simulation, box: NatBox, downtime: float) -> asyncio.Future[None]:
    """Take ``box`` down for ``downtime`` virtual seconds; it comes back with no mappings."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    sim.host_down(box)

    def back() -> None:
        box.table = NatTable(box.config, box.public_address, random.Random(f"{sim.seed}:reboot:{box.name}"))
        sim.host_up(box)
        done.set_result(None)

    loop.call_later(downtime, back)
    return done


def peer_conn(ep: Endpoint, other: Endpoint, alpn: str | None = None) -> PeerConnection:
    """``ep``'s (only, or only ``alpn``) established connection to ``other``."""
    conns = [
        c
        for c in ep.connections
        if c.remote_node_id == other.node_id and (alpn is None or c.alpn == alpn) and not c.closed
    ]
    assert len(conns) == 1, conns
    return conns[0]


class PathLog:
    """Every path event of a connection from now on, and a way to wait for a path kind."""

    def __init__(self, conn: PeerConnection) -> None:
        self.conn = conn
        self.events: list[PathEvent] = []
        self._start = (conn.path.kind, conn.path.addr)
        self._waiters: list[tuple[Callable[[PathEvent], bool], asyncio.Future[PathEvent]]] = []
        conn.on_path_change.append(self._on_event)

    def _on_event(self, event: PathEvent) -> None:
        self.events.append(event)
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(event):
                fut.set_result(event)

    def reset(self) -> None:
        """Forget the events so far; :meth:`changes` starts from the path now."""
        self.events.clear()
        self._start = (self.conn.path.kind, self.conn.path.addr)

    def changes(self) -> list[tuple[float, str, Any]]:
        """(virtual time, kind, address) of each path change since the start or :meth:`reset`
        (events that only change the datagram size are left out)."""
        out: list[tuple[float, str, Any]] = []
        last = self._start
        for e in self.events:
            key = (e.path.kind, e.path.addr)
            if key != last:
                out.append((round(e.at - START_TIME, 3), e.path.kind, e.path.addr))
                last = key
        return out

    async def wait(self, pred: Callable[[PathEvent], bool], timeout: float) -> PathEvent:
        fut: asyncio.Future[PathEvent] = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.remove((pred, fut))

    async def until_kind(self, kind: str, timeout: float) -> None:
        if self.conn.path.kind == kind:
            return
        await self.wait(lambda e: e.path.kind == kind, timeout)


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobApp:
    """ASGI app: ``GET /blob/<size>/<seed>`` streams :func:`blob` in 64 KiB chunks."""

    CHUNK = 64 * 1024

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.responses_done = 0
        self._watch: list[tuple[int, asyncio.Event]] = []

    def sent_at_least(self, n: int) -> asyncio.Event:
        """An event set once the app has handed ``n`` body bytes to the server."""
        ev = asyncio.Event()
        if self.bytes_sent >= n:
            ev.set()
        else:
            self._watch.append((n, ev))
        return ev

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        assert scope["type"] == "http"
        _, kind, size, seed = scope["path"].split("/")
        assert kind == "blob"
        body = blob(int(size), int(seed))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", size.encode())]})
        for i in range(0, len(body), self.CHUNK):
            part = body[i : i + self.CHUNK]
            await send({"type": "http.response.body", "body": part, "more_body": True})
            self.bytes_sent += len(part)
            for n, ev in list(self._watch):
                if self.bytes_sent >= n:
                    ev.set()
                    self._watch.remove((n, ev))
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.responses_done += 1


async def serve_blobs(server_ep: Endpoint, client_ep: Endpoint) -> tuple[BlobApp, H3Server, httpx.AsyncClient]:
    app = BlobApp()
    # these tests follow one connection through idle periods longer than the server's idle
    # connection timeout (its own tests: tests/http/test_idle.py), so it is off here
    server = H3Server(app, server_ep, lifespan="off", timeout_graceful_shutdown=1.0, idle_connection_timeout=None)
    await server.startup()
    transport = P2PTransport(client_ep)
    transport.add_addr(relay_only(server_ep))  # the first request goes through the relay
    client = httpx.AsyncClient(transport=transport, base_url=f"https://{server_ep.node_id}", timeout=60.0)
    return app, server, client


async def get_blob(client: httpx.AsyncClient, size: int, seed: int) -> str:
    """Download a blob; returns its sha256 (the caller compares it with :func:`sha`)."""
    r = await client.get(f"/blob/{size}/{seed}")
    assert r.status_code == 200
    assert len(r.content) == size
    return sha(r.content)


def relay_client(ep: Endpoint) -> RelayClient:
    """``ep``'s relay client (the default one, with its stats)."""
    assert isinstance(ep.relay, RelayClient)
    return ep.relay


def relay_only(ep: Endpoint) -> NodeAddr:
    """``ep``'s address with only its relay URL (what a peer knows before any punching)."""
    return NodeAddr(ep.node_id, relay_url=ep.node_addr().relay_url)
