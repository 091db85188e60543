"""Bare aioquic with the same mutual Ed25519 TLS as asgi-p2p: the baseline of the benchmarks."""

from __future__ import annotations

from aioquic.asyncio import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration

from asgi_p2p.endpoint.tls import node_certificate
from asgi_p2p.identity import SecretKey

ALPN_BARE = "bench/1"


def bare_config(is_client: bool, key: SecretKey, mds: int) -> QuicConfiguration:
    """A bare aioquic configuration with ``key``'s certificate and ``mds``-byte datagrams."""
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN_BARE],
        certificate=node_certificate(key),
        private_key=key.private_key,
        verify_mode=0,  # ssl.CERT_NONE
        max_datagram_size=mds,
    )


def request_client_certificate(protocol: QuicConnectionProtocol) -> None:
    """Make a bare aioquic server protocol ask for a client certificate (mutual TLS, as asgi-p2p does)."""
    quic = protocol._quic
    original = quic._initialize

    def _initialize(peer_cid: bytes) -> None:
        original(peer_cid)
        quic.tls._request_client_certificate = True

    quic._initialize = _initialize  # type: ignore[method-assign]
