"""The relay over TCP: TLS 1.3, an HTTP/1.1 Upgrade to a WebSocket, then the relay frames.

For networks that block outbound UDP: the relay also listens on TCP
(``asgi-p2p relay --tcp-port``), and a relay client whose QUIC connection to the
relay does not come up reaches it there instead (see
:class:`~asgi_p2p.relay.client.RelayClient`).  The WebSocket (the ``websockets``
library, server and client) passes HTTP proxies and middleboxes; the client
honours ``HTTPS_PROXY`` (an HTTP CONNECT proxy) the way ``websockets`` does.

After the Upgrade (path :data:`WS_PATH`, subprotocol :data:`WS_SUBPROTOCOL`)
every WebSocket message is binary and carries exactly one message::

    relay -> client  HELLO  version (1) + 'H' + nonce (32) + relay signature (64)
    client -> relay  AUTH   version (1) + 'A' + client NodeId (32) + client signature (64)
    then, both ways, one relay frame (asgi_p2p.relay.proto) per message

The relay signs ``SERVER_CONTEXT + nonce + sha256(relay certificate)`` with its
node key, and the client signs ``CLIENT_CONTEXT + nonce + relay NodeId +
sha256(relay certificate) + client NodeId`` with its own.  The client checks the
relay's signature against the NodeId in the relay URL and the certificate its
TLS session got, so a relay's certificate may be self-signed from its node key
(the default) or any certificate an operator gives it.  Python's ``ssl`` module
offers no TLS exporter (RFC 5705/8446 7.5), so the proofs are bound to the TLS
session through the certificate fingerprint and a fresh nonce instead: a
man in the middle with another certificate cannot use either proof, and a proof
never verifies for a different nonce.

Parsing is strict (:func:`parse_hello`, :func:`parse_auth`): anything else raises
:class:`~asgi_p2p.errors.ProtocolError` saying what was wrong.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import ssl
import tempfile
from collections import deque
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from websockets.asyncio.connection import Connection

from ..endpoint.tls import node_certificate
from ..errors import ProtocolError
from ..identity import NodeId, SecretKey
from .proto import FORWARD_OVERHEAD

__all__ = [
    "CLIENT_CONTEXT",
    "NONCE_SIZE",
    "SERVER_CONTEXT",
    "TCP_MAX_FRAME",
    "TCP_MAX_PACKET",
    "TCP_VERSION",
    "WRITE_BATCH",
    "WS_PATH",
    "WS_SUBPROTOCOL",
    "Auth",
    "Hello",
    "certificate_fingerprint",
    "client_tls_context",
    "new_nonce",
    "parse_auth",
    "parse_hello",
    "send_batch",
    "server_tls_context",
]

TCP_VERSION = 1
WS_PATH = "/asgi-p2p/relay/1"
WS_SUBPROTOCOL = "asgi-p2p-relay-1"
NONCE_SIZE = 32
_SIG = 64
_HELLO = ord("H")
_AUTH = ord("A")
SERVER_CONTEXT = b"asgi-p2p relay over tcp v1: relay proof\x00"
CLIENT_CONTEXT = b"asgi-p2p relay over tcp v1: client proof\x00"
#: The largest QUIC packet a client sends through the relay over TCP (the smallest QUIC datagram:
#: it fits every destination's relay connection, UDP or TCP).
TCP_MAX_PACKET = 1200
#: The largest WebSocket message either side accepts: a relay frame around a packet of up to
#: 16 KiB (QUIC packets are far smaller; ERROR frames too).  Larger messages close the connection.
TCP_MAX_FRAME = 16384 + FORWARD_OVERHEAD
#: The most bytes of queued frames :func:`send_batch` hands TLS in one write.
WRITE_BATCH = 65_536


async def send_batch(ws: Connection, queue: deque[bytes], limit: int = WRITE_BATCH) -> int:
    """Send the frames waiting in ``queue`` (up to ``limit`` bytes of them, at least one), each its own
    WebSocket message, in ONE write to the TLS transport; returns the frame bytes taken from ``queue``.

    ``ws.send()`` writes every message on its own: a TLS record and, on an idle socket, a
    ``send()`` system call per relayed packet.  The frames a burst of packets leaves queued
    (the relay forwards a whole receive batch before its writer runs) go out together instead.
    Waits while the connection's write buffer is over its limit, as ``ws.send()`` does; raises
    :class:`websockets.exceptions.ConnectionClosed` if the connection is closed.
    """
    taken = 0
    async with ws.send_context():
        while queue and (taken == 0 or taken + len(queue[0]) <= limit):
            frame = queue.popleft()
            taken += len(frame)
            ws.protocol.send_binary(frame)
        chunks = ws.protocol.data_to_send()
        data = b"".join(chunks)
        if data:
            ws.transport.write(data)
        if not all(chunks):  # an end-of-stream marker (the protocol is closing): as ws.send_data() does
            ws.transport.close()
    return taken


def certificate_fingerprint(der: bytes) -> bytes:
    """SHA-256 of a DER certificate: what the proofs bind to."""
    return hashlib.sha256(der).digest()


def new_nonce() -> bytes:
    """A fresh unpredictable nonce (key material: from ``secrets``, never a simulated rng)."""
    return secrets.token_bytes(NONCE_SIZE)


def _server_message(nonce: bytes, fingerprint: bytes) -> bytes:
    return SERVER_CONTEXT + nonce + fingerprint


def _client_message(nonce: bytes, relay: NodeId, fingerprint: bytes, client: NodeId) -> bytes:
    return CLIENT_CONTEXT + nonce + relay.to_bytes() + fingerprint + client.to_bytes()


@dataclass(frozen=True)
class Hello:
    """Relay -> client: a fresh nonce and the relay's proof of its node key."""

    nonce: bytes
    signature: bytes

    @classmethod
    def create(cls, key: SecretKey, fingerprint: bytes, nonce: bytes | None = None) -> Hello:
        nonce = new_nonce() if nonce is None else nonce
        return cls(nonce, key.sign(_server_message(nonce, fingerprint)))

    def encode(self) -> bytes:
        return bytes((TCP_VERSION, _HELLO)) + self.nonce + self.signature

    def verify(self, relay: NodeId, fingerprint: bytes) -> bool:
        """True if the relay ``relay`` signed this nonce for the certificate with ``fingerprint``."""
        return relay.verify(self.signature, _server_message(self.nonce, fingerprint))


@dataclass(frozen=True)
class Auth:
    """Client -> relay: the client's node id and its proof, bound to the nonce, relay and certificate."""

    node: NodeId
    signature: bytes

    @classmethod
    def create(cls, key: SecretKey, hello: Hello, relay: NodeId, fingerprint: bytes) -> Auth:
        return cls(key.node_id, key.sign(_client_message(hello.nonce, relay, fingerprint, key.node_id)))

    def encode(self) -> bytes:
        return bytes((TCP_VERSION, _AUTH)) + self.node.to_bytes() + self.signature

    def verify(self, nonce: bytes, relay: NodeId, fingerprint: bytes) -> bool:
        """True if :attr:`node` signed ``nonce`` for ``relay`` and its certificate."""
        return self.node.verify(self.signature, _client_message(nonce, relay, fingerprint, self.node))


def _check_header(data: object, kind: int, size: int, what: str) -> bytes:
    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError(f"relay-over-TCP {what}: expected a binary WebSocket message, got text")
    if len(data) < 2:
        raise ProtocolError(f"relay-over-TCP {what}: truncated ({len(data)} bytes)")
    if data[0] != TCP_VERSION:
        raise ProtocolError(f"relay-over-TCP {what}: unsupported version {data[0]} (this node speaks {TCP_VERSION})")
    if data[1] != kind:
        raise ProtocolError(f"relay-over-TCP {what}: expected message type {chr(kind)!r}, got {data[1]}")
    if len(data) != size:
        raise ProtocolError(f"relay-over-TCP {what}: {len(data)} bytes, expected {size}")
    return bytes(data[2:])


def parse_hello(data: object) -> Hello:
    """Parse the relay's HELLO; raises :class:`ProtocolError` if it is not one."""
    body = _check_header(data, _HELLO, 2 + NONCE_SIZE + _SIG, "HELLO")
    return Hello(body[:NONCE_SIZE], body[NONCE_SIZE:])


def parse_auth(data: object) -> Auth:
    """Parse a client's AUTH; raises :class:`ProtocolError` if it is not one."""
    body = _check_header(data, _AUTH, 2 + 32 + _SIG, "AUTH")
    return Auth(NodeId(body[:32]), body[32:])


def server_tls_context(
    key: SecretKey, certfile: str | None = None, keyfile: str | None = None
) -> tuple[ssl.SSLContext, bytes]:
    """The relay's TLS 1.3 server context and its certificate's fingerprint.

    The certificate is ``certfile``/``keyfile`` (PEM; the first certificate of
    ``certfile`` is the relay's) if given, else self-signed from ``key``.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if certfile is not None:
        ctx.load_cert_chain(certfile, keyfile)
        with open(certfile, "rb") as f:
            der = x509.load_pem_x509_certificate(f.read()).public_bytes(serialization.Encoding.DER)
        return ctx, certificate_fingerprint(der)
    if keyfile is not None:
        raise ValueError("a TLS key file needs its certificate file")
    certificate = node_certificate(key)
    cert = certificate.public_bytes(serialization.Encoding.PEM)
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # ssl loads certificates only from files: a private directory that is gone once loaded
    with tempfile.TemporaryDirectory(prefix="asgi-p2p-relay-tls-") as tmp:
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        with open(cert_path, "wb") as f:
            f.write(cert)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx, certificate_fingerprint(certificate.public_bytes(serialization.Encoding.DER))


def client_tls_context() -> ssl.SSLContext:
    """The client's TLS 1.3 context: the relay is authenticated by its HELLO signature, not by a CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
