"""Ordinary app patterns on the simulator, for the replay tests: prints the trace hash.

A Starlette app served over HTTP/3 on a simulated host and an httpx client on
another, at 5% loss.  Each pattern draws from a source an app or library uses
without thinking of a simulation, and each changes packet *sizes* or *timing*
when that source is not seeded (QPACK Huffman-codes header values, so even a
fixed-length random header changes the encoded size):

* ``multipart``: an httpx multipart upload (the boundary comes from
  ``os.urandom``) read by Starlette's form parser;
* ``uuid``: ``uuid.uuid4()`` / ``uuid.uuid1()`` ids in headers and JSON;
* ``timestamps``: ``datetime.now()``, ``date.today()``, ``time.time()``,
  ``time.monotonic()`` in JSON (their decimal lengths vary);
* ``jitter``: ``random`` module functions, ``from random import ...`` and a
  ``random.Random()`` made without a seed, for sleeps and body sizes;
* ``secrets``: ``secrets.token_hex`` / ``token_urlsafe`` in a cookie and
  ``random.SystemRandom`` for a size.

Usage: python app_patterns_scenario.py SEED [PATTERN,...]
"""

from __future__ import annotations

import asyncio
import datetime
import os
import random
import secrets
import sys
import time
import uuid
from datetime import date
from datetime import datetime as dt
from random import randint

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_p2p import NetworkConfig, Node
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.sim import Simulation

PATTERNS = ("multipart", "uuid", "timestamps", "jitter", "secrets")


async def upload(request: Request) -> Response:
    form = await request.form()
    blob = form["file"]
    assert not isinstance(blob, str)
    data = await blob.read()
    return JSONResponse({"name": blob.filename, "size": len(data), "field": form["note"]})


async def item(request: Request) -> Response:
    rid = request.headers.get("x-request-id", "")
    body = {"id": str(uuid.uuid4()), "v1": str(uuid.uuid1()), "for": rid}
    return JSONResponse(body, headers={"x-item-id": str(uuid.uuid4())})


async def clock(request: Request) -> Response:
    body = {
        "at": dt.now(datetime.UTC).isoformat(),
        "local": datetime.datetime.now().isoformat(),
        "utc": dt.utcnow().isoformat(),
        "today": date.today().isoformat(),
        "t": time.time(),
        "ns": time.time_ns(),
        "mono": time.monotonic(),
        "perf": time.perf_counter(),
    }
    return JSONResponse(body, headers={"date": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())})


async def jitter(request: Request) -> Response:
    await asyncio.sleep(random.random() * 0.2)
    rng = random.Random()  # no seed: the simulation seeds it
    size = randint(1, 3000) + rng.randrange(1000) + random.choice([0, 500, 1500])
    await asyncio.sleep(random.uniform(0, 0.05))
    return Response(b"j" * size, headers={"x-shuffle": "".join(random.sample("abcdefghij", 5))})


async def token(request: Request) -> Response:
    size = random.SystemRandom().randrange(1, 2000)
    resp = Response(b"s" * size, headers={"x-token": secrets.token_urlsafe(16)})
    resp.set_cookie("session", secrets.token_hex(16))
    return resp


APP = Starlette(
    routes=[
        Route("/upload", upload, methods=["POST"]),
        Route("/item", item),
        Route("/clock", clock),
        Route("/jitter", jitter),
        Route("/token", token),
    ]
)


async def client_requests(client: httpx.AsyncClient, pattern: str) -> None:
    for i in range(3):
        if pattern == "multipart":
            files = {"file": (f"f{i}.bin", b"u" * (5000 + 1000 * i), "application/octet-stream")}
            r = await client.post("/upload", files=files, data={"note": "n" * i})
        elif pattern == "uuid":
            r = await client.get("/item", headers={"x-request-id": str(uuid.uuid4())})
        elif pattern == "timestamps":
            r = await client.get("/clock", params={"sent": str(time.time())})
        elif pattern == "jitter":
            await asyncio.sleep(random.random())
            r = await client.get("/jitter")
        else:
            r = await client.get("/token", params={"nonce": os.urandom(8).hex()})
        r.raise_for_status()


def run(seed: int, patterns: tuple[str, ...] = PATTERNS) -> str:
    """Serve :data:`APP` on one host, call it from another; return the trace hash."""
    with Simulation(seed=seed, loss=0.05, keep_trace=False) as sim:
        server_host, client_host = sim.host("server"), sim.host("client")

        async def main() -> None:
            config = NetworkConfig(keepalive_interval=0)
            # No keys given: SecretKey.generate() draws the node keys (seeded inside a simulation).
            server_node = await Node.bind(host="0.0.0.0", port=4433, config=config, network=server_host)
            client_node = await Node.bind(host="0.0.0.0", port=4433, config=config, network=client_host)
            server = H3Server(APP, server_node)
            await server.startup()
            transport = P2PTransport(client_node)
            transport.add_addr(server_node.node_addr())
            async with httpx.AsyncClient(
                transport=transport, base_url=f"https://{server_node.node_id}", timeout=60.0
            ) as client:
                for pattern in patterns:
                    await client_requests(client, pattern)
            await server.shutdown()
            await client_node.close(timeout=0.5)
            await server_node.close(timeout=0.5)

        sim.run(main(), time_limit=600)
        return sim.trace.hash()


if __name__ == "__main__":
    chosen = tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else PATTERNS
    print(run(int(sys.argv[1]), chosen))
