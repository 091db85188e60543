"""The server's access log: one line per request, in uvicorn's shape.

Logger ``asgi_p2p.http.access`` at INFO (turn it off with
``logging.getLogger("asgi_p2p.http.access").disabled = True`` or ``--no-access-log``)::

    <client node id> - "GET /items?page=2 HTTP/3" 200 OK
    <client node id> - "POST /upload HTTP/3" 413 Content Too Large
    <client node id> - "GET /slow HTTP/3" - cut off by shutdown (after 200 OK)
    <client node id> - "WebSocket /chat" [accepted]
    <client node id> - "WebSocket /chat" [closed 1000]

The client is its full z-base-32 node id (what ``--allow`` takes).  A request whose
response did not complete (the server shut down, the client reset the stream, the
connection was lost, the application failed part-way) has ``-`` for its status and says
why.  Each record also carries the fields as attributes (``client``, ``method``,
``path`` with the query, ``status``: an int or None, ``outcome``, ``kind``: ``http`` or
``websocket``), which a JSON formatter can print.
"""

from __future__ import annotations

import http
import logging
from typing import Any

__all__ = ["access_log", "full_path", "log_request", "log_websocket", "status_text"]

access_log = logging.getLogger("asgi_p2p.http.access")

#: RFC 9110's names where Python 3.11's http.HTTPStatus still has the older ones
_RFC9110_PHRASES = {
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}


def full_path(scope: dict[str, Any]) -> str:
    """The request's path with its query, as the client sent it (``root_path`` included)."""
    query = scope.get("query_string", b"")
    path = str(scope.get("path", ""))
    return f"{path}?{query.decode('latin-1')}" if query else path


def status_text(status: int) -> str:
    """``200 OK``, ``429 Too Many Requests``; just the number for an unknown status."""
    phrase = _RFC9110_PHRASES.get(status)
    if phrase is not None:
        return f"{status} {phrase}"
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def log_request(client: str, method: str, path: str, status: int | None, cut: str | None = None) -> None:
    """One HTTP request: ``status`` is what was sent (None: nothing), ``cut`` why it did not complete."""
    if status is not None and cut is None:
        result = status_text(status)
        outcome = "complete"
    else:
        after = f" (after {status_text(status)})" if status is not None else ""
        outcome = cut or "no response"
        result = f"- {outcome}{after}"
    access_log.info(
        '%s - "%s %s HTTP/3" %s',
        client,
        method,
        path,
        result,
        extra={
            "client": client,
            "method": method,
            "path": path,
            "status": status if cut is None else None,
            "outcome": outcome,
            "kind": "http",
        },
    )


def log_websocket(client: str, path: str, what: str, status: int | None = None) -> None:
    """A WebSocket event: ``[accepted]``, ``[closed 1000]`` or the handshake's refusal (``403 Forbidden``)."""
    result = status_text(status) if status is not None else f"[{what}]"
    access_log.info(
        '%s - "WebSocket %s" %s',
        client,
        path,
        result,
        extra={
            "client": client,
            "method": "WebSocket",
            "path": path,
            "status": status,
            "outcome": what,
            "kind": "websocket",
        },
    )
