"""A peer that restarts (same key, same port) resets its old connections; the client retries.

On the simulator (exact virtual time, no loss) and on real UDP (a server
subprocess killed with SIGKILL and started again).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import httpx
import pytest

from asgi_p2p import ConnectionReset, NetworkConfig, Node, NodeAddr, SecretKey
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.sim import Host, Simulation

LATENCY = 0.020  # one way: RTT 40 ms
RTT = 2 * LATENCY
KEY = SecretKey.from_seed("restarting server")


#: every request the apps saw: "METHOD /path"
SEEN: list[str] = []


async def hello_app(scope: dict[str, object], receive: object, send: object) -> None:
    assert scope["type"] == "http"
    SEEN.append(f"{scope['method']} {scope['path']}")
    body = f"{scope['method']} {scope['path']}".encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]}
    )  # type: ignore[operator]
    await send({"type": "http.response.body", "body": body})  # type: ignore[operator]


async def _start_server(host: Host) -> tuple[Node, H3Server]:
    node = await Node.bind(KEY, host="0.0.0.0", port=4433, config=NetworkConfig(keepalive_interval=0), network=host)
    server = H3Server(hello_app, node)  # type: ignore[arg-type]
    await server.startup()
    return node, server


async def _timed(client: httpx.AsyncClient, method: str, path: str) -> tuple[httpx.Response, float]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    response = await client.request(method, path)
    return response, loop.time() - t0


def _pair(sim: Simulation) -> tuple[Host, Host]:
    server_host, client_host = sim.host("server"), sim.host("client")
    sim.link(server_host, client_host, latency=LATENCY, loss=0.0)
    return server_host, client_host


def test_restarted_server_resets_the_pooled_connection_and_the_client_retries(sim: Simulation) -> None:
    server_host, client_host = _pair(sim)

    async def main() -> None:
        node, _server = await _start_server(server_host)
        client_node = await Node.bind(host="0.0.0.0", config=NetworkConfig(keepalive_interval=0), network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as client:
            first, fresh = await _timed(client, "GET", "/first")  # dials: handshake + request
            second, pooled = await _timed(client, "GET", "/second")  # reuses the connection
            assert (first.text, second.text) == ("GET /first", "GET /second")
            assert pooled == pytest.approx(RTT, abs=0.005)
            old_conn = client_node.connections[0]

            sim.crash(server_host)  # the server's socket is gone; it told no one
            await asyncio.sleep(1.0)
            sim.restart(server_host)
            node2, server2 = await _start_server(server_host)
            loop = asyncio.get_running_loop()
            restarted_at = loop.time()
            third, after = await _timed(client, "GET", "/third")
            assert third.text == "GET /third"
            # one round trip to learn of the reset, then exactly what a fresh client pays
            assert after <= RTT + fresh + 0.010, (after, fresh)
            assert loop.time() - restarted_at <= RTT + fresh + 0.010
            assert isinstance(old_conn.close_error, ConnectionReset)
            assert "reset by peer" in str(old_conn.close_error) and str(node.node_id) in str(old_conn.close_error)
            assert client_node.stateless_resets_received == 1
            assert node2.stateless_resets_sent == 1
        await client_node.close()
        await server2.shutdown()
        await node2.close()
        await node.close(timeout=0.1)  # the crashed one: its socket is closed already

    sim.run(main())


def test_post_on_a_reset_connection_is_not_retried_and_says_why(sim: Simulation) -> None:
    server_host, client_host = _pair(sim)

    async def main() -> None:
        node, _server = await _start_server(server_host)
        client_node = await Node.bind(host="0.0.0.0", config=NetworkConfig(keepalive_interval=0), network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as client:
            assert (await client.get("/warm")).status_code == 200
            sim.crash(server_host)
            sim.restart(server_host)
            node2, server2 = await _start_server(server_host)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(httpx.ReadError) as info:
                await client.post("/upload", content=b"data")
            assert loop.time() - t0 <= 2 * RTT
            message = str(info.value)
            assert "reset by peer" in message and "restarted" in message
            assert "not retried: POST is not idempotent" in message
            # the next request dials afresh without any retry
            assert (await client.post("/again", content=b"data")).text == "POST /again"
        await client_node.close()
        await server2.shutdown()
        await node2.close()
        await node.close(timeout=0.1)

    sim.run(main())


def test_a_post_that_never_left_is_retried_on_a_new_connection(sim: Simulation) -> None:
    """The connection dies (a reset arrives) after the POST was queued and before any of it was
    sent: it provably never reached the app, so it is sent again on a new connection."""
    from asgi_p2p import aioquic_compat as hooks
    from asgi_p2p.http.client import ClientConnection

    server_host, client_host = _pair(sim)

    async def main() -> None:
        SEEN.clear()
        node, server = await _start_server(server_host)
        client_node = await Node.bind(host="0.0.0.0", config=NetworkConfig(keepalive_interval=0), network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as client:
            assert (await client.get("/warm")).status_code == 200
            (peer,) = client_node.connections
            cc = peer.handler
            assert isinstance(cc, ClientConnection)
            posting = asyncio.ensure_future(client.post("/once", content=b"body"))
            for _ in range(1000):  # loop passes until the request is queued on the pooled connection
                if cc.streams:
                    break
                await asyncio.sleep(0)
            (sid,) = cc.streams
            assert hooks.stream_bytes_sent(peer.quic, sid) == 0  # queued, not yet sent
            peer.stateless_reset()  # as if the peer's reset arrived now
            response = await posting
            assert response.text == "POST /once"
            assert SEEN == ["GET /warm", "POST /once"]  # exactly once
            assert client_node.connections[0] is not peer
        await client_node.close()
        await server.shutdown()
        await node.close()

    sim.run(main())


def test_a_request_on_a_connection_dialed_for_it_is_not_retried(sim: Simulation) -> None:
    """Only a pooled connection can be stale: a fresh one that dies is the answer itself."""
    server_host, client_host = _pair(sim)

    async def main() -> None:
        SEEN.clear()
        node, server = await _start_server(server_host)
        client_node = await Node.bind(host="0.0.0.0", config=NetworkConfig(keepalive_interval=0), network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        dials = 0
        original = client_node.connect_quic

        async def counting(*args: object, **kwargs: object) -> object:
            nonlocal dials
            conn = await original(*args, **kwargs)  # type: ignore[arg-type]
            if len(SEEN) == 0 and dials == 0:
                dials += 1
                conn.stateless_reset()  # the fresh connection dies before the request goes out
            return conn

        client_node.connect_quic = counting  # type: ignore[method-assign,assignment]
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as client:
            with pytest.raises(httpx.ConnectError, match="reset by peer"):
                await client.get("/fresh")
            assert SEEN == [] and dials == 1
            assert (await client.get("/next")).text == "GET /next"
        await client_node.close()
        await server.shutdown()
        await node.close()

    sim.run(main())


def test_without_resets_the_dead_connection_hangs_until_the_idle_timeout(sim: Simulation) -> None:
    """What the reset saves: a peer that comes back with another key never answers the old
    connection (its token differs), so the client learns of it only from its idle timer,
    and the error says that, not "closed by peer"."""
    server_host, client_host = _pair(sim)

    async def main() -> None:
        config = NetworkConfig(keepalive_interval=0, idle_timeout=5.0)
        node = await Node.bind(KEY, host="0.0.0.0", port=4433, config=config, network=server_host)
        server = H3Server(hello_app, node)  # type: ignore[arg-type]
        await server.startup()
        client_node = await Node.bind(host="0.0.0.0", config=config, network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}", timeout=60) as client:
            assert (await client.get("/warm")).status_code == 200
            conn = client_node.connections[0]
            sim.crash(server_host)
            sim.restart(server_host)
            other = await Node.bind(
                SecretKey.from_seed("someone else"), host="0.0.0.0", port=4433, config=config, network=server_host
            )
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(httpx.ReadError, match="timed out: nothing heard from it for 5s"):
                await client.post("/upload", content=b"x")
            assert 5.0 <= loop.time() - t0 <= 6.0
            err = conn.close_error
            assert err is not None and "local idle timeout" in str(err) and "closed by peer" not in str(err)
            assert client_node.stateless_resets_received == 0
            assert other.stateless_resets_sent >= 1  # it answered, with a token the client does not hold
        await client_node.close()
        await other.close()
        await node.close(timeout=0.1)

    sim.run(main())


# -- real UDP: the server is a process, killed with SIGKILL and started again ------------------


HERE = Path(__file__).parent
REPO = HERE.parents[1]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _spawn_server(seed: str, port: int) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASGI_P2P_")}
    env["PYTHONPATH"] = str(REPO)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "restart_server.py"),
        seed,
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert line.startswith(b"ready "), line
    return proc


@pytest.mark.real_network("a server process killed with SIGKILL and restarted")
async def test_killed_and_restarted_server_process_answers_the_next_request_at_once() -> None:
    seed, port = "restart over udp", _free_udp_port()
    node_id = SecretKey.from_seed(seed).node_id
    procs: list[asyncio.subprocess.Process] = []
    client_node = await Node.bind(host="127.0.0.1", config=NetworkConfig(keepalive_interval=0))
    try:
        procs.append(await _spawn_server(seed, port))
        transport = P2PTransport(client_node, addrs=[NodeAddr(node_id, [("127.0.0.1", port)])])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node_id}", timeout=30) as client:
            assert (await client.get("/before")).text == "GET /before"
            old_conn = client_node.connections[0]
            procs[0].kill()  # SIGKILL: no CONNECTION_CLOSE, the client's connection is silently dead
            await procs[0].wait()
            procs.append(await _spawn_server(seed, port))
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            response = await client.get("/after")
            elapsed = loop.time() - t0
            assert response.text == "GET /after"
            assert elapsed < 3.0, f"took {elapsed:.2f}s: the reset did not arrive (the idle timeout is 30 s)"
            assert isinstance(old_conn.close_error, ConnectionReset)
            assert client_node.stateless_resets_received == 1
            # the retry resumed the session with the ticket of the server's previous life
            (new_conn,) = client_node.connections
            assert new_conn.quic.tls.session_resumed and new_conn.quic.tls.early_data_accepted
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await client_node.close()
