"""Fuzzing the HTTP/3 server with arbitrary and mutated frames on request and unidirectional streams.

One simulated server and client live for the whole module (virtual time, so waiting is free);
each example opens raw QUIC streams on the client's ``h3`` connection and writes frames no
well-behaved client would: random frame types, truncated and bit-flipped frames, QPACK
blocks of arbitrary fields, DATA before HEADERS, streams left open.  The server may close a
stream or the whole connection (that is what HTTP/3 says for many of these), but it must
never fail internally (nothing logged at ERROR), must keep no state for streams that are
gone (pending streams are timed out), and must answer the next well-formed request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pylsqpack
import pytest
from aioquic.buffer import encode_uint_var
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_p2p import NetworkConfig, Node
from asgi_p2p.endpoint.connection import PeerConnection
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.http.types import Receive, Scope, Send
from asgi_p2p.sim import Simulation


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        size += len(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Rig:
    sim: Simulation
    server: H3Server
    server_node: Node
    client_node: Node
    client: httpx.AsyncClient
    errors: _Errors

    async def h3_connection(self) -> PeerConnection:
        """The client's live h3 connection to the server (a request opens a new one if needed)."""
        for conn in self.client_node.connections:
            if conn.alpn == "h3" and conn.is_connected:
                return conn
        r = await self.client.get("/")
        assert r.status_code == 200
        return await self.h3_connection()


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    sim = Simulation(seed=12, latency=0.005, loss=0.0)
    errors = _Errors()
    logging.getLogger("asgi_p2p").addHandler(errors)
    config = NetworkConfig(keepalive_interval=0)

    async def setup() -> Rig:
        server_node = await Node.bind(host="0.0.0.0", port=4433, config=config, network=sim.host("server"))
        client_node = await Node.bind(host="0.0.0.0", port=4433, config=config, network=sim.host("client"))
        server = H3Server(_app, server_node, lifespan="off", request_header_timeout=1.0, request_body_timeout=1.0)
        await server.startup()
        transport = P2PTransport(client_node)
        transport.add_addr(server_node.node_addr())
        client = httpx.AsyncClient(transport=transport, base_url=f"https://{server_node.node_id}", timeout=30.0)
        return Rig(sim, server, server_node, client_node, client, errors)

    rig = sim.run(setup())
    yield rig

    async def teardown() -> None:
        await rig.client.aclose()
        await rig.server.shutdown()
        await rig.client_node.close(timeout=0.5)
        await rig.server_node.close(timeout=0.5)

    try:
        sim.run(teardown())
    finally:
        logging.getLogger("asgi_p2p").removeHandler(errors)
        sim.close()


# -- frames ----------------------------------------------------------------------------------

NAMES = st.sampled_from(
    [b":method", b":path", b":scheme", b":authority", b":protocol", b":status", b"content-length", b"te", b"x"]
) | st.binary(min_size=1, max_size=8)
VALUES = st.sampled_from([b"GET", b"POST", b"CONNECT", b"https", b"/", b"websocket", b"5", b"+5", b""]) | st.binary(
    max_size=16
)
REQUEST = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"peer"), (b":path", b"/")]


def _field_section(fields: list[tuple[bytes, bytes]]) -> bytes:
    return bytes(pylsqpack.Encoder().encode(0, fields)[1])  # no dynamic table: static and literals


field_sections = st.one_of(
    st.lists(st.tuples(NAMES, VALUES), max_size=6).map(lambda extra: _field_section(REQUEST + extra)),
    st.lists(st.tuples(NAMES, VALUES), max_size=6).map(_field_section),
    st.binary(max_size=24),  # not QPACK at all
)
FRAME_TYPES = [0x0, 0x1, 0x3, 0x4, 0x5, 0x7, 0xD, 0x2, 0x6, 0x21, 0x1F * 7 + 0x21]


def _frame(kind: int, payload: bytes) -> bytes:
    return encode_uint_var(kind) + encode_uint_var(len(payload)) + payload


frames = st.one_of(
    field_sections.map(lambda block: _frame(0x1, block)),  # HEADERS
    st.binary(max_size=40).map(lambda data: _frame(0x0, data)),  # DATA
    st.tuples(st.sampled_from(FRAME_TYPES) | st.integers(0, 2**30), st.binary(max_size=24)).map(lambda t: _frame(*t)),
    st.binary(min_size=1, max_size=8),  # bytes that are not a frame boundary
)


@st.composite
def stream_bytes(draw: st.DrawFn) -> bytes:
    data = b"".join(draw(st.lists(frames, min_size=1, max_size=4)))
    mutation = draw(st.sampled_from(["none", "truncate", "flip"]))
    if mutation == "truncate" and len(data) > 1:
        data = data[: draw(st.integers(1, len(data) - 1))]
    elif mutation == "flip":
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1 :]
    return data


UNI_TYPES = st.sampled_from([0x0, 0x1, 0x2, 0x3, 0x21, 0x54]) | st.integers(0, 2**20)
streams = st.one_of(
    st.tuples(st.just(False), stream_bytes(), st.booleans()),  # a request stream, FIN or left open
    st.tuples(
        st.just(True), st.tuples(UNI_TYPES, stream_bytes()).map(lambda t: encode_uint_var(t[0]) + t[1]), st.booleans()
    ),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(streams, min_size=1, max_size=6))
def test_arbitrary_frames_never_break_the_server(rig: Rig, written: list[tuple[bool, bytes, bool]]) -> None:
    async def example() -> None:
        for uni, data, fin in written:
            conn = await rig.h3_connection()
            try:
                sid = conn.quic.get_next_available_stream_id(is_unidirectional=uni)
                conn.quic.send_stream_data(sid, data, fin)
            except Exception as exc:  # the stream limit: the server's, not a server failure
                pytest.fail(f"client could not open a stream: {exc!r}")
            conn.schedule_transmit()
            await asyncio.sleep(0.02)
        await asyncio.sleep(3.0)  # > the 1 s header and body timeouts: every stream is over
        # no state left for streams that are gone, no request task still running
        for sc in rig.server._connections:
            assert sc.streams == {}, sc.streams
        assert rig.server.active_requests == 0
        assert len(rig.server_node.connections) <= 1
        r = await rig.client.post("/", content=b"12345")  # the server still serves
        assert (r.status_code, r.text) == (200, "5")

    rig.sim.run(example())
    assert rig.errors.records == [], [r.getMessage() for r in rig.errors.records]
