"""`make demo`: two nodes on loopback exchange raw messages over mutually authenticated QUIC."""

from __future__ import annotations

import asyncio

from asgi_p2p import Endpoint, SecretKey


async def main() -> None:
    server = await Endpoint.bind(SecretKey.from_seed("demo-server"))
    client = await Endpoint.bind(SecretKey.from_seed("demo-client"))
    print(f"server node {server.node_id} listening on udp {server.local_address[0]}:{server.local_address[1]}")
    print(f"client node {client.node_id}")

    async def serve() -> None:
        conn = await server.listen().accept()
        print(f"server: accepted {conn.remote_node_id.fmt_short()} (identity proven in the TLS handshake)")
        async for msg in conn:
            print(f"server: got {msg!r}, echoing")
            await conn.send(msg.upper())

    task = asyncio.create_task(serve())
    conn = await client.connect(server.node_addr())
    for text in (b"hello", b"peer-to-peer", b"over quic"):
        await conn.send(text)
        print(f"client: sent {text!r}, got {await conn.recv()!r}")
    stats = conn.stats
    print(
        f"client: {stats.messages_sent} messages sent, {stats.bytes_received} bytes received, "
        f"rtt {stats.smoothed_rtt * 1000:.2f} ms"
    )
    await conn.close()
    await task
    await client.close()
    await server.close()


if __name__ == "__main__":
    asyncio.run(main())
