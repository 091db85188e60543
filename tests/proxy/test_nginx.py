"""``asgi-p2p proxy`` (the CLI, as a subprocess) in front of a real nginx, fetched by a peer over HTTP/3."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from asgi_p2p import NetworkConfig, Node
from asgi_p2p.http import P2PTransport
from asgi_p2p.ticket import Ticket
from tests.cli.conftest import Cli, ServerProcess

from .nginx import Nginx

SIZE = 20 * 1024 * 1024 + 123


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    with Nginx(tmp_path_factory.mktemp("nginx")) as server:
        (server.www / "track.bin").write_bytes(os.urandom(SIZE))
        (server.www / "index.html").write_text("<h1>served by nginx</h1>\n")
        yield server


@pytest.fixture(scope="module")
def proxy_ticket(nginx: Nginx, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ServerProcess]]:
    home = tmp_path_factory.mktemp("proxy-home")
    proc = ServerProcess(Cli(home), home / "proxy", ("proxy", nginx.url, "--ephemeral", "--log-level", "info"), None)
    try:
        yield proc.wait_ready(), proc
    finally:
        proc.kill()


@pytest.fixture
async def peer(proxy_ticket: tuple[str, ServerProcess]) -> AsyncIterator[tuple[httpx.AsyncClient, Node]]:
    addr = Ticket.parse(proxy_ticket[0]).to_node_addr()
    node = await Node.bind(host="127.0.0.1", config=NetworkConfig(keepalive_interval=0))
    client = httpx.AsyncClient(
        transport=P2PTransport(node, addrs=[addr]), base_url=f"https://{addr.node_id}", timeout=30.0
    )
    try:
        yield client, node
    finally:
        await client.aclose()
        await node.close(timeout=0.5)


def test_proxy_prints_what_it_serves(nginx: Nginx, proxy_ticket: tuple[str, ServerProcess]) -> None:
    ticket, proc = proxy_ticket
    assert f"serving proxy to {nginx.url} over HTTP/3" in proc.stdout
    assert ticket in proc.stdout


async def test_full_file_range_head_and_conditional(nginx: Nginx, peer: tuple[httpx.AsyncClient, Node]) -> None:
    client, node = peer
    want = (nginx.www / "track.bin").read_bytes()
    h = hashlib.sha256()
    async with client.stream("GET", "/track.bin") as r:
        assert r.status_code == 200
        assert r.headers["server"].startswith("nginx")
        assert int(r.headers["content-length"]) == SIZE
        async for chunk in r.aiter_bytes():
            h.update(chunk)
    assert h.hexdigest() == hashlib.sha256(want).hexdigest()
    etag = r.headers["etag"]

    r = await client.get("/track.bin", headers={"Range": "bytes=1000000-1000999"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 1000000-1000999/{SIZE}"
    assert r.content == want[1_000_000:1_001_000]
    r = await client.get("/track.bin", headers={"Range": "bytes=-77"})
    assert r.status_code == 206 and r.content == want[-77:]

    r = await client.head("/track.bin")
    assert r.status_code == 200 and r.content == b"" and r.headers["etag"] == etag

    r = await client.get("/track.bin", headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b""
    modified = (await client.get("/index.html")).headers["last-modified"]
    r = await client.get("/index.html", headers={"If-Modified-Since": modified})
    assert r.status_code == 304

    assert (await client.get("/missing")).status_code == 404
    # nginx saw the caller's proven node id and the Forwarded header
    line = next(x for x in nginx.access_log.splitlines() if "bytes=" not in x and "HEAD /track.bin" in x)
    assert f" {node.node_id} " in line
    assert f'for=\\x22_{node.node_id}\\x22' in line
