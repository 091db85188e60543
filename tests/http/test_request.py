"""parse_request: a request's header fields -> its ASGI scope, or the refusal (sans-I/O)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from asgi_p2p.http.request import (
    BAD_CONTENT_LENGTH,
    INVALID_CONTENT_LENGTH_FIELD,
    PeerInfo,
    Rejection,
    RequestSettings,
    mark_invalid_content_length,
    parse_request,
)
from asgi_p2p.identity import SecretKey

PEER_ID = SecretKey.from_seed("request-peer").node_id
PEER = PeerInfo(PEER_ID)
PEER_TEXT = str(PEER_ID)
SERVER = (str(SecretKey.from_seed("request-server").node_id), 443)
SETTINGS = RequestSettings(server=SERVER)
ASGI = {"version": "3.0", "spec_version": "2.4"}

Fields = list[tuple[bytes, bytes]]


def request(method: bytes, path: bytes, *extra: tuple[bytes, bytes], scheme: bytes = b"https") -> Fields:
    return [
        (b":method", method),
        (b":scheme", scheme),
        (b":authority", PEER_TEXT.encode()),
        (b":path", path),
        *extra,
    ]


def websocket(path: bytes, *extra: tuple[bytes, bytes], protocol: bytes = b"websocket") -> Fields:
    return [
        (b":method", b"CONNECT"),
        (b":protocol", protocol),
        (b":scheme", b"https"),
        (b":authority", PEER_TEXT.encode()),
        (b":path", path),
        (b"sec-websocket-version", b"13"),
        *extra,
    ]


def scope_of(fields: Fields, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("stream_id", 0)
    kwargs.setdefault("peer", PEER)
    kwargs.setdefault("settings", SETTINGS)
    result = parse_request(fields, **kwargs)
    assert isinstance(result, dict), result
    return result


def rejection_of(fields: Fields, **kwargs: Any) -> Rejection:
    kwargs.setdefault("stream_id", 0)
    kwargs.setdefault("peer", PEER)
    kwargs.setdefault("settings", SETTINGS)
    result = parse_request(fields, **kwargs)
    assert isinstance(result, Rejection), result
    return result


# -- scopes ------------------------------------------------------------------------------------


def test_get_scope() -> None:
    fields = request(b"GET", b"/caf%C3%A9/a%20b?x=1&y=%20", (b"accept", b"*/*"), (b"x-dup", b"1"), (b"x-dup", b"2"))
    scope = scope_of(fields, stream_id=8, state={"db": "conn"})
    assert scope == {
        "type": "http",
        "asgi": ASGI,
        "http_version": "3",
        "scheme": "https",
        "path": "/café/a b",
        "raw_path": b"/caf%C3%A9/a%20b",
        "query_string": b"x=1&y=%20",
        "root_path": "",
        "headers": [(b"host", PEER_TEXT.encode()), (b"accept", b"*/*"), (b"x-dup", b"1"), (b"x-dup", b"2")],
        "client": (PEER_TEXT, 0),
        "server": SERVER,
        "extensions": {
            "p2p": {"peer_id": PEER_TEXT, "peer": PEER_ID, "stream_id": 8},
            "http.response.trailers": {},
            "http.response.early_hint": {},
        },
        "state": {"db": "conn"},
        "method": "GET",
    }
    assert scope["extensions"]["p2p"]["peer"] is PEER_ID


def test_post_scope_under_a_root_path_with_a_body_within_the_limit() -> None:
    settings = RequestSettings(server=SERVER, root_path="/api", max_body_size=10)
    fields = request(b"POST", b"/upload", (b"content-type", b"text/plain"), (b"content-length", b"10"))
    scope = scope_of(fields, stream_id=4, settings=settings)
    assert scope["method"] == "POST"
    assert scope["path"] == "/api/upload"
    assert scope["raw_path"] == b"/upload"
    assert scope["query_string"] == b""
    assert scope["root_path"] == "/api"
    assert scope["headers"] == [
        (b"host", PEER_TEXT.encode()),
        (b"content-type", b"text/plain"),
        (b"content-length", b"10"),
    ]
    assert scope["extensions"]["p2p"]["stream_id"] == 4
    assert scope["state"] == {}


def test_the_state_is_a_shallow_copy() -> None:
    items: list[int] = []
    state = {"items": items}
    scope = scope_of(request(b"GET", b"/"), state=state)
    assert scope["state"] == state and scope["state"] is not state
    assert scope["state"]["items"] is items


def test_scheme_and_method_are_taken_as_sent() -> None:
    assert scope_of(request(b"GET", b"/", scheme=b"http"))["scheme"] == "http"
    assert scope_of(request(b"GET", b"/", scheme=b""))["scheme"] == "https"
    assert scope_of(request(b"PATCH", b"/"))["method"] == "PATCH"


def test_undecodable_percent_escapes_survive_in_the_path() -> None:
    scope = scope_of(request(b"GET", b"/%FF%2F?q"))
    assert scope["path"] == "/\udcff/"
    assert scope["raw_path"] == b"/%FF%2F"
    assert scope["query_string"] == b"q"


def test_a_repeated_pseudo_header_counts_with_its_last_value_and_a_missing_one_as_empty() -> None:
    # aioquic refuses both before the server sees them; parsing itself takes them as they come
    scope = scope_of([(b":method", b"GET"), (b":path", b"/a"), (b":path", b"/b?c")])
    assert (scope["raw_path"], scope["query_string"], scope["path"]) == (b"/b", b"c", "/b")
    assert scope["headers"] == []  # no :authority, no host
    scope = scope_of([(b":method", b"GET")])
    assert (scope["raw_path"], scope["query_string"], scope["path"]) == (b"", b"", "")


def test_websocket_connect_scope() -> None:
    fields = websocket(
        b"/ws?room=1",
        (b"sec-websocket-protocol", b"chat, , other"),
        (b"sec-websocket-protocol", b" x "),
        (b"content-length", b"999999"),  # not an HTTP body: no 413
    )
    settings = RequestSettings(server=SERVER, max_body_size=0)
    scope = scope_of(fields, stream_id=12, settings=settings)
    assert scope == {
        "type": "websocket",
        "asgi": ASGI,
        "http_version": "3",
        "scheme": "wss",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"room=1",
        "root_path": "",
        "headers": [
            (b"host", PEER_TEXT.encode()),
            (b"sec-websocket-version", b"13"),
            (b"sec-websocket-protocol", b"chat, , other"),
            (b"sec-websocket-protocol", b" x "),
            (b"content-length", b"999999"),
        ],
        "client": (PEER_TEXT, 0),
        "server": SERVER,
        "extensions": {
            "p2p": {"peer_id": PEER_TEXT, "peer": PEER_ID, "stream_id": 12},
            "websocket.http.response": {},
        },
        "state": {},
        "subprotocols": ["chat", "other", "x"],
    }


def test_websocket_protocol_is_matched_without_case() -> None:
    scope = scope_of(websocket(b"/ws", protocol=b"WebSocket"))
    assert scope["type"] == "websocket"
    assert scope["subprotocols"] == []
    assert "method" not in scope


# -- refusals -------------------------------------------------------------------------------


def test_header_section_larger_than_max_header_size_is_431() -> None:
    fields = request(b"GET", b"/", (b"x-big", b"a" * 100))
    size = sum(len(n) + len(v) for n, v in fields)  # pseudo-headers count too
    assert isinstance(parse_request(fields, stream_id=0, peer=PEER, settings=RequestSettings(SERVER, "", size)), dict)
    rejected = rejection_of(fields, settings=RequestSettings(SERVER, "", size - 1))
    assert rejected == Rejection(431, "Request Header Fields Too Large")
    assert rejected.headers == ()


@pytest.mark.parametrize("protocol", [None, b"", b"connect-udp", b"websockets"])
def test_connect_other_than_websocket_is_501(protocol: bytes | None) -> None:
    if protocol is None:
        fields = request(b"CONNECT", b"/")
    else:
        fields = websocket(b"/", protocol=protocol)
    assert rejection_of(fields) == Rejection(501, "CONNECT is not supported")


def test_at_capacity_is_503_with_retry_after() -> None:
    assert rejection_of(request(b"GET", b"/"), at_capacity=True) == Rejection(
        503, "Service Unavailable", ((b"retry-after", b"1"),)
    )
    assert rejection_of(websocket(b"/ws"), at_capacity=True).status == 503


def test_content_length_over_max_body_size_is_413() -> None:
    settings = RequestSettings(server=SERVER, max_body_size=10)
    assert rejection_of(request(b"POST", b"/", (b"content-length", b"11")), settings=settings) == Rejection(
        413, "Content Too Large"
    )
    assert scope_of(request(b"POST", b"/", (b"content-length", b"10")), settings=settings)["method"] == "POST"
    # no limit, or no content-length: nothing to refuse up front
    assert scope_of(request(b"POST", b"/", (b"content-length", b"11")))["method"] == "POST"
    assert scope_of(request(b"POST", b"/"), settings=settings)["method"] == "POST"
    assert scope_of(request(b"POST", b"/", (b"content-length", b"0010")), settings=settings)["method"] == "POST"


@pytest.mark.parametrize(
    "value",
    [
        b"+5",  # int() takes a sign
        b"-5",
        b" 5",  # and surrounding space
        b"5 ",
        b"1_0",  # and underscores
        b"0x10",
        b"5,5",  # a list, even of equal values (RFC 9110 section 8.6 lets a recipient refuse it)
        b"5, 6",
        b"",
        b"five",
        "\u0665".encode(),  # ARABIC-INDIC DIGIT FIVE: str.isdigit() says yes, RFC 9110 says DIGIT is ASCII
        b"1e3",
        b"5.0",
        b"9" * 20,  # more than a QUIC stream can carry
        str(2**62).encode(),
        b"9" * 5000,  # int() refuses it
    ],
)
def test_content_length_must_be_digits_only(value: bytes) -> None:
    for settings in (SETTINGS, RequestSettings(server=SERVER, max_body_size=10)):
        rejection = rejection_of(request(b"POST", b"/", (b"content-length", value)), settings=settings)
        assert rejection == BAD_CONTENT_LENGTH and rejection.status == 400
        assert "RFC 9110" in rejection.reason
        # what the server's field-section hook does for aioquic: the same answer
        marked = mark_invalid_content_length(request(b"POST", b"/", (b"content-length", value)))
        assert (b"content-length", value) not in marked and (INVALID_CONTENT_LENGTH_FIELD, value) in marked
        assert rejection_of(marked, settings=settings) == BAD_CONTENT_LENGTH


def test_valid_content_lengths_are_left_alone_by_the_hook() -> None:
    fields = request(b"POST", b"/", (b"content-length", b"0"), (b"content-length", b"0"))
    assert mark_invalid_content_length(fields) is fields
    assert scope_of(fields)["method"] == "POST"
    assert scope_of(request(b"POST", b"/", (b"content-length", str(2**62 - 1).encode())))["method"] == "POST"


def test_differing_content_lengths_are_400_equal_ones_are_one() -> None:
    settings = RequestSettings(server=SERVER, max_body_size=10)
    for first, second in ((b"99", b"5"), (b"5", b"99"), (b"5", b"x"), (b"x", b"5"), (b"5", b"05x")):
        fields = request(b"POST", b"/", (b"content-length", first), (b"content-length", second))
        assert rejection_of(fields, settings=settings).status == 400
        assert rejection_of(fields).status == 400
    same = request(b"POST", b"/", (b"content-length", b"5"), (b"content-length", b"005"))
    assert scope_of(same, settings=settings)["method"] == "POST"  # the same number


def test_websocket_with_a_bad_content_length_is_400() -> None:
    assert rejection_of(websocket(b"/ws", (b"content-length", b"+0"))).status == 400


def test_refusals_are_checked_in_order_431_501_400_503_413() -> None:
    tight = RequestSettings(server=SERVER, max_header_size=10, max_body_size=0)
    loose_headers = RequestSettings(server=SERVER, max_body_size=0)
    connect = request(b"CONNECT", b"/", (b"content-length", b"+1"))
    bad = request(b"POST", b"/", (b"content-length", b"+1"))
    post = request(b"POST", b"/", (b"content-length", b"1"))
    assert rejection_of(connect, settings=tight, at_capacity=True).status == 431
    assert rejection_of(connect, settings=loose_headers, at_capacity=True).status == 501
    assert rejection_of(bad, settings=loose_headers, at_capacity=True).status == 400
    assert rejection_of(post, settings=loose_headers, at_capacity=True).status == 503
    assert rejection_of(post, settings=loose_headers).status == 413


# -- any input ---------------------------------------------------------------------------------

NAMES = st.one_of(
    st.sampled_from(
        [
            b":method",
            b":path",
            b":authority",
            b":scheme",
            b":protocol",
            b":status",
            b"content-length",
            b"sec-websocket-protocol",
            b"host",
        ]
    ),
    st.binary(max_size=12),
)
VALUES = st.one_of(
    st.sampled_from(
        [
            b"GET",
            b"CONNECT",
            b"websocket",
            b"WebSocket",
            b"https",
            b"-1",
            b"12",
            b"+5",
            b"1_0",
            b"5, 5",
            b"9" * 5000,
            b"/%ff?%",
        ]
    ),
    st.binary(max_size=40),
)


def _lengths_valid(fields: Fields) -> bool:
    """RFC 9110 section 8.6, independently: every content-length is 1*DIGIT (<= 2**62 - 1), all equal."""
    values = [v for n, v in fields if n in (b"content-length", INVALID_CONTENT_LENGTH_FIELD)]
    if any(n == INVALID_CONTENT_LENGTH_FIELD for n, _ in fields):
        return False
    if not all(re.fullmatch(rb"[0-9]{1,19}", v) and int(v) < 2**62 for v in values):
        return False
    return len({int(v) for v in values}) <= 1


@example(
    fields=[(b":method", b"POST"), (b"content-length", b"9" * 5000)],
    max_header_size=64 * 1024,
    max_body_size=0,
    root_path="",
    at_capacity=False,
    stream_id=0,
)
@given(
    fields=st.lists(st.tuples(NAMES, VALUES), max_size=12),
    max_header_size=st.integers(1, 200) | st.just(64 * 1024),
    max_body_size=st.none() | st.integers(0, 20),
    root_path=st.sampled_from(["", "/api"]),
    at_capacity=st.booleans(),
    stream_id=st.integers(0, 2**62 - 1),
)
def test_any_header_list_gives_a_scope_or_a_refusal(
    fields: Fields, max_header_size: int, max_body_size: int | None, root_path: str, at_capacity: bool, stream_id: int
) -> None:
    settings = RequestSettings(SERVER, root_path, max_header_size, max_body_size)
    before = copy.deepcopy(fields)
    state = {"k": [1]}
    result = parse_request(
        fields, stream_id=stream_id, peer=PEER, settings=settings, state=state, at_capacity=at_capacity
    )
    assert fields == before and state == {"k": [1]}  # inputs are left alone
    if isinstance(result, Rejection):
        assert result.status in (400, 413, 431, 501, 503)
        if sum(len(n) + len(v) for n, v in fields) > max_header_size:
            assert result.status == 431
        if result.status == 400:
            assert not _lengths_valid(fields)
        return
    assert _lengths_valid(fields)
    assert sum(len(n) + len(v) for n, v in fields) <= max_header_size
    assert not at_capacity
    assert result["type"] in ("http", "websocket")
    assert result["path"].startswith(root_path)
    assert result["root_path"] == root_path
    last = {name: value for name, value in fields if name.startswith(b":")}
    authority = last.get(b":authority", b"")
    regular = [(name, value) for name, value in fields if not name.startswith(b":")]
    assert result["headers"] == ([(b"host", authority)] if authority else []) + regular
    raw_path, _, query = last.get(b":path", b"").partition(b"?")
    assert (result["raw_path"], result["query_string"]) == (raw_path, query)
    assert result["extensions"]["p2p"] == {"peer_id": PEER_TEXT, "peer": PEER_ID, "stream_id": stream_id}
    assert result["state"] == state and result["state"] is not state
