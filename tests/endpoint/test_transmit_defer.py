"""A deferred transmit waits for the loop pass, but not for ever behind a busy loop.

``PeerConnection.schedule_transmit`` sends once the callbacks already queued have run, so
what one pass produces shares packets.  A burst handled one task at a time (50 requests in
flight, each ~0.4 ms of CPU) would hold the first request's packet until the last was
built; after 2 ms of loop time what is ready leaves at once.  Real loop, 127.0.0.1: the
simulator's time stands still within a pass, so there nothing changes.
"""

from __future__ import annotations

import asyncio
import time

from asgi_p2p import NetworkConfig, Node
from asgi_p2p.messages import MSG_ALPN

CONFIG = NetworkConfig(keepalive_interval=0)


async def test_a_transmit_deferred_behind_a_busy_loop_leaves_after_2_ms() -> None:
    server = await Node.bind(config=CONFIG)
    client = await Node.bind(config=CONFIG)
    try:
        conn = await client.connect_quic(server.node_addr(), MSG_ALPN)
        await asyncio.sleep(0.05)  # the handshake's last ACKs are out
        before = conn.datagrams_sent
        conn.quic.send_ping(1)
        conn.schedule_transmit()  # deferred to the end of this pass
        assert conn.datagrams_sent == before
        time.sleep(0.003)  # noqa: ASYNC251 - the pass goes on: CPU work of a burst, 3 ms of loop time
        conn.quic.send_ping(2)
        conn.schedule_transmit()
        assert conn.datagrams_sent == before + 1  # what was ready left now, not at the end of the pass
    finally:
        await client.close()
        await server.close()
