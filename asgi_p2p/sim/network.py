"""The simulated network: hosts, links, NAT boxes, routing and faults.

A :class:`Simulation` owns a :class:`~asgi_p2p.sim.loop.VirtualTimeLoop`, a seeded
random generator, a :class:`~asgi_p2p.sim.trace.Trace`, a :class:`~asgi_p2p.sim.discovery.MockDNS`
and a graph of nodes (:class:`Host` and :class:`NatBox`) joined by :class:`Link` s.

Each :class:`Host` is a :class:`~asgi_p2p.net.DatagramNetwork`: ``await host.bind(...)``
returns a :class:`SimSocket`, so the real endpoint runs on it unchanged.

Addressing: the public internet is one *realm*; every NAT box opens a private realm
behind it.  A packet is routed inside its current realm: to the node owning its
destination IP if there is one, else to the realm's NAT box (the default gateway),
which translates it into the outer realm.  Within a realm, packets follow the
lowest-latency path of links (Dijkstra, ties broken by node creation order),
hop by hop, each link applying its loss, queueing, latency, jitter, reordering
and duplication in virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import itertools
import logging
import os
import random
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import NetworkError
from ..net.base import Address, DatagramReceiver
from . import determinism
from .discovery import MockDNS
from .errors import SimulationError
from .loop import START_TIME, VirtualTimeLoop
from .nat import NAT_PRESETS, NatConfig, NatTable
from .tcp import SimTcpServer, SimTcpTransport, StreamTrip, TcpNetwork, current_host
from .trace import Trace

if TYPE_CHECKING:
    import httpx

    from ..config import NetworkConfig
    from ..http.lifespan import LifespanMode
    from ..http.types import ASGIApp
    from ..identity import NodeAddr, NodeId, SecretKey
    from ..relay.proto import RelayLimits
    from .apps import SimApps, SimServer

__all__ = [
    "HEADER_OVERHEAD",
    "Fault",
    "Host",
    "Link",
    "NatBox",
    "Node",
    "SimSocket",
    "Simulation",
    "default_latency",
    "default_loss",
    "default_mtu",
]

log = logging.getLogger("asgi_p2p.sim")

T = TypeVar("T")

#: Bytes of IPv4 + UDP header counted on top of the payload by bandwidth limits.
HEADER_OVERHEAD = 28
#: Default link MTU (IP packet size) unless ``Simulation(mtu=...)`` or ``SIMULATOR_DEFAULT_MTU``
#: say otherwise: Ethernet's 1500, as on most home and internet paths.  It carries a relayed
#: 1200-byte QUIC packet inside the relay connection's own (which the smallest QUIC MTU,
#: 1228, cannot); tests of datagram size probing give links other ``mtu`` values.
DEFAULT_MTU = 1500
#: Virtual seconds :meth:`Simulation.close` gives apps, clients and relays to shut down.
APPS_CLOSE_LIMIT = 120.0
#: The Unix time a simulation starts at (2026-01-01T00:00:00Z), for the clock peers share.
WALL_CLOCK_AT_START = 1_767_225_600.0

_WILDCARDS = ("", "0.0.0.0", "::")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_EPHEMERAL_FIRST = 49152


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def default_latency() -> float:
    """``SIMULATOR_DEFAULT_LATENCY_MS`` (default 50) in seconds."""
    return _env_float("SIMULATOR_DEFAULT_LATENCY_MS", 50.0) / 1000.0


def default_mtu() -> int:
    """``SIMULATOR_DEFAULT_MTU`` (default :data:`DEFAULT_MTU`) in bytes."""
    return int(_env_float("SIMULATOR_DEFAULT_MTU", DEFAULT_MTU))


def default_loss() -> float:
    """``SIMULATOR_DEFAULT_PACKET_LOSS`` (default 0.01) as a probability."""
    return _env_float("SIMULATOR_DEFAULT_PACKET_LOSS", 0.01)


# ---------------------------------------------------------------------------------------------
# Nodes


class Node:
    """A vertex of the network graph (a host or a NAT box)."""

    def __init__(self, sim: Simulation, name: str, index: int, realm: NatBox | None) -> None:
        self.sim = sim
        self.name = name
        #: Creation order (deterministic tie-breaks).
        self.index = index
        #: The NAT box whose private network this node is in (None: the public internet).
        self.realm = realm
        self.up = True
        #: Neighbours and the links to them, in creation order.
        self.links: dict[Node, Link] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def __lt__(self, other: Node) -> bool:
        return self.index < other.index


class SimSocket:
    """A bound simulated UDP socket (implements :class:`~asgi_p2p.net.DatagramSocket`)."""

    def __init__(self, host: Host, port: int, receiver: DatagramReceiver) -> None:
        self.host = host
        self.port = port
        self.receiver = receiver
        self.closed = False
        self.sent = 0
        self.received = 0
        # what is sent between hold() and release() (None: not holding)
        self._held: list[tuple[bytes, Address]] | None = None
        #: releases that sent something, and the datagrams they sent
        self.batch_sends = 0
        self.batch_datagrams = 0

    @property
    def local_address(self) -> Address:
        return (self.host.address, self.port)

    def local_addresses(self) -> list[Address]:
        """The host's own address (a private one behind a NAT: peers see the NAT's)."""
        return [(self.host.address, self.port)]

    def hold(self) -> None:
        """Collect what is sent until :meth:`release` (as :meth:`UdpSocket.hold` does for ``sendmmsg``).

        Virtual time stands still in between, so only the order of the network's events could
        change, and it does not: :meth:`release` sends everything in order.
        """
        if self._held is None and not self.closed:
            self._held = []

    def release(self) -> None:
        """Send what was collected since :meth:`hold`, in order."""
        held, self._held = self._held, None
        if held:
            self.batch_sends += 1
            self.batch_datagrams += len(held)
            for data, addr in held:
                self.sendto(data, addr)

    def sendto(self, data: bytes, addr: Address) -> None:
        """Queue one datagram into the simulated network (never blocks, may drop)."""
        if self.closed:
            return
        if self._held is not None:
            self._held.append((data, addr))
            return
        self.sent += 1
        self.host.sim._send(self, data if isinstance(data, bytes) else bytes(data), (str(addr[0]), int(addr[1])))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._held = None
        if self.host.sockets.get(self.port) is self:
            del self.host.sockets[self.port]

    def __repr__(self) -> str:
        return f"<SimSocket {self.host.name} {self.host.address}:{self.port}{' closed' if self.closed else ''}>"


class Host(Node):
    """A machine with one address; a :class:`~asgi_p2p.net.DatagramNetwork` for its sockets."""

    def __init__(self, sim: Simulation, name: str, index: int, realm: NatBox | None, address: str) -> None:
        super().__init__(sim, name, index, realm)
        self.address = address
        self.sockets: dict[int, SimSocket] = {}
        self._next_port = _EPHEMERAL_FIRST
        #: Called (no arguments) when the host crashes.
        self.on_crash: list[Callable[[], None]] = []
        self.crashes = 0

    @property
    def nat(self) -> NatBox | None:
        """The NAT box in front of this host, if any."""
        return self.realm

    @property
    def public_address(self) -> str:
        """The IP the public internet sees for this host (its outermost NAT's address)."""
        node: Node = self
        while node.realm is not None:
            node = node.realm
        return node.public_address if isinstance(node, NatBox) else self.address

    def wall_clock_offset(self) -> float:
        """Every simulated host shares one fixed wall clock (see :data:`WALL_CLOCK_AT_START`)."""
        return WALL_CLOCK_AT_START - START_TIME

    async def bind(self, host: str, port: int, receiver: DatagramReceiver) -> SimSocket:
        """Bind a socket on this host (``host`` is a wildcard or this host's address)."""
        if host in _LOOPBACK:
            host = self.address  # a simulated host has one interface: loopback binds it
        if host not in _WILDCARDS and host != self.address:
            raise NetworkError(
                f"cannot bind {host}:{port} on simulated host {self.name}: its address is {self.address}"
            )
        if not self.up:
            raise NetworkError(f"cannot bind on simulated host {self.name}: it is down")
        if port == 0:
            port = self._ephemeral_port()
        elif port in self.sockets:
            raise NetworkError(f"cannot bind UDP {self.address}:{port} on {self.name}: address already in use")
        sock = SimSocket(self, port, receiver)
        self.sockets[port] = sock
        log.debug("%s: bound %s:%d", self.name, self.address, port)
        return sock

    def _ephemeral_port(self) -> int:
        for _ in range(65536):
            port = self._next_port
            self._next_port = _EPHEMERAL_FIRST if port >= 65535 else port + 1
            if port not in self.sockets:
                return port
        raise NetworkError(f"no free UDP port on simulated host {self.name}")  # pragma: no cover

    def crash(self) -> None:
        """Shortcut for ``sim.crash(self)``."""
        self.sim.crash(self)

    # -- simulated TCP on this host ------------------------------------------------------------

    async def create_connection(
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, **kwargs: Any
    ) -> tuple[SimTcpTransport, asyncio.BaseProtocol]:
        """``loop.create_connection`` from this host (simulated TCP; see :mod:`asgi_p2p.sim.tcp`)."""
        with self.sim.tcp.on(self):  # through the loop, which keeps any RealIOForbidden it raises
            transport, protocol = await self.sim.loop.create_connection(protocol_factory, host, port, **kwargs)
        assert isinstance(transport, SimTcpTransport)
        return transport, protocol

    async def create_server(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None = None,
        port: int = 0,
        **kwargs: Any,
    ) -> SimTcpServer:
        """``loop.create_server`` on this host; its protocols run on this host."""
        with self.sim.tcp.on(self):
            server = await self.sim.loop.create_server(protocol_factory, host, port, **kwargs)
        assert isinstance(server, SimTcpServer)
        return server

    async def open_connection(
        self, host: str, port: int, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """``asyncio.open_connection`` from this host."""
        with self.sim.tcp.on(self):
            return await asyncio.open_connection(host, port, **kwargs)

    async def start_server(
        self,
        client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
        host: str | None = None,
        port: int = 0,
        **kwargs: Any,
    ) -> SimTcpServer:
        """``asyncio.start_server`` on this host (``port=0``: a free port, see ``server.port``)."""
        with self.sim.tcp.on(self):
            server = await asyncio.start_server(client_connected_cb, host, port, **kwargs)
        assert isinstance(server, SimTcpServer)
        return server

    def restart(self) -> None:
        """Shortcut for ``sim.restart(self)``."""
        self.sim.restart(self)


class NatBox(Node):
    """A NAT: one public address in its realm, a private realm behind it."""

    def __init__(
        self, sim: Simulation, name: str, index: int, realm: NatBox | None, config: NatConfig, public_address: str
    ) -> None:
        super().__init__(sim, name, index, realm)
        self.config = config
        self.public_address = public_address
        self.table = NatTable(config, public_address, random.Random(f"{sim.seed}:nat:{name}"))
        #: TCP mappings (a port space of their own, same behaviour as :attr:`table`).
        self.tcp_table = NatTable(config, public_address, random.Random(f"{sim.seed}:nat-tcp:{name}"))
        #: TCP port forwards: public port -> internal address (see :meth:`forward_tcp`).
        self.tcp_forwards: dict[int, Address] = {}
        self._next_private = 2
        self._subnet = 0

    @property
    def address(self) -> str:
        """The public address (in the outer realm)."""
        return self.public_address

    def forward_tcp(self, port: int, host: Host, host_port: int | None = None) -> None:
        """Forward TCP connections to ``port`` of the public address to ``host`` (behind this box)
        on ``host_port`` (default: the same port); without a forward they are refused."""
        if host.realm is not self:
            raise ValueError(f"{host.name} is not behind NAT box {self.name}")
        for number in (port, port if host_port is None else host_port):
            if not 1 <= number <= 65535:
                raise ValueError(f"port must be in 1..65535, got {number}")
        self.tcp_forwards[port] = (host.address, port if host_port is None else host_port)


# ---------------------------------------------------------------------------------------------
# Links


class _Direction:
    """Per-direction state of a link (queue, FIFO order, holds, counters)."""

    __slots__ = ("busy_until", "delivered", "dropped", "fifo", "held", "last_arrival", "sent")

    def __init__(self) -> None:
        #: In-order packets in flight: timers with equal times may fire in any heap order,
        #: so each FIFO timer pops the head instead of carrying its own packet.
        self.fifo: deque[_Packet] = deque()
        self.busy_until = 0.0
        self.last_arrival = 0.0
        self.held: list[_Packet] | None = None
        self.sent = 0
        self.delivered = 0
        self.dropped = 0


class Link:
    """A bidirectional link; all parameters may be changed at any time.

    Attributes:
        latency: one-way propagation delay in seconds.
        jitter: extra delay drawn uniformly from ``[0, jitter]`` seconds (order kept).
        loss: probability that a packet is lost.
        bandwidth: bits per second (payload + :data:`HEADER_OVERHEAD`), None = unlimited.
        queue_bytes: bytes the send queue holds before dropping (with a bandwidth).
        duplicate: probability that a packet is delivered twice.
        reorder: probability that a packet is delayed by up to ``reorder_delay`` extra
            seconds, letting later packets overtake it.
        mtu: the largest IP packet the link carries (a datagram's payload plus
            :data:`HEADER_OVERHEAD`); larger ones are dropped and traced as ``drop:mtu``
            (like a router dropping a don't-fragment packet).  Default :data:`DEFAULT_MTU`
            (1500, as on Ethernet; 1228 carries only the 1200-byte datagrams QUIC needs).
    """

    def __init__(self, sim: Simulation, a: Node, b: Node, **params: Any) -> None:
        self.sim = sim
        self.a = a
        self.b = b
        self.up = True
        self.latency = default_latency() if sim.default_latency is None else sim.default_latency
        self.loss = default_loss() if sim.default_loss is None else sim.default_loss
        self.jitter = 0.0
        self.bandwidth: float | None = None
        self.queue_bytes = 256 * 1024
        self.duplicate = 0.0
        self.reorder = 0.0
        self.reorder_delay: float | None = None
        self.mtu = sim.default_mtu
        self.rng = random.Random(f"{sim.seed}:link:{a.name}:{b.name}")
        self._dirs: dict[Node, _Direction] = {a: _Direction(), b: _Direction()}
        self.configure(**params)

    _PARAMS = (
        "latency",
        "jitter",
        "loss",
        "bandwidth",
        "queue_bytes",
        "duplicate",
        "reorder",
        "reorder_delay",
        "mtu",
    )

    def configure(self, **params: Any) -> Link:
        """Change parameters (names as the attributes); returns self."""
        for key, value in params.items():
            if key not in self._PARAMS:
                raise TypeError(f"unknown link parameter {key!r} (known: {', '.join(self._PARAMS)})")
            if value is None and key not in ("bandwidth", "reorder_delay"):
                continue
            if key in ("loss", "duplicate", "reorder") and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{key} must be a probability in [0, 1], got {value}")
            if key in ("latency", "jitter") and float(value) < 0:
                raise ValueError(f"{key} must not be negative, got {value}")
            if key == "mtu" and (not isinstance(value, int) or value < 68):
                raise ValueError(f"mtu must be an integer of at least 68 (the IPv4 minimum), got {value!r}")
            if key == "bandwidth" and value is not None and float(value) <= 0:
                raise ValueError(f"bandwidth must be positive bits/s or None, got {value}")
            setattr(self, key, value)
        self.sim._topology_changed()
        return self

    @property
    def name(self) -> str:
        return f"{self.a.name}<->{self.b.name}"

    def other(self, node: Node) -> Node:
        return self.b if node is self.a else self.a

    def direction(self, src: Node) -> _Direction:
        """State of the direction leaving ``src``."""
        return self._dirs[src]

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per direction (``"a->b"`` / ``"b->a"``)."""
        out: dict[str, dict[str, int]] = {}
        for src, d in self._dirs.items():
            dst = self.other(src)
            out[f"{src.name}->{dst.name}"] = {"sent": d.sent, "delivered": d.delivered, "dropped": d.dropped}
        return out

    def __repr__(self) -> str:
        return f"<Link {self.name} latency={self.latency} loss={self.loss}{'' if self.up else ' down'}>"


class _Packet:
    __slots__ = ("data", "dst", "hop", "origin", "path", "realm", "src")

    def __init__(self, data: bytes, src: Address, dst: Address, origin: Host, realm: NatBox | None) -> None:
        self.data = data
        self.src = src
        self.dst = dst
        self.origin = origin
        self.realm = realm
        self.path: list[Node] = []
        self.hop = 0

    def copy(self) -> _Packet:
        p = _Packet(self.data, self.src, self.dst, self.origin, self.realm)
        p.path = self.path
        p.hop = self.hop
        return p


# ---------------------------------------------------------------------------------------------
# Faults given up front


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: at ``at`` virtual seconds, do ``action`` to ``a`` (and ``b``).

    Actions: ``partition``, ``heal``, ``link_down``, ``link_up``, ``hold``, ``release``
    (these take ``a`` and ``b``), ``host_down``, ``host_up``, ``crash``, ``restart``,
    ``isolate``, ``rejoin`` (these take ``a``).  ``oneway`` applies to ``partition``/``heal``/``hold``/``release``.
    """

    at: float
    action: str
    a: str
    b: str | None = None
    oneway: bool = False

    ACTIONS = (
        "partition",
        "heal",
        "link_down",
        "link_up",
        "hold",
        "release",
        "host_down",
        "host_up",
        "crash",
        "restart",
        "isolate",
        "rejoin",
    )

    def apply(self, sim: Simulation) -> None:
        """Perform the fault now."""
        act = self.action
        if act in ("partition", "heal", "hold", "release"):
            getattr(sim, act)(self.a, self._b(), oneway=self.oneway)
        elif act in ("link_down", "link_up"):
            getattr(sim, act)(self.a, self._b())
        elif act in ("host_down", "host_up", "crash", "restart", "isolate", "rejoin"):
            getattr(sim, act)(self.a)
        else:
            raise ValueError(f"unknown fault action {act!r} (known: {', '.join(self.ACTIONS)})")

    def _b(self) -> str:
        if self.b is None:
            raise ValueError(f"fault {self.action} needs two nodes")
        return self.b


NodeRef = Node | str
NodeGroup = NodeRef | Iterable[NodeRef]


# ---------------------------------------------------------------------------------------------
# The simulation


class Simulation:
    """A deterministic simulated network running on a virtual-time loop.

    Args:
        seed: every random choice (loss, jitter, NAT ports, ...) derives from it.
        latency: default link latency in seconds (default: ``SIMULATOR_DEFAULT_LATENCY_MS``).
        loss: default link loss probability (default: ``SIMULATOR_DEFAULT_PACKET_LOSS``).
        mtu: default link MTU in bytes (default: ``SIMULATOR_DEFAULT_MTU``, else
            :data:`DEFAULT_MTU`, 1500 as on Ethernet; 1228 is the smallest QUIC allows).
        auto_link: link every new public node to every existing one with default
            parameters (a full mesh); set False to wire the topology by hand.
        keep_trace: keep trace events in memory (the hash is always computed).
        time_limit: default virtual-seconds limit of :meth:`run` (None: no limit).
        discovery_delay: mock DNS delay in seconds (default: ``SIMULATOR_DISCOVERY_DELAY_MS``).
        livelock: ``"nudge"`` or ``"raise"`` (see :class:`~asgi_p2p.sim.loop.VirtualTimeLoop`).
        tcp_timeout: virtual seconds a simulated TCP segment or SYN may fail to get through
            (a partition, a crashed host) before its connection fails with ``TimeoutError``.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        latency: float | None = None,
        loss: float | None = None,
        auto_link: bool = True,
        keep_trace: bool = True,
        time_limit: float | None = None,
        discovery_delay: float | None = None,
        livelock: str = "nudge",
        mtu: int | None = None,
        tcp_timeout: float = 60.0,
    ) -> None:
        determinism.apply()
        self.seed = seed
        #: Randomness for tests and components that the simulation hands out.
        self.rng = random.Random(seed)
        self.default_latency = default_latency() if latency is None else latency
        self.default_loss = default_loss() if loss is None else loss
        self.default_mtu = default_mtu() if mtu is None else mtu
        self.auto_link = auto_link
        self.time_limit = time_limit
        self.loop = VirtualTimeLoop(START_TIME, livelock=livelock)
        #: Simulated TCP (``asyncio.open_connection`` etc. inside the simulation; see :mod:`asgi_p2p.sim.tcp`).
        self.tcp = TcpNetwork(self.loop, self, timeout=tcp_timeout)
        self.loop.streams = self.tcp
        #: Seeded entropy and the virtual wall clock, active while the loop runs (see
        #: :mod:`asgi_p2p.sim.determinism`); the sleeps and thread starts it refuses are kept
        #: with the loop's real-I/O refusals.
        self.environment = determinism.Environment(
            seed,
            self.loop.time,
            wall_clock_offset=WALL_CLOCK_AT_START - START_TIME,
            on_forbidden=self.loop.note_refusal,
        )
        self.loop.environment = self.environment.active
        self.trace = Trace(keep=keep_trace)
        self.dns = MockDNS(discovery_delay)
        self._nodes: dict[str, Node] = {}
        self._realms: dict[NatBox | None, dict[str, Node]] = {None: {}}
        self._links: list[Link] = []
        self._blocked: set[tuple[Node, Node]] = set()
        self._spt: dict[Node, dict[Node, Node]] = {}
        self._public_next = 1
        self._nat_next = 1
        self._closed = False
        self._apps: SimApps | None = None
        #: Packets handed to sockets / dropped (all reasons).
        self.delivered = 0
        self.dropped = 0
        self.sent = 0

    # -- time -----------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """Virtual seconds since the simulation started."""
        return self.loop.time() - START_TIME

    def at(self, t: float, callback: Callable[..., object], *args: Any) -> asyncio.TimerHandle:
        """Call ``callback(*args)`` at virtual time ``t`` (seconds since start)."""
        return self.loop.call_at(START_TIME + t, callback, *args)

    def after(self, delay: float, callback: Callable[..., object], *args: Any) -> asyncio.TimerHandle:
        """Call ``callback(*args)`` ``delay`` virtual seconds from now."""
        return self.loop.call_later(delay, callback, *args)

    def schedule(self, faults: Iterable[Fault]) -> list[asyncio.TimerHandle]:
        """Schedule faults given up front (times are seconds since start).

        Faults at the same instant apply in the order given (asyncio's timer heap
        does not keep insertion order for equal times, so they share one timer).
        """
        handles = []
        # Group by the loop time they land on: times that differ by less than the clock's
        # resolution (1000.0 + 8.0 == 1000.0 + 8.000000000000002) are the same instant.
        ordered = sorted(faults, key=lambda f: START_TIME + f.at)
        for when, group in itertools.groupby(ordered, key=lambda f: START_TIME + f.at):
            handles.append(self.loop.call_at(when, self._apply_faults, list(group)))
        return handles

    def _apply_faults(self, faults: list[Fault]) -> None:
        for fault in faults:
            fault.apply(self)

    # -- running --------------------------------------------------------------------------

    def run(self, main: Coroutine[Any, Any, T], *, time_limit: float | None = None) -> T:
        """Run ``main`` on the virtual-time loop until it finishes; return its result.

        Raises :class:`~asgi_p2p.sim.SimulationDeadlock` if everything waits with no
        timer pending, :class:`~asgi_p2p.sim.SimulationTimeLimit` past ``time_limit``
        virtual seconds (default: the simulation's ``time_limit``).  A call refused during
        the run (real I/O, ``time.sleep``, a thread start) fails it even when the code under
        test caught the error: :class:`~asgi_p2p.sim.RealIOForbidden`,
        :class:`~asgi_p2p.sim.WallClockSleep` or :class:`~asgi_p2p.sim.ThreadForbidden`
        (see :meth:`take_refusals`).  Background tasks started by ``main`` keep their state
        for the next :meth:`run`; :meth:`close` cancels them.
        """
        if self._closed:
            main.close()
            raise SimulationError("the simulation is closed")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            main.close()
            if running is self.loop:
                raise SimulationError(
                    "sim.run() was called on the simulation's own running loop (in an async test, or in "
                    "code sim.run() runs): await the coroutine instead"
                )
            raise SimulationError(
                "sim.run() cannot be called while another event loop runs in this thread: an async test "
                "that uses the sim fixture runs on the simulation's loop (await directly there); elsewhere, "
                "call sim.run(main()) from synchronous code"
            )
        loop = self.loop
        limit = self.time_limit if time_limit is None else time_limit
        task = loop.create_task(main, name="sim-main")
        loop.main_task = task
        loop.deadline = loop.time() + limit if limit else None
        try:
            result = loop.run_until_complete(task)
        except BaseException as exc:
            if not task.done():
                self._drain([task])
            self._report_refusals(exc)
            raise
        finally:
            loop.deadline = None
            loop.main_task = None
        self._report_refusals(None)
        return result

    def _report_refusals(self, failure: BaseException | None) -> None:
        """Raise the calls refused since the last report (real I/O, wall-clock sleeps, thread
        starts) even if the code under test caught them (an app answering 500, a retry loop, a
        log line): they must fail the test.

        ``failure`` is what ends the run, if anything: a refusal itself is re-raised as it is,
        with a note counting the others; any other exception becomes the cause of the report
        (``KeyboardInterrupt``, ``SystemExit`` and cancellation are kept, with a note).
        """
        refusals, count = self.loop.take_refusals()
        if not refusals:
            return
        first = refusals[0]
        if failure is not None and any(r is failure for r in refusals):
            if count > 1:
                failure.add_note(f"{count - 1} other call(s) were refused inside the simulation as well")
            return
        summary = (
            f"{count} call(s) were refused inside the simulation and the error was caught by the code under "
            f"test (an app answering 500, a retry loop, a log line); the first: {first}"
        )
        if failure is not None and not isinstance(failure, Exception):
            failure.add_note(summary)
            return
        raise type(first)(summary) from (first if failure is None else failure)

    def take_refusals(self) -> list[SimulationError]:
        """The calls refused so far (:class:`~asgi_p2p.sim.RealIOForbidden`,
        :class:`~asgi_p2p.sim.WallClockSleep`, :class:`~asgi_p2p.sim.ThreadForbidden`; the first
        100), forgotten: a test that provokes them on purpose takes them so that :meth:`run` and
        :meth:`close` do not raise them."""
        return self.loop.take_refusals()[0]

    def _drain(self, tasks: list[asyncio.Task[Any]], grace: float = 60.0) -> None:
        """Cancel ``tasks`` and let them unwind (bounded by ``grace`` virtual seconds)."""
        loop = self.loop
        for task in tasks:
            task.cancel()

        async def wait() -> None:
            await asyncio.wait(tasks)

        loop.deadline = loop.time() + grace
        try:
            loop.run_until_complete(wait())
        except Exception as exc:
            log.warning("simulation: tasks did not finish after cancellation: %s", exc)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.debug("task %s ended with %r", task.get_name(), task.exception())

    def close(self) -> None:
        """Close what :meth:`serve`, :meth:`client` and :meth:`relay` made (clients, then
        servers, then relays), cancel remaining tasks, close every socket and the loop
        (idempotent).

        Raises :class:`~asgi_p2p.sim.SimulationError` (after closing everything) if closing
        one of those failed or took more than :data:`APPS_CLOSE_LIMIT` virtual seconds.
        """
        if self._closed:
            return
        self._closed = True
        loop = self.loop
        failure: SimulationError | None = None
        if self._apps is not None and not loop.is_closed():
            failure = self._close_apps(self._apps)
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            if pending:
                self._drain(pending)
            loop.deadline = loop.time() + 60.0
            loop.run_until_complete(loop.shutdown_asyncgens())
        except Exception as exc:  # pragma: no cover - best effort
            log.warning("simulation close: %s", exc)
        finally:
            for node in self._nodes.values():
                if isinstance(node, Host):
                    for sock in list(node.sockets.values()):
                        sock.close()
            loop.close()
        if failure is not None:
            raise failure
        self._report_refusals(None)

    def _close_apps(self, apps: SimApps) -> SimulationError | None:
        loop = self.loop
        task = loop.create_task(apps.aclose(), name="sim-close-apps")
        loop.main_task = task
        loop.deadline = loop.time() + APPS_CLOSE_LIMIT
        try:
            errors = loop.run_until_complete(task)
        except Exception as exc:
            return SimulationError(f"closing the simulation's apps, clients and relays failed: {exc}")
        finally:
            loop.deadline = None
            loop.main_task = None
        if errors:
            failure = SimulationError(
                f"closing the simulation's apps, clients and relays failed: {len(errors)} error(s), "
                f"first: {errors[0]!r}"
            )
            failure.__cause__ = errors[0]
            return failure
        return None

    # -- apps, clients and relays -----------------------------------------------------------

    def _app_helpers(self) -> SimApps:
        if self._closed:
            raise SimulationError("the simulation is closed")
        if self._apps is None:
            from .apps import SimApps

            self._apps = SimApps(self.seed, self.dns, self.loop)
        return self._apps

    def _app_host(self, ref: NodeRef) -> Host:
        node = self.node(ref) if isinstance(ref, str) else ref
        if not isinstance(node, Host):
            raise TypeError(f"{node.name} is a NAT box, not a host: apps, clients and relays run on hosts")
        if not node.up:
            raise SimulationError(f"simulated host {node.name} is down (crashed?): sim.restart() it first")
        return node

    async def serve(
        self,
        app: ASGIApp,
        host: NodeRef,
        *,
        name: str | None = None,
        port: int = 443,
        secret_key: SecretKey | None = None,
        config: NetworkConfig | None = None,
        relay_url: str | None = None,
        relay_urls: Sequence[str] | None = None,
        lifespan: LifespanMode = "auto",
        **server_options: Any,
    ) -> SimServer:
        """Serve an ASGI app over HTTP/3 on ``host`` (a host, or a name: a new host if unknown).

        Runs the app's lifespan startup first (``lifespan`` as in
        :class:`~asgi_p2p.http.H3Server`, whose other options ``server_options`` are).
        The node's key is ``SecretKey.from_seed("<host>:<port>")`` unless ``secret_key``
        is given, so a server restarted on the same host and port keeps its node id.
        The node is registered in :attr:`dns` under ``name`` (or its node id text) and
        the record follows its address.  ``relay_url`` (from :meth:`relay`) makes the
        node keep a relay connection (``relay_urls``: a home relay among several).
        Returns a :class:`~asgi_p2p.sim.SimServer` (``.server``, ``.node``, ``.addr``,
        ``.url``); :meth:`close` shuts it down gracefully, after the clients.
        """
        apps = self._app_helpers()
        on = self._app_host(host)
        with self.tcp.on(on):  # the app (lifespan, requests) runs on the host: its TCP calls go from it
            return await apps.serve(
                app,
                on,
                name=name,
                port=port,
                secret_key=secret_key,
                config=config,
                relay_url=relay_url,
                relay_urls=relay_urls,
                lifespan=lifespan,
                **server_options,
            )

    async def client(
        self,
        host: NodeRef,
        target: SimServer | NodeAddr | NodeId | str | None = None,
        *,
        secret_key: SecretKey | None = None,
        config: NetworkConfig | None = None,
        relay_url: str | None = None,
        relay_urls: Sequence[str] | None = None,
        timeout: float = 30.0,
        port: int = 0,
        wait_for_relay: float | None = None,
        **client_options: Any,
    ) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` sending requests from a new node on ``host``.

        ``target`` sets the base URL: a :class:`~asgi_p2p.sim.SimServer` or a ``NodeAddr``
        (dialed at that address), a ``NodeId`` or node id text (looked up in :attr:`dns`),
        or a name registered there (``"shop"`` gives ``https://shop``; the app sees that
        host).  Any ``https://<node id>/`` or ``https://<name>/`` URL works too: the
        transport resolves hosts through :attr:`dns`.  ``timeout`` is httpx's, in virtual
        seconds; ``client_options`` go to ``httpx.AsyncClient``.  :meth:`close` closes the
        client and its node first, before servers and relays.  The node binds ``port``
        (0: any); with a port its key is ``SecretKey.from_seed("<host>/client:<port>")``, so
        a client restarted on the same host and port keeps its node id.  ``wait_for_relay``
        (virtual seconds, with ``relay_url`` or ``relay_urls``): return only once the (home) relay
        connection is up.
        """
        apps = self._app_helpers()
        on = self._app_host(host)
        with self.tcp.on(on):
            return await apps.client(
                on,
                target,
                secret_key=secret_key,
                config=config,
                relay_url=relay_url,
                relay_urls=relay_urls,
                timeout=timeout,
                port=port,
                wait_for_relay=wait_for_relay,
                **client_options,
            )

    async def relay(
        self,
        host: NodeRef,
        *,
        port: int = 3478,
        secret_key: SecretKey | None = None,
        limits: RelayLimits | None = None,
        config: NetworkConfig | None = None,
    ) -> str:
        """Run a relay server (:class:`~asgi_p2p.relay.server.RelayServer`) on ``host``; its URL.

        Pass the URL as ``relay_url=`` to :meth:`serve` and :meth:`client`: nodes behind
        NATs then reach each other through it and punch holes.  Closed last, after the
        servers.
        """
        apps = self._app_helpers()
        return await apps.relay(self._app_host(host), port=port, secret_key=secret_key, limits=limits, config=config)

    @contextlib.contextmanager
    def on(self, host: NodeRef) -> Iterator[Host]:
        """Code inside ``with sim.on(host):`` (and the tasks it starts) runs on ``host``: its
        ``asyncio.open_connection`` / ``start_server`` use simulated TCP from that host."""
        node = self._ref(host)
        if not isinstance(node, Host):
            raise TypeError(f"{node.name} is a NAT box, not a host")
        with self.tcp.on(node):
            yield node

    # -- what simulated TCP needs of the network (asgi_p2p.sim.tcp.StreamRouter) ----------------

    def stream_trip(self, host: Host, port: int, dst: Address) -> StreamTrip | str:
        """How a TCP segment from ``host``:``port`` to ``dst`` travels now, or why it cannot:
        the links of every realm it crosses and the NAT translations (with the boxes' TCP
        tables and port forwards) on the way, as a datagram would be routed."""
        if not host.up:
            return "host-down"
        src: Address = (host.address, port)
        at: Node = host
        realm = host.realm
        hops: list[tuple[Link, _Direction]] = []
        latency = 0.0
        blocked = self._blocked
        now = self.loop.time()
        for _ in range(64):  # realms crossed: bounded by the NAT nesting
            target = self._realms[realm].get(dst[0])
            if target is None:
                if at is host and dst[0].startswith("127."):
                    target = host
                elif realm is None:
                    return "no-route"
                else:
                    target = realm
            if blocked and ((at, target) in blocked or (host, target) in blocked):
                return "partition"
            if target is not at:
                path = self._path(at, target)
                if path is None:
                    return "no-path"
                for x, y in itertools.pairwise(path):
                    lk = x.links[y]
                    if not lk.up:
                        return "link-down"
                    hops.append((lk, lk.direction(x)))
                    latency += lk.latency
            if not target.up:
                return "host-down"
            if isinstance(target, Host):
                return StreamTrip(target, src, dst, hops, latency)  # type: ignore[arg-type]
            assert isinstance(target, NatBox)
            if realm is target:  # leaving the box's private realm
                forwarded = next((p for p, internal in target.tcp_forwards.items() if internal == src), None)
                if forwarded is not None:
                    src = (target.public_address, forwarded)
                else:
                    src, created = target.tcp_table.outbound(src, dst, now)
                    if created:
                        self._record("nat:map:tcp", (host.address, port), src, 0, target.name)
                realm = target.realm
                at = target
                if dst[0] != target.public_address:
                    continue
                if not target.config.hairpinning:
                    return "no-hairpin"
            internal = target.tcp_forwards.get(dst[1])
            if internal is None:
                internal, reason = target.tcp_table.inbound(dst[1], src, now)
                if internal is None and reason == "no-mapping":
                    why = f"NAT box {target.name} has no mapping nor port forward for TCP port {dst[1]}"
                    return StreamTrip(target, src, dst, hops, latency, why)  # type: ignore[arg-type]
                if internal is None:
                    return "nat-" + reason
            dst = internal
            realm = target
            at = target
        raise SimulationError(f"TCP route from {host.name} to {dst} loops through NAT boxes")  # pragma: no cover

    def stream_reachable(self, src: Host, dst: Host) -> str:
        """Why a segment in flight from ``src`` can no longer land on ``dst`` ("" if it can)."""
        if not dst.up:
            return "host-down"
        if self._blocked and (src, dst) in self._blocked:
            return "partition"
        return ""

    def stream_resolve(self, name: str, host: Host | None) -> str | None:
        """The address the simulated host ``name`` has for ``host`` (its public one from
        another realm); None if no host is called so."""
        node = self._nodes.get(name)
        if not isinstance(node, Host):
            return None
        if host is None or host.realm is node.realm:
            return node.address
        return node.public_address

    def stream_record(self, kind: str, src: Address, dst: Address, length: int, where: str) -> None:
        """Add a trace event (simulated TCP's)."""
        self._record(kind, src, dst, length, where)

    def __enter__(self) -> Simulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building the topology --------------------------------------------------------------

    def node(self, name: str, addr: str | None = None, **kwargs: Any) -> Node:
        """The node called ``name``; if there is none, a new host (arguments as :meth:`host`)."""
        existing = self._nodes.get(name)
        if existing is not None and addr is None and not kwargs:
            return existing
        return self.host(name, addr, **kwargs)

    def _ref(self, ref: NodeRef) -> Node:
        if isinstance(ref, Node):
            return ref
        try:
            return self._nodes[ref]
        except KeyError:
            raise KeyError(f"no simulated node named {ref!r}") from None

    def _group(self, group: NodeGroup) -> list[Node]:
        if isinstance(group, (Node, str)):
            return [self._ref(group)]
        return [self._ref(x) for x in group]

    @property
    def nodes(self) -> list[Node]:
        """All nodes in creation order."""
        return list(self._nodes.values())

    @property
    def hosts(self) -> list[Host]:
        """All hosts in creation order."""
        return [n for n in self._nodes.values() if isinstance(n, Host)]

    @property
    def links(self) -> list[Link]:
        """All links in creation order."""
        return list(self._links)

    def _check_name(self, name: str) -> None:
        if not name:
            raise ValueError("node name must not be empty")
        if name in self._nodes:
            raise ValueError(f"a simulated node named {name!r} already exists")

    def _claim_address(self, realm: NatBox | None, address: str | None) -> str:
        table = self._realms[realm]
        if address is not None:
            ipaddress.ip_address(address)  # validates
            if address in table:
                where = "the internet" if realm is None else f"behind {realm.name}"
                raise ValueError(f"address {address} is already used {where} (by {table[address].name})")
            return address
        if realm is None:
            while True:
                n = self._public_next
                self._public_next += 1
                candidate = f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
                if n & 255 not in (0, 255) and candidate not in table:
                    return candidate
        while True:
            n = realm._next_private
            realm._next_private += 1
            candidate = f"192.168.{(n >> 8) & 255}.{n & 255}"
            if n & 255 not in (0, 1, 255) and candidate not in table:
                return candidate

    def _resolve_nat(self, nat: NatBox | NatConfig | str, name: str) -> NatBox:
        if isinstance(nat, NatBox):
            return nat
        return self.nat(f"{name}-nat", nat)

    def host(
        self,
        name: str,
        addr: str | None = None,
        *,
        nat: NatBox | NatConfig | str | None = None,
        lan_latency: float = 0.0005,
    ) -> Host:
        """Add a host.

        Args:
            addr: its address (public, or private when behind a NAT); None: assigned.
            nat: put it behind a NAT: an existing :class:`NatBox` (shared), or a
                :class:`NatConfig` / preset name (``"full-cone"``, ``"restricted-cone"``,
                ``"port-restricted-cone"``, ``"symmetric"``, ``"easy"``, ``"hard"``)
                for a new box named ``<name>-nat``.
            lan_latency: latency of the lossless link to its NAT box.
        """
        self._check_name(name)
        box = None if nat is None or nat == "none" else self._resolve_nat(nat, name)
        address = self._claim_address(box, addr)
        h = Host(self, name, len(self._nodes), box, address)
        self._add_node(h, address)
        if box is not None:
            self.link(h, box, latency=lan_latency, loss=0.0)
        return h

    def nat(
        self,
        name: str,
        config: NatConfig | str = "port-restricted-cone",
        *,
        public_address: str | None = None,
        behind: NatBox | None = None,
        **overrides: Any,
    ) -> NatBox:
        """Add a NAT box (``behind`` another one for carrier-grade NAT).

        ``config`` is a :class:`NatConfig` or a preset name; ``overrides`` replace
        fields of it (e.g. ``hairpinning=True``, ``mapping_timeout=30``).
        """
        self._check_name(name)
        if isinstance(config, str):
            try:
                config = NAT_PRESETS[config]
            except KeyError:
                raise ValueError(f"unknown NAT preset {config!r} (known: {', '.join(NAT_PRESETS)})") from None
        if overrides:
            from dataclasses import replace

            config = replace(config, **overrides)
        address = self._claim_address(behind, public_address or config.public_address)
        box = NatBox(self, name, len(self._nodes), behind, config, address)
        self._realms[box] = {}
        self._add_node(box, address)
        if behind is not None:
            self.link(box, behind, latency=0.001, loss=0.0)
        return box

    def _add_node(self, node: Node, address: str) -> None:
        self._nodes[node.name] = node
        self._realms[node.realm][address] = node
        if self.auto_link and node.realm is None:
            for other in list(self._nodes.values()):
                if other is not node and other.realm is None and other not in node.links:
                    self.link(node, other)
        self._topology_changed()
        log.debug("added %r at %s", node, address)

    def _wire_ends(self, a: Node, b: Node) -> tuple[Node, Node]:
        """Climb NAT realms until both ends are in the same realm."""
        chain_a: list[Node] = [a]
        while chain_a[-1].realm is not None:
            chain_a.append(chain_a[-1].realm)
        chain_b: list[Node] = [b]
        while chain_b[-1].realm is not None:
            chain_b.append(chain_b[-1].realm)
        for x in chain_a:
            for y in chain_b:
                if x.realm is y.realm and x is not y:
                    return x, y
        raise ValueError(f"cannot link {a.name} and {b.name}: no common network")

    def link(self, a: NodeRef, b: NodeRef, **params: Any) -> Link:
        """Create or reconfigure the link between ``a`` and ``b``.

        A host behind a NAT is wired through its NAT box.  Parameters: ``latency``,
        ``jitter`` (seconds), ``loss``, ``duplicate``, ``reorder`` (probabilities),
        ``reorder_delay`` (seconds), ``bandwidth`` (bits/s), ``queue_bytes``.
        """
        na, nb = self._ref(a), self._ref(b)
        if na is nb:
            raise ValueError("cannot link a node to itself")
        if na.realm is not nb.realm and not (nb is na.realm or na is nb.realm):
            na, nb = self._wire_ends(na, nb)
        existing = na.links.get(nb)
        if existing is not None:
            return existing.configure(**params)
        lk = Link(self, na, nb, **params)
        na.links[nb] = lk
        nb.links[na] = lk
        self._links.append(lk)
        self._topology_changed()
        return lk

    def get_link(self, a: NodeRef, b: NodeRef) -> Link:
        """The link between ``a`` and ``b`` (KeyError if none)."""
        na, nb = self._ref(a), self._ref(b)
        lk = na.links.get(nb)
        if lk is None:
            raise KeyError(f"no link between {na.name} and {nb.name}")
        return lk

    def unlink(self, a: NodeRef, b: NodeRef) -> None:
        """Remove the link between ``a`` and ``b`` (packets on it are lost)."""
        lk = self.get_link(a, b)
        del lk.a.links[lk.b]
        del lk.b.links[lk.a]
        self._links.remove(lk)
        lk.up = False
        self._topology_changed()

    # -- routing -----------------------------------------------------------------------------

    def _topology_changed(self) -> None:
        self._spt.clear()

    def _tree(self, src: Node) -> dict[Node, Node]:
        """Shortest-path predecessor map from ``src`` over up links and up nodes."""
        tree = self._spt.get(src)
        if tree is not None:
            return tree
        prev: dict[Node, Node] = {}
        dist: dict[Node, float] = {src: 0.0}
        heap: list[tuple[float, int, Node]] = [(0.0, src.index, src)]
        done: set[Node] = set()
        while heap:
            d, _, node = heapq.heappop(heap)
            if node in done:
                continue
            done.add(node)
            if node is not src and not node.up:
                continue  # a down node is reachable but routes nothing
            for nxt, lk in node.links.items():
                if not lk.up or nxt in done:
                    continue
                nd = d + lk.latency + 1e-9
                if nd < dist.get(nxt, float("inf")):
                    dist[nxt] = nd
                    prev[nxt] = node
                    heapq.heappush(heap, (nd, nxt.index, nxt))
        self._spt[src] = prev
        return prev

    def _path(self, src: Node, dst: Node) -> list[Node] | None:
        if src is dst:
            return [src]
        prev = self._tree(src)
        if dst not in prev:
            return None
        path = [dst]
        node = dst
        while node is not src:
            node = prev[node]
            path.append(node)
        path.reverse()
        return path

    def find_path(self, a: NodeRef, b: NodeRef) -> list[str] | None:
        """Names of the nodes on the current path from ``a`` to ``b``; None if there is
        none (no links, links or nodes down, or a partition between them)."""
        na, nb = self._ref(a), self._ref(b)
        if (na, nb) in self._blocked or not na.up or not nb.up:
            return None
        path = self._path(na, nb)
        return None if path is None else [n.name for n in path]

    def path_latency(self, a: NodeRef, b: NodeRef) -> float | None:
        """Sum of link latencies along :meth:`find_path` (None if no path)."""
        names = self.find_path(a, b)
        if names is None:
            return None
        nodes = [self._nodes[n] for n in names]
        return sum(x.links[y].latency for x, y in itertools.pairwise(nodes))

    # -- faults -------------------------------------------------------------------------------

    def partition(self, a: NodeGroup, b: NodeGroup, *, oneway: bool = False) -> None:
        """No packet from group ``a`` reaches group ``b`` (nor back, unless ``oneway``)."""
        for x in self._group(a):
            for y in self._group(b):
                self._blocked.add((x, y))
                if not oneway:
                    self._blocked.add((y, x))
        log.debug("t=%.6f partition %s %s %s", self.now, a, "->" if oneway else "<->", b)

    def heal(self, a: NodeGroup | None = None, b: NodeGroup | None = None, *, oneway: bool = False) -> None:
        """Undo :meth:`partition` between ``a`` and ``b`` (every partition when both are None)."""
        if a is None and b is None:
            self._blocked.clear()
            return
        if a is None or b is None:
            raise ValueError("heal() takes two groups, or none to heal everything")
        for x in self._group(a):
            for y in self._group(b):
                self._blocked.discard((x, y))
                if not oneway:
                    self._blocked.discard((y, x))

    def isolate(self, h: NodeRef) -> None:
        """Cut host ``h`` (with its own NAT box, if no other host is behind it) off from every
        other node: a partition between it and the rest of the network, both ways."""
        group, rest = self._isolation(h)
        self.partition(group, rest)

    def rejoin(self, h: NodeRef) -> None:
        """Undo :meth:`isolate` (other partitions stay)."""
        group, rest = self._isolation(h)
        self.heal(group, rest)

    def _isolation(self, h: NodeRef) -> tuple[list[Node], list[Node]]:
        host = self._ref(h)
        if not isinstance(host, Host):
            raise TypeError(f"{host.name} is not a host")
        group: list[Node] = [host]
        box = host.realm
        if box is not None and all(n is host for n in self._realms[box].values()):
            group.append(box)
        return group, [n for n in self._nodes.values() if n not in group]

    def is_partitioned(self, a: NodeRef, b: NodeRef) -> bool:
        """Whether packets from ``a`` to ``b`` are blocked by a partition."""
        return (self._ref(a), self._ref(b)) in self._blocked

    def hold(self, a: NodeRef, b: NodeRef, *, oneway: bool = False) -> None:
        """Hold packets entering the link ``a``-``b`` until :meth:`release`."""
        lk = self.get_link(a, b)
        src = self._ref(a)
        for node in (src,) if oneway else (lk.a, lk.b):
            d = lk.direction(node)
            if d.held is None:
                d.held = []

    def release(self, a: NodeRef, b: NodeRef, *, oneway: bool = False) -> None:
        """Send the packets held on the link ``a``-``b`` now (in their original order)."""
        lk = self.get_link(a, b)
        src = self._ref(a)
        for node in (src,) if oneway else (lk.a, lk.b):
            d = lk.direction(node)
            held, d.held = d.held, None
            for pkt in held or ():
                self._transmit(pkt)

    def link_down(self, a: NodeRef, b: NodeRef) -> None:
        """Take the link down: packets on it are dropped and routes avoid it."""
        self.get_link(a, b).up = False
        self._topology_changed()

    def link_up(self, a: NodeRef, b: NodeRef) -> None:
        """Bring the link back up."""
        self.get_link(a, b).up = True
        self._topology_changed()

    def host_down(self, h: NodeRef) -> None:
        """The node stops sending, receiving and forwarding (sockets stay bound)."""
        self._ref(h).up = False
        self._topology_changed()

    def host_up(self, h: NodeRef) -> None:
        """The node works again."""
        self._ref(h).up = True
        self._topology_changed()

    def crash(self, h: NodeRef) -> None:
        """The host goes down and loses its sockets; ``on_crash`` callbacks run."""
        host = self._ref(h)
        if not isinstance(host, Host):
            raise TypeError(f"{host.name} is not a host")
        host.crashes += 1
        self._record("crash", (host.address, 0), (host.address, 0), 0, host.name)
        for sock in list(host.sockets.values()):
            sock.close()
        self.tcp.host_crashed(host)
        self.host_down(host)
        for cb in list(host.on_crash):
            try:
                cb()
            except Exception:
                log.exception("on_crash callback of %s failed", host.name)

    def restart(self, h: NodeRef) -> None:
        """Bring a crashed host back (no sockets: bind again)."""
        host = self._ref(h)
        self._record("restart", (getattr(host, "address", ""), 0), (getattr(host, "address", ""), 0), 0, host.name)
        self.host_up(host)

    # -- packets ------------------------------------------------------------------------------

    def _record(self, kind: str, src: Address, dst: Address, length: int, where: str) -> None:
        t = round((self.loop.time() - START_TIME) * 1e9)
        self.trace.record_fields(t, kind, src, dst, length, where)

    def _drop(self, pkt: _Packet, reason: str, where: str) -> None:
        self.dropped += 1
        self._record("drop:" + reason, pkt.src, pkt.dst, len(pkt.data), where)

    def _send(self, sock: SimSocket, data: bytes, dst: Address) -> None:
        host = sock.host
        src = (host.address, sock.port)
        self.sent += 1
        self._record("send", src, dst, len(data), host.name)
        pkt = _Packet(data, src, dst, host, host.realm)
        if not host.up:
            self._drop(pkt, "host-down", host.name)
            return
        self._route(pkt, host)

    def _route(self, pkt: _Packet, at: Node) -> None:
        """Send ``pkt`` from node ``at`` towards its destination in its realm."""
        target = self._realms[pkt.realm].get(pkt.dst[0])
        if target is None:
            if isinstance(at, Host) and pkt.dst[0].startswith("127."):
                target = at
            elif pkt.realm is None:
                self._drop(pkt, "no-route", at.name)
                return
            else:
                target = pkt.realm  # the NAT box is the default gateway
        if self._blocked and ((at, target) in self._blocked or (pkt.origin, target) in self._blocked):
            self._drop(pkt, "partition", at.name)
            return
        if target is at:
            pkt.path = [at]
            pkt.hop = 0
            self.loop.call_soon(self._arrive, pkt, at)
            return
        path = self._path(at, target)
        if path is None:
            self._drop(pkt, "no-path", at.name)
            return
        pkt.path = path
        pkt.hop = 0
        self._transmit(pkt)

    def _transmit(self, pkt: _Packet) -> None:
        """Put ``pkt`` on the link leaving ``pkt.path[pkt.hop]``."""
        node = pkt.path[pkt.hop]
        nxt = pkt.path[pkt.hop + 1]
        lk = node.links.get(nxt)
        if lk is None or not lk.up:
            self._drop(pkt, "link-down", node.name)
            return
        d = lk.direction(node)
        if len(pkt.data) + HEADER_OVERHEAD > lk.mtu:
            d.dropped += 1
            self._drop(pkt, "mtu", lk.name)
            return
        if d.held is not None:
            d.held.append(pkt)
            return
        d.sent += 1
        rng = lk.rng
        if lk.loss and rng.random() < lk.loss:
            d.dropped += 1
            self._drop(pkt, "loss", lk.name)
            return
        now = self.loop.time()
        depart = now
        if lk.bandwidth:
            rate = lk.bandwidth / 8.0
            size = len(pkt.data) + HEADER_OVERHEAD
            start = d.busy_until if d.busy_until > now else now
            if (start - now) * rate + size > lk.queue_bytes + 1e-6:
                d.dropped += 1
                self._drop(pkt, "queue", lk.name)
                return
            d.busy_until = depart = start + size / rate
        arrival = depart + lk.latency
        if lk.jitter:
            arrival += rng.uniform(0.0, lk.jitter)
        if lk.reorder and rng.random() < lk.reorder:
            extra = lk.reorder_delay if lk.reorder_delay is not None else max(lk.latency, 0.01)
            arrival += rng.uniform(0.0, extra)
            self.loop.call_at(arrival, self._hop_arrival, pkt, lk, d)
        else:
            if arrival < d.last_arrival:
                arrival = d.last_arrival
            d.last_arrival = arrival
            d.fifo.append(pkt)
            self.loop.call_at(arrival, self._fifo_arrival, lk, d)
        if lk.duplicate and rng.random() < lk.duplicate:
            self._record("dup", pkt.src, pkt.dst, len(pkt.data), lk.name)
            extra = rng.uniform(0.0, max(lk.jitter, 0.001))
            self.loop.call_at(arrival + extra, self._hop_arrival, pkt.copy(), lk, d)

    def _fifo_arrival(self, lk: Link, d: _Direction) -> None:
        self._hop_arrival(d.fifo.popleft(), lk, d)

    def _hop_arrival(self, pkt: _Packet, lk: Link, d: _Direction) -> None:
        if not lk.up:
            d.dropped += 1
            self._drop(pkt, "link-down", lk.name)
            return
        d.delivered += 1
        pkt.hop += 1
        node = pkt.path[pkt.hop]
        if pkt.hop == len(pkt.path) - 1:
            self._arrive(pkt, node)
            return
        if not node.up:
            self._drop(pkt, "host-down", node.name)
            return
        self._transmit(pkt)

    def _arrive(self, pkt: _Packet, node: Node) -> None:
        """``pkt`` reached the node owning its destination (or its gateway)."""
        if not node.up:
            self._drop(pkt, "host-down", node.name)
            return
        if isinstance(node, NatBox):
            if pkt.realm is node:
                self._nat_outbound(pkt, node)
            else:
                self._nat_inbound(pkt, node)
            return
        assert isinstance(node, Host)
        if self._blocked and (pkt.origin, node) in self._blocked:
            self._drop(pkt, "partition", node.name)
            return
        sock = node.sockets.get(pkt.dst[1])
        if sock is None:
            self._drop(pkt, "no-socket", node.name)
            return
        self.delivered += 1
        sock.received += 1
        self._record("deliver", pkt.src, pkt.dst, len(pkt.data), node.name)
        token = current_host.set(node)  # what the receiver does (and starts) runs on this host
        try:
            sock.receiver(pkt.data, pkt.src)
        except Exception:  # a receiver bug must not break the network
            log.exception("receiver of %r failed", sock)
        finally:
            current_host.reset(token)

    def _nat_outbound(self, pkt: _Packet, box: NatBox) -> None:
        ext, created = box.table.outbound(pkt.src, pkt.dst, self.loop.time())
        if created:
            self._record("nat:map", pkt.src, ext, 0, box.name)
        pkt.src = ext
        pkt.realm = box.realm
        if pkt.dst[0] == box.public_address:
            if not box.config.hairpinning:
                self._drop(pkt, "no-hairpin", box.name)
                return
            self._nat_inbound(pkt, box)
            return
        self._route(pkt, box)

    def _nat_inbound(self, pkt: _Packet, box: NatBox) -> None:
        internal, reason = box.table.inbound(pkt.dst[1], pkt.src, self.loop.time())
        if internal is None:
            self._drop(pkt, "nat-" + reason, box.name)
            return
        pkt.dst = internal
        pkt.realm = box
        self._route(pkt, box)

    # -- statistics -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: packets sent/delivered/dropped (by reason), virtual time, loop figures."""
        drops = {k[5:]: n for k, n in sorted(self.trace.counts.items()) if k.startswith("drop:")}
        return {
            "virtual_time": self.now,
            "sent": self.sent,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "drops": drops,
            "duplicated": self.trace.counts["dup"],
            "loop_iterations": self.loop.iterations,
            "livelock_nudges": self.loop.livelock_nudges,
            "trace_hash": self.trace.hash(),
        }
