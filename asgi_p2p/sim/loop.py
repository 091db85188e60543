"""A virtual-time asyncio event loop.

:class:`VirtualTimeLoop` is an :class:`asyncio.BaseEventLoop` whose clock is a
number it owns.  Its "selector" watches no file descriptors: when no callback is
ready, it jumps the clock straight to the earliest timer.  A minute of simulated
traffic therefore costs only the CPU time of the callbacks that run in it.

Rules (see ``docs/simulator.md``):

* The clock starts at :data:`START_TIME` (fixed: the absolute value influences
  float rounding, and so traces).
* **Deadlock**: nothing ready, no timer and the main task not done raises
  :class:`SimulationDeadlock` naming the virtual time and the waiting tasks.
* **Livelock**: after :attr:`VirtualTimeLoop.livelock_threshold` loop iterations
  in a row without the clock moving (aioquic's loss timer can return ``now``
  forever through float rounding), the clock is nudged forward by
  :attr:`VirtualTimeLoop.livelock_nudge` seconds (or, with ``livelock="raise"``,
  :class:`SimulationLivelock` is raised).  The rule depends only on counts, so it
  is deterministic.
* **Threads**: ``run_in_executor`` (and so :func:`asyncio.to_thread`) runs the
  function inline, with virtual time frozen; anyio's worker threads are made
  inline too by :func:`asgi_p2p.sim.determinism.apply`.
* **TCP** (``create_connection``, ``create_server``, so ``asyncio.open_connection`` and
  ``asyncio.start_server``) goes to :attr:`VirtualTimeLoop.streams` (the simulation's
  :class:`~asgi_p2p.sim.tcp.TcpNetwork`): simulated TCP over the simulated links.
  ``getaddrinfo`` of a simulated host's name gives its address.
* **Real I/O** (other sockets, pipes, subprocesses, real name lookups, fd readers) raises
  :class:`RealIOForbidden`, naming the call and the line that made it.  Every refusal is
  also kept in :attr:`VirtualTimeLoop.refusals`, so code that catches the error (an app
  answering 500) cannot hide it: :meth:`Simulation.run` raises it afterwards.  The
  simulation's environment reports its refusals there too (``time.sleep`` and thread
  starts: :class:`~asgi_p2p.sim.errors.WallClockSleep`,
  :class:`~asgi_p2p.sim.errors.ThreadForbidden`; see :mod:`asgi_p2p.sim.determinism`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, NoReturn, Protocol, TypeVar, TypeVarTuple

from .errors import RealIOForbidden, SimulationDeadlock, SimulationError, SimulationLivelock, SimulationTimeLimit

__all__ = ["MAX_REFUSALS", "START_TIME", "StreamProvider", "VirtualTimeLoop", "caller_location", "describe_tasks"]

log = logging.getLogger("asgi_p2p.sim")

T = TypeVar("T")
_Ts = TypeVarTuple("_Ts")

#: Virtual clock value at which every simulation starts.
START_TIME = 1000.0

#: Refused calls a loop keeps until they are reported (more are only counted).
MAX_REFUSALS = 100

_ASYNCIO_DIR = os.path.dirname(asyncio.__file__)


class StreamProvider(Protocol):
    """Where the loop sends TCP calls (:class:`asgi_p2p.sim.tcp.TcpNetwork` is one)."""

    async def create_connection(self, protocol_factory: Any, host: Any = None, port: Any = None, **kwargs: Any) -> Any:
        """``loop.create_connection`` over the simulated network."""

    async def create_server(self, protocol_factory: Any, host: Any = None, port: Any = None, **kwargs: Any) -> Any:
        """``loop.create_server`` over the simulated network."""

    def resolve(self, name: str) -> str | None:
        """The address of a simulated host's name; None if no host has it."""


_SIM_DIR = os.path.dirname(__file__)


def caller_location() -> str:
    """``file:line in function`` of the innermost frame outside asyncio and the simulator."""
    frame = inspect.currentframe()
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(_SIM_DIR) and not name.startswith(_ASYNCIO_DIR):
            return f"{name}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


def describe_tasks(loop: asyncio.AbstractEventLoop) -> str:
    """One line per unfinished task of ``loop``: name, where it waits and on what."""
    lines: list[str] = []
    tasks = sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name())
    for task in tasks:
        where = "?"
        stack = task.get_stack()
        if stack:
            frame = stack[-1]
            where = f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})"
        waiter = getattr(task, "_fut_waiter", None)
        lines.append(f"  - {task.get_name()} in {where} waiting for {waiter!r}")
    return "\n".join(lines) if lines else "  (no tasks)"


class _VirtualSelector:
    """Stands in for a selector: owns no file descriptors, advances the clock instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        self._loop._advance(timeout)
        return []

    def close(self) -> None:
        pass


class VirtualTimeLoop(asyncio.BaseEventLoop):
    """An asyncio loop running on a virtual clock.

    Args:
        start: initial value of :meth:`time`.
        livelock_threshold: loop iterations without time advancing before acting.
        livelock_nudge: seconds added to the clock on a livelock.
        livelock: ``"nudge"`` (default) or ``"raise"``.
    """

    def __init__(
        self,
        start: float = START_TIME,
        *,
        livelock_threshold: int = 10_000,
        livelock_nudge: float = 1e-6,
        livelock: str = "nudge",
    ) -> None:
        super().__init__()
        if livelock not in ("nudge", "raise"):
            raise ValueError(f"livelock must be 'nudge' or 'raise', got {livelock!r}")
        self._now = float(start)
        self._start = float(start)
        # Fixed (not the host's monotonic clock resolution) so traces do not depend on the machine.
        self._clock_resolution = 1e-9
        self._selector = _VirtualSelector(self)
        self.livelock_threshold = livelock_threshold
        self.livelock_nudge = livelock_nudge
        self.livelock = livelock
        #: How many times the livelock rule nudged the clock.
        self.livelock_nudges = 0
        self._stalled_iterations = 0
        #: Absolute virtual time past which :meth:`_advance` raises :class:`SimulationTimeLimit`.
        self.deadline: float | None = None
        #: The task whose completion a run waits for (named in deadlock reports).
        self.main_task: asyncio.Future[Any] | None = None
        #: Number of loop iterations run (statistics).
        self.iterations = 0
        #: Simulated TCP (set by the simulation); None: TCP calls are refused as real I/O.
        self.streams: StreamProvider | None = None
        #: Every call refused so far and not yet reported (the first :data:`MAX_REFUSALS`): real
        #: I/O (:class:`RealIOForbidden`), and, reported by the environment, wall-clock sleeps
        #: and thread starts (see the module doc).
        self.refusals: list[SimulationError] = []
        #: How many calls were refused since :attr:`refusals` was last emptied (all of them).
        self.refusal_count = 0
        #: Entered around every run of the loop (``run_forever``, hence ``run_until_complete``):
        #: the :class:`~asgi_p2p.sim.Simulation` puts its seeded entropy and virtual wall clock
        #: in place with it (``Environment.active``, see ``asgi_p2p.sim.determinism``).
        self.environment: Callable[[], contextlib.AbstractContextManager[object]] | None = None

    # -- the clock ---------------------------------------------------------------------------

    def time(self) -> float:
        """The virtual clock (seconds)."""
        return self._now

    @property
    def elapsed(self) -> float:
        """Virtual seconds since the loop was created."""
        return self._now - self._start

    def _advance(self, timeout: float | None) -> None:
        """Called by the selector with the time the loop would block for."""
        if timeout is None:
            self._deadlock()
        if timeout <= 0:
            return
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        target = max(self._now, scheduled[0].when()) if scheduled else self._now + timeout
        if self.deadline is not None and target > self.deadline:
            self._now = max(self._now, self.deadline)
            raise SimulationTimeLimit(
                f"virtual time limit reached at t={self.elapsed:.6f}s (next timer at "
                f"t={target - self._start:.6f}s); unfinished tasks:\n{describe_tasks(self)}"
            )
        self._now = target

    def _deadlock(self) -> NoReturn:
        main = self.main_task
        main_desc = main.get_name() if isinstance(main, asyncio.Task) else repr(main)
        raise SimulationDeadlock(
            f"simulation deadlock at virtual time t={self.elapsed:.6f}s: no callback is ready, no timer is "
            f"scheduled and the main task ({main_desc}) is not done. Waiting tasks:\n{describe_tasks(self)}"
        )

    def _run_once(self) -> None:
        before = self._now
        super()._run_once()  # type: ignore[misc]
        self.iterations += 1
        if self._now != before:
            self._stalled_iterations = 0
            return
        self._stalled_iterations += 1
        if self._stalled_iterations >= self.livelock_threshold:
            self._stalled_iterations = 0
            if self.livelock == "raise":
                raise SimulationLivelock(
                    f"{self.livelock_threshold} loop iterations without virtual time advancing at "
                    f"t={self.elapsed:.6f}s; tasks:\n{describe_tasks(self)}"
                )
            self._now += self.livelock_nudge
            self.livelock_nudges += 1
            log.debug("livelock at t=%.6f: nudged the clock by %g s", self.elapsed, self.livelock_nudge)

    # -- BaseEventLoop plumbing --------------------------------------------------------------

    def run_forever(self) -> None:
        """Run the loop; :attr:`environment`, if set, is active on this thread meanwhile."""
        if self.environment is None:
            super().run_forever()
            return
        with self.environment():
            super().run_forever()

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        # call_soon_threadsafe: nothing to wake, the loop never blocks on a real fd.
        pass

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("cannot close a running event loop")
        super().close()

    def pending_timers(self) -> int:
        """Number of scheduled, not cancelled timers."""
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        return sum(1 for h in scheduled if not h.cancelled())

    def next_timer(self) -> float | None:
        """Absolute time of the earliest pending timer, or None."""
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        live = [h.when() for h in scheduled if not h.cancelled()]
        return min(live) if live else None

    # -- threads: run inline with the clock frozen ---------------------------------------------

    def run_in_executor(self, executor: Any, func: Callable[[*_Ts], T], *args: *_Ts) -> asyncio.Future[T]:
        """Run ``func(*args)`` now, inline, and return a finished future.

        Real threads would finish at a wall-clock-dependent point of the virtual
        timeline; running inline keeps the simulation deterministic.
        """
        self._check_closed()  # type: ignore[attr-defined]
        fut: asyncio.Future[T] = self.create_future()
        try:
            result = contextvars.copy_context().run(func, *args)
        except BaseException as exc:  # delivered to the awaiting task, as an executor would
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            fut.set_exception(exc)
        else:
            fut.set_result(result)
        return fut

    def set_default_executor(self, executor: Any) -> None:
        """Accepted and ignored: executor work always runs inline."""

    # -- real I/O is refused ----------------------------------------------------------------

    def _refuse(self, what: str) -> NoReturn:
        exc = RealIOForbidden(
            f"{what} at {caller_location()} needs real I/O, which is not allowed inside a simulation: use the "
            "simulated network (Simulation.host(...) is a DatagramNetwork; TCP: asyncio.open_connection / "
            "start_server on a simulated host) instead"
        )
        self.note_refusal(exc)
        raise exc

    def note_refusal(self, exc: SimulationError) -> None:
        """Keep ``exc``, a refused call, in :attr:`refusals` (the first :data:`MAX_REFUSALS`) and
        count it; the same error noted twice counts once."""
        if any(r is exc for r in self.refusals):
            return
        self.refusal_count += 1
        if len(self.refusals) < MAX_REFUSALS:
            self.refusals.append(exc)

    def take_refusals(self) -> tuple[list[SimulationError], int]:
        """The refusals kept and how many there were in all; both forgotten."""
        taken, count = self.refusals, self.refusal_count
        self.refusals, self.refusal_count = [], 0
        return taken, count

    async def getaddrinfo(
        self, host: Any, port: Any, *, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[Any]:
        """Numeric addresses resolve without I/O, simulated hosts' names to their addresses;
        other names are refused (use the mock DNS)."""
        text = host.decode() if isinstance(host, bytes) else host
        if text is not None:
            try:
                ipaddress.ip_address(text)
            except ValueError:
                address = self.streams.resolve(text) if self.streams is not None else None
                if address is None:
                    self._refuse(f"getaddrinfo({host!r}) (a real name lookup: no simulated host has this name)")
                host = address
        return socket.getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

    async def getnameinfo(self, sockaddr: Any, flags: int = 0) -> NoReturn:
        self._refuse("getnameinfo()")

    async def create_connection(self, protocol_factory: Any, host: Any = None, port: Any = None, **kwargs: Any) -> Any:
        """Simulated TCP (see :attr:`streams`)."""
        if self.streams is None:
            self._refuse(f"create_connection({host!r}, {port!r})")
        try:
            return await self.streams.create_connection(protocol_factory, host, port, **kwargs)
        except RealIOForbidden as exc:
            self.note_refusal(exc)
            raise

    async def create_server(self, protocol_factory: Any, host: Any = None, port: Any = None, **kwargs: Any) -> Any:
        """Simulated TCP (see :attr:`streams`)."""
        if self.streams is None:
            self._refuse(f"create_server({host!r}, {port!r})")
        try:
            return await self.streams.create_server(protocol_factory, host, port, **kwargs)
        except RealIOForbidden as exc:
            self.note_refusal(exc)
            raise

    async def create_datagram_endpoint(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("create_datagram_endpoint()")

    async def create_unix_connection(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("create_unix_connection()")

    async def create_unix_server(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("create_unix_server()")

    async def connect_accepted_socket(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("connect_accepted_socket()")

    async def connect_read_pipe(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("connect_read_pipe()")

    async def connect_write_pipe(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("connect_write_pipe()")

    async def subprocess_exec(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("subprocess_exec()")

    async def subprocess_shell(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("subprocess_shell()")

    async def sendfile(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("sendfile()")

    async def start_tls(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("start_tls()")

    async def sock_recv(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("sock_recv()")

    async def sock_recv_into(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("sock_recv_into()")

    async def sock_recvfrom(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("sock_recvfrom()")

    async def sock_recvfrom_into(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("sock_recvfrom_into()")

    async def sock_sendall(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("sock_sendall()")

    async def sock_sendto(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("sock_sendto()")

    async def sock_connect(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("sock_connect()")

    async def sock_accept(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("sock_accept()")

    async def sock_sendfile(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse("sock_sendfile()")

    def add_reader(self, fd: Any, callback: Callable[[*_Ts], Any], *args: *_Ts) -> None:
        self._refuse("add_reader()")

    def add_writer(self, fd: Any, callback: Callable[[*_Ts], Any], *args: *_Ts) -> None:
        self._refuse("add_writer()")

    def remove_reader(self, fd: Any) -> bool:
        return False

    def remove_writer(self, fd: Any) -> bool:
        return False

    def add_signal_handler(self, sig: int, callback: Callable[[*_Ts], object], *args: *_Ts) -> None:
        self._refuse("add_signal_handler()")

    def remove_signal_handler(self, sig: int) -> bool:
        return False
