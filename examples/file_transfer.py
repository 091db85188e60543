"""File transfer between two nodes, with the library API behind ``asgi-p2p send`` / ``receive``.

Run ``python examples/file_transfer.py [FILE_OR_DIR]`` (default: a small generated album).
Both nodes run in this process on loopback, each with its own identity; everything between
them is HTTP/3 over QUIC with mutual TLS, exactly as between two machines.  The first
download is cut part-way on purpose, to show it resuming with a Range request; every file
is sha256-verified before it gets its final name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from asgi_p2p import Node
from asgi_p2p.gateway.transfer import SendApp, build_manifest, fetch_manifest, receive, staging_path
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.ticket import Ticket


def sample(root: Path) -> Path:
    album = root / "album"
    (album / "disc 1").mkdir(parents=True)
    for i in range(1, 4):
        (album / "disc 1" / f"{i:02}.wav").write_bytes(os.urandom(1_500_000))
    (album / "cover.jpg").write_bytes(os.urandom(80_000))
    return album


class CutOnce:
    """Wraps the sender's app: the first file response longer than ``limit`` bytes stops there
    (as if the link were lost)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit, self.armed = app, limit, True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not (self.armed and scope["type"] == "http" and scope["path"].startswith("/files/")):
            return await self.app(scope, receive, send)
        sent = 0

        async def cut(message: Any) -> None:
            nonlocal sent
            sent += len(message.get("body", b""))
            if self.armed and sent > self.limit:
                self.armed = False
                raise ConnectionResetError("link lost (on purpose)")
            await send(message)

        with contextlib.suppress(ConnectionResetError):  # the server then resets the stream
            await self.app(scope, receive, cut)


async def main(path: Path | None) -> None:
    # the server logs the stream we cut on purpose as an incomplete response: not news here
    logging.getLogger("asgi_p2p.http").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        src = path or sample(Path(tmp))
        manifest = build_manifest(src)  # hashes every file
        print(f"sender: offering {manifest.name} ({len(manifest.files)} file(s), {manifest.total} bytes)")

        sender = await Node.bind(host="127.0.0.1")
        received = asyncio.Event()
        app = SendApp(src, manifest, on_received=lambda peer: received.set())
        server = H3Server(CutOnce(app, limit=1_000_000), sender)
        await server.startup()
        ticket = Ticket.from_node_addr(sender.node_addr()).encode()
        print(f"sender: ticket {ticket}")

        receiver = await Node.bind(host="127.0.0.1")
        addr = Ticket.parse(ticket).to_node_addr()
        transport = P2PTransport(receiver, addrs=[addr])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{addr.node_id}") as client:
            offered = await fetch_manifest(client)
            dest = Path(tmp) / "inbox" / offered.name
            dest.parent.mkdir()
            got = 0

            def progress(n: int) -> None:
                nonlocal got
                got += n

            try:
                await receive(client, dest, offered, progress=progress)
            except httpx.TransportError as exc:
                staged = staging_path(dest, offered)
                print(f"receiver: transfer broken after {got} bytes ({exc}); {staged.name} kept, resuming")
            got = 0
            await receive(client, dest, offered, progress=progress)
            print(f"receiver: {dest.name} complete, {got} bytes on disk, every sha256 verified")
        await received.wait()
        print(f"sender: {receiver.node_id} confirmed it")

        for entry in offered.files:
            copy = dest / entry.path if offered.kind == "dir" else dest
            assert hashlib.sha256(copy.read_bytes()).hexdigest() == entry.sha256
        await server.shutdown()
        await receiver.close()
        await sender.close()
        print("ok")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
