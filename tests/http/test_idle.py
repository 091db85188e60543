"""The server's idle connection timeout (issue 12): a peer that completed its handshake and
opens no request holds a connection slot only ``idle_connection_timeout`` seconds, even
when keep-alive PINGs would keep the QUIC connection alive for ever."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from asgi_p2p import ConnectionClosed, InvalidConfiguration, NetworkConfig, Node, SecretKey
from asgi_p2p.endpoint.connection import PeerConnection
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.http.server import DEFAULT_IDLE_CONNECTION_TIMEOUT
from asgi_p2p.http.types import Receive, Scope, Send

from .conftest import EndpointPair, Serve, wait_until

H3_NO_ERROR = 0x100


def _app(hold: dict[str, float] | None = None) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow" and hold is not None:
            await asyncio.sleep(hold["seconds"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def _keepalive_client(pair: EndpointPair) -> Node:
    """A node with the default keep-alive (a PING every 10 s, QUIC idle timeout 30 s)."""
    host = pair.simulation.host("pinger")
    node = await Node.bind(
        SecretKey.from_seed("pinger"), host="0.0.0.0", port=4433, config=NetworkConfig(), network=host
    )
    pair.extra.append(node)
    P2PTransport(node)  # sets up HTTP/3 on the node's connections (it sends no request)
    assert node.config.keepalive_interval and node.config.keepalive_interval < node.config.idle_timeout
    return node


async def _closed_at(conn: PeerConnection, limit: float) -> tuple[float, BaseException | None]:
    """When ``conn`` ended (loop time) and why, waiting at most ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    await wait_until(lambda: conn.closed, timeout=limit)
    return loop.time(), conn.close_error


@pytest.mark.sim_only("waits minutes of virtual time")
@pytest.mark.parametrize("timeout", [None, 0], ids=["default", "off"])
async def test_a_silent_peer_kept_alive_by_pings_is_closed_after_the_idle_timeout(
    serve: Serve, timeout: float | None
) -> None:
    """The peer handshakes and never opens a request stream; its keep-alive PINGs alone would
    hold the connection past QUIC's 30 s idle timeout for ever."""
    options = {} if timeout is None else {"idle_connection_timeout": timeout}
    served = await serve(_app(), lifespan="off", **options)
    pinger = await _keepalive_client(served.pair)
    loop = asyncio.get_running_loop()
    conn = await pinger.connect_quic(served.pair.server.node_addr(), "h3")
    started = loop.time()
    if timeout == 0:
        await asyncio.sleep(300)  # ten QUIC idle timeouts: the PINGs hold it
        assert not conn.closed and served.server.idle_connections_closed == 0
        return
    await asyncio.sleep(DEFAULT_IDLE_CONNECTION_TIMEOUT - 1)
    assert not conn.closed  # past QUIC's idle timeout: PINGs hold it
    ended, err = await _closed_at(conn, 10)
    assert DEFAULT_IDLE_CONNECTION_TIMEOUT <= ended - started <= DEFAULT_IDLE_CONNECTION_TIMEOUT + 1
    assert isinstance(err, ConnectionClosed) and err.error_code == H3_NO_ERROR
    assert "idle connection: no request for 60s" in str(err)
    assert served.server.idle_connections_closed == 1
    await wait_until(lambda: not served.server._connections, timeout=5)
    # the slot is free once the server's closing period (three probe timeouts) is over
    await wait_until(lambda: served.pair.server.connection_count == 0, timeout=5)


@pytest.mark.sim_only("waits minutes of virtual time")
async def test_the_idle_clock_runs_from_the_end_of_the_last_request(serve: Serve) -> None:
    """A request running longer than the timeout keeps the connection; the clock starts when it ends."""
    hold = {"seconds": 25.0}  # (below QUIC's 30 s idle timeout: these endpoints send no keep-alive)
    served = await serve(_app(hold), lifespan="off", idle_connection_timeout=10)
    loop = asyncio.get_running_loop()
    assert (await served.client.get("/")).text == "ok"
    (conn,) = served.pair.client.connections
    await asyncio.sleep(8)
    assert (await served.client.get("/slow", timeout=60)).text == "ok"  # 25 s, 2.5 times the timeout
    done = loop.time()
    assert served.pair.client.connections == [conn] and served.server.idle_connections_closed == 0
    ended, err = await _closed_at(conn, 30)
    assert 10 <= ended - done <= 11
    assert isinstance(err, ConnectionClosed) and err.error_code == H3_NO_ERROR
    # the next request dials a new connection
    assert (await served.client.get("/")).text == "ok"
    assert served.pair.client.connections and served.pair.client.connections != [conn]


async def test_an_idle_connection_is_closed_and_the_client_carries_on(serve: Serve) -> None:
    """Real UDP on loopback (and the simulator): the pooled connection closes, the next request works."""
    served = await serve(_app(), lifespan="off", idle_connection_timeout=0.5)
    if served.pair.network == "sim":
        # this times the server's close as the client sees it: its CONNECTION_CLOSE must arrive.
        # (The simulator's default 1% loss, drawn by link and host names, could drop it; the
        # client, sending nothing, would then learn only at QUIC's 30 s idle timeout.)
        for link in served.pair.simulation.links:
            link.configure(loss=0.0)
    loop = asyncio.get_running_loop()
    assert (await served.client.get("/")).text == "ok"
    (conn,) = served.pair.client.connections
    done = loop.time()
    ended, err = await _closed_at(conn, 10)
    assert ended - done >= 0.5 - 0.05
    assert isinstance(err, ConnectionClosed) and err.error_code == H3_NO_ERROR
    assert served.server.idle_connections_closed == 1
    assert (await served.client.get("/")).text == "ok"
    (again,) = served.pair.client.connections
    assert again is not conn
    # changing the timeout applies to open connections: off, then short again
    served.server.idle_connection_timeout = None
    await asyncio.sleep(1.0)
    assert not again.closed
    served.server.idle_connection_timeout = 0.2
    await _closed_at(again, 10)
    assert served.server.idle_connections_closed == 2


def test_idle_connection_timeout_is_validated() -> None:
    endpoint: Any = SimpleNamespace(node_id="server")
    for bad in (float("nan"), float("inf"), -1.0, 1e9, "60"):
        with pytest.raises(InvalidConfiguration, match="idle_connection_timeout must be 0 \\(off\\) or a finite"):
            H3Server(_app(), endpoint, idle_connection_timeout=bad)  # type: ignore[arg-type]
    server = H3Server(_app(), endpoint, idle_connection_timeout=0)
    assert server.idle_connection_timeout is None
    with pytest.raises(InvalidConfiguration, match="idle_connection_timeout"):
        server.idle_connection_timeout = float("nan")


@pytest.mark.sim_only("binds many nodes with one key on simulated hosts")
async def test_one_peer_holds_at_most_max_idle_connections(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    """One key dialing from five places: the server keeps its three most recently active idle connections.

    Lossless links: the server keeps one direct path per node id (the first place's), so a
    handshake packet of a later place's connection that had to be resent after the server
    took the connection as established would go to the first place, and that handshake
    would fail.  One key live in several places at once is not a peer the server can serve;
    this only counts the idle connections such a peer leaves behind.
    """
    caplog.set_level(logging.INFO, logger="asgi_p2p.http")
    served = await serve(_app(), lifespan="off", max_idle_connections_per_peer=3)
    for link in served.pair.simulation.links:
        link.configure(loss=0.0)
    key = SecretKey.from_seed("many")
    conns: list[PeerConnection] = []
    for i in range(5):
        host = served.pair.simulation.host(f"many{i}")
        for link in host.links.values():
            link.configure(loss=0.0)
        node = await Node.bind(key, host="0.0.0.0", port=4433, config=NetworkConfig(), network=host)
        served.pair.extra.append(node)
        P2PTransport(node)
        conns.append(await node.connect_quic(served.pair.server.node_addr(), "h3"))
        await asyncio.sleep(0.1)
    # the two longest idle ones end (by the server's close, or, should that be lost, by the
    # stateless reset answering their next packet); the server names why
    await wait_until(lambda: conns[0].closed and conns[1].closed, timeout=30)
    assert all(isinstance(c.close_error, ConnectionClosed) for c in conns[:2])
    assert not any(c.closed for c in conns[2:])
    assert len([c for c in served.pair.server.connections if c.remote_node_id == key.node_id]) == 3
    closing = [r.getMessage() for r in caplog.records if "idle connection: more than 3" in r.getMessage()]
    assert len(closing) == 2 and str(key.node_id) in closing[0]
    assert served.server.idle_connections_closed == 2
    # a connection with a request open is not idle: it is not counted and not closed
    busy_client = await served.new_client()
    assert (await busy_client.get("/")).text == "ok"
    await busy_client.aclose()
    assert not any(c.closed for c in conns[2:])


def test_max_idle_connections_per_peer_is_validated() -> None:
    endpoint: Any = SimpleNamespace(node_id="server")
    for bad in (0, -1, 65537, 1.5, True):
        with pytest.raises(InvalidConfiguration, match="max_idle_connections_per_peer"):
            H3Server(_app(), endpoint, max_idle_connections_per_peer=bad)  # type: ignore[arg-type]
