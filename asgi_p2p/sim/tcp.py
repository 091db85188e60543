"""Simulated TCP: reliable byte streams over the simulated network graph.

Inside a simulation, ``asyncio.open_connection`` / ``asyncio.start_server`` and
``loop.create_connection`` / ``loop.create_server`` land here (the virtual-time loop
hands them to :class:`TcpNetwork`).  The model is a reliable stream, not a TCP stack:

* **Where code runs.**  The loop is shared by every simulated host, so each call needs
  to know its host: :data:`current_host`, a context variable, names it.  Code started by
  :meth:`Simulation.serve`, by a connection or datagram delivered to a host, or inside
  ``with sim.on(host):`` runs on that host; ``host.open_connection(...)`` and friends
  name it explicitly.
* **Handshake.**  SYN, SYN-ACK, ACK: the client's ``connect`` returns after one round
  trip, the server accepts after one and a half.  A SYN to a port nobody listens on (or
  to a NAT box with no mapping or forward for it) is answered with a reset:
  :class:`ConnectionRefusedError` after one round trip.  A lost SYN is sent again after
  :attr:`TcpNetwork.syn_rto` (1 s, doubling).
* **Segments.**  Writes are cut into segments of at most :data:`SEGMENT_BYTES`; each
  crosses the same links as a datagram would (the lowest-latency path, NAT translation
  with the box's TCP mapping table), taking each link's latency, jitter and bandwidth
  (a segment occupies the link for its size plus 40 bytes of header per 1460 bytes).
  A segment of ``n`` packets is lost on a link with probability ``1 - (1 - loss)^n``;
  a lost segment, or one that meets a partition, a link or host that is down or a NAT
  that filters it, is sent again after the retransmission timeout (twice the path's
  round trip, at least :attr:`TcpNetwork.rto_min`, doubling each time, at most
  :attr:`TcpNetwork.rto_max`).  Delivery is in order: later segments wait for a
  retransmitted one.
* **Flow control.**  At most :data:`WINDOW_BYTES` are unacknowledged; data the receiving
  protocol has not taken (``pause_reading``) counts against it; acknowledgements arrive
  one one-way latency after delivery.  Writes beyond the window wait in the transport's
  write buffer, whose limits (``set_write_buffer_limits``) drive ``pause_writing`` /
  ``resume_writing`` (hence ``StreamWriter.drain``).
* **Failures.**  A segment that cannot get through for :attr:`TcpNetwork.timeout` virtual
  seconds (a partition, a crashed host) fails the connection with :class:`TimeoutError`;
  ``connect`` fails the same way.  ``transport.abort()`` sends a reset
  (:class:`ConnectionResetError` at the peer).  A crashed host's connections are gone: its
  own protocols see :class:`ConnectionAbortedError`; its peers time out, or get a reset
  once it is back up and receives their next segment.
* Every SYN, segment, reset and retransmission is a trace event (``tcp:*``), so the trace
  hash covers TCP traffic.  TLS over simulated TCP is not supported (``ssl=`` is refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..net.base import Address
from .errors import RealIOForbidden
from .loop import caller_location

__all__ = [
    "SEGMENT_BYTES",
    "WINDOW_BYTES",
    "SimTcpServer",
    "SimTcpTransport",
    "StreamHost",
    "StreamRouter",
    "StreamTrip",
    "TcpNetwork",
    "current_host",
    "patch_httpcore_readability",
]

log = logging.getLogger("asgi_p2p.sim")

#: The host the running code is on (None: none, e.g. the body of a test).
current_host: contextvars.ContextVar[Any] = contextvars.ContextVar("asgi_p2p_sim_current_host", default=None)

#: Largest segment a write is cut into (as with segmentation offload).
SEGMENT_BYTES = 65536
#: Payload bytes of one packet (for loss and header overhead).
MSS = 1460
#: IPv4 + TCP header bytes per packet, counted by bandwidth limits.
TCP_HEADER = 40
#: Bytes a sender may have unacknowledged (the receive window).
WINDOW_BYTES = 256 * 1024
#: Default write buffer limits (asyncio's own defaults).
HIGH_WATER = 64 * 1024

_SYN, _SYNACK, _ACK, _DATA, _FIN = "syn", "synack", "ack", "data", "fin"
_WILDCARDS = (None, "", "0.0.0.0", "::")
_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_EPHEMERAL_FIRST = 49152


class StreamHost(Protocol):
    """What TCP needs of a simulated host (:class:`asgi_p2p.sim.Host` is one)."""

    name: str
    address: str
    up: bool


class _LinkLike(Protocol):
    name: str
    latency: float
    jitter: float
    loss: float
    bandwidth: float | None
    rng: Any


class _DirectionLike(Protocol):
    busy_until: float


@dataclass(slots=True)
class StreamTrip:
    """How one segment sent now travels: links crossed, where it lands, addresses there."""

    #: The host it reaches.
    host: Any
    #: Its source address as that host sees it (after NAT).
    src: Address
    #: Its destination address on that host (after NAT or a port forward).
    dst: Address
    #: The links crossed, each with the direction state it leaves through.
    hops: list[tuple[_LinkLike, _DirectionLike]] = field(default_factory=list)
    #: Sum of the links' latencies.
    latency: float = 0.0
    #: Set when the trip ends at a NAT box that refuses the connection (``host`` is the box).
    refused: str = ""


class StreamRouter(Protocol):
    """What :class:`TcpNetwork` needs of the network (:class:`asgi_p2p.sim.Simulation` is one)."""

    def stream_trip(self, host: Any, port: int, dst: Address) -> StreamTrip | str:
        """Route a segment from ``host``:``port`` to ``dst`` now; a drop reason if it cannot go."""

    def stream_reachable(self, src: Any, dst: Any) -> str:
        """Empty if a segment in flight from ``src`` may still land on ``dst``; else why not."""

    def stream_resolve(self, name: str, host: Any) -> str | None:
        """The address ``name`` (a simulated host's name) has for ``host``; None if unknown."""

    def stream_record(self, kind: str, src: Address, dst: Address, length: int, where: str) -> None:
        """Add a trace event."""


class _Segment:
    __slots__ = ("data", "first", "kind", "seq", "tries")

    def __init__(self, kind: str, seq: int, data: bytes, now: float) -> None:
        self.kind = kind
        self.seq = seq
        self.data = data
        self.first = now
        self.tries = 0


class _SocketInfo:
    """What ``transport.get_extra_info("socket")`` returns: addresses, no file descriptor."""

    family = socket.AF_INET
    type = socket.SOCK_STREAM
    proto = socket.IPPROTO_TCP

    def __init__(self, local: Address, remote: Address | None, transport: SimTcpTransport | None = None) -> None:
        self._local = local
        self._remote = remote
        self._transport = transport

    def readable(self) -> bool:
        """What ``poll(POLLIN)`` would say of a real socket: data or a FIN is waiting, or it is dead."""
        end = self._transport
        return end is None or end.readable()

    def getsockname(self) -> Address:
        return self._local

    def getpeername(self) -> Address:
        if self._remote is None:
            raise OSError(errno.ENOTCONN, "a listening simulated socket has no peer")
        return self._remote

    def fileno(self) -> int:
        return -1

    def setsockopt(self, *args: Any) -> None:
        """Accepted and ignored (``TCP_NODELAY`` and the like change nothing here)."""

    def getsockopt(self, *args: Any) -> int:
        return 0

    def __repr__(self) -> str:
        return f"<simulated TCP socket {self._local[0]}:{self._local[1]}>"


class _HostTcp:
    """The TCP state of one host: listeners, connections, ephemeral ports."""

    def __init__(self) -> None:
        self.listeners: dict[int, SimTcpServer] = {}
        self.conns: dict[tuple[Address, Address], SimTcpTransport] = {}
        self.next_port = _EPHEMERAL_FIRST

    def port_in_use(self, port: int) -> bool:
        return port in self.listeners or any(local[1] == port for local, _ in self.conns)

    def ephemeral_port(self, host: StreamHost) -> int:
        for _ in range(65536 - _EPHEMERAL_FIRST):
            port = self.next_port
            self.next_port = _EPHEMERAL_FIRST if port >= 65535 else port + 1
            if not self.port_in_use(port):
                return port
        raise OSError(errno.EADDRNOTAVAIL, f"no free TCP port on simulated host {host.name}")


class SimTcpTransport(asyncio.Transport):
    """One end of a simulated TCP connection (an :class:`asyncio.Transport`)."""

    def __init__(self, net: TcpNetwork, host: StreamHost, local: Address, remote: Address, *, client: bool) -> None:
        super().__init__()
        self._net = net
        self._host = host
        self._local = local
        self._remote = remote
        self._client = client
        self._protocol: asyncio.BaseProtocol | None = None
        self._made = False  # connection_made called
        self._dead = False  # no more traffic: reset, timed out, aborted, host crashed
        self._lost = False  # connection_lost called
        self._closing = False
        self._eof_sent = False  # write_eof() or close(): FIN queued after the buffer
        self._fin_out = False  # FIN handed to the network
        self._fin_in = False  # peer's FIN received
        self._paused = False
        self._wbuf = bytearray()
        self._high = HIGH_WATER
        self._low = HIGH_WATER // 4
        self._writing_paused = False
        self._snd_seq = 0
        self._in_flight = 0
        self._rcv_next = 0
        self._ooo: dict[int, _Segment] = {}
        self._rbuf: list[bytes] = []  # data delivered while reading is paused (None: FIN)
        self._rbuf_fin = False
        self._rbuf_bytes = 0
        self._last_arrival = 0.0
        self._rto = net.rto_min
        self._connect_waiter: asyncio.Future[None] | None = None
        self._syn: _Segment | None = None
        self._server: SimTcpServer | None = None
        #: Bytes written / delivered to the protocol (statistics).
        self.bytes_sent = 0
        self.bytes_received = 0
        self._extra: dict[str, Any] = {
            "peername": remote,
            "sockname": local,
            "socket": _SocketInfo(local, remote, self),
        }

    def __repr__(self) -> str:
        state = "closed" if self._lost else "closing" if self._closing else "open"
        return (
            f"<SimTcpTransport {self._host.name} {self._local[0]}:{self._local[1]} -> "
            f"{self._remote[0]}:{self._remote[1]} {state}>"
        )

    @property
    def host(self) -> StreamHost:
        """The simulated host this end is on."""
        return self._host

    def readable(self) -> bool:
        """Whether a read would not wait: data or a FIN arrived and is not yet handed over,
        or the connection is dead."""
        return bool(self._rbuf) or self._rbuf_fin or self._dead or (self._fin_in and not self._closing)

    # -- asyncio.BaseTransport -----------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing or self._dead

    def close(self) -> None:
        """Send what is buffered, then a FIN; the protocol's ``connection_lost(None)`` follows."""
        if self._closing or self._dead:
            return
        self._closing = True
        self._paused = True
        self._eof_sent = True
        self._rbuf.clear()
        self._net._pump(self)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    # -- asyncio.ReadTransport -----------------------------------------------------------------

    def is_reading(self) -> bool:
        return not self._paused and not self.is_closing()

    def pause_reading(self) -> None:
        if self.is_closing():
            return
        self._paused = True

    def resume_reading(self) -> None:
        if self.is_closing() or not self._paused:
            return
        self._paused = False
        if self._rbuf or self._rbuf_fin:
            self._net.loop.call_soon(self._net._drain_received, self)

    # -- asyncio.WriteTransport ----------------------------------------------------------------

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._net._check_write_buffer(self)

    def get_write_buffer_size(self) -> int:
        return len(self._wbuf)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof_sent and not self._closing:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data or self._closing or self._dead:
            return
        self._wbuf += data
        self.bytes_sent += len(data)
        self._net._pump(self)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        if self._eof_sent or self._dead:
            return
        self._eof_sent = True
        self._net._pump(self)

    def can_write_eof(self) -> bool:
        return True

    def abort(self) -> None:
        """Drop the write buffer and close now; ``connection_lost(None)`` follows.

        As with a real socket, what was already handed to the network still arrives and a
        FIN follows it, unless received data is left unread: then the peer gets a reset.
        """
        if self._dead or self._lost:
            return  # closed already: what is in flight still goes
        unread = bool(self._rbuf) or self._rbuf_fin
        self._wbuf.clear()
        if not self._made or unread:
            if self._made:
                self._net._send_reset(self)
            self._closing = True
            self._net._kill(self, None)
            return
        self.close()


class SimTcpServer(asyncio.AbstractServer):
    """A listening simulated TCP socket (what ``loop.create_server`` returns)."""

    def __init__(
        self,
        net: TcpNetwork,
        host: StreamHost,
        port: int,
        factory: Callable[[], asyncio.BaseProtocol],
        backlog: int,
        context: contextvars.Context,
    ) -> None:
        self._net = net
        self._host = host
        self._port = port
        self._factory = factory
        self._context = context
        self.backlog = backlog
        self._serving = False
        self._closed = False
        self._serving_forever: asyncio.Future[None] | None = None
        self._pending = 0  # handshakes in progress (bounded by backlog)

    def __repr__(self) -> str:
        return f"<SimTcpServer {self._host.name} {self._host.address}:{self._port}>"

    @property
    def port(self) -> int:
        """The port it listens on."""
        return self._port

    @property
    def sockets(self) -> tuple[_SocketInfo, ...]:
        if self._closed:
            return ()
        return (_SocketInfo((self._host.address, self._port), None),)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._serving = False
        self._net._unlisten(self)
        if self._serving_forever is not None and not self._serving_forever.done():
            self._serving_forever.cancel()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._net.loop

    def is_serving(self) -> bool:
        return self._serving and not self._closed

    async def start_serving(self) -> None:
        if self._closed:
            raise RuntimeError(f"server {self!r} is closed")
        self._serving = True

    async def serve_forever(self) -> None:
        if self._serving_forever is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._closed:
            raise RuntimeError(f"server {self!r} is closed")
        self._serving = True
        self._serving_forever = self._net.loop.create_future()
        try:
            await self._serving_forever
        except asyncio.CancelledError:
            try:
                self.close()
            finally:
                raise
        finally:
            self._serving_forever = None

    async def wait_closed(self) -> None:
        return None


class TcpNetwork:
    """Simulated TCP for one simulation (see the module docstring).

    Attributes:
        timeout: virtual seconds a segment (or a SYN) may fail to get through before the
            connection fails with :class:`TimeoutError`.
        syn_rto: first retransmission delay of a SYN (doubling).
        rto_min, rto_max: bounds of the data retransmission timeout.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, router: StreamRouter, *, timeout: float = 60.0) -> None:
        if timeout <= 0:
            raise ValueError(f"tcp timeout must be positive virtual seconds, got {timeout!r}")
        self.loop = loop
        self.router = router
        self.timeout = float(timeout)
        self.syn_rto = 1.0
        self.rto_min = 0.2
        self.rto_max = 60.0
        self._hosts: dict[Any, _HostTcp] = {}
        patch_httpcore_readability()
        #: Counters: connections established (client side), refused, reset, timed out;
        #: segments (retransmissions included) and payload bytes handed to links.
        self.connections = 0
        self.refused = 0
        self.resets = 0
        self.timeouts = 0
        self.segments = 0
        self.retransmissions = 0
        self.bytes = 0

    # -- which host ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def on(self, host: StreamHost) -> Iterator[StreamHost]:
        """Code inside (and tasks it starts) runs on ``host``."""
        token = current_host.set(host)
        try:
            yield host
        finally:
            current_host.reset(token)

    def _host_of(self, call: str, on: StreamHost | None) -> StreamHost:
        host = on if on is not None else current_host.get()
        if host is None:
            raise RealIOForbidden(
                f"{call} inside a simulation opens a simulated TCP connection, and this code runs on no "
                "simulated host: run it in an app served with sim.serve(app, host), inside "
                "`with sim.on(host):`, or call host.open_connection(...) / host.start_server(...) / "
                "host.create_connection(...) / host.create_server(...) (real I/O is not allowed inside a "
                "simulation)"
            )
        return host

    def _state(self, host: StreamHost) -> _HostTcp:
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _HostTcp()
        return state

    def resolve(self, name: str) -> str | None:
        """The address of the simulated host called ``name`` (as the current host sees it)."""
        return self.router.stream_resolve(name, current_host.get())

    def _target(self, host: StreamHost, name: Any, call: str) -> str:
        if name is None:
            raise ValueError(f"{call}: host and port must be given (sock= is a real socket)")
        text = name.decode() if isinstance(name, bytes) else str(name)
        if text in _LOOPBACK:
            return host.address
        try:
            ipaddress.ip_address(text)
        except ValueError:
            address = self.router.stream_resolve(text, host)
            if address is None:
                raise socket.gaierror(
                    socket.EAI_NONAME,
                    f"{call}: {text!r} is no simulated host's name nor an IP address (name lookups inside a "
                    "simulation know the simulated hosts' names only)",
                ) from None
            return address
        return text

    # -- the asyncio entry points --------------------------------------------------------------

    async def create_connection(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: Any = None,
        port: Any = None,
        *,
        on: StreamHost | None = None,
        ssl: Any = None,
        sock: Any = None,
        local_addr: Any = None,
        **_ignored: Any,
    ) -> tuple[SimTcpTransport, asyncio.BaseProtocol]:
        """``loop.create_connection`` on the simulated network."""
        call = f"create_connection({host!r}, {port!r}) at {caller_location()}"
        me = self._open_on(call, on, sock, ssl)
        dst = (self._target(me, host, call), _port(port, call))
        state = self._state(me)
        if local_addr is not None:
            lport = _port(local_addr[1], call)
            if lport == 0:
                lport = state.ephemeral_port(me)
            elif any(local == (me.address, lport) and remote == dst for local, remote in state.conns):
                raise OSError(errno.EADDRINUSE, f"{call}: {me.address}:{lport} already connects to {dst}")
        else:
            lport = state.ephemeral_port(me)
        end = SimTcpTransport(self, me, (me.address, lport), dst, client=True)
        state.conns[(end._local, dst)] = end
        end._protocol = protocol_factory()
        waiter: asyncio.Future[None] = self.loop.create_future()
        end._connect_waiter = waiter
        end._syn = _Segment(_SYN, -1, b"", self.loop.time())
        self._transmit(end, end._syn)
        try:
            await waiter
        except BaseException:
            if not end._made:
                self._kill(end, None, notify=False)
            raise
        assert end._protocol is not None
        return end, end._protocol

    def _open_on(self, call: str, on: StreamHost | None, sock: Any, ssl: Any) -> StreamHost:
        """The simulated host ``call`` runs on, refusing what needs real I/O (``sock=``, ``ssl=``)."""
        if sock is not None:
            raise RealIOForbidden(f"{call} with sock= needs a real socket, which is not allowed inside a simulation")
        if ssl:
            raise RealIOForbidden(
                f"{call} with ssl=: TLS over simulated TCP is not supported (use plain TCP, http:// URLs, "
                "inside a simulation; real I/O is not allowed inside a simulation)"
            )
        me = self._host_of(call, on)
        if not me.up:
            raise OSError(errno.ENETDOWN, f"{call}: simulated host {me.name} is down")
        return me

    async def create_server(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: Any = None,
        port: Any = None,
        *,
        on: StreamHost | None = None,
        ssl: Any = None,
        sock: Any = None,
        backlog: int = 100,
        start_serving: bool = True,
        **_ignored: Any,
    ) -> SimTcpServer:
        """``loop.create_server`` on the simulated network."""
        call = f"create_server({host!r}, {port!r}) at {caller_location()}"
        me = self._open_on(call, on, sock, ssl)
        names = [host] if host is None or isinstance(host, (str, bytes)) else list(host)
        for name in names:
            text = name.decode() if isinstance(name, bytes) else name
            if text not in _WILDCARDS and text not in _LOOPBACK and text != me.address:
                raise OSError(
                    errno.EADDRNOTAVAIL,
                    f"{call}: cannot listen on {text} on simulated host {me.name}: its address is {me.address}",
                )
        state = self._state(me)
        number = 0 if port is None else _port(port, call)
        if number == 0:
            number = state.ephemeral_port(me)
        elif number in state.listeners:
            raise OSError(errno.EADDRINUSE, f"{call}: TCP port {number} is already in use on {me.name}")
        with self.on(me):
            server = SimTcpServer(self, me, number, protocol_factory, backlog, contextvars.copy_context())
        state.listeners[number] = server
        if start_serving:
            await server.start_serving()
        log.debug("%s: TCP listening on %s:%d", me.name, me.address, number)
        return server

    def _unlisten(self, server: SimTcpServer) -> None:
        state = self._hosts.get(server._host)
        if state is not None and state.listeners.get(server._port) is server:
            del state.listeners[server._port]

    # -- faults --------------------------------------------------------------------------------

    def host_crashed(self, host: StreamHost) -> None:
        """``host`` crashed: its listeners and connections are gone (nothing is sent)."""
        state = self._hosts.pop(host, None)
        if state is None:
            return
        for server in list(state.listeners.values()):
            server.close()
        for end in list(state.conns.values()):
            self._kill(end, ConnectionAbortedError(errno.ECONNABORTED, f"simulated host {host.name} crashed"))

    def connections_of(self, host: StreamHost) -> list[SimTcpTransport]:
        """Open connection ends on ``host`` (in the order they were made)."""
        state = self._hosts.get(host)
        return [] if state is None else list(state.conns.values())

    # -- sending -------------------------------------------------------------------------------

    def _pump(self, end: SimTcpTransport) -> None:
        """Move buffered bytes into the network within the window; FIN when due."""
        if end._dead or not end._made:
            return
        wbuf = end._wbuf
        while wbuf and end._in_flight < WINDOW_BYTES:
            n = min(len(wbuf), SEGMENT_BYTES, WINDOW_BYTES - end._in_flight)
            data = bytes(wbuf[:n])
            del wbuf[:n]
            end._in_flight += n
            self._send_ordered(end, _DATA, data)
        if not wbuf and end._eof_sent and not end._fin_out:
            end._fin_out = True
            self._send_ordered(end, _FIN, b"")
        if end._closing and end._fin_out:
            self._finish(end)
        self._check_write_buffer(end)

    def _check_write_buffer(self, end: SimTcpTransport) -> None:
        size = len(end._wbuf)
        proto = end._protocol
        if not end._writing_paused and size > end._high:
            end._writing_paused = True
            if isinstance(proto, asyncio.Protocol):
                self._call(end, proto.pause_writing)
        elif end._writing_paused and size <= end._low:
            end._writing_paused = False
            if isinstance(proto, asyncio.Protocol):
                self._call(end, proto.resume_writing)

    def _send_ordered(self, end: SimTcpTransport, kind: str, data: bytes) -> None:
        seg = _Segment(kind, end._snd_seq, data, self.loop.time())
        end._snd_seq += 1
        self._transmit(end, seg)

    def _transmit(self, end: SimTcpTransport, seg: _Segment) -> None:
        if end._dead or (seg.kind == _SYN and end._made):
            return
        now = self.loop.time()
        if seg.tries and now - seg.first >= self.timeout - 1e-9:
            self._timed_out(end, seg)
            return
        trip = self.router.stream_trip(end._host, end._local[1], end._remote)
        if isinstance(trip, str):
            if seg.kind == _SYN and not seg.tries and trip == "no-route":
                self._fail_connect(
                    end,
                    OSError(
                        errno.EHOSTUNREACH,
                        f"No route to host: no simulated host has address {end._remote[0]} "
                        f"(TCP connect from {end._host.name} to {end._remote[0]}:{end._remote[1]})",
                    ),
                )
                return
            self._lost(end, seg, trip, end._host.name)
            return
        size = len(seg.data)
        packets = max(1, -(-size // MSS))
        t = now
        rto = self.syn_rto if seg.kind == _SYN else end._rto
        for lk, d in trip.hops:
            loss = lk.loss
            if loss:
                rng = lk.rng
                missing = sum(1 for _ in range(packets) if rng.random() < loss)
                rounds = 0
                while missing:  # lost packets come again after a retransmission timeout (doubling)
                    rounds += 1
                    if rounds > 8:  # hopeless this time: the whole segment goes again later
                        self._lost(end, seg, "loss", lk.name)
                        return
                    self.retransmissions += 1
                    self.router.stream_record("tcp:lost:loss", end._local, end._remote, missing, lk.name)
                    t += min(self.rto_max, rto * (2.0 ** (rounds - 1)))
                    missing = sum(1 for _ in range(missing) if rng.random() < loss)
                if t - seg.first >= self.timeout:
                    self._lost(end, seg, "loss", lk.name)
                    return
            if lk.bandwidth:
                start = d.busy_until if d.busy_until > t else t
                t = d.busy_until = start + (size + packets * TCP_HEADER) * 8.0 / lk.bandwidth
            t += lk.latency
            if lk.jitter:
                t += lk.rng.uniform(0.0, lk.jitter)
        if seg.kind != _SYN:
            if t < end._last_arrival:
                t = end._last_arrival
            end._last_arrival = t
        self._rto_from(end, trip.latency)
        self.segments += 1
        self.bytes += size
        self.router.stream_record("tcp:" + seg.kind, end._local, end._remote, size, end._host.name)
        if trip.refused:
            self.loop.call_at(t, self._refused_on_the_way, end, seg, trip)
        else:
            self.loop.call_at(t, self._arrive, end, seg, trip)

    def _refused_on_the_way(self, end: SimTcpTransport, seg: _Segment, trip: StreamTrip) -> None:
        """The segment reached a NAT box with no mapping nor forward for it: a SYN is answered
        with a reset (as a router's own stack does for a port it does not serve); anything
        else is dropped."""
        if end._dead:
            return
        if seg.kind != _SYN:
            self._lost(end, seg, "nat-no-mapping", trip.host.name)
            return
        self.router.stream_record("tcp:rst", trip.dst, trip.src, 0, trip.host.name)
        self.loop.call_at(self.loop.time() + trip.latency, self._reset_arrived, end, trip.refused)

    def _rto_from(self, end: SimTcpTransport, one_way: float) -> None:
        end._rto = min(self.rto_max, max(self.rto_min, 4.0 * one_way))

    def _lost(self, end: SimTcpTransport, seg: _Segment, reason: str, where: str) -> None:
        now = self.loop.time()
        base = self.syn_rto if seg.kind == _SYN else end._rto
        delay = min(self.rto_max, base * (2.0**seg.tries))
        seg.tries += 1
        self.retransmissions += 1
        self.router.stream_record("tcp:lost:" + reason, end._local, end._remote, len(seg.data), where)
        deadline = seg.first + self.timeout
        self.loop.call_at(min(now + delay, deadline), self._transmit, end, seg)

    def _timed_out(self, end: SimTcpTransport, seg: _Segment) -> None:
        self.timeouts += 1
        self.router.stream_record("tcp:timeout", end._local, end._remote, 0, end._host.name)
        what = "no answer to the SYN" if seg.kind == _SYN else f"a {seg.kind} segment did not get through"
        exc = TimeoutError(
            errno.ETIMEDOUT,
            f"simulated TCP connection {end._local[0]}:{end._local[1]} -> {end._remote[0]}:{end._remote[1]} "
            f"(on {end._host.name}) timed out: {what} for {self.timeout:g} virtual s "
            "(a partition, a host down or crashed, or a NAT dropping it; see sim.trace 'tcp:lost:*')",
        )
        if end._connect_waiter is not None and not end._made:
            self._fail_connect(end, exc)
        else:
            self._kill(end, exc)

    def _send_reset(self, end: SimTcpTransport) -> None:
        """A best-effort RST from ``end`` to its peer (one attempt, no retransmission)."""
        trip = self.router.stream_trip(end._host, end._local[1], end._remote)
        self.router.stream_record("tcp:rst", end._local, end._remote, 0, end._host.name)
        if isinstance(trip, str):
            return
        peer = self._hosts.get(trip.host, _HostTcp()).conns.get((trip.dst, trip.src))
        if peer is not None:
            reason = f"connection reset by peer {end._host.name} ({end._local[0]}:{end._local[1]})"
            self.loop.call_at(self.loop.time() + trip.latency, self._reset_arrived, peer, reason)

    def _reply_reset(self, trip: StreamTrip, to: SimTcpTransport, reason: str) -> None:
        """``trip.host`` answers a segment of ``to`` with a RST (refusal or unknown connection)."""
        self.router.stream_record("tcp:rst", trip.dst, trip.src, 0, trip.host.name)
        back = self.router.stream_trip(trip.host, trip.dst[1], trip.src)
        if isinstance(back, str):
            return
        self.loop.call_at(self.loop.time() + back.latency, self._reset_arrived, to, reason)

    def _reset_arrived(self, end: SimTcpTransport, reason: str) -> None:
        if end._dead or not end._host.up:
            return
        token = current_host.set(end._host)
        try:
            if end._connect_waiter is not None and not end._made:
                self.refused += 1
                self._fail_connect(
                    end,
                    ConnectionRefusedError(
                        errno.ECONNREFUSED,
                        f"simulated TCP connection to {end._remote[0]}:{end._remote[1]} (from {end._host.name}) "
                        f"refused: {reason}",
                    ),
                )
                return
            self.resets += 1
            self._kill(end, ConnectionResetError(errno.ECONNRESET, f"simulated TCP {end!r}: {reason}"))
        finally:
            current_host.reset(token)

    # -- receiving -----------------------------------------------------------------------------

    def _arrive(self, end: SimTcpTransport, seg: _Segment, trip: StreamTrip) -> None:
        if end._dead:
            return
        dst = trip.host
        why = self.router.stream_reachable(end._host, dst)
        if why:
            self._lost(end, seg, why, dst.name)
            return
        token = current_host.set(dst)
        try:
            self._land(end, seg, trip)
        finally:
            current_host.reset(token)

    def _land(self, end: SimTcpTransport, seg: _Segment, trip: StreamTrip) -> None:
        dst = trip.host
        state = self._state(dst)
        key = (trip.dst, trip.src)
        peer = state.conns.get(key)
        if seg.kind == _SYN:
            if peer is not None:
                return  # a retransmitted SYN: the SYN-ACK is on its way (reliably)
            server = state.listeners.get(trip.dst[1])
            if server is None or not server.is_serving():
                self._reply_reset(trip, end, f"nothing listens on TCP port {trip.dst[1]} of {dst.name}")
                return
            if server._pending >= server.backlog:
                self._lost(end, seg, "backlog", dst.name)  # a full accept queue drops the SYN
                return
            peer = SimTcpTransport(self, dst, trip.dst, trip.src, client=False)
            peer._server = server
            peer._rto = end._rto
            server._pending += 1
            state.conns[key] = peer
            self._send_ordered(peer, _SYNACK, b"")
            return
        if peer is None:
            self._reply_reset(trip, end, f"{dst.name} has no such connection (it restarted, or closed it)")
            return
        self.router.stream_record("tcp:deliver", trip.src, trip.dst, len(seg.data), dst.name)
        if seg.seq != peer._rcv_next:
            peer._ooo[seg.seq] = seg
            return
        self._process(peer, end, seg, trip.latency)
        while peer._rcv_next in peer._ooo and not peer._dead:
            self._process(peer, end, peer._ooo.pop(peer._rcv_next), trip.latency)

    def _process(self, end: SimTcpTransport, sender: SimTcpTransport, seg: _Segment, latency: float) -> None:
        end._rcv_next += 1
        kind = seg.kind
        if kind == _DATA:
            n = len(seg.data)
            if end._closing or end._lost:
                self._ack(sender, n, latency)
            elif end._paused or end._rbuf:
                end._rbuf.append(seg.data)
                end._rbuf_bytes += n
            else:
                self._deliver(end, seg.data)
                self._ack(sender, n, latency)
        elif kind == _SYNACK:
            self._established(end)
            self._send_ordered(end, _ACK, b"")
        elif kind == _ACK:
            self._accepted(end)
        elif kind == _FIN:
            if end._closing or end._lost:
                end._fin_in = True
                if end._fin_out:
                    self._forget(end)
            elif end._paused or end._rbuf:
                end._rbuf_fin = True
            else:
                self._eof(end)

    def _ack(self, sender: SimTcpTransport, n: int, latency: float) -> None:
        self.loop.call_at(self.loop.time() + latency, self._acked, sender, n)

    def _acked(self, sender: SimTcpTransport, n: int) -> None:
        sender._in_flight -= n
        if sender._wbuf and not sender._dead:
            token = current_host.set(sender._host)
            try:
                self._pump(sender)
            finally:
                current_host.reset(token)

    def _drain_received(self, end: SimTcpTransport) -> None:
        """Reading resumed: hand over what arrived meanwhile (acknowledging it)."""
        peer = self._peer(end)
        while end._rbuf and not end._paused and not end._dead and not end._closing:
            data = end._rbuf.pop(0)
            end._rbuf_bytes -= len(data)
            self._deliver(end, data)
            if peer is not None:
                self._acked(peer, len(data))
        if end._rbuf_fin and not end._rbuf and not end._paused and not end._dead:
            end._rbuf_fin = False
            self._eof(end)

    def _peer(self, end: SimTcpTransport) -> SimTcpTransport | None:
        """The other end, found the way the network finds it (None if unreachable now)."""
        trip = self.router.stream_trip(end._host, end._local[1], end._remote)
        if isinstance(trip, str):
            return None
        state = self._hosts.get(trip.host)
        return None if state is None else state.conns.get((trip.dst, trip.src))

    def _deliver(self, end: SimTcpTransport, data: bytes) -> None:
        end.bytes_received += len(data)
        proto = end._protocol
        if isinstance(proto, asyncio.BufferedProtocol):
            self._call(end, _feed_buffered, proto, data)
        elif isinstance(proto, asyncio.Protocol):
            self._call(end, proto.data_received, data)

    def _eof(self, end: SimTcpTransport) -> None:
        end._fin_in = True
        proto = end._protocol
        keep_open: object = False
        if isinstance(proto, asyncio.Protocol) and not end._closing:
            try:
                keep_open = proto.eof_received()
            except Exception as exc:
                self._protocol_failed(end, "eof_received", exc)
                return
        if end._closing:
            if end._fin_out:
                self._forget(end)
        elif not keep_open:
            end.close()

    # -- connection life -----------------------------------------------------------------------

    def _established(self, end: SimTcpTransport) -> None:
        """Client: the SYN-ACK arrived."""
        waiter = end._connect_waiter
        if end._made or waiter is None or waiter.done():
            return
        self.connections += 1
        end._made = True
        end._syn = None
        proto = end._protocol
        assert proto is not None
        try:
            proto.connection_made(end)
        except Exception as exc:
            self._kill(end, None)
            waiter.set_exception(exc)
            return
        waiter.set_result(None)

    def _accepted(self, end: SimTcpTransport) -> None:
        """Server: the handshake's last ACK arrived; the listener's protocol takes over."""
        server = end._server
        if server is not None:
            server._pending -= 1
        if server is None or server._closed:
            self._send_reset(end)
            self._kill(end, None, notify=False)
            return
        end._made = True
        try:
            proto = server._context.run(server._factory)
        except Exception as exc:
            self.loop.call_exception_handler(
                {"message": "simulated TCP server: the protocol factory failed", "exception": exc, "transport": end}
            )
            end.abort()
            return
        end._protocol = proto
        self._call(end, proto.connection_made, end)
        self._pump(end)

    def _finish(self, end: SimTcpTransport) -> None:
        """The closing end handed its FIN to the network: the protocol hears connection_lost."""
        if end._lost:
            return
        end._lost = True
        self.loop.call_soon(self._connection_lost, end, None)
        if end._fin_in:
            self._forget(end)

    def _forget(self, end: SimTcpTransport) -> None:
        state = self._hosts.get(end._host)
        if state is not None and state.conns.get((end._local, end._remote)) is end:
            del state.conns[(end._local, end._remote)]

    def _kill(self, end: SimTcpTransport, exc: Exception | None, *, notify: bool = True) -> None:
        if end._dead:
            return
        end._dead = True
        end._closing = True
        end._wbuf.clear()
        end._rbuf.clear()
        end._ooo.clear()
        self._forget(end)
        if end._server is not None and not end._made:
            end._server._pending -= 1
        if notify and end._made and not end._lost:
            end._lost = True
            self.loop.call_soon(self._connection_lost, end, exc)

    def _fail_connect(self, end: SimTcpTransport, exc: Exception) -> None:
        self._kill(end, None, notify=False)
        waiter = end._connect_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _connection_lost(self, end: SimTcpTransport, exc: Exception | None) -> None:
        proto = end._protocol
        if proto is None:
            return
        token = current_host.set(end._host)
        try:
            proto.connection_lost(exc)
        except Exception as err:
            self.loop.call_exception_handler(
                {"message": "simulated TCP: protocol.connection_lost() failed", "exception": err, "transport": end}
            )
        finally:
            current_host.reset(token)

    def _call(self, end: SimTcpTransport, fn: Callable[..., object], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self._protocol_failed(end, getattr(fn, "__name__", "callback"), exc)

    def _protocol_failed(self, end: SimTcpTransport, what: str, exc: Exception) -> None:
        self.loop.call_exception_handler(
            {"message": f"simulated TCP: protocol.{what}() call failed", "exception": exc, "transport": end}
        )
        end.abort()


def patch_httpcore_readability() -> bool:
    """Let httpcore see whether a pooled simulated connection is readable.

    Before reusing a keep-alive connection httpcore polls its socket's file descriptor
    (``httpcore._utils.is_socket_readable``) and drops the connection when it cannot (a
    socket without one counts as readable): every request would open a new connection.
    The patched check asks a simulated socket (:class:`_SocketInfo`) itself and calls the
    original for any other.  Idempotent; False if httpcore is not installed.
    """
    try:
        import httpcore._backends.anyio as backend
    except ImportError:  # pragma: no cover - httpcore comes with httpx
        return False
    original = backend.is_socket_readable  # type: ignore[attr-defined]
    if original in _PATCHED:
        return True

    def is_socket_readable(sock: Any) -> bool:
        if isinstance(sock, _SocketInfo):
            return sock.readable()
        return original(sock)

    _PATCHED.add(is_socket_readable)
    backend.is_socket_readable = is_socket_readable  # type: ignore[attr-defined]
    return True


_PATCHED: set[Callable[[Any], bool]] = set()


def _feed_buffered(proto: asyncio.BufferedProtocol, data: bytes) -> None:
    view = memoryview(data)
    while view:
        buf = memoryview(proto.get_buffer(len(view)))
        n = min(len(buf), len(view))
        if n == 0:
            raise RuntimeError("get_buffer() returned an empty buffer")
        buf[:n] = view[:n]
        proto.buffer_updated(n)
        view = view[n:]


def _port(value: Any, call: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{call}: port must be an integer, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{call}: port must be in 0..65535, got {port}")
    return port
