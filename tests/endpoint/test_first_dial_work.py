"""A process's first dial sends its Initial before the work its handshake needs only later
(issue 11 item 2: a fresh process's first response on the WAN rig).

The node certificate goes in a client's second flight (it answers the server's
CertificateRequest), so a node that has not served yet builds it right after its first
Initial left, before any answer can be read, and still proves its key in that handshake.  The
session-ticket sealer (HKDF + AES-GCM set-up) is a server's: a node that only dials never
builds one.  On real UDP bound to a wildcard address, the interfaces' addresses are read once
for the several times a dial asks for them.
"""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

import pytest

from asgi_p2p import NetworkConfig, Node, SecretKey
from asgi_p2p.endpoint import endpoint as endpoint_module
from asgi_p2p.net import udp
from asgi_p2p.sim import Simulation

CONFIG = NetworkConfig(keepalive_interval=0)


@pytest.mark.sim(loss=0.0, latency=0.02)
async def test_the_first_initial_leaves_before_the_certificate_is_built_and_the_client_still_proves_its_key(
    sim: Simulation, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    built = endpoint_module.node_certificate

    def node_certificate(key: SecretKey) -> Any:
        events.append(f"certificate {key.node_id}")
        return built(key)

    monkeypatch.setattr(endpoint_module, "node_certificate", node_certificate)
    server_host, client_host = sim.host("server"), sim.host("client")
    sim.link(server_host, client_host, latency=0.02, loss=0.0)
    server = await Node.bind(
        SecretKey.from_seed("server"), host="0.0.0.0", port=4433, config=CONFIG, network=server_host
    )
    client_key = SecretKey.from_seed("client")
    client = await Node.bind(client_key, host="0.0.0.0", port=5555, config=CONFIG, network=client_host)
    router = client.router
    send, sendmany = router.sendto, router.sendmany

    def note(data: bytes) -> None:
        if data[:1] and data[0] & 0xF0 == 0xC0 and "initial" not in events:  # long header, type Initial
            events.append("initial")

    def sendto(data: bytes, addr: Any) -> None:
        note(data)
        send(data, addr)

    def sendmany_(datagrams: Any, addr: Any) -> None:
        for data in datagrams:
            note(data)
        sendmany(datagrams, addr)

    monkeypatch.setattr(router, "sendto", sendto)
    monkeypatch.setattr(router, "sendmany", sendmany_)
    assert events == []  # binding built nothing yet
    accepted: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def accept() -> None:
        accepted.set_result(await server.listen().accept())

    task = asyncio.ensure_future(accept())
    conn = await asyncio.wait_for(client.connect(server.node_addr()), 5)
    inc = await asyncio.wait_for(accepted, 5)
    assert events[:2] == ["initial", f"certificate {client_key.node_id}"], events
    assert events.count(f"certificate {client_key.node_id}") == 1  # built once, for every later dial
    # the server authenticated the client by the key of that certificate
    assert inc.remote_node_id == client_key.node_id and conn.remote_node_id == server.node_id
    task.cancel()
    await client.close()
    await server.close()


@pytest.mark.sim(loss=0.0, latency=0.02)
async def test_a_node_that_only_dials_builds_no_ticket_sealer_and_still_gets_a_ticket(
    sim: Simulation, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    sealer = endpoint_module.TicketSealer

    def ticket_sealer(key: SecretKey) -> Any:
        made.append(str(key.node_id))
        return sealer(key)

    monkeypatch.setattr(endpoint_module, "TicketSealer", ticket_sealer)
    server_host, client_host = sim.host("server"), sim.host("client")
    sim.link(server_host, client_host, latency=0.02, loss=0.0)
    server = await Node.bind(
        SecretKey.from_seed("server"), host="0.0.0.0", port=4433, config=CONFIG, network=server_host
    )
    client = await Node.bind(
        SecretKey.from_seed("client"),
        host="0.0.0.0",
        port=5555,
        config=CONFIG,
        network=client_host,
        rng=random.Random(1),
    )
    assert made == []
    conn = await asyncio.wait_for(client.connect(server.node_addr()), 5)
    inc = await asyncio.wait_for(server.listen().accept(), 5)
    await conn.send(b"ping")
    assert await asyncio.wait_for(inc.recv(), 5) == b"ping"
    await asyncio.sleep(0.2)
    assert made == [str(server.node_id)]  # the server sealed the client a ticket; the client built none
    assert client.import_session_tickets(client.export_session_tickets()) == 1  # and it holds that ticket
    await client.close()
    await server.close()


class _Loop:
    """The two loop methods a UdpSocket uses, with a clock the test sets."""

    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:
        return self.now

    def add_reader(self, fd: int, callback: Any) -> None:
        pass

    def remove_reader(self, fd: int) -> None:
        pass


def test_a_wildcard_sockets_interface_addresses_are_read_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    names = socket.if_nameindex

    def if_nameindex() -> list[tuple[int, str]]:
        reads.append(1)
        return names()

    monkeypatch.setattr(socket, "if_nameindex", if_nameindex)
    loop = _Loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    udp_sock = udp.UdpSocket(sock, loop, lambda data, addr: None)  # type: ignore[arg-type]
    try:
        first = udp_sock.local_addresses()
        assert udp_sock.local_addresses() == first and len(reads) == 1
        first.append(("192.0.2.1", 1))  # a caller's list is its own
        assert ("192.0.2.1", 1) not in udp_sock.local_addresses()
        loop.now += udp.IFADDRS_TTL - 0.01
        udp_sock.local_addresses()
        assert len(reads) == 1
        loop.now += 0.02
        udp_sock.local_addresses()
        assert len(reads) == 2  # read again: an interface may have come or gone
    finally:
        udp_sock.close()


def _first_initial(seed: int) -> bytes:
    """The first datagram a fresh node's dial sends, in a simulation with ``seed``."""
    sim = Simulation(seed=seed, latency=0.02, loss=0.0)
    server_host, client_host = sim.host("server"), sim.host("client")
    sim.link(server_host, client_host, latency=0.02, loss=0.0)
    sent: list[bytes] = []

    async def main() -> None:
        server = await Node.bind(SecretKey.from_seed("server"), host="0.0.0.0", port=4433, network=server_host)
        client = await Node.bind(SecretKey.from_seed("client"), host="0.0.0.0", port=5555, network=client_host)
        send = client.router.sendto

        def sendto(data: bytes, addr: Any) -> None:
            sent.append(data)
            send(data, addr)

        client.router.sendto = sendto
        await asyncio.wait_for(client.connect(server.node_addr()), 5)
        await client.close()
        await server.close()

    sim.run(main())
    return sent[0]


def test_a_handshakes_key_share_follows_the_simulations_seed() -> None:
    # aioquic's X25519 keys came from OpenSSL's generator (whose first use in a process cost a
    # fresh client's first Initial about 0.8 ms, and which no seed reaches); now from
    # ``secrets``: one seed, one first Initial, byte for byte
    first = _first_initial(7)
    assert first[0] & 0xF0 == 0xC0  # a long-header Initial
    assert _first_initial(7) == first
    assert _first_initial(8) != first
