"""Pairing over real QUIC on loopback: invites, proofs, refusals, the rate limit, revoke."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asgi_p2p.errors import P2PError
from asgi_p2p.identity import SecretKey
from asgi_p2p.node import Node
from asgi_p2p.ops.admin import AdminError, AdminServer, admin_call
from asgi_p2p.ops.allowfile import AllowList
from asgi_p2p.ops.control import NodeControl
from asgi_p2p.ops.pairing import (
    PAIR_ALPN,
    FailureLimiter,
    Invite,
    PairingError,
    PairingService,
    pair,
    pairing_proof,
)


class Served:
    def __init__(self, node: Node, allow: AllowList, control: NodeControl) -> None:
        self.node = node
        self.allow = allow
        self.control = control

    @property
    def pairing(self) -> PairingService:
        assert self.control.pairing is not None
        return self.control.pairing


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    allow_file = tmp_path / "allowed.txt"
    allow_file.write_text("# devices\n")
    allow = AllowList([], allow_file)
    node = await Node.bind(SecretKey.generate(), allow=allow)
    admin = AdminServer(tmp_path / "admin.sock")
    control = NodeControl(node, admin, allow)
    try:
        yield Served(node, allow, control)
    finally:
        await control.close()
        await node.close()


@pytest.fixture
async def device() -> AsyncIterator[Node]:
    node = await Node.bind(SecretKey.generate())
    try:
        yield node
    finally:
        await node.close()


async def test_pair_adds_device_to_allow_file_and_it_may_connect(
    served: Served, device: Node, caplog: pytest.LogCaptureFixture
) -> None:
    # before pairing the device is refused on every other protocol
    with pytest.raises(P2PError):
        await asyncio.wait_for(device.connect(served.node.node_addr()), 10)
    invite = served.pairing.create_invite(label="phone")
    text = invite.encode()
    assert text.startswith("p2pinvite1")
    caplog.set_level(logging.INFO, "asgi_p2p")
    label = await pair(device, text)
    assert label == "phone"
    assert served.allow(device.node_id)
    assert f"{device.node_id}  # phone\n" in served.allow.path.read_text()  # type: ignore[union-attr]
    assert str(device.node_id) in caplog.text  # the full id in the log
    # the message protocol is now allowed
    conn = await asyncio.wait_for(device.connect(served.node.node_addr()), 10)
    await conn.close()


async def test_used_up_invite(served: Served, device: Node) -> None:
    invite = served.pairing.create_invite(uses=1)
    await pair(device, invite)
    other = await Node.bind(SecretKey.generate())
    try:
        with pytest.raises(PairingError) as err:
            await pair(other, invite)
        assert err.value.code == "used_up"
        assert not served.allow(other.node_id)
    finally:
        await other.close()


async def test_n_use_invite(served: Served) -> None:
    invite = served.pairing.create_invite(uses=2, label="lab")
    nodes = [await Node.bind(SecretKey.generate()) for _ in range(3)]
    try:
        assert await pair(nodes[0], invite) == "lab"
        assert await pair(nodes[1], invite) == "lab"
        with pytest.raises(PairingError, match="used already"):
            await pair(nodes[2], invite)
        assert [served.allow(n.node_id) for n in nodes] == [True, True, False]
    finally:
        for n in nodes:
            await n.close()


async def test_expired_invite(served: Served, device: Node) -> None:
    invite = served.pairing.create_invite(ttl=0.05)
    await asyncio.sleep(0.1)
    with pytest.raises(PairingError) as err:
        await pair(device, invite)
    assert err.value.code == "expired"
    assert not served.allow(device.node_id)


async def test_wrong_secret(served: Served, device: Node, caplog: pytest.LogCaptureFixture) -> None:
    good = served.pairing.create_invite()
    forged = Invite(good.node_addr, good.invite_id, bytes(16))
    caplog.set_level(logging.WARNING, "asgi_p2p")
    with pytest.raises(PairingError) as err:
        await pair(device, forged)
    assert err.value.code == "bad_proof"
    assert not served.allow(device.node_id)
    assert f"pairing by node {device.node_id}" in caplog.text
    # the failed attempt spent nothing: the real invite still works
    assert await pair(device, good) is None


async def test_unknown_invite(served: Served, device: Node) -> None:
    good = served.pairing.create_invite()
    assert served.pairing.cancel_invite(good.invite_id.hex())
    with pytest.raises(PairingError) as err:
        await pair(device, Invite(good.node_addr, bytes(8), good.secret))
    assert err.value.code == "unknown"


async def _exchange(device: Node, invite: Invite) -> tuple[bytes, object]:
    """Open a pairing connection and read the node's nonce; returns (nonce, exchange)."""
    conn = await device.connect_quic(invite.node_addr, PAIR_ALPN)
    ex = conn.handler
    await ex.send({"invite": invite.invite_id.hex()})  # type: ignore[union-attr]
    msg = await ex.recv()  # type: ignore[union-attr]
    return bytes.fromhex(msg["nonce"]), ex


async def test_replayed_proof_is_refused(served: Served, device: Node) -> None:
    """A proof seen on one connection is worthless on another (fresh nonce), and for another device."""
    PairingService(device)  # the device's side of the ALPN
    invite = served.pairing.create_invite(uses=3)
    nonce1, ex1 = await _exchange(device, invite)
    proof1 = pairing_proof(invite.secret, invite.invite_id, served.node.node_id, device.node_id, nonce1)
    await ex1.send({"proof": proof1.hex()}, end=True)  # type: ignore[attr-defined]
    assert (await ex1.recv()).get("ok") is True  # type: ignore[attr-defined]
    ex1.conn.close()  # type: ignore[attr-defined]
    # the same proof again, on a new connection of the same device
    nonce2, ex2 = await _exchange(device, invite)
    assert nonce2 != nonce1
    await ex2.send({"proof": proof1.hex()}, end=True)  # type: ignore[attr-defined]
    answer = await ex2.recv()  # type: ignore[attr-defined]
    assert answer.get("code") == "bad_proof"
    ex2.conn.close()  # type: ignore[attr-defined]
    # and from another device, which saw the proof (and even the nonce) go by
    thief = await Node.bind(SecretKey.generate())
    try:
        PairingService(thief)
        _nonce3, ex3 = await _exchange(thief, invite)
        await ex3.send({"proof": proof1.hex()}, end=True)  # type: ignore[attr-defined]
        assert (await ex3.recv()).get("code") == "bad_proof"  # type: ignore[attr-defined]
        assert not served.allow(thief.node_id)
    finally:
        await thief.close()
    assert served.pairing.invites()[0]["uses_left"] == 2  # only the genuine exchange spent a use


async def test_brute_force_is_rate_limited(served: Served, device: Node, caplog: pytest.LogCaptureFixture) -> None:
    served.pairing.limiter = FailureLimiter(burst=3, interval=60.0)
    good = served.pairing.create_invite()
    caplog.set_level(logging.WARNING, "asgi_p2p")
    for i in range(3):
        with pytest.raises(PairingError) as err:
            await pair(device, Invite(good.node_addr, good.invite_id, bytes([i]) * 16))
        assert err.value.code == "bad_proof"
    # the limit holds back even the right secret now, from this address
    with pytest.raises(PairingError) as err:
        await pair(device, good)
    assert err.value.code == "rate_limited"
    assert "try again in" in str(err.value)
    assert served.pairing.rate_limited == 1
    assert f"pairing attempt by node {device.node_id} from 127.0.0.1 refused: rate limited" in caplog.text
    assert not served.allow(device.node_id)


async def test_revoke_closes_live_connection(served: Served, device: Node) -> None:
    await pair(device, served.pairing.create_invite(label="tablet"))
    conn = await asyncio.wait_for(device.connect(served.node.node_addr()), 10)
    result = served.control._revoke({"node_id": str(device.node_id)})
    assert result["closed_connections"] >= 1 and result["label"] == "tablet"
    with pytest.raises(P2PError):
        await asyncio.wait_for(conn.recv(), 10)  # the connection ends
    assert str(device.node_id) not in served.allow.path.read_text()  # type: ignore[union-attr]
    with pytest.raises(P2PError):
        await asyncio.wait_for(device.connect(served.node.node_addr()), 10)  # and it may not come back


def test_invite_text_round_trip_and_damage() -> None:
    key = SecretKey.generate()
    from asgi_p2p.identity import NodeAddr

    invite = Invite(NodeAddr(key.node_id, [("192.0.2.1", 4433)], None), b"\x01" * 8, b"\x02" * 16)
    text = invite.encode()
    assert Invite.parse(text) == invite
    assert Invite.parse(text[:30] + "\n " + text[30:]) == invite  # copy-paste line breaks
    damaged = text[:-3] + ("y" if text[-3] != "y" else "n") + text[-2:]
    with pytest.raises(PairingError, match="damaged"):
        Invite.parse(damaged)
    with pytest.raises(PairingError, match="starts with"):
        Invite.parse("p2p1" + text[10:])


async def test_admin_commands_over_the_socket(served: Served, device: Node) -> None:
    """invite, invites, cancel-invite, peers, status and revoke as `asgi-p2p` sends them."""
    admin = served.control.admin
    async with admin:
        made = await admin_call(admin.path, "invite", uses=2, expires=60, label="tv")
        assert made["uses"] == 2 and made["label"] == "tv"
        (pending,) = await admin_call(admin.path, "invites")
        assert pending["id"] == made["id"] and pending["uses_left"] == 2 and 0 < pending["expires_in"] <= 60
        assert await pair(device, made["invite"]) == "tv"
        # the device closed its pairing connection: the node holds no live connection with it
        for _ in range(5000):
            if not any(c.remote_node_id == device.node_id for c in served.node.connections):
                break
            await asyncio.sleep(0.001)
        peers = await admin_call(admin.path, "peers")
        entry = {"node_id": str(device.node_id), "label": "tv", "source": "file"}
        assert peers["peers"] == [{**entry, "connected": False}]
        await device.connect(served.node.node_addr())  # now allowed
        peers = await admin_call(admin.path, "peers")
        assert peers["peers"] == [{**entry, "connected": True}]
        status = await admin_call(admin.path, "status")
        assert status["pairing"]["paired"] == 1 and status["allow"] == "1 node(s)"
        assert await admin_call(admin.path, "cancel-invite", id=made["id"]) == {"id": made["id"], "cancelled": True}
        assert await admin_call(admin.path, "invites") == []
        with pytest.raises(PairingError, match="this invite was cancelled"):
            await pair(device, made["invite"])
        for bad, message in [
            ({"uses": 0}, "uses must be 1-1000"),
            ({"uses": "2"}, '"uses" must be a whole number'),
            ({"expires": 0}, "expires after 0 to"),
            ({"label": "a\nb"}, "control characters"),
        ]:
            with pytest.raises(AdminError, match=message):
                await admin_call(admin.path, "invite", **bad)
        with pytest.raises(AdminError, match="no pending invite"):
            await admin_call(admin.path, "cancel-invite", id="00")
        with pytest.raises(AdminError, match=r"node id"):
            await admin_call(admin.path, "revoke", node_id="nope")
