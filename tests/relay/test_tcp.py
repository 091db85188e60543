"""The relay over TCP (TLS 1.3 + WebSocket) for networks that block UDP.

Sans-I/O: the HELLO/AUTH handshake messages and their proofs.  On loopback
(real sockets): a node whose UDP is dropped reaches a peer through the relay
over TCP and downloads a blob intact; when its UDP works again it moves back to
the relay over UDP and the end-to-end QUIC connection goes on; garbage,
oversized frames, a slow upgrade and a forged proof drop only that client.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import hashlib
import json
import random
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from asgi_p2p import NodeAddr, SecretKey
from asgi_p2p.errors import ProtocolError, Timeout
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.http.types import Receive, Scope, Send
from asgi_p2p.identity import NodeId
from asgi_p2p.net.base import Address, DatagramReceiver
from asgi_p2p.net.udp import UdpNetwork, UdpSocket
from asgi_p2p.node import Node
from asgi_p2p.relay.client import RelayClient
from asgi_p2p.relay.netmemory import TransportMemory
from asgi_p2p.relay.proto import Send as SendFrame
from asgi_p2p.relay.proto import parse_frame
from asgi_p2p.relay.server import RelayServer
from asgi_p2p.relay.tcp import (
    NONCE_SIZE,
    TCP_MAX_FRAME,
    WS_PATH,
    WS_SUBPROTOCOL,
    Auth,
    Hello,
    certificate_fingerprint,
    client_tls_context,
    parse_auth,
    parse_hello,
    send_batch,
)
from asgi_p2p.relay.url import RelayUrl

from .rig import RecordingSink
from .test_cli_relay import REPO, _env, _printed_url, _start, _stop

RELAY_KEY = SecretKey.from_seed("tcp-relay")
FP = hashlib.sha256(b"some certificate").digest()


# -- sans-I/O ----------------------------------------------------------------------------


def test_hello_and_auth_round_trip_and_verify() -> None:
    client = SecretKey.from_seed("tcp-client")
    hello = Hello.create(RELAY_KEY, FP)
    assert len(hello.nonce) == NONCE_SIZE
    parsed = parse_hello(hello.encode())
    assert parsed == hello and parsed.verify(RELAY_KEY.node_id, FP)
    auth = Auth.create(client, parsed, RELAY_KEY.node_id, FP)
    back = parse_auth(auth.encode())
    assert back == auth and back.node == client.node_id
    assert back.verify(hello.nonce, RELAY_KEY.node_id, FP)


def test_proofs_do_not_verify_for_another_nonce_relay_or_certificate() -> None:
    """A proof is bound to one HELLO nonce, one relay and one TLS certificate: no replay elsewhere."""
    client = SecretKey.from_seed("tcp-client")
    other = SecretKey.from_seed("other-relay").node_id
    hello = Hello.create(RELAY_KEY, FP)
    auth = Auth.create(client, hello, RELAY_KEY.node_id, FP)
    other_fp = hashlib.sha256(b"a man in the middle's certificate").digest()
    assert not auth.verify(Hello.create(RELAY_KEY, FP).nonce, RELAY_KEY.node_id, FP)
    assert not auth.verify(hello.nonce, other, FP)
    assert not auth.verify(hello.nonce, RELAY_KEY.node_id, other_fp)
    assert not hello.verify(other, FP)
    assert not hello.verify(RELAY_KEY.node_id, other_fp)
    forged = Auth(SecretKey.from_seed("victim").node_id, auth.signature)
    assert not forged.verify(hello.nonce, RELAY_KEY.node_id, FP)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("text", "expected a binary WebSocket message"),
        (b"\x01", "truncated"),
        (b"\x02A" + bytes(96), "unsupported version 2"),
        (b"\x01H" + bytes(96), "expected message type 'A'"),
        (b"\x01A" + bytes(95), "95 bytes|97 bytes, expected 98"),
        (b"\x01A" + bytes(97), "99 bytes, expected 98"),
    ],
)
def test_bad_auth_messages_are_refused_with_the_reason(data: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse_auth(data)


def test_bad_hello_is_refused() -> None:
    with pytest.raises(ProtocolError, match="expected message type 'H'"):
        parse_hello(b"\x01A" + bytes(96))


# -- loopback: a node whose UDP is blocked -------------------------------------------------


class _BlockedSocket:
    """A UDP socket whose outgoing datagrams vanish while ``blocked`` is set (a firewall)."""

    def __init__(self, inner: UdpSocket, blocked: asyncio.Event) -> None:
        self.inner = inner
        self.blocked = blocked

    @property
    def local_address(self) -> Address:
        return self.inner.local_address

    def local_addresses(self) -> list[Address]:
        return self.inner.local_addresses()

    def sendto(self, data: bytes, addr: Address) -> None:
        if not self.blocked.is_set():
            self.inner.sendto(data, addr)

    def close(self) -> None:
        self.inner.close()


class BlockedUdpNetwork:
    """Real UDP on loopback with every outgoing datagram dropped until :meth:`unblock`."""

    def __init__(self) -> None:
        self.real = UdpNetwork()
        self.blocked = asyncio.Event()
        self.blocked.set()

    def unblock(self) -> None:
        self.blocked.clear()

    def wall_clock_offset(self) -> float:
        return self.real.wall_clock_offset()

    async def bind(self, host: str, port: int, receiver: DatagramReceiver) -> _BlockedSocket:
        return _BlockedSocket(await self.real.bind(host, port, receiver), self.blocked)


BLOB = random.Random(14).randbytes(3 * 1024 * 1024 + 17)


async def blob_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    headers = [(b"content-length", b"%d" % len(BLOB))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for i in range(0, len(BLOB), 65536):
        await send({"type": "http.response.body", "body": BLOB[i : i + 65536], "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    async def wait() -> None:
        while not predicate():  # noqa: ASYNC110 - polls state of several objects, bounded by the timeout
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(wait(), timeout)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


def _factory(**kwargs: Any) -> Callable[..., RelayClient]:
    def make(endpoint: Any, url: str, sink: Any, *, rng: random.Random | None = None) -> RelayClient:
        return RelayClient(endpoint, url, sink, rng=rng, **kwargs)

    return make


def _run(main: Callable[[], Awaitable[None]], timeout: float = 60.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main(), timeout)

    asyncio.run(bounded())


def test_a_node_whose_udp_is_blocked_downloads_through_the_relay_over_tcp_and_moves_back_to_udp() -> None:
    async def main() -> None:
        relay = await RelayServer.bind(RELAY_KEY, host="127.0.0.1", tcp_port=0)
        assert relay.url.tcp_port is not None and relay.url.tcp_port == relay.tcp_port
        server = await Node.bind(SecretKey.from_seed("tcp-server"), relay_url=str(relay.url))
        h3 = H3Server(blob_app, server, timeout_graceful_shutdown=1.0)
        await h3.startup()
        firewall = BlockedUdpNetwork()
        client = await Node.bind(
            SecretKey.from_seed("tcp-client"),
            network=firewall,
            relay_url=str(relay.url),
            relay_factory=_factory(udp_head_start=0.3, udp_retry_interval=0.5, proxy=None),
        )
        try:
            assert server.relay is not None and client.relay is not None
            await server.relay.wait_connected(10)
            await client.relay.wait_connected(10)
            link = client.relay
            assert isinstance(link, RelayClient)
            assert link.transport == "tcp" and link.stats.tcp_connects == 1
            # relayed connections keep 1200-byte packets over TCP (no size probes through it)
            assert link.max_probe_packet_size == link.max_packet_size == 1200
            assert len(link.transport_memory) == 1  # this network blocks UDP to the relay
            assert relay.stats.tcp_connections_accepted == 1 and client.node_id in relay.clients
            # the peer is known only by its relay: every packet goes client -> TCP -> relay -> UDP -> server
            transport = P2PTransport(client)
            transport.add_addr(NodeAddr(server.node_id, [], str(relay.url)))
            async with httpx.AsyncClient(transport=transport, timeout=30) as http:
                r = await http.get(f"https://{server.node_id}/blob")
                assert r.status_code == 200
                assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(BLOB).hexdigest()
                assert link.stats.bytes_received >= len(BLOB)
                conn = next(c for c in client.connections if c.remote_node_id == server.node_id)
                assert conn.path.kind == "relay"

                # UDP works again: the client moves back to the relay over UDP (then direct), and
                # the same end-to-end QUIC connection carries the next request
                firewall.unblock()
                # (the move is counted a loop pass after the UDP connection is live: wait for it)
                await _until(lambda: link.stats.moved_to_udp == 1, "relay client back on UDP")
                assert link.transport == "udp"
                assert len(link.transport_memory) == 0  # and no longer does
                r = await http.get(f"https://{server.node_id}/again")
                assert hashlib.sha256(r.content).digest() == hashlib.sha256(BLOB).digest()
                assert not conn.closed and conn in client.connections
        finally:
            await client.close(timeout=0.5)
            await h3.shutdown()
            await server.close(timeout=0.5)
            await relay.close(timeout=0.5)

    _run(main)


# -- bad input drops only that client ------------------------------------------------------


async def _ws(relay: RelayServer) -> Any:
    return await ws_connect(
        f"wss://127.0.0.1:{relay.tcp_port}{WS_PATH}",
        ssl=client_tls_context(),
        proxy=None,
        subprotocols=[WS_SUBPROTOCOL],  # type: ignore[list-item]
        compression=None,
        max_size=None,
    )


async def _authed(relay: RelayServer, key: SecretKey) -> Any:
    ws = await _ws(relay)
    der = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
    fp = certificate_fingerprint(der)
    hello = parse_hello(await ws.recv())
    assert hello.verify(relay.node_id, fp)
    await ws.send(Auth.create(key, hello, relay.node_id, fp).encode())
    return ws


async def _closed(ws: Any, timeout: float = 5.0) -> int | None:
    try:
        async with asyncio.timeout(timeout):
            async for _ in ws:
                pass
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None
    return ws.close_code  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "bad",
    ["garbage frame", "oversized frame", "text message", "forged auth", "slow auth"],
)
def test_a_bad_tcp_client_is_dropped_and_others_are_unaffected(bad: str) -> None:
    async def main() -> None:
        relay = await RelayServer.bind(RELAY_KEY, host="127.0.0.1")
        relay.tcp_handshake_timeout = 0.5
        await relay.listen_tcp("127.0.0.1", 0)
        a, b = SecretKey.from_seed("good-a"), SecretKey.from_seed("good-b")
        try:
            good_a = await _authed(relay, a)
            good_b = await _authed(relay, b)
            await _until(lambda: len(relay.clients) == 2, "two good clients registered")
            for ws in (good_a, good_b):  # each gets its OBSERVED_ADDR first
                parse_frame(await asyncio.wait_for(ws.recv(), 5))
            bad_key = SecretKey.from_seed("bad")
            if bad in ("forged auth", "slow auth"):
                ws = await _ws(relay)
                hello = parse_hello(await ws.recv())
                if bad == "forged auth":  # a proof for another certificate: a replay from elsewhere
                    await ws.send(Auth.create(bad_key, hello, relay.node_id, FP).encode())
                code = await _closed(ws)
                assert code == 1008
                assert relay.stats.tcp_handshake_failures == 1
            else:
                ws = await _authed(relay, bad_key)
                await _until(lambda: bad_key.node_id in relay.clients, "bad client registered")
                if bad == "garbage frame":
                    await ws.send(b"\x01\x09garbage")
                elif bad == "oversized frame":
                    await ws.send(SendFrame(a.node_id, bytes(TCP_MAX_FRAME)).encode())
                else:
                    await ws.send("hello")
                code = await _closed(ws)
                assert code in (1008, 1009)
            await _until(lambda: bad_key.node_id not in relay.clients, "bad client dropped")
            assert sorted(relay.clients) == sorted([a.node_id, b.node_id])
            # the good clients still relay to each other
            await good_a.send(SendFrame(b.node_id, b"still here").encode())
            frame = parse_frame(await asyncio.wait_for(good_b.recv(), 5))
            assert getattr(frame, "packet", None) == b"still here"
            assert getattr(frame, "src", None) == a.node_id
            await good_a.close()
            await good_b.close()
        finally:
            await relay.close(timeout=0.5)

    _run(main, 30)


def test_a_slow_upgrade_is_dropped_after_the_handshake_timeout() -> None:
    """A client that completes TLS but never sends its HTTP Upgrade (slowloris) is cut off alone."""

    async def main() -> None:
        relay = await RelayServer.bind(RELAY_KEY, host="127.0.0.1")
        relay.tcp_handshake_timeout = 0.5
        port = await relay.listen_tcp("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls_context())
            await writer.drain()
            writer.write(b"GET /asgi-p2p/relay/1 HTTP/1.1\r\nHost: x\r\n")  # ... and never the rest
            good = await _authed(relay, SecretKey.from_seed("good-a"))
            started = asyncio.get_running_loop().time()
            assert await asyncio.wait_for(reader.read(), 10) is not None  # EOF (or a 4xx) once the timeout hits
            assert asyncio.get_running_loop().time() - started < 5
            writer.close()
            await _until(lambda: SecretKey.from_seed("good-a").node_id in relay.clients, "good client registered")
            assert not good.close_code
            await good.close()
        finally:
            await relay.close(timeout=0.5)

    _run(main, 30)


def test_the_relay_is_refused_if_it_cannot_prove_its_key() -> None:
    """A TCP server holding another key at the relay's address is refused (the URL names the relay's key)."""

    async def main() -> None:
        impostor = await RelayServer.bind(SecretKey.from_seed("impostor"), host="127.0.0.1", tcp_port=0)
        node = await Node.bind(SecretKey.from_seed("victim-node"), network=BlockedUdpNetwork())
        try:
            assert impostor.tcp_port is not None
            url = RelayUrl(RELAY_KEY.node_id, "127.0.0.1", impostor.url.port, impostor.tcp_port)
            client = RelayClient(node, url, _NullSink(), udp_head_start=0.0, proxy=None)
            client.start()
            await _until(lambda: client.stats.auth_failures >= 1, "the impostor refused")
            assert not client.connected and not impostor.clients
            await client.close()
        finally:
            await node.close(timeout=0.5)
            await impostor.close(timeout=0.5)

    _run(main, 30)


class _NullSink:
    def relay_packet_received(self, src: NodeId, packet: bytes) -> None:
        pass

    def relay_signal_received(self, src: NodeId, payload: bytes) -> None:
        pass

    def relay_state_changed(self, link: Any) -> None:
        pass

    def relay_refused(self, dest: NodeId | None, refusal: Any) -> None:
        pass


def _operator_certificate(tmp: Path) -> tuple[str, str]:
    """A certificate an operator might give the relay (ECDSA, not the relay's node key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.example.org")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(14)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2099, 1, 1, tzinfo=datetime.UTC))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "relay.crt", tmp / "relay.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


def test_relay_command_serves_tcp_with_an_operator_certificate(tmp_path: Path) -> None:
    """``asgi-p2p relay --tcp-port 0 --tls-cert --tls-key``: the URL carries ?tcp=PORT and a
    client whose UDP is blocked relays to a UDP client through it."""
    cert, key = _operator_certificate(tmp_path)

    async def main() -> None:
        proc, lines = await _start(tmp_path, "--ephemeral", "--tcp-port", "0", "--tls-cert", cert, "--tls-key", key)
        try:
            url = _printed_url(lines)
            assert url.tcp_port is not None and url.tcp_port > 0
            assert any(f"tcp 127.0.0.1:{url.tcp_port} TLS + WebSocket" in line for line in lines), lines
            a = await Node.bind(SecretKey.from_seed("cli-tcp-a"), network=BlockedUdpNetwork())
            b = await Node.bind(SecretKey.from_seed("cli-tcp-b"))
            sa, sb = RecordingSink(), RecordingSink()
            ca = RelayClient(a, url, sa, udp_head_start=0.2, proxy=None)
            cb = RelayClient(b, url, sb, proxy=None)
            try:
                ca.start()
                cb.start()
                await ca.wait_connected(10)
                await cb.wait_connected(10)
                assert (ca.transport, cb.transport) == ("tcp", "udp")
                assert ca.observed_address is None  # a TCP address is no use for hole punching
                assert ca.send_packet(b.node_id, b"over tcp, then udp")
                await sb.wait_for(lambda: len(sb.packets) == 1)
                assert sb.packets == [(a.node_id, b"over tcp, then udp")]
                assert cb.send_packet(a.node_id, b"and back")
                await sa.wait_for(lambda: len(sa.packets) == 1)
                assert sa.packets == [(b.node_id, b"and back")]
                code, err = await _stop(proc)
                assert code == 0, err
                await sa.wait_for(lambda: not ca.connected)  # the relay's TCP side closed too
            finally:
                await ca.close()
                await cb.close()
                await a.close()
                await b.close()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    _run(main, 60)


def test_relay_command_refuses_a_tls_certificate_without_a_tcp_port(tmp_path: Path) -> None:
    async def main() -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "asgi_p2p", "relay", "--ephemeral", "--tls-cert", "x.pem",
            cwd=REPO, env=_env(tmp_path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode or 0, err.decode()

    code, err = asyncio.run(main())
    assert code != 0 and "add --tcp-port" in err


class ConnectProxy:
    """A minimal HTTP CONNECT proxy on 127.0.0.1 that records the targets it tunnelled to."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            writer.close()
            return
        self.targets.append(target)
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def test_the_relay_over_tcp_passes_an_http_connect_proxy() -> None:
    """``proxy=`` (or ``HTTPS_PROXY``): the TLS + WebSocket connection goes through a CONNECT tunnel."""

    async def main() -> None:
        relay = await RelayServer.bind(RELAY_KEY, host="127.0.0.1", tcp_port=0)
        proxy = ConnectProxy()
        proxy_url = await proxy.start()
        a = await Node.bind(SecretKey.from_seed("proxied-a"), network=BlockedUdpNetwork())
        b = await Node.bind(SecretKey.from_seed("proxied-b"))
        sa, sb = RecordingSink(), RecordingSink()
        ca = RelayClient(a, relay.url, sa, udp_head_start=0.1, proxy=proxy_url)
        cb = RelayClient(b, relay.url, sb, proxy=None)
        try:
            ca.start()
            cb.start()
            await ca.wait_connected(10)
            await cb.wait_connected(10)
            assert ca.transport == "tcp"
            assert proxy.targets == [f"127.0.0.1:{relay.tcp_port}"]
            assert ca.send_packet(b.node_id, b"through a CONNECT proxy")
            await sb.wait_for(lambda: len(sb.packets) == 1)
            assert sb.packets == [(a.node_id, b"through a CONNECT proxy")]
            # a packet the relay could not take is dropped on our side, like UDP; the connection stays
            assert not ca.send_packet(b.node_id, bytes(TCP_MAX_FRAME))
            assert ca.stats.dropped_too_large == 1 and ca.transport == "tcp"
            assert ca.send_packet(b.node_id, b"still connected")
            await sb.wait_for(lambda: len(sb.packets) == 2)
        finally:
            await ca.close()
            await cb.close()
            await a.close(timeout=0.5)
            await b.close(timeout=0.5)
            await proxy.close()
            await relay.close(timeout=0.5)

    _run(main, 30)


def test_a_client_whose_udp_works_never_opens_the_tcp_relay_connection() -> None:
    """With ``?tcp=`` in the URL, UDP gets its head start: when it answers, no TCP connection is made."""

    async def main() -> None:
        relay = await RelayServer.bind(RELAY_KEY, host="127.0.0.1", tcp_port=0)
        node = await Node.bind(SecretKey.from_seed("udp-works"))
        client = RelayClient(node, relay.url, _NullSink(), udp_head_start=5.0, proxy=None)
        try:
            client.start()
            await client.wait_connected(10)
            assert client.transport == "udp"
            assert (client.stats.tcp_connects, client.stats.tcp_connect_failures) == (0, 0)
            assert relay.stats.tcp_connections_accepted == 0 and relay.stats.tcp_handshake_failures == 0
        finally:
            await client.close()
            await node.close(timeout=0.5)
            await relay.close(timeout=0.5)

    _run(main, 30)


def test_after_tcp_won_a_lost_tcp_connection_is_replaced_over_tcp_at_once() -> None:
    """The outcome is remembered: once TCP won, reconnecting starts TCP without the UDP head start,
    and a relay that is down for a while is found again within the reconnect backoff."""

    async def main() -> None:
        relay = await RelayServer.bind(RELAY_KEY, host="127.0.0.1", tcp_port=0)
        node = await Node.bind(SecretKey.from_seed("tcp-again"), network=BlockedUdpNetwork())
        url = relay.url
        client = RelayClient(node, url, _NullSink(), udp_head_start=3.0, reconnect_min=0.05, proxy=None)
        loop = asyncio.get_running_loop()
        try:
            client.start()
            with pytest.raises(Timeout, match="not connected within"):
                await client.wait_connected(1.0)  # the first time, UDP gets its 3 s head start
            await client.wait_connected(10)
            assert client.transport == "tcp"
            # the relay restarts (same key and ports): the client is back over TCP without the head start
            await relay.close(timeout=0.5)
            await _until(lambda: client.stats.disconnects >= 1, "client saw the TCP connection go")
            # while the relay is down, each round's TCP attempt fails at once and the client backs
            # off and tries again (it does not sit out the QUIC attempt's 10 s connect timeout)
            await _until(lambda: client.stats.tcp_connect_failures >= 2, "two refused TCP attempts", 5)
            started = loop.time()
            relay = await RelayServer.bind(RELAY_KEY, host="127.0.0.1", port=url.port, tcp_port=url.tcp_port)
            await client.wait_connected(10)
            assert client.transport == "tcp" and client.stats.tcp_connects == 2
            assert loop.time() - started < 2.5
        finally:
            await client.close()
            await node.close(timeout=0.5)
            await relay.close(timeout=0.5)

    _run(main, 90)


async def _close_all(opened: list[tuple[RelayClient, Node]], relay: RelayServer) -> None:
    for client, node in opened:
        await client.close()
        await node.close(timeout=0.5)
    await relay.close(timeout=0.5)


def test_the_outcome_is_remembered_per_network_and_kept_for_a_fresh_process(tmp_path: Path) -> None:
    """On a network where TCP won, a new client with the same memory file (a fresh process) dials
    TCP at once, without the UDP head start; from another source address UDP gets it again."""

    async def main() -> None:
        relay = await RelayServer.bind(RELAY_KEY, host="127.0.0.1", tcp_port=0)
        path = tmp_path / "networks.json"
        loop = asyncio.get_running_loop()

        async def connect(seed: str, memory: TransportMemory) -> tuple[float, RelayClient, Node]:
            node = await Node.bind(SecretKey.from_seed(seed), network=BlockedUdpNetwork())
            client = RelayClient(node, relay.url, _NullSink(), udp_head_start=2.0, proxy=None, transport_memory=memory)
            started = loop.time()
            client.start()
            await client.wait_connected(15)
            assert client.transport == "tcp"
            return loop.time() - started, client, node

        opened: list[tuple[RelayClient, Node]] = []
        try:
            took, client, node = await connect("net-1", TransportMemory(path))
            opened.append((client, node))
            assert took >= 2.0  # the first time on this network, UDP gets its head start
            assert path.stat().st_mode & 0o777 == 0o600
            took, client, node = await connect("net-2", TransportMemory(path))  # read from the file
            opened.append((client, node))
            assert took < 1.0, took  # no head start: this network blocks UDP
            # another network (another source address towards the relay): UDP first again
            moved = TransportMemory(path, source=lambda _addr: "192.0.2.77")
            took, client, node = await connect("net-3", moved)
            opened.append((client, node))
            assert took >= 2.0
        finally:
            await _close_all(opened, relay)

    _run(main, 60)


def test_udp_working_again_is_remembered_once_the_udp_connection_can_send(tmp_path: Path) -> None:
    """A network remembered as blocking UDP whose UDP works again is forgotten as soon as the UDP
    relay connection can send (the relay's handshake came over UDP), before the relay confirms it:
    a short-lived process (a returning `get` answered by 0-RTT) may end before that confirmation."""

    async def main() -> None:
        relay = await RelayServer.bind(RELAY_KEY, host="127.0.0.1", tcp_port=0)
        path = tmp_path / "networks.json"
        opened: list[tuple[RelayClient, Node]] = []
        try:
            node = await Node.bind(SecretKey.from_seed("blocked"), network=BlockedUdpNetwork())
            client = RelayClient(
                node, relay.url, _NullSink(), udp_head_start=0.5, proxy=None, transport_memory=TransportMemory(path)
            )
            opened.append((client, node))
            client.start()
            await client.wait_connected(15)
            assert client.transport == "tcp"
            assert len(json.loads(path.read_text())["udp_blocked"]) == 1  # this network blocks UDP
            node = await Node.bind(SecretKey.from_seed("unblocked"))  # the same network, UDP works now
            memory = TransportMemory(path)
            client = RelayClient(node, relay.url, _NullSink(), udp_head_start=0.5, proxy=None, transport_memory=memory)
            opened.append((client, node))
            client.start()
            await client.wait_can_send(15)
            assert len(memory) == 0 and json.loads(path.read_text())["udp_blocked"] == {}
        finally:
            await _close_all(opened, relay)

    _run(main, 60)


def test_send_batch_writes_queued_frames_as_separate_messages_in_one_write() -> None:
    """The relay's and the client's TCP writers hand TLS a burst of frames at once (one write, up to
    the batch limit), and the other side still gets one WebSocket message per relay frame, in order."""

    async def main() -> None:
        got: list[bytes] = []
        done = asyncio.Event()

        async def handler(ws: ServerConnection) -> None:
            async for message in ws:
                assert isinstance(message, bytes)
                got.append(message)
                if len(got) == 8:
                    done.set()

        async with ws_serve(handler, "127.0.0.1", 0, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            async with ws_connect(f"ws://127.0.0.1:{port}", compression=None, proxy=None) as ws:
                writes: list[int] = []
                real = ws.transport.write

                def counting(data: Any) -> None:
                    writes.append(len(data))
                    real(data)

                ws.transport.write = counting  # type: ignore[method-assign]
                frames = [bytes([i]) * (1000 + i) for i in range(8)]
                queue = collections.deque(frames)
                assert await send_batch(ws, queue, limit=5000) == sum(map(len, frames[:4]))
                assert len(queue) == 4 and len(writes) == 1  # four frames (4,006 bytes) in one write
                assert await send_batch(ws, queue, limit=100) == len(frames[4])  # at least one frame
                while queue:
                    await send_batch(ws, queue)
                assert len(writes) == 3
                await asyncio.wait_for(done.wait(), 10)
                assert got == frames

    _run(main, 30)
