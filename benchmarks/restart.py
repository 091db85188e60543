"""Restart and return, in round trips (issue 12's "within 2 RTTs", issue 11's returning client).

Real UDP on 127.0.0.1 through a userspace delay line (a UDP proxy process holding every
datagram back ``--delay-ms`` each way, to the microsecond, so one round trip of the link is
twice that, well above scheduling noise).  A server process (a tiny ASGI app) and one long-lived httpx
client with :class:`~asgi_p2p.http.P2PTransport`.  Interleaved in each run:

* ``restart, GET at ready``: kill -9 the server (which keeps a peer state file), start it
  again with the same key, port and file, and send the client's next GET the moment the new
  process prints that it is ready (its app started).  The new process sent its proactive
  stateless reset when it bound its socket, before the app's startup: the reset reaches the
  client half a round trip later, while the GET (on the dead connection) is on the wire; the
  client retries it at once on a resumed connection carrying it as 0-RTT data;
* ``restart, GET 0.2 s later``: the same, the GET sent 0.2 s after the new process is ready:
  the reset closed the pooled connection already, the GET goes out at once on a resumed
  connection (one round trip);
* ``restart, reactive``: the same as the previous row with the peer state file removed before
  the new process starts (what every restart cost before proactive resets, the old
  ``restart`` row: 1 RTT to learn of the stateless reset answering the GET, then the
  resumed connection);
* ``returning``: the client closed its connection; time its next GET (resumed, 0-RTT);
* ``pooled``: a GET on the open connection (one round trip: the reference).

Before each restart the server has run for 1.1 s with the client's connection (its peer
state file is written at most once a second).

Prints per-run values, medians, medians in round trips of the link, and the median ratio of
each row to the pooled GET of the same run (one round trip as this machine delivers it then).

Usage::

    .venv/bin/python benchmarks/restart.py --delay-ms 50 --runs 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import selectors
import socket
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if __name__ == "__main__" and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SCRIPT = Path(__file__).resolve()
SEED = "restart benchmark server"
ROWS = ("restart, GET at ready", "restart, GET 0.2 s later", "restart, reactive", "returning", "pooled")


# -- the server process -------------------------------------------------------------------


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = f"{scope['method']} {scope['path']}".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _serve(port: int, peer_state: str) -> None:
    from asgi_p2p import NetworkConfig, Node, SecretKey
    from asgi_p2p.http import H3Server

    node = await Node.bind(
        SecretKey.from_seed(SEED), host="127.0.0.1", port=port, config=NetworkConfig(), peer_state=peer_state
    )
    server = H3Server(_app, node)
    await server.startup()
    print("ready", flush=True)
    await asyncio.Event().wait()  # until killed


# -- the delay line ------------------------------------------------------------------------


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, proxy: _Proxy, client: tuple[str, int]) -> None:
        self.proxy, self.client = proxy, client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        front = self.proxy.transport
        assert front is not None
        asyncio.get_running_loop().call_later(self.proxy.delay, front.sendto, data, self.client)

    def error_received(self, exc: Exception) -> None:  # the server is down: ICMP unreachable
        pass


class _Proxy(asyncio.DatagramProtocol):
    """Forwards datagrams from clients to the server and back, each held back ``delay`` seconds."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream_port, self.delay = upstream_port, delay
        self.transport: asyncio.DatagramTransport | None = None
        self.upstreams: dict[tuple[str, int], _Upstream] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        asyncio.get_running_loop().call_later(self.delay, self._forward, data, addr)

    def _forward(self, data: bytes, addr: tuple[str, int]) -> None:
        up = self.upstreams.get(addr)
        if up is None:
            up = self.upstreams[addr] = _Upstream(self, addr)
            asyncio.ensure_future(
                asyncio.get_running_loop().create_datagram_endpoint(
                    lambda: up, remote_addr=("127.0.0.1", self.upstream_port)
                )
            ).add_done_callback(lambda _f: up.transport is not None and up.transport.sendto(data))
            return
        if up.transport is not None:
            up.transport.sendto(data)


async def _delay_line(listen: int, upstream: int, delay_ms: float) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: _Proxy(upstream, delay_ms / 1000), local_addr=("127.0.0.1", listen))
    print("ready", flush=True)
    await asyncio.Event().wait()


# -- the client (the measurement) --------------------------------------------------------------


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASGI_P2P_")}
    env["PYTHONPATH"] = str(REPO)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), *args, stdout=asyncio.subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if not line.startswith(b"ready"):
        proc.kill()
        raise RuntimeError(f"{args[0]} did not start: {line!r}")
    return proc


async def _measure(delay_ms: float, runs: int) -> dict[str, list[float]]:
    import tempfile

    import httpx

    from asgi_p2p import NetworkConfig, Node, NodeAddr, SecretKey
    from asgi_p2p.http import P2PTransport

    server_port, proxy_port = _free_udp_port(), _free_udp_port()
    node_id = SecretKey.from_seed(SEED).node_id
    procs = [await _spawn("--delay-line", str(proxy_port), str(server_port), str(delay_ms))]
    state = Path(tempfile.mkdtemp(prefix="restart-bench-")) / "peers.json"
    server = await _spawn("--serve", str(server_port), "--peer-state", str(state))
    results: dict[str, list[float]] = {row: [] for row in ROWS}
    client_node = await Node.bind(host="127.0.0.1", config=NetworkConfig(keepalive_interval=0))
    loop = asyncio.get_running_loop()
    try:
        transport = P2PTransport(client_node, addrs=[NodeAddr(node_id, [("127.0.0.1", proxy_port)])])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node_id}", timeout=30) as client:

            async def timed_get(path: str) -> float:
                t0 = loop.time()
                response = await client.get(path)
                took = loop.time() - t0
                assert response.text == f"GET {path}", response.text
                return took * 1000

            async def close_connections() -> None:
                for conn in list(client_node.connections):
                    conn.close(0, "benchmark: returning later")
                    await conn.wait_closed()
                await asyncio.sleep(0.3)

            await timed_get("/warm")
            for run in range(runs):
                for row in ROWS if run % 2 == 0 else tuple(reversed(ROWS)):
                    await timed_get("/ensure-pooled")  # a live connection and a ticket
                    await asyncio.sleep(0.1)
                    if row.startswith("restart"):
                        await asyncio.sleep(1.1)  # the server has run a while: its file holds the connection
                        server.kill()
                        await server.wait()
                        if row == "restart, reactive":
                            state.unlink()
                        server = await _spawn("--serve", str(server_port), "--peer-state", str(state))
                        if row != "restart, GET at ready":
                            await asyncio.sleep(0.2)
                    elif row != "pooled":
                        await close_connections()
                    results[row].append(await timed_get(f"/{run}"))
    finally:
        for proc in [*procs, server]:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await client_node.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay of the delay line (ms)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--peer-state", help=argparse.SUPPRESS)
    parser.add_argument("--delay-line", nargs=3, metavar=("LISTEN", "UPSTREAM", "DELAY_MS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(_serve(args.serve, args.peer_state))
        return
    if args.delay_line is not None:
        listen, upstream, delay = args.delay_line
        # select(2) waits with microsecond timeouts; the default loop's epoll waits whole
        # milliseconds, rounded up, so a datagram was held up to 1 ms too long whenever
        # another one arrived within the millisecond before it was due (a flight of two
        # datagrams: a restart's, not a pooled GET's single one)
        with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selectors.SelectSelector())) as runner:
            runner.run(_delay_line(int(listen), int(upstream), float(delay)))
        return
    if args.delay_ms <= 0 or args.runs < 1:
        parser.error("--delay-ms must be > 0 and --runs >= 1")
    sys.path.insert(0, str(HERE))
    from _machine import load_average, machine_description

    print(f"machine: {machine_description()}")
    rtt = 2 * args.delay_ms
    print(f"link: 127.0.0.1 through a userspace UDP delay line, {args.delay_ms:g} ms each way (RTT {rtt:g} ms)")
    results = asyncio.run(_measure(args.delay_ms, args.runs))
    print()
    # the ratio to the pooled GET of the same run: what one round trip of this delay line costs a
    # request on this machine at this moment (the delay line and both processes' scheduling
    # included), so a shared, loaded machine moves it less than the nominal RTTs
    print("| next GET | median ms | median RTTs | median ÷ pooled (same run) | per run (ms) |")
    print("|---|---|---|---|---|")
    for row in ROWS:
        values = results[row]
        med = statistics.median(values)
        ratio = statistics.median(v / p for v, p in zip(values, results["pooled"], strict=True))
        print(f"| {row} | {med:.1f} | {med / rtt:.2f} | {ratio:.2f} | {', '.join(f'{v:.1f}' for v in values)} |")
    print(f"\nload average (1/5/15 min) at the end: {load_average()}")


if __name__ == "__main__":
    main()
