"""Request parsing for the HTTP/3 server, sans-I/O: header fields in, an ASGI scope or a refusal out.

:func:`parse_request` is a pure function of its arguments (no QUIC, no clock, no
server object): the server hands it the fields of a request's HEADERS frame and
either runs the application with the scope it returns or answers the
:class:`Rejection` without running it.

aioquic has already checked the message before it gets here (known, non-repeated
pseudo-headers before the regular fields, ``:method`` and ``:authority`` present,
valid field names and values; a malformed request closes the connection), so
parsing itself refuses only what the server's limits and features do not allow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from ..identity import NodeId
from ._common import (
    INVALID_CONTENT_LENGTH_FIELD,
    MAX_CONTENT_LENGTH,
    Headers,
    content_length_value,
    mark_invalid_content_length,
)

__all__ = [
    "ASGI_VERSION",
    "BAD_CONTENT_LENGTH",
    "CONNECT_NOT_SUPPORTED",
    "CONTENT_TOO_LARGE",
    "HEADERS_TOO_LARGE",
    "INVALID_CONTENT_LENGTH_FIELD",
    "MAX_CONTENT_LENGTH",
    "SERVICE_UNAVAILABLE",
    "PeerInfo",
    "Rejection",
    "RequestSettings",
    "mark_invalid_content_length",
    "parse_request",
]

#: The scopes' ``asgi`` key (one shared dict).
ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}


class PeerInfo:
    """The peer requests come from: its node id, proven in the TLS handshake, and that id's text."""

    __slots__ = ("node_id", "text")

    def __init__(self, node_id: NodeId) -> None:
        self.node_id = node_id
        #: ``str(node_id)``, the scope's ``client`` host and ``p2p`` ``peer_id`` (computed once per connection)
        self.text = str(node_id)


@dataclass(frozen=True, slots=True)
class RequestSettings:
    """The server's part of every scope, and the limits requests are checked against."""

    #: the scope's ``server``: ``(str(our_node_id), 443)``
    server: tuple[str, int]
    #: the scope's ``root_path`` (without a trailing slash), also put in front of ``path``
    root_path: str = ""
    #: largest header section accepted: the sum of the fields' name and value lengths
    max_header_size: int = 64 * 1024
    #: largest request body accepted (None: no limit); a larger ``content-length`` is refused
    max_body_size: int | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """The request is refused: answer ``status`` with ``reason`` as a plain-text body, without the app."""

    status: int
    reason: str
    #: response header fields besides ``content-type`` and ``content-length``
    headers: tuple[tuple[bytes, bytes], ...] = ()


HEADERS_TOO_LARGE = Rejection(431, "Request Header Fields Too Large")
CONNECT_NOT_SUPPORTED = Rejection(501, "CONNECT is not supported")
SERVICE_UNAVAILABLE = Rejection(503, "Service Unavailable", ((b"retry-after", b"1"),))
CONTENT_TOO_LARGE = Rejection(413, "Content Too Large")
BAD_CONTENT_LENGTH = Rejection(400, "Bad Request: content-length must be one decimal number (RFC 9110 section 8.6)")


def parse_request(
    fields: Headers,
    *,
    stream_id: int,
    peer: PeerInfo,
    settings: RequestSettings,
    state: Mapping[str, Any] | None = None,
    at_capacity: bool = False,
) -> dict[str, Any] | Rejection:
    """The ASGI scope of the request whose HEADERS frame carried ``fields``, or its :class:`Rejection`.

    The scope's ``type`` is ``"websocket"`` for an extended CONNECT with ``:protocol websocket``
    (RFC 9220), ``"http"`` otherwise.  ``state`` is the lifespan state (the scope gets a
    shallow copy); ``at_capacity`` says the server already runs as many requests as it
    may.

    Refusals, checked in this order:

    - 431 when the fields' names and values add up to more than ``max_header_size`` bytes;
    - 501 for a CONNECT other than ``:protocol websocket``;
    - 400 when a ``content-length`` is not one decimal number (RFC 9110 section 8.6: digits
      only, so no ``+5``, `` 5``, ``1_0``, ``0x10`` or ``5, 5``; no more than
      :data:`MAX_CONTENT_LENGTH`; or marked by :func:`mark_invalid_content_length`) or
      when several ``content-length`` fields differ;
    - 503 (``retry-after: 1``) when ``at_capacity``;
    - 413 when the ``content-length`` of an HTTP request exceeds ``max_body_size``.

    Anything else is taken as it comes: a pseudo-header given twice counts with its last
    value, a missing one as empty.
    """
    method = scheme = authority = path = protocol = b""
    headers: Headers = []
    size = 0
    content_length: int | None = None
    bad_length = False
    append = headers.append
    for field in fields:
        name, value = field
        size += len(name) + len(value)
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":scheme":
                scheme = value
            elif name == b":protocol":
                protocol = value
        elif name == b"content-length":
            n = content_length_value(value)
            if n is None or (content_length is not None and n != content_length):
                bad_length = True
            content_length = n
            append(field)
        else:
            if name == INVALID_CONTENT_LENGTH_FIELD:
                bad_length = True
            append(field)  # the field's own tuple: the same (name, value) without a new one
    if size > settings.max_header_size:
        return HEADERS_TOO_LARGE
    if authority:
        headers.insert(0, (b"host", authority))
    is_ws = False
    if method == b"CONNECT":
        if protocol.lower() != b"websocket":
            return CONNECT_NOT_SUPPORTED
        is_ws = True
    if bad_length:
        return BAD_CONTENT_LENGTH
    if at_capacity:
        return SERVICE_UNAVAILABLE
    if not is_ws:
        limit = settings.max_body_size
        if limit is not None and content_length is not None and content_length > limit:
            return CONTENT_TOO_LARGE
    raw_path, _, query = path.partition(b"?")
    text_path = raw_path.decode("latin-1")
    if "%" in text_path:
        text_path = unquote(text_path, encoding="utf-8", errors="surrogateescape")
    scope: dict[str, Any] = {
        "type": "websocket" if is_ws else "http",
        "asgi": ASGI_VERSION,
        "http_version": "3",
        "scheme": ("wss" if is_ws else "https") if scheme in (b"https", b"") else scheme.decode("latin-1"),
        "path": settings.root_path + text_path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": settings.root_path,
        "headers": headers,
        "client": (peer.text, 0),
        "server": settings.server,
        "extensions": {
            "p2p": {"peer_id": peer.text, "peer": peer.node_id, "stream_id": stream_id},
        },
        "state": dict(state) if state is not None else {},
    }
    if is_ws:
        subprotocols: list[str] = []
        for name, value in headers:
            if name == b"sec-websocket-protocol":
                subprotocols.extend(p.strip() for p in value.decode("latin-1").split(",") if p.strip())
        scope["subprotocols"] = subprotocols
        scope["extensions"]["websocket.http.response"] = {}
    else:
        scope["method"] = method.decode("latin-1")
        scope["extensions"]["http.response.trailers"] = {}
        scope["extensions"]["http.response.early_hint"] = {}
    return scope
