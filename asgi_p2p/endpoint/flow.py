"""Flow-control windows that follow the path: read-paced receive credit with auto-tuning.

A :class:`ReceiveWindow` is the receive side of one stream or of the whole
connection.  The peer may send up to :attr:`ReceiveWindow.limit`: what the
application has *consumed* plus the current :attr:`~ReceiveWindow.window`.  The
limit moves in steps of at least half the window (announcing it on every read
would put a MAX_STREAM_DATA frame into every packet).

Auto-tuning, as quic-go and Chromium do it: each step ends an *epoch*; if the
application consumed data faster than ``window / (GROW_RTTS * smoothed RTT)``
during the epoch, flow control (not the application, not the path) was what
slowed the sender down, so the window doubles, up to its ceiling.  A window only
grows at a step, and a step only happens when the application consumed half a
window: a reader that does not keep up never makes its window grow, and the
bytes buffered for it stay bounded by the window it has.

The send side follows the path too: :func:`send_buffer_limit` lets a stream
hold about two congestion windows of unacknowledged data (as Linux sizes a TCP
socket's send buffer), between a floor and a ceiling.
"""

from __future__ import annotations

__all__ = ["GROW_RTTS", "ReceiveWindow", "send_buffer_limit"]

#: the window doubles when a window's worth of data was consumed in less than this
#: many smoothed RTTs, i.e. while the reader takes more than ``window / (GROW_RTTS * RTT)``
#: per second.  A sender that the window holds back gets about half a window per round
#: trip (each step announces half a window more, which takes a round trip to be used),
#: so the threshold must sit well below that rate: at 2 RTTs it sat on it (measured
#: through a relay on loopback with 86 ms added: half a window read in 0.87-1.06 of the old threshold, so
#: whether the window grew was a coin toss, and a round a few percent slow kept it).
#: At 4 the window settles between 4 and 8 bandwidth-delay products of a path-limited
#: transfer (up to its ceiling).
GROW_RTTS = 4.0
#: send buffer per stream, in congestion windows
SEND_BUFFER_CWNDS = 2


class ReceiveWindow:
    """Receive credit of one stream or connection (see the module docstring).

    ``window`` is the starting window, ``ceiling`` the largest it may grow to
    (a ceiling not above ``window`` turns auto-tuning off).
    """

    __slots__ = ("_epoch_at", "_epoch_offset", "ceiling", "consumed", "limit", "window")

    def __init__(self, window: int, ceiling: int) -> None:
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self.window = window
        self.ceiling = max(ceiling, window)
        #: bytes the application consumed
        self.consumed = 0
        #: the highest offset the peer may send to (what to announce)
        self.limit = window
        self._epoch_at: float | None = None
        self._epoch_offset = 0

    def consume(self, nbytes: int, now: float, rtt: float) -> bool:
        """The application consumed ``nbytes`` more; True if :attr:`limit` moved."""
        return self.consumed_to(self.consumed + nbytes, now, rtt)

    def consumed_to(self, consumed: int, now: float, rtt: float) -> bool:
        """The application consumed ``consumed`` bytes in all; True if :attr:`limit` moved."""
        if self._epoch_at is None and consumed > self.consumed:
            # the first read starts the first epoch (as if a window update had just gone out)
            self._epoch_at = now
            self._epoch_offset = self.consumed
        if consumed > self.consumed:
            self.consumed = consumed
        if self.limit - self.consumed > self.window // 2:
            return False
        self._maybe_grow(now, rtt)
        self.limit = self.consumed + self.window
        return True

    def _maybe_grow(self, now: float, rtt: float) -> None:
        read = self.consumed - self._epoch_offset
        if read < self.window // 2 or self._epoch_at is None:
            return  # too little read since the last step to judge the rate
        if rtt > 0 and self.window < self.ceiling and now - self._epoch_at < GROW_RTTS * rtt * read / self.window:
            self.window = min(2 * self.window, self.ceiling)
        self._epoch_at = now
        self._epoch_offset = self.consumed

    def ensure_window(self, size: int) -> None:
        """Grow the window to at least ``size`` (never past the ceiling)."""
        if size > self.window:
            self.window = min(size, self.ceiling)

    def __repr__(self) -> str:
        return f"<ReceiveWindow consumed={self.consumed} limit={self.limit} window={self.window}/{self.ceiling}>"


def send_buffer_limit(congestion_window: int, peer_credit: int, floor: int, ceiling: int) -> int:
    """Unacknowledged bytes one stream may hold.

    Everything in flight stays in the send buffer until acknowledged, so a buffer
    smaller than the congestion window would make the sender, not the path, the
    limit: the buffer may hold two congestion windows (the second keeps data ready
    while the first is acknowledged), as much of it as the peer's credit past the
    acknowledged data allows (more could not be sent anyway), plus ``floor``;
    never less than ``floor`` nor more than ``ceiling``.  So a peer that stops
    reading leaves the buffer at ``floor``, and one that advertises huge windows
    cannot raise it past two congestion windows or the ceiling.
    """
    useful = min(SEND_BUFFER_CWNDS * congestion_window, peer_credit + floor)
    return max(floor, min(ceiling, useful))
