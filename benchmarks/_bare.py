"""Bare aioquic with the same mutual Ed25519 TLS as asgi-p2p: the baseline of the benchmarks.

Importing ``asgi_p2p`` changes aioquic for the whole process (``aioquic_compat`` replaces
``QuicConnection._write_application`` and ``._handle_padding_frame`` and ``tls.push_block`` and
its kin, caches ``EPOCHS`` and rehashes aioquic's enums), so the bare side of a benchmark runs
in processes that never import it: this module uses aioquic, cryptography and the standard
library only.  The parent makes the node certificates (with asgi-p2p's ``node_certificate``),
writes them as PEM files (:func:`write_credentials`) and hands the paths over; the bare child
calls :func:`unpatched` at the end of its run and prints its line, which the parent checks
(:func:`check_unpatched`).
"""

from __future__ import annotations

import enum
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aioquic import tls
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import connection as _aioquic_connection
from aioquic.quic.configuration import QuicConfiguration

ALPN_BARE = "bench/1"

#: the start of the line a bare child prints once it checked it ran unpatched aioquic
UNPATCHED = "bare aioquic unpatched:"


@dataclass(frozen=True)
class Credentials:
    """A certificate and its private key as PEM files (what a bare child is handed)."""

    certificate: str
    private_key: str


def write_credentials(certificate: Any, private_key: Any, directory: str | Path, name: str) -> Credentials:
    """Write an ``x509.Certificate`` and its key (e.g. ``node_certificate(key)``, ``key.private_key``) as PEM."""
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = Path(directory, f"{name}.crt"), Path(directory, f"{name}.key")
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Credentials(str(cert_path), str(key_path))


def bare_config(is_client: bool, credentials: Credentials, mds: int) -> QuicConfiguration:
    """A bare aioquic configuration with ``credentials`` and ``mds``-byte datagrams."""
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN_BARE],
        verify_mode=0,  # ssl.CERT_NONE
        max_datagram_size=mds,
    )
    config.load_cert_chain(credentials.certificate, credentials.private_key)
    return config


def request_client_certificate(protocol: QuicConnectionProtocol) -> None:
    """Make a bare aioquic server protocol ask for a client certificate (mutual TLS, as asgi-p2p does)."""
    quic = protocol._quic
    original = quic._initialize

    def _initialize(peer_cid: bytes) -> None:
        original(peer_cid)
        quic.tls._request_client_certificate = True

    quic._initialize = _initialize  # type: ignore[method-assign]


def unpatched() -> str:
    """Check that this process ran aioquic as shipped; return the line saying so (AssertionError if not).

    Called by a bare child at the end of its run: ``asgi_p2p`` was never imported, and none of
    the changes its ``aioquic_compat`` makes on import is in place.
    """
    imported = sorted(name for name in sys.modules if name.partition(".")[0] == "asgi_p2p")
    assert not imported, f"the bare aioquic process imported {imported[:3]}"
    write = _aioquic_connection.QuicConnection._write_application
    assert write.__module__ == "aioquic.quic.connection", f"QuicConnection._write_application from {write.__module__}"
    assert not hasattr(_aioquic_connection.EPOCHS, "cache_info"), "aioquic's EPOCHS is cached"
    assert tls.Epoch.__hash__ is enum.Enum.__hash__, "aioquic's enums hash by identity"
    hello = tls.pull_client_hello
    assert hello.__module__ == "aioquic.tls", f"tls.pull_client_hello from {hello.__module__}"
    block = tls.push_block
    assert block.__module__ == "aioquic.tls", f"tls.push_block from {block.__module__}"
    padding = _aioquic_connection.QuicConnection._handle_padding_frame
    where = padding.__module__
    assert where == "aioquic.quic.connection", f"QuicConnection._handle_padding_frame from {where}"
    return f"{UNPATCHED} asgi_p2p never imported, QuicConnection._write_application from {write.__module__}"


def run_bare_child(script: str | Path, flag: str, job: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """Run ``script flag JOB`` (a bare aioquic process: JOB as JSON) and wait for it.

    RuntimeError with the end of its stderr if it failed; else the finished process, whose
    stdout carries its result and whose stderr carries its :func:`unpatched` line.
    """
    proc = subprocess.run(
        [sys.executable, str(Path(script).resolve()), flag, json.dumps(job)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the bare aioquic child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def check_unpatched(stderr: str, what: str) -> str:
    """The line a bare child printed by :func:`unpatched` (RuntimeError if it printed none)."""
    for line in stderr.splitlines():
        if line.startswith(UNPATCHED):
            return line
    raise RuntimeError(f"{what} did not report unpatched aioquic:\n{stderr[-2000:]}")
