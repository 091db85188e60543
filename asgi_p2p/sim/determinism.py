"""Patches that make third-party code deterministic inside a simulation.

:func:`apply` is idempotent and is called by every :class:`~asgi_p2p.sim.Simulation`.

1. **aioquic stream sets.**  aioquic 1.7.2 collects streams in ``set[QuicStream]``
   (``sent`` and ``discarded`` in ``QuicConnection._write_application``) and then
   iterates the set to rebuild the stream service order.  ``QuicStream`` hashes by
   ``id()``, i.e. by memory address, so under loss the order in which streams are
   served -- and so the packets -- differ between processes.  We give ``QuicStream``
   a ``__hash__`` derived from its ``stream_id`` (an ``int``, whose hash does not
   depend on ``PYTHONHASHSEED``).  Crypto streams have ``stream_id=None``; they get a
   negative number from a counter assigned at creation.  Equality stays identity, so
   the hash remains consistent with ``__eq__`` (equal objects have equal hashes).
   The patch changes nothing but iteration order, so it is harmless outside
   simulations too.

2. **anyio worker threads.**  ``anyio.to_thread.run_sync`` (Starlette runs sync
   endpoints with it) uses its own threads, not ``run_in_executor``.  When the
   running loop is a :class:`~asgi_p2p.sim.loop.VirtualTimeLoop` the patched call runs
   the function inline (virtual time frozen); on any other loop the original runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["apply", "patch_aioquic_stream_hash", "patch_anyio_worker_threads"]

log = logging.getLogger("asgi_p2p.sim")

_PATCH_MARK = "_asgi_p2p_sim_patched"


def patch_aioquic_stream_hash() -> bool:
    """Give aioquic's streams a stream-id based ``__hash__`` (see :func:`asgi_p2p.aioquic_compat.patch_stream_hash`).

    Returns True once the patch is in place.
    """
    from ..aioquic_compat import patch_stream_hash

    if patch_stream_hash():
        log.debug("patched aioquic QuicStream.__hash__ (stream-id based)")
    return True


def patch_anyio_worker_threads() -> bool:
    """Run anyio worker-thread calls inline when the loop is virtual.

    Returns True if the patch is (now) in place, False if anyio is missing.
    """
    try:
        from anyio._backends._asyncio import AsyncIOBackend
    except ImportError:  # pragma: no cover - anyio comes with httpx
        return False
    if getattr(AsyncIOBackend, _PATCH_MARK, False):
        return True
    from .loop import VirtualTimeLoop

    original = AsyncIOBackend.__dict__["run_sync_in_worker_thread"]
    original_func: Callable[..., Any] = original.__func__

    async def run_sync_in_worker_thread(
        cls: Any,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        abandon_on_cancel: bool = False,
        limiter: Any = None,
    ) -> Any:
        if not isinstance(asyncio.get_running_loop(), VirtualTimeLoop):
            return await original_func(cls, func, args, abandon_on_cancel, limiter)
        await cls.checkpoint()
        return contextvars.copy_context().run(func, *args)

    AsyncIOBackend.run_sync_in_worker_thread = classmethod(run_sync_in_worker_thread)  # type: ignore[method-assign,assignment]
    setattr(AsyncIOBackend, _PATCH_MARK, True)
    log.debug("patched anyio worker threads (inline on a virtual-time loop)")
    return True


def apply() -> None:
    """Apply every determinism patch (idempotent)."""
    patch_aioquic_stream_hash()
    patch_anyio_worker_threads()
