"""TLS session resumption: stateless session tickets, 0-RTT replay protection, the client's cache.

A node that accepted a client seals what resuming needs into the session ticket it
sends (RFC 8446 4.6.1): the resumption secret, the cipher suite, when it was issued,
its lifetime, the ticket's age offset, the ALPN, and the node id the client proved in
the handshake.  The seal is AES-256-GCM with a key derived from the node's secret key
(HKDF-SHA256), so the node keeps no state per ticket and a restarted node with the same
key accepts the tickets of its previous life.  Opening a ticket checks its tag (a
changed byte or another node's ticket does not open) and its age (tickets expire after
:data:`TICKET_LIFETIME`).

0-RTT data can be replayed by anyone who saw it (RFC 8446 8).  As TLS servers do, a
ClientHello's early data is accepted only when the ticket age the client reports
matches the age the node computes within :data:`FRESHNESS_WINDOW` (so a recorded
ClientHello is useless after a few seconds), and when its ``random`` is not in the
:class:`StrikeRegister` of accepted early-data ClientHellos (so within those seconds it
is accepted once).  The register lives in memory: a restarted node starts with an empty
one, so a ClientHello recorded less than the window before the restart can be replayed
once more; only safe methods are ever served from early data.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import random
import struct
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import aioquic_compat as hooks
from ..errors import P2PError
from ..identity import NodeId, SecretKey

__all__ = [
    "CLIENT_TICKETS",
    "FRESHNESS_WINDOW",
    "MAX_EXPORT_SIZE",
    "MAX_TICKET_SIZE",
    "STRIKE_REGISTER_SIZE",
    "TICKET_LIFETIME",
    "InvalidTicket",
    "StrikeRegister",
    "TicketCache",
    "TicketSealer",
    "TicketState",
    "dump_client_tickets",
    "load_client_tickets",
    "ticket_age_fresh",
]

#: seconds a session ticket can be used to resume (the NewSessionTicket's lifetime)
TICKET_LIFETIME = 24 * 3600
#: early data is accepted only if the client's reported ticket age and the node's differ
#: by at most this many seconds (RFC 8446 8.3)
FRESHNESS_WINDOW = 10.0
#: accepted early-data ClientHellos remembered at most (when full, early data is refused)
STRIKE_REGISTER_SIZE = 4096
#: session tickets a client keeps (one per server node id and ALPN; least recently used goes)
CLIENT_TICKETS = 256
#: the largest sealed ticket opened (anything longer is not ours)
MAX_TICKET_SIZE = 512

_VERSION = 1
_NONCE_SIZE = 12
_KEY_INFO = b"asgi-p2p session ticket key v1"
_AAD = b"asgi-p2p session ticket v1"
# version, issued at (ms), lifetime (s), age_add, cipher suite, client node id
_HEADER = struct.Struct("!BQIIH32s")


class InvalidTicket(P2PError):
    """A session ticket that does not open (not ours, changed, expired or malformed)."""


@dataclass(frozen=True, slots=True)
class TicketState:
    """What a session ticket carries, sealed."""

    resumption_secret: bytes
    cipher_suite: int
    issued_at: float  #: node time (Unix seconds) when it was issued
    lifetime: int  #: seconds
    age_add: int  #: the ticket's age offset (RFC 8446 4.6.1)
    alpn: str
    client: NodeId  #: the node id the client proved in the handshake that got the ticket

    def expired(self, now: float) -> bool:
        return not (self.issued_at <= now + FRESHNESS_WINDOW and now - self.issued_at <= self.lifetime)


class TicketSealer:
    """Seals and opens the session tickets of one node key (the same in every life of the node)."""

    __slots__ = ("_aad", "_aead")

    def __init__(self, secret_key: SecretKey) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO).derive(secret_key.to_bytes())
        self._aead = AESGCM(key)
        self._aad = _AAD + secret_key.node_id.to_bytes()

    def seal(self, state: TicketState, rng: random.Random) -> bytes:
        alpn = state.alpn.encode()
        if len(alpn) > 255 or len(state.resumption_secret) > 255:
            raise ValueError("ALPN and resumption secret must be at most 255 bytes")
        plain = (
            _HEADER.pack(
                _VERSION,
                max(0, round(state.issued_at * 1000)),
                state.lifetime,
                state.age_add,
                state.cipher_suite,
                state.client.to_bytes(),
            )
            + bytes((len(alpn),))
            + alpn
            + bytes((len(state.resumption_secret),))
            + state.resumption_secret
        )
        nonce = rng.randbytes(_NONCE_SIZE)
        return bytes((_VERSION,)) + nonce + self._aead.encrypt(nonce, plain, self._aad)

    def open(self, ticket: bytes, now: float) -> TicketState:
        """The state sealed in ``ticket``; raises :class:`InvalidTicket` if it is not ours,
        was changed, is malformed, or expired at ``now`` (node time, Unix seconds)."""
        if not 1 + _NONCE_SIZE + 16 < len(ticket) <= MAX_TICKET_SIZE or ticket[0] != _VERSION:
            raise InvalidTicket(f"not a session ticket of this node ({len(ticket)} bytes)")
        try:
            plain = self._aead.decrypt(ticket[1 : 1 + _NONCE_SIZE], ticket[1 + _NONCE_SIZE :], self._aad)
        except InvalidTag:
            raise InvalidTicket(
                "session ticket does not open with this node's key (changed, or another node's)"
            ) from None
        try:
            version, issued_ms, lifetime, age_add, suite, client = _HEADER.unpack_from(plain)
            pos = _HEADER.size
            alpn_len = plain[pos]
            alpn = plain[pos + 1 : pos + 1 + alpn_len].decode()
            pos += 1 + alpn_len
            secret_len = plain[pos]
            secret = plain[pos + 1 : pos + 1 + secret_len]
            if version != _VERSION or len(secret) != secret_len or pos + 1 + secret_len != len(plain):
                raise ValueError("bad layout")
            state = TicketState(secret, suite, issued_ms / 1000, lifetime, age_add, alpn, NodeId(client))
        except (struct.error, IndexError, ValueError, P2PError) as exc:
            raise InvalidTicket(f"malformed session ticket: {exc}") from None
        if state.expired(now):
            raise InvalidTicket(
                f"session ticket expired (issued {now - state.issued_at:.0f}s ago, lifetime {state.lifetime}s)"
            )
        return state


def ticket_age_fresh(state: TicketState, obfuscated_age: int, now: float, window: float = FRESHNESS_WINDOW) -> bool:
    """True if the ticket age a ClientHello reports (obfuscated, ms) matches the age at ``now``
    within ``window`` seconds (RFC 8446 8.3): a ClientHello recorded earlier fails it."""
    reported = ((obfuscated_age - state.age_add) % (1 << 32)) / 1000
    return abs(reported - (now - state.issued_at)) <= window


class StrikeRegister:
    """Accepted early-data ClientHellos (their ``random``) within the freshness window, bounded.

    An entry is kept for twice the freshness window (past that a replay of it fails the
    freshness check anyway); when ``capacity`` live entries exist, early data is refused
    (RFC 8446 8.2: fail closed) until some expire.
    """

    def __init__(self, capacity: int = STRIKE_REGISTER_SIZE, window: float = FRESHNESS_WINDOW) -> None:
        if capacity < 1:
            raise ValueError(f"strike register capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.keep = 2 * window
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        #: early-data ClientHellos refused: seen before, or the register was full
        self.replays = 0
        self.full = 0

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(self, client_random: bytes, now: float) -> bool:
        """True (and remembered) if ``client_random`` was not seen; False for a replay or when full."""
        seen = self._seen
        while seen:
            first, at = next(iter(seen.items()))
            if now - at < self.keep:
                break
            del seen[first]
        if client_random in seen:
            self.replays += 1
            return False
        if len(seen) >= self.capacity:
            self.full += 1
            return False
        seen[client_random] = now
        return True


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TicketCache(Generic[K, V]):
    """A client's session tickets: one per key (server node id, ALPN), least recently used
    forgotten past ``capacity``, each until it expires."""

    def __init__(self, capacity: int = CLIENT_TICKETS) -> None:
        if capacity < 1:
            raise ValueError(f"ticket cache capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._tickets: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tickets)

    def put(self, key: K, ticket: V, expires_at: float) -> None:
        self._tickets[key] = (ticket, expires_at)
        self._tickets.move_to_end(key)
        while len(self._tickets) > self.capacity:
            self._tickets.popitem(last=False)

    def get(self, key: K, now: float) -> V | None:
        """The ticket for ``key`` if one is held and not expired at ``now``."""
        entry = self._tickets.get(key)
        if entry is None:
            return None
        if now >= entry[1]:
            del self._tickets[key]
            return None
        self._tickets.move_to_end(key)
        return entry[0]

    def discard(self, key: K) -> None:
        self._tickets.pop(key, None)

    def items(self, now: float) -> list[tuple[K, V]]:
        """The tickets not expired at ``now``, least recently used first."""
        return [(k, v) for k, (v, expires_at) in self._tickets.items() if now < expires_at]


# -- persisted client tickets ---------------------------------------------------------------

#: the largest exported ticket set :func:`load_client_tickets` reads (bytes)
MAX_EXPORT_SIZE = 1 << 20
_EXPORT_VERSION = 1


def dump_client_tickets(client: NodeId, entries: list[tuple[NodeId, str, hooks.ClockedSessionTicket]]) -> bytes:
    """Serialize the tickets of client ``client`` (JSON).

    A ticket resumes a session *as the node that got it* (the server takes the client's
    node id from it): the data is a credential of ``client`` for the tickets' lifetime;
    store it like the key (mode 0600).
    """
    records = []
    for node_id, alpn, t in entries:
        records.append(
            {
                "node": str(node_id),
                "alpn": alpn,
                "ticket": base64.b64encode(t.ticket).decode(),
                "secret": base64.b64encode(t.resumption_secret).decode(),
                "suite": int(t.cipher_suite),
                "age_add": t.age_add,
                "early": t.max_early_data_size,
                "ext": [[typ, base64.b64encode(data).decode()] for typ, data in t.other_extensions],
                "received_at": t.received_at,
                "lifetime": t.lifetime,
            }
        )
    doc = {"version": _EXPORT_VERSION, "client": str(client), "tickets": records}
    return json.dumps(doc, separators=(",", ":")).encode()


def load_client_tickets(
    data: bytes, client: NodeId, clock: Callable[[], float], limit: int = CLIENT_TICKETS
) -> list[tuple[NodeId, str, hooks.ClockedSessionTicket]]:
    """The tickets :func:`dump_client_tickets` wrote for ``client``, whose age counts by
    ``clock`` (node time), expired ones left out, at most ``limit`` (the newest); raises
    ValueError for anything else (tickets of another client among it)."""
    if len(data) > MAX_EXPORT_SIZE:
        raise ValueError(f"ticket file larger than {MAX_EXPORT_SIZE} bytes")
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != _EXPORT_VERSION:
            raise ValueError("not a ticket file of this version")
        if NodeId.parse(doc["client"]) != client:
            raise ValueError(f"the tickets are node {doc['client']}'s, not {client}'s")
        now = clock()
        out: list[tuple[NodeId, str, hooks.ClockedSessionTicket]] = []
        for r in doc["tickets"]:
            lifetime = min(float(r["lifetime"]), float(TICKET_LIFETIME))
            received_at = float(r["received_at"])
            if not math.isfinite(received_at) or not 0 <= now - received_at < lifetime:
                continue
            early = r["early"]
            ticket = hooks.ClockedSessionTicket(
                age_add=int(r["age_add"]) % (1 << 32),
                cipher_suite=hooks.cipher_suite(int(r["suite"])),
                not_valid_after=hooks.TICKET_EPOCH,
                not_valid_before=hooks.TICKET_EPOCH,
                resumption_secret=base64.b64decode(r["secret"], validate=True),
                server_name=str(NodeId.parse(r["node"])),
                ticket=base64.b64decode(r["ticket"], validate=True),
                max_early_data_size=None if early is None else int(early),
                other_extensions=[(int(typ), base64.b64decode(ext, validate=True)) for typ, ext in r["ext"]],
                clock=clock,
                received_at=received_at,
                lifetime=lifetime,
            )
            if len(ticket.ticket) > MAX_TICKET_SIZE or len(ticket.resumption_secret) > 64:
                raise ValueError("ticket or secret too long")
            out.append((NodeId.parse(r["node"]), str(r["alpn"]), ticket))
    except (KeyError, TypeError, ValueError, binascii.Error, P2PError) as exc:
        raise ValueError(f"malformed ticket file: {exc}") from None
    out.sort(key=lambda e: e[2].received_at)
    return out[-limit:]
