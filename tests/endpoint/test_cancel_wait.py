"""A cancelled request is cancelled, even when what it waited for completes at the same moment.

On Python 3.11 ``asyncio.wait_for`` returns the result instead of raising when the caller is
cancelled in the same loop pass in which the awaited future completes (fixed in 3.12, where
it is built on ``asyncio.timeout``).  A request cancelled by its caller (a browser gone, a
``task.cancel()``) just as its connection's handshake completed then went on to send the
request, and the caller's task returned the response it had cancelled.  The library uses
``asyncio.timeout`` throughout.
"""

from __future__ import annotations

import ast
import asyncio
import pathlib

import httpx
import pytest

from asgi_p2p import NetworkConfig, Node
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.sim import Simulation

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "asgi_p2p"
LATENCY = 0.010  # one way
CONFIG = NetworkConfig(keepalive_interval=0)


async def slow_app(scope: dict[str, object], receive: object, send: object) -> None:
    await asyncio.sleep(10)
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"too late"})  # type: ignore[operator]


def test_a_request_cancelled_at_any_moment_of_its_dial_raises_cancelled(sim: Simulation) -> None:
    server_host = sim.host("server")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        node = await Node.bind(host="0.0.0.0", port=4433, config=CONFIG, network=server_host)
        server = H3Server(slow_app, node)  # type: ignore[arg-type]
        await server.startup()
        # a cancel at every virtual millisecond of the dial (1 RTT = 20 ms) and of the
        # request raises at once, whatever stage the request is in
        for ms in range(0, 61):
            client_host = sim.host(f"client{ms}")
            sim.link(server_host, client_host, latency=LATENCY, loss=0.0)
            client_node = await Node.bind(host="0.0.0.0", config=CONFIG, network=client_host)
            client = httpx.AsyncClient(
                transport=P2PTransport(client_node, addrs=[node.node_addr()]), base_url=f"https://{node.node_id}"
            )
            request = asyncio.create_task(client.get("/"))
            loop.call_at(loop.time() + ms / 1000, request.cancel)
            started = loop.time()
            with pytest.raises(asyncio.CancelledError):
                await request
            assert loop.time() - started == pytest.approx(ms / 1000), f"cancelled at {ms} ms"
            await client.aclose()
            await client_node.close()
        await server.shutdown()
        await node.close()

    sim.run(main())


def test_a_request_on_the_pooled_connection_cancelled_at_any_moment_raises_cancelled(sim: Simulation) -> None:
    """The same on a ready pooled connection, where a request takes the transport's fast path
    (no dial, no connect deadline): a cancel at every virtual millisecond of its exchange
    raises at once, and the connection goes on serving."""
    server_host, client_host = sim.host("server"), sim.host("client")
    sim.link(server_host, client_host, latency=LATENCY, loss=0.0)

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["path"] == "/slow":
            await asyncio.sleep(10)
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        node = await Node.bind(host="0.0.0.0", port=4433, config=CONFIG, network=server_host)
        server = H3Server(app, node)  # type: ignore[arg-type]
        await server.startup()
        client_node = await Node.bind(host="0.0.0.0", config=CONFIG, network=client_host)
        client = httpx.AsyncClient(
            transport=P2PTransport(client_node, addrs=[node.node_addr()]), base_url=f"https://{node.node_id}"
        )
        assert (await client.get("/")).content == b"ok"
        pooled = client_node.pooled_connection(node.node_id, "h3", confirmed=False, early_data=True)
        assert pooled is not None
        outcomes: dict[str, set[str]] = {"/": set(), "/slow": set()}
        for ms in range(0, 41):  # (1 RTT = 20 ms: the request's whole exchange, and longer)
            for path in ("/", "/slow"):
                request = asyncio.create_task(client.get(path))
                hit: list[bool] = []  # what request.cancel() returned (True: the task was still running)
                loop.call_at(loop.time() + ms / 1000, lambda r=request, h=hit: h.append(r.cancel()))  # type: ignore[misc]
                started = loop.time()
                try:
                    response = await request
                except asyncio.CancelledError:
                    assert hit == [True] and loop.time() - started == pytest.approx(ms / 1000), (path, ms)
                    outcomes[path].add("cancelled")
                else:
                    assert hit != [True] and response.content == b"ok", (path, ms)  # answered before the cancel
                    outcomes[path].add("answered")
        assert outcomes == {"/": {"cancelled", "answered"}, "/slow": {"cancelled"}}
        assert (await client.get("/")).content == b"ok"
        assert client_node.pooled_connection(node.node_id, "h3", confirmed=False, early_data=True) is pooled
        await client.aclose()
        await client_node.close()
        await server.shutdown()
        await node.close()

    sim.run(main())


def test_the_library_does_not_use_wait_for() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "wait_for" and isinstance(node.value, ast.Name):
                if node.value.id == "asyncio":
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert offenders == [], f"asyncio.wait_for can swallow a cancellation on 3.11; use asyncio.timeout: {offenders}"
