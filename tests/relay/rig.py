"""Helpers for relay tests: a recording RelaySink, relay servers on either network, and a tunnel network."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from asgi_p2p import Endpoint, NetworkConfig, SecretKey
from asgi_p2p.identity import NodeId
from asgi_p2p.net.base import Address, DatagramReceiver
from asgi_p2p.paths.link import RelayLink, RelayRefusal
from asgi_p2p.relay.client import RelayClient
from asgi_p2p.relay.proto import RelayLimits
from asgi_p2p.relay.server import RelayServer
from tests.harness import Harness

RELAY_KEY = SecretKey.from_seed("relay")


class RecordingSink:
    """A RelaySink that records what arrives and wakes waiters."""

    def __init__(self) -> None:
        self.packets: list[tuple[NodeId, bytes]] = []
        self.signals: list[tuple[NodeId, bytes]] = []
        self.refusals: list[tuple[NodeId | None, RelayRefusal]] = []
        self.states: list[tuple[bool, Address | None]] = []
        self._changed = asyncio.Event()

    def _poke(self) -> None:
        self._changed.set()

    def relay_packet_received(self, src: NodeId, packet: bytes) -> None:
        self.packets.append((src, packet))
        self._poke()

    def relay_signal_received(self, src: NodeId, payload: bytes) -> None:
        self.signals.append((src, payload))
        self._poke()

    def relay_state_changed(self, link: RelayLink) -> None:
        self.states.append((link.connected, link.observed_address))
        self._poke()

    def relay_refused(self, dest: NodeId | None, refusal: RelayRefusal) -> None:
        self.refusals.append((dest, refusal))
        self._poke()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds (checked after every callback)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"condition not met within {timeout}s: {self!r}")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                raise AssertionError(f"condition not met within {timeout}s: {self!r}") from None

    def __repr__(self) -> str:
        return (
            f"<RecordingSink packets={len(self.packets)} signals={len(self.signals)} "
            f"refusals={self.refusals[-3:]} states={self.states[-3:]}>"
        )


class Rig:
    """Relays and relay clients on the harness's network; :meth:`aclose` tears them down."""

    def __init__(self, net: Harness) -> None:
        self.net = net
        self.relays: list[RelayServer] = []
        self.clients: list[RelayClient] = []
        self._relay_host: Any = None

    async def relay(
        self,
        *,
        port: int = 0,
        limits: RelayLimits | None = None,
        config: NetworkConfig | None = None,
        key: SecretKey = RELAY_KEY,
        plane: bool | None = None,
    ) -> RelayServer:
        """A relay server (on real UDP 127.0.0.1, or on one simulated host reused across restarts)."""
        kwargs: dict[str, Any] = {"port": port, "limits": limits, "config": config, "plane": plane}
        if self.net.name == "sim":
            sim = self.net.sim  # type: ignore[attr-defined]
            if self._relay_host is None:
                self._relay_host = sim.host("relay-host")
            if not self._relay_host.up:
                sim.restart(self._relay_host)
            server = await RelayServer.bind(key, host="0.0.0.0", network=self._relay_host, **kwargs)
        else:
            server = await RelayServer.bind(key, host="127.0.0.1", **kwargs)
        self.relays.append(server)
        return server

    async def client(
        self, name: str, relay: RelayServer | str, *, config: NetworkConfig | None = None, **kwargs: Any
    ) -> tuple[Endpoint, RelayClient, RecordingSink]:
        ep_kwargs: dict[str, Any] = {}
        if config is not None:
            ep_kwargs["config"] = config
        if "nat" in kwargs:
            ep_kwargs["nat"] = kwargs.pop("nat")
        ep = await self.net.endpoint(name, **ep_kwargs)
        sink = RecordingSink()
        url = str(relay.url) if isinstance(relay, RelayServer) else relay
        client = RelayClient(ep, url, sink, **kwargs)
        self.clients.append(client)
        client.start()
        return ep, client, sink

    async def aclose(self) -> None:
        for client in self.clients:
            await client.close()
        for relay in self.relays:
            await relay.close(timeout=0.5)


# -- a datagram network tunnelled through relay clients (to run real QUIC over the relay) ------


class TunnelSocket:
    def __init__(self, tunnel: RelayTunnel) -> None:
        self.tunnel = tunnel

    @property
    def local_address(self) -> Address:
        return self.tunnel.address

    def local_addresses(self) -> list[Address]:
        return [self.tunnel.address]

    def sendto(self, data: bytes, addr: Address) -> None:
        node = self.tunnel.peers.get((str(addr[0]), int(addr[1])))
        client = self.tunnel.client
        if node is not None and client is not None:
            client.send_packet(node, bytes(data))

    def close(self) -> None:
        self.tunnel.receiver = None


class RelayTunnel(RecordingSink):
    """A DatagramNetwork whose packets travel through a relay client; also that client's sink.

    ``peers`` maps a virtual address to the (outer) node whose relay client
    delivers to the other side; packets from that node arrive from that address.
    """

    def __init__(self, address: Address) -> None:
        super().__init__()
        self.address = address
        self.client: RelayClient | None = None
        self.receiver: DatagramReceiver | None = None
        self.peers: dict[Address, NodeId] = {}

    def wall_clock_offset(self) -> float:
        return 0.0  # every tunnelled endpoint runs in this process, on one loop

    async def bind(self, host: str, port: int, receiver: DatagramReceiver) -> TunnelSocket:
        self.receiver = receiver
        return TunnelSocket(self)

    def relay_packet_received(self, src: NodeId, packet: bytes) -> None:
        super().relay_packet_received(src, packet)
        for addr, node in self.peers.items():
            if node == src and self.receiver is not None:
                self.receiver(packet, addr)
