"""The client refuses a response whose ``content-length`` is not one decimal number (RFC 9110 section 8.6).

aioquic takes ``1_0`` and ``+10`` (Python ``int()``), and closes the whole connection for
`` 10``, ``10, 10`` or two fields that disagree; the transport fails that one response with
``httpx.RemoteProtocolError`` naming the value, and the connection serves on.  The server here is a raw aioquic
``H3Connection`` on the server endpoint: asgi-p2p's own server never sends such a field.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aioquic.h3.connection import H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.events import QuicEvent

from asgi_p2p.endpoint.connection import PeerConnection
from asgi_p2p.http import P2PTransport
from asgi_p2p.http._common import INVALID_CONTENT_LENGTH_FIELD, mark_invalid_content_length
from asgi_p2p.http._dispatch import h3_protocol
from asgi_p2p.http.client import ClientConnection
from asgi_p2p.http.types import Receive, Scope, Send

from .conftest import EndpointPair, Serve

BODY = b"0123456789"


class LyingServer:
    """Answers ``/ok`` with ``content-length: 10`` and any other path ``/<n>`` with the fields of ``CASES[n]``."""

    def __init__(self, conn: PeerConnection) -> None:
        self.conn = conn
        self.h3 = H3Connection(conn.quic)

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                path = dict(h3_event.headers)[b":path"]
                fields = [(b"content-length", b"10")] if path == b"/ok" else CASES[int(path[1:])][0]
                self.h3.send_headers(h3_event.stream_id, [(b":status", b"200"), *fields])
                self.h3.send_data(h3_event.stream_id, BODY, end_stream=True)
        self.conn.schedule_transmit()

    def connection_lost(self, exc: Exception | None) -> None:
        pass


#: (the response's fields, what the error names)
CASES = [
    ([(b"content-length", b"1_0")], "invalid content-length '1_0'"),
    ([(b"content-length", b"+10")], "invalid content-length '+10'"),
    ([(b"content-length", b" 10")], "invalid content-length ' 10'"),
    ([(b"content-length", b"10 ")], "invalid content-length '10 '"),
    ([(b"content-length", b"10, 10")], "invalid content-length '10, 10'"),
    ([(b"content-length", b"0xa")], "invalid content-length '0xa'"),
    (
        [(b"content-length", b"10"), (b"content-length", b"11")],
        "invalid or conflicting content-length fields '10', '11'",
    ),
]


async def test_a_response_with_a_bad_content_length_is_refused_and_the_connection_serves_on(
    endpoint_pair: EndpointPair,
) -> None:
    h3_protocol(endpoint_pair.server).server_factory = LyingServer
    transport = P2PTransport(endpoint_pair.client)
    transport.add_addr(endpoint_pair.server.node_addr())
    base = f"https://{endpoint_pair.server.node_id}"
    async with httpx.AsyncClient(transport=transport, base_url=base, timeout=10) as client:
        r = await client.get("/ok")
        assert (r.status_code, r.content) == (200, BODY)
        (conn,) = endpoint_pair.client.connections
        for i, (_, named) in enumerate(CASES):
            with pytest.raises(httpx.RemoteProtocolError, match="RFC 9110") as caught:
                await client.get(f"/{i}")
            assert named in str(caught.value), caught.value
            assert str(endpoint_pair.server.node_id) in str(caught.value)
            # that response only: the same connection answers the next request
            r = await client.get("/ok")
            assert (r.status_code, r.content) == (200, BODY)
            assert endpoint_pair.client.connections == [conn]


def test_the_hook_renames_invalid_and_disagreeing_fields_and_quotes_for_the_client() -> None:
    fields = [(b":status", b"200"), (b"content-length", b"10"), (b"x", b"1")]
    assert mark_invalid_content_length(fields) is fields
    assert mark_invalid_content_length([*fields, (b"content-length", b"10")], quote=True)[1] == fields[1]
    assert mark_invalid_content_length([(b"content-length", b" 10")], quote=True) == [
        (INVALID_CONTENT_LENGTH_FIELD, b"' 10'")
    ]
    assert mark_invalid_content_length([(b"content-length", b"1\r\n")], quote=True) == [
        (INVALID_CONTENT_LENGTH_FIELD, b"'1\\r\\n'")
    ]
    # two valid values that disagree: both renamed (aioquic would check the body against the last)
    assert mark_invalid_content_length([*fields, (b"content-length", b"11")]) == [
        (b":status", b"200"),
        (INVALID_CONTENT_LENGTH_FIELD, b"10"),
        (b"x", b"1"),
        (INVALID_CONTENT_LENGTH_FIELD, b"11"),
    ]


async def test_the_server_answers_a_request_with_a_padded_content_length_400_and_serves_on(serve: Serve) -> None:
    """`` 5`` and ``5 ``: aioquic closes the whole connection for a field value with whitespace at
    either end; the server's hook renames the field with its value quoted, so only that request
    is refused (400), as for ``1_0`` (tests/http/test_protocol.py; httpx strips such values)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    served = await serve(app, lifespan="off")
    client = served.client
    assert (await client.get("/")).text == "ok"
    (conn,) = served.pair.client.connections
    cc = conn.handler
    assert isinstance(cc, ClientConnection)
    for value in (b" 5", b"5 "):
        st = cc.open_stream()
        fields = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"x"), (b":path", b"/")]
        st.send_headers([*fields, (b"content-length", value)], False)
        await st.write(b"hello", True)
        assert await asyncio.wait_for(st.wait_headers(), 10) == 400
        assert b"content-length" in await st.read()
        st.close()
        assert (await client.get("/")).text == "ok"  # the same connection serves on
        assert served.pair.client.connections == [conn]
    assert served.server.requests_rejected == 2
