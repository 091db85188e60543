"""The Starlette and FastAPI apps of the conformance suite (unmodified framework code)."""

import asyncio
import contextlib
import contextvars
import hashlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Query, UploadFile
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

request_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_var", default="unset")


@dataclass
class AppState:
    """What the apps record, for the tests to inspect."""

    file_path: Path | None = None
    background_done: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    ws_disconnect_codes: list[int] = field(default_factory=list)
    ws_closed: asyncio.Event = field(default_factory=asyncio.Event)
    events: list[str] = field(default_factory=list)
    lifespan: list[str] = field(default_factory=list)
    #: largest body piece the upload endpoint got at once: what the server had buffered for it
    upload_peak_buffered: int = 0


class ContextVarMiddleware:
    """Pure ASGI middleware: sets a contextvar the endpoints read (also in the threadpool)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request_var.set(scope["path"])
        await self.app(scope, receive, send)


def _routes(state: AppState) -> list[BaseRoute]:
    async def scope_info(request: Request) -> Response:
        s = request.scope
        return JSONResponse(
            {
                "type": s["type"],
                "http_version": s["http_version"],
                "scheme": s["scheme"],
                "method": s["method"],
                "path": s["path"],
                "raw_path": s["raw_path"].decode("latin-1"),
                "query_string": s["query_string"].decode("latin-1"),
                "root_path": s["root_path"],
                "client": list(s["client"]),
                "server": list(s["server"]) if s.get("server") else None,
                "peer_id": s["extensions"]["p2p"]["peer_id"],
                "asgi": s["asgi"],
                "host": request.headers.get("host"),
                "url": str(request.url),
            }
        )

    async def headers(request: Request) -> Response:
        response = JSONResponse(
            {
                "x-dup": request.headers.getlist("x-dup"),
                "cookies": dict(request.cookies),
                "user-agent": request.headers.get("user-agent"),
            }
        )
        response.set_cookie("a", "1")
        response.set_cookie("b", "2")
        response.headers.append("x-multi", "one")
        response.headers.append("x-multi", "two")
        return response

    async def path_info(request: Request) -> Response:
        return JSONResponse(
            {
                "path": request.url.path,
                "param": request.path_params["rest"],
                "raw_path": request.scope["raw_path"].decode("latin-1"),
                "query": request.query_params.multi_items(),
            }
        )

    async def upload(request: Request) -> Response:
        h = hashlib.sha256()
        size = 0
        async for chunk in request.stream():
            h.update(chunk)
            size += len(chunk)
            state.upload_peak_buffered = max(state.upload_peak_buffered, len(chunk))
        return JSONResponse({"size": size, "sha256": h.hexdigest()})

    async def form(request: Request) -> Response:
        async with request.form() as f:
            fields: dict[str, Any] = {}
            files: dict[str, Any] = {}
            for key, value in f.multi_items():
                if isinstance(value, str):
                    fields.setdefault(key, []).append(value)
                else:
                    data = await value.read()
                    files[key] = [value.filename, len(data), hashlib.sha256(data).hexdigest(), value.content_type]
        return JSONResponse({"fields": fields, "files": files})

    async def stream(request: Request) -> Response:
        n = int(request.query_params.get("n", "5"))

        async def gen() -> AsyncIterator[bytes]:
            yield b"first\n"
            await state.gate.wait()
            for i in range(n):
                yield f"chunk {i}\n".encode()

        return StreamingResponse(gen(), media_type="text/plain")

    async def sse(request: Request) -> Response:
        async def gen() -> AsyncIterator[str]:
            yield "event: hello\ndata: 1\n\n"
            await state.gate.wait()
            for i in range(2, 5):
                yield f"data: {i}\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    async def big(request: Request) -> Response:
        size = int(request.query_params["size"])
        piece = bytes(range(256)) * 256  # 64 KiB

        async def gen() -> AsyncIterator[bytes]:
            left = size
            while left > 0:
                chunk = piece[: min(left, len(piece))]
                left -= len(chunk)
                yield chunk

        return StreamingResponse(gen(), media_type="application/octet-stream")

    async def file(request: Request) -> Response:
        assert state.file_path is not None
        return FileResponse(state.file_path)

    async def background(request: Request) -> Response:
        async def task() -> None:
            await asyncio.sleep(0.05)
            state.background_done.set()

        return PlainTextResponse("queued", background=BackgroundTask(task))

    async def boom(request: Request) -> Response:
        raise RuntimeError("boom before start")

    async def boom_after_start(request: Request) -> Response:
        async def gen() -> AsyncIterator[bytes]:
            yield b"partial"
            await asyncio.sleep(0.01)
            raise RuntimeError("boom after start")

        return StreamingResponse(gen())

    async def slow(request: Request) -> Response:
        await asyncio.sleep(float(request.query_params.get("delay", "1")))
        return PlainTextResponse("slow done")

    async def wait_disconnect(request: Request) -> Response:
        state.events.append("waiting")
        for _ in range(2000):
            if await request.is_disconnected():
                break
            await asyncio.sleep(0.005)
        state.disconnected.set()
        return PlainTextResponse("never seen")

    async def ctx(request: Request) -> Response:
        return JSONResponse({"var": request_var.get(), "thread": threading.current_thread().name})

    def sync_ctx(request: Request) -> Response:
        return JSONResponse({"var": request_var.get(), "thread": threading.current_thread().name})

    async def lifespan_state(request: Request) -> Response:
        return JSONResponse({"greeting": request.state.greeting})

    async def session(request: Request) -> Response:
        count = request.session.get("count", 0) + 1
        request.session["count"] = count
        return JSONResponse({"count": count})

    async def text(request: Request) -> Response:
        return PlainTextResponse("x" * int(request.query_params.get("n", "2000")))

    async def ping(request: Request) -> Response:
        return PlainTextResponse("pong")

    async def ws_echo(websocket: WebSocket) -> None:
        offered = websocket.scope["subprotocols"]
        await websocket.accept(subprotocol="chat" if "chat" in offered else None)
        try:
            while True:
                msg = await websocket.receive()
                if msg["type"] == "websocket.disconnect":
                    state.ws_disconnect_codes.append(msg.get("code", 1000))
                    state.ws_closed.set()
                    return
                if msg.get("text") is not None:
                    text = msg["text"]
                    if text.startswith("close:"):
                        await websocket.close(code=int(text.split(":")[1]), reason="bye")
                        state.ws_closed.set()
                        return
                    await websocket.send_text(text)
                else:
                    await websocket.send_bytes(msg["bytes"])
        except WebSocketDisconnect as exc:
            state.ws_disconnect_codes.append(exc.code)
            state.ws_closed.set()

    async def ws_reject(websocket: WebSocket) -> None:
        await websocket.close(code=1008)

    async def sub_where(request: Request) -> Response:
        return JSONResponse(
            {
                "path": request.url.path,
                "root_path": request.scope["root_path"],
                "url_for": str(request.url_for("sub_where")),
            }
        )

    static: list[BaseRoute] = []
    if state.file_path is not None:
        static.append(Mount("/static", app=StaticFiles(directory=state.file_path.parent)))
    return [
        *static,
        Route("/scope", scope_info, methods=["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
        Route("/headers", headers),
        Route("/path/{rest:path}", path_info),
        Route("/upload", upload, methods=["POST", "PUT"]),
        Route("/form", form, methods=["POST"]),
        Route("/stream", stream),
        Route("/sse", sse),
        Route("/big", big),
        Route("/file", file),
        Route("/background", background),
        Route("/boom", boom),
        Route("/boom-after-start", boom_after_start),
        Route("/slow", slow),
        Route("/wait-disconnect", wait_disconnect),
        Route("/ctx", ctx),
        Route("/sync-ctx", sync_ctx),
        Route("/lifespan-state", lifespan_state),
        Route("/session", session),
        Route("/text", text),
        Route("/ping", ping),
        WebSocketRoute("/ws", ws_echo),
        WebSocketRoute("/ws-reject", ws_reject),
        Mount("/sub", routes=[Route("/where", sub_where, name="sub_where")]),
    ]


def _middleware() -> list[Middleware]:
    return [
        Middleware(ContextVarMiddleware),
        Middleware(CORSMiddleware, allow_origins=["https://example.org"], allow_methods=["*"], allow_headers=["*"]),
        Middleware(GZipMiddleware, minimum_size=500),
        Middleware(SessionMiddleware, secret_key="test-secret", https_only=True),
    ]


def _lifespan(state: AppState) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        state.lifespan.append("startup")
        yield {"greeting": "hello from lifespan"}
        state.lifespan.append("shutdown")

    return lifespan


def make_starlette(state: AppState) -> Starlette:
    return Starlette(routes=_routes(state), middleware=_middleware(), lifespan=_lifespan(state))


class Item(BaseModel):
    name: str
    price: float


def make_fastapi(state: AppState) -> FastAPI:
    app = FastAPI(lifespan=_lifespan(state), middleware=_middleware())

    def resource() -> Iterator[str]:
        state.events.append("sync-dep-enter")
        yield "sync-resource"
        state.events.append("sync-dep-exit")

    async def aresource() -> AsyncIterator[str]:
        state.events.append("dep-enter")
        try:
            yield "resource"
        finally:
            state.events.append("dep-exit")

    @app.get("/items/{item_id}")
    async def read_item(
        item_id: int,
        r: Annotated[str, Depends(aresource)],
        s: Annotated[str, Depends(resource)],
        q: Annotated[str | None, Query()] = None,
    ) -> dict[str, Any]:
        return {"item_id": item_id, "q": q, "dep": r, "sync_dep": s}

    @app.post("/items")
    async def create_item(item: Item) -> dict[str, Any]:
        return {"name": item.name, "price": item.price}

    @app.post("/uploadfile")
    async def upload_file(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        data = await file.read()
        return {
            "filename": file.filename,
            "content_type": file.content_type,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    @app.get("/sync-def")
    def sync_def() -> dict[str, Any]:
        return {"var": request_var.get(), "thread": threading.current_thread().name}

    for route in _routes(state):
        app.router.routes.append(route)
    return app


def make_app(kind: str, state: AppState) -> Any:
    return make_starlette(state) if kind == "starlette" else make_fastapi(state)
