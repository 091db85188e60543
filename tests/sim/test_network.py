"""The network graph with plain UDP probes: mesh, paths, faults, latency, bandwidth, loss."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest

from asgi_p2p.errors import NetworkError
from asgi_p2p.net import DatagramNetwork, DatagramSocket
from asgi_p2p.sim import HEADER_OVERHEAD, Fault, Simulation
from tests.sim.sim_helpers import probe


def test_host_is_a_datagram_network(sim: Simulation) -> None:
    h = sim.host("alice", addr="10.0.0.1")
    net: DatagramNetwork = h

    async def main() -> None:
        sock = await net.bind("0.0.0.0", 0, lambda d, a: None)
        assert isinstance(sock, DatagramSocket)
        assert sock.local_address == ("10.0.0.1", 49152)
        assert sock.local_addresses() == [("10.0.0.1", 49152)]
        with pytest.raises(NetworkError, match="already in use"):
            await h.bind("0.0.0.0", 49152, lambda d, a: None)
        with pytest.raises(NetworkError, match=r"its address is 10\.0\.0\.1"):
            await h.bind("10.9.9.9", 1, lambda d, a: None)
        sock.close()
        again = await h.bind("10.0.0.1", 49152, lambda d, a: None)
        again.close()

    sim.run(main())


def test_three_node_mesh(sim: Simulation) -> None:
    names = ["a", "b", "c"]
    hosts = [sim.host(n) for n in names]
    for lk in sim.links:
        lk.configure(loss=0.0)
    assert len(sim.links) == 3

    async def main() -> None:
        probes = [await probe(h, 7000) for h in hosts]
        for i, p in enumerate(probes):
            for j, q in enumerate(probes):
                if i != j:
                    p.send(f"{names[i]}->{names[j]}".encode(), q.address)
        for p in probes:
            await p.wait_for(2)
        for i, p in enumerate(probes):
            expected = {f"{names[j]}->{names[i]}".encode() for j in range(3) if j != i}
            assert set(p.payloads()) == expected

    sim.run(main())
    assert sim.stats()["delivered"] == 6
    assert sim.find_path("a", "c") == ["a", "c"]


def test_multi_hop_path() -> None:
    sim = Simulation(seed=3, auto_link=False, loss=0.0)
    for n in ("a", "r1", "r2", "r3", "b"):
        sim.host(n)
    sim.link("a", "r1", latency=0.010)
    sim.link("r1", "r2", latency=0.020)
    sim.link("r2", "b", latency=0.030)
    sim.link("a", "r3", latency=0.050)
    sim.link("r3", "b", latency=0.050)
    assert sim.find_path("a", "b") == ["a", "r1", "r2", "b"]
    assert sim.path_latency("a", "b") == pytest.approx(0.060)

    async def main() -> float:
        pa, pb = await probe(sim.node("a"), 1), await probe(sim.node("b"), 2)  # type: ignore[arg-type]
        pa.send(b"x", pb.address)
        await pb.wait_for(1)
        return pb.received[0][2] - sim.loop.time() + sim.now

    assert sim.run(main()) == pytest.approx(0.060, abs=1e-9)
    # the middle link fails: traffic takes the other route
    sim.link_down("r1", "r2")
    assert sim.find_path("a", "b") == ["a", "r3", "b"]
    sim.link_up("r1", "r2")
    sim.host_down("r2")
    assert sim.find_path("a", "b") == ["a", "r3", "b"]
    sim.host_up("r2")
    sim.unlink("a", "r3")
    sim.unlink("r1", "r2")
    assert sim.find_path("a", "b") is None
    sim.close()


def test_partition_then_heal(sim: Simulation) -> None:
    a, b, c = sim.host("a"), sim.host("b"), sim.host("c")
    for lk in sim.links:
        lk.configure(loss=0.0)

    async def main() -> None:
        pa, pb, pc = await probe(a, 1), await probe(b, 2), await probe(c, 3)
        sim.partition(["a"], ["b", "c"])
        assert sim.find_path("a", "b") is None and sim.find_path("c", "a") is None
        assert sim.find_path("b", "c") == ["b", "c"]
        pa.send(b"lost", pb.address)
        pc.send(b"lost", pa.address)
        pb.send(b"ok", pc.address)
        await asyncio.sleep(1)
        assert pb.received == [] and pa.received == [] and pc.payloads() == [b"ok"]
        assert sim.trace.count("drop:partition") == 2
        sim.heal(["a"], ["b", "c"])
        pa.send(b"after", pb.address)
        await pb.wait_for(1)
        assert pb.payloads() == [b"after"]

    sim.run(main())


def test_one_way_partition(sim: Simulation) -> None:
    a, b = sim.host("a"), sim.host("b")
    sim.link(a, b, loss=0.0)

    async def main() -> None:
        pa, pb = await probe(a, 1), await probe(b, 2)
        sim.partition(a, b, oneway=True)
        assert sim.find_path(a, b) is None and sim.find_path(b, a) == ["b", "a"]
        pa.send(b"a->b", pb.address)
        pb.send(b"b->a", pa.address)
        await asyncio.sleep(1)
        assert pb.received == [] and pa.payloads() == [b"b->a"]
        sim.heal(a, b, oneway=True)
        pa.send(b"a->b", pb.address)
        await pb.wait_for(1)

    sim.run(main())


def test_hold_and_release(sim: Simulation) -> None:
    a, b = sim.host("a"), sim.host("b")
    sim.link(a, b, loss=0.0, latency=0.01)

    async def main() -> None:
        pa, pb = await probe(a, 1), await probe(b, 2)
        sim.hold(a, b)
        for i in range(5):
            pa.send(bytes([i]), pb.address)
        await asyncio.sleep(2)
        assert pb.received == []
        sim.release(a, b)
        await pb.wait_for(5)
        assert pb.payloads() == [bytes([i]) for i in range(5)]
        assert pb.received[0][2] == pytest.approx(sim.loop.time() - sim.now + 2.01, abs=1e-6)

    sim.run(main())


def test_host_down_crash_restart(sim: Simulation) -> None:
    a, b = sim.host("a"), sim.host("b")
    sim.link(a, b, loss=0.0)
    crashed: list[str] = []
    b.on_crash.append(lambda: crashed.append("b"))

    async def main() -> None:
        pa, pb = await probe(a, 1), await probe(b, 2)
        sim.host_down(b)
        pa.send(b"1", pb.address)
        await asyncio.sleep(1)
        assert pb.received == [] and sim.trace.count("drop:host-down") == 1
        sim.host_up(b)
        pa.send(b"2", pb.address)
        await pb.wait_for(1)
        sim.crash(b)
        assert crashed == ["b"] and pb.sock.closed
        sim.restart(b)
        pa.send(b"3", pb.address)
        await asyncio.sleep(1)
        assert sim.trace.count("drop:no-socket") == 1
        pb2 = await probe(b, 2)
        pa.send(b"4", pb2.address)
        await pb2.wait_for(1)

    sim.run(main())


def test_fault_schedule(sim: Simulation) -> None:
    a, b = sim.host("a"), sim.host("b")
    sim.link(a, b, loss=0.0, latency=0.01)
    sim.schedule(
        [
            Fault(1.0, "partition", "a", "b"),
            Fault(2.0, "heal", "a", "b"),
            Fault(3.0, "link_down", "a", "b"),
            Fault(4.0, "link_up", "a", "b"),
        ]
    )

    async def main() -> list[int]:
        pa, pb = await probe(a, 1), await probe(b, 2)
        await asyncio.sleep(0.05)
        for i in range(50):  # one packet every 100 ms for 5 s, between the fault times
            pa.send(bytes([i]), pb.address)
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.1)
        return [p[0] for p in pb.payloads()]

    got = sim.run(main())
    lost = sorted(set(range(50)) - set(got))
    assert lost == list(range(10, 20)) + list(range(30, 40))


@pytest.mark.parametrize("bandwidth", [None, 10e6])
def test_latency_equals_configured_path_latency(bandwidth: float | None) -> None:
    sim = Simulation(seed=5, auto_link=False, loss=0.0)
    for n in ("a", "m", "b"):
        sim.host(n)
    sim.link("a", "m", latency=0.012)
    sim.link("m", "b", latency=0.033, bandwidth=bandwidth)
    size = 1000

    async def main() -> list[float]:
        pa, pb = await probe(sim.node("a"), 1), await probe(sim.node("b"), 2)  # type: ignore[arg-type]
        delays: list[float] = []
        for _ in range(10):
            sent = asyncio.get_running_loop().time()
            pa.send(b"x" * size, pb.address)
            await pb.wait_for(len(delays) + 1)
            delays.append(pb.received[-1][2] - sent)
            await asyncio.sleep(0.5)
        return delays

    delays = sim.run(main())
    configured = sim.path_latency("a", "b")
    assert configured is not None and configured == pytest.approx(0.045)
    packet_time = 0.0 if bandwidth is None else (size + HEADER_OVERHEAD) * 8 / bandwidth
    for d in delays:
        assert configured - 1e-9 <= d <= configured + packet_time + 1e-9
    sim.close()


def test_bandwidth_shapes_bulk_transfer() -> None:
    sim = Simulation(seed=6, loss=0.0)
    a, b = sim.host("a"), sim.host("b")
    rate = 8e6  # 8 Mbit/s = 1 MB/s on the wire
    sim.link(a, b, latency=0.02, bandwidth=rate, queue_bytes=4 * 1024 * 1024)
    payload, count = 1200, 2000

    async def main() -> float:
        pa, pb = await probe(a, 1), await probe(b, 2)
        start = asyncio.get_running_loop().time()
        for _ in range(count):
            pa.send(b"\0" * payload, pb.address)
        await pb.wait_for(count, timeout=60)
        return pb.received[-1][2] - start

    elapsed: float = sim.run(main())
    goodput = count * payload / elapsed
    expected = rate / 8 * payload / (payload + HEADER_OVERHEAD)
    assert abs(goodput - expected) / expected < 0.10
    assert abs(goodput - rate / 8) / (rate / 8) < 0.10
    sim.close()


def test_bandwidth_queue_overflow_drops() -> None:
    sim = Simulation(seed=6, loss=0.0)
    a, b = sim.host("a"), sim.host("b")
    sim.link(a, b, bandwidth=1e6, queue_bytes=20_000)

    async def main() -> int:
        pa, pb = await probe(a, 1), await probe(b, 2)
        for _ in range(100):
            pa.send(b"\0" * 972, pb.address)  # 1000 bytes on the wire
        await asyncio.sleep(5)
        return len(pb.received)

    assert sim.run(main()) == 20
    assert sim.trace.count("drop:queue") == 80
    sim.close()


def test_loss_reorder_duplicate_statistics() -> None:
    sim = Simulation(seed=11)
    a, b = sim.host("a"), sim.host("b")
    lk = sim.link(a, b, latency=0.02, loss=0.10, reorder=0.10, duplicate=0.10, reorder_delay=0.05)
    n = 5000

    async def main() -> list[int]:
        pa, pb = await probe(a, 1), await probe(b, 2)
        for i in range(n):
            pa.send(i.to_bytes(4, "big"), pb.address)
            await asyncio.sleep(0.001)
        await asyncio.sleep(1)
        return [int.from_bytes(p, "big") for p in pb.payloads()]

    got = sim.run(main())
    lost = n - len(set(got))
    dups = len(got) - len(set(got))
    inversions = sum(1 for x, y in itertools.pairwise(got) if y < x)
    assert 0.08 < lost / n < 0.12
    # duplicates of delivered packets: ~10% of the 90% delivered
    assert 0.07 < dups / n < 0.11
    assert 0.04 < inversions / n < 0.15
    stats = lk.stats()["a->b"]
    assert stats["sent"] == n
    assert sim.trace.count("drop:loss") == lost


def test_defaults_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMULATOR_DEFAULT_LATENCY_MS", "7")
    monkeypatch.setenv("SIMULATOR_DEFAULT_PACKET_LOSS", "0.25")
    with Simulation(seed=1) as sim:
        sim.host("a")
        sim.host("b")
        lk = sim.get_link("a", "b")
        assert lk.latency == pytest.approx(0.007) and lk.loss == 0.25
        lk2 = sim.link("a", "b", loss=0.0)
        assert lk2 is lk and lk.loss == 0.0 and lk.latency == pytest.approx(0.007)
    monkeypatch.delenv("SIMULATOR_DEFAULT_LATENCY_MS")
    monkeypatch.delenv("SIMULATOR_DEFAULT_PACKET_LOSS")
    with Simulation(seed=1) as sim:
        sim.host("a")
        sim.host("b")
        lk = sim.get_link("a", "b")
        assert lk.latency == pytest.approx(0.050) and lk.loss == 0.01


def test_link_parameter_validation(sim: Simulation) -> None:
    sim.host("a")
    sim.host("b")
    with pytest.raises(ValueError, match="probability"):
        sim.link("a", "b", loss=1.5)
    with pytest.raises(TypeError, match="unknown link parameter"):
        sim.link("a", "b", latnecy=1)
    with pytest.raises(ValueError, match="already exists"):
        sim.host("a")


def test_trace_export_jsonl(sim: Simulation, tmp_path: Path) -> None:
    a, b = sim.host("a"), sim.host("b")
    sim.link(a, b, loss=0.0)

    async def main() -> None:
        pa, pb = await probe(a, 1), await probe(b, 2)
        pa.send(b"hello", pb.address)
        await pb.wait_for(1)

    sim.run(main())
    path = tmp_path / "trace.jsonl"
    assert sim.trace.export_jsonl(path) == 2
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0] == {"t": 0.0, "kind": "send", "src": f"{a.address}:1", "dst": f"{b.address}:2", "len": 5, "at": "a"}
    assert rows[1]["kind"] == "deliver" and rows[1]["t"] == pytest.approx(0.05)
    assert len(sim.trace.hash()) == 64


def test_fifty_node_scenario() -> None:
    """50 hosts, each sends 5 requests (to 5 others) with retransmission, each gets 5 replies."""
    sim = Simulation(seed=50)  # default 1% loss on every link
    hosts = [sim.host(f"n{i}") for i in range(50)]

    async def main() -> int:
        probes = [await probe(h, 9000, reply_with=b"ack:") for h in hosts]

        async def client(i: int) -> int:
            p = probes[i]
            for k in range(1, 6):
                peer = probes[(i + 7 * k) % 50]
                msg = f"req {i}->{k}".encode()
                for _attempt in range(20):
                    p.send(msg, peer.address)
                    await asyncio.sleep(0.3)
                    if b"ack:" + msg in p.payloads():
                        break
                else:
                    raise AssertionError(f"no reply for {msg!r}")
            return 5

        done = await asyncio.gather(*(client(i) for i in range(50)))
        return sum(done)

    assert sim.run(main(), time_limit=120) == 250
    assert sim.stats()["delivered"] >= 500
    sim.close()
