"""The directory over QUIC (ALPN asgi-p2p/directory/1), on real UDP and on the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from asgi_p2p import Endpoint
from asgi_p2p.discovery import (
    ChainedDiscovery,
    DirectoryClient,
    DirectoryError,
    DirectoryServer,
    StaticDiscovery,
)
from asgi_p2p.discovery.directory import MAX_BODY, Op, Status, decode_message, encode_message
from asgi_p2p.discovery.records import Directory, NodeRecord
from asgi_p2p.errors import DiscoveryFailed
from asgi_p2p.identity import NodeAddr, NodeId, SecretKey
from asgi_p2p.sim.harness import SimHarness
from tests.harness import Harness

RELAY = "https://relay.example/"


async def _setup(
    net: Harness, server: DirectoryServer | None = None, **client_kw: object
) -> tuple[Endpoint, DirectoryServer, Endpoint, DirectoryClient, Endpoint, DirectoryClient]:
    d = await net.endpoint("directory")
    srv = server if server is not None else DirectoryServer(Directory(capacity=100, max_ttl=86400))
    srv.attach(d)
    alice = await net.endpoint("alice")
    bob = await net.endpoint("bob")
    ca = DirectoryClient(alice, d.node_addr(), **client_kw)  # type: ignore[arg-type]
    cb = DirectoryClient(bob, d.node_addr(), **client_kw)  # type: ignore[arg-type]
    return d, srv, alice, ca, bob, cb


def _with_relay(ep: Endpoint) -> NodeAddr:
    a = ep.node_addr()
    return NodeAddr(a.node_id, a.direct_addresses, RELAY)


def test_publish_and_resolve_by_id_and_name(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        _d, srv, alice, ca, bob, cb = await _setup(net)
        await ca.publish(_with_relay(alice), "alice.home")
        by_id = await cb.resolve(alice.node_id)
        assert by_id == _with_relay(alice)
        by_name = await cb.resolve_name("alice.home")
        assert by_name == by_id
        # the resolved address works: bob reaches alice with it
        conn = await bob.connect(by_id)
        await conn.send(b"hi")
        inbound = await alice.listen().accept()
        assert await inbound.recv() == b"hi"
        await conn.close()
        assert srv.answered[Status.OK] == 3
        await ca.close()

    net.run(scenario)


def test_unknown_node_and_name_raise_discovery_failed(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        _d, _srv, _alice, _ca, _bob, cb = await _setup(net)
        nobody = SecretKey.from_seed("nobody").node_id
        with pytest.raises(DiscoveryFailed, match=r"NOT_FOUND.*has no record"):
            await cb.resolve(nobody)
        with pytest.raises(DiscoveryFailed, match="no node holds the name 'ghost'"):
            await cb.resolve_name("ghost")
        with pytest.raises(DiscoveryFailed, match="invalid node name"):
            await cb.resolve_name("Not A Name")

    net.run(scenario)


def test_publish_for_another_node_is_refused(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        _d, _srv, alice, ca, bob, cb = await _setup(net, refresh=False)
        # bob replays alice's genuine, correctly signed record: the connection is bob's, so no
        alice_record = ca.make_record(alice.node_addr(), "alice")
        status, body = await cb.request(Op.PUBLISH, alice_record.data)
        assert status == Status.FORBIDDEN and b"may not publish the record of node" in body
        with pytest.raises(DiscoveryFailed):
            await cb.resolve(alice.node_id)
        # and the client API refuses to sign for another node
        with pytest.raises(ValueError, match="publishes only its own node"):
            await cb.publish(alice.node_addr())
        assert bob.node_id != alice.node_id

    net.run(scenario)


def test_server_refuses_bad_records(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        _d, _srv, alice, ca, _bob, _cb = await _setup(net, refresh=False)
        good = ca.make_record(alice.node_addr(), None)
        tampered = bytearray(good.data)
        tampered[40] ^= 1  # inside seq: the signature no longer matches
        status, body = await ca.request(Op.PUBLISH, bytes(tampered))
        assert status == Status.INVALID_RECORD and b"bad signature" in body
        now = ca.now()
        key = alice.secret_key
        too_long = NodeRecord(alice.node_id, 5, now + 10 * 86400).sign(key)
        status, body = await ca.request(Op.PUBLISH, too_long.data)
        assert status == Status.INVALID_RECORD and b"more than this directory's maximum" in body
        expired = NodeRecord(alice.node_id, 5, max(0.0, now - 1)).sign(key)
        status, body = await ca.request(Op.PUBLISH, expired.data)
        assert status == Status.INVALID_RECORD and b"expired" in body
        assert (await ca.request(Op.PUBLISH, good.data))[0] == Status.OK
        lower = NodeRecord(alice.node_id, good.record.seq - 1, now + 60).sign(key)
        status, body = await ca.request(Op.PUBLISH, lower.data)
        assert status == Status.STALE and b"publish a higher seq" in body
        status, body = await ca.request(Op.PUBLISH, b"garbage")
        assert status == Status.INVALID_RECORD
        status, body = await ca.request(Op.RESOLVE, b"short")
        assert status == Status.BAD_REQUEST and b"32-byte node id" in body
        status, body = await ca.request(99)
        assert status == Status.BAD_REQUEST and b"unknown op 99" in body

    net.run(scenario)


def test_name_taken_and_unpublish(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        _d, _srv, alice, ca, bob, cb = await _setup(net)
        await ca.publish(alice.node_addr(), "shop")
        with pytest.raises(DirectoryError, match="NAME_TAKEN") as info:
            await cb.publish(bob.node_addr(), "shop")
        assert info.value.status == Status.NAME_TAKEN
        await ca.unpublish()
        with pytest.raises(DiscoveryFailed, match="no record"):
            await cb.resolve(alice.node_id)
        await cb.publish(bob.node_addr(), "shop")  # the name is free again
        assert (await ca.resolve_name("shop")).node_id == bob.node_id
        await cb.close()

    net.run(scenario)


# -- a malicious directory ------------------------------------------------------


class LyingServer(DirectoryServer):
    """Answers every RESOLVE / RESOLVE_NAME with a record of its choice."""

    def __init__(self, answer: Callable[[], bytes]) -> None:
        super().__init__()
        self.answer = answer

    def handle(self, peer: NodeId, request: bytes, now: float, source: str | None = None) -> bytes:
        op, _ = decode_message(request, "request")
        if op in (Op.RESOLVE, Op.RESOLVE_NAME):
            return encode_message(Status.OK, self.answer())
        return super().handle(peer, request, now, source)


@pytest.mark.parametrize("lie", ["bad-signature", "other-node", "expired", "wrong-name", "garbage"])
def test_client_refuses_forged_records(net: Harness, lie: str) -> None:
    mallory = SecretKey.from_seed("mallory")
    forged: list[bytes] = []

    async def scenario(net: Harness) -> None:
        _d, _srv, alice, ca, _bob, cb = await _setup(net, LyingServer(lambda: forged[0]))
        now = ca.now()
        # a genuine record of alice, which the liar then alters
        genuine = NodeRecord(alice.node_id, 7, now + 600, None, alice.node_addr().direct_addresses, "alice").sign(
            alice.secret_key
        )
        if lie == "bad-signature":  # redirect alice to mallory's address, keep alice's signature
            data = bytearray(genuine.data)
            data[-64 - 1] ^= 0xFF  # last port byte of the last address
            forged.append(bytes(data))
        elif lie == "other-node":  # a valid record, but of mallory
            forged.append(
                NodeRecord(mallory.node_id, 1, now + 600, None, (("10.6.6.6", 1),), "alice").sign(mallory).data
            )
        elif lie == "expired":
            forged.append(
                NodeRecord(alice.node_id, 1, max(0.0, now - 1), None, (), "alice").sign(alice.secret_key).data
            )
        elif lie == "wrong-name":
            forged.append(NodeRecord(alice.node_id, 1, now + 600, None, (), "bob").sign(alice.secret_key).data)
        else:
            forged.append(b"P2PR\x01" + b"\x00" * 10)
        if lie == "wrong-name":
            with pytest.raises(DirectoryError, match="with a record named 'bob'"):
                await cb.resolve_name("alice")
            return
        with pytest.raises(DirectoryError, match="with a record we refuse"):
            await cb.resolve(alice.node_id)
        if lie == "other-node":  # the chain reports the directory's reason
            chain = ChainedDiscovery([cb])
            with pytest.raises(DiscoveryFailed, match=r"directory: .* record is for node .*, expected"):
                await chain.resolve(alice.node_id)

    net.run(scenario)


# -- bounds ---------------------------------------------------------------------


def test_oversized_request_and_busy_connection(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        from asgi_p2p.discovery.directory import DIRECTORY_ALPN, _mux

        _d, _srv, _alice, ca, _bob, _cb = await _setup(net, DirectoryServer(max_concurrent=2))
        # a body larger than MAX_BODY is refused by our own encoder ...
        with pytest.raises(ValueError, match="exceeds"):
            encode_message(Op.PUBLISH, b"x" * (MAX_BODY + 1))
        # ... and by the server when a client sends one anyway
        conn = await ca.endpoint.connect_quic(ca.directory, DIRECTORY_ALPN)
        handler = _mux(ca.endpoint).clients[conn]
        loop = asyncio.get_running_loop()

        def open_stream(data: bytes, fin: bool) -> tuple[int, asyncio.Future[bytes]]:
            sid = conn.quic.get_next_available_stream_id()
            fut: asyncio.Future[bytes] = loop.create_future()
            handler.pending[sid] = (bytearray(), fut)
            conn.quic.send_stream_data(sid, data, end_stream=fin)
            conn.transmit()
            return sid, fut

        _, big = open_stream(bytes([Op.PUBLISH]) + b"\xff\xff" + b"x" * (MAX_BODY + 10), True)
        status, body = decode_message(await big, "response")
        assert status == Status.BAD_REQUEST and b"request exceeds" in body
        # two requests left open (no FIN) use up the connection's slots: the third is BUSY
        (sid1, held1), (sid2, held2) = open_stream(b"\x02\x00", False), open_stream(b"\x02\x00", False)
        _, busy = open_stream(encode_message(Op.RESOLVE, bytes(32)), True)
        status, body = decode_message(await busy, "response")
        assert status == Status.BUSY and b"more than 2 requests in flight" in body
        assert not held1.done() and not held2.done()
        # finishing one request and resetting the other frees the slots
        conn.quic.send_stream_data(sid1, b"\x20" + bytes(32), end_stream=True)
        conn.reset_stream(sid2, 0x2)
        status, body = decode_message(await held1, "response")
        assert status == Status.NOT_FOUND
        status, _ = await ca.request(Op.RESOLVE, bytes(32))
        assert status == Status.NOT_FOUND

    net.run(scenario)


def test_unreachable_directory_is_discovery_failed(net: Harness) -> None:
    async def scenario(net: Harness) -> None:
        alice = await net.endpoint("alice")
        ghost = await net.endpoint("ghost")
        addr = ghost.node_addr()
        await ghost.close()
        client = DirectoryClient(alice, addr, timeout=1.0)
        with pytest.raises(DiscoveryFailed, match="directory"):
            await client.resolve(SecretKey.from_seed("x").node_id)
        # a node that serves no directory refuses the ALPN
        plain = await net.endpoint("plain")
        client = DirectoryClient(alice, plain.node_addr(), timeout=3.0)
        with pytest.raises(DiscoveryFailed):
            await client.resolve(SecretKey.from_seed("x").node_id)

    net.run(scenario)


# -- expiry and refresh (virtual time) -------------------------------------------


def _sim(scenario: Callable[[SimHarness], Awaitable[None]]) -> None:
    SimHarness(seed=3).run(scenario, timeout=1000)


def test_record_expires_without_refresh() -> None:
    async def scenario(net: SimHarness) -> None:
        _d, _srv, alice, ca, _bob, cb = await _setup(net, ttl=60.0, refresh=False)  # type: ignore[arg-type]
        await ca.publish(alice.node_addr(), "alice")
        await asyncio.sleep(59)
        assert (await cb.resolve(alice.node_id)).node_id == alice.node_id
        await asyncio.sleep(2)
        with pytest.raises(DiscoveryFailed, match="no record"):
            await cb.resolve(alice.node_id)
        with pytest.raises(DiscoveryFailed, match="no node holds the name"):
            await cb.resolve_name("alice")

    _sim(scenario)


def test_record_is_refreshed_before_expiry() -> None:
    async def scenario(net: SimHarness) -> None:
        _d, _srv, alice, ca, _bob, cb = await _setup(net, ttl=60.0)  # type: ignore[arg-type]
        await ca.publish(alice.node_addr(), "alice")
        assert ca.record is not None
        first_seq = ca.record.record.seq
        await asyncio.sleep(300)
        rec = await cb.fetch(alice.node_id)
        assert rec.seq > first_seq and rec.name == "alice"
        await ca.close()
        await asyncio.sleep(61)
        with pytest.raises(DiscoveryFailed):
            await cb.resolve(alice.node_id)

    _sim(scenario)


def test_chain_static_then_directory() -> None:
    async def scenario(net: SimHarness) -> None:
        _d, _srv, alice, ca, bob, cb = await _setup(net)  # type: ignore[arg-type]
        await ca.publish(_with_relay(alice), "alice")
        carol = SecretKey.from_seed("carol").node_id
        static = StaticDiscovery([NodeAddr(carol, [("10.0.0.99", 7)])])
        chain = ChainedDiscovery([static, cb], timeout=2.0)
        assert await chain.resolve(carol) == NodeAddr(carol, [("10.0.0.99", 7)])
        assert await chain.resolve(alice.node_id) == _with_relay(alice)
        assert (await chain.resolve_name("alice")).node_id == alice.node_id
        with pytest.raises(DiscoveryFailed, match=r"static: no static address.*directory: .*no record"):
            await chain.resolve(SecretKey.from_seed("nobody").node_id)
        await ca.close()
        assert bob.node_id != alice.node_id

    _sim(scenario)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_concurrent_requests_on_a_lossy_network(seed: int) -> None:
    async def scenario(net: SimHarness) -> None:
        _d, _srv, alice, ca, bob, cb = await _setup(net, timeout=30.0)  # type: ignore[arg-type]
        await ca.publish(alice.node_addr(), "alice")
        await cb.publish(bob.node_addr(), "bob")
        nobody = SecretKey.from_seed("nobody").node_id
        results = await asyncio.gather(
            *(cb.resolve(alice.node_id) for _ in range(4)),
            *(cb.resolve_name("alice") for _ in range(3)),
            cb.resolve(nobody),
            return_exceptions=True,
        )
        assert all(r == alice.node_addr() for r in results[:7]), results
        assert isinstance(results[7], DiscoveryFailed) and "no record" in str(results[7])
        await ca.close()
        await cb.close()

    SimHarness(seed=seed, loss=0.05).run(scenario, timeout=300)
