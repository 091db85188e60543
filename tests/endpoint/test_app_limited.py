"""An application-limited connection keeps its congestion window and send buffer (RFC 9002 7.8).

aioquic grows the window on every acknowledgement; the endpoint tells its controller after
each transmit pass whether the window limited it, so a connection sending less than its
window (chat, small requests) neither inflates the window nor the send buffer that follows
it. Simulated 80 ms RTT path, virtual time.
"""

from __future__ import annotations

import asyncio

import pytest

from asgi_p2p import NetworkConfig, Node, SecretKey
from asgi_p2p import aioquic_compat as hooks
from asgi_p2p.sim import Simulation

#: the first unidirectional stream a client opens (RFC 9000 2.1): the message stream
CLIENT_UNI_STREAM = 2


@pytest.mark.parametrize("cc", ["reno", "cubic"])
def test_small_messages_do_not_grow_the_window_or_the_send_buffer(sim: Simulation, cc: str) -> None:
    a, b = sim.host("alice"), sim.host("bob")
    sim.link(a, b, latency=0.040, loss=0.0, bandwidth=100e6, queue_bytes=1_000_000)
    config = NetworkConfig(connect_timeout=30.0, congestion_control=cc)
    result: dict[str, int] = {}

    async def main() -> None:
        ea = await Node.bind(SecretKey.from_seed("alice"), host="0.0.0.0", port=4433, config=config, network=a)
        eb = await Node.bind(SecretKey.from_seed("bob"), host="0.0.0.0", port=4433, config=config, network=b)
        conn = await eb.connect(ea.node_addr())
        await conn.send(b"m" * 1024)
        inc = await ea.listen().accept()
        await inc.recv()
        quic = conn.peer_connection.quic
        result["start"] = hooks.congestion_window(quic)  # 64 datagrams of 1200 bytes, or more once probed
        for _ in range(300):  # 300 KiB over 6 s: about 4 KiB per round trip, a twentieth of the window
            await conn.send(b"m" * 1024)
            await inc.recv()
            await asyncio.sleep(0.02)
        result["end"] = hooks.congestion_window(quic)
        result["datagram"] = hooks.max_datagram_size(quic)
        result["send_buffer"] = conn.peer_connection.send_buffer_limit(CLIENT_UNI_STREAM)
        await eb.close()
        await ea.close()

    sim.run(main())
    # aioquic alone would add every acknowledged byte in slow start: about 300 KiB; the
    # window is still the initial one (64 datagrams, at the size the path probing found)
    assert result["end"] <= config.initial_congestion_window * result["datagram"]
    assert result["start"] <= result["end"]
    assert result["send_buffer"] == config.stream_send_buffer
