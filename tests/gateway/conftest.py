"""A peer serving an app over HTTP/3 and a gateway (uvicorn on loopback) reaching it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asgi_p2p import Node, SecretKey
from asgi_p2p.gateway.gateway import Gateway, GatewayServer, Lookup, Routing
from asgi_p2p.http import H3Server
from asgi_p2p.identity import NodeId


@dataclass
class Peer:
    node: Node
    server: H3Server

    @property
    def node_id(self) -> NodeId:
        return self.node.node_id


@asynccontextmanager
async def peer(app: Callable[..., Awaitable[None]] | Any, **bind: Any) -> AsyncIterator[Peer]:
    """A node serving ``app`` over HTTP/3 on loopback."""
    node = await Node.bind(**bind)
    server = H3Server(app, node)
    await server.startup()
    try:
        yield Peer(node, server)
    finally:
        await server.shutdown()
        await node.close()


@asynccontextmanager
async def gateway(
    routing: Routing,
    *,
    lookup: Lookup | None = None,
    key: SecretKey | None = None,
    opt_in: bool = False,
    response_timeout: float | None = 60.0,
    **server_kwargs: Any,
) -> AsyncIterator[GatewayServer]:
    """A gateway node and its HTTP server on 127.0.0.1 (any free port); ``opt_in``: check nodes opted in."""
    node = await Node.bind(key)
    probe = await Node.bind() if opt_in else None
    gw = Gateway(
        node, routing, lookup=lookup, connect_timeout=5.0, response_timeout=response_timeout, opt_in_probe=probe
    )
    server = GatewayServer(gw, "127.0.0.1", 0, **server_kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        await node.close()
        if probe is not None:
            await probe.close()


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for gw.example and *.gw.example, and its key (PEM files in ``tmp``)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw.example")])
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("gw.example"), x509.DNSName("*.gw.example")]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path
