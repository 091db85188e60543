"""One loop timer that follows a deadline which moves on almost every packet."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["DeadlineTimer", "timer_granularity"]


def timer_granularity(loop: asyncio.AbstractEventLoop) -> float:
    """How late ``loop`` may wake for a timer, by its wait's resolution (seconds).

    asyncio's selector loop waits in whole milliseconds (epoll and poll round a timeout up to
    the next one): a timer 0.3 ms ahead fires about 1 ms later when nothing else wakes the
    loop.  Other loops (the simulator's virtual clock fires timers exactly): 0.
    """
    return 0.001 if isinstance(loop, asyncio.SelectorEventLoop) else 0.0


class DeadlineTimer:
    """Calls ``fire()`` once ``deadline()`` has passed, with one loop timer at a time.

    Sans-I/O state machines (aioquic's ``get_timer``, the path prober's ``next_timer``)
    move their deadline on almost every input, mostly later (an idle deadline, a
    postponed keepalive).  Cancelling and re-creating a loop timer for each move costs a
    heap push per packet and leaves cancelled handles behind; instead :meth:`update`
    replaces the loop timer only when the deadline moved *earlier*, and a timer that
    fires before the current deadline re-arms itself for it without calling ``fire``.
    ``deadline()`` returning None means nothing is due: a pending timer then lapses.
    """

    __slots__ = ("_at", "_deadline", "_fire", "_handle", "_loop")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, deadline: Callable[[], float | None], fire: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._deadline = deadline
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None

    @property
    def armed_at(self) -> float | None:
        """When the loop timer fires next (None: no timer)."""
        return self._at

    def update(self, *, exact: bool = False) -> None:
        """The deadline may have moved: make sure the loop timer fires no later than it.

        ``exact``: also re-arm when the deadline moved later (or went away), for a state
        where it rarely moves and an early wakeup would be the only one left (a connection's
        closing period: the loss timer armed before it would wake the loop for nothing).
        """
        at = self._deadline()
        if at is None:
            if exact and self._handle is not None:
                self.cancel()
            return
        if self._at is None or at < self._at or (exact and at > self._at):
            self._schedule(at)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._at = None

    def _schedule(self, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._at = at
        self._handle = self._loop.call_at(at, self._fired)

    def _fired(self) -> None:
        self._handle = self._at = None
        at = self._deadline()
        if at is None:
            return
        if at > self._loop.time():  # the deadline moved later since the timer was armed
            self._schedule(at)
            return
        self._fire()
