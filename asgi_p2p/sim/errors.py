"""Errors raised by the simulator."""

from __future__ import annotations

from ..errors import P2PError

__all__ = [
    "RealIOForbidden",
    "SimulationDeadlock",
    "SimulationError",
    "SimulationLivelock",
    "SimulationTimeLimit",
    "ThreadForbidden",
    "WallClockSleep",
]


class SimulationError(P2PError):
    """Base class of the simulator's own errors."""


class SimulationDeadlock(SimulationError):
    """Nothing is ready, no timer is pending, and the main task is not done."""


class SimulationLivelock(SimulationError):
    """Too many loop iterations ran without virtual time advancing (``livelock="raise"``)."""


class SimulationTimeLimit(SimulationError, TimeoutError):
    """The virtual-time limit of :meth:`Simulation.run` was reached."""


class RealIOForbidden(SimulationError, RuntimeError):
    """Real sockets, pipes, subprocesses or name lookups were used inside a simulation."""


class WallClockSleep(SimulationError, RuntimeError):
    """``time.sleep()`` was called inside a simulation (use ``await asyncio.sleep()``)."""


class ThreadForbidden(SimulationError, RuntimeError):
    """A thread was started inside a simulation (its timing would not follow virtual time)."""
