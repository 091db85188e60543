"""Self-signed Ed25519 certificates whose key is the node identity; a process's first handshakes."""

from __future__ import annotations

import copy
import datetime
import gc
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted
from aioquic.quic.packet import pull_quic_header
from cryptography import x509
from cryptography.x509.oid import NameOID

from .. import aioquic_compat as hooks
from ..identity import SecretKey

__all__ = ["handshakes_in_memory", "node_certificate", "warm_up_handshakes"]

# Fixed validity: peers check the key, never dates (verify_mode=CERT_NONE), and a
# fixed value keeps certificates independent of the wall clock.
_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC)


def node_certificate(secret_key: SecretKey) -> x509.Certificate:
    """A self-signed certificate for ``secret_key`` (subject CN = the node id)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(secret_key.node_id))])
    public = secret_key.private_key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(int.from_bytes(secret_key.node_id.to_bytes()[:8], "big") >> 1 or 1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(str(secret_key.node_id))]), critical=False)
        .sign(secret_key.private_key, None)
    )


# -- the process's first handshake ---------------------------------------------------------

_WARM_ALPN = "asgi-p2p warm-up"
_WARM_ADDR = ("127.0.0.1", 9)
_warmed = False


def _handshake(client: QuicConnection, server_config: QuicConfiguration, store: dict[bytes, Any]) -> bool:
    """Carry datagrams between ``client`` and a new server connection in memory until both
    are quiet; True if the client's handshake completed."""
    now = 0.0
    server: QuicConnection | None = None
    for _ in range(8):  # a handshake takes 2 or 3 flights
        now += 0.01  # a round trip: aioquic paces what it sends on its clock
        moved = False
        for data, _addr in client.datagrams_to_send(now):
            if server is None:
                header = pull_quic_header(hooks.Buffer(data=data))
                server = QuicConnection(
                    configuration=server_config,
                    original_destination_connection_id=header.destination_cid,
                    session_ticket_fetcher=lambda identity: store.pop(identity, None),
                    session_ticket_handler=lambda t: store.__setitem__(t.ticket, t),
                )
            server.receive_datagram(data, _WARM_ADDR, now)
            moved = True
        if server is None:
            return False
        for data, _addr in server.datagrams_to_send(now):
            client.receive_datagram(data, _WARM_ADDR, now)
            moved = True
        if not moved:
            break
    done = False
    while (event := client.next_event()) is not None:
        done |= isinstance(event, HandshakeCompleted)
    return done


def handshakes_in_memory(certificate: x509.Certificate, secret_key: SecretKey) -> tuple[bool, bool]:
    """Two TLS 1.3 handshakes between aioquic connections in memory, served with ``certificate``
    and ``secret_key``: a full one, then one resumed with its session ticket and carrying early
    data.  Returns whether each completed.  Draws from the system's entropy (aioquic's)."""
    server_config = QuicConfiguration(
        is_client=False,
        alpn_protocols=[_WARM_ALPN],
        certificate=certificate,
        private_key=secret_key.private_key,
    )
    client_config = QuicConfiguration(is_client=True, alpn_protocols=[_WARM_ALPN], verify_mode=0)
    store: dict[bytes, Any] = {}  # the server's tickets by identity
    tickets: list[Any] = []  # aioquic.tls.SessionTicket (a name for aioquic_compat only)
    client = QuicConnection(configuration=client_config, session_ticket_handler=tickets.append)
    client.connect(_WARM_ADDR, 0.0)
    full = _handshake(client, server_config, store)
    if not tickets:
        return full, False
    resumed_config = copy.copy(client_config)
    resumed_config.session_ticket = tickets[-1]
    client = QuicConnection(configuration=resumed_config)
    client.connect(_WARM_ADDR, 0.0)
    client.send_stream_data(client.get_next_available_stream_id(), b"GET /", end_stream=True)  # 0-RTT
    return full, _handshake(client, server_config, store) and client.tls.session_resumed


def warm_up_handshakes(certificate: x509.Certificate, secret_key: SecretKey) -> bool:
    """Run :func:`handshakes_in_memory` once per process; True if this call ran them.

    A process's first handshake otherwise pays one-time costs on the clock of a waiting
    peer: loading parts of the crypto library, its first use of each algorithm (X25519,
    Ed25519, AES-GCM, HKDF), aioquic's TLS code run for the first time.  Warmed up when
    it starts serving (``Endpoint.warm_up``), a node restarted under live clients answers
    their first resumed handshake about 1 ms of CPU sooner (docs/benchmarks.md, "Restart").
    Costs 5-10 ms of CPU, once (with the collection below, 20-40 ms: not for a process
    that only dials, whose first request would wait for it).

    Then one full garbage collection: a new process holds every object its imports made
    (the crypto library, aioquic, the app), all grown into the oldest generation since
    the last full collection, and CPython runs the next one once enough of them pile up,
    which a server's first connection's allocations often tip over: 10-20 ms of one
    peer's first flight spent traversing the whole start-up heap.  Collected here, the
    next full collection waits until the heap grows by a quarter again.
    """
    global _warmed
    if _warmed:
        return False
    _warmed = True
    handshakes_in_memory(certificate, secret_key)
    gc.collect()
    return True
