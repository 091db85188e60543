"""Self-signed Ed25519 certificates whose key is the node identity."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..identity import SecretKey

__all__ = ["node_certificate"]

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
