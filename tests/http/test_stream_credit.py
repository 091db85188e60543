"""Stream credit keeps up with a client that keeps many requests in flight.

A server lets a peer have ``max_streams`` (100) request streams open at once, and raises the
limit (MAX_STREAMS) as streams finish.  aioquic batches that update until the peer has fewer
streams left to open than it would grant: a client with 50 requests in flight then used up
its credit every few round trips and waited one more round trip for the update, so about one
request in ten took two round trips (on the WAN rig, 50 in flight over 83 ms: 477 req/s, p90
160 ms; with the update in the next packet, 577 req/s, p90 88 ms).  Once the peer has less than
half its limit left the update now goes out with the next packet, as quic-go queues it; above
half it still waits, so a client with one request at a time gets no datagram of its own for it
after every request.  Simulator, virtual time.
"""

from __future__ import annotations

import asyncio

import httpx

from asgi_p2p import NetworkConfig, Node
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.sim import Simulation

LATENCY = 0.040  # one way: RTT 80 ms
RTT = 2 * LATENCY
CONFIG = NetworkConfig(keepalive_interval=0)


async def small_app(scope: dict[str, object], receive: object, send: object) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


class _Served:
    """A server node answering ``small_app`` and a client connected to it, one RTT apart."""

    def __init__(self, node: Node, server: H3Server, client_node: Node, client: httpx.AsyncClient) -> None:
        self.node, self.server, self.client_node, self.client = node, server, client_node, client

    @classmethod
    async def start(cls, sim: Simulation) -> _Served:
        server_host, client_host = sim.host("server"), sim.host("client")
        sim.link(server_host, client_host, latency=LATENCY, loss=0.0)
        node = await Node.bind(host="0.0.0.0", port=4433, config=CONFIG, network=server_host)
        server = H3Server(small_app, node)  # type: ignore[arg-type]
        await server.startup()
        client_node = await Node.bind(host="0.0.0.0", config=CONFIG, network=client_host)
        client = httpx.AsyncClient(
            transport=P2PTransport(client_node, addrs=[node.node_addr()]), base_url=f"https://{node.node_id}"
        )
        assert (await client.get("/")).text == "ok"  # connected
        return cls(node, server, client_node, client)

    async def stop(self) -> None:
        await self.client.aclose()
        await self.client_node.close()
        await self.server.shutdown()
        await self.node.close()


def test_fifty_requests_in_flight_never_wait_for_stream_credit(sim: Simulation) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        served = await _Served.start(sim)
        client = served.client
        took: list[float] = []
        left = 1000

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                started = loop.time()
                response = await client.get("/")
                assert response.status_code == 200
                took.append(loop.time() - started)

        started = loop.time()
        await asyncio.gather(*(worker() for _ in range(50)))
        elapsed = loop.time() - started
        slow = [t for t in took if t > 1.5 * RTT]
        assert slow == [], f"{len(slow)} of {len(took)} requests waited more than a round trip: {sorted(slow)[-5:]}"
        assert elapsed < 21 * RTT  # 1,000 requests, 50 in flight: 20 round trips
        await served.stop()

    sim.run(main())


def test_one_request_at_a_time_gets_no_datagram_of_its_own_for_stream_credit(sim: Simulation) -> None:
    async def main() -> None:
        served = await _Served.start(sim)
        client, node = served.client, served.node
        await asyncio.sleep(1)  # the handshake's last packets are out
        [conn] = node.all_connections
        before = conn.datagrams_sent
        for _ in range(200):
            assert (await client.get("/")).text == "ok"
        # one datagram per response; a MAX_STREAMS update rides along or, once the client has
        # less than half its 100 streams left, leaves alone: about 4 more in 200 requests
        assert conn.datagrams_sent - before <= 210
        await served.stop()

    sim.run(main())
