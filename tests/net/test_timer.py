"""DeadlineTimer: one loop timer following a moving deadline (virtual-time loop, no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from asgi_p2p.net.timer import DeadlineTimer, timer_granularity
from asgi_p2p.sim.loop import START_TIME, VirtualTimeLoop


class Clocked:
    """A deadline to follow and a record of when ``fire`` ran."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.fired: list[float] = []
        self.scheduled = 0


def _run(scenario: Coroutine[Any, Any, None]) -> None:
    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(scenario)
    finally:
        loop.close()


def _timer(c: Clocked) -> DeadlineTimer:
    loop = asyncio.get_running_loop()
    real_call_at = loop.call_at

    def counting_call_at(when, callback, *args, **kw):  # type: ignore[no-untyped-def]
        if getattr(callback, "__self__", None).__class__ is DeadlineTimer:
            c.scheduled += 1  # only this timer's loop timers, not asyncio.sleep's
        return real_call_at(when, callback, *args, **kw)

    loop.call_at = counting_call_at  # type: ignore[method-assign]
    return DeadlineTimer(loop, lambda: c.at, lambda: c.fired.append(loop.time() - START_TIME))


def test_fires_at_the_deadline_and_follows_it_earlier() -> None:
    async def main() -> None:
        c = Clocked()
        t = _timer(c)
        c.at = START_TIME + 5
        t.update()
        c.at = START_TIME + 2  # earlier: a new loop timer
        t.update()
        assert t.armed_at == START_TIME + 2
        await asyncio.sleep(3)
        assert c.fired == [2.0]

    _run(main())


def test_a_later_deadline_costs_no_new_timer_until_the_old_one_fires() -> None:
    async def main() -> None:
        c = Clocked()
        t = _timer(c)
        c.at = START_TIME + 1
        t.update()
        for k in range(2, 50):  # the deadline moves later on every "packet"
            c.at = START_TIME + k
            t.update()
        assert c.scheduled == 1 and t.armed_at == START_TIME + 1
        await asyncio.sleep(60)
        # the first timer fired early, re-armed once for the current deadline, which then fired
        assert c.scheduled == 2 and c.fired == [49.0]

    _run(main())


def test_no_deadline_lets_a_pending_timer_lapse_and_cancel_stops_it() -> None:
    async def main() -> None:
        c = Clocked()
        t = _timer(c)
        c.at = START_TIME + 1
        t.update()
        c.at = None
        await asyncio.sleep(2)
        assert c.fired == [] and t.armed_at is None
        c.at = START_TIME + 3
        t.update()
        t.cancel()
        await asyncio.sleep(5)
        assert c.fired == [] and t.armed_at is None

    _run(main())


def test_timer_granularity_is_a_millisecond_on_asyncios_selector_loop_and_zero_on_the_simulators() -> None:
    # epoll waits in whole milliseconds; the virtual clock fires timers exactly
    real = asyncio.SelectorEventLoop()
    try:
        assert timer_granularity(real) == 0.001
    finally:
        real.close()
    virtual = VirtualTimeLoop()
    try:
        assert timer_granularity(virtual) == 0.0
    finally:
        virtual.close()


def test_an_exact_update_follows_a_later_deadline_without_an_early_wakeup() -> None:
    """A connection's closing period: the loop timer moves to the later deadline (or goes
    away with it) instead of waking the loop at the old one."""

    async def main() -> None:
        c = Clocked()
        t = _timer(c)
        c.at = START_TIME + 1
        t.update()
        c.at = START_TIME + 4  # later: an exact update re-arms for it
        t.update(exact=True)
        assert t.armed_at == START_TIME + 4
        scheduled = c.scheduled
        t.update(exact=True)  # unchanged: no new loop timer
        assert c.scheduled == scheduled
        await asyncio.sleep(5)
        assert c.fired == [4.0]
        c.at = START_TIME + 7
        t.update()
        c.at = None  # nothing due any more: the exact update drops the loop timer
        t.update(exact=True)
        assert t.armed_at is None
        await asyncio.sleep(5)
        assert c.fired == [4.0]

    _run(main())
