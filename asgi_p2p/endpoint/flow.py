"""Flow-control windows that follow the path: read-paced receive credit with auto-tuning.

A :class:`ReceiveWindow` is the receive side of one stream or of the whole
connection.  The peer may send up to :attr:`ReceiveWindow.limit`: what the
application has *consumed* plus the current :attr:`~ReceiveWindow.window`.  The
limit moves in steps of at least a quarter of the window (:data:`STEP_FRACTION`,
quic-go's window update threshold; announcing it on every read would put a
MAX_STREAM_DATA frame into every packet).

Auto-tuning, as quic-go and Chromium do it: each step ends an *epoch*; if the
application consumed data faster than ``window / (GROW_RTTS * smoothed RTT)``
during the epoch, flow control (not the application, not the path) was what
slowed the sender down, so the window doubles, up to its ceiling.  A window only
grows at a step, and a step only happens when the application consumed a
quarter of a window: a reader that does not keep up never makes its window
grow, and the bytes buffered for it stay bounded by the window it has.

An epoch lasts a smoothed round trip at least, and its rate counts the bytes that
*arrived* in it as well as those read (the smaller): after a loss, the reader gets
everything that arrived behind the hole at once, and that burst must not look
like a path twice as fast (it grew windows to their 16 MiB ceiling on a 1 MB
bandwidth-delay-product path).

Quarter steps keep the window ahead of slow start, which doubles the congestion
window every round trip.  With half-window steps a window could double at most
about once per 1.25 round trips (a step every half window, and the sender held
back to half a window per round trip between steps): on a 1 MB
bandwidth-delay-product path the window fell behind the congestion window, the
sender became flow-control limited (so, by RFC 9002 section 7.8, its window
stopped growing while its queue drained), and slow start ended in a 3x overshoot
with hundreds of packets lost.  A sender held back by a quarter-step window gets
three quarters of it or more per round trip, three times the growth threshold.

The send side follows the path too: :func:`send_buffer_limit` lets a stream
hold about two congestion windows of unacknowledged data (as Linux sizes a TCP
socket's send buffer), between a floor and a ceiling.
"""

from __future__ import annotations

__all__ = ["GROW_RTTS", "STEP_FRACTION", "ReceiveWindow", "send_buffer_limit"]

#: the limit moves once the application consumed ``window // STEP_FRACTION`` since the
#: last step (quic-go announces at a quarter, too)
STEP_FRACTION = 4
#: the window doubles when a window's worth of data was consumed in less than this
#: many smoothed RTTs, i.e. while the reader takes more than ``window / (GROW_RTTS * RTT)``
#: per second.  A sender that the window holds back gets three quarters of a window or more
#: per round trip (each step announces a quarter more, used a round trip later), so the
#: threshold sits well below that rate.  With half-window steps such a sender got about half
#: a window per round trip, and at 2 RTTs the threshold sat on it (measured
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

    __slots__ = ("_epoch_at", "_epoch_offset", "_epoch_received", "ceiling", "consumed", "limit", "received", "window")

    def __init__(self, window: int, ceiling: int) -> None:
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self.window = window
        self.ceiling = max(ceiling, window)
        #: bytes the application consumed
        self.consumed = 0
        #: the highest offset received from the peer (as far as told; never below consumed)
        self.received = 0
        #: the highest offset the peer may send to (what to announce)
        self.limit = window
        self._epoch_at: float | None = None
        self._epoch_offset = 0
        self._epoch_received = 0

    def consume(self, nbytes: int, now: float, rtt: float, *, received: int = 0) -> bool:
        """The application consumed ``nbytes`` more; True if :attr:`limit` moved."""
        return self.consumed_to(self.consumed + nbytes, now, rtt, received=received)

    def consumed_to(self, consumed: int, now: float, rtt: float, *, received: int = 0) -> bool:
        """The application consumed ``consumed`` bytes in all, of ``received`` (the highest
        offset received so far); True if :attr:`limit` moved."""
        if self._epoch_at is None and consumed > self.consumed:
            # the first read starts the first epoch (as if a window update had just gone out)
            self._epoch_at = now
            self._epoch_offset = self.consumed
            self._epoch_received = self.received
        if consumed > self.consumed:
            self.consumed = consumed
        self.received = max(self.received, received, self.consumed)
        if not self.step_due(self.consumed):
            return False
        self._maybe_grow(now, rtt)
        self.limit = self.consumed + self.window
        return True

    def step_due(self, consumed: int) -> bool:
        """True if, with ``consumed`` bytes consumed, the limit is due to move."""
        return self.limit - consumed <= self.window - self.window // STEP_FRACTION

    def _maybe_grow(self, now: float, rtt: float) -> None:
        read = self.consumed - self._epoch_offset
        if read < self.window // STEP_FRACTION or self._epoch_at is None:
            return  # too little read since the last step to judge the rate
        if now - self._epoch_at < rtt:
            return  # judge a rate over a round trip at least: data arrives a flight per round trip
        # bytes that arrived in the epoch, not only bytes read: after a loss the reader gets
        # what arrived behind the hole all at once, and that burst is not the path's rate
        read = min(read, self.received - self._epoch_received)
        if rtt > 0 and self.window < self.ceiling and now - self._epoch_at < GROW_RTTS * rtt * read / self.window:
            self.window = min(2 * self.window, self.ceiling)
        self._epoch_at = now
        self._epoch_offset = self.consumed
        self._epoch_received = self.received

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
