"""A connection that sent or received CONNECTION_CLOSE is done for at once (as in quic-go and httpcore).

It leaves the endpoint's pool the moment the close is sent or received (the next dial makes
a new connection), and what waits on it (a message being received, a dial that joined it)
fails at once with what happened; QUIC's closing or draining period (RFC 9000 10.2, three
probe timeouts) still runs before the connection object is forgotten.  On the simulator,
without loss, in exact virtual time.
"""

from __future__ import annotations

import asyncio

import pytest

from asgi_p2p import MSG_ALPN, ConnectionClosed, NetworkConfig, Node, SecretKey
from asgi_p2p.endpoint.connection import PeerConnection
from asgi_p2p.sim import Simulation

LATENCY = 0.010  # one way: RTT 20 ms
RTT = 2 * LATENCY


async def _pair(sim: Simulation) -> tuple[Node, Node]:
    server_host, client_host = sim.host("server"), sim.host("client")
    sim.link(server_host, client_host, latency=LATENCY, loss=0.0)
    config = NetworkConfig(keepalive_interval=0)
    server_key = SecretKey.from_seed("server")
    server = await Node.bind(server_key, host="0.0.0.0", port=4433, config=config, network=server_host)
    client_key = SecretKey.from_seed("client")
    client = await Node.bind(client_key, host="0.0.0.0", port=4433, config=config, network=client_host)
    return server, client


async def _accepted(server: Node) -> PeerConnection:
    for _ in range(1000):
        if server.connections:
            (conn,) = server.connections
            return conn
        await asyncio.sleep(0.001)
    raise AssertionError("the server accepted no connection")


def test_a_connection_the_peer_closes_leaves_the_pool_at_once_and_still_drains(sim: Simulation) -> None:
    async def main() -> None:
        server, client = await _pair(sim)
        loop = asyncio.get_running_loop()
        mc = await client.connect(server.node_addr())
        conn = mc.peer_connection
        assert client.pooled_connection(server.node_id, MSG_ALPN) is conn
        accepted = await _accepted(server)
        receiving = asyncio.ensure_future(mc.recv())  # waits on the connection
        await asyncio.sleep(0.1)
        closed_at = loop.time()
        accepted.close(0x5, "maintenance")
        await asyncio.sleep(LATENCY + 0.001)  # the CONNECTION_CLOSE arrived
        assert client.pooled_connection(server.node_id, MSG_ALPN) is None
        assert client.pooled_connection(server.node_id, MSG_ALPN, confirmed=False) is None
        err = conn.close_error
        assert isinstance(err, ConnectionClosed) and (err.error_code, err.reason) == (0x5, "maintenance")
        assert "closed by peer: maintenance" in str(err)
        assert not conn.is_connected and conn.closing
        # the receiver learnt it with the close, not at the end of the draining period
        assert receiving.done()
        with pytest.raises(ConnectionClosed, match="closed by peer: maintenance"):
            receiving.result()
        # the draining period runs (RFC 9000 10.2): the connection is still held, silent
        assert not conn.closed and conn in client.all_connections

        dialed_at = loop.time()
        fresh = await client.connect_quic(server.node_addr(), MSG_ALPN)
        assert fresh is not conn and fresh.is_connected
        assert loop.time() - dialed_at <= 2 * RTT + 0.002  # a new handshake now, not after the drain
        assert client.pooled_connection(server.node_id, MSG_ALPN) is fresh

        await asyncio.wait_for(conn.wait_closed(), 5)
        drained = loop.time() - closed_at - LATENCY
        assert drained >= 3 * RTT  # three probe timeouts, each above an RTT
        assert conn not in client.all_connections and conn.close_error is err
        await client.close()
        await server.close()

    sim.run(main())


def test_a_connection_we_close_fails_its_waiters_at_once_and_leaves_the_pool(sim: Simulation) -> None:
    async def main() -> None:
        server, client = await _pair(sim)
        loop = asyncio.get_running_loop()
        mc = await client.connect(server.node_addr())
        conn = mc.peer_connection
        accepted = await _accepted(server)
        inc = await server.listen().accept()
        receiving = asyncio.ensure_future(mc.recv())
        peer_receiving = asyncio.ensure_future(inc.recv())
        await asyncio.sleep(0.1)
        closed_at = loop.time()
        conn.close(0x7, "done with it")
        assert client.pooled_connection(server.node_id, MSG_ALPN) is None
        await asyncio.sleep(0)
        assert receiving.done()  # at once: no wait for the closing period
        with pytest.raises(ConnectionClosed, match="closed locally: done with it"):
            receiving.result()
        assert not conn.closed  # the closing period runs
        # the peer learns it one way later, with our reason
        await asyncio.sleep(LATENCY + 0.001)
        assert peer_receiving.done()
        with pytest.raises(ConnectionClosed, match="closed by peer: done with it"):
            peer_receiving.result()
        assert accepted.closing and not accepted.is_connected
        fresh = await client.connect_quic(server.node_addr(), MSG_ALPN)
        assert fresh is not conn
        await asyncio.wait_for(conn.wait_closed(), 5)
        assert loop.time() - closed_at >= 3 * RTT
        await client.close()
        await server.close()

    sim.run(main())


def test_dials_waiting_for_a_handshake_we_close_fail_at_once(sim: Simulation) -> None:
    async def main() -> None:
        server, client = await _pair(sim)
        first = asyncio.ensure_future(client.connect_quic(server.node_addr(), MSG_ALPN))
        await asyncio.sleep(0.001)  # the ClientHello left; no answer yet
        joined = asyncio.ensure_future(client.connect_quic(server.node_addr(), MSG_ALPN))
        await asyncio.sleep(0)
        (conn,) = client.all_connections
        assert not first.done() and not joined.done()
        conn.close(0x2, "changed my mind")
        await asyncio.wait([first, joined], timeout=0.001)  # at once, not at the end of the closing period
        for dial in (first, joined):
            assert dial.done()
            with pytest.raises(ConnectionClosed, match="closed locally: changed my mind"):
                dial.result()
        assert not conn.closed and conn.closing
        fresh = await client.connect_quic(server.node_addr(), MSG_ALPN)  # a new dial, not the closing one
        assert fresh is not conn and fresh.is_connected
        await client.close()
        await server.close()

    sim.run(main())
