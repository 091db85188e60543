"""Simulated TCP: apps calling backends over TCP inside a simulation (asgi_p2p/sim/tcp.py)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from asgi_p2p.sim import Host, RealIOForbidden, Simulation, WallClockSleep
from asgi_p2p.sim.tcp import SimTcpServer, SimTcpTransport

ROOT = Path(__file__).resolve().parents[2]


# -- a tiny redis-like key-value server --------------------------------------------------------


async def kv_server(host: Host, port: int = 6379) -> SimTcpServer:
    """``SET k v`` -> ``+OK``, ``GET k`` -> ``$v`` or ``-``: one command per line."""
    store: dict[str, str] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            cmd, *args = line.decode().split()
            if cmd == "SET":
                store[args[0]] = args[1]
                writer.write(b"+OK\n")
            elif cmd == "GET":
                value = store.get(args[0])
                writer.write(b"-\n" if value is None else f"${value}\n".encode())
            await writer.drain()
        writer.close()

    return await host.start_server(handle, port=port)


async def kv_call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, command: str) -> str:
    writer.write(command.encode() + b"\n")
    await writer.drain()
    return (await reader.readline()).decode().strip()


async def kv(request: Request) -> PlainTextResponse:
    """An endpoint of the app under test: talks to the key-value server "db" over TCP."""
    reader, writer = await asyncio.open_connection("db", 6379)  # a simulated host's name
    try:
        key = request.path_params["key"]
        if request.method == "PUT":
            answer = await kv_call(reader, writer, f"SET {key} {(await request.body()).decode()}")
        else:
            answer = await kv_call(reader, writer, f"GET {key}")
    finally:
        writer.close()
    return PlainTextResponse(answer)


kv_app = Starlette(routes=[Route("/kv/{key}", kv, methods=["GET", "PUT"])])


@pytest.mark.sim(loss=0.0, latency=0.05)
async def test_app_calls_a_key_value_server_over_tcp(sim: Simulation) -> None:
    await kv_server(sim.host("db"))
    server = await sim.serve(kv_app, "web")
    client = await sim.client("laptop", server)
    assert (await client.get("/kv/fruit")).text == "-"
    assert (await client.put("/kv/fruit", content=b"apple")).text == "+OK"
    start = sim.now
    response = await client.get("/kv/fruit")
    assert response.status_code == 200 and response.text == "$apple"
    # HTTP/3 round trip (0.1 s) + TCP handshake (0.1 s) + the GET command (0.1 s)
    assert sim.now - start == pytest.approx(0.3, abs=1e-6)
    assert sim.tcp.connections == 3 and sim.tcp.refused == 0
    assert sim.trace.count("tcp:syn") == 3


# -- an HTTP backend (uvicorn) called with httpx --------------------------------------------------


async def price(request: Request) -> JSONResponse:
    return JSONResponse({"item": request.path_params["item"], "price": len(request.path_params["item"])})


prices_app = Starlette(routes=[Route("/price/{item}", price)])


async def buy(request: Request) -> JSONResponse:
    async with httpx.AsyncClient(base_url="http://prices:8000", timeout=10.0) as backend:
        first = await backend.get(f"/price/{request.path_params['item']}")
        again = await backend.get("/price/kiwi")  # the same (pooled) connection
    return JSONResponse({"first": first.json(), "again": again.json()})


shop_app = Starlette(routes=[Route("/buy/{item}", buy)])


async def start_uvicorn(sim: Simulation, host: str, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    with sim.on(sim.host(host)):  # uvicorn's create_server runs on that host
        server = uvicorn.Server(
            uvicorn.Config(prices_app, host="0.0.0.0", port=port, lifespan="off", log_level="error")
        )
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn has no event for it; polling costs no wall time here
            await asyncio.sleep(0.01)
    return server, task


@pytest.mark.sim(loss=0.0, latency=0.05)
async def test_app_calls_an_http_backend_with_httpx_over_tcp(sim: Simulation) -> None:
    backend, task = await start_uvicorn(sim, "prices", 8000)
    server = await sim.serve(shop_app, "shop")
    client = await sim.client("laptop", server)
    assert (await client.get("/buy/fig")).status_code == 200  # the QUIC handshake happens here
    start = sim.now
    response = await client.get("/buy/apple")
    assert response.status_code == 200
    assert response.json() == {"first": {"item": "apple", "price": 5}, "again": {"item": "kiwi", "price": 4}}
    # HTTP/3 round trip + TCP handshake + two HTTP/1.1 requests on one kept-alive connection
    assert sim.now - start == pytest.approx(0.4, abs=1e-6)
    assert sim.tcp.connections == 2  # one per request to the shop: httpx reused the pooled one
    assert sim.trace.count("tcp:rst") == 0
    backend.should_exit = True
    await task


# -- latency, loss, bandwidth ----------------------------------------------------------------------


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.mark.sim(loss=0.0, latency=0.03)
async def test_handshake_and_request_take_round_trips(sim: Simulation) -> None:
    a, b = sim.host("a"), sim.host("b")
    accepted: list[float] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(sim.now)
        await echo(reader, writer)

    server = await b.start_server(serve, port=7000)
    assert server.is_serving() and server.sockets[0].getsockname() == (b.address, 7000)
    start = sim.now
    reader, writer = await a.open_connection(b.address, 7000)
    assert sim.now - start == pytest.approx(0.06, abs=1e-9)  # SYN, SYN-ACK: one round trip
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    assert sim.now - start == pytest.approx(0.12, abs=1e-9)  # plus one round trip
    assert accepted == [pytest.approx(start + 0.09, abs=1e-9)]  # the server accepts at 1.5 round trips
    assert writer.get_extra_info("peername") == (b.address, 7000)
    assert writer.get_extra_info("sockname") == (a.address, 49152)
    sock = writer.get_extra_info("socket")
    assert sock.getpeername() == (b.address, 7000)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted, changes nothing
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    assert not server.is_serving()


@pytest.mark.sim(latency=0.02)
async def test_loss_becomes_retransmission_delay_and_bytes_arrive_in_order(sim: Simulation) -> None:
    a, b = sim.host("a"), sim.host("b")
    await b.start_server(echo, port=7000)

    async def transfer(loss: float) -> float:
        sim.link(a, b, loss=loss)
        reader, writer = await a.open_connection(b.address, 7000)
        blob = bytes(sim.rng.randrange(256) for _ in range(4096)) * 64  # 256 KiB
        start = sim.now
        writer.write(blob)
        echoed = await reader.readexactly(len(blob))
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(blob).digest()
        writer.close()
        return sim.now - start

    clean = await transfer(0.0)
    assert sim.tcp.retransmissions == 0
    lossy = await transfer(0.05)
    assert sim.tcp.retransmissions > 0
    assert sim.trace.count("tcp:lost:loss") == sim.tcp.retransmissions
    assert lossy > clean + 0.2  # at least one retransmission timeout (>= 200 ms)


@pytest.mark.sim(loss=0.0, latency=0.01)
async def test_bandwidth_limits_throughput(sim: Simulation) -> None:
    a, b = sim.host("a"), sim.host("b")
    sim.link(a, b, bandwidth=8_000_000)  # 1 MB/s
    done = asyncio.get_running_loop().create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done.set_result(len(await reader.read()))
        writer.close()

    await b.start_server(sink, port=9)
    _, writer = await a.open_connection(b.address, 9)
    start = sim.now
    writer.write(b"x" * 2_000_000)
    writer.write_eof()
    assert await done == 2_000_000
    elapsed = sim.now - start
    assert 2.0 < elapsed < 2.2  # 2 MB at 1 MB/s, plus headers (40 bytes per 1460) and latency


@pytest.mark.sim(loss=0.0, latency=0.05)
async def test_flow_control_pauses_the_writer(sim: Simulation) -> None:
    a, b = sim.host("a"), sim.host("b")
    accepted: asyncio.Future[SimTcpTransport] = asyncio.get_running_loop().create_future()

    class Slow(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, SimTcpTransport)
            transport.pause_reading()  # takes nothing: the window fills
            accepted.set_result(transport)

    await b.create_server(Slow, port=5000)
    _, writer = await a.open_connection(b.address, 5000)
    transport = writer.transport
    writer.write(b"y" * 1_000_000)
    assert transport.get_write_buffer_size() == 1_000_000 - 256 * 1024  # the rest waits for the window
    drained = asyncio.ensure_future(writer.drain())
    await asyncio.sleep(10)
    assert not drained.done()  # the receiver reads nothing: the writer stays paused
    server_end = await accepted
    assert not server_end.is_reading()
    server_end.resume_reading()
    await asyncio.wait_for(drained, 5)
    assert server_end.bytes_received <= 1_000_000
    with pytest.raises(ValueError, match="high"):
        transport.set_write_buffer_limits(high=1, low=2)


# -- faults: partitions, crashes, resets ---------------------------------------------------------


@pytest.mark.sim(loss=0.0, latency=0.05, tcp_timeout=20.0)
async def test_partition_stalls_then_heal_resumes(sim: Simulation) -> None:
    a, b = sim.host("a"), sim.host("b")
    await b.start_server(echo, port=7000)
    reader, writer = await a.open_connection(b.address, 7000)
    sim.partition(a, b)
    sim.after(5.0, sim.heal)
    start = sim.now
    writer.write(b"hello")
    assert await reader.readexactly(5) == b"hello"  # stalled, then retransmitted after the heal
    assert 5.0 < sim.now - start < 10.0
    assert sim.trace.count("tcp:lost:partition") > 0
    writer.close()


@pytest.mark.sim(loss=0.0, latency=0.05, tcp_timeout=20.0)
async def test_partition_times_out_with_a_clear_error(sim: Simulation) -> None:
    a, b = sim.host("a"), sim.host("b")
    await b.start_server(echo, port=7000)
    reader, writer = await a.open_connection(b.address, 7000)
    sim.partition(a, b)
    start = sim.now
    writer.write(b"hello")
    with pytest.raises(TimeoutError, match=r"timed out: a data segment did not get through for 20 virtual s") as info:
        await reader.read(5)
    assert info.value.errno == errno.ETIMEDOUT
    assert sim.now - start == pytest.approx(20.0, abs=1e-6)
    assert sim.tcp.timeouts == 1
    # a connect across the partition fails the same way
    start = sim.now
    with pytest.raises(TimeoutError, match="no answer to the SYN"):
        await a.open_connection(b.address, 7000)
    assert sim.now - start == pytest.approx(20.0, abs=1e-6)
    # a connect given up early (wait_for) leaves nothing behind
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(a.open_connection(b.address, 7000), 3.0)
    assert sim.tcp.connections_of(a) == []


@pytest.mark.sim(loss=0.0, latency=0.05, tcp_timeout=10.0)
async def test_crash_kills_connections_and_a_restarted_host_resets(sim: Simulation) -> None:
    a, b = sim.host("a"), sim.host("b")
    lost: list[BaseException | None] = []

    class Record(asyncio.Protocol):
        def connection_lost(self, exc: Exception | None) -> None:
            lost.append(exc)

    await b.create_server(Record, port=7000)
    reader, writer = await a.open_connection(b.address, 7000)
    await asyncio.sleep(1)
    sim.crash(b)
    await asyncio.sleep(0)
    assert len(lost) == 1 and isinstance(lost[0], ConnectionAbortedError)  # b's own side
    assert "crashed" in str(lost[0])
    writer.write(b"anyone?")
    with pytest.raises(TimeoutError):  # b is down: nothing answers
        await reader.read(10)
    sim.restart(b)
    await b.create_server(Record, port=7000)
    reader2, writer2 = await a.open_connection(b.address, 7000)
    sim.crash(b)
    sim.restart(b)  # back up at once, with no memory of the connection
    writer2.write(b"hello?")
    with pytest.raises(ConnectionResetError, match="no such connection"):
        await reader2.read(10)


@pytest.mark.sim(loss=0.0, latency=0.05)
async def test_abort_with_unread_data_resets_the_peer(sim: Simulation) -> None:
    a, b = sim.host("a"), sim.host("b")
    ends: list[SimTcpTransport] = []

    class Hold(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, SimTcpTransport)
            transport.pause_reading()
            ends.append(transport)

    await b.create_server(Hold, port=7000)
    reader, writer = await a.open_connection(b.address, 7000)
    writer.write(b"unread")
    await asyncio.sleep(1)
    assert ends[0].readable()
    ends[0].abort()
    with pytest.raises(ConnectionResetError, match="reset by peer b"):
        await reader.read(10)


# -- NAT -------------------------------------------------------------------------------------------


@pytest.mark.sim(loss=0.0, latency=0.05)
async def test_nat_outbound_works_inbound_is_refused_unless_forwarded(sim: Simulation) -> None:
    home = sim.host("home", nat="port-restricted-cone")
    cloud = sim.host("cloud")
    box = sim.node("home-nat")
    seen: list[tuple[str, int]] = []

    async def who(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("peername"))
        writer.write(b"%s:%d\n" % (seen[-1][0].encode(), seen[-1][1]))
        writer.close()

    await cloud.start_server(who, port=80)
    reader, _ = await home.open_connection("cloud", 80)
    assert (await reader.readline()).decode().strip() == f"{home.public_address}:{seen[0][1]}"
    assert seen[0][0] == home.public_address != home.address  # the cloud sees the NAT's address
    assert sim.trace.count("nat:map:tcp") == 1

    await home.start_server(who, port=8080)
    with pytest.raises(ConnectionRefusedError, match="refused"):
        await cloud.open_connection(home.public_address, 8080)  # no forward: refused
    box.forward_tcp(80, home, 8080)  # type: ignore[attr-defined]
    reader, _ = await cloud.open_connection(home.public_address, 80)
    assert (await reader.readline()).decode().strip() == f"{cloud.address}:{seen[-1][1]}"


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.sim(loss=0.0, latency=0.05)
async def test_bad_input_gets_clear_errors(sim: Simulation) -> None:
    a, b = sim.host("a"), sim.host("b")
    start = sim.now
    with pytest.raises(ConnectionRefusedError, match=r"10\.0\.0\.2:6000 \(from a\) refused: nothing listens"):
        await a.open_connection(b.address, 6000)
    assert sim.now - start == pytest.approx(0.1, abs=1e-9)  # one round trip
    with pytest.raises(OSError, match=r"no simulated host has address 10\.9\.9\.9") as info:
        await a.open_connection("10.9.9.9", 80)
    assert info.value.errno == errno.EHOSTUNREACH
    with pytest.raises(socket.gaierror, match="'nowhere' is no simulated host's name"):
        await a.open_connection("nowhere", 80)
    with pytest.raises(ValueError, match=r"port must be in 0\.\.65535"):
        await a.open_connection(b.address, 70000)
    await b.start_server(echo, port=7000)
    with pytest.raises(OSError, match="already in use") as info:
        await b.start_server(echo, port=7000)
    assert info.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError, match=r"its address is 10\.0\.0\.2"):
        await b.start_server(echo, host="10.0.0.1", port=7001)
    with pytest.raises(RealIOForbidden, match="TLS over simulated TCP is not supported"):
        await a.open_connection(b.address, 7000, ssl=True)
    with pytest.raises(RealIOForbidden, match="runs on no simulated host"):
        await asyncio.open_connection(b.address, 7000)  # the test body is on no host
    assert len(sim.take_refusals()) == 2
    with sim.on(a):  # now it is
        reader, writer = await asyncio.open_connection("b", 7000)
        writer.write(b"ok")
        assert await reader.readexactly(2) == b"ok"
        writer.close()


async def geo(request: Request) -> PlainTextResponse:
    try:
        await asyncio.get_running_loop().getaddrinfo("example.com", 443)  # a real lookup
    except Exception:
        return PlainTextResponse("backend unavailable", status_code=500)
    return PlainTextResponse("ok")


geo_app = Starlette(routes=[Route("/", geo)])


def test_real_io_caught_by_the_app_fails_the_run(sim: Simulation) -> None:
    async def main() -> int:
        server = await sim.serve(geo_app, "web")
        client = await sim.client("laptop", server)
        return (await client.get("/")).status_code

    with pytest.raises(RealIOForbidden, match=r"getaddrinfo\('example.com'\).* at .*test_tcp.py:\d+ in geo") as info:
        sim.run(main())  # the app answered 500, and the run still fails naming the call
    assert "caught by the code under test" in str(info.value)
    assert sim.take_refusals() == []


def test_a_failing_run_still_reports_the_real_io_refusals(sim: Simulation) -> None:
    async def main() -> None:
        server = await sim.serve(geo_app, "web")
        client = await sim.client("laptop", server)
        assert (await client.get("/")).status_code == 200

    with pytest.raises(RealIOForbidden, match=r"1 call\(s\) were refused.*getaddrinfo\('example.com'\)") as info:
        sim.run(main())  # the app's 500 fails the assertion; the report names why, chained to it
    assert isinstance(info.value.__cause__, AssertionError)
    assert sim.take_refusals() == []


async def careless(request: Request) -> PlainTextResponse:
    """Three things a simulation refuses, each error swallowed as an app might."""
    for attempt in (
        lambda: time.sleep(0.5),  # the bad input under test
        lambda: threading.Thread(target=print, name="bg").start(),
    ):
        try:
            attempt()
        except Exception:
            pass
    try:
        await asyncio.get_running_loop().getaddrinfo("example.com", 443)
    except Exception:
        pass
    return PlainTextResponse("ok")


careless_app = Starlette(routes=[Route("/", careless)])


def test_sleeps_threads_and_real_io_are_reported_alike(sim: Simulation) -> None:
    """A wall-clock sleep, a thread start and a real name lookup, all caught by the app: one
    report of the first one's type counting all three, chained to the first; the same in a
    run that fails for another reason (chained to that), and none once taken."""

    async def start() -> httpx.AsyncClient:
        return await sim.client("laptop", await sim.serve(careless_app, "web"))

    client = sim.run(start())

    async def main(expect: int) -> None:
        assert (await client.get("/")).status_code == expect

    with pytest.raises(WallClockSleep, match=r"3 call\(s\) were refused.*time\.sleep\(0\.5\).* in <lambda>") as info:
        sim.run(main(200))
    assert isinstance(info.value.__cause__, WallClockSleep)
    with pytest.raises(WallClockSleep, match="3 call") as info:
        sim.run(main(404))
    assert isinstance(info.value.__cause__, AssertionError)

    async def on_purpose() -> list[str]:
        await main(200)
        return [type(r).__name__ for r in sim.take_refusals()]

    assert sim.run(on_purpose()) == ["WallClockSleep", "ThreadForbidden", "RealIOForbidden"]


# -- determinism ---------------------------------------------------------------------------------

SCENARIO = textwrap.dedent(
    """
    import asyncio, sys
    from asgi_p2p.sim import Simulation

    def run(seed):
        sim = Simulation(seed=seed, loss=0.05, latency=0.02)
        a, b, c = sim.host("a"), sim.host("b"), sim.host("c", nat="symmetric")
        sim.link(a, b, jitter=0.01, bandwidth=20_000_000)

        async def echo(reader, writer):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        async def client(host, n):
            reader, writer = await host.open_connection("b", 7000)
            for i in range(n):
                writer.write(bytes([i]) * (1000 * (i + 1)))
                await reader.readexactly(1000 * (i + 1))
            writer.close()

        async def main():
            await b.start_server(echo, port=7000)
            await asyncio.gather(client(a, 30), client(c, 20))

        sim.run(main())
        digest = sim.trace.hash()
        sim.close()
        return digest

    print(run(int(sys.argv[1])))
    """
)


def _scenario(seed: int, hashseed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=hashseed, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(seed)], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return out.stdout.strip()


def test_same_seed_same_trace_hash_across_processes() -> None:
    first = _scenario(3, "0")
    assert _scenario(3, "12345") == first
    assert _scenario(4, "0") != first
