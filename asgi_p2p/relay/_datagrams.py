"""Queueing relay frames as QUIC DATAGRAM frames: shared by the relay client and server."""

from __future__ import annotations

from typing import Protocol

from aioquic.quic.connection import QuicConnection

from .. import aioquic_compat as hooks

__all__ = ["DEFAULT_MAX_PENDING_DATAGRAMS", "DropCounters", "queue_datagram_frame"]

#: DATAGRAM frames queued on one relay connection beyond which frames are dropped.
DEFAULT_MAX_PENDING_DATAGRAMS = 256


class DropCounters(Protocol):
    """The stats a :func:`queue_datagram_frame` drop is counted in."""

    dropped_too_large: int
    dropped_queue_full: int


def queue_datagram_frame(quic: QuicConnection, frame: bytes, max_pending: int, stats: DropCounters) -> bool:
    """Queue ``frame`` in a DATAGRAM frame on ``quic``; False (and counted) when dropped instead.

    Dropped: a frame larger than the connection carries now (aioquic would queue it,
    and then it blocks the queue or makes the peer close the connection), and any
    frame while ``max_pending`` frames wait (congestion: aioquic's queue is unbounded).
    The caller schedules the transmit.
    """
    if len(frame) > hooks.max_datagram_frame_payload(quic):
        stats.dropped_too_large += 1
        return False
    if hooks.pending_datagram_frames(quic) >= max_pending:
        stats.dropped_queue_full += 1
        return False
    quic.send_datagram_frame(frame)
    return True
