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

3. **The process environment** (:class:`Environment`, one per
   :class:`~asgi_p2p.sim.Simulation`).  While a simulation's loop runs
   (``VirtualTimeLoop.run_forever``, so ``sim.run`` and any ``run_until_complete``),
   on that thread only, the sources of randomness and wall-clock time an app or a
   library commonly reaches answer from the seed and from virtual time, as madsim
   does for Rust:

   * entropy: ``os.urandom``, ``os.getrandom``, ``ssl.RAND_bytes``, the random
     module's ``_urandom`` (so ``random.SystemRandom`` and every ``secrets``
     function), hence ``uuid.uuid4`` and httpx's multipart boundary;
   * the ``random`` module: its global generator (module functions *and* names
     imported from it before the simulation) and every ``random.Random()`` /
     ``random.seed()`` given no seed;
   * ``uuid.uuid1`` (virtual time, a seeded clock sequence and node);
   * clocks: ``time.time``/``time_ns`` (virtual time + :data:`WALL_CLOCK_AT_START`),
     ``time.monotonic``/``monotonic_ns``, ``time.perf_counter``/``perf_counter_ns`` (the loop's clock),
     ``time.localtime``/``gmtime``/``ctime``/``asctime``/``strftime`` without a time
     argument, ``datetime.datetime.now``/``utcnow``/``today`` and
     ``datetime.date.today``: the real classes are immutable, so module globals bound to
     them or to the ``datetime`` module get stand-ins (:class:`SimDatetime`,
     :class:`SimDate`, a copy of the module holding them) while a simulation runs;
     ``sys.modules["datetime"]`` itself never changes;
   * ``time.sleep`` with a positive duration raises :class:`WallClockSleep` (it would
     stop the whole simulation for real seconds while virtual time stands still), and
     ``threading.Thread.start`` raises :class:`ThreadForbidden`, and blocking socket
     calls that reach the real network (``socket.socket.connect``/``connect_ex``/
     ``sendto``/``bind``, so ``socket.create_connection``, ``urllib``, ``requests``, a
     sync ``httpx.Client``; ``socket.getaddrinfo``/``gethostbyname``/``gethostbyname_ex``
     of a name that is not a numeric address) raise :class:`RealIOForbidden`; each is
     also reported to the simulation (``on_forbidden``), which keeps them with its loop's
     real-I/O refusals, so ``Simulation.run`` fails even when the app caught the error.

   Each replaced function checks a thread-local: on any other thread, or when no
   simulation runs, it *is* the original (``os.urandom`` stays the kernel's CSPRNG
   for real use).  When the last running simulation stops, every module attribute
   is the original object again and the global generators continue exactly where
   they were (also after an exception).  The originals stay reachable as
   :data:`real_time`, :data:`real_perf_counter`, :data:`real_urandom`, ... (to time
   a simulation from inside it, as ``benchmarks/sim.py`` does).

   Private hooks of the standard library used: ``random._urandom`` (what ``SystemRandom``
   and ``secrets`` read), ``uuid._generate_time_safe`` (off while any simulation runs, so
   ``uuid1`` computes its value in Python from the replaced sources) and
   ``uuid._last_timestamp`` (swapped per simulation).

   Not covered: names bound before the simulation with ``from time import time`` or
   ``from os import urandom`` (they keep the original; ``from datetime import
   datetime`` and ``from random import choice`` *are* covered), C extensions
   (OpenSSL's own generator inside ``cryptography``, numpy), and anything on other
   threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime
import ipaddress
import logging
import operator
import os
import random
import socket
import sys
import sysconfig
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from fractions import Fraction
from types import ModuleType
from typing import Any

from .errors import RealIOForbidden, SimulationError, ThreadForbidden, WallClockSleep

__all__ = [
    "Environment",
    "SimDate",
    "SimDatetime",
    "ThreadForbidden",
    "WallClockSleep",
    "apply",
    "current_environment",
    "patch_aioquic_stream_hash",
    "patch_anyio_worker_threads",
    "real_monotonic",
    "real_monotonic_ns",
    "real_perf_counter",
    "real_perf_counter_ns",
    "real_sleep",
    "real_time",
    "real_time_ns",
    "real_urandom",
]

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


# ---------------------------------------------------------------------------------------------
# 3. The process environment: seeded entropy and a virtual wall clock while a simulation runs.

#: The originals, captured when the simulator is imported (before any simulation ran).
real_time = time.time
real_time_ns = time.time_ns
real_monotonic = time.monotonic
real_monotonic_ns = time.monotonic_ns
real_perf_counter = time.perf_counter
real_perf_counter_ns = time.perf_counter_ns
real_sleep = time.sleep
real_urandom = os.urandom
_real_getrandom: Callable[..., bytes] | None = getattr(os, "getrandom", None)
_real_localtime = time.localtime
_real_gmtime = time.gmtime
_real_ctime = time.ctime
_real_asctime = time.asctime
_real_strftime = time.strftime
_real_seed = random.Random.seed
_real_getnode = uuid.getnode
_real_thread_start = threading.Thread.start
_REAL_DATE = datetime.date
_REAL_DATETIME = datetime.datetime
#: The random module's global generator (what ``random.random`` & co. are bound to).
_RANDOM_INST: random.Random = getattr(random.random, "__self__")  # noqa: B009 (mypy: no __self__)
#: The random module's functions bound to that generator (``random.random``, ``randint``, ...).
_RANDOM_FUNCS = tuple(
    name for name in sorted(random.__all__) if getattr(getattr(random, name, None), "__self__", None) is _RANDOM_INST
)
_MISSING: Any = object()


class Environment:
    """What a simulated process sees of entropy and wall-clock time, for one simulation.

    Every stream derives from ``seed`` through SHA-512 (``random.Random`` of a string),
    so it does not depend on ``PYTHONHASHSEED``; each kind of source has its own stream,
    so code drawing more of one kind does not shift another.

    Args:
        seed: the simulation's seed.
        clock: the virtual clock (the loop's ``time``), in seconds.
        wall_clock_offset: added to ``clock()`` to give Unix time.
        on_forbidden: called with each refused call (:class:`WallClockSleep`, :class:`ThreadForbidden`,
            :class:`RealIOForbidden`) before it is raised (the simulation passes its loop's ``note_refusal``).
    """

    def __init__(
        self,
        seed: int,
        clock: Callable[[], float],
        *,
        wall_clock_offset: float,
        on_forbidden: Callable[[SimulationError], None],
    ) -> None:
        label = f"asgi-p2p-sim/{seed}"
        self.seed = seed
        self._clock = clock
        self._wall_offset = wall_clock_offset
        self._wall_offset_ns = int(Fraction(wall_clock_offset) * 1_000_000_000)
        self._entropy = random.Random(f"{label}/entropy")
        self._seeds = random.Random(f"{label}/seeds")
        #: The random module's global generator while this simulation runs.
        self.global_rng = random.Random(f"{label}/random")
        #: ``uuid.getnode()``: 48 random bits with the multicast bit set (RFC 4122 4.5).
        self.uuid_node = random.Random(f"{label}/uuid-node").getrandbits(48) | (1 << 40)
        self.uuid_last_timestamp: int | None = None
        #: Told of every wall-clock sleep or thread start refused (the simulation keeps them
        #: with its loop's real-I/O refusals, and ``Simulation.run`` raises them).
        self.on_forbidden = on_forbidden

    # -- the sources --------------------------------------------------------------------------

    def urandom(self, size: int) -> bytes:
        """``size`` bytes of the entropy stream (what ``os.urandom`` answers)."""
        size = operator.index(size)
        if size < 0:
            raise ValueError("negative argument not allowed")
        return self._entropy.randbytes(size)

    def next_seed(self) -> int:
        """A seed for a ``random.Random()`` (or ``random.seed()``) given none."""
        return self._seeds.getrandbits(128)

    def time(self) -> float:
        """Unix time: the virtual clock plus the wall-clock offset."""
        return self._clock() + self._wall_offset

    def time_ns(self) -> int:
        return self._wall_offset_ns + round(self._clock() * 1e9)

    def monotonic(self) -> float:
        """The virtual clock (also ``perf_counter``)."""
        return self._clock()

    def monotonic_ns(self) -> int:
        return round(self._clock() * 1e9)

    def forbid(self, error: SimulationError) -> SimulationError:
        """Report a forbidden call (the app may swallow the error) and return it."""
        self.on_forbidden(error)
        return error

    # -- activation ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Make this environment the current thread's until the block ends (nestable)."""
        owner = _enter(self)
        try:
            yield
        finally:
            _leave(self, owner)


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.stack: list[Environment] = []
        self.env: Environment | None = None


_thread = _ThreadState()


def current_environment() -> Environment | None:
    """The environment of the simulation running on this thread, if any."""
    return _thread.env


class _Installed:
    """Process-wide state of the patches (guarded by ``lock``)."""

    lock = threading.Lock()
    #: Activations (on any thread) still running.
    active = 0
    #: (object, attribute, original, replacement), in the order they were set.
    patched: list[tuple[Any, str, Any, Any]] = []
    #: The environment whose state the process-wide generators hold (the first to run).
    owner: Environment | None = None
    #: The random module generator's real state while an owner holds the generator; other
    #: threads calling random's functions draw from it meanwhile.
    side: random.Random | None = None
    saved_uuid_timestamp: int | None = None
    #: datetime scan cache: module name -> (module, names bound to the real classes).
    scanned: dict[str, tuple[ModuleType, tuple[str, ...]]] = {}


def _enter(env: Environment) -> bool:
    with _Installed.lock:
        if _Installed.active == 0:
            _install()
        _Installed.active += 1
        owner = _Installed.owner is None
        if owner:
            _Installed.owner = env
            side = random.Random(0)
            side.setstate(_RANDOM_INST.getstate())
            _Installed.side = side
            _RANDOM_INST.setstate(env.global_rng.getstate())
            _Installed.saved_uuid_timestamp = uuid._last_timestamp  # type: ignore[attr-defined]
            uuid._last_timestamp = env.uuid_last_timestamp  # type: ignore[attr-defined]
    _thread.stack.append(env)
    _thread.env = env
    return owner


def _leave(env: Environment, owner: bool) -> None:
    stack = _thread.stack
    stack.pop()
    _thread.env = stack[-1] if stack else None
    with _Installed.lock:
        if owner:
            env.global_rng.setstate(_RANDOM_INST.getstate())
            side = _Installed.side
            assert side is not None
            _RANDOM_INST.setstate(side.getstate())
            _Installed.side = None
            env.uuid_last_timestamp = uuid._last_timestamp  # type: ignore[attr-defined]
            uuid._last_timestamp = _Installed.saved_uuid_timestamp  # type: ignore[attr-defined]
            _Installed.owner = None
        _Installed.active -= 1
        if _Installed.active == 0:
            _uninstall()


# -- the replacements: each is the original unless a simulation runs on this thread --------


def _urandom(size: int, /) -> bytes:
    env = _thread.env
    return real_urandom(size) if env is None else env.urandom(size)


def _getrandom(size: int, flags: int = 0) -> bytes:
    env = _thread.env
    if env is None:
        assert _real_getrandom is not None
        return _real_getrandom(size, flags)
    return env.urandom(size)


def _seed(self: random.Random, a: Any = None, version: int = 2) -> None:
    if a is None:
        env = _thread.env
        if env is not None:
            a = env.next_seed()
    _real_seed(self, a, version)


def _random_target() -> random.Random:
    env = _thread.env
    owner = _Installed.owner
    if env is None:
        side = _Installed.side
        return side if side is not None else _RANDOM_INST
    return _RANDOM_INST if env is owner else env.global_rng


def _random_function(name: str) -> Callable[..., Any]:
    def dispatch(*args: Any, **kwargs: Any) -> Any:
        return getattr(_random_target(), name)(*args, **kwargs)

    original = getattr(random, name)
    dispatch.__name__ = dispatch.__qualname__ = name
    dispatch.__doc__ = original.__doc__
    return dispatch


_RANDOM_DISPATCH = {name: _random_function(name) for name in _RANDOM_FUNCS}


def _getnode() -> int:
    env = _thread.env
    return _real_getnode() if env is None else env.uuid_node


def _time() -> float:
    env = _thread.env
    return real_time() if env is None else env.time()  # wall-clock ok: no simulation here


def _time_ns() -> int:
    env = _thread.env
    return real_time_ns() if env is None else env.time_ns()  # wall-clock ok: no simulation here


def _monotonic() -> float:
    env = _thread.env
    return real_monotonic() if env is None else env.monotonic()  # wall-clock ok: no simulation here


def _monotonic_ns() -> int:
    env = _thread.env
    return real_monotonic_ns() if env is None else env.monotonic_ns()  # wall-clock ok: no simulation here


def _perf_counter() -> float:
    env = _thread.env
    return real_perf_counter() if env is None else env.monotonic()  # wall-clock ok: no simulation here


def _perf_counter_ns() -> int:
    env = _thread.env
    return real_perf_counter_ns() if env is None else env.monotonic_ns()  # wall-clock ok: no simulation here


def _now_or(secs: Any) -> Any:
    if secs is None:
        env = _thread.env
        if env is not None:
            return env.time()
    return secs


def _localtime(secs: float | None = None, /) -> time.struct_time:
    return _real_localtime(_now_or(secs))


def _gmtime(secs: float | None = None, /) -> time.struct_time:
    return _real_gmtime(_now_or(secs))


def _ctime(secs: float | None = None, /) -> str:
    return _real_ctime(_now_or(secs))


def _asctime(t: Any = _MISSING, /) -> str:
    if t is _MISSING:
        env = _thread.env
        return _real_asctime() if env is None else _real_asctime(_real_localtime(env.time()))
    return _real_asctime(t)


def _strftime(format: str, t: Any = _MISSING, /) -> str:
    if t is _MISSING:
        env = _thread.env
        return _real_strftime(format) if env is None else _real_strftime(format, _real_localtime(env.time()))
    return _real_strftime(format, t)


_STDLIB = os.path.normcase(os.path.abspath(sysconfig.get_paths()["stdlib"])) + os.sep


def _caller() -> str:
    """``file:line in function`` of the innermost frame outside this module and the standard library."""
    here = os.path.normcase(os.path.abspath(__file__))
    for frame in reversed(traceback.extract_stack()):
        path = os.path.normcase(os.path.abspath(frame.filename))
        if path == here or (path.startswith(_STDLIB) and "-packages" not in path):
            continue
        return f"{frame.filename}:{frame.lineno} in {frame.name}"
    return "an unknown place"


def _sleep(secs: float, /) -> None:
    env = _thread.env
    try:
        waits = env is not None and secs > 0
    except TypeError:  # not a number: the original says so
        waits = False
    if not waits:
        real_sleep(secs)
        return
    assert env is not None
    raise env.forbid(
        WallClockSleep(
            f"time.sleep({secs!r}) called inside a simulation at {_caller()}: it would stop the whole "
            "simulation for real seconds while virtual time stands still; use 'await asyncio.sleep()'"
        )
    )


def _thread_start(self: threading.Thread) -> None:
    env = _thread.env
    if env is None:
        _real_thread_start(self)
        return
    raise env.forbid(
        ThreadForbidden(
            f"thread {self.name!r} started inside a simulation at {_caller()}: its work would finish at a "
            "wall-clock-dependent point of the virtual timeline; use 'await asyncio.to_thread()' or "
            "loop.run_in_executor(), which the simulator runs inline"
        )
    )


_real_socket_methods = {name: getattr(socket.socket, name) for name in ("connect", "connect_ex", "sendto", "bind")}
_real_resolvers = {name: getattr(socket, name) for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex")}


def _refuse_socket(env: Environment, call: str) -> RealIOForbidden:
    return RealIOForbidden(
        f"{call} at {_caller()} is blocking real network I/O, which is not allowed inside a simulation: "
        "use the simulated network (an ASGI app's httpx.AsyncClient from sim.client(); TCP: "
        "asyncio.open_connection / start_server on a simulated host)"
    )


def _socket_method(name: str) -> Callable[..., Any]:
    original = _real_socket_methods[name]

    def method(self: socket.socket, *args: Any) -> Any:
        env = _thread.env
        if env is None:
            return original(self, *args)
        shown = ", ".join(repr(a) for a in args[-1:]) if name == "sendto" else ", ".join(repr(a) for a in args)
        raise env.forbid(_refuse_socket(env, f"socket.{name}({shown})"))

    method.__name__ = method.__qualname__ = name
    return method


def _numeric(host: Any) -> bool:
    if host is None:
        return True
    text = host.decode() if isinstance(host, bytes) else host
    try:
        ipaddress.ip_address(str(text).split("%", 1)[0])
    except ValueError:
        return False
    return True


def _resolver(name: str) -> Callable[..., Any]:
    original = _real_resolvers[name]

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        env = _thread.env
        flags = kwargs.get("flags", args[4] if len(args) > 4 else 0)
        if env is None or _numeric(host) or (name == "getaddrinfo" and flags & socket.AI_NUMERICHOST):
            return original(host, *args, **kwargs)
        raise env.forbid(_refuse_socket(env, f"socket.{name}({host!r}) (a real name lookup)"))

    resolve.__name__ = resolve.__qualname__ = name
    return resolve


# -- datetime: stand-in classes whose now()/today() read virtual time ------------------------


class _FacadeMeta(type):
    """``isinstance``/``issubclass`` against a stand-in answer as for the real class."""

    def __instancecheck__(cls, obj: object) -> bool:
        real = _FACADES.get(cls)
        return isinstance(obj, real) if real is not None else type.__instancecheck__(cls, obj)

    def __subclasscheck__(cls, sub: type) -> bool:
        real = _FACADES.get(cls)
        return issubclass(sub, real) if real is not None else type.__subclasscheck__(cls, sub)


class SimDate(datetime.date, metaclass=_FacadeMeta):
    """Stands in for ``datetime.date`` while a simulation runs: ``today()`` is virtual.

    Constructing it (and every other constructor) returns a real ``datetime.date``, and
    ``isinstance(real_date, SimDate)`` is true, so code that imported ``date`` before
    the simulation cannot tell the difference.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is SimDate:
            return _REAL_DATE(*args, **kwargs)
        return super().__new__(cls, *args, **kwargs)

    @classmethod
    def today(cls) -> Any:
        env = _thread.env
        if env is None:
            return _REAL_DATE.today() if cls is SimDate else super().today()
        return _REAL_DATE.fromtimestamp(env.time()) if cls is SimDate else cls.fromtimestamp(env.time())

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Callable[[Any], Any]) -> Any:
        return handler(_REAL_DATE)  # a model built during a simulation validates real dates


class SimDatetime(datetime.datetime, metaclass=_FacadeMeta):
    """Stands in for ``datetime.datetime`` while a simulation runs: ``now()``, ``utcnow()``
    and ``today()`` are virtual (Unix time, as the virtual wall clock gives it); see :class:`SimDate`."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is SimDatetime:
            return _REAL_DATETIME(*args, **kwargs)
        return super().__new__(cls, *args, **kwargs)

    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> Any:
        env = _thread.env
        if env is None:
            return _REAL_DATETIME.now(tz) if cls is SimDatetime else super().now(tz)
        return (_REAL_DATETIME if cls is SimDatetime else cls).fromtimestamp(env.time(), tz)

    @classmethod
    def utcnow(cls) -> Any:
        env = _thread.env
        if env is None:
            return _REAL_DATETIME.utcnow() if cls is SimDatetime else super().utcnow()
        return cls.now(datetime.UTC).replace(tzinfo=None)

    @classmethod
    def today(cls) -> Any:
        return cls.now()

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Callable[[Any], Any]) -> Any:
        return handler(_REAL_DATETIME)


_FACADES: dict[type, type] = {SimDate: _REAL_DATE, SimDatetime: _REAL_DATETIME}

#: What a module sees as ``datetime`` (the module) while a simulation runs: a copy of the real
#: module's namespace with the stand-in classes.  The real module (``sys.modules["datetime"]``)
#: is never changed: C and Rust extensions look its classes up there (cryptography caches
#: ``datetime.datetime`` for its type checks on first use).
_DATETIME_MODULE_FACADE = ModuleType(datetime.__name__, datetime.__doc__)
_DATETIME_MODULE_FACADE.__dict__.update(datetime.__dict__)
_DATETIME_MODULE_FACADE.datetime = SimDatetime  # type: ignore[attr-defined]
_DATETIME_MODULE_FACADE.date = SimDate  # type: ignore[attr-defined]

_REAL_TO_FACADE: dict[int, Any] = {
    id(_REAL_DATE): SimDate,
    id(_REAL_DATETIME): SimDatetime,
    id(datetime): _DATETIME_MODULE_FACADE,
}
_FACADE_TO_REAL: dict[int, Any] = {
    id(SimDate): _REAL_DATE,
    id(SimDatetime): _REAL_DATETIME,
    id(_DATETIME_MODULE_FACADE): datetime,
}

#: Modules whose references to datetime stay the real ones: the module itself, the C module,
#: this module, and test machinery (timing reports, pydantic's own validators).
_SCAN_SKIP = (
    "datetime",
    "_datetime",
    "_pydatetime",
    __name__,
    "_pytest",
    "pytest",
    "pluggy",
    "hypothesis",
    "pydantic",
)


def _skip_module(name: str) -> bool:
    return any(name == p or name.startswith((p + ".", p + "_")) for p in _SCAN_SKIP)


def _module_refs(module: ModuleType, ids: dict[int, type]) -> tuple[str, ...]:
    namespace = getattr(module, "__dict__", None)
    if not isinstance(namespace, dict):
        return ()
    return tuple(k for k, v in list(namespace.items()) if isinstance(k, str) and id(v) in ids)


def _scan(name: str, module: ModuleType) -> tuple[ModuleType, tuple[str, ...]]:
    names = () if _skip_module(name) else _module_refs(module, _REAL_TO_FACADE)
    entry = _Installed.scanned[name] = (module, names)
    return entry


def _swap_datetime_in(patched: list[tuple[Any, str, Any, Any]]) -> None:
    """Bind the stand-ins wherever a module holds the real classes (``from datetime import
    datetime`` included).  A module is scanned once; later runs reuse the names found."""
    for name, module in list(sys.modules.items()):
        if module is None:
            continue
        cached = _Installed.scanned.get(name)
        if cached is None or cached[0] is not module:
            cached = _scan(name, module)
        for attr in cached[1]:
            value = module.__dict__.get(attr)
            facade = _REAL_TO_FACADE.get(id(value))
            if facade is not None:
                setattr(module, attr, facade)
                patched.append((module, attr, value, facade))


def _unswap_datetime_new_modules() -> None:
    """Modules imported during the simulation bound the stand-ins: give them the real classes."""
    for name, module in list(sys.modules.items()):
        cached = _Installed.scanned.get(name)
        if module is None or (cached is not None and cached[0] is module):
            continue
        for attr in _module_refs(module, _FACADE_TO_REAL):
            setattr(module, attr, _FACADE_TO_REAL[id(module.__dict__[attr])])
        _scan(name, module)


def _install() -> None:
    """Put every replacement in place (called by the first activation)."""
    patched = _Installed.patched
    targets: list[tuple[Any, str, Any]] = [
        (os, "urandom", _urandom),
        (random, "_urandom", _urandom),
        (random.Random, "seed", _seed),
        *((random, name, fn) for name, fn in _RANDOM_DISPATCH.items()),
        (uuid, "getnode", _getnode),
        # Without libuuid's generator, uuid1() computes its value from time_ns(), the random
        # module and getnode(), all replaced above (for every thread, the generator is off).
        (uuid, "_generate_time_safe", None),
        (time, "time", _time),
        (time, "time_ns", _time_ns),
        (time, "monotonic", _monotonic),
        (time, "monotonic_ns", _monotonic_ns),
        (time, "perf_counter", _perf_counter),
        (time, "perf_counter_ns", _perf_counter_ns),
        (time, "localtime", _localtime),
        (time, "gmtime", _gmtime),
        (time, "ctime", _ctime),
        (time, "asctime", _asctime),
        (time, "strftime", _strftime),
        (time, "sleep", _sleep),
        (threading.Thread, "start", _thread_start),
        *((socket.socket, name, _socket_method(name)) for name in _real_socket_methods),
        *((socket, name, _resolver(name)) for name in _real_resolvers),
    ]
    if _real_getrandom is not None:
        targets.append((os, "getrandom", _getrandom))
    ssl = sys.modules.get("ssl")
    if ssl is not None and hasattr(ssl, "RAND_bytes"):
        targets.append((ssl, "RAND_bytes", _urandom))
    for obj, attr, replacement in targets:
        original = getattr(obj, attr)
        setattr(obj, attr, replacement)
        patched.append((obj, attr, original, replacement))
    _swap_datetime_in(patched)


def _uninstall() -> None:
    """Restore every original (called when the last activation ends)."""
    patched = _Installed.patched
    while patched:
        obj, attr, original, replacement = patched.pop()
        if getattr(obj, attr, _MISSING) is replacement:
            setattr(obj, attr, original)
        else:  # replaced again by someone else meanwhile (a test's monkeypatch): theirs stays
            log.debug("determinism: %r.%s was replaced during the simulation; left as it is", obj, attr)
    _unswap_datetime_new_modules()
