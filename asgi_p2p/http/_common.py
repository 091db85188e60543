"""Pieces shared by the HTTP/3 server and client: the H3 connection, headers, credit accounting."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import pylsqpack
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import (
    CONNECTION_SPECIFIC_HEADERS,
    FrameError,
    FrameType,
    H3Connection,
    H3Stream,
    QpackDecompressionFailed,
    Setting,
    StreamType,
    encode_frame,
)
from aioquic.h3.events import H3Event
from aioquic.quic.connection import QuicConnection

from ..endpoint._aioquic_hooks import Buffer, BufferReadError
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


class _StaticTableEncoder:
    """A QPACK encoder that never uses the dynamic table, whatever the peer allows."""

    __slots__ = ("_encoder",)

    def __init__(self) -> None:
        self._encoder = pylsqpack.Encoder()

    def apply_settings(self, max_table_capacity: int, blocked_streams: int) -> bytes:
        return self._encoder.apply_settings(max_table_capacity=0, blocked_streams=0)

    def encode(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
        return self._encoder.encode(stream_id, headers)

    def feed_decoder(self, data: bytes) -> None:
        self._encoder.feed_decoder(data)


class H3(H3Connection):
    """aioquic's H3Connection plus GOAWAY (aioquic skips received GOAWAY frames and sends none).

    With ``qpack_dynamic_table=False`` neither side's QPACK dynamic table is used: we
    advertise a zero table capacity and encode with the static table and literals
    only.  Field sections then need no QPACK Section Acknowledgments, so a small
    request/response exchange is one packet each way instead of two (the decoder
    stream's acknowledgments otherwise travel in packets of their own).
    """

    def __init__(
        self,
        quic: QuicConnection,
        on_goaway: Callable[[int], None] | None = None,
        *,
        qpack_dynamic_table: bool = True,
    ) -> None:
        self.goaway_id: int | None = None
        self._on_goaway = on_goaway
        self._ctrl_buf = bytearray()
        self._ctrl_skip = 0
        self._ctrl_typed = False
        self._qpack_dynamic = qpack_dynamic_table
        super().__init__(quic, enable_webtransport=False)
        if not qpack_dynamic_table:
            self._decoder = pylsqpack.Decoder(0, 0)
            self._encoder = _StaticTableEncoder()  # type: ignore[assignment]

    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        if not self._qpack_dynamic:
            settings[Setting.QPACK_MAX_TABLE_CAPACITY] = 0
            settings[Setting.QPACK_BLOCKED_STREAMS] = 0
        return settings

    # Without the dynamic table the QPACK encoder and decoder streams stay empty: skip
    # the two empty stream writes aioquic makes per field section.

    def _encode_headers(self, stream_id: int, headers: Headers) -> bytes:
        if self._qpack_dynamic:
            return super()._encode_headers(stream_id, headers)
        encoder, frame_data = self._encoder.encode(stream_id, headers)
        if encoder and self._local_encoder_stream_id is not None:  # never without a dynamic table
            self._encoder_bytes_sent += len(encoder)
            self._quic.send_stream_data(self._local_encoder_stream_id, encoder)
        return frame_data

    def _decode_headers(self, stream_id: int, frame_data: bytes | None) -> Headers:
        if self._qpack_dynamic or frame_data is None:
            return super()._decode_headers(stream_id, frame_data)
        try:
            decoder, headers = self._decoder.feed_header(stream_id, frame_data)
        except pylsqpack.DecompressionFailed as exc:
            raise QpackDecompressionFailed() from exc
        if decoder and self._local_decoder_stream_id is not None:  # never with a zero-capacity table
            self._decoder_bytes_sent += len(decoder)
            self._quic.send_stream_data(self._local_decoder_stream_id, decoder)
        return headers

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
