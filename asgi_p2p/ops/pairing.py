"""Pairing a new device: one-time invites and the exchange that spends them.

The serving node makes an invite (:meth:`PairingService.create_invite`): a random
8-byte id and 16-byte secret, single- or N-use, expiring.  Its text form
(:meth:`Invite.encode`) carries the node's ticket (id, addresses, relay) and both::

    p2pinvite1<z-base-32 of: version, invite id, secret, ticket bytes, 4-byte checksum>

The new device dials the node with ALPN ``asgi-p2p-pair/1`` (which the node accepts
from any node id, while its other protocols stay behind the allow-list) and runs,
on one bidirectional stream, with length-prefixed JSON messages::

    device -> node   {"invite": ID}
    node -> device   {"nonce": 32 random bytes, fresh for this connection}
    device -> node   {"proof": HMAC-SHA256(secret, "asgi-p2p-pair/1" 0 ID node-id device-id nonce)}
    node -> device   {"ok": true, "label": ...}   or   {"error": ..., "code": ...}

The secret never travels, not even inside the encrypted connection; the proof names
both node ids (TLS authenticated both) and the node's nonce, so a proof is worth
nothing on another connection or for another device.  QUIC's TLS 1.3 already
authenticates the node to the device by the node id in the invite.  A correct proof
spends one use of the invite and calls ``on_paired(device_id, label)`` (the CLI appends
the device to its allow-file there); failures are logged with the full node id and
rate-limited per source address and for the whole node, so invites cannot be guessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived, StreamReset

from ..endpoint.connection import REFUSED, PeerConnection
from ..endpoint.endpoint import Endpoint
from ..errors import InvalidTicket, P2PError
from ..identity import NodeAddr, NodeId, zbase32_decode, zbase32_encode
from ..ticket import Ticket

__all__ = [
    "INVITE_PREFIX",
    "PAIR_ALPN",
    "FailureLimiter",
    "Invite",
    "InviteInfo",
    "PairingError",
    "PairingService",
    "pair",
    "pairing_proof",
]

log = logging.getLogger("asgi_p2p.ops.pairing")

PAIR_ALPN = "asgi-p2p-pair/1"
INVITE_PREFIX = "p2pinvite1"
_INVITE_VERSION = 1
_ID_LEN = 8
_SECRET_LEN = 16
_NONCE_LEN = 32
_CHECKSUM_LEN = 4
_MAX_MESSAGE = 1024
_FRAME = struct.Struct("!H")
#: seconds a pairing connection may take for the whole exchange
EXCHANGE_TIMEOUT = 10.0
#: longest life of an invite (seconds) and most invites pending at once
MAX_INVITE_TTL = 7 * 24 * 3600.0
MAX_PENDING_INVITES = 64
MAX_INVITE_USES = 1000
_TOMBSTONES = 256
_MAX_EXCHANGES = 8


class PairingError(P2PError):
    """Pairing failed; ``code`` says why (``unknown``, ``expired``, ``used_up``, ``bad_proof``, ...)."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


def _checksum(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()[:_CHECKSUM_LEN]


@dataclass(frozen=True)
class Invite:
    """What the new device needs: where the node is, which invite, and its secret."""

    node_addr: NodeAddr
    invite_id: bytes
    secret: bytes

    def encode(self) -> str:
        payload = bytes([_INVITE_VERSION]) + self.invite_id + self.secret
        payload += Ticket.from_node_addr(self.node_addr).to_bytes()
        return INVITE_PREFIX + zbase32_encode(payload + _checksum(payload))

    def __str__(self) -> str:
        return self.encode()

    @classmethod
    def parse(cls, text: str) -> Invite:
        """Parse an invite; raises :class:`PairingError` (code ``invalid``) saying what is wrong."""
        text = "".join(text.split()).lower()  # line breaks and spaces from copy and paste
        if not text.startswith(INVITE_PREFIX):
            raise PairingError(
                f"an invite starts with {INVITE_PREFIX!r} (run `asgi-p2p invite` on the node)", "invalid"
            )
        try:
            body = text[len(INVITE_PREFIX) :]
            raw = zbase32_decode(body, len(body) * 5 // 8)
        except ValueError as exc:
            raise PairingError(f"invite is damaged: {exc}", "invalid") from None
        payload, check = raw[:-_CHECKSUM_LEN], raw[-_CHECKSUM_LEN:]
        head = 1 + _ID_LEN + _SECRET_LEN
        if len(payload) <= head or not hmac.compare_digest(_checksum(payload), check):
            raise PairingError("invite is damaged (checksum mismatch): copy it again", "invalid")
        if payload[0] != _INVITE_VERSION:
            raise PairingError(f"invite format {payload[0]} is not supported (upgrade asgi-p2p)", "invalid")
        try:
            ticket = Ticket.from_bytes(payload[head:])
        except InvalidTicket as exc:
            raise PairingError(f"invite is damaged: {exc}", "invalid") from None
        return cls(ticket.to_node_addr(), payload[1 : 1 + _ID_LEN], payload[1 + _ID_LEN : head])


def pairing_proof(secret: bytes, invite_id: bytes, node_id: NodeId, device_id: NodeId, nonce: bytes) -> bytes:
    """The device's proof that it holds ``secret``, bound to both node ids and the node's nonce."""
    msg = PAIR_ALPN.encode() + b"\0" + invite_id + node_id.to_bytes() + device_id.to_bytes() + nonce
    return hmac.digest(secret, msg, "sha256")


@dataclass
class InviteInfo:
    """An invite the node keeps (the secret stays in the node)."""

    invite_id: bytes
    secret: bytes
    label: str | None
    uses: int
    uses_left: int
    expires_at: float  # loop time
    #: device ids paired with it
    paired: list[NodeId]

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "id": self.invite_id.hex(),
            "label": self.label,
            "uses": self.uses,
            "uses_left": self.uses_left,
            "expires_in": max(0.0, round(self.expires_at - now, 1)),
            "paired": [str(n) for n in self.paired],
        }


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class FailureLimiter:
    """Failed pairing attempts allowed: ``burst`` at once, then one per ``interval`` seconds.

    Kept per source (address, or relayed node id) and for the whole node (``global_burst``),
    so one client cannot lock everyone out for long, and many cannot guess fast either.
    """

    def __init__(
        self,
        *,
        burst: int = 5,
        interval: float = 30.0,
        global_burst: int = 20,
        global_interval: float = 5.0,
        max_sources: int = 4096,
    ) -> None:
        self.burst, self.interval = burst, interval
        self.global_burst, self.global_interval = global_burst, global_interval
        self.max_sources = max_sources
        self._sources: OrderedDict[object, _Bucket] = OrderedDict()
        self._global: _Bucket | None = None

    @staticmethod
    def _level(bucket: _Bucket, burst: int, interval: float, now: float) -> float:
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.at) / interval)
        bucket.at = now
        return bucket.tokens

    def retry_after(self, source: object, now: float) -> float:
        """0 if ``source`` may try now, else the seconds until it may."""
        wait = 0.0
        bucket = self._sources.get(source)
        if bucket is not None and self._level(bucket, self.burst, self.interval, now) < 1.0:
            wait = (1.0 - bucket.tokens) * self.interval
        if self._global is not None and self._level(self._global, self.global_burst, self.global_interval, now) < 1.0:
            wait = max(wait, (1.0 - self._global.tokens) * self.global_interval)
        return wait

    def failed(self, source: object, now: float) -> None:
        bucket = self._sources.pop(source, None)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
        self._level(bucket, self.burst, self.interval, now)
        bucket.tokens -= 1.0
        self._sources[source] = bucket
        while len(self._sources) > self.max_sources:
            self._sources.popitem(last=False)
        if self._global is None:
            self._global = _Bucket(float(self.global_burst), now)
        self._level(self._global, self.global_burst, self.global_interval, now)
        self._global.tokens -= 1.0


class _Exchange:
    """One pairing connection's stream: length-prefixed JSON messages in and out."""

    def __init__(self, conn: PeerConnection, on_first: Callable[[_Exchange], None] | None) -> None:
        self.conn = conn
        self.stream_id: int | None = None
        self._buf = bytearray()
        self._inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._on_first = on_first
        self.error: str | None = None

    # ConnectionHandler
    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            if self.stream_id is None:
                self.stream_id = event.stream_id
            elif event.stream_id != self.stream_id:
                self.conn.close(REFUSED, "pairing uses one stream")
                return
            self._buf += event.data
            if len(self._buf) > _MAX_MESSAGE + _FRAME.size:
                self._fail("pairing message too large")
                return
            while len(self._buf) >= _FRAME.size:
                (size,) = _FRAME.unpack_from(self._buf)
                if size > _MAX_MESSAGE:
                    self._fail("pairing message too large")
                    return
                if len(self._buf) < _FRAME.size + size:
                    break
                body = bytes(self._buf[_FRAME.size : _FRAME.size + size])
                del self._buf[: _FRAME.size + size]
                try:
                    msg = json.loads(body)
                except ValueError:
                    self._fail("pairing message is not JSON")
                    return
                if not isinstance(msg, dict):
                    self._fail("pairing message is not a JSON object")
                    return
                self._inbox.put_nowait(msg)
                if self._on_first is not None:
                    on_first, self._on_first = self._on_first, None
                    on_first(self)
            if event.end_stream:
                self._inbox.put_nowait(None)
        elif isinstance(event, StreamReset | ConnectionTerminated):
            self._inbox.put_nowait(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inbox.put_nowait(None)

    def _fail(self, why: str) -> None:
        self.error = why
        self.conn.close(REFUSED, why)
        self._inbox.put_nowait(None)

    async def recv(self) -> dict[str, Any]:
        msg = await self._inbox.get()
        if msg is None:
            raise PairingError(self.error or "the other side closed the pairing connection", "closed")
        return msg

    async def send(self, msg: dict[str, Any], *, end: bool = False) -> None:
        if self.stream_id is None:
            self.stream_id = self.conn.quic.get_next_available_stream_id()
        body = json.dumps(msg, separators=(",", ":")).encode()
        await self.conn.send_stream_data(self.stream_id, _FRAME.pack(len(body)) + body, end_stream=end)


PairedCallback = Callable[[NodeId, str | None], None]


class PairingService:
    """Pairing on an endpoint: answers ALPN ``asgi-p2p-pair/1`` and dials it for :func:`pair`.

    ``on_paired(device_id, label)`` is called (synchronously) when a device proves an
    invite; if it raises, the device is told pairing failed and the use is not spent.
    Without ``on_paired`` the service only dials (a new device): incoming pairing
    connections are refused and the ALPN stays behind the allow-list.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        on_paired: PairedCallback | None = None,
        *,
        limiter: FailureLimiter | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.on_paired = on_paired
        self.limiter = limiter if limiter is not None else FailureLimiter()
        self._invites: dict[bytes, InviteInfo] = {}
        self._spent: OrderedDict[bytes, tuple[InviteInfo, str]] = OrderedDict()  # id -> (invite, "expired"/...)
        self._tasks: set[asyncio.Task[None]] = set()
        #: counters: pairings done, attempts failed, attempts refused by the rate limit
        self.paired = 0
        self.failed = 0
        self.rate_limited = 0
        endpoint.add_protocol(PAIR_ALPN, self._handler, open=on_paired is not None)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- invites -------------------------------------------------------------------

    def create_invite(self, *, uses: int = 1, ttl: float = 600.0, label: str | None = None) -> Invite:
        """A new invite for ``uses`` devices, valid for ``ttl`` seconds."""
        if self.on_paired is None:
            raise PairingError("this node does not accept pairings (it has no allow-file)", "disabled")
        if not 1 <= uses <= MAX_INVITE_USES:
            raise PairingError(f"uses must be 1-{MAX_INVITE_USES}, got {uses}", "invalid")
        if not 0 < ttl <= MAX_INVITE_TTL:
            raise PairingError(f"an invite expires after 0-{MAX_INVITE_TTL:g} seconds, got {ttl:g}", "invalid")
        self._expire()
        if len(self._invites) >= MAX_PENDING_INVITES:
            raise PairingError(f"{MAX_PENDING_INVITES} invites are pending already; wait for them to expire", "full")
        invite_id = secrets.token_bytes(_ID_LEN)
        secret = secrets.token_bytes(_SECRET_LEN)
        self._invites[invite_id] = InviteInfo(invite_id, secret, label, uses, uses, self._now() + ttl, [])
        log.info("invite %s created (%d use(s), %g s%s)", invite_id.hex(), uses, ttl, f", {label!r}" if label else "")
        return Invite(self.endpoint.node_addr(), invite_id, secret)

    def invites(self) -> list[dict[str, Any]]:
        self._expire()
        now = self._now()
        return [i.describe(now) for i in self._invites.values()]

    def cancel_invite(self, invite_id_hex: str) -> bool:
        for key in list(self._invites):
            if key.hex() == invite_id_hex:
                self._retire(self._invites.pop(key), "cancelled")
                return True
        return False

    def _retire(self, info: InviteInfo, why: str) -> None:
        self._spent[info.invite_id] = (info, why)
        while len(self._spent) > _TOMBSTONES:
            self._spent.popitem(last=False)

    def _expire(self) -> None:
        now = self._now()
        for key, info in list(self._invites.items()):
            if info.expires_at <= now:
                del self._invites[key]
                self._retire(info, "expired")

    # -- the node's side ---------------------------------------------------------

    def _handler(self, conn: PeerConnection) -> _Exchange:
        if conn.is_client:
            return _Exchange(conn, None)
        if self.on_paired is None:
            conn.close(REFUSED, "this node does not accept pairings")
            return _Exchange(conn, None)
        if len(self._tasks) >= _MAX_EXCHANGES:
            conn.close(REFUSED, "too many pairings at once; try again")
            return _Exchange(conn, None)
        return _Exchange(conn, self._start)

    def _start(self, ex: _Exchange) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(ex))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, ex: _Exchange) -> None:
        conn = ex.conn
        device = conn.remote_node_id
        assert device is not None
        source: object = conn.direct_address[0] if conn.direct_address is not None else device
        where = f"{conn.direct_address[0]}" if conn.direct_address is not None else "the relay"
        try:
            async with asyncio.timeout(EXCHANGE_TIMEOUT):
                hello = await ex.recv()
                wait = self.limiter.retry_after(source, self._now())
                if wait > 0:
                    self.rate_limited += 1
                    log.warning("pairing attempt by node %s from %s refused: rate limited", device, where)
                    await ex.send(
                        {
                            "error": f"too many failed pairing attempts; try again in {wait:.0f} s",
                            "code": "rate_limited",
                        },
                        end=True,
                    )
                    return
                invite_id = _hex_field(hello, "invite", _ID_LEN)
                nonce = secrets.token_bytes(_NONCE_LEN)
                await ex.send({"nonce": nonce.hex()})
                reply = await ex.recv()
                proof = _hex_field(reply, "proof", 32)
                result = self._check(device, invite_id, nonce, proof)
                if isinstance(result, PairingError):
                    self.failed += 1
                    if result.code in ("unknown", "bad_proof", "invalid"):
                        self.limiter.failed(source, self._now())
                    log.warning("pairing by node %s from %s failed: %s", device, where, result)
                    await ex.send({"error": str(result), "code": result.code}, end=True)
                    return
                await ex.send({"ok": True, "label": result.label}, end=True)
        except PairingError as exc:
            self.failed += 1
            self.limiter.failed(source, self._now())
            log.warning("pairing by node %s from %s failed: %s", device, where, exc)
            with contextlib.suppress(P2PError):
                await ex.send({"error": str(exc), "code": exc.code}, end=True)
        except TimeoutError:
            self.failed += 1
            self.limiter.failed(source, self._now())
            log.warning("pairing by node %s from %s failed: no answer within %g s", device, where, EXCHANGE_TIMEOUT)
            conn.close(REFUSED, "pairing timed out")
        except P2PError as exc:
            log.info("pairing connection with node %s ended: %s", device, exc)
        finally:
            # the device closes once it read the answer; a device that does not is closed here
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await conn.wait_closed()
            conn.close(0, "pairing done")

    def _check(self, device: NodeId, invite_id: bytes, nonce: bytes, proof: bytes) -> InviteInfo | PairingError:
        """Verify and spend (synchronously: two devices cannot both spend a last use)."""
        self._expire()
        info = self._invites.get(invite_id)
        spent = self._spent.get(invite_id)
        known = info if info is not None else spent[0] if spent is not None else None
        if known is None:
            return PairingError("unknown invite (invites live in the running node: did it restart?)", "unknown")
        expected = pairing_proof(known.secret, invite_id, self.endpoint.node_id, device, nonce)
        if not hmac.compare_digest(expected, proof):
            return PairingError("the invite's secret does not match (a damaged or forged invite)", "bad_proof")
        if info is None:
            assert spent is not None
            why = spent[1]
            text = {"used_up": "was used already", "expired": "has expired", "cancelled": "was cancelled"}
            return PairingError(f"this invite {text.get(why, why)}", why)
        assert self.on_paired is not None
        try:
            self.on_paired(device, info.label)
        except Exception as exc:
            log.error("pairing node %s: could not record it: %s", device, exc)
            return PairingError(f"the node could not record the pairing: {exc}", "internal")
        info.uses_left -= 1
        info.paired.append(device)
        if info.uses_left <= 0:
            del self._invites[invite_id]
            self._retire(info, "used_up")
        self.paired += 1
        log.info("paired node %s%s with invite %s", device, f" ({info.label})" if info.label else "", invite_id.hex())
        return info

    # -- the device's side -------------------------------------------------------

    async def pair(self, invite: Invite, *, timeout: float = EXCHANGE_TIMEOUT) -> str | None:
        """Prove ``invite`` to its node; returns the label the node recorded us with."""
        ep = self.endpoint
        async with asyncio.timeout(timeout):
            conn = await ep.connect_quic(invite.node_addr, PAIR_ALPN)
            try:
                ex = conn.handler
                assert isinstance(ex, _Exchange)
                await ex.send({"invite": invite.invite_id.hex()})
                msg = await ex.recv()
                _raise_refusal(msg)
                nonce = _hex_field(msg, "nonce", _NONCE_LEN)
                proof = pairing_proof(invite.secret, invite.invite_id, invite.node_addr.node_id, ep.node_id, nonce)
                await ex.send({"proof": proof.hex()}, end=True)
                msg = await ex.recv()
                _raise_refusal(msg)
                if msg.get("ok") is not True:
                    raise PairingError("the node answered neither ok nor an error", "protocol")
                label = msg.get("label")
                return label if isinstance(label, str) else None
            finally:
                conn.close(0, "pairing done")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)


def _raise_refusal(msg: dict[str, Any]) -> None:
    if "error" in msg:
        code = msg.get("code")
        raise PairingError(str(msg["error"])[:300], code if isinstance(code, str) else "failed")


def _hex_field(msg: dict[str, Any], name: str, size: int) -> bytes:
    value = msg.get(name)
    if not isinstance(value, str) or len(value) != 2 * size:
        raise PairingError(f"pairing message has no valid {name!r}", "invalid")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise PairingError(f"pairing message has no valid {name!r}", "invalid") from None


async def pair(endpoint: Endpoint, invite: Invite | str, *, timeout: float = EXCHANGE_TIMEOUT) -> str | None:
    """Pair ``endpoint`` (the new device) with the node that made ``invite``; returns the label it got.

    Raises :class:`PairingError` with the node's reason (``expired``, ``used_up``, ``bad_proof``,
    ``rate_limited``, ...), or another :class:`~asgi_p2p.errors.P2PError` if the node cannot be reached.
    """
    if isinstance(invite, str):
        invite = Invite.parse(invite)
    service = PairingService(endpoint)
    return await service.pair(invite, timeout=timeout)
