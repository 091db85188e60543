"""Fuzzing the relay server beyond its codec, on the simulator (issue 12): arbitrary frames on an
authenticated relay connection, and arbitrary datagrams at the relay's UDP socket.

One relay (with small rate limits and queues, so that a batch meets them) and two registered
clients on its data plane live for the whole module: a node whose home relay it is (it answers
what the relay forwards it) and a bare relay client (what it receives is recorded).  Each
example of the first test opens a relay connection from a hostile node and sends a batch of
frames, repeated up to 20 times, at once or spaced: SEND and SIGNAL frames to the clients, to
itself, to the relay and to nobody, mutated or not, then maybe random bytes, a frame only a relay
may send or a mutated one (which closes the connection).  Each example of the second sends the
relay's socket a batch of datagrams, from another host or spoofing the bare client's address:
random bytes, plane datagrams with forged tokens or the bare client's real one, first contacts
carrying mutated Initials to every kind of destination (and ones the relay forwards), ClientHellos
(mutated or not), junk Initials and disco junk.

After every example: nothing raised and nothing was logged at ERROR; once the handshake
timeout and the first contacts' expiry have passed (virtual time), the relay's client table,
plane tokens, queues, first contacts, connections and half-open connections, and the clients'
connections, are back to what they were before the fuzzing; and the node's packet still reaches
the bare client.  The last test connects a new client, exchanges packets with it, and dials the
node through the relay end to end.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aioquic.quic.events import QuicEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_p2p import Node, SecretKey
from asgi_p2p import aioquic_compat as hooks
from asgi_p2p.endpoint.connection import PeerConnection
from asgi_p2p.endpoint.endpoint import Endpoint
from asgi_p2p.identity import NodeAddr, NodeId
from asgi_p2p.paths.disco import DISCO_MAGIC
from asgi_p2p.relay.client import RelayClient
from asgi_p2p.relay.first_contact import FIRST_CONTACT_TOKEN, encode_first_contact
from asgi_p2p.relay.plane import PLANE_MAGIC, is_plane
from asgi_p2p.relay.proto import (
    PLANE_TOKEN_SIZE,
    RELAY_ALPN,
    Error,
    ErrorCode,
    ObservedAddr,
    PlaneToken,
    Recv,
    RelayLimits,
    Send,
    Signal,
)
from asgi_p2p.relay.server import RelayServer
from asgi_p2p.sim import Simulation
from tests.endpoint.initials import ClientHellos, junk_initial

from .rig import RecordingSink

RELAY_PORT = 3478
#: virtual seconds a check of the relay's state may take to come back to its baseline: the
#: handshake timeout of a half-open connection a fuzzed Initial made, and then some
SETTLE = 15.0
#: small budgets, so that a batch meets the rate limits and waits in the per-destination queues
LIMITS = RelayLimits(
    packets_per_second=2000,
    packet_burst=40,
    destination_packets_per_second=100,
    destination_packet_burst=4,
    destination_queue_bytes=4096,
    errors_per_second=20,
)


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _RawRelayHandler:
    """A hostile relay client's connection: the test sends its frames by hand."""

    def __init__(self, conn: PeerConnection) -> None:
        self.conn = conn
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event: QuicEvent) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


@dataclass
class Rig:
    sim: Simulation
    relay: RelayServer
    #: a node with the relay as its home relay: it answers what the relay forwards it
    node: Node
    #: a relay client that hands what it receives to a recording sink (no endpoint behind it)
    raw: RelayClient
    raw_ep: Endpoint
    sink: RecordingSink
    #: the plane token the relay issued to ``raw``
    token: bytes
    evil: Endpoint
    evil_handlers: list[_RawRelayHandler]
    attacker: Any  # a socket on another host that never answers
    errors: _Errors
    baseline: dict[str, Any] = field(default_factory=dict)
    round: int = 0

    def state(self) -> dict[str, Any]:
        """What the fuzzing could leave behind, at the relay and at its clients."""
        relay, ep = self.relay, self.relay.endpoint
        out: dict[str, Any] = {
            "relay clients": sorted(str(n) for n in relay.clients),
            "plane tokens": len(relay.plane),
            "queued bytes": relay.router.queued_bytes,
            "first contacts": len(relay.first_contacts),
            "relay connections": ep.connection_count,
            "relay half-open": ep.handshaking,
        }
        for name, client_ep in (("node", self.node), ("raw client", self.raw_ep)):
            out[f"queued for the {name}"] = relay.router.queued_for(client_ep.node_id)
            out[f"{name} connections"] = client_ep.connection_count
            out[f"{name} half-open"] = client_ep.handshaking
        return out

    async def settle(self) -> None:
        """Wait (virtual time) until the state is back to the baseline; fail naming what is not."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE
        while (now := self.state()) != self.baseline:
            if loop.time() > deadline:
                diff = {k: (self.baseline.get(k), v) for k, v in now.items() if v != self.baseline.get(k)}
                raise AssertionError(f"not back to the baseline after {SETTLE}s (before, now): {diff}")
            await asyncio.sleep(0.1)

    async def delivers(self) -> None:
        """The node's packet reaches the raw client through the relay, on the plane as before."""
        relay = self.node.relay
        assert isinstance(relay, RelayClient)
        marker = b"legitimate %d" % self.round
        assert relay.connected and relay.on_plane and self.raw.connected and self.raw.on_plane
        assert relay.send_packet(self.raw_ep.node_id, marker)
        await self.sink.wait_for(lambda: (self.node.node_id, marker) in self.sink.packets, timeout=5)
        self.sink.packets.clear()  # (and what the fuzzing sent it)


def _tokens_sent(ep: Endpoint) -> list[bytes]:
    """The plane tokens in the plane datagrams ``ep``'s socket sends from now on."""
    tokens: list[bytes] = []
    send = ep.router.sendto

    def recording(data: bytes, addr: tuple[str, int]) -> None:
        if is_plane(data):
            tokens.append(bytes(data[len(PLANE_MAGIC) : len(PLANE_MAGIC) + PLANE_TOKEN_SIZE]))
        send(data, addr)

    ep.router.sendto = recording
    return tokens


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - state without an event, polled in virtual time
            await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    sim = Simulation(seed=12, latency=0.005, loss=0.0, keep_trace=False)
    errors = _Errors()
    loggers = [logging.getLogger("asgi_p2p"), logging.getLogger("asyncio")]
    for logger in loggers:
        logger.addHandler(errors)

    async def setup() -> Rig:
        relay = await RelayServer.bind(
            SecretKey.from_seed("fuzz-relay"),
            host="0.0.0.0",
            port=RELAY_PORT,
            network=sim.host("relay"),
            limits=LIMITS,
        )
        node = await Node.bind(
            SecretKey.from_seed("fuzz-node"), host="0.0.0.0", network=sim.host("node"), relay_url=str(relay.url)
        )
        raw_ep = await Endpoint.bind(SecretKey.from_seed("fuzz-raw"), host="0.0.0.0", network=sim.host("raw"))
        tokens = _tokens_sent(raw_ep)
        sink = RecordingSink()
        raw = RelayClient(raw_ep, str(relay.url), sink, rng=random.Random(1))
        raw.start()
        assert isinstance(node.relay, RelayClient)
        for client in (node.relay, raw):
            await client.wait_connected(10)
            await _until(lambda c=client: c.on_plane)  # type: ignore[misc]
        evil = await Endpoint.bind(SecretKey.from_seed("fuzz-evil"), host="0.0.0.0", network=sim.host("evil"))
        handlers: list[_RawRelayHandler] = []

        def factory(conn: PeerConnection) -> _RawRelayHandler:
            handlers.append(_RawRelayHandler(conn))
            return handlers[-1]

        evil.add_protocol(RELAY_ALPN, factory)
        attacker = await sim.host("attacker").bind("0.0.0.0", 0, lambda _data, _addr: None)
        rig = Rig(sim, relay, node, raw, raw_ep, sink, tokens[-1], evil, handlers, attacker, errors)
        rig.baseline = rig.state()
        await rig.delivers()
        return rig

    rig = sim.run(setup())
    yield rig

    async def teardown() -> None:
        await rig.evil.close(timeout=0.5)
        await rig.raw.close()
        await rig.raw_ep.close(timeout=0.5)
        await rig.node.close(timeout=0.5)
        await rig.relay.close(timeout=0.5)

    try:
        sim.run(teardown())
    finally:
        for logger in loggers:
            logger.removeHandler(errors)
        sim.close()


# -- strategies -------------------------------------------------------------------------------

_HELLOS = ClientHellos(random.Random(1), alpn=RELAY_ALPN)
_INITIALS = [_HELLOS() for _ in range(4)] + [ClientHellos(random.Random(2))()]


@st.composite
def _mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` as it is, bit-flipped, truncated or with a random tail."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= 1 << draw(st.integers(0, 7))
    cut = draw(st.sampled_from(["none", "none", "truncate", "tail"]))
    if cut == "truncate" and len(data) > 1:
        del data[draw(st.integers(1, len(data) - 1)) :]
    elif cut == "tail":
        data += draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


def _node_ids(rig: Rig) -> st.SearchStrategy[NodeId]:
    """Nodes a hostile frame or datagram names: the clients, the hostile node, the relay, anybody."""
    clients = st.sampled_from([rig.node.node_id, rig.raw_ep.node_id])
    others = st.sampled_from([rig.evil.node_id, rig.relay.node_id])
    return st.one_of(clients, clients, others, st.binary(min_size=32, max_size=32).map(NodeId))


def _initials() -> st.SearchStrategy[bytes]:
    """Initials: genuine ClientHellos (mostly for the relay), junk ones; mutated or not."""
    return st.one_of(
        st.sampled_from(_INITIALS).flatmap(_mutated),
        st.integers(0, 2**32).map(lambda seed: junk_initial(random.Random(seed))),
    )


def _frames(rig: Rig) -> st.SearchStrategy[tuple[list[bytes], bytes | None]]:
    """(frames the relay forwards or refuses, a last frame that may break the protocol): a frame
    only a relay sends, random bytes or a mutated frame (which closes the connection)."""
    nodes = _node_ids(rig)
    packets = st.one_of(st.binary(min_size=1, max_size=1200), _initials())
    forwardable = st.one_of(
        st.builds(Send, nodes, packets), st.builds(Signal, nodes, st.binary(min_size=1, max_size=300))
    ).map(lambda frame: frame.encode())
    relay_only = st.one_of(
        st.builds(Recv, nodes, st.binary(min_size=1, max_size=100)),
        st.builds(ObservedAddr, st.ip_addresses(v=4).map(str), st.integers(0, 65535)),
        st.builds(Error, st.sampled_from(list(ErrorCode)), st.text(max_size=50), st.one_of(st.none(), nodes)),
        st.builds(PlaneToken, st.binary(min_size=PLANE_TOKEN_SIZE, max_size=PLANE_TOKEN_SIZE)),
    ).map(lambda frame: frame.encode())
    hostile = st.one_of(
        st.binary(min_size=1, max_size=1300), relay_only, st.one_of(forwardable, relay_only).flatmap(_mutated)
    )
    return st.tuples(
        st.lists(st.one_of(forwardable, forwardable, forwardable.flatmap(_mutated)), max_size=40),
        st.one_of(st.none(), hostile),
    )


def _datagrams(rig: Rig) -> st.SearchStrategy[tuple[bytes, bool]]:
    """(datagram, spoofed): spoofed ones claim to come from the raw client's address."""
    nodes = _node_ids(rig)
    tokens = st.one_of(
        st.just(rig.token),
        st.binary(min_size=PLANE_TOKEN_SIZE, max_size=PLANE_TOKEN_SIZE),
        st.just(FIRST_CONTACT_TOKEN),
    )
    plane = st.builds(
        lambda token, node, packet: PLANE_MAGIC + token + node.to_bytes() + packet,
        tokens,
        nodes,
        st.one_of(st.binary(max_size=1200), _initials()),
    )
    first_contacts = st.builds(encode_first_contact, nodes, nodes, _initials())
    # ones the relay forwards: to a registered client, claiming a node without a relay connection,
    # carrying a full-size Initial (a genuine ClientHello: the client answers it through the relay)
    clients = st.sampled_from([rig.node.node_id, rig.raw_ep.node_id])
    anybody = st.binary(min_size=32, max_size=32).map(NodeId)
    full_initials = st.one_of(
        st.sampled_from(_INITIALS), st.integers(0, 2**32).map(lambda seed: junk_initial(random.Random(seed)))
    )
    forwarded = st.builds(encode_first_contact, clients, anybody, full_initials)
    datagram = st.one_of(
        st.binary(min_size=1, max_size=1400),
        plane,
        plane.flatmap(_mutated),
        first_contacts,
        first_contacts.flatmap(_mutated),
        forwarded,
        forwarded,
        _initials(),
        st.binary(max_size=200).map(lambda tail: DISCO_MAGIC + tail),
    )
    return st.tuples(datagram, st.booleans())


# -- the tests --------------------------------------------------------------------------------

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(st.data())
def test_any_frames_on_a_relay_connection_leave_the_relay_working_and_bounded(rig: Rig, data: st.DataObject) -> None:
    frames, last = data.draw(_frames(rig), label="frames")
    # the batch sent this many times over (beyond the rate limits and the queues' room) ...
    repeat = data.draw(st.integers(1, 20), label="repeat")
    burst = data.draw(st.booleans(), label="burst")  # ... at once, or a frame every 2 ms
    rig.round += 1

    async def example() -> None:
        url = rig.relay.url
        conn = await rig.evil.connect_quic(NodeAddr(url.node_id, [url.address]), RELAY_ALPN)
        handler = rig.evil_handlers[-1]
        await _until(lambda: str(rig.evil.node_id) in {str(n) for n in rig.relay.clients})
        for frame in frames * repeat + ([] if last is None else [last]):
            if handler.lost.done():
                break
            if len(frame) <= hooks.max_datagram_frame_payload(conn.quic):  # (aioquic checks nothing)
                conn.quic.send_datagram_frame(frame)
                conn.transmit()
            await asyncio.sleep(0 if burst else 0.002)
        await asyncio.sleep(0.2)
        if not handler.lost.done():
            conn.close(0, "done fuzzing")
        await asyncio.wait_for(handler.lost, 5)
        await rig.settle()
        await rig.delivers()

    rig.sim.run(example())
    assert rig.errors.records == [], [r.getMessage() for r in rig.errors.records]


@SETTINGS
@given(st.data())
def test_any_datagrams_at_the_relay_socket_leave_it_working_and_bounded(rig: Rig, data: st.DataObject) -> None:
    batch = data.draw(st.lists(_datagrams(rig), min_size=1, max_size=30), label="datagrams")
    repeat = data.draw(st.integers(1, 10), label="repeat")
    burst = data.draw(st.booleans(), label="burst")
    rig.round += 1

    async def example() -> None:
        relay = rig.relay
        target = relay.url.address
        raw_addr = relay.observed_addr(rig.raw_ep.node_id)
        assert raw_addr is not None
        for datagram, spoofed in batch * repeat:
            if spoofed:  # as if from the raw client's address (an attacker on its path, or spoofing)
                relay.endpoint.router.datagram_received(datagram, raw_addr)
            else:
                rig.attacker.sendto(datagram, target)
            await asyncio.sleep(0 if burst else 0.002)
        await asyncio.sleep(0.2)
        await rig.settle()
        await rig.delivers()

    rig.sim.run(example())
    assert rig.errors.records == [], [r.getMessage() for r in rig.errors.records]


def test_a_new_client_connects_and_delivers_after_the_fuzzing(rig: Rig) -> None:
    async def main() -> None:
        ep = await Endpoint.bind(SecretKey.from_seed("fuzz-late"), host="0.0.0.0", network=rig.sim.host("late"))
        sink = RecordingSink()
        late = RelayClient(ep, str(rig.relay.url), sink, rng=random.Random(3))
        late.start()
        try:
            await late.wait_connected(5)
            assert late.send_packet(rig.raw_ep.node_id, b"hello from a new client")
            await rig.sink.wait_for(lambda: (ep.node_id, b"hello from a new client") in rig.sink.packets, timeout=5)
            assert rig.raw.send_packet(ep.node_id, b"and back")
            await sink.wait_for(lambda: (rig.raw_ep.node_id, b"and back") in sink.packets, timeout=5)
            # and a node dials the node behind the relay, through it (a QUIC handshake end to end)
            dialer = await Node.bind(
                SecretKey.from_seed("fuzz-dialer"),
                host="0.0.0.0",
                network=rig.sim.host("dialer"),
                relay_url=str(rig.relay.url),
            )
            try:
                conn = await dialer.connect(NodeAddr(rig.node.node_id, [], relay_url=str(rig.relay.url)))
                await conn.send(b"through the relay")
                assert await (await rig.node.listen().accept()).recv() == b"through the relay"
            finally:
                await dialer.close(timeout=0.5)
        finally:
            await late.close()
            await ep.close(timeout=0.5)

    rig.sim.run(main())
    assert rig.errors.records == [], [r.getMessage() for r in rig.errors.records]
