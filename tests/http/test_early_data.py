"""TLS session resumption and 0-RTT over HTTP/3, on the simulator (exact virtual time).

A returning client resumes with the ticket the server sealed (no certificates, one
round trip less), sends safe requests as early data (the app sees ``Early-Data: 1``),
never sends a POST early (a POST that came early anyway is answered 425 and sent again
after the handshake), and a restarted server (same key) accepts the tickets of its
previous life, so its clients get their next response within 2 round trips.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from asgi_p2p import AuthenticationFailed, NetworkConfig, Node, SecretKey
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.sim import Host, Simulation

LATENCY = 0.020  # one way: RTT 40 ms
RTT = 2 * LATENCY
KEY = SecretKey.from_seed("resuming server")
CLIENT_KEY = SecretKey.from_seed("returning client")

#: every request the apps saw: (method, path, early-data header or None)
SEEN: list[tuple[str, str, str | None]] = []


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    headers = dict(scope["headers"])
    early = headers.get(b"early-data")
    SEEN.append((scope["method"], scope["path"], early.decode() if early is not None else None))
    body = f"{scope['method']} {scope['path']} early={early is not None}".encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]}
    )
    await send({"type": "http.response.body", "body": body})


def _config() -> NetworkConfig:
    return NetworkConfig(keepalive_interval=0)


async def _start_server(host: Host, allow: Any = None) -> tuple[Node, H3Server]:
    node = await Node.bind(KEY, host="0.0.0.0", port=4433, config=_config(), network=host, allow=allow)
    server = H3Server(app, node)
    await server.startup()
    return node, server


async def _timed(client: httpx.AsyncClient, method: str, path: str, **kw: Any) -> tuple[httpx.Response, float]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    response = await client.request(method, path, **kw)
    return response, loop.time() - t0


def _pair(sim: Simulation) -> tuple[Host, Host]:
    server_host, client_host = sim.host("server"), sim.host("client")
    sim.link(server_host, client_host, latency=LATENCY, loss=0.0)
    return server_host, client_host


async def _drop_connections(client_node: Node) -> None:
    for conn in list(client_node.connections):
        conn.close(0, "test: come back later")
        await conn.wait_closed()
    await asyncio.sleep(0.5)


def test_returning_client_resumes_and_sends_get_as_early_data(sim: Simulation) -> None:
    server_host, client_host = _pair(sim)

    async def main() -> None:
        SEEN.clear()
        node, server = await _start_server(server_host)
        client_node = await Node.bind(CLIENT_KEY, host="0.0.0.0", config=_config(), network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as client:
            first, fresh = await _timed(client, "GET", "/first")
            assert first.text == "GET /first early=False"
            assert node.resumptions_accepted == 0
            await _drop_connections(client_node)

            again, resumed = await _timed(client, "GET", "/again")
            assert again.text == "GET /again early=True"
            assert node.resumptions_accepted == 1 and node.early_data_accepted == 1
            # 0-RTT: the request rides with the ClientHello, the answer with the server's flight
            assert resumed == pytest.approx(RTT, abs=0.005), (resumed, fresh)
            # a full handshake: the request leaves with the client's Finished, one RTT later
            assert fresh == pytest.approx(2 * RTT, abs=0.005), fresh
            (conn,) = [c for c in node.connections if c.remote_node_id == client_node.node_id]
            assert conn.remote_node_id == CLIENT_KEY.node_id  # the identity the ticket carried
            # the next request on the resumed connection is ordinary 1-RTT data
            later, _ = await _timed(client, "GET", "/later")
            assert later.text == "GET /later early=False"
        assert SEEN == [("GET", "/first", None), ("GET", "/again", "1"), ("GET", "/later", None)]
        await client_node.close()
        await server.shutdown()
        await node.close()

    sim.run(main())


def test_post_waits_for_the_handshake_on_a_resumed_connection(sim: Simulation) -> None:
    server_host, client_host = _pair(sim)

    async def main() -> None:
        SEEN.clear()
        node, server = await _start_server(server_host)
        client_node = await Node.bind(CLIENT_KEY, host="0.0.0.0", config=_config(), network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as client:
            assert (await client.get("/warm")).status_code == 200
            await _drop_connections(client_node)
            posted, took = await _timed(client, "POST", "/upload", content=b"data")
            assert posted.text == "POST /upload early=False"
            assert node.resumptions_accepted == 1
            assert took == pytest.approx(2 * RTT, abs=0.005)  # resumed handshake, then the request
            assert server.requests_too_early == 0
        await client_node.close()
        await server.shutdown()
        await node.close()

    sim.run(main())


def test_restarted_server_answers_its_clients_within_two_round_trips(sim: Simulation) -> None:
    """1 round trip to learn of the stateless reset, 1 for the resumed 0-RTT request."""
    server_host, client_host = _pair(sim)

    async def main() -> None:
        SEEN.clear()
        node, _server = await _start_server(server_host)
        client_node = await Node.bind(CLIENT_KEY, host="0.0.0.0", config=_config(), network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as client:
            assert (await client.get("/before")).status_code == 200
            sim.crash(server_host)
            await asyncio.sleep(1.0)
            sim.restart(server_host)
            node2, server2 = await _start_server(server_host)
            after, took = await _timed(client, "GET", "/after")
            assert after.text == "GET /after early=True"
            assert took <= 2 * RTT + 0.002, took
            assert client_node.stateless_resets_received == 1
            assert node2.resumptions_accepted == 1 and node2.early_data_accepted == 1
        await client_node.close()
        await server2.shutdown()
        await node2.close()
        await node.close(timeout=0.1)

    sim.run(main())


def test_revoked_client_is_refused_on_resumption(sim: Simulation) -> None:
    server_host, client_host = _pair(sim)
    allowed = {CLIENT_KEY.node_id}

    async def main() -> None:
        SEEN.clear()
        node, server = await _start_server(server_host, allow=lambda n: n in allowed)
        client_node = await Node.bind(CLIENT_KEY, host="0.0.0.0", config=_config(), network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as client:
            assert (await client.get("/allowed")).status_code == 200
            await _drop_connections(client_node)
            allowed.clear()  # revoked: the ticket it holds must not let it back in
            with pytest.raises(httpx.ConnectError) as info:  # as without 0-RTT: a refused connect
                await client.get("/revoked")
            assert "not allowed" in str(info.value) and str(CLIENT_KEY.node_id) in str(info.value)
            assert isinstance(info.value.__cause__, AuthenticationFailed)
        assert [path for _, path, _ in SEEN] == ["/allowed"]  # the early request never ran
        assert node.resumptions_accepted == 0
        await client_node.close()
        await server.shutdown()
        await node.close()

    sim.run(main())


def test_post_sent_as_early_data_is_answered_425_without_running_the_app(sim: Simulation) -> None:
    from asgi_p2p.http.client import connect_h3

    server_host, client_host = _pair(sim)

    async def main() -> None:
        SEEN.clear()
        node, server = await _start_server(server_host)
        client_node = await Node.bind(CLIENT_KEY, host="0.0.0.0", config=_config(), network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as client:
            assert (await client.get("/warm")).status_code == 200
            await _drop_connections(client_node)
            # a client that (wrongly) sends a POST as early data
            cc = await connect_h3(client_node, node.node_addr(), early_data=True)
            assert cc.conn.early
            st = cc.open_stream()
            authority = str(node.node_id).encode()
            fields = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", authority), (b":path", b"/x")]
            st.send_headers(fields, False)
            await st.write(b"payload", True)
            assert await st.wait_headers() == 425
            assert server.requests_too_early == 1 and node.early_data_accepted == 1
        assert [path for _, path, _ in SEEN] == ["/warm"]
        await client_node.close()
        await server.shutdown()
        await node.close()

    sim.run(main())


def test_app_answering_425_gets_the_request_again_after_the_handshake(sim: Simulation) -> None:
    server_host, client_host = _pair(sim)

    async def cautious(scope: dict[str, Any], receive: Any, send: Any) -> None:
        early = dict(scope["headers"]).get(b"early-data") == b"1"
        SEEN.append((scope["method"], scope["path"], "1" if early else None))
        status, body = (425, b"too early") if early else (200, b"done")
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def main() -> None:
        SEEN.clear()
        node = await Node.bind(KEY, host="0.0.0.0", port=4433, config=_config(), network=server_host)
        server = H3Server(cautious, node)
        await server.startup()
        client_node = await Node.bind(CLIENT_KEY, host="0.0.0.0", config=_config(), network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as client:
            assert (await client.get("/warm")).text == "done"
            await _drop_connections(client_node)
            response, took = await _timed(client, "GET", "/careful")
            assert (response.status_code, response.text) == (200, "done")
            assert took == pytest.approx(2 * RTT, abs=0.005)
        assert SEEN == [("GET", "/warm", None), ("GET", "/careful", "1"), ("GET", "/careful", None)]
        await client_node.close()
        await server.shutdown()
        await node.close()

    sim.run(main())


def test_replayed_early_data_is_refused(sim: Simulation) -> None:
    """An attacker who recorded a resumed ClientHello with its 0-RTT request sends it again:
    the server resumes nothing for it twice (strike register) and the app runs once."""
    server_host, client_host = _pair(sim)
    attacker_host = sim.host("attacker")
    sim.link(attacker_host, server_host, latency=LATENCY, loss=0.0)

    async def main() -> None:
        SEEN.clear()
        node, server = await _start_server(server_host)
        client_node = await Node.bind(CLIENT_KEY, host="0.0.0.0", config=_config(), network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        sent: list[bytes] = []
        router = client_node.router
        original = router.sendto

        def recording(data: bytes, addr: tuple[str, int]) -> None:
            sent.append(bytes(data))
            original(data, addr)

        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as client:
            assert (await client.get("/warm")).status_code == 200
            await _drop_connections(client_node)
            router.sendto = recording
            assert (await client.get("/once")).text == "GET /once early=True"
            router.sendto = original
            await _drop_connections(client_node)
        first_flight = next(d for d in sent if d[0] & 0x80)  # the Initial (with 0-RTT coalesced)
        assert len(first_flight) >= 1200
        replayer = await attacker_host.bind("0.0.0.0", 5555, lambda data, addr: None)
        replayer.sendto(first_flight, node.local_address)
        for _ in range(100):
            if node.early_data_refused:
                break
            await asyncio.sleep(0.01)
        assert node.early_data_refused == 1
        await asyncio.sleep(1.0)
        assert [path for _, path, _ in SEEN] == ["/warm", "/once"]  # the replay ran nothing
        replayer.close()
        await client_node.close()
        await server.shutdown()
        await node.close()

    sim.run(main())


def test_tickets_exported_by_one_process_let_the_next_resume_with_0rtt(sim: Simulation) -> None:
    server_host, client_host = _pair(sim)

    async def main() -> None:
        SEEN.clear()
        node, server = await _start_server(server_host)
        first = await Node.bind(CLIENT_KEY, host="0.0.0.0", config=_config(), network=client_host)
        async with httpx.AsyncClient(
            transport=P2PTransport(first, addrs=[node.node_addr()]), base_url=f"https://{node.node_id}"
        ) as client:
            assert (await client.get("/first-process")).status_code == 200
        exported = first.export_session_tickets()
        await first.close()
        assert str(node.node_id) in exported.decode()
        await asyncio.sleep(5.0)

        second = await Node.bind(CLIENT_KEY, host="0.0.0.0", config=_config(), network=client_host)
        with pytest.raises(ValueError, match="malformed ticket file"):
            second.import_session_tickets(b'{"version": 1, "tickets": [{"node": "x"}]}')
        stranger = await Node.bind(host="0.0.0.0", config=_config(), network=client_host)
        with pytest.raises(ValueError, match="not"):  # they would resume as CLIENT_KEY's node
            stranger.import_session_tickets(exported)
        await stranger.close()
        assert second.import_session_tickets(exported) == 1
        async with httpx.AsyncClient(
            transport=P2PTransport(second, addrs=[node.node_addr()]), base_url=f"https://{node.node_id}"
        ) as client:
            response, took = await _timed(client, "GET", "/second-process")
            assert response.text == "GET /second-process early=True"
            assert took == pytest.approx(RTT, abs=0.005)
        await second.close()
        await server.shutdown()
        await node.close()

    sim.run(main())


def test_a_caller_without_early_data_waits_for_the_handshake_of_a_pooled_early_connection(sim: Simulation) -> None:
    """A WebSocket (or any caller that did not ask for early data) dialing while the pooled
    connection is still in its 0-RTT phase gets it only once the handshake completed."""
    from asgi_p2p.http.client import connect_h3

    server_host, client_host = _pair(sim)

    async def main() -> None:
        node, server = await _start_server(server_host)
        client_node = await Node.bind(CLIENT_KEY, host="0.0.0.0", config=_config(), network=client_host)
        async with httpx.AsyncClient(
            transport=P2PTransport(client_node, addrs=[node.node_addr()]), base_url=f"https://{node.node_id}"
        ) as client:
            assert (await client.get("/warm")).status_code == 200
            await _drop_connections(client_node)
            early = await connect_h3(client_node, node.node_addr(), early_data=True)
            assert early.conn.early
            later = await connect_h3(client_node, node.node_addr())
            assert later is early and not early.conn.early and early.conn.handshake_completed
        await client_node.close()
        await server.shutdown()
        await node.close()

    sim.run(main())


def test_an_early_response_reaches_the_caller_before_the_client_finished_is_sent(sim: Simulation) -> None:
    """The server's flight and its answer to the 0-RTT request arrive together: the caller
    gets the response first, the client's Finished (queued while the flight was read)
    leaves right after, in the same instant (nothing waits for it: the server answered)."""
    server_host, client_host = _pair(sim)

    async def main() -> None:
        node, server = await _start_server(server_host)
        client_node = await Node.bind(CLIENT_KEY, host="0.0.0.0", config=_config(), network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as client:
            assert (await client.get("/warm")).status_code == 200
            await _drop_connections(client_node)
            loop = asyncio.get_running_loop()
            response, took = await _timed(client, "GET", "/early")
            assert response.text == "GET /early early=True"
            (conn,) = client_node.connections
            assert conn.early is False and conn.handshake_completed
            assert conn.datagrams_sent == 2  # the ClientHello and the request; the Finished not yet
            answered_at = loop.time()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert conn.datagrams_sent == 3 and loop.time() == answered_at  # the Finished, in the same instant
            assert took == pytest.approx(RTT, abs=0.005)
        await client_node.close()
        await server.shutdown()
        await node.close()

    sim.run(main())
