"""Pieces shared by the HTTP/3 server and client: the H3 connection, headers, body sending, credit accounting."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Protocol

from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import CONNECTION_SPECIFIC_HEADERS, FrameError, FrameType
from aioquic.quic.connection import QuicConnection

from ..aioquic_compat import Buffer, BufferReadError, HookedH3Connection, unacked_bytes
from ..endpoint.connection import PeerConnection

__all__ = [
    "H3",
    "H3_ALPN",
    "H3_INTERNAL_ERROR",
    "H3_NO_ERROR",
    "H3_REQUEST_CANCELLED",
    "H3_REQUEST_REJECTED",
    "INVALID_CONTENT_LENGTH_FIELD",
    "MAX_CONTENT_LENGTH",
    "ClientDisconnected",
    "Credit",
    "GoawayWatcher",
    "Headers",
    "clean_header_fields",
    "content_length_value",
    "data_frame_header",
    "mark_invalid_content_length",
    "send_body",
    "send_body_nowait",
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


#: The largest content-length a message may announce: a QUIC stream carries at most 2**62 - 1 bytes.
MAX_CONTENT_LENGTH = 2**62 - 1
#: What :func:`mark_invalid_content_length` renames an invalid ``content-length`` field to.
INVALID_CONTENT_LENGTH_FIELD = b"asgi-p2p-invalid-content-length"


def content_length_value(value: bytes) -> int | None:
    """The value of a ``content-length`` field (RFC 9110: ``1*DIGIT``), or None if it is not one.

    Only ASCII digits: no sign, space, underscore, ``0x`` or list; at most 19 of them and
    no more than a QUIC stream can carry.
    """
    if not 0 < len(value) <= 19 or not value.isdigit():  # bytes.isdigit(): ASCII digits only
        return None
    n = int(value)
    return n if n <= MAX_CONTENT_LENGTH else None


def mark_invalid_content_length(fields: Headers, *, quote: bool = False) -> Headers:
    """Rename each ``content-length`` field whose value is invalid to :data:`INVALID_CONTENT_LENGTH_FIELD`
    (every one of them when valid values disagree).

    The server and the client apply it to every field section before aioquic checks it:
    aioquic closes the whole connection for a value ``int()`` refuses (``5, 5``, ``0x10``,
    5000 digits) or a body that does not match the last of several fields, and takes values
    that RFC 9110 does not allow (``+5``, ``1_0``); instead the server answers that one
    request 400 (``parse_request``) and the client fails that one response
    (``P2PTransport``).  ``quote=True`` (what both pass): the renamed fields carry their
    values quoted (``ascii()`` of the Latin-1 text, so `` 10`` becomes ``' 10'``), which
    aioquic's check of the section passes (no whitespace at either end, no CR, LF or NUL)
    while the value is still there to name.  Returns ``fields`` itself when nothing changes.
    """
    first: int | None = None
    conflict = invalid = False
    for name, value in fields:  # (a loop, not all() over a generator: once per message)
        if name == b"content-length":
            n = content_length_value(value)
            if n is None:
                invalid = True
            elif first is None:
                first = n
            elif n != first:
                conflict = True
    if not (invalid or conflict):
        return fields
    return [
        (INVALID_CONTENT_LENGTH_FIELD, ascii(value.decode("latin-1")).encode() if quote else value)
        if name == b"content-length" and (conflict or content_length_value(value) is None)
        else (name, value)
        for name, value in fields
    ]


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
    request: bool = False,
) -> Headers:
    """Header fields as HTTP/3 requires them: lower-case names, no connection-specific
    fields, no pseudo-headers, values without CR/LF/NUL or surrounding whitespace.
    ``request``: fields of a request, which may carry ``te: trailers`` (RFC 9114 4.2).

    Invalid fields are dropped (and reported to ``warn``) instead of being sent,
    because one malformed field makes an aioquic peer close the whole connection.
    """
    out: Headers = []
    token, bad_value = _TOKEN.match, _BAD_VALUE.search  # (runs per request: bound once)
    for raw_name, raw_value in fields:
        # (bytes, the common case, as they are)
        if type(raw_name) is bytes:
            name = raw_name.lower()
        else:
            name = (raw_name.encode("latin-1") if isinstance(raw_name, str) else bytes(raw_name)).lower()
        if type(raw_value) is bytes:
            value = raw_value
        else:
            value = raw_value.encode("latin-1") if isinstance(raw_value, str) else bytes(raw_value)
        if name in HOP_BY_HOP or name in drop:
            if request and name == b"te" and value.strip(b" \t").lower() == b"trailers":
                out.append((b"te", b"trailers"))
            continue
        if not token(name):
            if warn is not None:
                warn(f"dropped header with invalid name {name!r}")
            continue
        value = value.strip(b" \t")
        if bad_value(value):
            if warn is not None:
                warn(f"dropped header {name.decode()!r}: value contains CR, LF or NUL")
            continue
        out.append((name, value))
    return out


class GoawayWatcher:
    """Follows the peer's HTTP/3 control stream, from its first byte (the stream type), to
    find GOAWAY frames; the payloads of other frames are skipped, not buffered."""

    __slots__ = ("_buf", "_on_goaway", "_skip", "_typed", "goaway_id")

    def __init__(self, on_goaway: Callable[[int], None] | None = None) -> None:
        #: the identifier of the last GOAWAY received (None: none yet)
        self.goaway_id: int | None = None
        self._on_goaway = on_goaway
        self._buf = bytearray()
        self._skip = 0
        self._typed = False

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the control stream; raises FrameError for a bad GOAWAY."""
        buf = self._buf
        buf += data
        while buf:
            if self._skip:
                n = min(self._skip, len(buf))
                del buf[:n]
                self._skip -= n
                continue
            reader = Buffer(data=bytes(buf[:16]))
            try:
                if not self._typed:
                    reader.pull_uint_var()
                    self._typed = True
                    del buf[: reader.tell()]
                    continue
                frame_type = reader.pull_uint_var()
                frame_len = reader.pull_uint_var()
            except BufferReadError:
                return
            head = reader.tell()
            if frame_type != FrameType.GOAWAY:
                del buf[:head]
                self._skip = frame_len
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


class H3(HookedH3Connection):
    """aioquic's H3Connection plus GOAWAY (aioquic skips received GOAWAY frames and sends none).

    With ``qpack_dynamic_table=False`` neither side's QPACK dynamic table is used: we
    advertise a zero table capacity and encode with the static table and literals
    only.  Field sections then need no QPACK Section Acknowledgments, so a small
    request/response exchange is one packet each way instead of two (the decoder
    stream's acknowledgments otherwise travel in packets of their own).
    ``on_field_section`` sees (and may rewrite) every received field section before
    aioquic checks it.
    """

    def __init__(
        self,
        quic: QuicConnection,
        on_goaway: Callable[[int], None] | None = None,
        *,
        qpack_dynamic_table: bool = True,
        on_field_section: Callable[[Headers], Headers] | None = None,
    ) -> None:
        self.goaway = GoawayWatcher(on_goaway)
        super().__init__(
            quic,
            static_qpack=not qpack_dynamic_table,
            on_control_data=self.goaway.feed,
            on_field_section=on_field_section,
        )

    @property
    def goaway_id(self) -> int | None:
        """The identifier of the last GOAWAY the peer sent (None: none yet)."""
        return self.goaway.goaway_id


class BodySender(Protocol):
    """What :func:`send_body` needs of a connection handler (client or server)."""

    @property
    def conn(self) -> PeerConnection: ...

    @property
    def h3(self) -> H3: ...

    def schedule_transmit(self) -> None: ...


#: With the send buffer full, body bytes go to QUIC in slices of this size, each waiting for room.
BODY_SLICE = 256 * 1024


def send_body_nowait(handler: BodySender, sid: int, data: bytes, end: bool) -> bool:
    """Send ``data`` as :func:`send_body` does if it fits under the stream's send buffer limit
    now (so nothing waits); False, and nothing sent, if it does not."""
    if len(data) + unacked_bytes(handler.conn.quic, sid) > handler.conn.send_buffer_limit(sid):
        return False
    if data or end:
        handler.h3.send_data(sid, data, end)
        handler.schedule_transmit()
    return True


async def send_body(handler: BodySender, sid: int, data: bytes, end: bool) -> None:
    """Send ``data`` in DATA frames on stream ``sid`` (and end the stream if ``end``).

    Data that fits under the stream's send buffer limit (unacknowledged bytes, see
    :meth:`PeerConnection.send_buffer_limit`) goes to aioquic at
    once; more goes in slices, each waiting while the stream's send buffer is full.
    Raises what aioquic (RuntimeError) and PeerConnection.send_stream_data raise when the
    stream or the connection is gone.
    """
    if send_body_nowait(handler, sid, data, end):
        return
    view = memoryview(data)
    for off in range(0, len(view), BODY_SLICE):
        part = view[off : off + BODY_SLICE]
        await handler.conn.send_stream_data(sid, data_frame_header(len(part)) + part)
    if end:
        handler.h3.send_data(sid, b"", True)
        handler.schedule_transmit()


class Credit:
    """Read-paced receive credit of one stream.

    The peer may send the stream's receive window (``stream_receive_window``, auto-tuned
    up to ``max_stream_receive_window``) beyond what we *consumed*.
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
