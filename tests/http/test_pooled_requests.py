"""Requests on a pooled connection that is ready take a fast path in ``P2PTransport``: no
lookup, no dial, no connect deadline (``Endpoint.pooled_connection``), and a request body
that fits the send buffer goes out without a write deadline.  These tests hold that path to
what a dial gives: a closed pooled connection is never handed out (the next request dials),
and every deadline still fires, with its message, on the pooled connection.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from asgi_p2p import NodeAddr
from asgi_p2p.endpoint.connection import PeerConnection
from asgi_p2p.errors import NodeNotFound
from asgi_p2p.http import H3_ALPN, P2PTransport

from .conftest import Serve

OK = b"ok"


class App:
    """Answers "ok"; ``/slow`` and ``/never-reads`` (which reads no request body, so that its
    credit runs out) only once the test releases them."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] in ("/slow", "/never-reads"):
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": OK})  # type: ignore[operator]


async def test_requests_reuse_the_ready_pooled_connection_and_a_closed_one_is_dialed_again(serve: Serve) -> None:
    served = await serve(App())
    client_ep, server_id = served.pair.client, served.pair.server.node_id

    def pooled() -> PeerConnection | None:
        return client_ep.pooled_connection(server_id, H3_ALPN, confirmed=False, early_data=True)

    assert pooled() is None  # nothing dialed yet
    assert (await served.client.get("/")).content == OK
    conn = pooled()
    assert conn is not None
    for _ in range(3):
        assert (await served.client.get("/")).content == OK
    assert pooled() is conn
    assert client_ep.pooled_connection(server_id, "other-alpn") is None

    conn.close(0x100, "test closes it")
    assert pooled() is None  # a closed connection is never handed out
    assert (await served.client.get("/")).content == OK  # so the request dials afresh
    again = pooled()
    assert again is not None and again is not conn


async def test_a_read_timeout_fires_on_the_pooled_connection(serve: Serve) -> None:
    served = await serve(app := App())
    assert (await served.client.get("/")).content == OK
    with pytest.raises(httpx.ReadTimeout, match=r"^waiting for the response timed out after 0\.3s$"):
        await served.client.get("/slow", timeout=httpx.Timeout(5, read=0.3))
    assert (await served.client.get("/")).content == OK  # the connection is fine
    app.release.set()


async def test_a_write_timeout_fires_when_the_body_does_not_fit_and_the_peer_does_not_read(serve: Serve) -> None:
    served = await serve(app := App())
    assert (await served.client.get("/")).content == OK
    small = await served.client.post("/", content=b"x" * 1000, timeout=httpx.Timeout(5, write=0.001))
    assert small.content == OK  # a body that fits is sent at once: its write deadline cannot pass
    with pytest.raises(httpx.WriteTimeout, match=r"^sending the request timed out after 0\.5s$"):
        await served.client.post("/never-reads", content=b"x" * (32 << 20), timeout=httpx.Timeout(30, write=0.5))
    assert (await served.client.get("/")).content == OK
    app.release.set()


async def test_a_host_name_is_resolved_once_and_its_pooled_connection_reused(serve: Serve) -> None:
    served = await serve(App())
    server = served.pair.server
    asked: list[str] = []

    async def resolve(host: str) -> NodeAddr:
        asked.append(host)
        if host != "svc.example":
            raise NodeNotFound(f"no node named {host}")
        return server.node_addr()

    transport = P2PTransport(served.pair.client, resolve=resolve)
    async with httpx.AsyncClient(transport=transport, base_url="https://svc.example") as client:
        for _ in range(3):
            assert (await client.get("/")).content == OK
        assert asked == ["svc.example"]  # looked up once, then the pooled connection serves
        conn = served.pair.client.pooled_connection(server.node_id, H3_ALPN, confirmed=False, early_data=True)
        assert conn is not None
        conn.close(0x100, "test closes it")
        assert (await client.get("/")).content == OK  # dialed afresh, to the address it resolved
        assert asked == ["svc.example"]
        with pytest.raises(httpx.ConnectError, match=r"could not resolve 'other\.example'"):
            await client.get("https://other.example/")
        with pytest.raises(httpx.ConnectError, match=r"could not resolve 'other\.example'"):
            await client.get("https://other.example/")  # (a failed lookup is not remembered)
        assert asked == ["svc.example", "other.example", "other.example"]
