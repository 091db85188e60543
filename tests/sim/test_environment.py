"""Inside a simulation, entropy and the wall clock come from the seed and virtual time.

Outside one (and on other threads meanwhile) every function is the original again.
Cross-process replay of app patterns is in ``test_determinism.py``.
"""

from __future__ import annotations

import _socket
import asyncio
import concurrent.futures
import datetime
import os
import random
import re
import secrets
import socket
import ssl
import threading
import time
import uuid
from datetime import date
from datetime import datetime as dt
from random import randint
from typing import Any

import pydantic
import pytest

from asgi_p2p import NetworkConfig, Node, SecretKey
from asgi_p2p.sim import RealIOForbidden, Simulation, SimulationError, ThreadForbidden, WallClockSleep
from asgi_p2p.sim import determinism as det
from asgi_p2p.sim.network import WALL_CLOCK_AT_START, SimSocket

# (object, attribute) pairs a simulation replaces while it runs.
REPLACED: list[tuple[Any, str]] = [
    (os, "urandom"),
    (os, "getrandom"),
    (random, "_urandom"),
    (random.Random, "seed"),
    (random, "random"),
    (random, "randint"),
    (random, "choice"),
    (random, "seed"),
    (random, "getrandbits"),
    (ssl, "RAND_bytes"),
    (uuid, "getnode"),
    (uuid, "_generate_time_safe"),
    (time, "time"),
    (time, "time_ns"),
    (time, "monotonic"),
    (time, "monotonic_ns"),
    (time, "perf_counter"),
    (time, "perf_counter_ns"),
    (time, "localtime"),
    (time, "gmtime"),
    (time, "strftime"),
    (time, "sleep"),
    (threading.Thread, "start"),
    (socket.socket, "connect"),
    (socket.socket, "connect_ex"),
    (socket.socket, "sendto"),
    (socket.socket, "bind"),
    (socket, "getaddrinfo"),
    (socket, "gethostbyname"),
    (socket, "gethostbyname_ex"),
]


def snapshot() -> dict[tuple[int, str], Any]:
    return {(id(obj), attr): getattr(obj, attr) for obj, attr in REPLACED}


def draws() -> dict[str, Any]:
    """One value of every source (what an app would put in packets)."""
    return {
        "urandom": os.urandom(8),
        "getrandom": os.getrandom(4),
        "ssl": ssl.RAND_bytes(4),
        "token_hex": secrets.token_hex(8),
        "token_urlsafe": secrets.token_urlsafe(8),
        "secrets_choice": secrets.choice("abcdefgh"),
        "system_random": random.SystemRandom().random(),
        "random": random.random(),
        "randint_imported": randint(0, 10**9),
        "new_random": random.Random().random(),
        "uuid4": uuid.uuid4(),
        "uuid1": uuid.uuid1(),
        "time": time.time(),
        "time_ns": time.time_ns(),
        "monotonic": time.monotonic(),
        "perf_counter": time.perf_counter(),
        "gmtime": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "now_utc": dt.now(datetime.UTC),
        "module_now": datetime.datetime.now(datetime.UTC),
        "utcnow": dt.utcnow(),
        "today": date.today(),
    }


def run_draws(seed: int, advance: float = 2.5) -> tuple[dict[str, Any], dict[str, Any]]:
    with Simulation(seed=seed) as sim:

        async def main() -> tuple[dict[str, Any], dict[str, Any]]:
            first = draws()
            await asyncio.sleep(advance)
            return first, draws()

        return sim.run(main())


def test_sources_follow_the_seed_and_virtual_time() -> None:
    first, later = run_draws(7)
    again_first, again_later = run_draws(7)
    other_first, _ = run_draws(8)
    assert (first, later) == (again_first, again_later)
    for key in ("urandom", "token_hex", "random", "randint_imported", "new_random", "uuid4", "system_random"):
        assert first[key] != other_first[key], key  # the seed matters
        assert first[key] != later[key], key  # and the streams move on
    # the clocks: the simulation's start time, then 2.5 virtual seconds later
    assert first["time"] == WALL_CLOCK_AT_START and later["time"] == WALL_CLOCK_AT_START + 2.5
    assert first["time_ns"] == 1_767_225_600_000_000_000 and later["time_ns"] == first["time_ns"] + 2_500_000_000
    assert later["monotonic"] - first["monotonic"] == 2.5 == later["perf_counter"] - first["perf_counter"]
    start = dt(2026, 1, 1, tzinfo=datetime.UTC)
    assert first["now_utc"] == first["module_now"] == start
    assert later["now_utc"] == start + datetime.timedelta(seconds=2.5)
    assert first["utcnow"] == start.replace(tzinfo=None) and first["gmtime"] == "2026-01-01 00:00:00"
    assert real_class(first["now_utc"]) == "datetime.datetime" and real_class(first["today"]) == "datetime.date"
    u1 = first["uuid1"]
    assert u1.version == 1 and u1.time == first["time_ns"] // 100 + 0x01B21DD213814000 and u1.node >> 40 & 1
    assert other_first["time"] == first["time"]  # time does not depend on the seed


def test_everything_is_the_original_again_after_a_run() -> None:
    before = snapshot()
    datetime_names = (datetime.datetime, datetime.date, dt, date)
    inside: dict[str, Any] = {}
    with Simulation(seed=1) as sim:

        async def main() -> None:
            inside.update(snapshot=snapshot(), dt=dt, date=date, module=globals()["datetime"])

        sim.run(main())
        after_run = snapshot()
    assert after_run == before
    assert all(inside["snapshot"][k] is not v for k, v in before.items() if k[1] != "_generate_time_safe")
    assert inside["dt"] is det.SimDatetime and inside["date"] is det.SimDate
    assert inside["module"] is not datetime and inside["module"].timedelta is datetime.timedelta
    assert (datetime.datetime, datetime.date, dt, date) == datetime_names
    assert dt is datetime.datetime and globals()["datetime"] is datetime
    assert det.current_environment() is None


def test_restored_after_an_exception_and_across_sequential_and_alternating_simulations() -> None:
    before = snapshot()
    with Simulation(seed=3) as sim:

        async def fail() -> None:
            os.urandom(4)
            raise KeyError("boom")

        with pytest.raises(KeyError):
            sim.run(fail())
    assert snapshot() == before

    def values(sim: Simulation) -> tuple[Any, ...]:
        async def main() -> tuple[Any, ...]:
            return os.urandom(4), random.random(), uuid.uuid4(), random.Random().random()

        return sim.run(main())

    # Two simulations taking turns each continue their own streams, as if alone.
    with Simulation(seed=5) as a, Simulation(seed=6) as b:
        interleaved = [values(a), values(b), values(a), values(b)]
    with Simulation(seed=5) as a:
        alone_a = [values(a), values(a)]
    with Simulation(seed=6) as b:
        alone_b = [values(b), values(b)]
    assert interleaved == [alone_a[0], alone_b[0], alone_a[1], alone_b[1]]
    assert snapshot() == before


def test_the_global_random_sequence_continues_exactly() -> None:
    random.seed(1234)
    expected = [random.random() for _ in range(4)]
    random.seed(1234)
    got = [random.random()]
    with Simulation(seed=2) as sim:

        async def main() -> None:
            random.random()
            randint(1, 6)
            random.seed()  # seeded from the simulation, not from the OS
            random.shuffle([1, 2, 3])

        sim.run(main())
    got += [random.random() for _ in range(3)]
    assert got == expected


def test_other_threads_keep_the_real_sources_meanwhile() -> None:
    ready, go, done = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def other() -> None:
        ready.set()
        go.wait(30)
        seen.update(
            urandom=[os.urandom(16) for _ in range(2)],
            time=time.time(),
            year=dt.now().year,
            env=det.current_environment(),
            random=random.random(),
        )
        done.set()

    thread = threading.Thread(target=other)
    thread.start()  # before the simulation: starting it inside one is an error
    ready.wait(30)
    with Simulation(seed=1) as sim:

        async def main() -> bytes:
            go.set()
            done.wait(30)  # blocks the loop; virtual time stands still
            return os.urandom(16)

        sim_bytes = sim.run(main())
    thread.join(30)
    with Simulation(seed=1) as sim:

        async def again() -> bytes:
            return os.urandom(16)

        assert sim.run(again()) == sim_bytes  # the other thread did not draw from the stream
    assert seen["env"] is None
    assert abs(seen["time"] - det.real_time()) < 120 and seen["year"] == det._REAL_DATETIME.now().year
    assert sim_bytes not in seen["urandom"] and seen["urandom"][0] != seen["urandom"][1]


def test_a_quic_exchange_replays_byte_for_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioquic's TLS key shares come from ``secrets`` (``aioquic_compat.urandom_key_shares``),
    not OpenSSL's generator, which no simulation can seed: two runs of one seed in one
    process send the same packets, bytes included (before, more than half of them differed)."""
    sent: list[tuple[float, str, int, bytes]] = []
    original = SimSocket.sendto

    def record(self: SimSocket, data: bytes, addr: Any) -> None:
        sent.append((self.host.sim.now, self.host.name, len(data), bytes(data)))
        original(self, data, addr)

    monkeypatch.setattr(SimSocket, "sendto", record)

    def run() -> tuple[str, list[tuple[float, str, int, bytes]]]:
        sent.clear()
        with Simulation(seed=11, loss=0.1) as sim:
            a, b = sim.host("a"), sim.host("b")

            async def main() -> None:
                config = NetworkConfig(keepalive_interval=0)
                na = await Node.bind(host="0.0.0.0", port=4433, config=config, network=a)
                nb = await Node.bind(host="0.0.0.0", port=4433, config=config, network=b)
                conn = await nb.connect(na.node_addr())
                await conn.send(os.urandom(3000))
                incoming = await na.listen().accept()
                await incoming.send(await incoming.recv())
                await conn.recv()
                await nb.close(timeout=0.5)
                await na.close(timeout=0.5)

            sim.run(main(), time_limit=120)
            return sim.trace.hash(), list(sent)

    hash1, packets1 = run()
    hash2, packets2 = run()
    assert hash1 == hash2
    assert len(packets1) > 10
    assert [p[:3] for p in packets1] == [p[:3] for p in packets2]  # times, senders, sizes
    assert packets1 == packets2  # and bytes: the ECDHE shares replay too


def test_generated_keys_replay() -> None:
    def ids(seed: int) -> list[str]:
        with Simulation(seed=seed) as sim:

            async def main() -> list[str]:
                return [str(SecretKey.generate().node_id) for _ in range(2)]

            return sim.run(main())

    assert ids(4) == ids(4) != ids(5)
    assert SecretKey.generate().node_id != SecretKey.generate().node_id  # outside: the OS's CSPRNG


def test_wall_clock_sleep_is_an_error_naming_the_call_and_place() -> None:
    with Simulation(seed=1) as sim:

        async def main() -> None:
            time.sleep(0)  # noqa: ASYNC251 - no wait: allowed
            time.sleep(0.25)  # noqa: ASYNC251 - the bad input under test

        with pytest.raises(WallClockSleep, match=r"time\.sleep\(0\.25\) called inside a simulation at .*"):
            sim.run(main())
        with pytest.raises(WallClockSleep, match=r"test_environment\.py:\d+ in main"):
            sim.run(main())

        async def swallowed() -> str:
            try:
                time.sleep(1)  # noqa: ASYNC251 - the bad input under test
            except SimulationError:
                pass  # as an ASGI server would (a 500 response)
            return "done"

        with pytest.raises(WallClockSleep, match=r"in swallowed"):
            sim.run(swallowed())

        async def fine() -> str:
            return "ok"

        assert sim.run(fine()) == "ok"  # the violation was reported once


def test_starting_a_thread_is_an_error_naming_the_call_and_place() -> None:
    with Simulation(seed=1) as sim:

        async def start_thread() -> None:
            threading.Thread(target=print, name="worker").start()

        with pytest.raises(ThreadForbidden, match=r"thread 'worker' started inside a simulation at .*in start_thread"):
            sim.run(start_thread())

        async def pool() -> None:
            with concurrent.futures.ThreadPoolExecutor(1) as ex:
                ex.submit(print)

        with pytest.raises(ThreadForbidden, match=r"test_environment\.py:\d+ in pool"):
            sim.run(pool())

        async def executor() -> int:  # what the loop runs inline is fine
            return await asyncio.to_thread(lambda: 7)

        assert sim.run(executor()) == 7


def _blocking_calls() -> dict[str, tuple[Any, str]]:
    """Blocking real network I/O as sync code does it: the call, and what the error names."""
    import urllib.request

    import httpx

    return {
        "create_connection": (lambda: socket.create_connection(("127.0.0.1", 9), timeout=1), r"socket\.connect\("),
        "connect_ex": (lambda: socket.socket().connect_ex(("127.0.0.1", 9)), r"socket\.connect_ex\("),
        "urllib": (lambda: urllib.request.urlopen("http://127.0.0.1:9/", timeout=1), r"socket\.connect\("),
        "sync httpx": (lambda: httpx.get("http://example.com/", timeout=1), r"socket\.getaddrinfo\('example\.com'\)"),
        "udp sendto": (
            lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", 9)),
            r"socket\.sendto\(\('127\.0\.0\.1', 9\)\)",
        ),
        "bind": (lambda: socket.socket().bind(("127.0.0.1", 0)), r"socket\.bind\("),
        "gethostbyname": (lambda: socket.gethostbyname("example.com"), r"socket\.gethostbyname\('example\.com'\)"),
    }


@pytest.mark.parametrize("call", list(_blocking_calls()))
def test_blocking_real_network_io_is_an_error_naming_the_call_and_place(call: str) -> None:
    do, names = _blocking_calls()[call]
    with Simulation(seed=1) as sim:

        async def main() -> None:
            do()

        with pytest.raises(RealIOForbidden, match=names + r".* at .*\.py:\d+ in ") as info:
            sim.run(main())
        assert "not allowed inside a simulation" in str(info.value)
        if call != "sync httpx":  # there the innermost frame outside the stdlib is httpcore's
            assert re.search(r"test_environment\.py:\d+ in <lambda>", str(info.value))

        async def swallowed() -> str:
            try:
                do()
            except OSError:
                pass  # as an app would (RealIOForbidden is not an OSError: it is not caught here)
            except RealIOForbidden:
                pass  # as an ASGI server would (a 500)
            return "done"

        with pytest.raises(RealIOForbidden, match="caught by the code under test"):
            sim.run(swallowed())

        async def numeric() -> str:  # a numeric address resolves without I/O: allowed
            return str(socket.getaddrinfo("10.0.0.1", 80)[0][4][0])

        assert sim.run(numeric()) == "10.0.0.1"
    # outside a simulation the real socket functions are back
    assert socket.socket.connect is _socket.socket.connect and socket.getaddrinfo is det._real_resolvers["getaddrinfo"]


def real_class(obj: object) -> str:
    """``datetime.datetime`` / ``datetime.date`` for instances of the real classes (inside a
    simulation this module's ``datetime`` names are the stand-ins, so compare by name)."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def test_datetime_stand_ins_behave_like_the_real_classes() -> None:
    with Simulation(seed=1) as sim:

        async def main() -> None:
            assert dt is det.SimDatetime and datetime.datetime is dt and datetime.date is date is det.SimDate
            made = dt(2030, 5, 6, 7, 8, 9)
            assert real_class(made) == "datetime.datetime" and isinstance(made, dt) and isinstance(made, date)
            assert real_class(date(2030, 1, 1)) == "datetime.date" and not isinstance(made.date(), dt)
            assert issubclass(type(made), dt) and issubclass(dt, date) and issubclass(type(made), date)
            assert real_class(dt.fromisoformat("2030-01-02T03:04:05")) == "datetime.datetime"
            assert real_class(dt.strptime("2030", "%Y")) == "datetime.datetime"
            assert real_class(dt.now()) == "datetime.datetime" and dt.now() - made < datetime.timedelta(0)

            class Event(pydantic.BaseModel):  # a model built during the simulation
                at: dt
                day: date

            event = Event.model_validate({"at": "2026-01-01T00:00:01Z", "day": "2026-01-02"})
            assert real_class(event.at) == "datetime.datetime" and event.day == date(2026, 1, 2)

            class Sub(dt):  # subclasses made inside keep their own type
                pass

            assert type(Sub(2030, 1, 1)) is Sub and type(Sub.now()) is Sub

        sim.run(main())


def test_environment_rejects_bad_sizes_like_os_urandom() -> None:
    with Simulation(seed=1) as sim:

        async def main() -> None:
            with pytest.raises(ValueError, match="negative"):
                os.urandom(-1)
            with pytest.raises(TypeError):
                os.urandom(1.5)  # type: ignore[arg-type]
            assert os.urandom(0) == b""
            with pytest.raises(TypeError):
                time.sleep("1")  # type: ignore[arg-type]  # noqa: ASYNC251

        sim.run(main())
