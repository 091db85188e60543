"""`make demo`: one node serves the music app over HTTP/3, a second node fetches from it with httpx.

Both nodes run in this process on loopback, each with its own UDP socket and
Ed25519 identity; everything between them is QUIC with mutual TLS, exactly as
between two machines (``asgi-p2p apps.music:app`` and ``asgi-p2p get <ticket>/tracks``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `apps` lives next to `examples`

from apps.music import create_app
from asgi_p2p import Node, NodeId, SecretKey
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.ticket import Ticket


def step(text: str) -> None:
    print(f"\n== {text}")


def show(response: httpx.Response, note: str = "") -> None:
    extra = f"  {note}" if note else ""
    print(
        f"   {response.request.method} {response.request.url.path} -> {response.status_code} "
        f"{response.reason_phrase} ({len(response.content)} bytes){extra}"
    )


async def main() -> None:
    started = time.perf_counter()

    step("node A: serve the music app (apps.music) over HTTP/3")
    server_ep = await Node.bind(SecretKey.from_seed("demo-music-server"), host="127.0.0.1")
    server = H3Server(create_app(), server_ep)
    await server.startup()  # runs the app's lifespan: it generates a few WAV tracks and covers
    ticket = Ticket.from_node_addr(server_ep.node_addr())
    print(f"   node id  {server_ep.node_id}")
    print(f"   udp      {server_ep.local_address[0]}:{server_ep.local_address[1]}")
    print(f"   ticket   {ticket}")
    print("   (a ticket = node id + addresses, checksummed; `asgi-p2p get <ticket>/tracks` does what follows)")

    step("node B: a second node with its own key dials node A by its ticket")
    client_ep = await Node.bind(SecretKey.from_seed("demo-music-client"), host="127.0.0.1")
    addr = Ticket.parse(str(ticket)).to_node_addr()
    transport = P2PTransport(client_ep)
    transport.add_addr(addr)
    print(f"   node id  {client_ep.node_id}")
    base = f"https://{addr.node_id}"
    print(f"   base URL {base}  (the URL host is the node id; no DNS, no certificate authority)")

    try:
        async with httpx.AsyncClient(transport=transport, base_url=base, timeout=10) as client:
            step("B -> A: GET / (the app sees B's node id, proven in the TLS handshake)")
            r = await client.get("/")
            show(r)
            you = r.json()["you"]
            print(f"   app says you are {you}")
            print(f"   matches node B: {you is not None and NodeId.parse(you) == client_ep.node_id}")
            for conn in client_ep.connections:
                if conn.remote_node_id == addr.node_id:
                    print(
                        f"   QUIC: ALPN {conn.alpn}, peer {conn.address[0]}:{conn.address[1]}, "
                        f"rtt {conn.smoothed_rtt * 1000:.2f} ms"
                    )

            step("B -> A: GET /tracks")
            r = await client.get("/tracks")
            show(r)
            tracks = r.json()
            for t in tracks:
                print(f"   - {t['id']:<48} {t['artist']} - {t['title']} ({t['duration']} s, {t['size']} bytes)")

            track = tracks[0]
            step(f"B -> A: GET /tracks/{track['id']}")
            r = await client.get(f"/tracks/{track['id']}")
            show(r)
            print("   " + json.dumps(r.json(), indent=None)[:160])

            step("B -> A: the first 44 bytes of the audio file (Range request, like a player seeking)")
            r = await client.get(track["audio_url"], headers={"Range": "bytes=0-43"})
            show(r, f"content-range: {r.headers.get('content-range')}")
            head = r.content
            print(
                f"   WAV header: {head[:4]!r} ... {head[8:16]!r}, "
                f"{int.from_bytes(head[24:28], 'little')} Hz, {int.from_bytes(head[34:36], 'little')}-bit"
            )

            step("B -> A: the rest of the file, streamed, in a second Range request")
            total = 0
            digest = hashlib.sha256(head)
            async with client.stream("GET", track["audio_url"], headers={"Range": "bytes=44-"}) as resp:
                async for chunk in resp.aiter_bytes():
                    total += len(chunk)
                    digest.update(chunk)
            print(
                f"   {resp.request.method} {track['audio_url']} -> {resp.status_code} {resp.reason_phrase}, "
                f"{total} bytes streamed, content-range: {resp.headers.get('content-range')}"
            )
            full = await client.get(track["audio_url"])
            same = hashlib.sha256(full.content).hexdigest() == digest.hexdigest()
            show(full, f"whole file matches the two ranges: {same}")

            step("B -> A: album art and a playlist")
            r = await client.get(track["art_url"])
            png_ok = r.content.startswith(b"\x89PNG\r\n\x1a\n")
            show(r, f"{r.headers['content-type']}, PNG signature ok: {png_ok}")
            r = await client.post("/playlists", json={"name": "demo mix", "tracks": [t["id"] for t in tracks[:2]]})
            show(r, f"owner recorded as node B: {r.json()['owner'] == str(client_ep.node_id)}")
    finally:
        step("shutting down: GOAWAY, in-flight requests finish, lifespan shutdown")
        await client_ep.close()
        await server.shutdown()
        await server_ep.close()
    print(f"\ndone in {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
