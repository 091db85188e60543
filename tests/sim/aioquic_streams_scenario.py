"""Bare aioquic with many concurrent streams at heavy loss on the simulator; prints the trace hash.

This is the scenario of the known determinism trap (aioquic iterates a set of
stream objects): with ``NO_STREAM_HASH=1`` in the environment the stream-hash
patch is left out, for comparison.

Usage: python aioquic_streams_scenario.py SEED [LOSS]
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys

from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import StreamDataReceived
from aioquic.quic.packet import pull_quic_header
from aioquic.quic.stream import QuicStream

from asgi_p2p.endpoint.tls import node_certificate
from asgi_p2p.identity import SecretKey
from asgi_p2p.net.base import Address
from asgi_p2p.sim import Host, SimSocket, Simulation

STREAMS = 16
SIZE = 20_000


class Peer:
    def __init__(self, host: Host, port: int) -> None:
        self.host = host
        self.port = port
        self.conn: QuicConnection | None = None
        self.sock: SimSocket | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.received: dict[int, int] = {}
        self.finished: set[int] = set()
        self.done = asyncio.get_running_loop().create_future()
        self.server_config: QuicConfiguration | None = None

    async def start(self) -> None:
        self.sock = await self.host.bind("0.0.0.0", self.port, self.receive)

    def receive(self, data: bytes, addr: Address) -> None:
        now = asyncio.get_running_loop().time()
        if self.conn is None:
            assert self.server_config is not None
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
            self.conn = QuicConnection(
                configuration=self.server_config, original_destination_connection_id=header.destination_cid
            )
        self.conn.receive_datagram(data, addr, now=now)
        self.process()

    def process(self) -> None:
        assert self.conn is not None and self.sock is not None
        loop = asyncio.get_running_loop()
        while (event := self.conn.next_event()) is not None:
            if isinstance(event, StreamDataReceived):
                self.received[event.stream_id] = self.received.get(event.stream_id, 0) + len(event.data)
                if event.end_stream:
                    self.finished.add(event.stream_id)
                    if len(self.finished) == STREAMS and not self.done.done():
                        self.done.set_result(None)
        for data, addr in self.conn.datagrams_to_send(now=loop.time()):
            self.sock.sendto(data, addr)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        when = self.conn.get_timer()
        if when is not None:
            self.timer = loop.call_at(when, self.on_timer)

    def on_timer(self) -> None:
        assert self.conn is not None
        self.timer = None
        self.conn.handle_timer(now=asyncio.get_running_loop().time())
        self.process()


def run(seed: int, loss: float) -> str:
    if os.environ.get("NO_STREAM_HASH"):
        QuicStream._asgi_p2p_sim_patched = True  # type: ignore[attr-defined]
    with Simulation(seed=seed, loss=loss, latency=0.02) as sim:
        ha, hb = sim.host("client"), sim.host("server")
        key = SecretKey.from_seed("server")
        server_config = QuicConfiguration(is_client=False, alpn_protocols=["x"], idle_timeout=600)
        server_config.certificate = node_certificate(key)
        server_config.private_key = key.private_key
        out: list[str] = []

        async def main() -> None:
            server = Peer(hb, 4433)
            server.server_config = server_config
            client = Peer(ha, 5000)
            await server.start()
            await client.start()
            client.conn = QuicConnection(
                configuration=QuicConfiguration(
                    is_client=True, alpn_protocols=["x"], verify_mode=ssl.CERT_NONE, idle_timeout=600
                )
            )
            loop = asyncio.get_running_loop()
            client.conn.connect(server.sock.local_address, now=loop.time())  # type: ignore[union-attr]
            for i in range(STREAMS):
                sid = client.conn.get_next_available_stream_id()
                client.conn.send_stream_data(sid, bytes([i]) * (SIZE + 997 * i), end_stream=True)
            client.process()
            await server.done
            assert all(server.received[s] == SIZE + 997 * (s // 4) for s in server.finished)
            out.append(sim.trace.hash())

        sim.run(main(), time_limit=3600)
        return out[0]


if __name__ == "__main__":
    print(run(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.3))
