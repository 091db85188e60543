"""Node identity: Ed25519 secret keys, node ids, their text forms and key files.

A node is named by its Ed25519 public key (:class:`NodeId`).  The text form is
52 characters of lowercase z-base-32, which fits a DNS label and therefore works
as the host of an ``https://`` URL; parsing also accepts 64 hex characters.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import InvalidConfiguration, InvalidNodeId

__all__ = ["NodeAddr", "NodeId", "SecretKey", "load_or_create_key", "zbase32_decode", "zbase32_encode"]

_ZB32 = "ybndrfg8ejkmcpqxot1uwisza345h769"
_ZB32_INDEX = {c: i for i, c in enumerate(_ZB32)}


def zbase32_encode(data: bytes) -> str:
    """Encode bytes as z-base-32 (no padding, lowercase)."""
    nbits = len(data) * 8
    value = int.from_bytes(data, "big")
    nchars = (nbits + 4) // 5
    value <<= nchars * 5 - nbits
    return "".join(_ZB32[(value >> (5 * (nchars - 1 - i))) & 31] for i in range(nchars))


@functools.lru_cache(maxsize=512)
def _node_text(raw: bytes) -> str:
    """A node id's z-base-32 form, shared by the :class:`NodeId` instances of one key (a node
    makes one per connection from the key its peer proved; logs name the node in full)."""
    return zbase32_encode(raw)


def zbase32_decode(text: str, nbytes: int) -> bytes:
    """Decode z-base-32 text of exactly ``nbytes`` bytes; raises ValueError."""
    nchars = (nbytes * 8 + 4) // 5
    if len(text) != nchars:
        raise ValueError(f"expected {nchars} z-base-32 characters, got {len(text)}")
    value = 0
    for c in text:
        try:
            value = (value << 5) | _ZB32_INDEX[c]
        except KeyError:
            raise ValueError(f"{c!r} is not a z-base-32 character") from None
    extra = nchars * 5 - nbytes * 8
    if value & ((1 << extra) - 1):
        raise ValueError("non-zero padding bits")
    return (value >> extra).to_bytes(nbytes, "big")


@functools.total_ordering
class NodeId:
    """The public Ed25519 key naming a node (32 bytes)."""

    __slots__ = ("_bytes", "_hash", "_text")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise InvalidNodeId(raw, "expected 32 bytes")
        raw = bytes(raw)
        if len(raw) != 32:
            raise InvalidNodeId(raw, f"expected 32 bytes, got {len(raw)}")
        self._bytes = raw
        self._hash = hash(raw)
        self._text: str | None = None  # the z-base-32 form, made on first use (logs name nodes often)

    @classmethod
    def parse(cls, text: str) -> NodeId:
        """Parse 52-char z-base-32 or 64-char hex; raises :class:`InvalidNodeId`."""
        if not isinstance(text, str):
            raise InvalidNodeId(text, "expected a string")
        s = text.strip().lower()
        try:
            if len(s) == 64:
                return cls(bytes.fromhex(s))
            if len(s) == 52:
                return cls(zbase32_decode(s, 32))
        except ValueError as exc:
            raise InvalidNodeId(text, str(exc)) from None
        raise InvalidNodeId(text, "expected 52 z-base-32 or 64 hex characters")

    def __bytes__(self) -> bytes:
        return self._bytes

    def to_bytes(self) -> bytes:
        return self._bytes

    def public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self._bytes)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True if ``signature`` is this node's Ed25519 signature over ``data``."""
        from cryptography.exceptions import InvalidSignature

        try:
            self.public_key().verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True

    def fmt_short(self) -> str:
        """First 5 bytes as 10 hex characters, for logs."""
        return self._bytes[:5].hex()

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = self._text = _node_text(self._bytes)
        return text

    def __repr__(self) -> str:
        return f"NodeId({self.fmt_short()})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NodeId):
            return NotImplemented
        return self._bytes == other._bytes

    def __lt__(self, other: NodeId) -> bool:
        if not isinstance(other, NodeId):
            return NotImplemented
        return self._bytes < other._bytes

    def __hash__(self) -> int:
        return self._hash


class SecretKey:
    """An Ed25519 private key; its public half is the node's :class:`NodeId`."""

    __slots__ = ("_key", "_node_id")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._node_id = NodeId(pub)

    @classmethod
    def generate(cls) -> SecretKey:
        """A new random key, from the operating system's CSPRNG (``secrets``).

        Inside a simulation ``secrets`` draws from the seed, so generated node ids, and
        everything ordered by them, replay exactly (see ``docs/simulator.md``).
        """
        return cls.from_bytes(secrets.token_bytes(32))

    @classmethod
    def from_bytes(cls, raw: bytes) -> SecretKey:
        if len(raw) != 32:
            raise ValueError(f"an Ed25519 secret key is 32 bytes, got {len(raw)}")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def from_seed(cls, seed: str) -> SecretKey:
        """A key derived from ``seed``: the same on every run and machine (tests only)."""
        return cls.from_bytes(hashlib.sha256(b"asgi-p2p/seed/v1:" + seed.encode()).digest())

    def to_bytes(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    @property
    def node_id(self) -> NodeId:
        return self._node_id

    def public(self) -> NodeId:
        return self._node_id

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._key

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"SecretKey(node_id={self._node_id.fmt_short()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretKey) and self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self._node_id)

    # -- key files -------------------------------------------------------

    def to_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the key as PKCS#8 PEM with mode 0600 (never readable by others)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(p, flags, 0o600)
        except FileExistsError:
            raise InvalidConfiguration(f"key file {p} already exists; refusing to overwrite it") from None
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(self.to_pem())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SecretKey:
        """Read a key file; refuses files that group or others can read."""
        p = Path(path)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise InvalidConfiguration(f"key file {p} does not exist; create one with `asgi-p2p keygen`") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InvalidConfiguration(
                f"key file {p} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
                f"run `chmod 600 {p}`"
            )
        data = p.read_bytes()
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidConfiguration(f"key file {p} is not a PEM Ed25519 private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidConfiguration(f"key file {p} holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key)


def load_or_create_key(path: str | os.PathLike[str]) -> SecretKey:
    """Load the key at ``path``, creating it (mode 0600) if it does not exist."""
    p = Path(path)
    if p.exists():
        return SecretKey.load(p)
    key = SecretKey.generate()
    key.save(p)
    return key


class NodeAddr:
    """A node id with the ways to reach it: direct socket addresses and a relay URL."""

    __slots__ = ("direct_addresses", "node_id", "relay_url")

    def __init__(
        self,
        node_id: NodeId,
        direct_addresses: tuple[tuple[str, int], ...] | list[tuple[str, int]] = (),
        relay_url: str | None = None,
    ) -> None:
        self.node_id = node_id
        self.direct_addresses: tuple[tuple[str, int], ...] = tuple((str(h), int(p)) for h, p in direct_addresses)
        self.relay_url = relay_url

    def __repr__(self) -> str:
        return f"NodeAddr({self.node_id.fmt_short()}, {list(self.direct_addresses)}, relay={self.relay_url!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, NodeAddr)
            and self.node_id == other.node_id
            and self.direct_addresses == other.direct_addresses
            and self.relay_url == other.relay_url
        )

    def __hash__(self) -> int:
        return hash((self.node_id, self.direct_addresses, self.relay_url))
