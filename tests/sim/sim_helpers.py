"""Small helpers shared by the simulator tests (plain UDP probes)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from asgi_p2p.net.base import Address
from asgi_p2p.sim import Host, SimSocket


@dataclass
class Probe:
    """A bound socket that records what it receives (payload, source, virtual time)."""

    sock: SimSocket
    received: list[tuple[bytes, Address, float]] = field(default_factory=list)
    reply_with: bytes | None = None
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)

    @property
    def address(self) -> Address:
        return self.sock.local_address

    def on_datagram(self, data: bytes, addr: Address) -> None:
        self.received.append((data, addr, asyncio.get_running_loop().time()))
        if self.reply_with is not None and not data.startswith(self.reply_with):
            self.sock.sendto(self.reply_with + data, addr)
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters.clear()

    def send(self, data: bytes, addr: Address) -> None:
        self.sock.sendto(data, addr)

    def payloads(self) -> list[bytes]:
        return [d for d, _, _ in self.received]

    def sources(self) -> list[Address]:
        return [a for _, a, _ in self.received]

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        """Wait (virtual time) until ``count`` datagrams arrived."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.received) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{len(self.received)}/{count} datagrams after {timeout}s")
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                pass


async def probe(host: Host, port: int = 0, reply_with: bytes | None = None) -> Probe:
    """Bind a recording socket on ``host``."""
    holder: list[Probe] = []
    sock = await host.bind("0.0.0.0", port, lambda d, a: holder[0].on_datagram(d, a))
    p = Probe(sock, reply_with=reply_with)
    holder.append(p)
    return p
