"""File transfer (asgi_p2p.gateway.transfer) between two nodes over HTTP/3 on loopback."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgi_p2p import NetworkConfig, Node
from asgi_p2p.gateway.transfer import (
    Manifest,
    SendApp,
    TransferError,
    build_manifest,
    fetch_manifest,
    receive,
    staging_path,
)
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.http.types import Receive, Scope, Send


@dataclass
class Recorder:
    """Wraps the SendApp: records the Range headers it got; can cut the first download after N bytes."""

    app: SendApp
    ranges: list[str | None] = field(default_factory=list)
    cut_after: int | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/files/"):
            headers = dict(scope["headers"])
            self.ranges.append(headers[b"range"].decode() if b"range" in headers else None)
            if self.cut_after is not None:
                limit, self.cut_after = self.cut_after, None
                sent = 0

                async def cutting(message: Any) -> None:
                    nonlocal sent
                    if message["type"] == "http.response.body":
                        sent += len(message.get("body", b""))
                        if sent > limit:
                            raise ConnectionResetError("cut by the test")
                    await send(message)

                await self.app(scope, receive, cutting)
                return
        await self.app(scope, receive, send)


@dataclass
class Pair:
    sender: Node
    receiver: Node
    app: Recorder
    client: httpx.AsyncClient
    received_by: list[str]


@pytest.fixture
async def offer(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[tuple[H3Server, httpx.AsyncClient, Node, Node]] = []

    async def start(path: Path) -> Pair:
        manifest = build_manifest(path)
        got: list[str] = []
        app = Recorder(SendApp(path, manifest, on_received=got.append))
        cfg = NetworkConfig(keepalive_interval=0)
        sender = await Node.bind(host="127.0.0.1", config=cfg)
        receiver = await Node.bind(host="127.0.0.1", config=cfg)
        server = H3Server(app, sender, timeout_graceful_shutdown=2.0)
        await server.startup()
        client = httpx.AsyncClient(
            transport=P2PTransport(receiver, addrs=[sender.node_addr()]), base_url=f"https://{sender.node_id}"
        )
        made.append((server, client, sender, receiver))
        return Pair(sender, receiver, app, client, got)

    yield start
    for server, client, sender, receiver in made:
        await client.aclose()
        await server.shutdown()
        await receiver.close(timeout=0.5)
        await sender.close(timeout=0.5)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_file_arrives_verified_and_the_sender_learns_who(tmp_path: Path, offer: Any) -> None:
    src = tmp_path / "song.flac"
    src.write_bytes(os.urandom(3_000_000))
    pair = await offer(src)
    manifest = await fetch_manifest(pair.client)
    assert manifest.kind == "file" and manifest.files[0].sha256 == sha(src) and manifest.total == 3_000_000
    seen: list[int] = []
    out = await receive(pair.client, tmp_path / "out.flac", manifest, progress=seen.append)
    assert out.read_bytes() == src.read_bytes()
    assert sum(seen) == 3_000_000
    assert pair.received_by == [str(pair.receiver.node_id)]
    assert not staging_path(out, manifest).exists()
    with pytest.raises(TransferError, match="already exists"):
        await receive(pair.client, out, manifest)


async def test_directory_with_subdirectories_and_an_empty_file(tmp_path: Path, offer: Any) -> None:
    src = tmp_path / "album"
    (src / "disc 1").mkdir(parents=True)
    (src / "disc 1" / "01.wav").write_bytes(os.urandom(200_000))
    (src / "cover.jpg").write_bytes(os.urandom(5000))
    (src / "empty").write_bytes(b"")
    pair = await offer(src)
    manifest = await fetch_manifest(pair.client)
    assert [f.path for f in manifest.files] == ["cover.jpg", "disc 1/01.wav", "empty"]
    out = await receive(pair.client, tmp_path / "copy", manifest)
    for rel in ("disc 1/01.wav", "cover.jpg", "empty"):
        assert (out / rel).read_bytes() == (src / rel).read_bytes()


async def test_broken_transfer_resumes_with_range(tmp_path: Path, offer: Any) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(4_000_000))
    pair = await offer(src)
    pair.app.cut_after = 1_000_000
    manifest = await fetch_manifest(pair.client)
    dest = tmp_path / "big.out"
    with pytest.raises(httpx.TransportError):
        await receive(pair.client, dest, manifest)
    assert not dest.exists()  # nothing unverified under the final name
    staged = staging_path(dest, manifest).stat().st_size
    assert 0 < staged < 4_000_000
    await receive(pair.client, dest, manifest)
    assert dest.read_bytes() == src.read_bytes()
    assert pair.app.ranges == [None, f"bytes={staged}-"]


async def test_corrupt_staged_data_is_deleted_never_renamed(tmp_path: Path, offer: Any) -> None:
    src = tmp_path / "doc.txt"
    src.write_bytes(b"the real content " * 10_000)
    pair = await offer(src)
    manifest = await fetch_manifest(pair.client)
    dest = tmp_path / "doc.out"
    stage = staging_path(dest, manifest)
    stage.write_bytes(b"X" * 1000)  # a stale or tampered part: the resumed bytes cannot match
    with pytest.raises(TransferError, match="sha256 mismatch"):
        await receive(pair.client, dest, manifest)
    assert not dest.exists() and not stage.exists()
    await receive(pair.client, dest, manifest)  # a fresh attempt succeeds
    assert dest.read_bytes() == src.read_bytes()


async def test_range_head_and_if_range_on_the_sender(tmp_path: Path, offer: Any) -> None:
    src = tmp_path / "f"
    data = os.urandom(10_000)
    src.write_bytes(data)
    pair = await offer(src)
    c = pair.client
    etag = f'"{hashlib.sha256(data).hexdigest()}"'
    r = await c.get("/files/0", headers={"range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == data[100:200]
    assert r.headers["content-range"] == "bytes 100-199/10000"
    assert (await c.get("/files/0", headers={"range": "bytes=-10"})).content == data[-10:]
    assert (await c.get("/files/0", headers={"range": "bytes=20000-"})).status_code == 416
    r = await c.get("/files/0", headers={"range": "bytes=5-", "if-range": '"other"'})
    assert r.status_code == 200 and r.content == data
    r = await c.get("/files/0", headers={"range": "bytes=5-", "if-range": etag})
    assert r.status_code == 206
    r = await c.head("/files/0")
    assert r.status_code == 200 and r.headers["etag"] == etag and r.content == b""
    assert (await c.get("/files/1")).status_code == 404
    assert (await c.get("/files/x")).status_code == 404


@pytest.mark.parametrize(
    "path", ["../escape", "/etc/passwd", "a/../../b", "a//b", "", "a\\b", "./a"], ids=lambda p: repr(p)
)
def test_manifest_paths_that_would_escape_are_refused(path: str) -> None:
    obj = {"version": 1, "name": "d", "kind": "dir", "files": [{"path": path, "size": 1, "sha256": "0" * 64}]}
    with pytest.raises(TransferError, match="unsafe path"):
        Manifest.from_json(obj)


@pytest.mark.parametrize("name", ["..", "a/b", "", ".", "x\x00"])
def test_manifest_names_that_would_escape_are_refused(name: str) -> None:
    obj = {"version": 1, "name": name, "kind": "file", "files": [{"path": "", "size": 1, "sha256": "0" * 64}]}
    with pytest.raises(TransferError, match="unsafe name"):
        Manifest.from_json(obj)


def test_malformed_manifests() -> None:
    with pytest.raises(TransferError, match="malformed"):
        Manifest.from_json(
            {"version": 1, "name": "x", "kind": "file", "files": [{"path": "", "size": -1, "sha256": ""}]}
        )
    with pytest.raises(TransferError, match="malformed"):
        Manifest.from_json({"version": 1})
    with pytest.raises(TransferError, match="version"):
        Manifest.from_json({"version": 9, "name": "x", "kind": "file", "files": []})


async def test_a_file_swapped_for_a_symlink_is_not_served(tmp_path: Path, offer: Any) -> None:
    src = tmp_path / "dir"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a" * 100)
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 100)
    pair = await offer(src)
    (src / "a.txt").unlink()
    (src / "a.txt").symlink_to(secret)  # same size, outside the offered directory
    r = await pair.client.get("/files/0")
    assert r.status_code == 410 and b"sss" not in r.content
