"""WebSocket client over HTTP/3 (RFC 9220 extended CONNECT) to a peer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from types import TracebackType

from ..endpoint.endpoint import Endpoint
from ..errors import ConnectionClosed, P2PError, Timeout
from ..identity import NodeAddr, NodeId
from . import _wsframe as ws
from ._common import Headers, clean_header_fields
from .client import ClientStream, connect_h3

__all__ = ["WebSocketDisconnect", "WebSocketRejected", "WebSocketSession", "websocket_connect"]

log = logging.getLogger("asgi_p2p.http")


class WebSocketDisconnect(P2PError):
    """The WebSocket is closed (``code`` 1006: closed without a close frame)."""

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"websocket closed with code {code}" + (f": {reason}" if reason else ""))


class WebSocketRejected(P2PError):
    """The server answered the WebSocket handshake with a non-2xx HTTP response."""

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        super().__init__(f"websocket handshake rejected with HTTP {status}")


class WebSocketSession:
    """An open WebSocket to a peer: :meth:`send`, :meth:`receive`, :meth:`close`."""

    def __init__(self, stream: ClientStream, subprotocol: str | None, headers: Headers, *, max_message: int) -> None:
        self._stream = stream
        self.subprotocol = subprotocol
        self.response_headers = headers
        #: ``max_message``: the largest message accepted (``NetworkConfig.max_websocket_message_size``)
        self._decoder = ws.FrameDecoder(max_message=max_message)
        self._close_sent = False
        self.close_code: int | None = None
        self.close_reason = ""
        self._send_lock = asyncio.Lock()

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            await self._send_frame(ws.OP_TEXT, data.encode("utf-8"))
        else:
            await self._send_frame(ws.OP_BINARY, bytes(data))

    async def send_text(self, data: str) -> None:
        await self.send(data)

    async def send_bytes(self, data: bytes) -> None:
        await self.send(bytes(data))

    async def ping(self, payload: bytes = b"") -> None:
        await self._send_frame(ws.OP_PING, payload)

    async def _send_frame(self, opcode: int, payload: bytes, end: bool = False) -> None:
        if self._close_sent or self.close_code is not None:
            raise WebSocketDisconnect(self.close_code or 1006, "websocket is closed")
        if opcode == ws.OP_CLOSE:
            self._close_sent = True
        async with self._send_lock:
            try:
                await self._stream.write(ws.encode_frame(opcode, payload, mask=True), end)
            except P2PError as exc:
                self._gone()
                raise WebSocketDisconnect(1006, str(exc)) from exc

    def _gone(self) -> None:
        if self.close_code is None:
            self.close_code = 1006
        self._stream.close()

    async def receive(self) -> str | bytes:
        """The next message; raises :class:`WebSocketDisconnect` once closed."""
        while True:
            if self.close_code is not None:
                raise WebSocketDisconnect(self.close_code, self.close_reason)
            try:
                event = self._decoder.next_event()
            except ws.WebSocketProtocolError as exc:
                await self._fail(exc.code, str(exc))
                continue
            if isinstance(event, ws.Message):
                return event.data
            if isinstance(event, ws.Ping):
                if not self._close_sent:
                    await self._send_frame(ws.OP_PONG, event.payload)
                continue
            if isinstance(event, ws.Pong):
                continue
            if isinstance(event, ws.Close):
                if not self._close_sent:
                    echo = ws.close_payload(event.code) if event.code != 1005 else b""
                    try:
                        await self._send_frame(ws.OP_CLOSE, echo, end=True)
                    except WebSocketDisconnect:
                        pass
                self.close_code = event.code
                self.close_reason = event.reason
                self._finish()
                continue
            try:
                data = await self._stream.read()
            except P2PError:
                self._gone()
                continue
            if not data:
                self._gone()
                continue
            self._decoder.feed(data)

    async def receive_text(self) -> str:
        msg = await self.receive()
        if not isinstance(msg, str):
            raise TypeError("expected a text message, got bytes")
        return msg

    async def receive_bytes(self) -> bytes:
        msg = await self.receive()
        if not isinstance(msg, bytes):
            raise TypeError("expected a binary message, got text")
        return msg

    async def _fail(self, code: int, reason: str) -> None:
        if not self._close_sent:
            try:
                await self._send_frame(ws.OP_CLOSE, ws.close_payload(code, reason[:100]), end=True)
            except WebSocketDisconnect:
                pass
        self.close_code = code
        self.close_reason = reason
        self._finish()

    def _finish(self) -> None:
        st = self._stream
        if st.sent_end and st.ended:
            st.close()
        else:
            st.cancel()

    async def close(self, code: int = 1000, reason: str = "", *, timeout: float = 5.0) -> None:
        """Send a close frame and wait (up to ``timeout``) for the peer's."""
        if self.close_code is not None:
            return
        if not self._close_sent:
            try:
                await self._send_frame(ws.OP_CLOSE, ws.close_payload(code, reason), end=True)
            except WebSocketDisconnect:
                return
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.receive()
        except WebSocketDisconnect:
            pass
        except TimeoutError:
            self.close_code = code
            self._stream.cancel()


class _Connect:
    def __init__(
        self,
        endpoint: Endpoint,
        target: NodeAddr | NodeId,
        path: str,
        subprotocols: Iterable[str],
        headers: Iterable[tuple[bytes | str, bytes | str]],
        timeout: float | None,
    ) -> None:
        self._endpoint = endpoint
        self._target = target
        self._path = path if path.startswith("/") else "/" + path
        self._subprotocols = list(subprotocols)
        self._headers = list(headers)
        self._timeout = timeout
        self._session: WebSocketSession | None = None

    async def __aenter__(self) -> WebSocketSession:
        try:
            async with asyncio.timeout(self._timeout):
                self._session = await self._open()
        except TimeoutError as exc:
            if isinstance(exc, P2PError):
                raise
            raise Timeout(f"websocket handshake with {self._target} timed out after {self._timeout}s") from None
        return self._session

    async def _open(self) -> WebSocketSession:
        cc = await connect_h3(self._endpoint, self._target)
        node_id = self._target.node_id if isinstance(self._target, NodeAddr) else self._target
        st = cc.open_stream()
        headers: Headers = [
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"https"),
            (b":authority", str(node_id).encode()),
            (b":path", self._path.encode()),
            (b"sec-websocket-version", b"13"),
        ]
        if self._subprotocols:
            headers.append((b"sec-websocket-protocol", ", ".join(self._subprotocols).encode()))
        headers.extend(clean_header_fields(self._headers, log.warning))
        try:
            st.send_headers(headers, False)
            status = await st.wait_headers()
            if not 200 <= status < 300:
                body = b""
                while chunk := await st.read():
                    body += chunk
                raise WebSocketRejected(status, st.headers, body)
        except BaseException:
            st.cancel()
            raise
        subprotocol = None
        for name, value in st.headers:
            if name == b"sec-websocket-protocol":
                subprotocol = value.decode("latin-1")
        return WebSocketSession(
            st, subprotocol, st.headers, max_message=self._endpoint.config.max_websocket_message_size
        )

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        session = self._session
        if session is None:
            return
        if exc_type is None or isinstance(exc, WebSocketDisconnect):
            try:
                await session.close()
            except (P2PError, ConnectionClosed):
                pass
        else:
            session._stream.cancel()


def websocket_connect(
    endpoint: Endpoint,
    node: NodeAddr | NodeId | str,
    path: str = "/",
    *,
    subprotocols: Iterable[str] = (),
    headers: Iterable[tuple[bytes | str, bytes | str]] = (),
    timeout: float | None = 10.0,
) -> _Connect:
    """Open a WebSocket to ``node`` at ``path`` (an async context manager)::

    async with websocket_connect(endpoint, node_addr, "/ws", subprotocols=["chat"]) as wsock:
        await wsock.send("hi")
        print(await wsock.receive())
    """
    target: NodeAddr | NodeId = NodeId.parse(node) if isinstance(node, str) else node
    return _Connect(endpoint, target, path, subprotocols, headers, timeout)
