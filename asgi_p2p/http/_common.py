"""Pieces shared by the HTTP/3 server and client: the H3 connection, headers, credit accounting."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from aioquic._buffer import Buffer, BufferReadError
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import (
    CONNECTION_SPECIFIC_HEADERS,
    FrameError,
    FrameType,
    H3Connection,
    H3Stream,
    StreamType,
    encode_frame,
)
from aioquic.h3.events import H3Event
from aioquic.quic.connection import QuicConnection

from ..endpoint.connection import PeerConnection

__all__ = [
    "H3",
    "H3_ALPN",
    "H3_INTERNAL_ERROR",
    "H3_NO_ERROR",
    "H3_REQUEST_CANCELLED",
    "H3_REQUEST_REJECTED",
    "ClientDisconnected",
    "Credit",
    "Headers",
    "clean_header_fields",
    "data_frame_header",
]

#: The ALPN of HTTP/3.
H3_ALPN = "h3"

H3_NO_ERROR = 0x100
H3_INTERNAL_ERROR = 0x102
H3_EXCESSIVE_LOAD = 0x107
H3_REQUEST_REJECTED = 0x10B
H3_REQUEST_CANCELLED = 0x10C
H3_MESSAGE_ERROR = 0x10E

Headers = list[tuple[bytes, bytes]]

#: Fields that make an HTTP/3 message malformed (RFC 9114 section 4.2); aioquic closes
#: the whole connection when it receives one, so they never go on the wire.
HOP_BY_HOP = CONNECTION_SPECIFIC_HEADERS | {b"host", b"http2-settings"}

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9a-z]+$")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")


class ClientDisconnected(OSError):
    """``send`` was called after the peer went away (reset the stream or lost the connection)."""


def data_frame_header(length: int) -> bytes:
    """The type and length of an HTTP/3 DATA frame carrying ``length`` bytes."""
    return encode_uint_var(FrameType.DATA) + encode_uint_var(length)


def clean_header_fields(
    fields: Iterable[tuple[bytes | str, bytes | str]],
    warn: Callable[[str], None] | None = None,
    *,
    drop: frozenset[bytes] = frozenset(),
) -> Headers:
    """Header fields as HTTP/3 requires them: lower-case names, no connection-specific
    fields, no pseudo-headers, values without CR/LF/NUL or surrounding whitespace.

    Invalid fields are dropped (and reported to ``warn``) instead of being sent,
    because one malformed field makes an aioquic peer close the whole connection.
    """
    out: Headers = []
    for raw_name, raw_value in fields:
        name = raw_name.encode("latin-1") if isinstance(raw_name, str) else bytes(raw_name)
        value = raw_value.encode("latin-1") if isinstance(raw_value, str) else bytes(raw_value)
        name = name.lower()
        if name in HOP_BY_HOP or name in drop:
            continue
        if not _TOKEN.match(name):
            if warn is not None:
                warn(f"dropped header with invalid name {name!r}")
            continue
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            if warn is not None:
                warn(f"dropped header {name.decode()!r}: value contains CR, LF or NUL")
            continue
        out.append((name, value))
    return out


class H3(H3Connection):
    """aioquic's H3Connection plus GOAWAY (aioquic skips received GOAWAY frames and sends none)."""

    def __init__(self, quic: QuicConnection, on_goaway: Callable[[int], None] | None = None) -> None:
        self.goaway_id: int | None = None
        self._on_goaway = on_goaway
        self._ctrl_buf = bytearray()
        self._ctrl_skip = 0
        self._ctrl_typed = False
        super().__init__(quic, enable_webtransport=False)

    def _receive_stream_data_uni(self, stream: H3Stream, data: bytes, stream_ended: bool) -> list[H3Event]:
        events = super()._receive_stream_data_uni(stream, data, stream_ended)
        if stream.stream_type == StreamType.CONTROL and data:
            self._watch_control(data)
        return events

    def _watch_control(self, data: bytes) -> None:
        """Follow the peer's control stream to find GOAWAY frames (payloads of others are skipped)."""
        buf = self._ctrl_buf
        buf += data
        while buf:
            if self._ctrl_skip:
                n = min(self._ctrl_skip, len(buf))
                del buf[:n]
                self._ctrl_skip -= n
                continue
            reader = Buffer(data=bytes(buf[:16]))
            try:
                if not self._ctrl_typed:
                    reader.pull_uint_var()
                    self._ctrl_typed = True
                    del buf[: reader.tell()]
                    continue
                frame_type = reader.pull_uint_var()
                frame_len = reader.pull_uint_var()
            except BufferReadError:
                return
            head = reader.tell()
            if frame_type != FrameType.GOAWAY:
                del buf[:head]
                self._ctrl_skip = frame_len
                continue
            if len(buf) < head + frame_len:
                return
            payload = bytes(buf[head : head + frame_len])
            del buf[: head + frame_len]
            try:
                ident = Buffer(data=payload).pull_uint_var()
            except BufferReadError:
                raise FrameError("Could not parse GOAWAY frame") from None
            if self.goaway_id is not None and ident > self.goaway_id:
                raise FrameError("GOAWAY identifier increased")
            self.goaway_id = ident
            if self._on_goaway is not None:
                self._on_goaway(ident)

    def send_goaway(self, ident: int) -> None:
        """Tell the peer that requests on streams >= ``ident`` will not be processed."""
        control = self._local_control_stream_id
        assert control is not None
        self._quic.send_stream_data(control, encode_frame(FrameType.GOAWAY, encode_uint_var(ident)))

    def end_local(self, stream_id: int) -> None:
        """Our sending side of ``stream_id`` was reset outside of this object: forget it when done."""
        stream = self._stream.get(stream_id)
        if stream is not None:
            stream.sending_ended = True
            if stream.is_ended():
                self._stream.pop(stream_id, None)

    @property
    def is_done(self) -> bool:
        return bool(self._is_done)


class Credit:
    """Read-paced receive credit of one stream.

    The peer may send ``stream_receive_window`` bytes beyond what we *consumed*.
    Consumed = raw stream bytes received minus payload bytes the application has
    not read yet, so HTTP/3 frame headers and header blocks count as consumed at
    once and DATA payload only when the application reads it.
    """

    __slots__ = ("conn", "raw", "reported", "stream_id", "unread")

    def __init__(self, conn: PeerConnection, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.raw = 0
        self.unread = 0
        self.reported = 0
        conn.track_stream(stream_id)

    def update(self) -> None:
        consumed = self.raw - self.unread
        if consumed > self.reported:
            self.conn.consume(self.stream_id, consumed - self.reported)
            self.reported = consumed

    def read(self, n: int) -> None:
        self.unread -= n
        self.update()
