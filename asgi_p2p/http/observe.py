"""What the HTTP/3 server reports about each request, for metrics (``asgi_p2p.ops`` implements it)."""

from __future__ import annotations

from typing import Protocol

__all__ = ["RequestObserver"]


class RequestObserver(Protocol):
    """Told of every request an :class:`~asgi_p2p.http.H3Server` serves or refuses (set ``server.observer``).

    Called on the event loop, on the request path: implementations must be cheap and must not raise.
    """

    def request_started(self, kind: str) -> None:
        """A request reached the application; ``kind`` is ``"http"`` or ``"websocket"``."""

    def request_finished(self, kind: str, method: str, status: int, seconds: float) -> None:
        """The application's task for a request ended ``seconds`` after it started.

        ``status`` is the response status sent (0: none, the request was cut: reset, lost
        connection, shutdown); for a WebSocket, 200 when the app accepted it.
        """

    def request_refused(self, status: int) -> None:
        """A request was answered without the application (413, 429, 431, 503, ...)."""
