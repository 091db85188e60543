"""The server's side of a WebSocket over HTTP/3 (RFC 9220 extended CONNECT): a ``websocket`` scope."""

from __future__ import annotations

import enum
import logging
from typing import Any

from . import _wsframe as ws
from ._common import H3_INTERNAL_ERROR, ClientDisconnected, Credit, Headers, clean_header_fields
from .access import full_path, log_websocket
from .exchange import Exchange, ExchangeHost, plain_response
from .types import Message

__all__ = ["Handshake", "WebSocketExchange", "WebSocketState"]

log = logging.getLogger("asgi_p2p.http")


class Handshake(enum.Enum):
    """The application's answer to the WebSocket handshake."""

    #: neither ``websocket.accept`` nor a denial response yet (``websocket.close`` now answers 403)
    PENDING = "pending"
    #: ``websocket.accept``: 200 sent, frames flow both ways
    ACCEPTED = "accepted"
    #: ``websocket.http.response.start``: a denial response is under way
    DENIED = "denied"


class WebSocketState(enum.Enum):
    """Our sending side of a WebSocket stream.

    ``OPEN -> CLOSING`` (our close frame, or the end of a 403 or denial response, on its way)
    ``-> CLOSED`` (our side finished); ``OPEN -> ENDED`` (finished with no close: a reset, the
    connection lost, or a plain error response).
    """

    #: nothing final sent yet
    OPEN = "open"
    #: our close frame, or the end of a 403 or denial response, is being written
    CLOSING = "closing"
    #: our side finished after that close or response end (FIN, or a reset while writing it)
    CLOSED = "closed"
    #: our side finished without one: reset, the connection is lost, or a plain 500/403 response
    ENDED = "ended"


class WebSocketExchange(Exchange):
    """A ``websocket`` scope: the handshake answer (accept, 403 or a denial response), then frames both ways.

    Two small state machines: the app's :class:`Handshake` answer, and our sending side
    (:class:`WebSocketState`), which can end (a reset) at any point of the handshake.
    """

    kind = "websocket"
    label = "websocket "

    def __init__(self, sc: ExchangeHost, sid: int, credit: Credit, scope: dict[str, Any], *, max_message: int) -> None:
        super().__init__(sc, sid, credit, scope)
        #: ``max_message``: the largest message accepted (``NetworkConfig.max_websocket_message_size``)
        self.decoder = ws.FrameDecoder(max_message=max_message)
        self.handshake = Handshake.PENDING
        self.state = WebSocketState.OPEN
        # the receiving side
        self.connect_delivered = False  # the app has had websocket.connect
        self.close_code: int | None = None  # set once the app must see websocket.disconnect
        self.close_reason = ""
        self.peer_ended = False  # the peer's FIN arrived
        #: the status of a refused handshake (403, a denial response's, 500), for the access log
        self.status: int | None = None

    @property
    def complete(self) -> bool:
        return self.state is WebSocketState.CLOSED or self.state is WebSocketState.ENDED

    @property
    def close_sent(self) -> bool:
        """Our close frame (or a 403 or denial response's end) went out, or is going out."""
        return self.state is WebSocketState.CLOSING or self.state is WebSocketState.CLOSED

    def _closing(self) -> None:
        """Our close frame (or the end of a 403 or denial response) is on its way."""
        if self.state is WebSocketState.OPEN:
            self.state = WebSocketState.CLOSING
        elif self.state is WebSocketState.ENDED:  # too late to go out: nothing more is sent either way
            self.state = WebSocketState.CLOSED

    def end_sending(self) -> None:
        if self.state is WebSocketState.OPEN:
            self.state = WebSocketState.ENDED
        elif self.state is WebSocketState.CLOSING:
            self.state = WebSocketState.CLOSED

    def on_data(self, data: bytes, ended: bool) -> None:
        if data:
            self.decoder.feed(data)
            self.credit.unread += len(data)
        if ended:
            self.peer_ended = True
        self.wake_receiver()

    def on_reset(self, code: int) -> None:
        super().on_reset(code)
        self._peer_gone()

    def on_stop(self, code: int) -> None:
        super().on_stop(code)
        self._peer_gone()

    def on_lost(self) -> None:
        super().on_lost()
        self._peer_gone()

    def _peer_gone(self) -> None:
        if self.close_code is None:
            self.close_code = 1006
        self.wake_receiver()

    def server_shutdown(self) -> None:
        if self.handshake is Handshake.ACCEPTED and self.state is WebSocketState.OPEN:
            self._send_close(1012, "server shutting down")
        if self.close_code is None:
            self.close_code = 1012
        self.wake_receiver()

    def _send_close(self, code: int, reason: str) -> None:
        self._closing()
        frame = ws.encode_frame(ws.OP_CLOSE, ws.close_payload(code, reason), mask=False)
        try:
            self.sc.h3.send_data(self.sid, frame, True)
        except RuntimeError:
            pass
        self.sc.schedule_transmit()
        self._completed_ws()

    def _completed_ws(self) -> None:
        self.end_sending()
        self.wake_receiver()

    async def receive(self) -> Message:
        if not self.connect_delivered:
            self.connect_delivered = True
            return {"type": "websocket.connect"}
        while True:
            if self.close_code is not None:
                return {"type": "websocket.disconnect", "code": self.close_code, "reason": self.close_reason}
            before = self.decoder.buffered
            try:
                event = self.decoder.next_event()
            except ws.WebSocketProtocolError as exc:
                log.info("websocket stream %d: %s", self.sid, exc)
                if not self.close_sent and self.handshake is Handshake.ACCEPTED:
                    self._send_close(exc.code, str(exc)[:100])
                self.close_code = exc.code
                continue
            consumed = before - self.decoder.buffered
            if consumed:
                self.credit.read(consumed)
            if isinstance(event, ws.Message):
                if isinstance(event.data, str):
                    return {"type": "websocket.receive", "text": event.data, "bytes": None}
                return {"type": "websocket.receive", "bytes": event.data, "text": None}
            if isinstance(event, ws.Ping):
                if not self.close_sent and not self.disconnected:
                    await self.write(ws.encode_frame(ws.OP_PONG, event.payload, mask=False), False)
                continue
            if isinstance(event, ws.Close):
                if not self.close_sent and not self.disconnected:
                    self._closing()
                    echo = ws.close_payload(event.code, "") if event.code != 1005 else b""
                    try:
                        await self.write(ws.encode_frame(ws.OP_CLOSE, echo, mask=False), True)
                    except ClientDisconnected:
                        pass
                    self._completed_ws()
                self.close_code = event.code
                self.close_reason = event.reason
                continue
            if isinstance(event, ws.Pong):
                continue
            if self.peer_ended or self.disconnected:
                self.close_code = 1006
                continue
            await self.wait_for_peer()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            if self.handshake is not Handshake.ACCEPTED:
                raise RuntimeError("ASGI: 'websocket.send' before 'websocket.accept'")
            if self.close_sent or self.disconnected:
                raise ClientDisconnected(f"websocket on stream {self.sid} is closed")
            text = message.get("text")
            if text is not None:
                frame = ws.encode_frame(ws.OP_TEXT, text.encode("utf-8"), mask=False)
            else:
                frame = ws.encode_frame(ws.OP_BINARY, bytes(message.get("bytes") or b""), mask=False)
            await self.write(frame, False)
        elif kind == "websocket.accept":
            if self.handshake is not Handshake.PENDING:
                raise RuntimeError("ASGI: 'websocket.accept' sent twice")
            self.check_connected()
            headers: Headers = [(b":status", b"200")]
            subprotocol = message.get("subprotocol")
            if subprotocol:
                headers.append((b"sec-websocket-protocol", subprotocol.encode()))
            extra = message.get("headers", ())
            headers.extend(clean_header_fields(extra, log.warning, drop=frozenset({b"sec-websocket-protocol"})))
            self.send_headers(headers, False)
            self.handshake = Handshake.ACCEPTED
            log_websocket(self.scope["client"][0], full_path(self.scope), "accepted")
        elif kind == "websocket.close":
            if self.state is not WebSocketState.OPEN:
                return
            code = int(message.get("code") or 1000)
            reason = message.get("reason") or ""
            if self.handshake is not Handshake.ACCEPTED:
                # refusing the handshake: a plain HTTP 403 (the ASGI spec's rule)
                self._closing()
                self.status = 403
                if not self.disconnected:
                    headers, body = plain_response(403, "Forbidden")
                    self.send_headers(headers, False)
                    await self.write(body, True)
                self._completed_ws()
            else:
                self._send_close(code, reason)
            if self.close_code is None:
                self.close_code = code
        elif kind == "websocket.http.response.start":
            if self.handshake is not Handshake.PENDING:
                raise RuntimeError("ASGI: denial response after accept")
            self.handshake = Handshake.DENIED
            status = self.status = int(message["status"])
            fields = clean_header_fields(message.get("headers", ()), log.warning, drop=frozenset({b"content-length"}))
            self.send_headers([(b":status", str(status).encode()), *fields], False)
        elif kind == "websocket.http.response.body":
            if self.handshake is not Handshake.DENIED:
                raise RuntimeError("ASGI: denial body before denial start")
            more = bool(message.get("more_body", False))
            await self.write(bytes(message.get("body", b"")), not more)
            if not more:
                self._closing()
                self._completed_ws()
                if self.close_code is None:
                    self.close_code = 1000
        else:
            raise RuntimeError(f"ASGI: unexpected message type {kind!r} on a websocket scope")

    def app_returned_early(self) -> None:
        if self.handshake is Handshake.ACCEPTED:
            self._send_close(1000, "")
        else:
            self.app_failed(status=403)

    def app_failed(self, status: int = 500) -> None:
        if self.complete or self.disconnected or self.sc.lost:
            return
        if self.handshake is Handshake.ACCEPTED:
            self._send_close(1011, "internal error")
        elif self.handshake is Handshake.PENDING:
            self.status = status
            self.send_plain(status, "Internal Server Error" if status == 500 else "Forbidden")
            self._completed_ws()
        else:
            self.abort(H3_INTERNAL_ERROR)

    def log_access(self) -> None:
        client, path = self.scope["client"][0], full_path(self.scope)
        if self.handshake is Handshake.ACCEPTED:
            code = self.close_code if self.close_code is not None else 1006
            reason = self.close_reason or {1006: "no close frame", 1012: "server shutting down"}.get(code, "")
            log_websocket(client, path, f"closed {code}{f' {reason}' if reason else ''}")
        elif self.status is not None and self.cut is None:
            log_websocket(client, path, "refused", self.status)
        else:
            log_websocket(client, path, self.cut or "no response")
