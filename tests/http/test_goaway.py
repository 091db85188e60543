"""GoawayWatcher: finding GOAWAY frames on the peer's HTTP/3 control stream (sans-I/O)."""

from __future__ import annotations

import pytest
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import FrameError, FrameType, Setting, StreamType, encode_frame, encode_settings

from asgi_p2p.http._common import GoawayWatcher


def _goaway(ident: int) -> bytes:
    return encode_frame(FrameType.GOAWAY, encode_uint_var(ident))


#: a control stream: its type, SETTINGS, an unknown frame type with a payload that looks
#: like a GOAWAY (skipped, not parsed), then two GOAWAYs
STREAM = (
    encode_uint_var(StreamType.CONTROL)
    + encode_frame(FrameType.SETTINGS, encode_settings({Setting.QPACK_MAX_TABLE_CAPACITY: 0}))
    + encode_frame(0x21, _goaway(1) * 40)
    + _goaway(2**20)
    + _goaway(8)
)


@pytest.mark.parametrize("chunk", [1, 2, 7, len(STREAM)])
def test_goaways_are_found_however_the_stream_is_split(chunk: int) -> None:
    seen: list[int] = []
    watcher = GoawayWatcher(seen.append)
    for i in range(0, len(STREAM), chunk):
        watcher.feed(STREAM[i : i + chunk])
    assert seen == [2**20, 8]
    assert watcher.goaway_id == 8


def test_a_goaway_split_before_its_payload_waits_for_it() -> None:
    watcher = GoawayWatcher()
    watcher.feed(encode_uint_var(StreamType.CONTROL) + _goaway(300)[:-1])
    assert watcher.goaway_id is None
    watcher.feed(_goaway(300)[-1:])
    assert watcher.goaway_id == 300


def test_an_increasing_goaway_identifier_is_a_frame_error() -> None:
    watcher = GoawayWatcher()
    watcher.feed(encode_uint_var(StreamType.CONTROL) + _goaway(4))
    with pytest.raises(FrameError, match="increased"):
        watcher.feed(_goaway(8))
    assert watcher.goaway_id == 4


def test_an_empty_goaway_is_a_frame_error() -> None:
    watcher = GoawayWatcher()
    with pytest.raises(FrameError, match="parse"):
        watcher.feed(encode_uint_var(StreamType.CONTROL) + encode_frame(FrameType.GOAWAY, b""))
