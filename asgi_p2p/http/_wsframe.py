"""RFC 6455 framing, as carried inside an HTTP/3 stream by RFC 9220 (sans-I/O)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Close",
    "FrameDecoder",
    "Message",
    "Ping",
    "Pong",
    "WebSocketProtocolError",
    "close_payload",
    "encode_frame",
]

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


class WebSocketProtocolError(Exception):
    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Message:
    data: bytes | str


@dataclass
class Ping:
    payload: bytes


@dataclass
class Pong:
    payload: bytes


@dataclass
class Close:
    code: int
    reason: str


Event = Message | Ping | Pong | Close


def _mask(data: bytes, key: bytes) -> bytes:
    n = len(data)
    if n == 0:
        return data
    full = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(full, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes, *, mask: bool, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", first, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mbit | 127, n)
    if mask:
        key = os.urandom(4)
        return head + key + _mask(payload, key)
    return head + payload


def close_payload(code: int, reason: str = "") -> bytes:
    if code in (1005, 1006, 1015):  # reserved: never on the wire
        return b""
    return struct.pack("!H", code) + reason.encode()[:123]


class FrameDecoder:
    """Feed bytes, get messages and control frames; raises :class:`WebSocketProtocolError`."""

    def __init__(self, *, max_message: int) -> None:
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._parts_len = 0
        self._opcode: int | None = None
        self._max = max_message

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_event(self) -> Event | None:
        """The next complete event, or None when more bytes are needed."""
        while True:
            frame = self._next_frame()
            if frame is None:
                return None
            fin, opcode, payload = frame
            if opcode >= 0x8:
                if not fin or len(payload) > 125:
                    raise WebSocketProtocolError("invalid control frame")
                if opcode == OP_CLOSE:
                    return self._close(payload)
                if opcode == OP_PING:
                    return Ping(payload)
                if opcode == OP_PONG:
                    return Pong(payload)
                raise WebSocketProtocolError(f"unknown opcode {opcode:#x}")
            if opcode == OP_CONT:
                if self._opcode is None:
                    raise WebSocketProtocolError("continuation frame without a message")
            elif opcode in (OP_TEXT, OP_BINARY):
                if self._opcode is not None:
                    raise WebSocketProtocolError("new message before the previous one finished")
                self._opcode = opcode
            else:
                raise WebSocketProtocolError(f"unknown opcode {opcode:#x}")
            self._parts.append(payload)
            self._parts_len += len(payload)
            if self._parts_len > self._max:
                raise WebSocketProtocolError(f"message larger than {self._max} bytes", 1009)
            if fin:
                data = b"".join(self._parts) if len(self._parts) != 1 else self._parts[0]
                op = self._opcode
                self._parts, self._parts_len, self._opcode = [], 0, None
                if op == OP_TEXT:
                    try:
                        return Message(data.decode("utf-8"))
                    except UnicodeDecodeError:
                        raise WebSocketProtocolError("text message is not UTF-8", 1007) from None
                return Message(data)

    def _close(self, payload: bytes) -> Close:
        if not payload:
            return Close(1005, "")
        if len(payload) == 1:
            raise WebSocketProtocolError("close frame with a 1-byte payload")
        (code,) = struct.unpack("!H", payload[:2])
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise WebSocketProtocolError("close reason is not UTF-8", 1007) from None
        return Close(code, reason)

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        if b0 & 0x70:
            raise WebSocketProtocolError("reserved bits set (no extension negotiated)")
        masked = bool(b1 & 0x80)
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                return None
            (n,) = struct.unpack_from("!H", buf, 2)
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            (n,) = struct.unpack_from("!Q", buf, 2)
            pos = 10
        if n > self._max:
            raise WebSocketProtocolError(f"frame larger than {self._max} bytes", 1009)
        key = b""
        if masked:
            if len(buf) < pos + 4:
                return None
            key = bytes(buf[pos : pos + 4])
            pos += 4
        if len(buf) < pos + n:
            return None
        payload = bytes(buf[pos : pos + n])
        del buf[: pos + n]
        if masked:
            payload = _mask(payload, key)
        return bool(b0 & 0x80), b0 & 0x0F, payload
