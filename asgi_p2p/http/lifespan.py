"""ASGI lifespan protocol: startup and shutdown events with a shared ``state``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from ..errors import P2PError
from .types import ASGIApp, Message

__all__ = ["LifespanFailed", "LifespanMode", "LifespanRunner"]

log = logging.getLogger("asgi_p2p.http")

LifespanMode = Literal["auto", "on", "off"]


class LifespanFailed(P2PError):
    """The application's lifespan startup (or shutdown) failed."""


class LifespanRunner:
    """Runs the app's lifespan task: ``startup()`` before serving, ``shutdown()`` after."""

    def __init__(self, app: ASGIApp, mode: LifespanMode) -> None:
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"lifespan must be 'auto', 'on' or 'off', got {mode!r}")
        self.app = app
        self.mode = mode
        self.state: dict[str, Any] = {}
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._startup_done: asyncio.Future[Message] | None = None
        self._shutdown_done: asyncio.Future[Message] | None = None
        self._supported = True
        self._error: BaseException | None = None

    async def startup(self) -> None:
        if self.mode == "off":
            return
        loop = asyncio.get_running_loop()
        self._startup_done = loop.create_future()
        self._shutdown_done = loop.create_future()
        self._task = loop.create_task(self._run(), name="asgi-p2p lifespan")
        await self._queue.put({"type": "lifespan.startup"})
        waiting: set[asyncio.Future[Any]] = {self._startup_done, self._task}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if self._startup_done.done():
            msg = self._startup_done.result()
            if msg["type"] == "lifespan.startup.failed":
                text = msg.get("message", "") or "no message"
                raise LifespanFailed(f"application startup failed: {text}")
            return
        # the app returned or raised without answering the startup event
        self._supported = False
        if self._error is not None and self.mode == "on":
            raise LifespanFailed(f"application startup failed: {self._error!r}") from self._error
        if self.mode == "on":
            raise LifespanFailed("application does not support the lifespan protocol (returned on startup)")
        if self._error is not None:
            log.info("ASGI 'lifespan' protocol appears unsupported (%r); continuing without it", self._error)

    async def shutdown(self) -> None:
        if self.mode == "off" or self._task is None or not self._supported or self._task.done():
            return
        assert self._shutdown_done is not None
        await self._queue.put({"type": "lifespan.shutdown"})
        waiting: set[asyncio.Future[Any]] = {self._shutdown_done, self._task}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if self._shutdown_done.done():
            msg = self._shutdown_done.result()
            if msg["type"] == "lifespan.shutdown.failed":
                log.error("application shutdown failed: %s", msg.get("message", ""))
        elif self._error is not None:
            log.error("application shutdown failed: %r", self._error)
        if not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._error = exc
            startup = self._startup_done
            if (startup is not None and startup.done()) or self.mode == "on":
                log.exception("exception in the lifespan protocol")

    async def _receive(self) -> Message:
        return await self._queue.get()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        assert self._startup_done is not None and self._shutdown_done is not None
        if kind in ("lifespan.startup.complete", "lifespan.startup.failed"):
            if not self._startup_done.done():
                self._startup_done.set_result(message)
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            if not self._shutdown_done.done():
                self._shutdown_done.set_result(message)
        else:
            raise RuntimeError(f"unexpected ASGI lifespan message {kind!r}")
