"""A pooled HTTP/3 connection that either side closes is never used again, and its requests fail at once.

The server closes a client's pooled connection (an explicit close with a reason, as an
operator's ``close_peer`` or a server's own limits do): the client drops it from the pool
the moment the CONNECTION_CLOSE arrives, so its next request dials a new (resumed, 0-RTT)
connection at once, one round trip, instead of waiting three probe timeouts on the draining
one; a request in flight on it fails at once with the server's reason, or is sent again on a
new connection when that is safe (idempotent, or provably never reached the app).  On the
simulator, without loss, in exact virtual time.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from asgi_p2p import ConnectionClosed, NetworkConfig, Node, SecretKey
from asgi_p2p.endpoint.connection import PeerConnection
from asgi_p2p.http import H3_ALPN, H3Server, P2PTransport
from asgi_p2p.sim import Simulation

LATENCY = 0.020  # one way: RTT 40 ms
RTT = 2 * LATENCY
H3_NO_ERROR = 0x100


class App:
    """Answers "METHOD /path"; the first request for ``/hold`` answers only once the client is gone."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.holding = asyncio.Event()
        self.disconnected_at: float | None = None

    async def __call__(self, scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] != "http":
            return
        what = f"{scope['method']} {scope['path']}"
        self.seen.append(what)
        if scope["path"] == "/hold" and not self.holding.is_set():
            self.holding.set()
            while (await receive())["type"] != "http.disconnect":  # type: ignore[operator]
                pass
            self.disconnected_at = asyncio.get_running_loop().time()
            return
        body = what.encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": body})  # type: ignore[operator]


class Setup:
    def __init__(self, server: Node, h3: H3Server, client_node: Node, client: httpx.AsyncClient, app: App) -> None:
        self.server, self.h3, self.client_node, self.client, self.app = server, h3, client_node, client, app

    def pooled(self) -> PeerConnection | None:
        return self.client_node.pooled_connection(self.server.node_id, H3_ALPN, confirmed=False, early_data=True)

    async def warm(self) -> tuple[PeerConnection, PeerConnection]:
        """A pooled connection with the server's session ticket held (the next dial resumes)."""
        assert (await self.client.get("/warm")).status_code == 200
        await asyncio.sleep(0.5)
        conn = self.pooled()
        assert conn is not None
        (accepted,) = self.server.connections
        return conn, accepted

    async def close(self) -> None:
        await self.client.aclose()
        await self.client_node.close()
        await self.h3.shutdown()
        await self.server.close()


async def _setup(sim: Simulation) -> Setup:
    server_host, client_host = sim.host("server"), sim.host("client")
    sim.link(server_host, client_host, latency=LATENCY, loss=0.0)
    config = NetworkConfig(keepalive_interval=0)
    server_key = SecretKey.from_seed("server")
    server = await Node.bind(server_key, host="0.0.0.0", port=4433, config=config, network=server_host)
    app = App()
    h3 = H3Server(app, server, lifespan="off", timeout_graceful_shutdown=0.5)  # type: ignore[arg-type]
    await h3.startup()
    client_node = await Node.bind(host="0.0.0.0", config=config, network=client_host)
    transport = P2PTransport(client_node, addrs=[server.node_addr()])
    client = httpx.AsyncClient(transport=transport, base_url=f"https://{server.node_id}", timeout=30.0)
    return Setup(server, h3, client_node, client, app)


def test_the_next_request_after_the_server_closed_the_pooled_connection_dials_at_once(sim: Simulation) -> None:
    async def main() -> None:
        s = await _setup(sim)
        loop = asyncio.get_running_loop()
        conn, accepted = await s.warm()
        accepted.close(H3_NO_ERROR, "maintenance")
        await asyncio.sleep(LATENCY + 0.001)  # the CONNECTION_CLOSE arrived
        assert s.pooled() is None  # never handed out again
        err = conn.close_error
        assert isinstance(err, ConnectionClosed) and err.reason == "maintenance"
        assert not conn.closed  # draining (RFC 9000 10.2)
        t0 = loop.time()
        response = await s.client.get("/next")
        took = loop.time() - t0
        assert response.text == "GET /next"
        assert took <= RTT + 0.002, took  # resumed with 0-RTT: one round trip, no 3 PTO wait
        assert s.pooled() not in (None, conn)
        assert s.app.seen == ["GET /warm", "GET /next"]
        await s.close()

    sim.run(main())


def test_the_next_request_after_we_closed_the_pooled_connection_dials_at_once(sim: Simulation) -> None:
    async def main() -> None:
        s = await _setup(sim)
        loop = asyncio.get_running_loop()
        conn, _accepted = await s.warm()
        conn.close(H3_NO_ERROR, "done with it")
        assert s.pooled() is None
        t0 = loop.time()
        assert (await s.client.get("/next")).text == "GET /next"
        assert loop.time() - t0 <= RTT + 0.002
        await s.close()

    sim.run(main())


def test_a_post_in_flight_when_the_server_closes_fails_at_once_with_its_reason(sim: Simulation) -> None:
    async def main() -> None:
        s = await _setup(sim)
        loop = asyncio.get_running_loop()
        _conn, accepted = await s.warm()
        posting = asyncio.ensure_future(s.client.post("/hold", content=b"data"))
        await asyncio.wait_for(s.app.holding.wait(), 5)
        t0 = loop.time()
        accepted.close(H3_NO_ERROR, "maintenance")
        with pytest.raises(httpx.ReadError) as info:
            await posting
        assert loop.time() - t0 <= LATENCY + 0.002  # with the CONNECTION_CLOSE, not 3 PTO later
        message = str(info.value)
        assert "closed by peer: maintenance" in message
        assert "not retried: POST is not idempotent" in message
        # the app learnt of it with the close too (we closed: no closing period to wait out)
        assert s.app.disconnected_at is not None and s.app.disconnected_at - t0 <= 0.001
        assert (await s.client.post("/again", content=b"x")).text == "POST /again"
        await s.close()

    sim.run(main())


def test_a_get_in_flight_when_the_server_closes_is_sent_again_at_once(sim: Simulation) -> None:
    async def main() -> None:
        s = await _setup(sim)
        loop = asyncio.get_running_loop()
        conn, accepted = await s.warm()
        getting = asyncio.ensure_future(s.client.get("/hold"))
        await asyncio.wait_for(s.app.holding.wait(), 5)
        t0 = loop.time()
        accepted.close(H3_NO_ERROR, "maintenance")
        response = await getting
        # the close (one way), then the request again on a new resumed connection (0-RTT)
        assert loop.time() - t0 <= LATENCY + RTT + 0.002
        assert response.text == "GET /hold"
        assert s.app.seen == ["GET /warm", "GET /hold", "GET /hold"]
        assert s.pooled() not in (None, conn)
        await s.close()

    sim.run(main())


def test_a_post_in_flight_when_we_close_fails_at_once(sim: Simulation) -> None:
    async def main() -> None:
        s = await _setup(sim)
        loop = asyncio.get_running_loop()
        conn, _accepted = await s.warm()
        posting = asyncio.ensure_future(s.client.post("/hold", content=b"data"))
        await asyncio.wait_for(s.app.holding.wait(), 5)
        t0 = loop.time()
        conn.close(H3_NO_ERROR, "done with it")
        with pytest.raises(httpx.ReadError, match="closed locally: done with it") as info:
            await posting
        assert loop.time() - t0 <= 0.001  # not at the end of the closing period
        assert "not retried" in str(info.value)
        await asyncio.sleep(LATENCY + 0.001)
        assert s.app.disconnected_at is not None  # the server learnt it from our CONNECTION_CLOSE
        assert (await s.client.get("/next")).text == "GET /next"
        await s.close()

    sim.run(main())
