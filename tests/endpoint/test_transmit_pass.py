"""An endpoint's deferred transmits run in one callback per loop pass, each after its own tasks.

``PeerConnection.schedule_transmit`` joins the endpoint's :class:`TransmitPass`: one loop
callback transmits every connection that asked (not one callback per connection), and a
connection that asked after that callback was queued (a later datagram of the same read
batch, whose tasks are queued behind it) goes in the next one, so a request's response
still leaves in the transmit that carries its ACK.  The unit tests drive the pass with
stand-in connections on a real loop (no I/O); the last one serves 20 peers on the simulator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import httpx
import pytest

from asgi_p2p import NetworkConfig, Node, NodeAddr
from asgi_p2p.endpoint.connection import PeerConnection, TransmitPass
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.sim import SimSocket, Simulation


class _Loop:
    """The running loop, with a clock the test moves (call_soon counts the pass's runs)."""

    def __init__(self) -> None:
        self.real = asyncio.get_running_loop()
        self.now = 100.0
        self.runs = 0

    def time(self) -> float:
        return self.now

    def call_soon(self, callback: Callable[[], object]) -> asyncio.Handle:
        self.runs += 1
        return self.real.call_soon(callback)


class _Conn:
    """What the pass touches of a connection: loop, closed, transmit, and its slot."""

    def __init__(self, loop: _Loop, name: str, log: list[str]) -> None:
        self.loop, self.name, self.log = loop, name, log
        self.closed = False
        self.fail = False
        self._tx_slot = 0
        self._tx_since = 0.0

    def transmit(self) -> None:
        self.log.append(f"transmit {self.name}")
        if self.fail:
            raise RuntimeError("boom")

    def __repr__(self) -> str:
        return f"<conn {self.name}>"


def _conns(n: int) -> tuple[_Loop, TransmitPass, list[Any], list[str]]:
    loop = _Loop()
    log: list[str] = []
    return loop, TransmitPass(), [_Conn(loop, str(i), log) for i in range(n)], log


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def _ask(tp: TransmitPass, conn: Any) -> None:
    tp.ask(cast(PeerConnection, conn))


async def test_a_read_batch_of_ten_connections_costs_two_runs_each_transmit_after_its_tasks() -> None:
    loop, tp, conns, log = _conns(10)

    def read_batch() -> None:
        # like a socket's read callback: each datagram wakes a task, then its connection asks
        for conn in conns:
            loop.real.call_soon(log.append, f"task {conn.name}")
            _ask(tp, conn)

    loop.real.call_soon(read_batch)
    await _settle()
    assert loop.runs == 2  # not one callback per connection
    assert sorted(log) == sorted([f"task {c.name}" for c in conns] + [f"transmit {c.name}" for c in conns])
    for conn in conns:
        assert log.index(f"task {conn.name}") < log.index(f"transmit {conn.name}")
    # the first connection's run was queued before the others' tasks: it goes alone; the rest together
    assert log[:2] == ["task 0", "transmit 0"]
    assert log[-9:] == [f"transmit {i}" for i in range(1, 10)]


async def test_under_steady_load_one_run_per_loop_iteration() -> None:
    loop, tp, conns, log = _conns(40)
    iterations = 8

    def read_batch(k: int) -> None:
        for conn in conns[k * 5 : k * 5 + 5]:
            loop.real.call_soon(log.append, f"task {conn.name}")
            _ask(tp, conn)
        if k + 1 < iterations:
            loop.real.call_soon(read_batch, k + 1)  # the next loop iteration's read

    loop.real.call_soon(read_batch, 0)
    await _settle()
    assert sorted(entry for entry in log if entry.startswith("transmit")) == sorted(f"transmit {c.name}" for c in conns)
    assert loop.runs == iterations + 1  # one run per iteration, 40 transmits
    for conn in conns:
        assert log.index(f"task {conn.name}") < log.index(f"transmit {conn.name}")


async def test_a_connection_asking_again_while_pending_transmits_once() -> None:
    loop, tp, (a, b), log = _conns(2)
    for _ in range(3):
        _ask(tp, a)
        _ask(tp, b)  # asked after a's run was queued: in the run after it
    await _settle()
    assert log == ["transmit 0", "transmit 1"] and loop.runs == 2
    _ask(tp, a)  # idle again: a new run
    await _settle()
    assert log[2:] == ["transmit 0"] and loop.runs == 3


async def test_behind_moves_a_pending_transmit_after_the_callbacks_queued_since() -> None:
    loop, tp, (a, b), log = _conns(2)
    _ask(tp, a)
    _ask(tp, b)  # b: in the run after
    loop.real.call_soon(log.append, "task a")  # a request's application, created after a asked
    tp.behind(cast(PeerConnection, a))
    tp.behind(cast(PeerConnection, b))  # already behind the run queued: nothing changes
    await _settle()
    assert log == ["task a", "transmit 1", "transmit 0"] and loop.runs == 2
    tp.behind(cast(PeerConnection, a))  # not pending: nothing to do
    await _settle()
    assert len(log) == 3 and loop.runs == 2


async def test_a_closed_connection_in_the_pass_is_skipped() -> None:
    _, tp, (a, b, c), log = _conns(3)
    _ask(tp, a)
    _ask(tp, b)
    _ask(tp, c)
    a.closed = True  # closed after it asked (its transmit would send nothing anyway)
    b.closed = True
    await _settle()
    assert log == ["transmit 2"]
    b.closed = False  # its slot was freed: it can join again
    _ask(tp, b)
    await _settle()
    assert log == ["transmit 2", "transmit 1"]


async def test_a_failing_transmit_does_not_hold_back_the_others(caplog: pytest.LogCaptureFixture) -> None:
    _, tp, (a, b), log = _conns(2)
    a.fail = True
    _ask(tp, a)
    _ask(tp, b)
    await _settle()
    assert log == ["transmit 0", "transmit 1"]
    assert "transmit of <conn 0> failed" in caplog.text
    a.fail = False
    _ask(tp, a)  # the pass is usable afterwards
    await _settle()
    assert log[2:] == ["transmit 0"]


async def test_a_failing_release_of_the_held_datagrams_does_not_stop_later_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, tp, (a, b), log = _conns(2)

    class _Sock:
        def __init__(self) -> None:
            self.fail = True

        def hold(self) -> None:
            log.append("hold")

        def release(self) -> None:
            log.append("release")
            if self.fail:
                raise TypeError("a socket that cannot send")

    sock = _Sock()
    tp.use_socket(sock)

    def ask_b_behind() -> None:  # a member asking after the run was queued: it goes in the next run
        _ask(tp, b)

    _ask(tp, a)
    asyncio.get_running_loop().call_soon(ask_b_behind)
    await _settle()
    # the first run's release failed: the run after it (b) still came, and so do later ones
    assert log == ["hold", "transmit 0", "release", "hold", "transmit 1", "release"]
    assert "sending a transmit run's datagrams failed" in caplog.text
    sock.fail = False
    _ask(tp, a)
    await _settle()
    assert log[6:] == ["hold", "transmit 0", "release"]


async def test_a_pending_transmit_leaves_early_after_2_ms_of_a_busy_loop() -> None:
    loop, tp, (a, b), log = _conns(2)

    def busy() -> None:
        _ask(tp, a)
        _ask(tp, b)
        loop.now += 0.0019  # CPU work of a burst, under 2 ms: still deferred
        _ask(tp, a)
        assert log == []
        loop.now += 0.0002  # 2.1 ms since a asked: what is ready leaves now
        _ask(tp, a)
        _ask(tp, b)
        assert log == ["transmit 0", "transmit 1"]
        _ask(tp, a)  # the 2 ms start again from the early send
        assert log == ["transmit 0", "transmit 1"]

    loop.real.call_soon(busy)
    await _settle()
    # both stayed pending: the run sends what was produced after the early send
    assert log == ["transmit 0", "transmit 1", "transmit 0", "transmit 1"] and loop.runs == 2


async def small_app(scope: dict[str, object], receive: object, send: object) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


def test_twenty_peers_requesting_at_once_each_get_the_response_in_the_transmit_with_the_ack(sim: Simulation) -> None:
    """20 peers send a request at the same instant: the server's pass runs a few times, not
    20, and each connection's first transmit after its request carries the response (with
    the request's ACK): one datagram per request."""
    peers = 20
    config = NetworkConfig(keepalive_interval=0)

    async def main() -> None:
        server_host = sim.host("server")
        node = await Node.bind(host="0.0.0.0", port=4433, config=config, network=server_host)
        server = H3Server(small_app, node)  # type: ignore[arg-type]
        await server.startup()
        clients: list[tuple[Node, httpx.AsyncClient]] = []
        for i in range(peers):
            host = sim.host(f"client{i}")
            sim.link(server_host, host, latency=0.02, loss=0.0)
            client_node = await Node.bind(host="0.0.0.0", config=config, network=host)
            client = httpx.AsyncClient(
                transport=P2PTransport(client_node, addrs=[node.node_addr()]), base_url=f"https://{node.node_id}"
            )
            assert (await client.get("/")).text == "ok"  # connected
            clients.append((client_node, client))
        await asyncio.sleep(1)  # the handshakes' last packets are out
        conns = node.all_connections
        assert len(conns) == peers
        sent_per_call: dict[PeerConnection, list[int]] = {c: [] for c in conns}
        for conn in conns:
            transmit = conn.transmit

            def counted(conn: PeerConnection = conn, transmit: Callable[[], None] = transmit) -> None:
                before = conn.datagrams_sent
                if run:
                    server_runs.add(run)
                transmit()
                sent_per_call[conn].append(conn.datagrams_sent - before)

            conn.transmit = counted  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        real_call_soon = loop.call_soon
        run = 0  # the transmit pass run under way (numbered), 0: none
        server_runs: set[int] = set()  # the runs that transmitted the server's connections
        queued = 0

        def call_soon(callback: Callable[..., object], *args: Any, **kwargs: Any) -> asyncio.Handle:
            nonlocal queued
            if not isinstance(getattr(callback, "__self__", None), TransmitPass):
                return real_call_soon(callback, *args, **kwargs)
            queued += 1
            number = queued

            def numbered() -> None:
                nonlocal run
                run = number
                try:
                    callback()
                finally:
                    run = 0

            return real_call_soon(numbered)

        sock = node.router.socket
        assert isinstance(sock, SimSocket)
        releases, released = sock.batch_sends, sock.batch_datagrams
        loop.call_soon = call_soon  # type: ignore[method-assign]
        try:
            responses = await asyncio.gather(*(client.get("/") for _, client in clients))
        finally:
            del loop.call_soon
        assert [r.text for r in responses] == ["ok"] * peers
        for conn, sent in sent_per_call.items():
            assert sent[0] == 1, f"{conn}: the first transmit after the request sent {sent}"
            assert sum(sent) == 1  # the response carries the ACK of the request
        # the 20 requests arrived at one instant: the server answered them in two runs (the
        # first connection's, queued before the others' tasks, and the rest), not 20
        assert len(server_runs) == 2, server_runs
        # and the socket held each run's datagrams and sent them together at its end: 1, then 19
        assert (sock.batch_sends - releases, sock.batch_datagrams - released) == (2, peers)
        for client_node, client in clients:
            await client.aclose()
            await client_node.close()
        await server.shutdown()
        await node.close()

    sim.run(main())


async def test_an_accepted_connections_first_flight_leaves_at_once_without_a_transmit_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server answers a client's first Initial within the read that brought it: no transmit
    pass is queued for it (one would cost a loop iteration and find nothing to send)."""
    asked: list[tuple[bool, int, int]] = []
    real_ask = TransmitPass.ask

    def ask(self: TransmitPass, conn: PeerConnection) -> None:
        asked.append((conn.is_client, conn.datagrams_received, conn.datagrams_sent))
        real_ask(self, conn)

    monkeypatch.setattr(TransmitPass, "ask", ask)
    config = NetworkConfig(max_probe_datagram_size=0)
    server = await Node.bind(host="127.0.0.1", config=config)
    client = await Node.bind(host="127.0.0.1", config=config)
    accepted = asyncio.ensure_future(server.listen().accept())
    try:
        mc = await asyncio.wait_for(client.connect(NodeAddr(server.node_id, [server.local_address])), 10)
        await asyncio.wait_for(accepted, 10)
        await mc.send(b"ping")  # the connection works
        assert await asyncio.wait_for(accepted.result().recv(), 10) == b"ping"
        server_conns = [c for c in server.connections]
        assert server_conns and server_conns[0].datagrams_sent >= 1
        # the server's first datagram: answered right away (datagrams sent), never queued
        assert not [a for a in asked if not a[0] and a[1] == 1], asked
    finally:
        accepted.cancel()
        await client.close()
        await server.close()


async def test_a_connection_draining_after_its_peers_close_queues_no_transmit_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The peer's CONNECTION_CLOSE puts a connection in its draining period, where QUIC sends
    nothing: no transmit pass is queued for it (one would cost a loop callback and find nothing
    to send), and the connection still ends when the period is over."""
    asked: list[tuple[bool, bool]] = []
    real_ask = TransmitPass.ask

    def ask(self: TransmitPass, conn: PeerConnection) -> None:
        asked.append((conn.is_client, conn.closing))
        real_ask(self, conn)

    monkeypatch.setattr(TransmitPass, "ask", ask)
    config = NetworkConfig(max_probe_datagram_size=0)
    server = await Node.bind(host="127.0.0.1", config=config)
    client = await Node.bind(host="127.0.0.1", config=config)
    try:
        mc = await asyncio.wait_for(client.connect(NodeAddr(server.node_id, [server.local_address])), 10)
        accepted = await asyncio.wait_for(server.listen().accept(), 10)
        conn = accepted.peer_connection
        received = conn.datagrams_received
        await mc.close()
        await asyncio.wait_for(conn.wait_closed(), 10)  # its draining period ended
        assert conn.datagrams_received > received  # the client's CONNECTION_CLOSE came
        assert conn.close_error is not None and "closed by peer" in str(conn.close_error)
        assert [a for a in asked if not a[0]], asked  # the server asked before (it works)
        assert not [a for a in asked if not a[0] and a[1]], asked
    finally:
        await client.close()
        await server.close()
