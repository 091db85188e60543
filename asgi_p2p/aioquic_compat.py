"""The aioquic compatibility layer: every use of aioquic's private API, in one place.

aioquic is pinned exactly (see pyproject.toml) because of this module.  Each
function here is covered by ``tests/test_aioquic_compat.py``; when upgrading
aioquic, run those tests first.

Hooks:

* :func:`install_identity_hooks` - mutual authentication inside the TLS
  handshake: the server requests a client certificate (private flag
  ``tls.Context._request_client_certificate``), refuses an empty one, and both
  sides check the peer's Ed25519 key (``tls.Context._peer_certificate``) right
  after CertificateVerify proved possession of it, aborting the handshake with
  a TLS alert before any application data is exchanged.
* :func:`handshake_confirmed` - ``QuicConnection._handshake_confirmed``: the
  client knows the server accepted it (HANDSHAKE_DONE received).
* :func:`unacked_bytes` - bytes held in a stream's send buffer
  (``QuicStreamSender._buffer``), for send-side backpressure.
* :func:`install_receive_credit` - replaces
  ``QuicConnection._write_stream_limits`` and ``._write_connection_limits`` so
  that a stream's and the connection's flow-control credit (MAX_STREAM_DATA,
  MAX_DATA) grow as the application *reads* (aioquic doubles them as data
  *arrives*, without bound).
* :func:`received_offset`, :func:`data_received`, :func:`max_data_sent` - a
  stream's highest received offset (``QuicStream.receiver.highest_offset``), the
  connection's received bytes (``QuicConnection._local_max_data.used``) and the
  MAX_DATA announced (``._local_max_data.sent``).
* :func:`congestion_window` - ``QuicConnection._loss._cc.congestion_window``.
* :func:`congestion_control_algorithm` and :func:`note_transmit` - aioquic's Reno
  and CUBIC, except that the window does not grow while it is underutilized
  (RFC 9002 section 7.8): aioquic grows it on every acknowledgement, so an
  application-limited connection (on loopback, say) inflates it, and the send
  buffer that follows it.  The controllers are subclasses registered with
  aioquic's public registry (``aioquic.quic.congestion.base``); after each
  transmit pass :func:`note_transmit` reads ``QuicConnection._loss._cc``,
  ``._max_datagram_size`` and ``._pacing_at`` (set when pacing held a packet
  back) to tell the controller whether the pass was application-limited, and replaces
  ``QuicPacketRecovery._pacer`` with :class:`_BurstPacer`: aioquic's pacer, whose bucket
  holds its burst of up to 16 datagrams at any rate (:func:`pacing_burst_time`; aioquic's
  held one packet or none once the rate passed a datagram per µs, as on loopback).
  Both also end their first slow start by HyStart++ (RFC 9406, :class:`HyStart`)
  instead of aioquic's ``QuicRttMonitor`` (their ``on_rtt_measurement`` is replaced;
  CUBIC's ``rtt`` attribute and ``reset`` are kept up).
  ``"bbr"`` is :class:`BbrCongestionControl` (aioquic's public ``QuicCongestionControl``
  interface only); for it :func:`note_transmit` also replaces ``QuicPacketRecovery._pacer``
  with :class:`_ModelPacer` (the controller's pacing rate, one packet per packet time,
  the bucket as :class:`_BurstPacer`'s),
  seeding it from ``QuicPacketRecovery._rtt_initialized`` and ``._rtt_smoothed``, and
  moves a 1-RTT ACK due exactly now that the pacer held (``QuicConnection._spaces[ONE_RTT].ack_at``)
  to ``QuicConnection._pacing_at``, the next paced packet (aioquic passes only overdue ACKs
  by the pacer).
  After a Retry (a client's ``_connect`` runs ``_initialize`` again, replacing
  ``QuicConnection._spaces`` and ``QuicPacketRecovery.spaces`` without ``discard_space``)
  the replaced spaces' packets would stay in the controller's ``bytes_in_flight`` (and
  BBR's records) for good: :func:`note_transmit` wraps a client's ``_initialize`` to run
  ``QuicPacketRecovery.discard_space`` on them first.
* :func:`send_credit` - the peer's stream credit past the acknowledged data
  (``QuicStream.max_stream_data_remote``, ``QuicStreamSender._buffer_start``).
* :func:`smoothed_rtt` - ``QuicConnection._loss._rtt_smoothed``.
* :func:`get_stream`, :func:`is_closing` - ``QuicConnection._streams`` and ``._state``.
* :func:`peer_close` - ``QuicConnection._close_event``: the peer's CONNECTION_CLOSE while draining.
* :func:`close_started` - ``QuicConnection._close_event``: the close under way from the moment
  it began (queued by ``close()``, ours or aioquic's own; sent; or received), which aioquic
  reports (``ConnectionTerminated``) only when the closing or draining period ends.
* :func:`set_max_datagram_size` / :func:`max_datagram_size` - change the UDP
  payload size a live connection builds (``QuicConnection._max_datagram_size``,
  read by every ``QuicPacketBuilder``) and the state derived from it: the
  congestion controller's and pacer's ``_max_datagram_size`` (window growth,
  minimum window, pacing burst) and, when growing before any loss, the initial
  congestion window (:func:`initial_window_bytes`).  aioquic has no API for this (it never changes the size
  after ``__init__``), and it neither sends nor honours the peer's
  ``max_udp_payload_size`` transport parameter (it only checks it is >= 1200),
  so a receiver accepts any datagram size: the paths layer probes each path.
* :func:`pto_count` - ``QuicPacketRecovery._pto_count``: consecutive probe
  timeouts without an acknowledgement (black-hole detection).
* :func:`probe_now` - end a probe timeout backoff at once
  (``QuicPacketRecovery._pto_count`` and ``reschedule_data``): the paths layer
  heard the peer on the connection's path, which is evidence, like an ACK, that
  the path works again.
* :func:`capped_probe_time` - when a backed-off probe timeout would fire with its
  backoff capped (``QuicPacketRecovery._pto_count``, ``get_probe_timeout``,
  ``_time_of_last_sent_ack_eliciting_packet``).
* :func:`ack_with_next_packet` - ``QuicConnection._spaces[ONE_RTT].ack_at``:
  acknowledge in the next packet built (a response written within aioquic's
  ack delay carries the ACK, instead of an ACK-only packet following it).
* :func:`ack_due_within` - the same ``ack_at``: an ACK due within a margin leaves now (an
  event loop that waits in whole milliseconds would send it up to a millisecond late).
* :func:`postpone_ack` - the same ``ack_at``, later (within our ``max_ack_delay``):
  a request/response client with nothing in flight lets the ACK of a response
  ride with its next request.
* :func:`ack_deadline` and :func:`hold_lone_ack` - ``QuicConnection._spaces[ONE_RTT].ack_at``
  and ``_ack_delay``: a lone ack-eliciting datagram's ACK waits longer than aioquic's
  1 ms for a packet with data to carry it (see :func:`hold_lone_ack`).
* :func:`initial_packet_decrypts` - checks a client's first Initial packet with
  the Initial keys (``aioquic.quic.crypto``, derived from its destination
  connection id) before any connection state exists for it;
  :func:`reuse_checked_initial_keys` replaces ``aioquic.quic.connection.CryptoPair``
  so that the server connection then created takes those keys instead of deriving them again.
* :func:`initialize_ahead` - runs a client's ``QuicConnection._initialize`` (TLS
  context, Initial keys, packet spaces) before ``connect()``, which then skips it once.
* :func:`encode_initial_close` - a stateless server Initial packet carrying a
  CONNECTION_CLOSE (``QuicPacketBuilder``, ``CryptoPair``; modelled on
  ``aioquic.asyncio.server._encode_invalid_token_close``): refuses a client
  without creating a connection.
* :func:`received_any_packet` - ``QuicConnection._state`` left FIRSTFLIGHT: a
  server connection processed (decrypted) at least one packet.
* :func:`install_reset_tokens` - stateless reset tokens (RFC 9000 10.3) of the
  connection ids a connection issues (``QuicConnection._host_cids``, filled by
  ``_replenish_connection_ids``) come from a function of the connection id
  instead of ``os.urandom(16)``, so a restarted node can compute them again; and
  each new connection id is reported before it is announced, so the endpoint
  routes it (and never resets it) before the peer can use it.
* :func:`peer_reset_token` - the token of the connection id we send to now
  (``QuicConnection._peer_cid``): aioquic 1.7.2 stores the peer's tokens but never
  checks a received datagram against them (it drops a stateless reset as a packet
  for an unknown connection id), so the endpoint does.
* :func:`idle_timeout` - the idle timeout in force (``QuicConnection._idle_timeout()``).
* :func:`stream_bytes_sent` - the highest stream offset sent so far
  (``QuicStreamSender.highest_offset``): 0 means nothing of the stream left this host.
* :func:`install_server_resumption` - stateless session tickets and 0-RTT on a server
  connection: the ticket aioquic sends is the caller's sealed state instead of random
  bytes it expects stored (``tls.Context._server_handle_finished``,
  ``_build_session_ticket``), the ClientHello's ticket age and random reach the caller
  (re-parsed around ``_server_handle_hello``), 0-RTT keys are installed only when the
  caller accepts early data (``update_traffic_key_cb``, ``early_data_accepted``), and a
  resumed handshake does not wait for the client certificate it never requested
  (``_request_client_certificate``, ``_server_expect_finished``).
* :class:`ClockedSessionTicket` / :func:`clocked_ticket` - a client's ticket whose age
  and validity follow the node's clock (aioquic reads the system clock).
* :func:`early_data_sendable` - a client connection writes 0-RTT packets now
  (``QuicConnection._cryptos``).
* :func:`urandom_key_shares` (applied on import) - ``aioquic.tls``'s module global ``x25519``:
  each handshake's X25519 key comes from ``secrets`` instead of OpenSSL's generator, whose
  first use in a process (about 0.8 ms) sat before a fresh client's first Initial.
* :func:`cache_frame_epochs` (applied on import) - ``aioquic.quic.connection.EPOCHS``,
  which ``QuicConnection.__init__`` calls 34 times per connection for its frame table,
  answers from a cache (the frozensets it returns never change).
* :func:`fast_enum_hash` (applied on import) - aioquic's plain enums (``tls.Epoch``,
  ``QuicPacketType``, ``QuicConnectionState`` ...; :data:`FAST_HASH_ENUMS`) hash by identity
  in C instead of ``enum.Enum.__hash__`` (Python), which ran about 17 times per datagram
  (``QuicConnection._spaces[epoch]``, ``_cryptos``, ``END_STATES`` ...); every existing table
  keyed by them is re-stored.
* :func:`fast_write_application` (applied on import) - ``QuicConnection._write_application``
  is a copy of aioquic's that does not start the packet its loop would discard empty
  (aioquic builds one after every datagram's last packet, asking every writer again), and
  writes all streams' MAX_STREAM_DATA in one call of :func:`install_receive_credit`'s
  writer (the connection attribute ``_asgi_p2p_stream_limits``).  The datagrams are the same,
  byte for byte.
* :func:`fast_padding_frames` (applied on import) - ``QuicConnection._handle_padding_frame``
  skips a run of PADDING bytes with one comparison in C instead of aioquic's Python loop over
  each byte (a handshake datagram padded to 16000 bytes cost the receiver about 0.3 ms); it
  stops at the same byte.
* :func:`fast_tls_blocks` (applied on import) - ``aioquic.tls.pull_block``, ``push_block``,
  ``push_extension`` and ``push_message`` (generator context managers, one per length-prefixed
  block of a TLS message) are replaced by classes doing the same; the bytes are the same.
"""

from __future__ import annotations

import abc
import collections
import datetime
import enum
import functools
import itertools
import logging
import secrets
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pylsqpack
from aioquic import tls

# aioquic's packet buffer lives in a private module (``aioquic.buffer`` re-exports it
# without declaring it); every import of it goes through here.
from aioquic._buffer import Buffer, BufferReadError
from aioquic._crypto import CryptoError
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import (
    FrameType,
    H3Connection,
    H3Stream,
    HeadersState,
    QpackDecompressionFailed,
    Setting,
    StreamType,
    encode_frame,
)
from aioquic.h3.events import H3Event
from aioquic.quic import connection as _quic_connection
from aioquic.quic.congestion.base import (
    K_INITIAL_WINDOW,
    K_MINIMUM_WINDOW,
    QuicCongestionControl,
    register_congestion_control,
)
from aioquic.quic.congestion.cubic import CubicCongestionControl
from aioquic.quic.congestion.reno import RenoCongestionControl
from aioquic.quic.connection import (
    CONNECTION_LIMIT_FRAME_CAPACITY,
    MAX_EARLY_DATA,
    MAX_STREAM_DATA_FRAME_CAPACITY,
    TRANSPORT_CLOSE_FRAME_CAPACITY,
    QuicConnection,
    QuicConnectionState,
    QuicNetworkPath,
    stream_is_client_initiated,
)
from aioquic.quic.crypto import (
    INITIAL_CIPHER_SUITE,
    INITIAL_SALT_VERSION_1,
    INITIAL_SALT_VERSION_2,
    CryptoContext,
    CryptoPair,
)
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.packet import QuicFrameType, QuicPacketType, QuicProtocolVersion
from aioquic.quic.packet_builder import QuicDeliveryState, QuicPacketBuilder, QuicPacketBuilderStop, QuicSentPacket
from aioquic.quic.recovery import QuicPacketPacer, QuicPacketRecovery, QuicPacketSpace
from aioquic.quic.stream import QuicStream
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "FAST_HASH_ENUMS",
    "TICKET_EPOCH",
    "AlertAccessDenied",
    "AlertBadCertificate",
    "AlertCertificateRequired",
    "Buffer",
    "BufferReadError",
    "ClockedSessionTicket",
    "OfferedTicket",
    "ResumableSession",
    "ack_due_within",
    "ack_with_next_packet",
    "cache_frame_epochs",
    "cipher_suite",
    "clocked_ticket",
    "close_started",
    "congestion_control_algorithm",
    "congestion_window",
    "data_received",
    "early_data_sendable",
    "encode_initial_close",
    "ensure_certificate",
    "fast_enum_hash",
    "fast_padding_frames",
    "fast_tls_blocks",
    "fast_write_application",
    "get_stream",
    "handshake_confirmed",
    "idle_timeout",
    "initial_packet_decrypts",
    "initial_window_bytes",
    "install_identity_hooks",
    "install_receive_credit",
    "install_reset_tokens",
    "install_server_resumption",
    "is_closing",
    "max_data_sent",
    "max_datagram_size",
    "note_transmit",
    "peer_close",
    "peer_public_key",
    "peer_reset_token",
    "pto_count",
    "received_any_packet",
    "received_offset",
    "resend_handshake_now",
    "reuse_checked_initial_keys",
    "send_credit",
    "set_max_datagram_size",
    "set_peer_stream_limit",
    "smoothed_rtt",
    "stream_bytes_sent",
    "unacked_bytes",
    "urandom_key_shares",
]


AlertBadCertificate = tls.AlertBadCertificate


class AlertCertificateRequired(tls.Alert):
    description = tls.AlertDescription.certificate_required


class AlertAccessDenied(tls.Alert):
    description = tls.AlertDescription.access_denied


#: each TLS context's peer certificate and its raw key, extracted once (the identity hook,
#: the ticket issued and the endpoint each ask for it during one handshake)
_RAW_KEYS: weakref.WeakKeyDictionary[tls.Context, tuple[Any, bytes]] = weakref.WeakKeyDictionary()


def _raw_ed25519(ctx: tls.Context) -> bytes:
    cert = ctx._peer_certificate
    if cert is None:
        raise AlertCertificateRequired("peer sent no certificate; asgi-p2p nodes must present their node key")
    known = _RAW_KEYS.get(ctx)
    if known is not None and known[0] is cert:  # (the same certificate object, not an equal one)
        return known[1]
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise tls.AlertBadCertificate("peer certificate key is not Ed25519")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    _RAW_KEYS[ctx] = (cert, raw)
    return raw


def peer_public_key(quic: QuicConnection) -> bytes | None:
    """The raw Ed25519 key of the peer's certificate, once the handshake checked it."""
    tls_ctx = getattr(quic, "tls", None)
    if tls_ctx is None or tls_ctx._peer_certificate is None:
        return None
    try:
        return _raw_ed25519(tls_ctx)
    except tls.Alert:
        return None


#: the key exchange groups a node's ClientHello offers (one key share each)
log = logging.getLogger(__name__)

CLIENT_KEY_SHARE_GROUPS = (tls.Group.X25519,)


def _offer_one_key_share(ctx: tls.Context) -> None:
    """A client's ClientHello offers one key share, X25519 (every node has it).

    aioquic would generate and send four (P-256, P-384, X25519, X448; about 0.6 ms of a
    resumed connection's client CPU and 230 bytes of ClientHello) and the server would
    then pick P-256, the slower one.
    """
    ctx._supported_groups = list(CLIENT_KEY_SHARE_GROUPS)


def install_identity_hooks(quic: QuicConnection, check_peer_key: Callable[[bytes], None]) -> None:
    """Authenticate the peer's node key inside the TLS handshake.

    ``check_peer_key(raw_key)`` runs right after the peer's CertificateVerify
    signature was verified against the certificate's key; it raises a
    :class:`aioquic.tls.Alert` to abort the handshake (the peer then sees a
    CONNECTION_CLOSE with the alert as error code and the message as reason).
    Must be called before the connection's TLS context exists (before
    ``connect()`` for clients, before the first datagram for servers).
    """
    original_initialize = quic._initialize

    def _initialize(peer_cid: bytes) -> None:
        original_initialize(peer_cid)
        ctx = quic.tls
        if ctx._is_client:
            _offer_one_key_share(ctx)
            orig_client_verify = ctx._client_handle_certificate_verify

            def client_verify(input_buf: Any) -> None:
                orig_client_verify(input_buf)  # checks the signature with the certificate's key
                check_peer_key(_raw_ed25519(ctx))

            ctx._client_handle_certificate_verify = client_verify  # type: ignore[method-assign]
        else:
            ctx._request_client_certificate = True
            orig_server_cert = ctx._server_handle_certificate
            orig_server_verify = ctx._server_handle_certificate_verify

            def server_cert(input_buf: Any) -> None:
                orig_server_cert(input_buf)
                if ctx._peer_certificate is None:  # empty Certificate: aioquic would accept it
                    raise AlertCertificateRequired(
                        "client sent no certificate; asgi-p2p nodes must present their node key"
                    )

            def server_verify(input_buf: Any) -> None:
                orig_server_verify(input_buf)
                check_peer_key(_raw_ed25519(ctx))

            ctx._server_handle_certificate = server_cert  # type: ignore[method-assign]
            ctx._server_handle_certificate_verify = server_verify  # type: ignore[method-assign]

    quic._initialize = _initialize  # type: ignore[method-assign]


def ensure_certificate(quic: QuicConnection, make: Callable[[], x509.Certificate]) -> None:
    """Give a connection whose configuration had no certificate yet ``make()`` (a client's:
    aioquic reads it only for the client's second flight, which answers the server's
    CertificateRequest; aioquic copied the configuration's into the TLS context when the
    connection started, ``QuicConnection._initialize``)."""
    ctx = getattr(quic, "tls", None)
    if ctx is not None and ctx.certificate is None:
        ctx.certificate = make()


def handshake_confirmed(quic: QuicConnection) -> bool:
    """True once the handshake is confirmed (client: HANDSHAKE_DONE received)."""
    return bool(quic._handshake_confirmed)


def unacked_bytes(quic: QuicConnection, stream_id: int) -> int:
    """Bytes written to a stream and not yet acknowledged by the peer (0 if gone)."""
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    return len(stream.sender._buffer)


def largest_received_1rtt(quic: QuicConnection) -> int:
    """Highest 1-RTT packet number received and authenticated so far (-1: none yet).

    It grows only when a packet decrypted with the connection's 1-RTT keys was
    processed: proof that the peer (not a replay, not a forger) sent something.
    """
    space = quic._spaces.get(tls.Epoch.ONE_RTT)
    return -1 if space is None else int(space.largest_received_packet)


def smoothed_rtt(quic: QuicConnection) -> float:
    return float(quic._loss._rtt_smoothed)


#: the attribute of a connection holding its writer of all its streams' MAX_STREAM_DATA
#: (see install_receive_credit and fast_write_application)
_STREAM_LIMITS_ATTR = "_asgi_p2p_stream_limits"
#: the peer's bidirectional stream limit set by set_peer_stream_limit (aioquic's default: 128)
_STREAM_BASE_ATTR = "_asgi_p2p_stream_base"
_AIOQUIC_STREAM_LIMIT = 128


def install_receive_credit(
    quic: QuicConnection,
    credit_limit: Callable[[int], int | None],
    connection_limit: Callable[[int], int] | None = None,
) -> None:
    """Let the application decide each stream's (and the connection's) receive credit.

    ``credit_limit(stream_id)`` returns the highest offset the peer may send on
    that stream (bytes the application has consumed + its window), or None to
    keep aioquic's behaviour (double the credit as data arrives), which is
    right for streams that a protocol library consumes itself (HTTP/3 control
    and QPACK streams).  ``connection_limit(received)``, given the bytes received
    on all streams, returns the MAX_DATA to allow (None: aioquic's doubling as
    data arrives).  Both are asked whenever a packet is built.  Credit never shrinks.
    """

    def write_stream_limits(builder: QuicPacketBuilder, streams: Iterable[QuicStream]) -> None:
        # aioquic's _write_stream_limits for each stream, with the credit the application decides
        for stream in streams:
            stream_id = stream.stream_id
            assert stream_id is not None  # only application streams get here
            local = stream.max_stream_data_local
            if local:
                limit = credit_limit(stream_id)
                if limit is None:
                    if stream.receiver.highest_offset * 2 > local:
                        local = stream.max_stream_data_local = local * 2
                elif limit > local:
                    local = stream.max_stream_data_local = limit
            if stream.max_stream_data_local_sent != local:
                buf = builder.start_frame(
                    QuicFrameType.MAX_STREAM_DATA,
                    capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                    handler=quic._on_max_stream_data_delivery,
                    handler_args=(stream,),
                )
                buf.push_uint_var(stream_id)
                buf.push_uint_var(local)
                stream.max_stream_data_local_sent = local

    def _write_stream_limits(builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream) -> None:
        write_stream_limits(builder, (stream,))

    # all streams in one call (the fast _write_application's per-packet loop; see fast_write_application)
    vars(quic)[_STREAM_LIMITS_ATTR] = write_stream_limits
    quic._write_stream_limits = _write_stream_limits  # type: ignore[method-assign]
    if connection_limit is None:
        return
    max_data = quic._local_max_data

    def _write_connection_limits(builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        # aioquic's method, without its doubling of MAX_DATA as data arrives, and with its
        # batching of MAX_STREAMS (held until the peer has fewer streams left to open than the
        # update would grant) only while the peer has at least half its limit left: with half
        # the limit in flight a client ran out of stream credit every few round trips and
        # waited one more for the update; below half, the raised limit goes out with the next
        # packet, as quic-go queues it.  Above half it waits (a client with one request at a
        # time would otherwise get a datagram of its own for it after every request).
        limit = connection_limit(max_data.used)
        if limit > max_data.value:
            max_data.value = limit
        for lim in (max_data, quic._local_max_streams_bidi, quic._local_max_streams_uni):
            if lim is not max_data:
                left = lim.sent - lim.used
                base = (
                    vars(quic).get(_STREAM_BASE_ATTR, _AIOQUIC_STREAM_LIMIT)
                    if lim is quic._local_max_streams_bidi
                    else _AIOQUIC_STREAM_LIMIT
                )
                if left >= lim.value - lim.sent and 2 * left >= base:
                    continue
            if lim.value != lim.sent:
                buf = builder.start_frame(
                    lim.frame_type,
                    capacity=CONNECTION_LIMIT_FRAME_CAPACITY,
                    handler=quic._on_connection_limit_delivery,
                    handler_args=(lim,),
                )
                buf.push_uint_var(lim.value)
                lim.sent = lim.value

    quic._write_connection_limits = _write_connection_limits  # type: ignore[method-assign]


def received_offset(quic: QuicConnection, stream_id: int) -> int | None:
    """The highest offset received on a stream (None once aioquic discarded the stream)."""
    stream = quic._streams.get(stream_id)
    return None if stream is None else int(stream.receiver.highest_offset)


def data_received(quic: QuicConnection) -> int:
    """Bytes the peer sent on all streams so far, as counted for MAX_DATA."""
    return int(quic._local_max_data.used)


def max_data_sent(quic: QuicConnection) -> int:
    """The MAX_DATA (connection credit) last announced to the peer."""
    return int(quic._local_max_data.sent)


def send_credit(quic: QuicConnection, stream_id: int) -> int:
    """Bytes past the acknowledged part of a stream that the peer's credit allows now.

    ``QuicStream.max_stream_data_remote`` (the peer's MAX_STREAM_DATA) minus the
    offset where the send buffer starts (``QuicStreamSender._buffer_start``: all
    before it is acknowledged); 0 for an unknown stream.
    """
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    return max(0, int(stream.max_stream_data_remote) - int(stream.sender._buffer_start))


def congestion_window(quic: QuicConnection) -> int:
    """The congestion controller's window in bytes (``QuicConnection._loss._cc.congestion_window``)."""
    return int(quic._loss._cc.congestion_window)


#: The largest datagram the initial congestion window is counted in (bytes): the UDP payload of
#: a 1500-byte IPv4 packet, the size of most internet paths (quic-go and Chromium count their
#: initial window in packets of about this size).  A path that carries larger datagrams
#: (loopback, jumbo frames) starts with the same bytes, not ``initial_window`` of its packets:
#: 64 packets of 16 KiB on loopback made a 1 MB first window, and the send buffer follows it.
INITIAL_WINDOW_DATAGRAM_SIZE = 1472


def initial_window_bytes(packets: int, datagram_size: int) -> int:
    """The initial congestion window in bytes: ``packets`` datagrams of ``datagram_size``,
    counted at most :data:`INITIAL_WINDOW_DATAGRAM_SIZE` each."""
    return packets * min(datagram_size, INITIAL_WINDOW_DATAGRAM_SIZE)


#: HyStart++ constants (RFC 9406 section 4.3)
HYSTART_MIN_RTT_THRESH = 0.004
HYSTART_MAX_RTT_THRESH = 0.016
HYSTART_MIN_RTT_DIVISOR = 8
HYSTART_N_RTT_SAMPLE = 8
HYSTART_CSS_GROWTH_DIVISOR = 4
HYSTART_CSS_ROUNDS = 5


class HyStart:
    """HyStart++ (RFC 9406): when the first slow start ends without a loss (sans-I/O).

    A round ends when a 1-RTT packet sent after it began is acknowledged; each round
    keeps its minimum RTT.  Once a round has :data:`HYSTART_N_RTT_SAMPLE` samples and its
    minimum exceeds the last round's by ``eta`` (an eighth of it, within 4..16 ms), the
    controller enters Conservative Slow Start (the window grows a quarter as fast); a
    round in CSS whose minimum falls below the one that started CSS resumes slow start
    (the rise was a burst, not a queue); :data:`HYSTART_CSS_ROUNDS` rounds in CSS end slow
    start.  This replaces aioquic's ``QuicRttMonitor``, which ends slow start after five
    samples 25% above the lowest seen, so a burst of delay (a TCP relay leg, Wi-Fi) left
    the connection in congestion avoidance at a small window.
    """

    def __init__(self) -> None:
        self.in_css = False
        self.css_rounds = 0
        self.samples = 0
        self.current_round_min = float("inf")
        self.last_round_min = float("inf")
        self.css_baseline_min = float("inf")
        self.largest_sent = -1  # the highest 1-RTT packet number sent
        self.window_end: int | None = None  # the round ends when a packet past this is acked

    def on_packet_sent(self, packet: QuicSentPacket) -> None:
        if packet.epoch == tls.Epoch.ONE_RTT:
            self.largest_sent = max(self.largest_sent, packet.packet_number)

    def on_packet_acked(self, packet: QuicSentPacket, *, app_limited: bool = False) -> bool:
        """Track rounds; True when CSS ran its rounds out: slow start is over.

        A round that ends while the sender is application-limited does not count
        towards :data:`HYSTART_CSS_ROUNDS`: its window did not make the delay.
        """
        if packet.epoch != tls.Epoch.ONE_RTT:
            return False
        if self.window_end is not None and packet.packet_number <= self.window_end:
            return False
        self.window_end = self.largest_sent  # a new round
        self.last_round_min = self.current_round_min
        self.current_round_min = float("inf")
        self.samples = 0
        if self.in_css and not app_limited:
            self.css_rounds += 1
            return self.css_rounds >= HYSTART_CSS_ROUNDS
        return False

    def on_rtt_measurement(self, rtt: float) -> None:
        self.current_round_min = min(self.current_round_min, rtt)
        self.samples += 1
        if self.samples < HYSTART_N_RTT_SAMPLE:
            return
        if not self.in_css:
            if self.last_round_min == float("inf"):
                return
            eta = min(
                max(self.last_round_min / HYSTART_MIN_RTT_DIVISOR, HYSTART_MIN_RTT_THRESH), HYSTART_MAX_RTT_THRESH
            )
            if self.current_round_min >= self.last_round_min + eta:
                self.in_css = True
                self.css_rounds = 0
                self.css_baseline_min = self.current_round_min
        elif self.current_round_min < self.css_baseline_min:
            self.in_css = False  # the delay fell back: it was a burst, resume slow start
            self.css_baseline_min = float("inf")


class _CongestionMixin(abc.ABC):
    """What both controllers add to aioquic's: HyStart++ instead of aioquic's
    ``QuicRttMonitor``, and no growth while application-limited (RFC 9002 7.8)."""

    congestion_window: int
    ssthresh: int | None
    bytes_in_flight: int
    hystart: HyStart
    app_limited: bool
    _css_stash: int
    #: packets in the window at the start and after an idle restart (aioquic: 10)
    initial_window: int = K_INITIAL_WINDOW

    @abc.abstractmethod
    def _grow_on_ack(self, now: float, packet: QuicSentPacket) -> None:
        """The controller's own window growth for one acknowledged packet."""

    def _acked(self, now: float, packet: QuicSentPacket) -> None:
        in_slow_start = self.ssthresh is None
        if in_slow_start and self.hystart.on_packet_acked(packet, app_limited=self.app_limited):
            self.ssthresh = self.congestion_window  # CSS rounds are over: congestion avoidance
            in_slow_start = False
        before = self.congestion_window
        self._grow_on_ack(now, packet)
        if in_slow_start and self.hystart.in_css and self.congestion_window > before:
            # Conservative Slow Start: a quarter of slow start's growth
            self._css_stash += self.congestion_window - before
            self.congestion_window = before + self._css_stash // HYSTART_CSS_GROWTH_DIVISOR
            self._css_stash %= HYSTART_CSS_GROWTH_DIVISOR

    def _rtt(self, rtt: float) -> None:
        # while application-limited the window does not make the delay (a busy server
        # answering requests does): such samples must not end slow start
        if self.ssthresh is None and not self.app_limited:
            self.hystart.on_rtt_measurement(rtt)


class _AppLimitedReno(_CongestionMixin, RenoCongestionControl):
    """aioquic's New Reno with HyStart++, not growing its window while application-limited."""

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self.congestion_window = initial_window_bytes(self.initial_window, max_datagram_size)
        #: the last transmit pass left the window underutilized, not because of pacing
        self.app_limited = False
        self.hystart = HyStart()
        self._css_stash = 0

    def _grow_on_ack(self, now: float, packet: QuicSentPacket) -> None:
        if self.app_limited:
            self.bytes_in_flight -= packet.sent_bytes
        else:
            super().on_packet_acked(now=now, packet=packet)

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self._acked(now, packet)

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        super().on_packet_sent(packet=packet)
        self.hystart.on_packet_sent(packet)

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        self._rtt(rtt)  # not aioquic's QuicRttMonitor

    def set_app_limited(self, limited: bool, now: float) -> None:
        self.app_limited = limited


class _AppLimitedCubic(_CongestionMixin, CubicCongestionControl):
    """aioquic's CUBIC with HyStart++, not growing its window while application-limited.

    The time spent application-limited is left out of CUBIC's epoch, so the
    cubic curve resumes where it paused (RFC 9438 section 5.8, as Linux does)
    instead of jumping ahead by the pause.
    """

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self.app_limited = False
        self._app_limited_since = 0.0

    def reset(self) -> None:
        """aioquic's reset (after 2 s idle: slow start again), with HyStart++ afresh."""
        super().reset()
        self.congestion_window = self._W_max = initial_window_bytes(self.initial_window, self._max_datagram_size)
        self.hystart = HyStart()
        self._css_stash = 0

    def _grow_on_ack(self, now: float, packet: QuicSentPacket) -> None:
        if self.app_limited:
            self.bytes_in_flight -= packet.sent_bytes
            if packet.sent_time is not None:
                self.last_ack = packet.sent_time  # what aioquic's idle reset measures from
        else:
            super().on_packet_acked(now=now, packet=packet)

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self._acked(now, packet)

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        super().on_packet_sent(packet=packet)  # may reset() after idle
        self.hystart.on_packet_sent(packet)

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        self.rtt = rtt  # what aioquic's CUBIC reads; not its QuicRttMonitor
        self._rtt(rtt)

    def set_app_limited(self, limited: bool, now: float) -> None:
        if limited and not self.app_limited:
            self._app_limited_since = now
        elif not limited and self.app_limited and self._t_epoch:
            self._t_epoch += now - self._app_limited_since
        self.app_limited = limited


#: BBR constants (draft-cardwell-iccrg-bbr-congestion-control-00, Linux ``tcp_bbr.c``)
BBR_HIGH_GAIN = 2.885  # 2 / ln 2: STARTUP doubles the delivery rate every round
BBR_DRAIN_GAIN = 1 / BBR_HIGH_GAIN
#: STARTUP's window: 2 x BDP (BBRv3; v1 used the pacing gain, overshooting shallow queues more)
BBR_STARTUP_CWND_GAIN = 2.0
BBR_CWND_GAIN = 2.0
#: PROBE_BW's pacing gains, one phase (about one min RTT) each
BBR_PACING_GAIN_CYCLE = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
BBR_BW_WINDOW_ROUNDS = 10
BBR_MIN_RTT_WINDOW = 10.0  # seconds
BBR_PROBE_RTT_DURATION = 0.2  # seconds
BBR_MIN_CWND_PACKETS = 4
BBR_FULL_BW_GROWTH = 1.25
BBR_FULL_BW_ROUNDS = 3
#: pace a little below the bandwidth estimate, so that no queue builds at gain 1 (Linux: 1%)
BBR_PACING_MARGIN = 0.01
#: BBRv2/v3's loss response: random loss below this fraction of the data in flight is not
#: a congestion signal; above it the window gets an upper bound (``inflight_hi``)
BBR_LOSS_THRESH = 0.02
#: lost packets a STARTUP round needs (besides the loss rate) to end STARTUP (BBRv2: 8)
BBR_STARTUP_FULL_LOSS_COUNT = 8
#: multiplicative decrease of ``inflight_hi`` when loss is too high outside a bandwidth probe
BBR_BETA = 0.7
#: ACK aggregation (Linux ``bbr_update_ack_aggregation``): the window gets room for the
#: largest excess of acknowledged over expected bytes of the last 2 x this many round trips,
#: at most this many seconds of the bandwidth. ACKs arriving in bursts (a receiver's ACK
#: delay, Wi-Fi, a busy event loop between two processes) deliver faster than the model's
#: rate for a while and then pause; a window of 2 x BDP alone stalls in the pause.
BBR_EXTRA_ACKED_WINDOW_ROUNDS = 5
BBR_EXTRA_ACKED_MAX_SECONDS = 0.1


class BbrMode(enum.Enum):
    STARTUP = "startup"
    DRAIN = "drain"
    PROBE_BW = "probe_bw"
    PROBE_RTT = "probe_rtt"


@dataclass(slots=True)
class _BbrSent:
    """What BBR's delivery-rate sampling keeps of a packet in flight (at its send)."""

    sent_time: float
    size: int
    delivered: int  # bytes delivered (acknowledged) when it was sent
    delivered_time: float  # when that delivered count was reached
    first_sent_time: float  # send time of the packet the sending run started with
    app_limited: bool  # sent while the application, not the window, limited sending
    lost: int  # bytes declared lost when it was sent
    tx_in_flight: int  # bytes in flight once it was sent


class BbrCongestionControl(QuicCongestionControl):
    """BBR (model-based congestion control), registered with aioquic as ``"bbr"`` (sans-I/O).

    BBRv1 (draft-cardwell-iccrg-bbr-congestion-control-00, Linux ``tcp_bbr.c``) with
    BBRv2/v3's loss response:

    * **delivery-rate sampling** (draft-cheng-iccrg-delivery-rate-estimation): each packet
      in flight remembers the connection's delivered bytes and time at its send
      (:class:`_BbrSent`, keyed by epoch and packet number, so bounded by the packets in
      flight); its acknowledgement gives a sample ``delivered bytes / max(send interval,
      ack interval)``, and its RTT;
    * the **model**: the bottleneck bandwidth is the largest sample of the last
      :data:`BBR_BW_WINDOW_ROUNDS` round trips (samples taken while application-limited
      count only when they raise it), the min RTT the smallest RTT of the last
      :data:`BBR_MIN_RTT_WINDOW` seconds; BDP = bandwidth x min RTT;
    * the **state machine**: STARTUP (pacing gain 2.885, window gain 2 as in BBRv3) until
      three rounds grow the bandwidth less than 25% (or, BBRv2, a round loses more than 2%
      and 8 packets), DRAIN (pacing gain 1/2.885) until the data in flight is one BDP, PROBE_BW
      cycling its pacing gain through :data:`BBR_PACING_GAIN_CYCLE`, and PROBE_RTT (4
      packets in flight for 200 ms and a round trip) when the min RTT was not seen again
      for 10 s;
    * the **controls**: pacing rate = gain x bandwidth (1% below), driving aioquic's pacer
      (:func:`note_transmit` installs :class:`_ModelPacer`); window = 2 x BDP plus room for
      bursts of acknowledgements (:attr:`extra_acked`; STARTUP's window grows by the
      acknowledged bytes up to that), at least :data:`BBR_MIN_CWND_PACKETS`;
    * **loss** is no signal by itself: only when the bytes lost since a lost packet was
      sent exceed :data:`BBR_LOSS_THRESH` of the bytes in flight at its send does BBR
      react (once for the packets sent before that reaction): in STARTUP, with 8 losses in
      the round, STARTUP ends; while probing for bandwidth the data in flight at that send
      becomes an upper bound, ``inflight_hi`` (and the probe ends), which each later probe
      that loses less raises by 1, 2, 4, ... packets; otherwise the window drops to 0.7 of
      itself, not below one BDP, until the next probe (``inflight_lo``);
    * **persistent congestion** (RFC 9002 7.6) collapses the window to the minimum; it
      grows back by the acknowledged bytes (doubling per round trip).

    Time comes only from aioquic's callbacks (``now`` and packets' ``sent_time``).
    """

    initial_window: int = K_INITIAL_WINDOW

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._max_datagram_size = max_datagram_size
        self.congestion_window = initial_window_bytes(self.initial_window, max_datagram_size)
        self.mode = BbrMode.STARTUP
        self.pacing_gain = BBR_HIGH_GAIN
        self.cwnd_gain = BBR_STARTUP_CWND_GAIN
        # delivery-rate sampling
        self._sent: dict[tuple[tls.Epoch, int], _BbrSent] = {}
        self.delivered = 0
        self.delivered_time = 0.0
        self.lost = 0
        self._first_sent_time = 0.0
        #: sampling is application-limited until this many bytes are delivered (0: not)
        self._app_limited_until = 0
        self.app_limited = False
        # the model
        self.round_count = 0
        self._next_round_delivered = 0
        self._bw_samples: collections.deque[tuple[int, float]] = collections.deque()  # (round, max bw in it)
        self.min_rtt = float("inf")
        self._min_rtt_stamp = 0.0
        # STARTUP's exit
        self.filled_pipe = False
        self._full_bw = 0.0
        self._full_bw_count = 0
        self._round_lost_packets = 0
        # PROBE_BW
        self.cycle_index = 0
        self._cycle_stamp = 0.0
        self._probe_loss_too_high = False
        #: the window's upper bound found by too much loss while probing (None: unbounded)
        self.inflight_hi: int | None = None
        #: a bound set by too much loss while not probing, until the next probe
        self.inflight_lo: int | None = None
        self._loss_reaction_time = -float("inf")
        self._inflight_hi_step = 1
        # ACK aggregation: two windows of the largest excess, the current epoch
        self._extra_acked = [0, 0]
        self._extra_acked_index = 0
        self._extra_acked_rounds = 0
        self._ack_epoch_start = 0.0
        self._ack_epoch_acked = 0
        # PROBE_RTT
        self._probe_rtt_done_stamp: float | None = None
        self._probe_rtt_round_done = False
        self._prior_cwnd = 0
        self._idle_restart = False
        #: bytes per second the pacer sends at (None until the first bandwidth sample)
        self.pacing_rate: float | None = None

    # -- the model ---------------------------------------------------------------------

    @property
    def tracked_packets(self) -> int:
        """Packets whose send-time delivery state is kept (those in flight)."""
        return len(self._sent)

    @property
    def btl_bw(self) -> float:
        """The bottleneck bandwidth estimate (bytes per second; 0 before any sample)."""
        return max((bw for _, bw in self._bw_samples), default=0.0)

    def bdp(self, gain: float = 1.0) -> int:
        """``gain`` x the estimated bandwidth-delay product, in bytes (the initial window
        before there is a model)."""
        if not self._bw_samples or self.min_rtt == float("inf"):
            return initial_window_bytes(self.initial_window, self._max_datagram_size)
        return int(gain * self.btl_bw * self.min_rtt)

    @property
    def _min_cwnd(self) -> int:
        return BBR_MIN_CWND_PACKETS * self._max_datagram_size

    def _update_bw(self, bw: float, app_limited: bool) -> None:
        if app_limited and bw < self.btl_bw:
            return  # an application-limited sample only counts when it raises the estimate
        samples = self._bw_samples
        if samples and samples[-1][0] == self.round_count:
            if bw > samples[-1][1]:
                samples[-1] = (self.round_count, bw)
        else:
            samples.append((self.round_count, bw))
        while samples[0][0] <= self.round_count - BBR_BW_WINDOW_ROUNDS:
            samples.popleft()

    # -- aioquic's callbacks ------------------------------------------------------------

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        sent_time = packet.sent_time if packet.sent_time is not None else self.delivered_time
        if self.bytes_in_flight == 0:
            # a new sending run: its first packet starts the send and ack intervals
            self._first_sent_time = self.delivered_time = sent_time
            if self.app_limited:
                self._idle_restart = True
                if self.mode is BbrMode.PROBE_BW:
                    self._set_pacing_rate(1.0)  # restart at the estimate, not a probe's gain
        self.bytes_in_flight += packet.sent_bytes
        self._sent[(packet.epoch, packet.packet_number)] = _BbrSent(
            sent_time=sent_time,
            size=packet.sent_bytes,
            delivered=self.delivered,
            delivered_time=self.delivered_time,
            first_sent_time=self._first_sent_time,
            app_limited=self._app_limited_until != 0,
            lost=self.lost,
            tx_in_flight=self.bytes_in_flight,
        )

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self.bytes_in_flight -= packet.sent_bytes
        sent = self._sent.pop((packet.epoch, packet.packet_number), None)
        self.delivered += packet.sent_bytes
        self.delivered_time = now
        if self._app_limited_until and self.delivered > self._app_limited_until:
            self._app_limited_until = 0
        if sent is None:
            return
        self._first_sent_time = sent.sent_time
        # a new round trip starts when a packet sent after the last round began is acked
        round_start = sent.delivered >= self._next_round_delivered
        if round_start:
            self._next_round_delivered = self.delivered
            self.round_count += 1
            self._round_lost_packets = 0
        self._idle_restart = False
        self._update_min_rtt(now, now - sent.sent_time)
        interval = max(sent.sent_time - sent.first_sent_time, now - sent.delivered_time)
        if interval > 0 and interval >= self.min_rtt:  # shorter intervals overestimate (ACK compression)
            bw = (self.delivered - sent.delivered) / interval
            self._update_bw(bw, sent.app_limited)
            if round_start and not sent.app_limited:
                self._check_full_pipe()
        self._update_ack_aggregation(now, packet.sent_bytes, round_start)
        self._update_state(now, round_start)
        self._set_pacing_rate(self.pacing_gain)
        self._set_cwnd(packet.sent_bytes)

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            self._sent.pop((packet.epoch, packet.packet_number), None)

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            self.lost += packet.sent_bytes
            self._round_lost_packets += 1
            sent = self._sent.pop((packet.epoch, packet.packet_number), None)
            if sent is not None and self.lost - sent.lost > BBR_LOSS_THRESH * sent.tx_in_flight:
                self._loss_too_high(sent, now)
        self._set_cwnd(0)

    def on_persistent_congestion(self) -> None:
        # the path may have changed: no restoring the old window (as PROBE_RTT does); it grows
        # back by the acknowledged bytes, doubling per round trip, up to 2 x BDP
        self.congestion_window = self._min_cwnd

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        pass  # BBR takes its RTT samples from its own per-packet records

    def set_app_limited(self, limited: bool, now: float) -> None:
        """The last transmit pass left the window underused (see :func:`note_transmit`):
        the rate samples of what is sent until that data is delivered are application-limited."""
        self.app_limited = limited
        if limited:
            self._app_limited_until = max(self.delivered + self.bytes_in_flight, 1)

    def get_log_data(self) -> dict[str, Any]:
        data = super().get_log_data()
        data.update(mode=self.mode.value, btl_bw=self.btl_bw, min_rtt=self.min_rtt, pacing_rate=self.pacing_rate)
        return data

    # -- the state machine ------------------------------------------------------------

    def _update_min_rtt(self, now: float, rtt: float) -> None:
        expired = self.min_rtt != float("inf") and now > self._min_rtt_stamp + BBR_MIN_RTT_WINDOW
        if rtt <= self.min_rtt or expired:
            self.min_rtt = rtt
            self._min_rtt_stamp = now
        if expired and not self._idle_restart and self.mode is not BbrMode.PROBE_RTT:
            self._enter(BbrMode.PROBE_RTT, now)
            self._prior_cwnd = max(self._prior_cwnd, self.congestion_window)
            self._probe_rtt_done_stamp = None

    def _update_ack_aggregation(self, now: float, acked: int, round_start: bool) -> None:
        if round_start:
            self._extra_acked_rounds += 1
            if self._extra_acked_rounds >= BBR_EXTRA_ACKED_WINDOW_ROUNDS:
                self._extra_acked_rounds = 0
                self._extra_acked_index ^= 1
                self._extra_acked[self._extra_acked_index] = 0
        expected = self.btl_bw * (now - self._ack_epoch_start)
        if self._ack_epoch_acked <= expected:  # acknowledgements at or below the rate: a new epoch
            self._ack_epoch_acked = 0
            self._ack_epoch_start = now
            expected = 0.0
        self._ack_epoch_acked += acked
        extra = min(int(self._ack_epoch_acked - expected), self.congestion_window)
        if extra > self._extra_acked[self._extra_acked_index]:
            self._extra_acked[self._extra_acked_index] = extra

    @property
    def extra_acked(self) -> int:
        """The room the window keeps for bursts of acknowledgements (bytes): the largest excess
        of acknowledged over expected bytes lately, at most 100 ms of the bandwidth (in every
        state, as in BBRv3: in STARTUP too, or a path whose min RTT is far below its RTT under
        load keeps STARTUP's window at its minimum)."""
        return min(max(self._extra_acked), int(self.btl_bw * BBR_EXTRA_ACKED_MAX_SECONDS))

    def _check_full_pipe(self) -> None:
        if self.filled_pipe:
            return
        if self.btl_bw >= self._full_bw * BBR_FULL_BW_GROWTH:
            self._full_bw = self.btl_bw
            self._full_bw_count = 0
            return
        self._full_bw_count += 1
        if self._full_bw_count >= BBR_FULL_BW_ROUNDS:
            self.filled_pipe = True

    def _loss_too_high(self, sent: _BbrSent, now: float) -> None:
        if sent.sent_time <= self._loss_reaction_time:
            return  # sent before the last reaction: that one answered this loss already
        if self.mode is BbrMode.STARTUP:
            if self._round_lost_packets < BBR_STARTUP_FULL_LOSS_COUNT:
                return
            # the pipe is full; STARTUP's 2.885x bursts make the data in flight at this loss
            # a poor bound (on a shallow queue it sits below the BDP): DRAIN, then let PROBE_BW find it
            self.filled_pipe = True
        elif self.mode is BbrMode.PROBE_BW and self.pacing_gain > 1:
            # probing found the level where loss begins: stay below it, and end the probe
            self.inflight_hi = max(sent.tx_in_flight, self.bdp(), self._min_cwnd)
            self._probe_loss_too_high = True
        else:
            # congestion while not probing (another flow, say): back off until the next probe
            bound = self.congestion_window if self.inflight_lo is None else self.inflight_lo
            self.inflight_lo = max(int(BBR_BETA * bound), self.bdp(), self._min_cwnd)
        self._inflight_hi_step = 1
        self._loss_reaction_time = now

    def _enter(self, mode: BbrMode, now: float) -> None:
        self.mode = mode
        if mode is BbrMode.STARTUP:
            self.pacing_gain, self.cwnd_gain = BBR_HIGH_GAIN, BBR_STARTUP_CWND_GAIN
        elif mode is BbrMode.DRAIN:
            self.pacing_gain, self.cwnd_gain = BBR_DRAIN_GAIN, BBR_STARTUP_CWND_GAIN
        elif mode is BbrMode.PROBE_BW:
            self.cwnd_gain = BBR_CWND_GAIN
            # start in a random phase but the draining one (Linux: prandom); the loop's
            # clock stands in for a random source: deterministic under virtual time
            self.cycle_index = len(BBR_PACING_GAIN_CYCLE) - 1 - int(now * 1e6) % (len(BBR_PACING_GAIN_CYCLE) - 1)
            self._advance_cycle(now)
        else:  # PROBE_RTT
            self.pacing_gain, self.cwnd_gain = 1.0, 1.0

    def _advance_cycle(self, now: float) -> None:
        self.cycle_index = (self.cycle_index + 1) % len(BBR_PACING_GAIN_CYCLE)
        self._cycle_stamp = now
        self.pacing_gain = BBR_PACING_GAIN_CYCLE[self.cycle_index]
        if self.pacing_gain > 1:
            self._probe_loss_too_high = False
            self.inflight_lo = None

    def _update_state(self, now: float, round_start: bool) -> None:
        if self.mode is BbrMode.STARTUP and self.filled_pipe:
            self._enter(BbrMode.DRAIN, now)
        if self.mode is BbrMode.DRAIN and self.bytes_in_flight <= self.bdp():
            self._enter(BbrMode.PROBE_BW, now)
        if self.mode is BbrMode.PROBE_BW:
            self._update_cycle(now, round_start)
        if self.mode is BbrMode.PROBE_RTT:
            self._update_probe_rtt(now, round_start)

    def _update_cycle(self, now: float, round_start: bool) -> None:
        full_length = now - self._cycle_stamp > self.min_rtt
        if self.pacing_gain > 1:
            if round_start and self.inflight_hi is not None and not self._probe_loss_too_high:
                # a probing round without too much loss: the bound may be too low
                self.inflight_hi += self._inflight_hi_step * self._max_datagram_size
                self._inflight_hi_step *= 2
                if self.inflight_hi > 2 * self.bdp(self.cwnd_gain):
                    self.inflight_hi = None  # far above what the model needs: unbounded
            done = full_length and (self._probe_loss_too_high or self.bytes_in_flight >= self.bdp(self.pacing_gain))
        elif self.pacing_gain < 1:
            done = full_length or self.bytes_in_flight <= self.bdp()
        else:
            done = full_length
        if done:
            self._advance_cycle(now)

    def _update_probe_rtt(self, now: float, round_start: bool) -> None:
        if self._probe_rtt_done_stamp is None:
            if self.bytes_in_flight <= self._min_cwnd:
                self._probe_rtt_done_stamp = now + BBR_PROBE_RTT_DURATION
                self._probe_rtt_round_done = False
                self._next_round_delivered = self.delivered
            return
        if round_start:
            self._probe_rtt_round_done = True
        if self._probe_rtt_round_done and now >= self._probe_rtt_done_stamp:
            self._min_rtt_stamp = now
            self.congestion_window = max(self.congestion_window, self._prior_cwnd)
            self._prior_cwnd = 0
            self._enter(BbrMode.PROBE_BW if self.filled_pipe else BbrMode.STARTUP, now)

    # -- the controls -----------------------------------------------------------------

    def _set_pacing_rate(self, gain: float) -> None:
        if self.pacing_rate is None and self.min_rtt != float("inf"):
            # at first STARTUP's gain over the initial window per RTT: the first bandwidth
            # samples (the handshake's) would pace far slower, and STARTUP only raises the rate
            initial = initial_window_bytes(self.initial_window, self._max_datagram_size)
            self.pacing_rate = BBR_HIGH_GAIN * initial / max(self.min_rtt, 0.001)
        if not self._bw_samples:
            return
        rate = gain * self.btl_bw * (1 - BBR_PACING_MARGIN)
        if self.filled_pipe or self.pacing_rate is None or rate > self.pacing_rate:
            self.pacing_rate = rate  # STARTUP never lowers it

    def _set_cwnd(self, acked: int) -> None:
        target = self.bdp(self.cwnd_gain) + self.extra_acked
        cwnd = self.congestion_window
        if self.filled_pipe:
            cwnd = min(cwnd + acked, target)
        elif cwnd < target or self.delivered < initial_window_bytes(self.initial_window, self._max_datagram_size):
            cwnd += acked
        if self.inflight_hi is not None:
            cwnd = min(cwnd, self.inflight_hi)
        if self.inflight_lo is not None:
            cwnd = min(cwnd, self.inflight_lo)
        if self.mode is BbrMode.PROBE_RTT:
            cwnd = min(cwnd, self._min_cwnd)
        self.congestion_window = max(cwnd, self._min_cwnd)


def pacing_burst_time(congestion_window: int, max_datagram_size: int, packet_time: float) -> float:
    """A pacer's bucket (its largest burst) as time: aioquic's burst of 2 to 16 datagrams (at
    most a quarter window), at ``packet_time`` each.

    aioquic divides the burst's bytes by the pacing rate (window / RTT) instead, which is the
    same while a packet time is ``max_datagram_size`` / rate; but the packet time has a floor of
    1 µs, the rate not: above one datagram per µs (1.2 GB/s at 1,200 bytes: a window of a few
    MB over loopback's sub-millisecond RTT) the bucket held fewer packet times than 16, and
    at 16 datagrams per µs less than one, so each transmit pass sent one or two datagrams and
    the rest waited for a pacing timer each (30 MiB over loopback: ~400 passes per MiB instead
    of ~60, 40% more CPU per MiB). At rates below that floor (any internet path) the result
    is aioquic's exactly.
    """
    burst = max(2 * max_datagram_size, min(congestion_window // 4, 16 * max_datagram_size))
    return burst / max_datagram_size * packet_time


class _BurstPacer(QuicPacketPacer):
    """aioquic's pacer whose bucket holds its whole burst at any rate (:func:`pacing_burst_time`)."""

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        saved = self.bucket_time  # aioquic's update clamps it to its own (smaller) bucket
        super().update_rate(congestion_window, smoothed_rtt)
        if self.packet_time is not None:
            self.bucket_max = pacing_burst_time(congestion_window, self._max_datagram_size, self.packet_time)
            self.bucket_time = min(saved, self.bucket_max)


def _install_burst_pacer(loss: QuicPacketRecovery) -> None:
    """Replace aioquic's pacer by :class:`_BurstPacer`, keeping its state."""
    old = loss._pacer
    pacer = _BurstPacer(max_datagram_size=old._max_datagram_size)
    pacer.bucket_time, pacer.evaluation_time = old.bucket_time, old.evaluation_time
    if loss._rtt_initialized:
        pacer.update_rate(loss._cc.congestion_window, loss._rtt_smoothed)
    loss._pacer = pacer


class _ModelPacer(QuicPacketPacer):
    """aioquic's pacer (a token bucket) at the rate a model-based controller sets
    (:attr:`BbrCongestionControl.pacing_rate`) instead of window / smoothed RTT.

    Before the controller has a bandwidth sample it paces at 2.885 x window / RTT
    (BBR's STARTUP gain over aioquic's rate).  A packet leaves only for a whole packet
    time of credit: aioquic's lets one leave on any credit above zero, so a timer firing
    on time (credit = the packet time plus a rounding error) sends two packets, pacing
    at up to twice the rate; BBR's gains would mean nothing.
    """

    def __init__(self, cc: BbrCongestionControl, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._cc = cc

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        rate = self._cc.pacing_rate
        if rate is None:
            rate = BBR_HIGH_GAIN * congestion_window / max(smoothed_rtt, 1e-6)
        rate = max(rate, 1.0)
        self.packet_time = max(1e-6, min(self._max_datagram_size / rate, 1.0))
        self.bucket_max = pacing_burst_time(congestion_window, self._max_datagram_size, self.packet_time)
        if self.bucket_time > self.bucket_max:
            self.bucket_time = self.bucket_max

    def next_send_time(self, now: float) -> float | None:  # type: ignore[override]  # aioquic's returns None too
        if self.packet_time is None:
            return None
        self.update_bucket(now=now)
        missing = self.packet_time - self.bucket_time
        if missing <= self.packet_time * 1e-6:  # a whole packet time of credit (rounding aside)
            return None
        return now + missing

    def update_after_send(self, now: float) -> None:
        if self.packet_time is not None:
            self.update_bucket(now=now)
            self.bucket_time = max(self.bucket_time - self.packet_time, 0.0)


_APP_LIMITED_CLASSES: dict[str, type[_AppLimitedReno] | type[_AppLimitedCubic] | type[BbrCongestionControl]] = {
    "reno": _AppLimitedReno,
    "cubic": _AppLimitedCubic,
    "bbr": BbrCongestionControl,
}
#: (controller, initial window) -> the name it is registered under in aioquic
_REGISTERED: dict[tuple[str, int], str] = {}


def congestion_control_algorithm(name: str, initial_window: int = K_INITIAL_WINDOW) -> str:
    """The aioquic algorithm name (``QuicConfiguration.congestion_control_algorithm``) of
    controller ``name`` (``"reno"``, ``"cubic"`` or ``"bbr"``) that starts with
    ``initial_window`` packets; Reno and CUBIC keep their window while the connection is
    application-limited and restart from it after 2 s idle (CUBIC); call :func:`note_transmit`
    after each ``datagrams_to_send`` (BBR's pacing depends on it).

    Each (controller, initial window) pair is registered once through aioquic's public
    ``register_congestion_control``."""
    try:
        base = _APP_LIMITED_CLASSES[name]
    except KeyError:
        raise ValueError(f"congestion control must be one of {sorted(_APP_LIMITED_CLASSES)}, got {name!r}") from None
    if not 2 <= initial_window <= 1024:
        raise ValueError(f"initial congestion window must be 2..1024 packets, got {initial_window}")
    key = (name, initial_window)
    registered = _REGISTERED.get(key)
    if registered is None:
        default = initial_window == K_INITIAL_WINDOW
        registered = f"asgi-p2p-{name}" if default else f"asgi-p2p-{name}-iw{initial_window}"
        cls = base if default else type(base.__name__, (base,), {"initial_window": initial_window})
        register_congestion_control(registered, cls)  # type: ignore[arg-type]
        _REGISTERED[key] = registered
    return registered


for _name in _APP_LIMITED_CLASSES:  # the defaults are known to aioquic from import on
    congestion_control_algorithm(_name)


#: client connections whose re-initialization (a Retry) discards their packet spaces first
_DISCARDING: weakref.WeakSet[QuicConnection] = weakref.WeakSet()


def _discard_spaces_on_restart(quic: QuicConnection) -> None:
    """A client that gets a Retry (or a version negotiation) starts over with new packet
    spaces: ``_connect`` runs ``_initialize`` again, replacing ``QuicConnection._spaces`` and
    ``QuicPacketRecovery.spaces``, without ``QuicPacketRecovery.discard_space``, so the
    packets sent before are never acknowledged, lost or expired: they stay in the
    controller's ``bytes_in_flight`` (and in BBR's per-packet records) for the connection's
    life.  Wraps the connection's ``_initialize`` to discard the spaces it replaces."""
    if not quic._is_client or quic in _DISCARDING:
        return
    _DISCARDING.add(quic)
    initialize = quic._initialize

    def _initialize(peer_cid: bytes) -> None:
        loss = quic._loss
        for space in list(loss.spaces):
            loss.discard_space(space)
        initialize(peer_cid)

    quic._initialize = _initialize  # type: ignore[method-assign]


def note_transmit(quic: QuicConnection, now: float) -> None:
    """After ``datagrams_to_send(now)``: tell the controller whether that pass left its
    window underutilized (RFC 9002 section 7.8).

    The pass was application-limited when another datagram would still have fit in
    the congestion window and pacing did not hold it back (``QuicConnection._pacing_at``):
    the application (or the peer's flow control) had nothing more to send.  Until a
    later pass fills the window, acknowledgements do not grow it.  Does nothing for a
    controller not made by :func:`congestion_control_algorithm`.
    """
    loss = quic._loss
    cc = loss._cc
    _discard_spaces_on_restart(quic)
    if isinstance(cc, (_AppLimitedReno, _AppLimitedCubic, BbrCongestionControl)):
        window_full = cc.bytes_in_flight + quic._max_datagram_size > cc.congestion_window
        cc.set_app_limited(not window_full and quic._pacing_at is None, now)
    if not isinstance(cc, BbrCongestionControl):
        if type(loss._pacer) is QuicPacketPacer:
            _install_burst_pacer(loss)
        return
    if not isinstance(loss._pacer, _ModelPacer):
        # BBR sets the pacing rate itself (aioquic's pacer would use window / RTT)
        pacer = _ModelPacer(cc, max_datagram_size=quic._max_datagram_size)
        if loss._rtt_initialized:
            pacer.update_rate(cc.congestion_window, loss._rtt_smoothed)
        loss._pacer = pacer
    space = quic._spaces.get(tls.Epoch.ONE_RTT)
    if space is not None and space.ack_at == now and quic._pacing_at is not None:
        # aioquic sends a due ACK past the pacer only once it is overdue (``ack_at < now``):
        # one due exactly now, held by the pacer, would keep the timer firing at this same
        # instant. It leaves with the next paced packet instead.
        space.ack_at = quic._pacing_at


def set_peer_stream_limit(quic: QuicConnection, max_bidi_streams: int) -> None:
    """Limit how many bidirectional streams the peer may have open at once.

    aioquic hard-codes 128 (``QuicConnection._local_max_streams_bidi``); it is
    announced in the transport parameters, so call this before the handshake.
    aioquic raises the limit by one for each peer stream that finishes.
    """
    limit = quic._local_max_streams_bidi
    limit.value = limit.sent = max_bidi_streams
    vars(quic)[_STREAM_BASE_ATTR] = max_bidi_streams  # see install_receive_credit's MAX_STREAMS


def get_stream(quic: QuicConnection, stream_id: int) -> QuicStream | None:
    """The live stream object (``QuicConnection._streams``), or None once discarded."""
    return quic._streams.get(stream_id)


def is_closing(quic: QuicConnection) -> bool:
    """True once the connection is closing, draining or terminated (``QuicConnection._state``)."""
    return quic._state in (QuicConnectionState.CLOSING, QuicConnectionState.DRAINING, QuicConnectionState.TERMINATED)


def peer_close(quic: QuicConnection) -> ConnectionTerminated | None:
    """The peer's CONNECTION_CLOSE, as soon as it arrived (``QuicConnection._close_event`` while
    draining); aioquic reports it only when the draining period (3 PTO) ends."""
    if quic._state is QuicConnectionState.DRAINING:
        return quic._close_event
    return None


def close_started(quic: QuicConnection) -> ConnectionTerminated | None:
    """The close under way, from the moment it began (``QuicConnection._close_event``): ours,
    queued by ``close()`` (by us, by aioquic on a protocol violation, by the HTTP/3 layer)
    or sent (the closing period), or the peer's CONNECTION_CLOSE (draining, see
    :func:`peer_close`); also once terminated.  None while the connection is open.  aioquic
    has no public state: it reports the close only when the closing or draining period
    (3 PTO) ends, or for a close without one (the idle timeout) at once."""
    return quic._close_event


#: QUIC's smallest allowed datagram size (RFC 9000 section 14).
SMALLEST_DATAGRAM_SIZE = 1200


def max_datagram_size(quic: QuicConnection) -> int:
    """The UDP payload size the connection builds now (``QuicConnection._max_datagram_size``)."""
    return int(quic._max_datagram_size)


#: the smallest size :func:`set_max_datagram_size` accepts with ``below_minimum`` (after the
#: handshake: only datagrams carrying Initial packets must be 1200 bytes, RFC 9000 14.1)
SMALLEST_1RTT_DATAGRAM_SIZE = 1000


def set_max_datagram_size(quic: QuicConnection, size: int, *, below_minimum: bool = False) -> None:
    """Build datagrams of up to ``size`` bytes from now on (and adapt congestion control).

    ``below_minimum`` allows sizes down to :data:`SMALLEST_1RTT_DATAGRAM_SIZE`
    (for a connection past its handshake whose relay path carries less than 1200).

    Packets already sent keep their size; lost data is retransmitted in new
    packets of the new size (aioquic retransmits frames, not packets).  The
    congestion window is kept in bytes; when the size grows, a connection that
    never lost a packet (still in slow start) gets at least the initial window
    of the new size (counted in datagrams of at most
    :data:`INITIAL_WINDOW_DATAGRAM_SIZE`, :func:`initial_window_bytes`), and every
    connection at least the minimum window.
    """
    smallest = SMALLEST_1RTT_DATAGRAM_SIZE if below_minimum else SMALLEST_DATAGRAM_SIZE
    if not smallest <= size <= 65527:
        raise ValueError(f"datagram size must be in {smallest}..65527, got {size}")
    old = quic._max_datagram_size
    if size == old:
        return
    quic._max_datagram_size = size
    loss = quic._loss
    loss._pacer._max_datagram_size = size
    cc = loss._cc
    if hasattr(cc, "_max_datagram_size"):  # reno and cubic keep a copy
        cc._max_datagram_size = size
    if hasattr(cc, "additive_increase_factor"):  # cubic
        cc.additive_increase_factor = size
    if size > old:
        if cc.ssthresh is None:
            floor = initial_window_bytes(getattr(cc, "initial_window", K_INITIAL_WINDOW), size)
        else:
            floor = K_MINIMUM_WINDOW * size
        if cc.congestion_window < floor:
            cc.congestion_window = floor


def ack_with_next_packet(quic: QuicConnection, now: float) -> None:
    """Make a pending 1-RTT ACK go out in the next packet built at ``now``.

    aioquic delays an ACK by its ack delay (1 ms: ``QuicPacketSpace.ack_at``) and
    builds it only into packets sent at or after that time.  A response built
    within the delay then leaves without the ACK, and an ACK-only packet follows
    1 ms later: two packets to build, send, receive and process instead of one.
    Called just before building packets, it moves ``ack_at`` to ``now`` so the
    ACK rides in them (RFC 9000 13.2.1 allows acknowledging sooner, never later).
    """
    space = quic._spaces.get(tls.Epoch.ONE_RTT)
    if space is not None and space.ack_at is not None and space.ack_at > now:
        space.ack_at = now


def ack_due_within(quic: QuicConnection, now: float, margin: float) -> None:
    """Make a pending 1-RTT ACK due less than ``margin`` seconds after ``now`` go out in the
    next packet built at ``now`` (``margin`` 0: nothing changes).

    An event loop that waits in whole milliseconds (asyncio's selector loop: epoll rounds a
    timeout up to the next millisecond) wakes for an ACK due 0.3 ms ahead about a millisecond
    later, 0.7 ms late, unless a datagram wakes it sooner.  A bulk receiver whose sender sent
    its whole window and waits (a send buffer full on loopback) then acknowledged ~0.8 ms late
    in every round trip: 16,000-byte datagrams, 256 KiB unacknowledged at most, one ACK per
    window, 110 MB/s where it acknowledged on time gave 205-220.  Sending it up to half a
    millisecond early instead halves the worst error; RFC 9000 13.2.1 allows acknowledging sooner.
    """
    space = quic._spaces.get(tls.Epoch.ONE_RTT)
    if space is not None and space.ack_at is not None and now < space.ack_at < now + margin:
        space.ack_at = now


def postpone_ack(quic: QuicConnection, at: float) -> None:
    """Let a pending 1-RTT ACK wait until ``at`` (unless a packet sent sooner carries it).

    aioquic sends the ACK of a received packet 1 ms later, in an ACK-only packet if
    nothing else goes out by then.  A client that just read a whole response, with no
    other request under way, sends its next request in a moment more often than not:
    postponed, the ACK rides with it (:func:`ack_with_next_packet`).  ``at`` must be
    within our ``max_ack_delay`` of the packet (RFC 9000 13.2.1; aioquic advertises 25 ms).
    """
    space = quic._spaces.get(tls.Epoch.ONE_RTT)
    if space is not None and space.ack_at is not None and space.ack_at < at:
        space.ack_at = at


def ack_deadline(quic: QuicConnection) -> float | None:
    """When the pending 1-RTT ACK is due (None: none pending, or no 1-RTT keys yet)."""
    space = quic._spaces.get(tls.Epoch.ONE_RTT)
    return None if space is None else space.ack_at


def hold_lone_ack(quic: QuicConnection, before: float | None, now: float, hold: float) -> None:
    """After a datagram was received at ``now``: let a lone packet's ACK wait up to ``hold`` seconds.

    aioquic makes every ACK due 1 ms after the first ack-eliciting packet it acknowledges.
    A request/response peer answers (or asks again) a little later than that when its
    loop is busy (many connections), so the ACK leaves alone and the data follows in a
    second packet: one more packet for both ends to build, send, read and decrypt, per
    request.  ``before`` is :func:`ack_deadline` from just before the datagram was processed:

    * no ACK was pending and this datagram made one due: it is a lone packet, its ACK
      waits up to ``hold`` (less than the max_ack_delay we announce, 25 ms, RFC 9000
      13.2.1), unless data leaves sooner and carries it (:func:`ack_with_next_packet`);
    * an ACK was pending and held: a second datagram arrived, so the ACK is due as aioquic
      would have it (1 ms after the first packet, or now if that passed), so a sender in
      bulk is acknowledged as often as before.
    """
    space = quic._spaces.get(tls.Epoch.ONE_RTT)
    if space is None or space.ack_at is None:
        return
    delay = quic._ack_delay
    if before is None:
        space.ack_at = now + max(hold, delay)
    elif space.ack_at > now + delay and hold > delay:
        # held: (first packet's arrival + hold) back to (first arrival + aioquic's delay)
        space.ack_at = max(now, space.ack_at - max(hold, delay) + delay)


def install_reset_tokens(
    quic: QuicConnection, token_for: Callable[[bytes], bytes], issued: Callable[[bytes], None] | None = None
) -> None:
    """Make ``token_for(cid)`` the stateless reset token of every connection id ``quic`` issues.

    aioquic draws each token with ``os.urandom(16)``: a node that restarts cannot
    know the tokens of its previous life, so it could not reset their connections.
    Replaces the token of the server's first connection id (sent in its transport
    parameters; a client's first one has none, RFC 9000 18.2) and wraps
    ``_replenish_connection_ids`` so that every later connection id (sent in
    NEW_CONNECTION_ID frames) gets its token before it is announced.  Must be
    called before the handshake (for a server: before its first datagram).
    ``token_for`` must return 16 bytes.

    ``issued(cid)`` is called once for each new connection id as soon as it exists, before
    any NEW_CONNECTION_ID frame announces it (aioquic's ``ConnectionIdIssued`` event
    comes only once the frame is built): whoever routes packets by connection id knows
    it before the peer can use it, and never answers such a packet with a reset.
    """
    first = quic._host_cids[0]
    if not quic._is_client:
        first.stateless_reset_token = _checked_token(token_for(first.cid))
    original = quic._replenish_connection_ids
    done = 0  # the highest sequence number handled (they only grow)

    def _replenish_connection_ids() -> None:
        nonlocal done
        original()
        for cid in quic._host_cids:
            if cid.sequence_number > done:  # new, so not yet announced: ours to set
                cid.stateless_reset_token = _checked_token(token_for(cid.cid))
                if issued is not None:
                    issued(cid.cid)
        done = max((cid.sequence_number for cid in quic._host_cids), default=done)

    quic._replenish_connection_ids = _replenish_connection_ids  # type: ignore[method-assign]


def _checked_token(token: bytes) -> bytes:
    if len(token) != 16:
        raise ValueError(f"a stateless reset token is 16 bytes, got {len(token)}")
    return token


def peer_reset_token(quic: QuicConnection) -> bytes | None:
    """The peer's stateless reset token for the connection id we send to now (None: none known).

    A server's first connection id has its token in the server's transport
    parameters; later ones in NEW_CONNECTION_ID frames.  A client's first
    connection id has none (the server then cannot recognise a reset from it).
    """
    token = quic._peer_cid.stateless_reset_token
    return token if token else None


def idle_timeout(quic: QuicConnection) -> float:
    """The idle timeout in force: the smaller of ours and the peer's, at least 3 PTOs (RFC 9000 10.1)."""
    return float(quic._idle_timeout())


def stream_bytes_sent(quic: QuicConnection, stream_id: int) -> int:
    """The highest offset of the stream sent so far (0: nothing of it ever left this host)."""
    stream = quic._streams.get(stream_id)
    return 0 if stream is None else int(stream.sender.highest_offset)


def pto_count(quic: QuicConnection) -> int:
    """Probe timeouts in a row without an acknowledgement (``QuicPacketRecovery._pto_count``)."""
    return int(quic._loss._pto_count)


def probe_now(quic: QuicConnection, now: float) -> bool:
    """Send a probe now and restart the probe timeout's backoff, as an ACK would (RFC 9002 6.2.1).

    For a path known to work again: after ``n`` probe timeouts without an ACK, the
    next probe waits ``2**n`` PTO periods (about 10 s after 20 s of silence), and the
    congestion window, full of packets lost to the outage, lets nothing else out
    meanwhile.  This does what that probe timeout would do, now: the oldest
    ack-eliciting packet is scheduled again and one probe datagram may exceed the
    congestion window; and the backoff starts from one period again.  Returns False,
    doing nothing, while the handshake is not confirmed (the handshake's own probes
    run) or without a backoff (``pto_count`` 0: nothing to end).
    """
    loss = quic._loss
    if not loss.handshake_confirmed or loss._pto_count == 0 or quic._state is not QuicConnectionState.CONNECTED:
        return False
    loss._pto_count = 0
    loss.reschedule_data(now=now)
    return True


def resend_handshake_now(quic: QuicConnection, now: float) -> None:
    """Retransmit the handshake's unacknowledged CRYPTO data in the next datagrams built.

    What aioquic's first probe timeout would do (``QuicPacketRecovery.reschedule_data``:
    the CRYPTO data is scheduled again and a probe is requested), but now and without
    counting a timeout (no backoff).  For a client whose first flight was padded to a size
    the path may not carry: after shrinking its datagrams it resends at once.
    """
    quic._loss.reschedule_data(now=now)


def capped_probe_time(quic: QuicConnection, max_interval: float) -> float | None:
    """When the probe timeout would fire were its backoff capped at ``max_interval`` seconds.

    While probe timeouts back off (``pto_count`` >= 1, handshake confirmed), the next one
    is ``2**pto_count`` probe periods after the last ack-eliciting packet.  This returns
    that packet's time plus ``max(max_interval, 2 x the probe period)`` when that is
    sooner (the owner then calls :func:`probe_now`), else None (no backoff, or QUIC's own
    timer comes first).  So a path that comes back after a long outage is probed within
    about ``max_interval``, as Linux lets ``tcp_rto_max_ms`` bound TCP's backoff.
    """
    loss = quic._loss
    if not loss.handshake_confirmed or loss._pto_count == 0 or quic._state is not QuicConnectionState.CONNECTED:
        return None
    pto = loss.get_probe_timeout()
    backed_off = pto * (2**loss._pto_count)
    interval = max(max_interval, 2 * pto)
    if interval >= backed_off:
        return None
    return float(loss._time_of_last_sent_ack_eliciting_packet) + interval


# -- admission: Initial packets checked before a connection exists ---------------------

_INITIAL_HASH = tls.cipher_suite_hash(INITIAL_CIPHER_SUITE)


def _initial_salt(version: int) -> bytes:
    return INITIAL_SALT_VERSION_2 if version == QuicProtocolVersion.VERSION_2 else INITIAL_SALT_VERSION_1


def initial_packet_decrypts(packet: bytes, encrypted_offset: int, version: int, destination_cid: bytes) -> bool:
    """True if a client's Initial ``packet`` decrypts with the Initial keys of ``destination_cid``.

    ``packet`` is the one long-header packet (``QuicHeader.packet_length`` bytes from
    its first byte, not the whole datagram); ``encrypted_offset`` is where its packet
    number starts (the buffer position after ``pull_quic_header``).  The Initial keys
    derive from the destination connection id (RFC 9001 section 5.2), so anyone can
    build a packet that decrypts; one that does not is junk, and checking it costs
    one key derivation and one AEAD open, a fraction of creating a connection.
    Only the receive direction's keys are derived (``CryptoContext.setup``).
    """
    secret = tls.hkdf_extract(_INITIAL_HASH, _initial_salt(version), destination_cid)
    ctx = CryptoContext()
    try:
        ctx.setup(
            cipher_suite=INITIAL_CIPHER_SUITE,
            secret=tls.hkdf_expand_label(_INITIAL_HASH, secret, b"client in", b"", _INITIAL_HASH.digest_size),
            version=version,
        )
        ctx.decrypt_packet(packet, encrypted_offset, 0)
    except (CryptoError, ValueError, IndexError):  # bad tag, or too short to sample the header
        return False
    # the server connection about to be created for this Initial derives the same keys
    # (they depend on the connection id and version alone): it takes these instead
    _KEPT_INITIAL_KEYS.clear()
    _KEPT_INITIAL_KEYS[(destination_cid, version)] = (secret, ctx)
    return True


#: the Initial keys of the last Initial that :func:`initial_packet_decrypts` accepted, by
#: (destination connection id, version): (initial secret, the client's direction set up).
#: One entry at most; the server connection created for that Initial takes it (see
#: :class:`_KeptInitialCryptoPair`), a later check replaces it.
_KEPT_INITIAL_KEYS: dict[tuple[bytes, int], tuple[bytes, CryptoContext]] = {}


class _KeptInitialCryptoPair(CryptoPair):
    """aioquic's ``CryptoPair`` that sets up a server's Initial keys from a decryption check.

    A server connection derives the Initial keys of the client's first packet again, right
    after :func:`initial_packet_decrypts` derived the client's direction to check that
    packet (an HKDF extract, an expand and the cipher contexts: about a tenth of a
    millisecond of every accepted connection).  The keys are a function of the connection id
    and version, so the checked direction is taken as is and only the server's direction is
    derived, from the same initial secret.
    """

    def setup_initial(self, cid: bytes, is_client: bool, version: int) -> None:
        kept = None if is_client else _KEPT_INITIAL_KEYS.pop((cid, version), None)
        if kept is None:
            super().setup_initial(cid, is_client, version)
            return
        secret, recv = kept
        recv._setup_cb, recv._teardown_cb = self.recv._setup_cb, self.recv._teardown_cb
        self.recv = recv
        self.send.setup(
            cipher_suite=INITIAL_CIPHER_SUITE,
            secret=tls.hkdf_expand_label(_INITIAL_HASH, secret, b"server in", b"", _INITIAL_HASH.digest_size),
            version=version,
        )


def reuse_checked_initial_keys() -> bool:
    """Make aioquic's connections take the Initial keys :func:`initial_packet_decrypts` derived
    (idempotent; applied when this module is imported).  Returns True if this call applied it."""
    if getattr(_quic_connection, "CryptoPair", None) is _KeptInitialCryptoPair:
        return False
    setattr(_quic_connection, "CryptoPair", _KeptInitialCryptoPair)  # noqa: B010 (not exported)
    return True


reuse_checked_initial_keys()


def encode_initial_close(
    *, version: int, client_destination_cid: bytes, client_source_cid: bytes, error_code: int, reason: str
) -> bytes:
    """A server Initial packet closing a connection that was never created (stateless).

    ``client_destination_cid`` / ``client_source_cid`` are the connection ids of the
    client's Initial: the keys derive from the first, the packet goes to the second.
    The client sees a transport CONNECTION_CLOSE with ``error_code`` and ``reason``
    (truncated to fit one small packet), so it fails at once with a reason instead of
    waiting for its handshake timeout.
    """
    crypto = CryptoPair()
    crypto.setup_initial(cid=client_destination_cid, is_client=False, version=version)
    builder = QuicPacketBuilder(
        host_cid=client_destination_cid,
        is_client=False,
        max_datagram_size=SMALLEST_DATAGRAM_SIZE,
        peer_cid=client_source_cid,
        version=version,
    )
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    phrase = reason.encode("utf-8", errors="replace")[:256]
    buf = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE, capacity=TRANSPORT_CLOSE_FRAME_CAPACITY + len(phrase))
    buf.push_uint_var(error_code)
    buf.push_uint_var(QuicFrameType.PADDING)
    buf.push_uint_var(len(phrase))
    buf.push_bytes(phrase)
    datagrams, _ = builder.flush()
    return datagrams[0]


def received_any_packet(quic: QuicConnection) -> bool:
    """True once a server connection processed a packet (``_state`` left FIRSTFLIGHT)."""
    return quic._state != QuicConnectionState.FIRSTFLIGHT


# -- QUIC DATAGRAM frames (RFC 9221), used by the relay ------------------------------

#: A 1-RTT packet's fixed header bytes besides the destination connection id: the first
#: byte and aioquic's 2-byte packet number (``packet_builder.PACKET_NUMBER_SEND_SIZE``).
_SHORT_HEADER_FIXED = 3
#: The AEAD tag of every QUIC packet (AES-GCM and ChaCha20-Poly1305 alike).
_AEAD_TAG_SIZE = 16


def _varint_size(value: int) -> int:
    return 1 if value < 0x40 else 2 if value < 0x4000 else 4 if value < 0x40000000 else 8


def max_datagram_frame_payload(quic: QuicConnection) -> int:
    """Largest payload :meth:`QuicConnection.send_datagram_frame` can carry now (0: none).

    aioquic checks nothing when queueing a DATAGRAM frame: one that exceeds the
    peer's ``max_datagram_frame_size`` transport parameter (private
    ``QuicConnection._remote_max_datagram_frame_size``) makes the peer close
    the connection, and one that does not fit an otherwise empty 1-RTT packet
    of the connection's current datagram size (``_max_datagram_size``, minus
    the header with the peer's connection id ``_peer_cid`` and the AEAD tag)
    stays first in ``_datagrams_pending`` forever, blocking every later one.
    Returns 0 before the handshake or when the peer did not enable datagrams.
    The value changes when the connection's datagram size does: check it
    before every send.
    """
    remote = quic._remote_max_datagram_frame_size
    if not remote:
        return 0
    room = int(quic._max_datagram_size) - _SHORT_HEADER_FIXED - len(quic._peer_cid.cid) - _AEAD_TAG_SIZE
    limit = min(room, int(remote))  # both bound the whole frame: type (1) + length + payload
    payload = limit - 1 - _varint_size(limit)
    while payload > 0 and 1 + _varint_size(payload) + payload > limit:
        payload -= 1
    return max(payload, 0)


def pending_datagram_frames(quic: QuicConnection) -> int:
    """DATAGRAM frames queued and not yet sent (``QuicConnection._datagrams_pending``).

    The queue is unbounded in aioquic; callers bound it by checking this first.
    """
    return len(quic._datagrams_pending)


# -- HTTP/3 (aioquic.h3), used by asgi_p2p.http ---------------------------------------


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


class HookedH3Connection(H3Connection):
    """aioquic's :class:`~aioquic.h3.connection.H3Connection` with what HTTP/3 here needs
    and aioquic has no API for.

    * ``static_qpack=True``: neither side's QPACK dynamic table is used.  The local
      SETTINGS announce ``QPACK_MAX_TABLE_CAPACITY`` and ``QPACK_BLOCKED_STREAMS`` 0
      (overrides ``_get_local_settings``), the decoder gets a zero-capacity table
      (``_decoder``) and the encoder ignores the peer's capacity (``_encoder``), so
      field sections use the static table and literals only.  The QPACK encoder and
      decoder streams then stay empty, and the two empty stream writes aioquic makes
      per field section are skipped (overrides ``_encode_headers`` and
      ``_decode_headers``).
    * ``on_control_data(data)``: called with every chunk of the peer's control stream,
      from its first byte (the stream type) on, after aioquic processed it (overrides
      ``_receive_stream_data_uni``).  aioquic 1.7.2 skips received GOAWAY frames; the
      callback can find them.  An :class:`~aioquic.h3.exceptions.H3Error` it raises
      closes the connection like one aioquic raises.
    * ``on_field_section(fields)``: called with every field section received (HEADERS
      frames: requests, responses, trailers) once QPACK decoded it and before aioquic
      checks it (overrides ``_decode_headers``); aioquic goes on with the list it returns.
      aioquic closes the whole connection for a ``content-length`` ``int()`` refuses; the
      server renames such fields to answer that one request 400 instead.
    * :meth:`send_goaway` (aioquic sends none), :meth:`end_local` and :attr:`is_done`
      (``_local_control_stream_id``, ``_stream``, ``_is_done``).
    """

    def __init__(
        self,
        quic: QuicConnection,
        *,
        static_qpack: bool = False,
        on_control_data: Callable[[bytes], None] | None = None,
        on_field_section: Callable[[list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]] | None = None,
    ) -> None:
        self._hooked_static_qpack = static_qpack
        self._hooked_on_control_data = on_control_data
        self._hooked_on_field_section = on_field_section
        super().__init__(quic, enable_webtransport=False)  # sends the SETTINGS: the flag must be set
        if static_qpack:
            self._decoder = pylsqpack.Decoder(0, 0)
            self._encoder = _StaticTableEncoder()  # type: ignore[assignment]

    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        if self._hooked_static_qpack:
            settings[Setting.QPACK_MAX_TABLE_CAPACITY] = 0
            settings[Setting.QPACK_BLOCKED_STREAMS] = 0
        return settings

    def _encode_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        if not self._hooked_static_qpack:
            return super()._encode_headers(stream_id, headers)
        encoder, frame_data = self._encoder.encode(stream_id, headers)
        if encoder and self._local_encoder_stream_id is not None:  # never without a dynamic table
            self._encoder_bytes_sent += len(encoder)
            self._quic.send_stream_data(self._local_encoder_stream_id, encoder)
        return frame_data

    def _decode_headers(self, stream_id: int, frame_data: bytes | None) -> list[tuple[bytes, bytes]]:
        headers = self._hooked_decode_headers(stream_id, frame_data)
        if self._hooked_on_field_section is not None:
            headers = self._hooked_on_field_section(headers)
        return headers

    def _hooked_decode_headers(self, stream_id: int, frame_data: bytes | None) -> list[tuple[bytes, bytes]]:
        if not self._hooked_static_qpack or frame_data is None:
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
        if stream.stream_type == StreamType.CONTROL and data and self._hooked_on_control_data is not None:
            self._hooked_on_control_data(data)
        return events

    def send_goaway(self, ident: int) -> None:
        """Send a GOAWAY frame on our control stream: requests on streams >= ``ident`` will
        not be processed (the server's meaning; a client's ``ident`` is a push id)."""
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
        """True once aioquic closed the connection for an HTTP/3 protocol error."""
        return bool(self._is_done)

    @property
    def stream_count(self) -> int:
        """HTTP/3 stream states held (``_stream``), control and QPACK streams included."""
        return len(self._stream)


def cache_frame_epochs() -> bool:
    """Make ``aioquic.quic.connection.EPOCHS`` answer from a cache (idempotent).

    ``QuicConnection.__init__`` builds its frame-handler table with 34 calls of it, each
    making a frozenset of packet-number spaces from a shortcut such as ``"IH01"``: about
    60 µs of every connection's creation, on the way of a server's first flight and of a
    client's first datagram.  The sets are immutable and depend on the shortcut alone.
    Applied when this module is imported.  Returns True if this call applied it.
    """
    epochs = _quic_connection.EPOCHS
    if hasattr(epochs, "cache_info"):
        return False
    _quic_connection.EPOCHS = functools.cache(epochs)
    return True


cache_frame_epochs()


class _X25519PrivateKeys:
    """``X25519PrivateKey`` as aioquic's TLS code sees it: ``generate()`` only (its one use)."""

    @staticmethod
    def generate() -> x25519.X25519PrivateKey:
        # 32 bytes of the kernel's CSPRNG (``secrets``, as SecretKey.generate draws a node key),
        # clamped by X25519 itself (RFC 7748 5); the simulator seeds ``secrets``
        return x25519.X25519PrivateKey.from_private_bytes(secrets.token_bytes(32))


class _X25519Module:
    """aioquic's TLS code's ``x25519`` module: the public key class itself, key generation above."""

    X25519PublicKey = x25519.X25519PublicKey
    X25519PrivateKey = _X25519PrivateKeys


def urandom_key_shares() -> bool:
    """X25519 key shares from ``secrets`` instead of OpenSSL's generator (idempotent).

    aioquic makes each handshake's X25519 key with ``X25519PrivateKey.generate()``, which
    draws from OpenSSL's random generator; the first draw of a process instantiates that
    generator (seeding it from the kernel, about 0.8 ms), and a dialing process makes no
    other use of it: its first Initial waited for that (``aioquic.tls``'s module global
    ``x25519``, read by ``Context._client_send_hello`` and ``_server_handle_hello``, becomes
    :class:`_X25519Module`).  The key is as random: ``secrets`` reads the kernel's CSPRNG,
    which is what OpenSSL seeds from.  Under the simulator the key shares then follow the
    seed, as the node keys and connection ids do.  Applied when this module is imported.
    Returns True if this call applied it.
    """
    if getattr(tls, "x25519") is _X25519Module:  # noqa: B009 - (not an exported name of aioquic.tls)
        return False
    setattr(tls, "x25519", _X25519Module)  # noqa: B010
    return True


urandom_key_shares()

_stream_hash_counter = itertools.count(1)


def patch_stream_hash() -> bool:
    """Give ``aioquic.quic.stream.QuicStream`` a stream-id based ``__hash__`` (idempotent).

    aioquic keeps streams in sets iterated in memory-address order, so two runs of one
    simulation diverge under loss unless a stream hashes by its id (crypto streams, whose
    id is None, by a process-local creation number).  Used by the simulator
    (:mod:`asgi_p2p.sim.determinism`).  Returns True if this call applied the patch,
    False if it was already in place.
    """
    if getattr(QuicStream, "_asgi_p2p_sim_patched", False):
        return False
    original_init: Callable[..., None] = QuicStream.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._asgi_p2p_hash_key = -next(_stream_hash_counter)

    def __hash__(self: Any) -> int:
        sid = self.stream_id
        return hash(sid if sid is not None else getattr(self, "_asgi_p2p_hash_key", 0))

    QuicStream.__init__ = __init__  # type: ignore[method-assign]
    QuicStream.__hash__ = __hash__  # type: ignore[method-assign]
    QuicStream._asgi_p2p_sim_patched = True  # type: ignore[attr-defined]
    return True


# -- TLS session resumption and 0-RTT ------------------------------------------------


#: a fixed date for tickets whose validity the endpoint checks itself (by a clock of its own:
#: ClockedSessionTicket and the server's opened tickets override what aioquic reads of them)
TICKET_EPOCH = _EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)


def cipher_suite(value: int) -> tls.CipherSuite:
    """The TLS cipher suite numbered ``value`` (ValueError if aioquic has none such)."""
    return tls.CipherSuite(value)


def _never() -> float:
    return 0.0


@dataclass
class ClockedSessionTicket(tls.SessionTicket):
    """A client's session ticket whose validity and age follow the node's clock, not the
    system clock aioquic reads (``SessionTicket.is_valid`` / ``obfuscated_age`` call
    ``utcnow()``): in the simulator time is virtual, and the age a ClientHello reports
    must agree with the server's clock for the server to accept 0-RTT data."""

    clock: Callable[[], float] = _never
    received_at: float = 0.0
    lifetime: float = 0.0

    @property
    def is_valid(self) -> bool:
        return 0.0 <= self.clock() - self.received_at <= self.lifetime

    @property
    def obfuscated_age(self) -> int:
        age_ms = max(0, int((self.clock() - self.received_at) * 1000))
        return (age_ms + self.age_add) % (1 << 32)


def clocked_ticket(ticket: tls.SessionTicket, clock: Callable[[], float]) -> ClockedSessionTicket:
    """``ticket`` (as aioquic's client built it on receipt) with its age counted by ``clock``
    from now on; its lifetime is the one the server announced."""
    lifetime = (ticket.not_valid_after - ticket.not_valid_before).total_seconds()
    return ClockedSessionTicket(
        age_add=ticket.age_add,
        cipher_suite=ticket.cipher_suite,
        not_valid_after=ticket.not_valid_after,
        not_valid_before=ticket.not_valid_before,
        resumption_secret=ticket.resumption_secret,
        server_name=ticket.server_name,
        ticket=ticket.ticket,
        max_early_data_size=ticket.max_early_data_size,
        other_extensions=list(ticket.other_extensions),
        clock=clock,
        received_at=clock(),
        lifetime=lifetime,
    )


@dataclass
class _OpenedTicket(tls.SessionTicket):
    """What the server hands aioquic for a ticket the endpoint opened (and checked) itself."""

    @property
    def is_valid(self) -> bool:
        return True


@dataclass(frozen=True)
class OfferedTicket:
    """The PSK a ClientHello offers, as the server's ``open_ticket`` callback sees it."""

    ticket: bytes  #: the ticket (PSK identity)
    obfuscated_age: int  #: the client's ticket age plus the ticket's age_add, mod 2**32, in ms
    client_random: bytes  #: the ClientHello's random (unique per ClientHello: a replay repeats it)
    alpn: str | None  #: the ALPN negotiated for this connection


@dataclass(frozen=True)
class ResumableSession:
    """What ``open_ticket`` returns to resume a session (None: a full handshake instead)."""

    resumption_secret: bytes
    cipher_suite: int
    #: accept the ClientHello's 0-RTT data (checked by aioquic's binder first: the
    #: ``accept_early`` callback runs only once the ClientHello proved the ticket's secret)
    accept_early: Callable[[], bool]


class _KeptHellos(threading.local):
    """The ClientHellos aioquic parsed in this thread while a server hook listens (else None)."""

    hellos: list[tls.ClientHello] | None = None


_KEPT_HELLOS = _KeptHellos()
_AIOQUIC_PULL_CLIENT_HELLO = tls.pull_client_hello


def _pull_client_hello(buf: Buffer) -> tls.ClientHello:
    """aioquic's ``pull_client_hello`` (which ``tls.Context._server_handle_hello`` calls by its
    module name); while a server connection of :func:`install_server_resumption` handles its
    ClientHello, the parse is kept for its ticket lookup (other callers: only a thread-local
    check)."""
    hello = _AIOQUIC_PULL_CLIENT_HELLO(buf)
    kept = _KEPT_HELLOS.hellos
    if kept is not None:
        kept.append(hello)
    return hello


tls.pull_client_hello = _pull_client_hello


def install_server_resumption(
    quic: QuicConnection,
    *,
    open_ticket: Callable[[OfferedTicket], ResumableSession | None],
    issue_ticket: Callable[[bytes | None, str, int, bytes, int], bytes | None],
    lifetime: int,
    rng: Any,
) -> None:
    """Stateless session tickets and 0-RTT on a server connection (call before its first datagram,
    after :func:`install_identity_hooks`).

    * Issuing (``tls.Context._server_handle_finished``): once the client's Finished is
      verified, aioquic would send a random 64-byte ticket it expects the application to
      store; instead ``issue_ticket(client_key, alpn, cipher_suite, resumption_secret,
      age_add)`` returns the ticket bytes (sealed state; None: no ticket).  ``client_key``
      is the raw Ed25519 key the client proved with its certificate, None when this
      connection itself was resumed (the caller knows the node from the ticket).  The
      NewSessionTicket (lifetime ``lifetime`` seconds, ``age_add`` drawn from ``rng``,
      early data allowed) is then pushed as aioquic would.
    * Resuming (``tls.Context.get_session_ticket_cb``, with aioquic's own parse of the
      ClientHello kept for the ticket age and random): ``open_ticket(offer)`` returns the session or None (a
      full handshake); raising a :class:`aioquic.tls.Alert` refuses the client.  0-RTT
      keys are installed (``update_traffic_key_cb`` for the 0-RTT epoch) only if the
      session's ``accept_early()`` says so; else EncryptedExtensions tells the client its
      early data was refused (``early_data_accepted``) and the 0-RTT packets are dropped.
    * A resumed handshake sends no CertificateRequest (RFC 8446 4.6.2), so the server
      does not wait for a client certificate (``_request_client_certificate`` stays set
      for full handshakes; ``_server_expect_finished`` is called instead).
    """
    original_initialize = quic._initialize

    def _initialize(peer_cid: bytes) -> None:
        original_initialize(peer_cid)
        ctx = quic.tls
        if ctx._is_client:
            _offer_one_key_share(ctx)
            return
        session: list[ResumableSession] = []
        orig_hello = ctx._server_handle_hello
        orig_finished = ctx._server_handle_finished
        orig_update = ctx.update_traffic_key_cb

        def server_hello(input_buf: Any, initial_buf: Any, handshake_buf: Any) -> None:
            # fetch (get_session_ticket_cb) reads the ticket age and the random from aioquic's
            # own parse of the ClientHello, kept meanwhile: no second parse per connection
            outer = _KEPT_HELLOS.hellos
            _KEPT_HELLOS.hellos = []
            try:
                orig_hello(input_buf, initial_buf, handshake_buf)
            finally:
                _KEPT_HELLOS.hellos = outer
            if ctx.session_resumed and ctx.state == tls.State.SERVER_EXPECT_CERTIFICATE:
                ctx._server_expect_finished()

        def fetch(identity: bytes) -> tls.SessionTicket | None:
            session.clear()
            hellos = _KEPT_HELLOS.hellos
            hello = hellos[-1] if hellos else None  # (aioquic asks only while parsing one)
            psk = hello.pre_shared_key if hello is not None else None
            if hello is None or psk is None or len(psk.identities) != 1 or psk.identities[0][0] != identity:
                return None
            found = open_ticket(OfferedTicket(identity, psk.identities[0][1], hello.random, ctx.alpn_negotiated))
            if found is None:
                return None
            session.append(found)
            return _OpenedTicket(
                age_add=0,
                cipher_suite=tls.CipherSuite(found.cipher_suite),
                not_valid_after=_EPOCH,
                not_valid_before=_EPOCH,
                resumption_secret=found.resumption_secret,
                server_name="",
                ticket=identity,
            )

        def update_key(direction: Any, epoch: Any, cipher_suite: Any, secret: bytes) -> None:
            if direction == tls.Direction.DECRYPT and epoch == tls.Epoch.ZERO_RTT:
                if not session or not session[0].accept_early():
                    ctx.early_data_accepted = False  # EncryptedExtensions, built next, says so
                    return
            orig_update(direction, epoch, cipher_suite, secret)

        def server_finished(input_buf: Any, output_buf: Any) -> None:
            orig_finished(input_buf, output_buf)  # no ticket: new_session_ticket_cb is None
            if ctx._psk_key_exchange_mode is None or ctx.alpn_negotiated is None:
                return  # the client does not resume sessions
            client_key = None if ctx.session_resumed else _raw_ed25519(ctx)
            nst = tls.NewSessionTicket(
                ticket_lifetime=lifetime,
                ticket_age_add=rng.getrandbits(32),
                ticket_nonce=b"",
                ticket=b"",
                max_early_data_size=MAX_EARLY_DATA,
            )
            schedule = ctx.key_schedule
            assert schedule is not None  # the handshake completed
            secret = ctx._build_session_ticket(nst, []).resumption_secret
            ticket = issue_ticket(
                client_key, ctx.alpn_negotiated, int(schedule.cipher_suite), secret, nst.ticket_age_add
            )
            if ticket is None:
                return
            nst.ticket = ticket
            tls.push_new_session_ticket(output_buf, nst)

        ctx._server_handle_hello = server_hello  # type: ignore[method-assign]
        ctx._server_handle_finished = server_finished  # type: ignore[method-assign]
        ctx.get_session_ticket_cb = fetch
        ctx.update_traffic_key_cb = update_key

    quic._initialize = _initialize  # type: ignore[method-assign]


def initialize_ahead(quic: QuicConnection) -> None:
    """Do now what a client connection's ``connect()`` does first: build its TLS context, the
    Initial keys for the destination connection id it chose, and its packet spaces
    (``QuicConnection._initialize``; the version is the configuration's first, as
    ``connect()`` sets it).

    For a connection made before it is dialed (an endpoint prepares its next resumed
    connection to a node while idle): ``connect()`` then only writes the ClientHello.
    Hooks that wrap the initialization (:func:`install_identity_hooks`) must be installed
    before.  An initialization for another connection id (after a Retry
    or a version negotiation) runs as usual.
    """
    if not quic._is_client or quic._connect_called:
        raise ValueError("only a client connection that is not connected yet can be initialized ahead")
    quic._version = quic._configuration.supported_versions[0]
    cid = quic._peer_cid.cid
    initialize = quic._initialize
    initialize(cid)
    pending = True

    def _initialize(peer_cid: bytes) -> None:
        nonlocal pending
        if pending and peer_cid == cid:  # connect(): done ahead
            pending = False
            return
        pending = False
        initialize(peer_cid)

    quic._initialize = _initialize  # type: ignore[method-assign]


def early_data_sendable(quic: QuicConnection) -> bool:
    """A client connection holds 0-RTT keys (it offered early data) and no 1-RTT keys yet
    (``QuicConnection._cryptos``): stream data written now leaves as 0-RTT."""
    cryptos = quic._cryptos
    return bool(cryptos[tls.Epoch.ZERO_RTT].send.is_valid() and not cryptos[tls.Epoch.ONE_RTT].send.is_valid())


# -- per-datagram CPU ------------------------------------------------------------------


#: aioquic's plain (not Int) enums, which it uses as dict keys and in sets on every datagram
#: (``QuicConnection._spaces``, ``._cryptos``, ``._crypto_streams``, ``END_STATES`` ...)
FAST_HASH_ENUMS: tuple[type[enum.Enum], ...] = (
    tls.Direction,
    tls.Epoch,
    tls.State,
    HeadersState,
    QuicConnectionState,
    QuicPacketType,
    QuicDeliveryState,
)


def _rehash(container: Any) -> None:
    """Store a dict's or set's entries again under their members' current hashes."""
    if isinstance(container, dict):
        items = list(container.items())
        container.clear()
        container.update(items)
    else:
        members = list(container)
        container.clear()
        container.update(members)


def fast_enum_hash() -> bool:
    """Give aioquic's plain enums (:data:`FAST_HASH_ENUMS`) C-level identity hashing (idempotent;
    applied on import, before any connection exists).

    ``enum.Enum.__hash__`` is Python code (``hash(self._name_)``) run on every lookup of
    ``QuicConnection._spaces[epoch]``, ``_cryptos[epoch]`` ... about 17 times per datagram.
    These enums compare by identity (they define no ``__eq__``), so ``object.__hash__`` is
    consistent with their equality; like the name's hash it differs between processes (no
    behaviour of aioquic depends on the order of a set of them).  The tables aioquic built
    on import with a member as a key (module globals: ``aioquic.quic.packet``'s long header
    type codes, ``aioquic.quic.logger.PACKET_TYPE_NAMES``, ``END_STATES`` ...) are re-stored
    under the new hash: a dict in place (its order kept), a frozenset rebuilt and put in
    place of the old one in every module holding it.  Returns True if this call applied the
    change.  A ``QuicConnection`` built before asgi_p2p was imported (by another library in
    the same process) keeps tables under the old hash and would no longer find its epochs:
    import asgi_p2p before creating any aioquic connection.
    """
    if all(cls.__hash__ is object.__hash__ for cls in FAST_HASH_ENUMS):
        return False
    for cls in FAST_HASH_ENUMS:
        if cls.__eq__ is not object.__eq__:  # pragma: no cover - an aioquic change
            log.warning("%s no longer compares by identity: aioquic's enums keep their hash", cls.__qualname__)
            return False
    classes = frozenset(FAST_HASH_ENUMS)
    for cls in FAST_HASH_ENUMS:
        cls.__hash__ = object.__hash__  # type: ignore[method-assign]
    _quic_connection.EPOCHS.cache_clear()  # type: ignore[attr-defined]  # frozensets of epochs
    namespaces = [
        vars(module)
        for name, module in list(sys.modules.items())
        if module is not None and name.partition(".")[0] in ("aioquic", "asgi_p2p")
    ]
    fresh: dict[int, frozenset[Any]] = {}
    for namespace in namespaces:
        for name, value in list(namespace.items()):
            if type(value) not in (dict, set, frozenset) or not any(type(key) in classes for key in value):
                continue
            if type(value) is frozenset:
                # frozenset(value) would return value itself
                namespace[name] = fresh.setdefault(id(value), frozenset(list(value)))
            else:
                _rehash(value)
    return True


fast_enum_hash()

_AIOQUIC_WRITE_APPLICATION = QuicConnection._write_application


def _write_application(
    self: QuicConnection, builder: QuicPacketBuilder, network_path: QuicNetworkPath, now: float
) -> None:
    """aioquic 1.7.2's ``QuicConnection._write_application``, line for line, except that its
    packet loop stops before starting a packet that would stay empty, that it writes all
    streams' MAX_STREAM_DATA in one call of :func:`install_receive_credit`'s writer, and
    that it keeps the streams queue when a pass served or discarded none (marked "asgi-p2p").

    aioquic's loop builds packets until one comes out empty: after a datagram's only packet
    it starts another (``start_packet``), asks every writer again (each stream's limits,
    the streams queue ...) and discards the empty packet.  Once a pass completed (no
    ``QuicPacketBuilderStop``), the next pass can only write what the pass left pending or
    changed, which is checked here: a discarded peer stream (its stream limit grew: MAX_STREAMS;
    discarding our own changes no frame), an ACK due, the frames whose writers
    clear their flag (HANDSHAKE_DONE, PATH_RESPONSE, RETIRE_CONNECTION_ID, STREAMS_BLOCKED,
    PING), CRYPTO or DATAGRAM data left, a stream served in this pass that would be served
    again (STOP_SENDING, RESET_STREAM, or STREAM data it may send).  A stream whose data
    all left (``QuicStreamSender._pending`` empty, no FIN pending) gets
    ``buffer_is_empty`` set, as the next pass's ``get_frame`` would (aioquic reads that
    flag of an application stream only to skip calling ``get_frame``).  A stream not served in
    the pass is not servable in the next (writing other streams changes none of its
    state); NEW_CONNECTION_ID and PATH_CHALLENGE writers mark what they sent; the limits'
    writers (MAX_DATA, MAX_STREAMS, MAX_STREAM_DATA) announce what they computed and compute
    the same again from the same state (aioquic's doubling of a limit is at most once:
    the peer can never have sent past the limit).  The next pass's pacing check still
    runs (it sets ``_pacing_at``).  Skipping an empty packet changes no packet or
    datagram: ``start_packet`` would end the previous packet, which ``flush`` does the same.
    """
    crypto_stream: QuicStream | None = None
    if self._cryptos[tls.Epoch.ONE_RTT].send.is_valid():
        crypto = self._cryptos[tls.Epoch.ONE_RTT]
        crypto_stream = self._crypto_streams[tls.Epoch.ONE_RTT]
        packet_type = QuicPacketType.ONE_RTT
    elif self._cryptos[tls.Epoch.ZERO_RTT].send.is_valid():
        crypto = self._cryptos[tls.Epoch.ZERO_RTT]
        packet_type = QuicPacketType.ZERO_RTT
    else:
        return
    space = self._spaces[tls.Epoch.ONE_RTT]
    pacer = self._loss._pacer
    done = False  # asgi-p2p: the next packet would be empty
    stream_limits = self.__dict__.get(_STREAM_LIMITS_ATTR)  # asgi-p2p: install_receive_credit's

    while True:
        # apply pacing, except if we have ACKs to send
        if space.ack_at is None or space.ack_at >= now:
            self._pacing_at = pacer.next_send_time(now=now)
            if self._pacing_at is not None:
                break
        if done:  # asgi-p2p
            break
        builder.start_packet(packet_type, crypto)

        # ACK, which a server sends for 0-RTT packets before the handshake
        # completes (RFC 9000 section 13.2.1), but not in 0-RTT packets.
        if packet_type == QuicPacketType.ONE_RTT and space.ack_at is not None and space.ack_at <= now:
            self._write_ack_frame(builder=builder, space=space, now=now)

        if self._handshake_complete:
            # PATH_CHALLENGE, while the active path is not validated, which only
            # happens on a server whose client migrated (RFC 9000 section 9.3).
            if not (network_path.is_validated or network_path.local_challenge_sent):
                self._write_path_challenge_frame(builder=builder, network_path=network_path)

                # RFC 9000 section 8.2.4 recommends abandoning path validation
                # after three times the larger of the current PTO and the PTO
                # of a new path, which uses the initial RTT.
                if network_path.validation_deadline is None:
                    network_path.validation_deadline = now + 3 * max(
                        self._loss.get_probe_timeout(),
                        2 * self._configuration.initial_rtt,
                    )

            # HANDSHAKE_DONE
            if self._handshake_done_pending:
                self._write_handshake_done_frame(builder=builder)
                self._handshake_done_pending = False

            # PATH RESPONSE
            while len(network_path.remote_challenges) > 0:
                self._write_path_response_frame(builder=builder, challenge=network_path.remote_challenges[0])
                network_path.remote_challenges.popleft()

            # NEW_CONNECTION_ID
            for connection_id in self._host_cids:
                if not connection_id.was_sent:
                    self._write_new_connection_id_frame(builder=builder, connection_id=connection_id)

            # RETIRE_CONNECTION_ID
            for sequence_number in self._retire_connection_ids[:]:
                self._write_retire_connection_id_frame(builder=builder, sequence_number=sequence_number)
                self._retire_connection_ids.pop(0)

            # STREAMS_BLOCKED
            if self._streams_blocked_pending:
                if self._streams_blocked_bidi:
                    self._write_streams_blocked_frame(
                        builder=builder,
                        frame_type=QuicFrameType.STREAMS_BLOCKED_BIDI,
                        limit=self._remote_max_streams_bidi,
                    )
                if self._streams_blocked_uni:
                    self._write_streams_blocked_frame(
                        builder=builder,
                        frame_type=QuicFrameType.STREAMS_BLOCKED_UNI,
                        limit=self._remote_max_streams_uni,
                    )
                self._streams_blocked_pending = False

            # MAX_DATA and MAX_STREAMS
            self._write_connection_limits(builder=builder, space=space)

        # stream-level limits
        if stream_limits is not None:  # asgi-p2p: install_receive_credit's, in one call
            stream_limits(builder, self._streams.values())
        else:
            for stream in self._streams.values():
                self._write_stream_limits(builder=builder, space=space, stream=stream)

        # PING (user-request)
        if self._ping_pending:
            self._write_ping_frame(builder, self._ping_pending)
            self._ping_pending.clear()

        # PING (probe)
        if self._probe_pending:
            self._write_ping_frame(builder, comment="probe")
            self._probe_pending = False

        # CRYPTO
        if crypto_stream is not None and not crypto_stream.sender.buffer_is_empty:
            self._write_crypto_frame(builder=builder, space=space, stream=crypto_stream)

        # DATAGRAM
        while self._datagrams_pending:
            try:
                self._write_datagram_frame(
                    builder=builder,
                    data=self._datagrams_pending[0],
                    frame_type=QuicFrameType.DATAGRAM_WITH_LENGTH,
                )
                self._datagrams_pending.popleft()
            except QuicPacketBuilderStop:
                break

        again = False  # asgi-p2p: a stream served in this pass would be served in the next
        limits_changed = False  # asgi-p2p: a discarded stream let the peer open another
        sent: set[QuicStream] = set()
        discarded: set[QuicStream] = set()
        try:
            for stream in self._streams_queue:
                # if the stream is finished, discard it
                if stream.receiver.is_finished and stream.sender.is_finished:  # asgi-p2p: is_finished, inlined
                    stream_id = stream.stream_id
                    assert stream_id is not None  # asgi-p2p: for mypy (queued streams have ids)
                    self._logger.debug("Stream %d discarded", stream_id)
                    self._streams.pop(stream_id)
                    if stream_is_client_initiated(stream_id) != self._is_client:
                        # Let the peer open a new stream for each one that
                        # closes (RFC 9000 section 4.6).
                        self._stream_limit(stream_id).value += 1
                        limits_changed = True  # asgi-p2p
                    discarded.add(stream)
                    continue

                served = False  # asgi-p2p
                if stream.receiver.stop_pending:
                    # STOP_SENDING
                    self._write_stop_sending_frame(builder=builder, stream=stream)
                    served = True

                if stream.sender.reset_pending:
                    # RESET_STREAM
                    self._write_reset_stream_frame(builder=builder, stream=stream)
                    served = True
                elif not stream.is_blocked and not stream.sender.buffer_is_empty:
                    # STREAM
                    used = self._write_stream_frame(
                        builder=builder,
                        space=space,
                        stream=stream,
                        max_offset=min(
                            stream.sender.highest_offset + self._remote_max_data - self._remote_max_data_used,
                            stream.max_stream_data_remote,
                        ),
                    )
                    self._remote_max_data_used += used
                    if used > 0:
                        sent.add(stream)
                    served = True
                if served and not again:  # asgi-p2p: the next pass's test of this stream
                    sender = stream.sender
                    if (
                        not (stream.is_blocked or sender.buffer_is_empty or sender.reset_pending)
                        and len(sender._pending) == 0
                        and not sender._pending_eof
                    ):
                        # all sent: the next pass's get_frame would return None and set this
                        sender.buffer_is_empty = True
                    again = (
                        stream.receiver.stop_pending
                        or sender.reset_pending
                        or not (stream.is_blocked or sender.buffer_is_empty)
                    )

        finally:
            # Make a new stream service order, putting served ones at the end.
            #
            # This method of updating the streams queue ensures that discarded
            # streams are removed and ones which sent are moved to the end even
            # if an exception occurs in the loop.
            if discarded or sent:  # asgi-p2p: else the same list again
                self._streams_queue = [
                    stream for stream in self._streams_queue if not (stream in discarded or stream in sent)
                ]
                self._streams_queue.extend(sent)

        if builder.packet_is_empty:
            # Discarded streams may let the peer open new ones, which the next
            # packet announces with MAX_STREAMS.
            if not discarded:
                break
        else:
            pacer.update_after_send(now=now)
            # asgi-p2p: what the next pass could write (see the docstring)
            done = not (
                again
                or limits_changed
                or (packet_type == QuicPacketType.ONE_RTT and space.ack_at is not None and space.ack_at <= now)
                or self._handshake_done_pending
                or network_path.remote_challenges
                or self._retire_connection_ids
                or self._streams_blocked_pending
                or self._ping_pending
                or self._probe_pending
                or self._datagrams_pending
                or (crypto_stream is not None and not crypto_stream.sender.buffer_is_empty)
            )


def fast_write_application(enabled: bool = True) -> None:
    """Install (or, ``enabled=False``, remove) :func:`_write_application` on ``QuicConnection``
    (applied on import; every connection then uses it)."""
    QuicConnection._write_application = (  # type: ignore[method-assign]
        _write_application if enabled else _AIOQUIC_WRITE_APPLICATION
    )


fast_write_application()

_AIOQUIC_HANDLE_PADDING = QuicConnection._handle_padding_frame


def _handle_padding_frame(self: QuicConnection, context: Any, frame_type: int, buf: Buffer) -> None:
    """aioquic 1.7.2's ``QuicConnection._handle_padding_frame``: skip the PADDING bytes (zeros)
    that follow, up to the first other byte or the end of the packet; the bytes are
    scanned in C instead of by a Python loop over each of them.

    A handshake's datagrams carrying Initial packets are padded to the full datagram size
    (RFC 9000 section 14.1): a client's second flight ends with a 1-RTT packet, so its
    padding is PADDING frames there, which aioquic's loop stepped through at about 20 ns a
    byte, 0.3 ms of every accepted connection at 16000-byte datagrams.
    """
    pos = buf.tell()
    rest = buf.data_slice(pos, buf.capacity)
    if rest == bytes(len(rest)):  # the usual case: padding to the end of the packet
        pos += len(rest)
    else:
        pos += len(rest) - len(rest.lstrip(b"\x00"))
    buf.seek(pos)
    if self._quic_logger is not None:
        context.quic_logger_frames.append(self._quic_logger.encode_padding_frame())


def fast_padding_frames(enabled: bool = True) -> None:
    """Install (or, ``enabled=False``, remove) :func:`_handle_padding_frame` on ``QuicConnection``
    (applied on import; a connection binds its frame handlers when it is created, so every
    connection created afterwards uses it)."""
    QuicConnection._handle_padding_frame = (  # type: ignore[method-assign]
        _handle_padding_frame if enabled else _AIOQUIC_HANDLE_PADDING
    )


fast_padding_frames()


# -- TLS message blocks without a generator each -------------------------------------------


class _PullBlock:
    """``with pull_block(buf, capacity) as length``: aioquic 1.7.2's ``tls.pull_block``
    (a length-prefixed block, AlertDecodeError unless the body read it exactly) as a class."""

    __slots__ = ("_buf", "_capacity", "_end")

    def __init__(self, buf: Buffer, capacity: int) -> None:
        self._buf = buf
        self._capacity = capacity

    def __enter__(self) -> int:
        buf = self._buf
        length = int.from_bytes(buf.pull_bytes(self._capacity), byteorder="big")
        self._end = buf.tell() + length
        return length

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None and self._buf.tell() != self._end:
            # There was trailing garbage or our parsing was bad.
            raise tls.AlertDecodeError("extra bytes at the end of a block")


class _PushBlock:
    """``with push_block(buf, capacity)``: aioquic 1.7.2's ``tls.push_block`` (the body's bytes,
    preceded by their length in ``capacity`` bytes) as a class."""

    __slots__ = ("_buf", "_capacity", "_start")

    def __init__(self, buf: Buffer, capacity: int) -> None:
        self._buf = buf
        self._capacity = capacity

    def __enter__(self) -> None:
        start = self._start = self._buf.tell() + self._capacity
        self._buf.seek(start)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:  # (an exception leaves the buffer as aioquic's does: no length written)
            buf, start, capacity = self._buf, self._start, self._capacity
            end = buf.tell()
            buf.seek(start - capacity)
            buf.push_bytes((end - start).to_bytes(capacity, byteorder="big"))
            buf.seek(end)


class _PushExtension(_PushBlock):
    """``with push_extension(buf, extension_type)``: aioquic 1.7.2's ``tls.push_extension``
    (the type, then the body as a block with a 2-byte length) as a class."""

    __slots__ = ("_type",)

    def __init__(self, buf: Buffer, extension_type: int) -> None:
        super().__init__(buf, 2)
        self._type = extension_type

    def __enter__(self) -> None:
        self._buf.push_uint16(self._type)
        super().__enter__()


class _PushMessage:
    """``with push_message(key_schedule, buf)``: aioquic 1.7.2's ``tls.push_message`` (the
    handshake message written in the body goes into the transcript hash) as a class."""

    __slots__ = ("_buf", "_key_schedule", "_start")

    def __init__(self, key_schedule: Any, buf: Buffer) -> None:
        self._key_schedule = key_schedule
        self._buf = buf

    def __enter__(self) -> None:
        self._start = self._buf.tell()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            buf = self._buf
            self._key_schedule.update_hash(buf.data_slice(self._start, buf.tell()))


#: aioquic's own block helpers (generator-based context managers), for :func:`fast_tls_blocks`
_AIOQUIC_TLS_BLOCKS = {
    "pull_block": tls.pull_block,
    "push_block": tls.push_block,
    "push_extension": tls.push_extension,
    "push_message": tls.push_message,
}
_FAST_TLS_BLOCKS = {
    "pull_block": _PullBlock,
    "push_block": _PushBlock,
    "push_extension": _PushExtension,
    "push_message": _PushMessage,
}


def fast_tls_blocks(enabled: bool = True) -> None:
    """Install (or, ``enabled=False``, remove) the class-based block helpers in ``aioquic.tls``
    (applied on import).  aioquic's are ``contextlib.contextmanager`` generators, one made and
    run per length-prefixed block: a server's handshake writes and reads about 65 of them
    (its ClientHello, its flight, the session ticket), about 1.8 µs each where a class takes
    0.9.  aioquic's TLS functions look them up in their module at each call, so every
    connection uses what is installed; the bytes are the same."""
    for name, helper in (_FAST_TLS_BLOCKS if enabled else _AIOQUIC_TLS_BLOCKS).items():
        setattr(tls, name, helper)


fast_tls_blocks()
