"""The Starlette app every server of the WAN benchmark (benchmarks/wan.py) serves.

* ``GET /small``: 13 bytes of text (the "small request");
* ``GET /big/{mib}``: ``mib`` MiB (1..64) of incompressible bytes, streamed in 64 KiB chunks with a
  ``content-length`` (so a WebSocket tunnel with compression could not cheat on zeros).

Imported as ``benchmarks.wan_app:app`` from the repository root (never with ``benchmarks/`` itself on
``sys.path``: ``benchmarks/http.py`` would shadow the standard library's ``http``).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

SMALL = "hello, world\n"
CHUNK_BYTES = 64 * 1024
MIB = 1024 * 1024
MAX_MIB = 64
#: one MiB of seeded random bytes (incompressible; the same in every process), sent repeatedly
_BLOCK = random.Random(11).randbytes(MIB)


async def small(request: Request) -> Response:
    return PlainTextResponse(SMALL)


async def big(request: Request) -> Response:
    mib = request.path_params["mib"]
    if not 1 <= mib <= MAX_MIB:
        return PlainTextResponse(f"size must be 1..{MAX_MIB} MiB\n", status_code=400)

    async def body() -> AsyncIterator[bytes]:
        view = memoryview(_BLOCK)
        for _ in range(mib):
            for off in range(0, MIB, CHUNK_BYTES):
                yield bytes(view[off : off + CHUNK_BYTES])

    headers = {"content-length": str(mib * MIB)}
    return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)


app = Starlette(routes=[Route("/small", small), Route("/big/{mib:int}", big)])
