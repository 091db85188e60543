"""The virtual-time loop: time jumps, deadlock, time limit, livelock, threads, real I/O refused."""

from __future__ import annotations

import asyncio
import re
import socket
import time

import anyio
import anyio.to_thread
import pytest

from asgi_p2p.sim import (
    START_TIME,
    RealIOForbidden,
    Simulation,
    SimulationDeadlock,
    SimulationError,
    SimulationLivelock,
    SimulationTimeLimit,
    VirtualTimeLoop,
)


def test_time_jumps_to_next_timer(sim: Simulation) -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        assert loop.time() == START_TIME
        await asyncio.sleep(3600)
        return loop.time()

    wall = time.perf_counter()
    assert sim.run(main(), time_limit=7200) == START_TIME + 3600
    assert time.perf_counter() - wall < 1.0
    assert sim.now == 3600


def test_timers_fire_in_order_at_exact_times(sim: Simulation) -> None:
    fired: list[tuple[str, float]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for name, delay in (("c", 3.0), ("a", 1.0), ("b", 2.0), ("a2", 1.0)):
            loop.call_later(delay, lambda n=name: fired.append((n, sim.now)))  # type: ignore[misc]
        await asyncio.sleep(5)

    sim.run(main())
    assert fired == [("a", 1.0), ("a2", 1.0), ("b", 2.0), ("c", 3.0)]


def test_deadlock_reports_virtual_time_and_tasks(sim: Simulation) -> None:
    async def stuck_forever(ev: asyncio.Event) -> None:
        await ev.wait()

    async def main() -> None:
        await asyncio.sleep(12.5)
        ev = asyncio.Event()
        helper = asyncio.create_task(stuck_forever(ev), name="helper-task")
        await helper

    with pytest.raises(SimulationDeadlock) as info:
        sim.run(main())
    msg = str(info.value)
    assert "t=12.500000s" in msg
    assert "sim-main" in msg and "helper-task" in msg
    assert "stuck_forever" in msg


def test_time_limit(sim: Simulation) -> None:
    async def main() -> None:
        while True:  # noqa: ASYNC110 - a deliberately endless poller
            await asyncio.sleep(1)

    with pytest.raises(SimulationTimeLimit, match=r"t=30\.000000s"):
        sim.run(main(), time_limit=30)
    assert isinstance(SimulationTimeLimit("x"), TimeoutError)


def test_livelock_is_nudged() -> None:
    """A timer re-armed at ``now`` forever (aioquic's float-rounding loop) still lets time move."""
    sim = Simulation(seed=1)
    calls = 0

    async def main() -> None:
        loop = asyncio.get_running_loop()
        target = loop.time() + 0.5e-5  # reached only through nudges
        done = loop.create_future()

        def timer() -> None:
            nonlocal calls
            calls += 1
            if loop.time() >= target:
                done.set_result(None)
            else:
                loop.call_at(loop.time(), timer)  # "the timer is due now" -- forever

        loop.call_soon(timer)
        await done

    sim.run(main())
    assert sim.loop.livelock_nudges >= 5
    assert calls >= sim.loop.livelock_threshold * 5
    sim.close()


def test_livelock_raise_mode() -> None:
    with Simulation(seed=1, livelock="raise") as sim:

        async def spinner() -> None:
            while True:  # noqa: ASYNC110 - a deliberate busy loop
                await asyncio.sleep(0)

        async def main() -> None:
            await asyncio.sleep(3.25)
            await asyncio.create_task(spinner(), name="busy-poller")

        with pytest.raises(SimulationLivelock) as info:
            sim.run(main())
        msg = str(info.value)
        assert "without virtual time advancing at t=3.250000s" in msg
        assert "busy-poller" in msg and "spinner" in msg and "sim-main" in msg


def test_run_in_executor_and_to_thread_inline(sim: Simulation) -> None:
    def work(x: int) -> int:
        sum(range(200_000))  # real time passes, virtual time does not
        return x * 2

    def boom() -> None:
        raise ValueError("in thread")

    async def main() -> tuple[int, int, float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        a = await loop.run_in_executor(None, work, 4)
        b = await asyncio.to_thread(work, 5)
        with pytest.raises(ValueError, match="in thread"):
            await asyncio.to_thread(boom)
        return a, b, loop.time() - t0

    assert sim.run(main()) == (8, 10, 0.0)


def test_anyio_worker_threads(sim: Simulation) -> None:
    import threading

    seen: list[str] = []

    def work() -> int:
        seen.append(threading.current_thread().name)
        return 42

    async def main() -> int:
        return await anyio.to_thread.run_sync(work)

    assert sim.run(main()) == 42
    assert seen == [threading.main_thread().name]


def test_anyio_outside_simulation_still_uses_threads() -> None:
    import threading

    async def main() -> str:
        return await anyio.to_thread.run_sync(lambda: threading.current_thread().name)

    Simulation(seed=0).close()  # patches applied
    assert asyncio.run(main()) != threading.main_thread().name


@pytest.mark.parametrize(
    "call",
    [
        "create_datagram_endpoint",
        "create_connection",
        "create_server",
        "getaddrinfo",
        "sock_connect",
        "subprocess_exec",
    ],
)
def test_real_io_refused(sim: Simulation, call: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        if call == "create_datagram_endpoint":
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        elif call == "create_connection":
            await asyncio.open_connection("127.0.0.1", 80)
        elif call == "create_server":
            await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        elif call == "getaddrinfo":
            await loop.getaddrinfo("example.com", 443)
        elif call == "sock_connect":
            with socket.socket() as s:
                await loop.sock_connect(s, ("127.0.0.1", 80))
        elif call == "subprocess_exec":
            await asyncio.create_subprocess_exec("true")

    with pytest.raises(RealIOForbidden, match=r"not allowed inside a simulation|runs on no simulated host") as info:
        sim.run(main())
    # the message names the call and where it happened
    assert re.match(rf"{call}\(.*\) .*at .*test_loop\.py:\d+ in main", str(info.value)), str(info.value)


def test_numeric_getaddrinfo_allowed(sim: Simulation) -> None:
    async def main() -> str:
        infos = await asyncio.get_running_loop().getaddrinfo("10.0.0.1", 5000, type=socket.SOCK_DGRAM)
        return str(infos[0][4][0])

    assert sim.run(main()) == "10.0.0.1"


def test_run_refuses_nested_loop(sim: Simulation) -> None:
    async def outer() -> None:
        async def inner() -> None:
            pass

        with pytest.raises(SimulationError, match="another event loop runs in this thread"):
            sim.run(inner())

    asyncio.run(outer())

    async def on_its_own_loop() -> None:
        async def inner() -> None:
            pass

        with pytest.raises(SimulationError, match=r"own running loop .* await the coroutine instead"):
            sim.run(inner())

    sim.run(on_its_own_loop())


def test_state_survives_between_runs(sim: Simulation) -> None:
    async def start() -> asyncio.Task[None]:
        return asyncio.create_task(asyncio.sleep(10))

    task = sim.run(start())

    async def later() -> bool:
        await asyncio.sleep(20)
        return task.done()

    assert sim.run(later()) is True
    assert sim.now == 20


def test_loop_standalone() -> None:
    loop = VirtualTimeLoop()
    try:
        assert loop.run_until_complete(asyncio.sleep(5, result="x")) == "x"
        assert loop.elapsed == 5
    finally:
        loop.close()
