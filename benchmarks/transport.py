"""Transport benchmark (issue 2): asgi-p2p raw messages vs a bare aioquic client/server.

One run prints one markdown table.  For each ``max_datagram_size`` it measures,
for asgi-p2p (``Endpoint`` + ``MessageConnection``) and for bare aioquic
(``aioquic.asyncio.serve``/``connect``, one bidirectional stream, 4-byte
length framing) doing the same work:

* handshake incl. mutual Ed25519 authentication: median wall ms of N connects,
  client CPU ms per connect (median, ``time.process_time``) and server CPU ms
  per connection (server process CPU over the whole phase / N, incl. close);
* 64-byte message round trip: median µs of N;
* bulk: one connection, 100 MiB one way in 64 KiB messages, timed until the
  receiver confirms it has everything (MB/s, 1 MB = 10^6 bytes).

Server and client run in separate processes (real UDP on 127.0.0.1), so each
gets a core.  Both sides use the same certificates (``node_certificate``),
``verify_mode=CERT_NONE`` and 4 MiB kernel socket buffers; the bare aioquic
server requests a client certificate (the private flag asgi-p2p uses), so both
do mutual TLS.  Bare aioquic is aioquic as shipped: importing ``asgi_p2p`` changes
aioquic for the whole process, so its client and server run in processes that never
import it (this script started with ``--bare-child``: certificates handed over as PEM
files, its result as JSON); each checks at the end that aioquic was unpatched and says
so (``# bare aioquic unpatched: ...`` on stderr).

Like with like:

* datagram size: every row runs both implementations at exactly its
  ``max_datagram_size``: asgi-p2p's path probing is turned off
  (``max_probe_datagram_size=0``), and the size its connection used is read back
  and checked after every phase;
* flow control: both get the same stream and connection receive windows and the
  same send buffer (``--windows``, default asgi-p2p's defaults).  aioquic has no
  send buffer limit of its own, so the bare client writes, as asgi-p2p's ``send``
  does, only what keeps at most the send buffer unacknowledged on its stream (read
  from aioquic's private stream state) and waits for acknowledgements to write the
  rest, instead of queueing all 100 MiB at once;
* handshake: asgi-p2p's ``connect`` returns once HANDSHAKE_DONE arrived (the
  server accepted our certificate); the target row times bare aioquic to that
  same point, another row to aioquic's own ``connect`` return (its
  ``HandshakeCompleted``, half a round trip earlier).

Runs are interleaved (``--repeat N``: every row of every implementation once per
round, the order alternating); the table shows medians and every run's value.

Usage::

    .venv/bin/python benchmarks/transport.py              # full run
    .venv/bin/python benchmarks/transport.py --repeat 3   # medians of 3 runs
    .venv/bin/python benchmarks/transport.py --quick      # smoke run
    .venv/bin/python benchmarks/transport.py --phases handshake --repeat 9   # handshakes only
    unshare -n .venv/bin/python benchmarks/transport.py --iroh   # PyPI iroh column: not implemented yet
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import json
import multiprocessing
import os
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

# this folder holds http.py, which would shadow the stdlib `http` (httpx imports it): keep it off
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.events import QuicEvent, StreamDataReceived

# asgi_p2p is imported where the asgi-p2p side needs it, never at the top: the bare aioquic
# side runs this script in processes that must not import it (it patches aioquic on import)
from benchmarks._bare import (
    Credentials,
    bare_config,
    check_unpatched,
    request_client_certificate,
    run_bare_child,
    unpatched,
    write_credentials,
)
from benchmarks._machine import machine_description

if TYPE_CHECKING:
    from asgi_p2p import NetworkConfig

HOST = "127.0.0.1"
SOCKET_BUFFER = 4 * 1024 * 1024  # what asgi_p2p.net.udp sets; the bare sockets get the same
HEADER = struct.Struct("!I")

# First byte of every benchmark message says what the server does with it.
ECHO = 0x01  # send it back
SINK = 0x02  # count its bytes
REPORT = 0x03  # reply with the 8-byte count of sunk bytes, reset the count

RTT_SIZE = 64
BULK_MESSAGE = 65535  # one frame per message in both implementations
MIB = 1024 * 1024


# -- shared helpers ------------------------------------------------------------


def _set_buffers(sock: socket.socket | None) -> None:
    if sock is None:
        return
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        except OSError:
            pass


def _split_frames(buf: bytearray) -> list[bytes]:
    """Remove and return every complete 4-byte-length-framed message at the start of ``buf``."""
    out: list[bytes] = []
    pos = 0
    n = len(buf)
    while n - pos >= 4:
        (size,) = HEADER.unpack_from(buf, pos)
        end = pos + 4 + size
        if end > n:
            break
        out.append(bytes(buf[pos + 4 : end]))
        pos = end
    if pos:
        del buf[:pos]
    return out


class _Sink:
    """Server-side message handling, the same for every implementation."""

    def __init__(self) -> None:
        self.count = 0

    def handle(self, msg: bytes) -> bytes | None:
        kind = msg[0] if msg else 0
        if kind == ECHO:
            return msg
        if kind == SINK:
            self.count += len(msg)
            return None
        if kind == REPORT:
            reply = struct.pack("!Q", self.count)
            self.count = 0
            return reply
        return None


# -- flow-control settings ----------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What bounds a bulk transfer: ``default`` (each implementation as it ships) or ``same``.

    ``same``: both senders hold at most ``send_buffer`` unacknowledged bytes on the stream
    (asgi-p2p's ``stream_send_buffer``; the bare client waits the same way), and neither
    receiver's window binds before that (asgi-p2p's stream window is twice the send buffer,
    since its read-paced credit moves in steps of a quarter of the window, so the sender may
    be short of up to a quarter; aioquic doubles its credit whenever half is used).
    """

    kind: str  # "default" | "same"
    send_buffer: int

    def p2p_config(self, mds: int) -> NetworkConfig:
        from asgi_p2p import NetworkConfig

        extra: dict[str, int] = {}
        if self.kind == "same":
            # fixed sizes: no auto-tuning (a ceiling equal to the start turns it off), so
            # asgi-p2p's send buffer stays at send_buffer, as the bare client's limit does
            conn = max(4 * MIB, 2 * self.send_buffer)
            extra = {
                "stream_send_buffer": self.send_buffer,
                "max_stream_send_buffer": self.send_buffer,
                "stream_receive_window": 2 * self.send_buffer,
                "max_stream_receive_window": 2 * self.send_buffer,
                "connection_receive_window": conn,
                "max_connection_receive_window": conn,
            }
        # probing off: the connection keeps exactly the row's datagram size
        return NetworkConfig.from_env(max_datagram_size=mds, max_probe_datagram_size=0, **extra)

    @property
    def bare_send_buffer(self) -> int | None:
        return self.send_buffer if self.kind == "same" else None

    def describe(self, p2p: NetworkConfig) -> str:
        kib = 1024
        if self.kind == "same":
            return (
                f"same limits: both senders hold at most {self.send_buffer // kib} KiB unacknowledged "
                f"(asgi-p2p's send buffer fixed: no auto-tuning), receive windows do not bind (asgi-p2p "
                f"stream {p2p.stream_receive_window // kib} KiB / connection {p2p.connection_receive_window // kib} "
                "KiB, fixed; aioquic doubles its credit)"
            )
        return (
            f"defaults: asgi-p2p auto-tuned: send buffer {p2p.stream_send_buffer // kib} KiB growing to two "
            f"congestion windows (at most {p2p.max_stream_send_buffer // kib} KiB), stream window "
            f"{p2p.stream_receive_window // kib} KiB growing to at most {p2p.max_stream_receive_window // kib} KiB, "
            f"connection window {p2p.connection_receive_window // kib} KiB growing to at most "
            f"{p2p.max_connection_receive_window // kib} KiB; "
            "aioquic no send limit (all queued at once), 1 MiB stream and connection credit doubled whenever "
            "half is used (unbounded)"
        )


# -- bare aioquic ------------------------------------------------------------------


class BareServerProtocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request_client_certificate(self)
        self._bufs: dict[int, bytearray] = {}
        self._sink = _Sink()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            buf = self._bufs.setdefault(event.stream_id, bytearray())
            buf += event.data
            sent = False
            for msg in _split_frames(buf):
                reply = self._sink.handle(msg)
                if reply is not None:
                    self._quic.send_stream_data(event.stream_id, HEADER.pack(len(reply)) + reply)
                    sent = True
            if sent:
                self.transmit()


class BareClientProtocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.confirmed: asyncio.Future[None] = self._loop.create_future()
        self._stream_id: int | None = None
        self._buf = bytearray()
        self._queue: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        if not self.confirmed.done() and self._quic._handshake_confirmed:
            self.confirmed.set_result(None)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)  # acknowledgements may have freed send buffer

    _drained: asyncio.Future[None] | None = None

    def unacked(self) -> int:
        """Bytes written to our stream and not yet acknowledged (aioquic's private stream state)."""
        stream = self._quic._streams.get(self._stream_id) if self._stream_id is not None else None
        return 0 if stream is None else len(stream.sender._buffer)

    async def send_bounded(self, msg: bytes, limit: int) -> None:
        """Like asgi-p2p's ``send``: write what fits below ``limit`` unacknowledged bytes, wait
        for acknowledgements, write the rest; so at most ``limit`` bytes are unacknowledged,
        as with asgi-p2p's send buffer (a whole message written once fewer than ``limit`` were
        unacknowledged held up to ``limit`` plus a message: 320 KiB instead of 256)."""
        if self._stream_id is None:
            self._stream_id = self._quic.get_next_available_stream_id()
        data = memoryview(HEADER.pack(len(msg)) + msg)
        while data:
            room = limit - self.unacked()
            if room <= 0:
                self._drained = self._loop.create_future()
                await self._drained
                continue
            self._quic.send_stream_data(self._stream_id, bytes(data[:room]))
            data = data[room:]
            self.transmit()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self._buf += event.data
            self._queue.extend(_split_frames(self._buf))
            if self._queue and self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)

    def write(self, msg: bytes) -> None:
        if self._stream_id is None:
            self._stream_id = self._quic.get_next_available_stream_id()
        self._quic.send_stream_data(self._stream_id, HEADER.pack(len(msg)) + msg)

    async def send(self, msg: bytes) -> None:
        self.write(msg)
        self.transmit()

    async def recv(self) -> bytes:
        while not self._queue:
            self._waiter = self._loop.create_future()
            await self._waiter
        return self._queue.popleft()


# -- servers (each in its own process) -------------------------------------------------


def _control_thread(ctl: Connection, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Answer the client process: "cpu" -> this process's CPU seconds, "stop" -> shut down."""
    while True:
        try:
            cmd = ctl.recv()
        except EOFError:
            cmd = "stop"
        if cmd == "cpu":
            ctl.send(time.process_time())
        elif cmd == "stop":
            loop.call_soon_threadsafe(stop.set)
            return


async def _serve_asgi_p2p(mds: int, limits: Limits, ctl: Connection, credentials: Credentials | None) -> None:
    from asgi_p2p import Node, SecretKey

    config = limits.p2p_config(mds)
    ep = await Node.bind(SecretKey.from_seed("bench-server"), host=HOST, config=config)
    sink = _Sink()

    async def handle(mc: Any) -> None:
        async for msg in mc:
            reply = sink.handle(msg)
            if reply is not None:
                await mc.send(reply)

    async def accept_loop() -> None:
        tasks: set[asyncio.Task[None]] = set()
        listener = ep.listen()
        while True:
            mc = await listener.accept()
            task = asyncio.create_task(handle(mc))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    stop = asyncio.Event()
    threading.Thread(target=_control_thread, args=(ctl, asyncio.get_running_loop(), stop), daemon=True).start()
    acceptor = asyncio.create_task(accept_loop())
    ctl.send({"port": ep.local_address[1], "node_id": str(ep.node_id)})
    await stop.wait()
    acceptor.cancel()
    await ep.close()


async def _serve_aioquic(mds: int, limits: Limits, ctl: Connection, credentials: Credentials | None) -> None:
    assert credentials is not None, "the bare server needs its certificate"
    server = await serve(
        HOST,
        0,
        configuration=bare_config(False, credentials, mds),
        create_protocol=BareServerProtocol,
    )
    sock = server._transport.get_extra_info("socket")
    _set_buffers(sock)
    stop = asyncio.Event()
    threading.Thread(target=_control_thread, args=(ctl, asyncio.get_running_loop(), stop), daemon=True).start()
    ctl.send({"port": sock.getsockname()[1]})
    await stop.wait()
    server.close()


def _server_main(
    impl: str, mds: int, limits: Limits, ctl: Connection, profile: str | None, credentials: Credentials | None
) -> None:
    serve_fn = {"asgi-p2p": _serve_asgi_p2p, "aioquic": _serve_aioquic}[impl]
    prof = cProfile.Profile() if profile is not None else None
    if prof is not None:
        prof.enable()
    try:
        asyncio.run(serve_fn(mds, limits, ctl, credentials))
    finally:
        if prof is not None:
            prof.disable()
            prof.dump_stats(str(profile))
    # the last word on the control pipe: the bare server's check that it ran aioquic as shipped
    ctl.send(unpatched() if impl == "aioquic" else "")


class ServerProcess:
    """A benchmark server in its own process; :meth:`cpu` reads its CPU time."""

    def __init__(
        self, impl: str, mds: int, limits: Limits, profile: str | None = None, credentials: Credentials | None = None
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._ctl, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_server_main, args=(impl, mds, limits, child, profile, credentials), daemon=True
        )
        self._proc.start()
        child.close()
        if not self._ctl.poll(120):  # generous: a loaded machine, or a run under valgrind
            self._proc.kill()
            raise RuntimeError(f"{impl} server did not start")
        self.info: dict[str, Any] = self._ctl.recv()
        #: what the server said last, as it stopped (a bare server: its ``unpatched()`` line)
        self.last_word = ""

    def cpu(self) -> float:
        self._ctl.send("cpu")
        return float(self._ctl.recv())

    def stop(self) -> None:
        try:
            self._ctl.send("stop")
            if self._ctl.poll(10):
                self.last_word = str(self._ctl.recv())
        except (OSError, EOFError):
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


# -- clients ------------------------------------------------------------------------------


@dataclass
class Bulk:
    mbps: float = float("nan")
    cpu_ms_per_mib: float = float("nan")  # client + server CPU per MiB moved
    drops: float = float("nan")  # datagrams the kernel dropped at the receiver's socket (buffer full)


@dataclass
class Result:
    handshake_ms: float = float("nan")  # until the implementation's connect returned
    handshake_confirmed_ms: float = float("nan")  # until the client held HANDSHAKE_DONE
    client_cpu_ms: float = float("nan")
    server_cpu_ms: float = float("nan")
    rtt_us: float = float("nan")
    bulk: dict[str, Bulk] = field(default_factory=dict)  # by Limits.kind
    #: datagram sizes asgi-p2p's client connection built (read back after each phase)
    datagram_sizes: set[int] = field(default_factory=set)


@dataclass
class Params:
    handshakes: int
    rtts: int
    bulk_bytes: int
    phases: frozenset[str]
    send_buffer: int

    def limits(self) -> list[Limits]:
        return [Limits("default", self.send_buffer), Limits("same", self.send_buffer)]


def _bulk_messages(total: int) -> tuple[bytes, int]:
    msg = bytes([SINK]) + os.urandom(BULK_MESSAGE - 1)
    return msg, -(-total // BULK_MESSAGE)


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped at the UDP socket bound to ``port`` (receive buffer full)."""
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 12 and int(cols[1].rsplit(":", 1)[1], 16) == port:
                total += int(cols[-1])
    return total


def _bulk_result(got: int, count: int, elapsed: float, cpu_s: float, drops: int) -> Bulk:
    if got != count * BULK_MESSAGE:
        raise RuntimeError(f"receiver confirmed {got} bytes, expected {count * BULK_MESSAGE}")
    return Bulk(got / elapsed / 1e6, cpu_s * 1e3 / (got / MIB), drops)


async def _measure_rtts(
    n: int, send: Callable[[bytes], Awaitable[None]], recv: Callable[[], Awaitable[bytes]]
) -> float:
    msg = bytes([ECHO]) + os.urandom(RTT_SIZE - 1)
    for _ in range(min(50, n)):  # warm-up
        await send(msg)
        await recv()
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        await send(msg)
        reply = await recv()
        samples.append(clock() - t0)
        assert len(reply) == RTT_SIZE
    return statistics.median(samples) * 1e6


async def _handshakes(
    n: int, server: ServerProcess, connect_once: Callable[[], Awaitable[tuple[float, float]]], res: Result
) -> None:
    await connect_once()  # warm-up (imports, caches)
    walls, cpus = [], []
    cpu0 = server.cpu()
    for _ in range(n):
        wall, cpu = await connect_once()
        walls.append(wall)
        cpus.append(cpu)
    res.server_cpu_ms = (server.cpu() - cpu0) / n * 1e3
    res.handshake_ms = statistics.median(walls) * 1e3
    res.client_cpu_ms = statistics.median(cpus) * 1e3


async def run_asgi_p2p(
    server: ServerProcess, mds: int, p: Params, limits: Limits, credentials: Credentials | None
) -> Result:
    from asgi_p2p import Node, NodeAddr, NodeId, SecretKey

    res = Result()
    client = await Node.bind(SecretKey.from_seed("bench-client"), host=HOST, config=limits.p2p_config(mds))
    addr = NodeAddr(NodeId.parse(server.info["node_id"]), [(HOST, server.info["port"])])
    clock, cpu = time.perf_counter, time.process_time

    def note_sizes() -> None:
        res.datagram_sizes.update(c.datagram_size for c in client.connections)

    try:
        if "handshake" in p.phases:

            async def connect_once() -> tuple[float, float]:
                client.forget_session_tickets()  # a full handshake, as bare aioquic's (no resumption)
                c0, t0 = cpu(), clock()
                mc = await client.connect(addr)
                t1, c1 = clock(), cpu()
                note_sizes()
                await mc.close()
                return t1 - t0, c1 - c0

            await _handshakes(p.handshakes, server, connect_once, res)
            res.handshake_confirmed_ms = res.handshake_ms  # connect() returns once HANDSHAKE_DONE arrived

        mc = await client.connect(addr)
        if "rtt" in p.phases:
            res.rtt_us = await _measure_rtts(p.rtts, mc.send, mc.recv)
            note_sizes()

        if "bulk" in p.phases:
            msg, count = _bulk_messages(p.bulk_bytes)
            d0, s0, c0, t0 = udp_drops(server.info["port"]), server.cpu(), cpu(), clock()
            for _ in range(count):
                await mc.send(msg)
            await mc.send(bytes([REPORT]))
            (got,) = struct.unpack("!Q", await mc.recv())
            elapsed, c1, s1 = clock() - t0, cpu(), server.cpu()
            drops = udp_drops(server.info["port"]) - d0
            res.bulk[limits.kind] = _bulk_result(got, count, elapsed, (c1 - c0) + (s1 - s0), drops)
            note_sizes()
        await mc.close()
    finally:
        await client.close()
    if res.datagram_sizes - {mds}:
        raise RuntimeError(f"asgi-p2p used datagram sizes {sorted(res.datagram_sizes)}, not {mds}")
    return res


async def run_aioquic(
    server: ServerProcess, mds: int, p: Params, limits: Limits, credentials: Credentials | None
) -> Result:
    assert credentials is not None, "the bare client needs its certificate"
    res = Result()
    config = bare_config(True, credentials, mds)
    port = server.info["port"]
    clock, cpu = time.perf_counter, time.process_time

    if "handshake" in p.phases:
        confirmed: list[float] = []

        async def connect_once() -> tuple[float, float]:
            c0, t0 = cpu(), clock()
            async with connect(HOST, port, configuration=config, create_protocol=BareClientProtocol) as proto:
                t1 = clock()
                assert isinstance(proto, BareClientProtocol)
                await proto.confirmed
                confirmed.append(clock() - t0)
                c1 = cpu()  # to the point asgi-p2p's connect returns at
            return t1 - t0, c1 - c0

        await _handshakes(p.handshakes, server, connect_once, res)
        res.handshake_confirmed_ms = statistics.median(confirmed[1:]) * 1e3

    async with connect(HOST, port, configuration=config, create_protocol=BareClientProtocol) as proto:
        assert isinstance(proto, BareClientProtocol)
        _set_buffers(proto._transport.get_extra_info("socket"))
        if "rtt" in p.phases:
            res.rtt_us = await _measure_rtts(p.rtts, proto.send, proto.recv)

        if "bulk" in p.phases:
            msg, count = _bulk_messages(p.bulk_bytes)
            bound = limits.bare_send_buffer
            d0, s0, c0, t0 = udp_drops(port), server.cpu(), cpu(), clock()
            for _ in range(count):
                if bound is None:
                    proto.write(msg)  # aioquic buffers without limit: write it all, let acks clock it out
                else:
                    await proto.send_bounded(msg, bound)
            await proto.send(bytes([REPORT]))
            (got,) = struct.unpack("!Q", await proto.recv())
            elapsed, c1, s1 = clock() - t0, cpu(), server.cpu()
            res.bulk[limits.kind] = _bulk_result(got, count, elapsed, (c1 - c0) + (s1 - s0), udp_drops(port) - d0)
    return res


# -- optional: PyPI iroh ------------------------------------------------------------------------


def iroh_refusal() -> str | None:
    """Why the iroh column cannot run here (None if it can)."""
    try:
        import iroh  # noqa: F401
    except ImportError:
        return "the PyPI `iroh` package is not installed in this environment"
    try:
        if os.readlink("/proc/self/ns/net") == os.readlink("/proc/1/ns/net"):
            return (
                "not in a separate network namespace: iroh's port mapper sends UPnP/SSDP multicast on any "
                "machine with a default route; run under `unshare -n` (the script brings `lo` up)"
            )
    except OSError:
        pass
    try:
        routes = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        routes = []
    if any(line.split()[1] == "00000000" for line in routes if len(line.split()) > 1):
        return "this network namespace has a default route; run under `unshare -n`"
    return "the iroh column is not implemented yet (the check above is what it will require)"


# -- driver --------------------------------------------------------------------------------------


RUNNERS: dict[str, Callable[[ServerProcess, int, Params, Limits, Credentials | None], Awaitable[Result]]] = {
    "asgi-p2p": run_asgi_p2p,
    "aioquic": run_aioquic,
}


@dataclass(frozen=True)
class BareCredentials:
    """The bare server's and client's certificates (the same node certificates asgi-p2p's use) as PEM files."""

    server: Credentials
    client: Credentials

    @classmethod
    def write(cls, directory: str) -> BareCredentials:
        from asgi_p2p import SecretKey
        from asgi_p2p.endpoint.tls import node_certificate

        def one(seed: str) -> Credentials:
            key = SecretKey.from_seed(seed)
            return write_credentials(node_certificate(key), key.private_key, directory, seed)

        return cls(one("bench-server"), one("bench-client"))


def run_one(impl: str, mds: int, p: Params, profile: str | None = None, bare: BareCredentials | None = None) -> Result:
    """One run of every phase: a server with each implementation's defaults (handshakes, round
    trips, bulk with default limits), then one with the same limits on both (bulk).

    Bare aioquic (``bare`` holds its certificates) runs in a child process that never imports
    asgi_p2p: this script with ``--bare-child``.
    """
    if impl == "aioquic":
        assert bare is not None, "bare aioquic needs its certificates"
        return _run_bare_child(mds, p, profile, bare)
    return _run_one(impl, mds, p, profile, None, [])


def _run_one(
    impl: str, mds: int, p: Params, profile: str | None, credentials: BareCredentials | None, checks: list[str]
) -> Result:
    """As :func:`run_one`, in this process; a bare server's ``unpatched()`` line goes to ``checks``."""
    res = Result()
    for limits in p.limits():
        phases = p.phases if limits.kind == "default" else p.phases & {"bulk"}
        if not phases:
            continue
        prefix = f"{profile}.{impl}.{mds}.{limits.kind}" if profile is not None else None
        server = ServerProcess(
            impl,
            mds,
            limits,
            profile=f"{prefix}.server.prof" if prefix else None,
            credentials=credentials.server if credentials is not None else None,
        )
        prof = cProfile.Profile() if prefix else None
        try:
            if prof is not None:
                prof.enable()
            client_credentials = credentials.client if credentials is not None else None
            part = asyncio.run(
                RUNNERS[impl](server, mds, dataclasses.replace(p, phases=phases), limits, client_credentials)
            )
        finally:
            if prof is not None:
                prof.disable()
                prof.dump_stats(f"{prefix}.client.prof")
            server.stop()
        if impl == "aioquic":
            checks.append(check_unpatched(server.last_word, "the bare aioquic server"))
        bulk, sizes = {**res.bulk, **part.bulk}, res.datagram_sizes | part.datagram_sizes
        if limits.kind == "default":
            res = part
        res.bulk, res.datagram_sizes = bulk, sizes
    return res


def _run_bare_child(mds: int, p: Params, profile: str | None, bare: BareCredentials) -> Result:
    """Bare aioquic's run in a fresh process that never imports asgi_p2p (``--bare-child``)."""
    job = {
        "mds": mds,
        "params": {**dataclasses.asdict(p), "phases": sorted(p.phases)},
        "profile": profile,
        "credentials": dataclasses.asdict(bare),
    }
    proc = run_bare_child(__file__, "--bare-child", job)
    for line in proc.stderr.splitlines():  # the client's and the server's check
        print(f"# {line}", file=sys.stderr, flush=True)
    check_unpatched(proc.stderr, "the bare aioquic child")
    data = json.loads(proc.stdout)
    bulk = {kind: Bulk(**b) for kind, b in data.pop("bulk").items()}
    return Result(**{**data, "bulk": bulk, "datagram_sizes": set(data["datagram_sizes"])})


def _bare_child(job_json: str) -> int:
    """``--bare-child JOB``: run bare aioquic's phases, print the result as JSON on stdout."""
    job = json.loads(job_json)
    params = job["params"]
    p = Params(**{**params, "phases": frozenset(params["phases"])})
    creds = job["credentials"]
    bare = BareCredentials(Credentials(**creds["server"]), Credentials(**creds["client"]))
    servers: list[str] = []
    res = _run_one("aioquic", job["mds"], p, job["profile"], bare, servers)
    print(f"{unpatched()} (the client process and its {len(servers)} server processes)", file=sys.stderr)
    print(json.dumps({**dataclasses.asdict(res), "datagram_sizes": sorted(res.datagram_sizes)}))
    return 0


def _median(values: list[float]) -> float:
    vals = [v for v in values if v == v]  # drop NaN
    return statistics.median(vals) if vals else float("nan")


def _fmt(v: float, digits: int) -> str:
    return "n/a" if v != v else f"{v:,.{digits}f}"


def _value(r: Result, attr: str) -> float:
    if attr.startswith("bulk."):
        _, kind, name = attr.split(".")
        b = r.bulk.get(kind)
        return float("nan") if b is None else float(getattr(b, name))
    return float(getattr(r, attr))


def render_table(results: dict[tuple[str, int], list[Result]], sizes: list[int], p: Params) -> str:
    """Medians, every run's value, the ratio of the medians and the per-run ratios (runs paired by round)."""
    head = [
        "metric",
        "max_datagram_size",
        "asgi-p2p: median (runs)",
        "aioquic: median (runs)",
        "asgi-p2p / aioquic",
        "per-run ratio: median (min-max)",
        "target",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(metric: str, mds: int, attr: str, digits: int, target: str = "", *, check: str = "") -> None:
        a_runs = [_value(r, attr) for r in results.get(("asgi-p2p", mds), [])]
        b_runs = [_value(r, attr) for r in results.get(("aioquic", mds), [])]
        if all(v != v for v in a_runs + b_runs):
            return  # phase not run
        a, b = _median(a_runs), _median(b_runs)
        ratio = a / b if a == a and b == b and b else float("nan")
        per_run = [x / y for x, y in zip(a_runs, b_runs, strict=False) if x == x and y == y and y]
        verdict = ""
        if check and per_run:
            # judged on the paired (same-round) ratios, which a drifting machine load disturbs
            # less than the ratio of two medians; how many runs met it shows the spread
            limit = float(check[2:])

            def meets(x: float) -> bool:
                return x <= limit if check.startswith("<=") else x >= limit

            ok = meets(statistics.median(per_run))
            verdict = f" {'met' if ok else '**missed**'} ({sum(map(meets, per_run))} of {len(per_run)} runs)"

        def cell(v: float, runs: list[float]) -> str:
            if not runs:
                return "n/a"
            return f"{_fmt(v, digits)} ({', '.join(_fmt(x, digits) for x in runs)})"

        spread = f"{statistics.median(per_run):.2f}x ({min(per_run):.2f}-{max(per_run):.2f})" if per_run else "n/a"
        ratio_text = "n/a" if ratio != ratio else f"{ratio:.2f}x"
        cells = [metric, str(mds), cell(a, a_runs), cell(b, b_runs), ratio_text, spread, target + verdict]
        lines.append("| " + " | ".join(cells) + " |")

    mib = f"{p.bulk_bytes / MIB:g} MiB"
    for mds in sizes:
        row(
            f"handshake incl. mutual auth, wall ms until the client holds HANDSHAKE_DONE (median of {p.handshakes})",
            mds,
            "handshake_confirmed_ms",
            2,
            "≤ 1.2x",
            check="<=1.2",
        )
        row(
            "handshake, wall ms until connect returns (aioquic: at its HandshakeCompleted, before HANDSHAKE_DONE)",
            mds,
            "handshake_ms",
            2,
        )
        row(
            "handshake, client CPU ms per connect, until HANDSHAKE_DONE (median)",
            mds,
            "client_cpu_ms",
            2,
            "≤ 1.2x",
            check="<=1.2",
        )
        row("handshake, server CPU ms per connection (incl. close)", mds, "server_cpu_ms", 2, "≤ 1.2x", check="<=1.2")
        row(f"64 B message round trip, µs (median of {p.rtts})", mds, "rtt_us", 0)
        row(f"bulk {mib} one way, one connection, MB/s, same limits", mds, "bulk.same.mbps", 1, "≥ 0.9x", check=">=0.9")
        row("bulk, same limits: CPU ms per MiB (client + server)", mds, "bulk.same.cpu_ms_per_mib", 2)
        row(f"bulk {mib} one way, MB/s, each with its defaults", mds, "bulk.default.mbps", 1)
        row("bulk, defaults: CPU ms per MiB (client + server)", mds, "bulk.default.cpu_ms_per_mib", 2)
        row("bulk, same limits: datagrams dropped by the receiver's socket buffer", mds, "bulk.same.drops", 0)
        row("bulk, defaults: datagrams dropped by the receiver's socket buffer", mds, "bulk.default.drops", 0)
    return "\n".join(lines)


def describe_limits(p: Params) -> list[str]:
    """What bounds each bulk row, in words (for the lines above the table)."""
    mds = 1200
    lines = [f"- bulk, {limits.describe(limits.p2p_config(mds))}" for limits in p.limits()]
    cfg = p.limits()[0].p2p_config(mds)
    lines.append(
        "- congestion control differs (each as it ships, in every row): aioquic New Reno, its slow start "
        "ended by its RTT monitor or a loss, a 10-packet initial window, its own pacer; asgi-p2p "
        f"{cfg.congestion_control} with HyStart++, a {cfg.initial_congestion_window}-packet initial window "
        "(packets counted at most 1472 bytes), the pacer holding a whole burst at any rate, and an ACK due "
        "within half the loop's timer resolution sent at once (the early ACK)"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 handshakes, 200 round trips, 10 MiB bulk")
    ap.add_argument("--handshakes", type=int, help="connects per measurement (default 50; --quick 10)")
    ap.add_argument("--rtts", type=int, help="64 B round trips per measurement (default 1000; --quick 200)")
    ap.add_argument("--bulk-mib", type=float, help="bulk transfer size in MiB (default 100; --quick 10)")
    ap.add_argument(
        "--datagram-sizes", default="1200,16000", help="comma-separated max_datagram_size values (default 1200,16000)"
    )
    ap.add_argument(
        "--phases",
        default="handshake,rtt,bulk",
        help="comma-separated phases to run: handshake, rtt, bulk (default all)",
    )
    ap.add_argument(
        "--send-buffer",
        type=int,
        default=256 * 1024,
        help="bytes either sender may hold unacknowledged in the same-limits bulk rows (default 262144)",
    )
    ap.add_argument("--repeat", type=int, default=1, help="interleaved runs; cells show medians and every run")
    ap.add_argument("--only", choices=["asgi-p2p", "aioquic"], help="measure one implementation only (no ratios)")
    ap.add_argument(
        "--profile",
        metavar="PREFIX",
        help="cProfile the client and the server process of every run, to "
        "PREFIX.<impl>.<size>.<limits>.{client,server}.prof (the last run's; slower under the profiler)",
    )
    ap.add_argument(
        "--iroh",
        action="store_true",
        help="PyPI iroh column (needs iroh importable and `unshare -n`; not implemented yet: exits 2 saying why)",
    )
    ap.add_argument("--bare-child", metavar="JOB", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bare_child is not None:
        return _bare_child(args.bare_child)

    phases = frozenset(x.strip() for x in args.phases.split(",") if x.strip())
    unknown = phases - {"handshake", "rtt", "bulk"}
    if unknown or not phases:
        ap.error(f"--phases: unknown phase(s) {sorted(unknown)}; choose from handshake, rtt, bulk")
    p = Params(
        handshakes=args.handshakes or (10 if args.quick else 50),
        rtts=args.rtts or (200 if args.quick else 1000),
        bulk_bytes=int((args.bulk_mib or (10 if args.quick else 100)) * MIB),
        phases=phases,
        send_buffer=args.send_buffer,
    )
    sizes = [int(s) for s in args.datagram_sizes.split(",") if s.strip()]
    if args.iroh:
        why = iroh_refusal()
        if why is not None:
            print(f"--iroh refused: {why}", file=sys.stderr)
            return 2

    machine = machine_description()
    results: dict[tuple[str, int], list[Result]] = {}
    impls = ["asgi-p2p", "aioquic"] if args.only is None else [args.only]
    with tempfile.TemporaryDirectory() as cert_dir:
        bare = BareCredentials.write(cert_dir)
        for rep in range(args.repeat):
            for mds in sizes:
                for impl in impls if rep % 2 == 0 else list(reversed(impls)):
                    t0 = time.perf_counter()
                    r = run_one(impl, mds, p, args.profile, bare)
                    results.setdefault((impl, mds), []).append(r)
                    bulk = ", ".join(
                        f"bulk {kind} {b.mbps:.1f} MB/s ({b.cpu_ms_per_mib:.2f} CPU ms/MiB, {b.drops:.0f} dropped)"
                        for kind, b in r.bulk.items()
                    )
                    print(
                        f"# run {rep + 1}/{args.repeat} {impl} mds={mds}: handshake {r.handshake_ms:.2f} ms "
                        f"(confirmed {r.handshake_confirmed_ms:.2f}), cpu {r.client_cpu_ms:.2f}+"
                        f"{r.server_cpu_ms:.2f} ms, rtt {r.rtt_us:.0f} µs, {bulk} [{time.perf_counter() - t0:.1f} s]",
                        file=sys.stderr,
                        flush=True,
                    )

    print(f"Machine: {machine}")
    print(
        f"Loopback UDP, server and client in separate processes. Runs: {args.repeat}, interleaved "
        "(each round runs both implementations, the order alternating); each cell is the median "
        "across runs, every run's value in brackets; targets are judged on the median of the "
        "per-run ratios (same round)"
    )
    if "bulk" in phases:
        print("\n".join(describe_limits(p)))
    print()
    print(render_table(results, sizes, p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
