"""One QUIC connection to an authenticated peer, driven sans-I/O on the endpoint's socket."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.packet import QuicErrorCode, QuicFrameType

from .. import aioquic_compat as hooks
from ..config import NetworkConfig
from ..errors import (
    AuthenticationFailed,
    ConnectionClosed,
    ConnectionFailed,
    ConnectionReset,
    ConnectionTimedOut,
    P2PError,
)
from ..errors import StreamReset as StreamResetError
from ..identity import NodeId
from ..net.base import Address
from ..net.timer import DeadlineTimer, timer_granularity
from ..paths.prober import PathInfo
from ..paths.route import Route, RouteOwner, RouteTarget
from .base import ConnectionHandler
from .flow import ReceiveWindow, send_buffer_limit

__all__ = [
    "REFUSED",
    "ConnectionCallbacks",
    "HandlerFactory",
    "PathEvent",
    "PeerConnection",
    "TransmitPass",
    "close_error",
]

log = logging.getLogger("asgi_p2p.endpoint")

# TLS alerts travel as QUIC CRYPTO_ERROR (0x100 + alert).
_CRYPTO_ERROR = 0x100
_AUTH_ALERTS = {42, 43, 46, 48, 49, 51, 116}  # bad/unsupported/unknown cert, unknown CA, access denied, ...
#: Application close code: the endpoint refused the connection (limits, shutdown).
REFUSED = 0x2
#: datagrams a connection sends before its path's datagram size is probed: short
#: exchanges (a few requests) never pay for size probes, bulk transfers do at once
_BULK_DATAGRAMS = 24
#: a pause in sending longer than this ends a burst (the bulk count starts again)
_BURST_GAP = 0.5
#: the acceptor of a connection sends keepalives only after this many keepalive
#: intervals without traffic, so that of an idle pair only the dialer pings
_ACCEPTOR_KEEPALIVE_FACTOR = 1.5
#: probe timeouts in a row, while sending datagrams above the base size, that mean a black hole
_BLACK_HOLE_PTOS = 2
#: seconds between probes at most while nothing is acknowledged (QUIC's probe timeout backoff
#: is capped there): a path that comes back from an outage is found within it
_MAX_PROBE_INTERVAL = 2.0
#: probe timeouts in a row after which a new packet from the peer (acknowledging nothing new)
#: ends the backoff: the peer is heard again, so the path is back (one PTO is routine loss)
_HEARD_PTOS = 2
#: while packets arrive through the relay on a direct route, a PING checks the direct
#: path at most this often (seconds)
_RELAY_PING_INTERVAL = 1.0
#: seconds the ACK of a lone received packet may wait for data to carry it (a request's
#: answer, the next request), instead of aioquic's 1 ms; below the 25 ms max_ack_delay
#: we announce, so the peer's loss detection never waits on it (see hooks.hold_lone_ack)
_LONE_ACK_HOLD = 0.01
# a deferred transmit (schedule_transmit) waits at most this long behind a busy loop: a burst of
# requests or responses handled one task at a time leaves in pieces as it is produced, not all
# after the last one (50 requests in flight at ~0.4 ms of CPU each held the first for ~20 ms)
_TX_DEFER_MAX = 0.002


def close_error(event: ConnectionTerminated, *, during_handshake: bool, by_peer: bool = True) -> P2PError:
    """The P2PError describing why a connection terminated: the peer's CONNECTION_CLOSE, or
    (``by_peer=False``) one that QUIC or a protocol layer sent on its own (not :meth:`PeerConnection.close`)."""
    reason = event.reason_phrase or "no reason given"
    if _CRYPTO_ERROR <= event.error_code < _CRYPTO_ERROR + 0x100 and (event.error_code - _CRYPTO_ERROR) in _AUTH_ALERTS:
        return AuthenticationFailed(f"authentication failed: {reason} (TLS alert {event.error_code - _CRYPTO_ERROR})")
    if during_handshake:
        return ConnectionFailed(f"handshake failed: {reason} (error code {event.error_code:#x})")
    return ConnectionClosed(
        f"connection closed {'by peer' if by_peer else 'locally'}: {reason} (error code {event.error_code:#x})",
        error_code=event.error_code,
        reason=event.reason_phrase,
    )


@dataclass(frozen=True)
class PathEvent:
    """A connection's path or datagram size changed (see :meth:`PeerConnection.path_events`)."""

    at: float  #: loop time
    path: PathInfo  #: the path now
    datagram_size: int  #: the UDP payload size QUIC builds now
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionCallbacks:
    """How a connection tells its owner (the endpoint) about itself, handed over at construction."""

    #: QUIC issued a connection id for this connection: route packets naming it here.
    cid_issued: Callable[[bytes, PeerConnection], None]
    #: QUIC retired a connection id.
    cid_retired: Callable[[bytes], None]
    #: The handshake completed (a client: its Finished is queued, it may send requests), or
    #: a resumed connection is made ready early for 0-RTT data (a client offering it, a server
    #: that accepted it): the owner returns the protocol handler for the negotiated ALPN, or
    #: raises to refuse the connection.
    ready: Callable[[PeerConnection], ConnectionHandler]
    #: A client's handshake is confirmed (HANDSHAKE_DONE arrived): the server accepted it; or
    #: a server's connection made ready early (0-RTT) completed its handshake.
    confirmed: Callable[[PeerConnection], None]
    #: A CONNECTION_CLOSE was sent or received: the connection takes nothing new from now on
    #: (the owner drops it from its pool); ``closed`` follows when QUIC's closing or
    #: draining period ends.
    closing: Callable[[PeerConnection], None]
    #: The connection is gone (closed, refused, timed out or aborted).
    closed: Callable[[PeerConnection], None]
    #: The peer's stateless reset token for the connection id we send to changed
    #: (old, new; None: none): a datagram ending with it resets the connection.
    reset_token: Callable[[PeerConnection, bytes | None, bytes | None], None]
    #: The owner's transmit pass, which the connection joins to transmit (see schedule_transmit).
    transmits: TransmitPass


_IDLE, _DUE, _NEXT = 0, 1, 2


def _nothing() -> None:
    pass


class TransmitPass:
    """The deferred transmits of one endpoint's connections, run in one callback per loop pass.

    A connection that asks for a transmit (:meth:`PeerConnection.schedule_transmit`) joins;
    one callback on the loop (not one per connection) then transmits the members, in the
    order they asked.  Each member's transmit still runs after the callbacks that were
    queued when it asked (the tasks its datagram woke, whose first step usually writes the
    answer): a member that asked before the run was queued is *due* in it; one that asked
    after (a later datagram of the same read batch, whose tasks are queued behind the run)
    or that asked to go behind newly queued callbacks (:meth:`behind`) is transmitted by the
    run after, which the run queues at its end, behind everything queued so far.  Under a
    steady load that is one run per loop iteration, each transmitting what the previous
    iteration's datagrams and tasks produced.  A member asking again while pending does
    nothing until it has waited :data:`_TX_DEFER_MAX` of loop time; then what it has ready
    leaves at once (it stays pending).  Closed members are skipped.

    With a socket that batches (:meth:`use_socket`), the socket holds what a run sends and
    sends it at the run's end in as few system calls as it can (``sendmmsg`` on Linux: the
    datagrams of many connections to many addresses together).
    """

    __slots__ = ("_due", "_hold", "_next", "_queued", "_release")

    def __init__(self) -> None:
        self._due: list[PeerConnection] = []  # transmitted by the queued run
        self._next: list[PeerConnection] = []  # transmitted by the run after it
        self._queued = False  # a run is queued on the loop (or running)
        self._hold: Callable[[], None] | None = None
        self._release: Callable[[], None] = _nothing

    def use_socket(self, sock: object) -> None:
        """Runs hold ``sock``'s sends and release them at their end, if it offers ``hold()`` and
        ``release()`` (:class:`~asgi_p2p.net.udp.UdpSocket` does; without them, nothing changes)."""
        hold = getattr(sock, "hold", None)
        release = getattr(sock, "release", None)
        if callable(hold) and callable(release):
            self._hold, self._release = hold, release
        else:
            self._hold, self._release = None, _nothing

    def ask(self, conn: PeerConnection) -> None:
        """``conn`` wants a transmit once the callbacks queued now have run."""
        if conn._tx_slot:
            now = conn.loop.time()
            if now - conn._tx_since >= _TX_DEFER_MAX:
                # the loop has been busy since it asked (a burst handled one task at a time):
                # what is ready leaves now rather than after the whole burst
                conn._tx_since = now
                if not conn.closed:
                    conn.transmit()
            return
        conn._tx_since = conn.loop.time()
        if self._queued:
            conn._tx_slot = _NEXT
            self._next.append(conn)
        else:
            conn._tx_slot = _DUE
            self._due.append(conn)
            self._queued = True
            conn.loop.call_soon(self._run)

    def behind(self, conn: PeerConnection) -> None:
        """A pending ``conn`` transmits after the callbacks queued now, not before them."""
        if conn._tx_slot == _DUE:
            conn._tx_slot = _NEXT
            self._next.append(conn)

    def _run(self) -> None:
        due, self._due = self._due, []
        hold = self._hold
        if hold is not None:
            hold()
        try:
            for conn in due:
                if conn._tx_slot != _DUE:
                    continue  # moved behind (it is in _next)
                conn._tx_slot = _IDLE
                if conn.closed:
                    continue
                try:
                    conn.transmit()
                except Exception:  # one connection's failure must not hold back the others' packets
                    log.exception("transmit of %r failed", conn)
        finally:
            try:
                self._release()
            except Exception:  # a socket error must not stop the runs to come
                log.exception("sending a transmit run's datagrams failed")
        later = self._next
        if not later:
            self._queued = False
            return
        # those that asked since this run was queued: their callbacks are queued before
        # the next run, which goes behind everything queued now
        self._next = []
        for conn in later:
            conn._tx_slot = _DUE
        self._due = later
        later[0].loop.call_soon(self._run)


class PeerConnection:
    """A QUIC connection with a peer whose node id was proven in the handshake.

    Protocols (raw messages, HTTP/3, relay) use :attr:`quic` directly for
    sans-I/O calls, then :meth:`transmit`; :meth:`send_stream_data` adds the
    backpressure aioquic lacks, and :meth:`consume` the read-paced receive
    credit.
    """

    def __init__(
        self,
        quic: QuicConnection,
        address: Address,
        *,
        is_client: bool,
        expected_node_id: NodeId | None,
        config: NetworkConfig,
        callbacks: ConnectionCallbacks,
        route: Callable[[RouteOwner], Route],
    ) -> None:
        self.quic = quic
        #: The peer's address as QUIC sees it: fixed for the connection's life, so that
        #: aioquic never sees a new address (no migration, no path validation).  A real
        #: address for a direct dial or accept; a virtual one when the peer came via the relay.
        self.address = address
        self._callbacks = callbacks
        self._transmits = callbacks.transmits
        self._path_queues: list[collections.deque[PathEvent]] = []
        # datagrams left before this connection counts as sending bulk data (which
        # starts the search for larger datagram sizes on its path)
        self._quiet_datagrams = _BULK_DATAGRAMS
        self._path_waiter: asyncio.Future[None] | None = None
        #: Called with each :class:`PathEvent` (path or datagram size change) of this connection.
        self.on_path_change: list[Callable[[PathEvent], None]] = []
        self.is_client = is_client
        self.config = config
        self.remote_node_id: NodeId | None = expected_node_id
        self.alpn: str | None = None
        self.handler: ConnectionHandler | None = None
        self.loop = asyncio.get_running_loop()
        self.established_at: float | None = None
        #: UDP payload bytes and datagrams this connection sent and received (any path)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.datagrams_sent = 0
        self.datagrams_received = 0
        # the client's stages: early (made ready before the handshake, to send 0-RTT data; only
        # with a session ticket, see become_ready_early) -> ready (the handshake completed here:
        # our Finished is queued, 1-RTT data may follow it) -> confirmed (HANDSHAKE_DONE: the
        # server accepted us).  _ready: the handler exists (early or not); _handshake_done: the
        # TLS handshake completed here; _confirmed: as said (a server: when its handshake completed)
        self._ready: asyncio.Future[None] = self.loop.create_future()
        self._handshake_done: asyncio.Future[None] = self.loop.create_future()
        self._confirmed: asyncio.Future[None] = self.loop.create_future()
        self._early_deadline: asyncio.TimerHandle | None = None
        # callers in wait_ready now (a dial's waiters: the dialer, and requests that joined it)
        self._ready_waiters = 0
        self._closed: asyncio.Future[None] = self.loop.create_future()
        self._close_error: P2PError | None = None
        # a CONNECTION_CLOSE was queued, sent or received (see _begin_close), and the handler
        # was told that the connection is lost (it is told once)
        self._close_begun = False
        self._handler_lost = False
        self._timer = DeadlineTimer(self.loop, self._next_timer, self._on_timer)
        # an ACK due within half the loop's timer resolution leaves with this transmit rather
        # than up to a whole resolution late (hooks.ack_due_within); 0 on the simulator
        self._ack_early = timer_granularity(self.loop) / 2
        self._keepalive: asyncio.TimerHandle | None = None
        # the highest authenticated 1-RTT packet number received, when it last grew, and
        # when the paths layer last heard that this connection's direct route works
        self._largest_received = -1
        self._heard_at = 0.0
        self._sent_at = 0.0
        self._relay_ping_at = -_RELAY_PING_INTERVAL
        self._pending_events: list[QuicEvent] = []
        # where the datagram being processed came from (None: the relay), and the direct
        # address of the datagram that completed the handshake (see handshake_address)
        self._receiving_from: Address | None = None
        self.handshake_address: Address | None = None
        # a padded handshake (see pad_handshake): the size of our Initial datagrams while it
        # holds, when it gives up waiting for an answer, the largest datagram received before
        # the handshake completed, and whether it fell back to the smallest size
        self._pad: int | None = None
        self._pad_deadline: float | None = None
        self._pad_started = 0.0
        self._handshake_rx_max = 0
        # an accepted connection's size as its route wants it, while its handshake datagrams are
        # held to the client's largest (see _hold_handshake_size); None: not held
        self._held_size: int | None = None
        #: True if a padded first flight went unanswered and the handshake went on at the base size
        self.pad_fallback = False
        #: the peer's stateless reset token for the connection id we send to (the endpoint indexes it)
        self.reset_token: bytes | None = None
        #: probe timeout backoffs ended early because the paths layer heard the peer (see path_answered)
        self.backoffs_ended = 0
        # set while QUIC's timer runs on a live connection: a termination then is our idle timeout
        self._idle_check = False
        # backpressure: futures waiting for a stream's send buffer to drain
        self._send_waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._stopped: dict[int, int] = {}  # stream id -> STOP_SENDING / reset error code
        # read-paced, auto-tuned receive credit (see flow.py): of each tracked stream,
        # and of the connection (all streams; bytes of untracked streams count as
        # consumed when they arrive)
        self._recv: dict[int, ReceiveWindow] = {}
        self._conn_credit = ReceiveWindow(config.connection_receive_window, config.max_connection_receive_window)
        self._conn_checked: tuple[int, int] = (-1, -1)  # (bytes received, reads) of the last check
        self._reads = 0  # consume() calls (a change of what tracked streams hold unread)
        hooks.install_receive_credit(quic, self._credit_limit, self._connection_limit)
        hooks.set_peer_stream_limit(quic, config.max_streams)
        #: Where this connection's datagrams go (the paths layer keeps it current).
        self.route: Route = route(self)

    @property
    def direct_address(self) -> Address | None:
        """The real address the connection was dialed to or accepted from (None via the relay)."""
        return self.route.direct_address

    @property
    def relay_peer(self) -> NodeId | None:
        """For a connection accepted through the relay: the node the relay says sent it."""
        return self.route.relay_peer

    # -- state -----------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._ready.done() and self._close_error is None and not self._closed.done()

    @property
    def closed(self) -> bool:
        """The connection is gone: ended, and any closing or draining period is over."""
        return self._closed.done()

    @property
    def closing(self) -> bool:
        """A CONNECTION_CLOSE was sent or received (QUIC's closing or draining period, RFC 9000
        10.2, may still run until :attr:`closed`), or the connection is gone: it is never used
        again, and what waited on it has failed with :attr:`close_error`."""
        return self._close_begun or self._closed.done()

    @property
    def close_error(self) -> P2PError | None:
        return self._close_error

    def now(self) -> float:
        return self.loop.time()

    @property
    def is_confirmed(self) -> bool:
        """The handshake is confirmed: a client holds HANDSHAKE_DONE (the server accepted it)."""
        return self._confirmed.done() and not self._confirmed.exception()

    async def wait_ready(self, timeout: float, *, confirmed: bool = True) -> None:
        """Wait for the handshake: until it is confirmed, or (``confirmed=False``) until the
        connection is ready: its handshake completed on our side, which for a client is as
        soon as its Finished is sent (it may send requests then; a refusal by the server
        arrives as the connection's close error), or a dialed connection was made ready
        :attr:`early` for 0-RTT data (then :meth:`wait_handshake` waits for the next stage).

        A handshake every waiter gave up on (their own deadlines cancelled the wait: httpx's
        connect timeout, say) is closed: nobody can use it, and a dial after it would join it,
        its Initials backing off (after 10 s unanswered they leave 6.4 s, then 12.8 s, apart).
        The next dial starts afresh, as a cancelled dial does in quic-go and httpcore.  So is
        one whose last waiter's ``timeout`` ran out; a waiter whose deadline passed while
        others still wait (requests that joined the dial later) only gets its
        :class:`ConnectionFailed`, and a connection that is already ready (a client waiting
        for a late HANDSHAKE_DONE on a connection other requests use) is never closed here."""
        fut = self._confirmed if confirmed else self._ready
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            return  # (a pooled connection, per request) nothing to wait for: no deadline to arm
        self._ready_waiters += 1
        try:
            async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancel
                await asyncio.shield(fut)
        except TimeoutError:
            if self._ready_waiters == 1 and not self._ready.done():
                self.close(REFUSED, "handshake timed out")
            raise ConnectionFailed(
                f"no QUIC handshake with {self._peer_label()} at {self.address[0]}:{self.address[1]} "
                f"within {timeout:g}s; is the node running and reachable?"
            ) from None
        except asyncio.CancelledError:
            if self._ready_waiters == 1 and not self._ready.done():
                self.close(REFUSED, "dial abandoned: every caller gave up waiting for the handshake")
            raise
        finally:
            self._ready_waiters -= 1

    @property
    def early(self) -> bool:
        """Ready, but the handshake is not complete: what is sent or received now is 0-RTT data."""
        return self._ready.done() and not self._handshake_done.done()

    @property
    def handshake_completed(self) -> bool:
        """The TLS handshake completed here (a client: its Finished is sent, not yet confirmed)."""
        done = self._handshake_done
        return done.done() and done.exception() is None

    async def wait_handshake(self) -> None:
        """Until the handshake completed (at once unless :attr:`early`); raises if the connection failed."""
        await asyncio.shield(self._handshake_done)

    def become_ready_early(self, alpn: str, timeout: float) -> None:
        """A dialed connection that offered 0-RTT data becomes ready now (its handler is made and
        may write safe requests at once); the handshake must complete within ``timeout`` seconds."""
        self.alpn = alpn
        self._become_ready()
        if not self.closed:
            self._early_deadline = self.loop.call_later(timeout, self._early_expired, timeout)

    def _early_expired(self, timeout: float) -> None:
        self._early_deadline = None
        if self._handshake_done.done() or self.closed:
            return
        self._close_error = ConnectionFailed(
            f"no QUIC handshake with {self._peer_label()} at {self.address[0]}:{self.address[1]} "
            f"within {timeout:g}s; is the node running and reachable?"
        )
        self.close(REFUSED, "handshake timed out")

    def _handshake_completed(self) -> None:
        if not self._handshake_done.done():
            self._handshake_done.set_result(None)
        held, self._held_size = self._held_size, None
        if held is not None and held != hooks.max_datagram_size(self.quic) and not self.closed:
            hooks.set_max_datagram_size(self.quic, held)  # what the route wants, now the handshake is done
            self._path_event("datagram size", logging.DEBUG)
        if self._early_deadline is not None:
            self._early_deadline.cancel()
            self._early_deadline = None

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def _node_label(self) -> str:
        """The peer's full node id (for new log lines), or "peer" before the handshake proved it."""
        return str(self.remote_node_id) if self.remote_node_id else "peer"

    def _peer_label(self) -> str:
        return str(self.remote_node_id) if self.remote_node_id else "peer"

    # -- padded handshake --------------------------------------------------

    def pad_handshake(self, size: int, answer_within: float) -> None:
        """Pad this dialed connection's handshake datagrams to ``size`` bytes (call before its first flight).

        If the peer answers and its own handshake flight arrives at least that large, the
        handshake proved that the path carries ``size``-byte datagrams both ways
        (:attr:`handshake_datagram_size`), as a size probe and its answer would.  If
        nothing arrives within ``answer_within`` seconds (a path that drops datagrams this
        large, or plain loss), the handshake goes on at once with datagrams of the base
        size (the ClientHello is resent now, not at QUIC's probe timeout) and proves no size.
        """
        if not self.is_client or self.datagrams_sent or size <= hooks.max_datagram_size(self.quic):
            return
        self._pad = size
        self._pad_started = self.loop.time()
        self._pad_deadline = self._pad_started + answer_within
        hooks.set_max_datagram_size(self.quic, size)

    @property
    def handshake_datagram_size(self) -> int | None:
        """The datagram size the handshake proved both ways on its path (None: none above the base).

        Set for a padded handshake (:meth:`pad_handshake`) that completed without falling
        back, whose peer's datagrams reached us at least as large.
        """
        pad = self._pad
        if pad is None or self.pad_fallback or not self.handshake_completed or self._handshake_rx_max < pad:
            return None
        return pad

    def _hold_handshake_size(self, wanted: int) -> None:
        """An accepted connection's handshake datagrams are no larger than the client's largest.

        A client that pads its Initial to N bytes gets our flight padded to N too (up to the
        size the route wants), so that its handshake proves N both ways; one whose Initial
        was 1200 bytes (the smallest) gets 1200-byte datagrams, which any path carries, and
        finds larger sizes after the handshake.  Sizes above 1200 are not known to pass
        before (RFC 9000 section 14).
        """
        cap = max(hooks.SMALLEST_DATAGRAM_SIZE, self._handshake_rx_max)
        self._held_size = wanted
        size = min(wanted, cap)
        if size != hooks.max_datagram_size(self.quic):
            hooks.set_max_datagram_size(self.quic, size, below_minimum=size < hooks.SMALLEST_DATAGRAM_SIZE)

    def _pad_unanswered(self, now: float) -> None:
        """The padded first flight was not answered in time: go on at the base size, now."""
        self._pad_deadline = None
        self.pad_fallback = True
        size = self._pad
        hooks.set_max_datagram_size(self.quic, self.config.max_datagram_size)
        hooks.resend_handshake_now(self.quic, now)
        log.info(
            "%s at %s:%d: no answer to our %s-byte Initial within %.0f ms; handshaking with %d-byte datagrams "
            "(the path may not carry %s-byte ones: its datagram size is searched after the handshake)",
            self._peer_label(),
            self.address[0],
            self.address[1],
            size,
            (now - self._pad_started) * 1000,
            self.config.max_datagram_size,
            size,
        )
        self.transmit()

    # -- I/O -------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address | None, *, then_transmit: bool = True) -> None:
        """A datagram for this connection from ``addr`` (None: through the relay).

        QUIC always sees :attr:`address`: the paths layer, not QUIC, decides which
        of the peer's paths are valid (disco probes), so packets from any of them count.
        The answer leaves with the transmit this schedules (see :meth:`schedule_transmit`);
        ``then_transmit=False``: the caller transmits (or schedules) itself, and no loop
        pass is spent on a transmit that would find nothing to send.  None is scheduled
        once the connection is closing or draining (QUIC sends nothing more then).
        """
        route = self.route
        if addr is not None and addr != route.direct and addr != route.direct_address and self._ready.done():
            # the peer sends from an address we do not send to (NAT rebinding, a new
            # interface): let the paths layer probe it now rather than after a timeout
            route.received_from(addr)
        now = self.loop.time()
        quic = self.quic
        self.bytes_received += len(data)
        self.datagrams_received += 1
        if not self._handshake_done.done() and len(data) > self._handshake_rx_max:
            self._handshake_rx_max = len(data)
            if not self.is_client:
                self._hold_handshake_size(hooks.max_datagram_size(quic))
        if self._pad_deadline is not None:
            self._pad_deadline = None  # answered: the padded flight got through
        self._receiving_from = addr
        ack_due = hooks.ack_deadline(quic)
        quic.receive_datagram(data, self.address, now)
        hooks.hold_lone_ack(quic, ack_due, now, _LONE_ACK_HOLD)
        received = hooks.largest_received_1rtt(quic)
        if received > self._largest_received:
            # an authenticated, new packet: the peer is alive (keepalive waits), and on a
            # direct route it tells the paths layer the path works (at most once a second)
            self._largest_received = received
            self._heard_at = now
            if addr is not None:
                route.authenticated(addr, now)
            elif addr is None and route.direct is not None and now - self._relay_ping_at >= _RELAY_PING_INTERVAL:
                # the peer sends through the relay while we send direct: perhaps it saw
                # our direct path die.  A receiver that only acknowledges never has a
                # probe timeout of its own, so its acknowledgements would go on into the
                # dead path; a PING makes our loss recovery check the path (no answer:
                # probe timeouts, and the paths layer falls back to the relay)
                self._relay_ping_at = now
                quic.send_ping(0)
            on_route = addr == route.direct if addr is not None else route.direct is None
            if on_route and hooks.pto_count(quic) >= _HEARD_PTOS and self._ready.done():
                # the peer sends again on the path we send on but acknowledged nothing new:
                # our packets were lost while the path was down (a partition, an outage);
                # the path is back, so probe now rather than at the end of the backoff (see
                # path_answered).  A packet through the relay while we send direct says
                # nothing of the direct path: its probe timeouts go on (the PING above)
                self._end_backoff("heard from the peer")
        token = hooks.peer_reset_token(quic)
        if token != self.reset_token:
            old, self.reset_token = self.reset_token, token
            self._callbacks.reset_token(self, old, token)
        self._process_events()
        self._receiving_from = None
        if not then_transmit:
            return
        if hooks.is_closing(quic):
            # closing or draining (the peer's CONNECTION_CLOSE came): QUIC sends nothing any
            # more, so no transmit pass (a loop callback that would find nothing to send); the
            # timer follows the end of the period, as a transmit would make it
            if not self._closed.done():
                self._timer.update(exact=self._close_begun)
            return
        self.schedule_transmit()

    def stateless_reset(self) -> None:
        """The peer sent a genuine stateless reset: it no longer has this connection.

        The connection ends at once with :class:`~asgi_p2p.errors.ConnectionReset`
        and sends nothing more (RFC 9000 10.3.1).  Called by the endpoint, which
        checked the token and where the datagram came from.
        """
        if self.closed:
            return
        node = self.remote_node_id
        log.info("connection to %s reset by peer (stateless reset)", node if node is not None else self.address)
        self._finish(
            ConnectionReset(
                f"connection to {node if node is not None else 'peer'} reset by peer: it restarted or lost the "
                "connection's state (stateless reset received); a new connection is needed",
                reason="stateless reset",
            )
        )

    # this connection's place in its endpoint's transmit pass (see TransmitPass): _IDLE, _DUE
    # (transmitted by the queued run) or _NEXT (by the run after it)
    _tx_slot = 0
    _tx_since = 0.0  # when the deferred transmit was asked for (or last sent early)

    def schedule_transmit(self) -> None:
        """Call :meth:`transmit` once the callbacks already queued on the loop have run.

        What one loop iteration produces then leaves in one pass over the QUIC state: a
        request and the response its handler writes in its first step (which runs before
        this) cost one transmit, not two, and a burst of received datagrams is answered
        once instead of once per datagram.  The transmits of all the endpoint's connections
        that asked run in one callback (see :class:`TransmitPass`), each still after the
        callbacks queued when it asked.  While the loop stays busy (a burst of requests or
        responses handled one task at a time), what is ready leaves every 2 ms of loop time
        rather than after the whole burst: a request's wait behind others is bounded, and on
        the simulator, whose time stands still within a loop pass, nothing changes.
        """
        self._transmits.ask(self)

    def transmit_behind_queued(self) -> None:
        """A transmit already scheduled runs after the callbacks queued since, not before them.

        For a task just created (a request's application): what it writes in its first step
        then leaves in the same pass as what was pending (a connection's first data, ACKs),
        instead of one datagram after it.  Without a scheduled transmit, nothing to do.
        """
        self._transmits.behind(self)

    def transmit(self) -> None:
        """Send what QUIC has to send and re-arm its timer (nothing once the connection is gone)."""
        if self._closed.done():
            return
        now = self.loop.time()
        if self._ack_early:
            hooks.ack_due_within(self.quic, now, self._ack_early)
        datagrams = self.quic.datagrams_to_send(now)
        hooks.note_transmit(self.quic, now)  # an application-limited pass does not grow the window
        if datagrams:
            count = len(datagrams)
            self.datagrams_sent += count
            self.bytes_sent += len(datagrams[0][0]) if count == 1 else sum(len(d) for d, _ in datagrams)
            if now - self._sent_at > _BURST_GAP and self._quiet_datagrams > 0:
                self._quiet_datagrams = _BULK_DATAGRAMS  # a new burst: messages now and then are not bulk
            self._sent_at = now
            if self._quiet_datagrams > 0:
                self._quiet_datagrams -= count
                if self._quiet_datagrams <= 0:
                    self.route.bulk_started()
            self.route.send(datagrams)
        # once closing, the deadline is the end of the closing or draining period: the timer
        # follows it exactly (a loss timer armed before would wake the loop for nothing)
        self._timer.update(exact=self._close_begun)

    def _next_timer(self) -> float | None:
        """QUIC's timer, or sooner: the next probe of a long probe timeout backoff."""
        at = self.quic.get_timer()
        capped = hooks.capped_probe_time(self.quic, _MAX_PROBE_INTERVAL)
        if capped is not None and (at is None or capped < at):
            at = capped
        pad = self._pad_deadline
        if pad is not None and (at is None or pad < at):
            return pad
        return at

    def _on_timer(self) -> None:
        """QUIC's timer is due (see :class:`DeadlineTimer`)."""
        quic = self.quic
        now = self.loop.time()
        if self._pad_deadline is not None and now >= self._pad_deadline:
            self._pad_unanswered(now)
            self._timer.update()
            return
        capped = hooks.capped_probe_time(quic, _MAX_PROBE_INTERVAL)
        if capped is not None and now >= capped:
            # the backoff reached _MAX_PROBE_INTERVAL: probe now, so that a path back from
            # an outage (a partition that healed) is found within that, not 2**n periods
            self._end_backoff("probe interval cap")
            self._timer.update()
            return
        # handle_timer ends a connection that is not closing only when its idle timer expired
        self._idle_check = not hooks.is_closing(quic)
        quic.handle_timer(now)
        try:
            self._process_events()
        finally:
            self._idle_check = False
        if hooks.pto_count(quic) >= _BLACK_HOLE_PTOS:
            # nothing acknowledged across repeated probe timeouts: the path may be dead
            # (the paths layer pings it now and falls back if it does not answer), or
            # drop large datagrams (a black hole, RFC 8899 section 4.4: the probes about
            # to go out are built small)
            self.route.timeouts()
        self.transmit()

    # -- paths -------------------------------------------------------------

    @property
    def is_relay_connection(self) -> bool:
        """True for a connection to a relay (its packets never go through a relay).

        The relay protocols register as such (``Endpoint.add_protocol(..., relay=True)``).
        """
        return self.route.is_relay

    @property
    def path(self) -> PathInfo:
        """Where this connection's packets go now: ``direct`` (address, RTT) or ``relay``."""
        return self.route.path

    def path_events(self, maxlen: int = 64) -> AsyncIterator[PathEvent]:
        """Path and datagram size changes from now on, until the connection closes.

        Bounded: if the consumer falls more than ``maxlen`` events behind, the oldest are dropped.
        """
        queue: collections.deque[PathEvent] = collections.deque(maxlen=maxlen)
        self._path_queues.append(queue)
        return self._iter_path_events(queue)

    async def _iter_path_events(self, queue: collections.deque[PathEvent]) -> AsyncIterator[PathEvent]:
        try:
            while True:
                while queue:
                    yield queue.popleft()
                if self.closed:
                    return
                if self._path_waiter is None or self._path_waiter.done():
                    self._path_waiter = self.loop.create_future()
                await asyncio.wait([self._path_waiter, self._closed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if queue in self._path_queues:
                self._path_queues.remove(queue)

    def _path_event(self, reason: str, level: int = logging.INFO) -> None:
        event = PathEvent(self.loop.time(), self.path, self.datagram_size, reason)
        log.log(level, "%s: %s, datagram size %d (%s)", self._peer_label(), event.path, event.datagram_size, reason)
        for queue in self._path_queues:
            queue.append(event)
        if self._path_waiter is not None and not self._path_waiter.done():
            self._path_waiter.set_result(None)
        for callback in list(self.on_path_change):
            try:
                callback(event)
            except Exception:
                log.exception("on_path_change callback failed")

    def route_changed(self, old: RouteTarget, reason: str) -> None:
        """The paths layer moved this connection's packets off ``old`` (:class:`RouteOwner`)."""
        if self.closed:
            return
        self._path_event(reason)
        if old[0] is not None and self.route.direct != old[0] and self._ready.done():
            # packets in flight on the old path are probably lost: a PING makes the peer
            # acknowledge on the new path now, so loss recovery does not wait out its backoff
            # (a PING the congestion window holds back would wait: then a probe goes instead)
            if not hooks.probe_now(self.quic, self.loop.time()):
                self.quic.send_ping(0)
            self.transmit()

    def path_answered(self) -> None:
        """The paths layer just heard the peer on this connection's route (:class:`RouteOwner`).

        A signed disco PONG on the direct path, or the relay connected again: the path
        works now.  If QUIC is backing off its probe timeouts (the path was dead: a
        partition, an outage), it probes now instead of waiting out the backoff, which
        after 20 s of silence is about 10 s more, while the requests written meanwhile
        wait behind a congestion window full of lost packets.
        """
        if self.closed or not self._ready.done():
            return
        self._end_backoff("path answered")

    def _end_backoff(self, why: str) -> None:
        if hooks.probe_now(self.quic, self.loop.time()):
            self.backoffs_ended += 1
            log.debug("%s: %s during probe backoff; probing now", self._peer_label(), why)
            self.schedule_transmit()

    @property
    def datagram_size(self) -> int:
        """The UDP payload size this connection builds now (grows as its path is probed)."""
        return hooks.max_datagram_size(self.quic)

    def set_datagram_size(self, size: int, *, below_base: bool = False) -> None:
        """Build datagrams of ``size`` bytes from now on.

        Never below ``config.max_datagram_size`` unless ``below_base`` (after the
        handshake, for a relay path that carries less: only Initial datagrams must
        be 1200 bytes).
        """
        size = max(size, self.config.max_datagram_size if not below_base else hooks.SMALLEST_1RTT_DATAGRAM_SIZE)
        if self._pad is not None and not self.pad_fallback and not self._handshake_done.done():
            size = max(size, self._pad)  # a padded handshake keeps its size until it completes
        if self._held_size is not None:
            if self._held_size != size:
                self._hold_handshake_size(size)
                self._path_event("datagram size", logging.DEBUG)
            return
        if self.closed or size == hooks.max_datagram_size(self.quic):
            return
        hooks.set_max_datagram_size(self.quic, size, below_minimum=size < hooks.SMALLEST_DATAGRAM_SIZE)
        self._path_event("datagram size", logging.DEBUG)

    def _on_keepalive(self) -> None:
        """PING only after ``keepalive_interval`` without traffic either way.

        A PING is just an ack-eliciting packet.  An authenticated packet from the peer
        means both directions worked lately (the peer sent something we acknowledge, or
        acknowledged something we sent); a packet we sent is either ack-eliciting itself
        (its ACK, or loss recovery, does what a PING would) or an ACK of something we just
        heard.  So a connection that carries traffic sends no keepalives.  Of an idle
        pair only the dialer pings: the acceptor waits ``_ACCEPTOR_KEEPALIVE_FACTOR``
        intervals, and hears the dialer's PING first (with equal intervals both sides
        would ping: each one's timer starts when it heard the other's last packet).
        """
        self._keepalive = None
        if self.closed:
            return
        interval = self.config.keepalive_interval
        if not self.is_client:
            interval *= _ACCEPTOR_KEEPALIVE_FACTOR
        due = max(self._heard_at, self._sent_at) + interval
        now = self.loop.time()
        if now < due:
            self._keepalive = self.loop.call_at(due, self._on_keepalive)
            return
        self.quic.send_ping(0)
        self.transmit()
        self._schedule_keepalive()

    def _schedule_keepalive(self) -> None:
        interval = self.config.keepalive_interval
        if interval > 0 and not self.closed:
            self._keepalive = self.loop.call_later(interval, self._on_keepalive)

    # -- events ----------------------------------------------------------

    def _process_events(self) -> None:
        quic = self.quic
        while (event := quic.next_event()) is not None:
            try:
                self._handle_event(event)
            except Exception:
                log.exception("%s: error handling %s; closing connection", self._peer_label(), type(event).__name__)
                self.close(0x1, "internal error")
        if self.is_client:
            if not self._confirmed.done() and self._handshake_done.done() and self._ready.done():
                if hooks.handshake_confirmed(quic):
                    self._become_confirmed()
        elif (
            not self._ready.done()
            and self.remote_node_id is not None
            and quic.tls.early_data_accepted
            and quic.tls.alpn_negotiated
            and not self.closed
        ):
            # resumed with 0-RTT data accepted: the ticket named the client; serve its early
            # data now (in 0.5-RTT) instead of one round trip later
            self.alpn = quic.tls.alpn_negotiated
            self._become_ready()
        if self._send_waiters:
            self._wake_senders()
        if not self._close_begun and hooks.close_started(quic) is not None:
            # the peer's CONNECTION_CLOSE arrived, or aioquic or the HTTP/3 layer closed it
            self._begin_close()

    def _handle_event(self, event: QuicEvent) -> None:
        if type(event) is StreamDataReceived:  # most events: none of the checks below applies
            handler = self.handler
            if handler is None:
                self._pending_events.append(event)
                return
            if self._handler_lost:  # told the connection is lost: nothing is delivered any more
                return
            handler.quic_event_received(event)
            self._stream_data_handled(event)
            return
        if isinstance(event, HandshakeCompleted):
            self.alpn = event.alpn_protocol
            if self.is_client:
                # our Finished is queued: 1-RTT requests may follow it at once (RFC 9001 4.1.1);
                # a connection made ready early (0-RTT) leaves its early stage here, whether or
                # not the server took its early data (aioquic resends refused 0-RTT stream data
                # as 1-RTT); is_confirmed / wait_ready() tell when the server accepted us
                self._handshake_completed()
                if not self._ready.done():
                    self._become_ready()
            else:
                if not event.session_resumed:
                    key = hooks.peer_public_key(self.quic)
                    assert key is not None  # the identity hook refused the handshake otherwise
                    self.remote_node_id = NodeId(key)
                assert self.remote_node_id is not None  # resumed: the ticket named the client
                # before the handler is made: what it handles from now on is not early data
                self._handshake_completed()
                if not self._ready.done():
                    self._become_ready()
                elif not self.closed:
                    # ready early (0-RTT): the client's Finished came, from the address the
                    # handshake's flights went to; the endpoint joins the peer's paths now
                    self._note_handshake_address()
                    self._server_confirmed()
                    self._callbacks.confirmed(self)
            return
        if isinstance(event, ConnectionIdIssued):
            self._callbacks.cid_issued(event.connection_id, self)
            return
        if isinstance(event, ConnectionIdRetired):
            self._callbacks.cid_retired(event.connection_id)
            return
        if isinstance(event, ConnectionTerminated):
            self._terminated(event)
            return
        if isinstance(event, StopSendingReceived):
            self._stopped.setdefault(event.stream_id, event.error_code)
            self._wake_senders()
        elif isinstance(event, StreamReset):
            self._drop_credit(event.stream_id)
        if self.handler is not None:
            if self._handler_lost:  # (as above)
                return
            self.handler.quic_event_received(event)
            if isinstance(event, StreamDataReceived):
                self._stream_data_handled(event)
        else:
            self._pending_events.append(event)

    def _stream_data_handled(self, event: StreamDataReceived) -> None:
        credit = self._recv.get(event.stream_id)
        if credit is not None:
            # the stream's highest offset now; aioquic may discard the stream once
            # all of it arrived, and its unread bytes must still count
            offset = hooks.received_offset(self.quic, event.stream_id)
            if offset is not None and offset > credit.received:
                credit.received = offset

    def _note_handshake_address(self) -> None:
        from_ = self._receiving_from
        if from_ is not None and from_ == self.route.direct:
            # the datagram that completed (server) or confirmed (client) the handshake is
            # authenticated (it decrypted with keys of the peer TLS proved) and came from
            # where we send: that address carried the handshake both ways
            self.handshake_address = from_

    def _become_ready(self) -> None:
        """Make the handler: the handshake completed here (a client's Finished is queued), or
        0-RTT data may be sent (a client, see become_ready_early) or was accepted (a server)."""
        if not self.is_client:
            self.established_at = self.loop.time()
        if self._handshake_done.done():
            # (not at an early start: a 0-RTT datagram does not show that its source address
            # receives what we send, nor, replayed, that it is the client's)
            self._note_handshake_address()
        try:
            self.handler = self._callbacks.ready(self)
        except Exception as exc:
            log.warning("%s: refused: %s", self._peer_label(), exc)
            self.close(REFUSED, str(exc))
            return
        if not self._ready.done():
            self._ready.set_result(None)
        if not self.is_client and self._handshake_done.done():
            self._server_confirmed()
        pending, self._pending_events = self._pending_events, []
        for ev in pending:
            self.handler.quic_event_received(ev)

    def _server_confirmed(self) -> None:
        """An accepted connection's handshake completed (for a server, that confirms it)."""
        if not self._confirmed.done():
            self._confirmed.set_result(None)
            self._schedule_keepalive()

    def _become_confirmed(self) -> None:
        """A client's handshake is confirmed (HANDSHAKE_DONE): the server accepted us."""
        self.established_at = self.loop.time()
        self._note_handshake_address()
        self._callbacks.confirmed(self)
        if self.closed:
            return
        self._confirmed.set_result(None)
        self._schedule_keepalive()

    def _begin_close(self) -> None:
        """A CONNECTION_CLOSE was queued, sent or received: the connection is done for, now.

        As in quic-go and httpcore, it is never handed out again (the ``closing`` callback:
        the endpoint drops it from its pool, so the next dial makes a new connection), and
        whatever waits on it fails at once with what happened (:attr:`close_error`: closed by
        the peer with its reason, or by us): the handler is told (its requests fail, or are
        sent again on a new connection where that is safe), and so are writers and callers
        waiting for the handshake.  QUIC's closing or draining period (RFC 9000 10.2: three
        probe timeouts of answering packets with CONNECTION_CLOSE, or of silence) still runs;
        the connection ends (:attr:`closed`, the ``closed`` callback) when it is over.  A
        refusal by the peer before our handshake is confirmed ends the connection at once
        (nothing was established: the dial fails with the peer's reason).
        """
        if self._close_begun or self._closed.done():
            return
        quic = self.quic
        by_peer = hooks.peer_close(quic)
        if by_peer is not None and not self._confirmed.done():
            # refused during the handshake (an allow-list, a limit): fail now with the peer's
            # reason, not after the draining period; a request sent with our Finished fails too
            self._terminated(by_peer)
            return
        handshaking = not self._confirmed.done()
        self._close_begun = True
        err = self._close_error
        if err is None:
            # else: a close of our own that QUIC or a protocol layer queued (the peer violated
            # QUIC or HTTP/3, or failed our identity check in the handshake)
            event = by_peer or hooks.close_started(quic)
            assert event is not None  # (called when a close started)
            err = close_error(event, during_handshake=handshaking, by_peer=by_peer is not None)
            self._close_error = err
        log.debug("%s: closing: %s", self._peer_label(), err)
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._early_deadline is not None:
            self._early_deadline.cancel()
            self._early_deadline = None
        self._fail_stages(err)
        self._wake_senders()
        self._callbacks.closing(self)
        self._lose_handler(err)

    def _fail_stages(self, err: P2PError) -> None:
        for fut in (self._ready, self._handshake_done, self._confirmed):
            if not fut.done():
                fut.set_exception(err)
                fut.exception()  # mark retrieved; waiters get it via wait_ready / wait_handshake

    def _lose_handler(self, err: P2PError) -> None:
        """Tell the handler (once) that the connection is lost."""
        handler = self.handler
        if handler is None or self._handler_lost:
            return
        self._handler_lost = True
        try:
            handler.connection_lost(err)
        except Exception:
            log.exception("connection_lost handler failed")

    def _terminated(self, event: ConnectionTerminated) -> None:
        if self._closed.done():
            return
        handshaking = not self._confirmed.done()
        err = self._close_error
        if err is None and self._idle_check:
            err = self._idle_timeout_error(handshaking)
        self._finish(err or close_error(event, during_handshake=handshaking))

    def _idle_timeout_error(self, handshaking: bool) -> P2PError:
        """What to tell the application when our idle timer ended the connection."""
        timeout = hooks.idle_timeout(self.quic)
        node = self.remote_node_id
        peer = f"node {node}" if node is not None else "the peer"
        if handshaking:
            return ConnectionFailed(
                f"no answer from {peer} at {self.address[0]}:{self.address[1]} within {timeout:g}s "
                "(handshake timed out); is the node running and reachable?"
            )
        return ConnectionTimedOut(
            f"connection to {peer} timed out: nothing heard from it for {timeout:g}s (local idle timeout); "
            "it may be down or unreachable",
            reason="idle timeout",
        )

    def _finish(self, err: P2PError) -> None:
        if self._closed.done():
            return
        self._close_error = err
        self._timer.cancel()
        if self._keepalive is not None:
            self._keepalive.cancel()
        self._keepalive = None
        self._fail_stages(err)
        if self._early_deadline is not None:
            self._early_deadline.cancel()
            self._early_deadline = None
        self._closed.set_result(None)
        self._wake_senders()
        self.route.detach()
        self._callbacks.closed(self)
        self._lose_handler(err)
        log.debug("%s: closed: %s", self._peer_label(), err)

    def close(self, error_code: int = 0, reason: str = "") -> None:
        """Close now (pending stream data is dropped): CONNECTION_CLOSE to the peer, and the
        connection is :attr:`closing` at once (what waits on it fails with "closed locally"
        and ``reason``); it is :attr:`closed` when QUIC's closing period ends."""
        if self.closed or hooks.is_closing(self.quic):
            return
        if self._close_error is None:
            self._close_error = ConnectionClosed(
                f"connection closed locally: {reason or 'closed'}", error_code=error_code, reason=reason
            )
        if self._ready.done():
            self.quic.close(error_code=error_code, reason_phrase=reason)
        else:
            # Before the handshake an application close loses its reason (RFC 9000 10.2.3),
            # so refuse with a transport CONNECTION_REFUSED that carries it.
            self.quic.close(
                error_code=QuicErrorCode.CONNECTION_REFUSED, frame_type=QuicFrameType.PADDING, reason_phrase=reason
            )
        self._begin_close()
        self.transmit()

    def abort(self, err: P2PError) -> None:
        """Forget the connection at once without telling the peer (endpoint shutdown)."""
        self._finish(err)

    # -- streams -------------------------------------------------------

    def _credit_limit(self, stream_id: int) -> int | None:
        credit = self._recv.get(stream_id)
        return None if credit is None else credit.limit

    def track_stream(self, stream_id: int) -> None:
        """Pace this stream's receive credit by :meth:`consume` calls."""
        if stream_id not in self._recv:
            cfg = self.config
            self._recv[stream_id] = ReceiveWindow(cfg.stream_receive_window, cfg.max_stream_receive_window)

    def consume(self, stream_id: int, nbytes: int) -> None:
        """The application read ``nbytes`` of a tracked stream: let the peer send more.

        The announced credit moves in steps of at least a quarter of the window: moving it
        on every read would put a MAX_STREAM_DATA frame (ack-eliciting) into every
        packet we send, doubling the packets both peers build and process.  At each
        step the window may grow (auto-tuning, see :mod:`asgi_p2p.endpoint.flow`).
        """
        credit = self._recv.get(stream_id)
        if credit is None or nbytes <= 0:
            return
        self._reads += 1
        now = self.loop.time()
        rtt = hooks.smoothed_rtt(self.quic)
        window = credit.window
        received = max(credit.received, hooks.received_offset(self.quic, stream_id) or 0)
        moved = credit.consume(nbytes, now, rtt, received=received)
        if credit.window > window:
            # a stream window never outgrows the connection's (quic-go and Chromium keep 1.5x)
            self._conn_credit.ensure_window(credit.window * 3 // 2)
            log.debug(
                "%s: stream %d receive window %d -> %d bytes", self._node_label(), stream_id, window, credit.window
            )
        if moved or self._connection_limit(hooks.data_received(self.quic)) > hooks.max_data_sent(self.quic):
            self.transmit()  # announce the new credit now

    def _connection_limit(self, received: int) -> int:
        """The connection's credit (MAX_DATA): bytes consumed on all streams + the window.

        Consumed = bytes received on all streams minus what tracked streams hold
        unread (received up to their highest offset, not yet consumed).
        """
        credit = self._conn_credit
        if not credit.step_due(received):
            return credit.limit  # even if nothing is unread, no step is due
        key = (received, self._reads)
        if key == self._conn_checked:
            return credit.limit
        self._conn_checked = key
        unread = 0
        quic = self.quic
        for stream_id, st in self._recv.items():
            offset = hooks.received_offset(quic, stream_id)
            unread += max(st.received, offset or 0) - st.consumed
        window = credit.window
        credit.consumed_to(received - unread, self.loop.time(), hooks.smoothed_rtt(quic), received=received)
        if credit.window > window:
            log.debug("%s: connection receive window %d -> %d bytes", self._node_label(), window, credit.window)
        return credit.limit

    def _drop_credit(self, stream_id: int) -> None:
        if self._recv.pop(stream_id, None) is not None:
            self._reads += 1  # what it held unread counts as consumed now

    def forget_stream(self, stream_id: int) -> None:
        self._drop_credit(stream_id)
        self._stopped.pop(stream_id, None)

    @property
    def receive_windows(self) -> tuple[int, dict[int, int]]:
        """The connection's receive window and each tracked stream's, in bytes (for stats and tests)."""
        return self._conn_credit.window, {sid: st.window for sid, st in self._recv.items()}

    @property
    def buffered_unread(self) -> int:
        """Bytes received on tracked streams that the application has not consumed yet."""
        quic = self.quic
        return sum(
            max(st.received, hooks.received_offset(quic, sid) or 0) - st.consumed for sid, st in self._recv.items()
        )

    def send_buffer_limit(self, stream_id: int) -> int:
        """Unacknowledged bytes a stream may hold before writers wait.

        Follows the path: about two congestion windows, as far as the peer's credit
        allows, between ``stream_send_buffer`` and ``max_stream_send_buffer``
        (see :func:`asgi_p2p.endpoint.flow.send_buffer_limit`).
        """
        cfg = self.config
        quic = self.quic
        return send_buffer_limit(
            hooks.congestion_window(quic),
            hooks.send_credit(quic, stream_id),
            cfg.stream_send_buffer,
            cfg.max_stream_send_buffer,
        )

    def _check_writable(self, stream_id: int) -> None:
        if self._close_error is not None or self.closed:
            raise self._close_error or ConnectionClosed()
        code = self._stopped.get(stream_id)
        if code is not None:
            raise StreamResetError(stream_id, code)

    async def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Write to a stream, waiting while more than :meth:`send_buffer_limit` bytes are unacknowledged.

        Raises :class:`ConnectionClosed` if the connection goes away and
        :class:`~asgi_p2p.errors.StreamReset` if the peer stops the stream.
        """
        view = memoryview(data)
        while True:
            self._check_writable(stream_id)
            room = self.send_buffer_limit(stream_id) - hooks.unacked_bytes(self.quic, stream_id)
            if room > 0 or not view:
                chunk = view[:room] if room > 0 else view[:0]
                view = view[len(chunk) :]
                last = not view
                if chunk or (last and end_stream):
                    self.quic.send_stream_data(stream_id, bytes(chunk), end_stream and last)
                    # leaves with whatever else this loop pass writes (an answer written
                    # right after a message arrived shares the receive path's transmit),
                    # carrying the ACK that is pending then
                    hooks.ack_with_next_packet(self.quic, self.loop.time())
                    self.schedule_transmit()
                if last:
                    return
            await self._wait_writable(stream_id)

    async def drain(self, stream_id: int) -> None:
        """Wait until everything written to the stream is acknowledged."""
        while hooks.unacked_bytes(self.quic, stream_id) > 0:
            self._check_writable(stream_id)
            await self._wait_writable(stream_id)

    async def _wait_writable(self, stream_id: int) -> None:
        fut: asyncio.Future[None] = self.loop.create_future()
        self._send_waiters.setdefault(stream_id, []).append(fut)
        try:
            await fut
        finally:
            waiters = self._send_waiters.get(stream_id)
            if waiters is not None:
                if fut in waiters:
                    waiters.remove(fut)
                if not waiters:
                    del self._send_waiters[stream_id]

    def _wake_senders(self) -> None:
        dead = self.closed or self._close_error is not None
        for stream_id, waiters in list(self._send_waiters.items()):
            if (
                dead
                or stream_id in self._stopped
                or hooks.unacked_bytes(self.quic, stream_id) < self.send_buffer_limit(stream_id)
            ):
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(None)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """Abort sending on a stream (RESET_STREAM) if it is still open."""
        stream = hooks.get_stream(self.quic, stream_id)
        if stream is None or stream.sender.is_finished or stream.sender.reset_pending:
            return
        try:
            self.quic.reset_stream(stream_id, error_code)
        except Exception:  # stream already gone
            return
        self.transmit()

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        """Ask the peer to stop sending on a stream (STOP_SENDING)."""
        stream = hooks.get_stream(self.quic, stream_id)
        if stream is None or stream.receiver.is_finished:
            return
        try:
            self.quic.stop_stream(stream_id, error_code)
        except Exception:
            return
        self.transmit()

    @property
    def smoothed_rtt(self) -> float:
        return hooks.smoothed_rtt(self.quic)

    def __repr__(self) -> str:
        if self.is_connected:
            state = "open"
        else:
            state = "closed" if self.closed else "closing" if self.closing else "handshaking"
        return f"<PeerConnection {self._peer_label()} {self.alpn} {state}>"


#: Makes the handler of a protocol for each connection negotiated with its ALPN
#: (see :meth:`asgi_p2p.endpoint.Endpoint.add_protocol`).
HandlerFactory = Callable[[PeerConnection], ConnectionHandler]
