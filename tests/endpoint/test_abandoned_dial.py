"""A dial every caller gave up on is closed, so a retry dials afresh.

A handshake that gets no answer backs off: its Initials leave 0.2, 0.6, 1.4, 3.0, 6.2 and
12.6 s after the first.  A caller's own deadline (httpx's connect timeout) that cancels the
wait must not leave that handshake in the pool: the user's retry would join it and wait
for its next Initial, seconds away, although the path works again.  (The 200-seed swarm's
lossy-faults seed 184: a client's three attempts after a heal shared one handshake whose
Initials were lost, the last one 25 s after the first.)  On the simulator: exact virtual
time, no loss.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from asgi_p2p import ConnectionFailed, NetworkConfig, Node, SecretKey
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.sim import Host, Simulation

LATENCY = 0.020  # one way: RTT 40 ms
RTT = 2 * LATENCY
KEY = SecretKey.from_seed("a server behind a partition")
CONFIG = NetworkConfig(keepalive_interval=0)


async def hello_app(scope: dict[str, object], receive: object, send: object) -> None:
    assert scope["type"] == "http"
    body = f"{scope['method']} {scope['path']}".encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]}
    )  # type: ignore[operator]
    await send({"type": "http.response.body", "body": body})  # type: ignore[operator]


async def _start(server_host: Host, client_host: Host) -> tuple[Node, H3Server, Node, httpx.AsyncClient]:
    node = await Node.bind(KEY, host="0.0.0.0", port=4433, config=CONFIG, network=server_host)
    server = H3Server(hello_app, node)  # type: ignore[arg-type]
    await server.startup()
    client_node = await Node.bind(host="0.0.0.0", config=CONFIG, network=client_host)
    transport = P2PTransport(client_node, addrs=[node.node_addr()])
    client = httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}")
    return node, server, client_node, client


async def _stop(node: Node, server: H3Server, client_node: Node, client: httpx.AsyncClient) -> None:
    await client.aclose()
    await client_node.close()
    await server.shutdown()
    await node.close()


def _pair(sim: Simulation) -> tuple[Host, Host]:
    server_host, client_host = sim.host("server"), sim.host("client")
    sim.link(server_host, client_host, latency=LATENCY, loss=0.0)
    return server_host, client_host


def test_a_retry_after_a_connect_timeout_dials_afresh(sim: Simulation) -> None:
    server_host, client_host = _pair(sim)

    async def main() -> None:
        node, server, client_node, client = await _start(server_host, client_host)
        loop = asyncio.get_running_loop()
        sim.partition(server_host, client_host)  # every Initial is lost
        started = loop.time()
        with pytest.raises(httpx.ConnectTimeout):
            await client.get("/first", timeout=httpx.Timeout(10, connect=3.5))
        assert loop.time() - started == pytest.approx(3.5)
        # the dial nobody waits for is gone (it would send its next Initial only at 6.2 s)
        [abandoned] = client_node.all_connections
        assert abandoned.close_error is not None and "dial abandoned" in str(abandoned.close_error)
        sim.heal(server_host, client_host)
        retried = loop.time()
        response = await client.get("/second", timeout=10)
        assert response.text == "GET /second"
        # a new handshake (1 RTT, the request with our Finished: 1 more), at once: not at 6.2 s
        assert loop.time() - retried == pytest.approx(2 * RTT, abs=0.01)
        assert [c.close_error for c in client_node.connections] == [None]
        await _stop(node, server, client_node, client)

    sim.run(main())


def test_a_dial_another_request_still_waits_for_goes_on(sim: Simulation) -> None:
    """Giving up is per caller: the dial ends only when its last waiter gave up."""
    server_host, client_host = _pair(sim)

    async def main() -> None:
        node, server, client_node, client = await _start(server_host, client_host)
        loop = asyncio.get_running_loop()
        sim.partition(server_host, client_host)
        started = loop.time()
        patient = asyncio.ensure_future(client.get("/patient", timeout=10))
        with pytest.raises(httpx.ConnectTimeout):
            await client.get("/hasty", timeout=httpx.Timeout(10, connect=1.0))
        [dial] = client_node.all_connections
        assert dial.close_error is None  # the patient request still waits for it
        sim.heal(server_host, client_host)
        response = await patient
        assert response.text == "GET /patient"
        # the dial's Initial at 1.4 s (the third retransmission) got through: one handshake
        assert loop.time() - started == pytest.approx(1.4 + 2 * RTT, abs=0.01)
        assert client_node.connections == [dial] and dial.close_error is None
        await _stop(node, server, client_node, client)

    sim.run(main())


def test_a_cancelled_dial_is_closed_and_the_next_one_is_new(sim: Simulation) -> None:
    """On the endpoint API: cancelling the only connect_quic waiting for a handshake ends it."""
    server_host, client_host = _pair(sim)

    async def main() -> None:
        node, server, client_node, client = await _start(server_host, client_host)
        sim.partition(server_host, client_host)
        dial = asyncio.ensure_future(client_node.connect_quic(node.node_addr(), "h3"))
        await asyncio.sleep(2.0)
        [first] = client_node.all_connections
        dial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dial
        assert first.close_error is not None and "dial abandoned" in str(first.close_error)
        sim.heal(server_host, client_host)
        second = await client_node.connect_quic(node.node_addr(), "h3")
        assert second is not first and second.close_error is None
        await _stop(node, server, client_node, client)

    sim.run(main())


def test_a_joiner_with_a_later_deadline_outlives_the_first_callers_timeout(sim: Simulation) -> None:
    """The dial's own deadline (``connect_timeout``, from each caller's start) is per caller too:
    the first caller's running out fails that caller only, and the request that joined the
    dial later gets the connection when the dial's next Initial gets through."""
    server_host, client_host = _pair(sim)

    async def main() -> None:
        node, server, client_node, client = await _start(server_host, client_host)
        loop = asyncio.get_running_loop()
        config = NetworkConfig(keepalive_interval=0, connect_timeout=5.0)
        dialer = await Node.bind(host="0.0.0.0", config=config, network=client_host)
        transport = P2PTransport(dialer, addrs=[node.node_addr()])  # (speaks h3)
        sim.partition(server_host, client_host)
        started = loop.time()
        first = asyncio.ensure_future(dialer.connect_quic(node.node_addr(), "h3"))
        await asyncio.sleep(2.0)
        joiner = asyncio.ensure_future(dialer.connect_quic(node.node_addr(), "h3"))  # its deadline: 7 s
        with pytest.raises(ConnectionFailed, match="within 5s"):
            await first
        assert loop.time() - started == pytest.approx(5.0)
        sim.heal(server_host, client_host)
        conn = await joiner
        # the dial's Initial at 6.2 s got through: the same handshake, not closed at 5 s
        assert loop.time() - started == pytest.approx(6.2 + 1.5 * RTT, abs=RTT)
        assert conn.close_error is None and dialer.connections == [conn]
        await transport.aclose()
        await dialer.close()
        await _stop(node, server, client_node, client)

    sim.run(main())
