"""Proactive stateless resets: a restarted node resets its previous life's connections at once.

On the simulator (exact virtual time, no loss): a server with a peer state file crashes
and starts again with the same key, port and file; its clients' pooled connections close
half a round trip after the restart, before they send anything, and their next request
goes out at once on a resumed connection (0-RTT).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asgi_p2p.endpoint.endpoint as endpoint_module
from asgi_p2p import ConnectionReset, NetworkConfig, Node, SecretKey
from asgi_p2p.endpoint.peerstate import (
    MAX_CIDS_PER_PEER,
    MAX_PEER_STATE_SIZE,
    MAX_REMEMBERED,
    RememberedConnection,
    dump_peer_state,
    load_peer_state,
    read_peer_state,
    reset_order,
    write_private,
)
from asgi_p2p.http import H3Server, P2PTransport
from asgi_p2p.sim import Host, Simulation

LATENCY = 0.020  # one way: RTT 40 ms
RTT = 2 * LATENCY
KEY = SecretKey.from_seed("restarting server")
CLIENT_KEY = SecretKey.from_seed("long-lived client")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = f"{scope['method']} {scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def _config() -> NetworkConfig:
    return NetworkConfig(keepalive_interval=0)


async def _start_server(
    host: Host, state: Path | None, key: SecretKey = KEY, config: NetworkConfig | None = None
) -> tuple[Node, H3Server]:
    config = config or _config()
    node = await Node.bind(key, host="0.0.0.0", port=4433, config=config, network=host, peer_state=state)
    server = H3Server(app, node)
    await server.startup()
    return node, server


def _pair(sim: Simulation) -> tuple[Host, Host]:
    server_host, client_host = sim.host("server"), sim.host("client")
    sim.link(server_host, client_host, latency=LATENCY, loss=0.0)
    return server_host, client_host


async def _timed(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, float]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    response = await client.get(path)
    return response, loop.time() - t0


# -- the file (pure) ----------------------------------------------------------------------


def test_the_file_round_trips_and_refuses_what_it_did_not_write() -> None:
    conns = [
        RememberedConnection(("192.0.2.1", 4433), (b"\x01" * 8, b"\x02" * 8)),
        RememberedConnection(("::1", 9), (b"\x03" * 8,)),
    ]
    data = dump_peer_state(KEY.node_id, 4433, 1.7e9, conns)
    assert load_peer_state(data, KEY.node_id, 2) == (4433, 1.7e9, conns)
    # the first id of every connection goes out before any connection's second
    assert reset_order(conns) == [
        (("192.0.2.1", 4433), b"\x01" * 8),
        (("::1", 9), b"\x03" * 8),
        (("192.0.2.1", 4433), b"\x02" * 8),
    ]
    other = SecretKey.from_seed("someone else").node_id
    doc = json.loads(data)

    def bad(change: dict[str, Any], match: str, limit: int = 2) -> None:
        with pytest.raises(ValueError, match=match):
            load_peer_state(json.dumps(doc | change).encode(), KEY.node_id, limit)

    bad({"node": str(other)}, f"it is node {other}'s")
    bad({"version": 2}, "not a peer state file")
    bad({"written_at": "nan"}, "not a finite number")
    bad({"port": 0}, "bad port 0")
    bad({"connections": [{"addr": ["example.com", 1], "cids": ["01"]}]}, "does not appear to be an IPv4 or IPv6")
    bad({"connections": [{"addr": ["192.0.2.1", 0], "cids": ["01"]}]}, "bad port")
    bad({"connections": [{"addr": ["192.0.2.1", 1], "cids": ["01"] * (MAX_CIDS_PER_PEER + 1)}]}, "bad connection ids")
    bad({"connections": [{"addr": ["192.0.2.1", 1], "cids": ["zz"]}]}, "non-hexadecimal")
    bad({"connections": [{"cids": ["01"]}]}, "malformed")
    bad({"connections": {}}, "not a list")
    bad({"connections": [{"addr": [1, 2], "cids": ["01"]}]}, "bad address 1")
    with pytest.raises(ValueError, match="larger than"):
        load_peer_state(b" " * (MAX_PEER_STATE_SIZE + 1), KEY.node_id, 2)
    with pytest.raises(ValueError):
        load_peer_state(b"\xff{", KEY.node_id, 2)
    with pytest.raises(ValueError, match="malformed"):
        load_peer_state(b"[" * 100_000, KEY.node_id, 2)  # nested too deep for the parser


def test_the_largest_file_a_node_writes_is_one_it_reads_back() -> None:
    """MAX_REMEMBERED entries of the longest address text, scope, port and ids fit in
    MAX_PEER_STATE_SIZE (a node with max_connections near 2^20 writes no more)."""
    host = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%" + "\u00e9" * 15  # escaped: 6 bytes a character
    worst = RememberedConnection((host, 65535), (b"\xff" * 20,) * MAX_CIDS_PER_PEER)
    data = dump_peer_state(KEY.node_id, 65535, 1.7e9, [worst] * MAX_REMEMBERED)
    assert len(data) <= MAX_PEER_STATE_SIZE
    typical = RememberedConnection(("2001:db8::1", 50000), (b"\x01" * 8,) * MAX_CIDS_PER_PEER)
    assert MAX_REMEMBERED >= 3_000  # and a file of typical entries holds thousands
    assert len(dump_peer_state(KEY.node_id, 4433, 1.7e9, [typical] * MAX_REMEMBERED)) < MAX_PEER_STATE_SIZE // 2


def test_a_file_longer_than_the_limit_yields_its_first_connections() -> None:
    """max_connections lowered between two runs: the restart resets the connections it can."""
    conns = [RememberedConnection(("192.0.2.1", 1000 + i), (bytes([i + 1]) * 8,)) for i in range(5)]
    data = dump_peer_state(KEY.node_id, 4433, 1.7e9, conns)
    assert load_peer_state(data, KEY.node_id, 2) == (4433, 1.7e9, conns[:2])
    assert load_peer_state(data, KEY.node_id, 100) == (4433, 1.7e9, conns)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=60),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(max_size=200),
    fields=st.dictionaries(st.sampled_from(["version", "node", "port", "written_at", "connections"]), _JSON),
    record=st.dictionaries(st.sampled_from(["addr", "cids"]), _JSON),
)
def test_any_damaged_file_is_a_value_error(data: bytes, fields: dict[str, Any], record: dict[str, Any]) -> None:
    """Whatever the file holds, loading it returns or raises ValueError (the node then warns)."""
    good = json.loads(dump_peer_state(KEY.node_id, 4433, 1.0, []))
    for doc in (data, json.dumps(good | fields).encode(), json.dumps(good | {"connections": [record]}).encode()):
        try:
            _port, _at, conns = load_peer_state(doc, KEY.node_id, 4)
        except ValueError:
            continue
        assert len(conns) <= 4 and all(0 < len(c.cids) <= MAX_CIDS_PER_PEER for c in conns)


def test_the_file_is_private_and_replaced_whole(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "peers.json"
    data = dump_peer_state(KEY.node_id, 4433, 5.0, [RememberedConnection(("192.0.2.1", 4433), (b"\x01" * 8,))])
    write_private(path, b"old")
    os.chmod(path, 0o644)
    write_private(path, data)
    assert path.read_bytes() == data and path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["peers.json"]  # no temporary file left
    assert read_peer_state(path, KEY.node_id, 10) is not None
    assert read_peer_state(tmp_path / "missing.json", KEY.node_id, 10) is None and not caplog.records
    os.chmod(path, 0o640)  # someone else could have written it: not trusted
    assert read_peer_state(path, KEY.node_id, 10) is None
    assert "accessible by group or others" in caplog.text


def test_a_symbolic_link_or_another_users_file_is_not_trusted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file planted in a shared directory (a link to one, or one of another user) would make
    the node send resets where its author chose."""
    conns = [RememberedConnection(("192.0.2.1", 4433), (b"\x01" * 8,))]
    real = tmp_path / "real.json"
    write_private(real, dump_peer_state(KEY.node_id, 4433, 5.0, conns))
    assert read_peer_state(real, KEY.node_id, 10) == (4433, 5.0, conns)
    link = tmp_path / "peers.json"
    link.symlink_to(real)
    assert read_peer_state(link, KEY.node_id, 10) is None
    assert f"not using peer state file {link}" in caplog.text
    caplog.clear()
    if os.geteuid() == 0:
        os.chown(real, 65534, -1)  # nobody's
    else:
        euid = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: euid + 1)
    assert read_peer_state(real, KEY.node_id, 10) is None
    assert "owned by uid" in caplog.text


def test_a_failed_write_leaves_the_file_and_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "peers.json"
    write_private(path, b"old")

    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="No space left"):
        write_private(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["peers.json"]
    monkeypatch.undo()
    # a file planted under the old fixed temporary name is neither reused nor followed
    planted = tmp_path / "elsewhere"
    planted.write_bytes(b"theirs")
    (tmp_path / f".peers.json.{os.getpid()}.tmp").symlink_to(planted)
    write_private(path, b"new")
    assert path.read_bytes() == b"new" and planted.read_bytes() == b"theirs"
    assert not path.is_symlink() and path.stat().st_mode & 0o777 == 0o600


# -- on the simulator ------------------------------------------------------------------------


@pytest.mark.parametrize("in_flight", [False, True])
def test_restarted_server_resets_its_clients_before_their_next_request(
    sim: Simulation, tmp_path: Path, in_flight: bool
) -> None:
    """Idle client: the reset closes its pooled connection 0.5 RTT after the restart and its
    next GET takes 1 RTT.  GET sent the instant the server is back (worst case): answered
    1.5 RTTs after the restart (the reset, then the GET as 0-RTT data of a resumed connection)."""
    server_host, client_host = _pair(sim)
    state = tmp_path / "peers.json"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        node, _server = await _start_server(server_host, state)
        client_node = await Node.bind(CLIENT_KEY, host="0.0.0.0", config=_config(), network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as client:
            assert (await client.get("/before")).text == "GET /before"
            (old,) = client_node.connections
            await asyncio.sleep(1.5)  # the file is written shortly after the connection changes
            assert node.peer_state_writes >= 1 and state.stat().st_mode & 0o777 == 0o600
            (remembered,) = node.remembered_connections()
            assert remembered.address == client_node.local_address and 1 < len(remembered.cids) <= 4
            sim.crash(server_host)  # no CONNECTION_CLOSE: the client's connection looks alive
            await asyncio.sleep(0.5)
            sim.restart(server_host)
            node2, server2 = await _start_server(server_host, state)
            restarted_at = loop.time()
            if in_flight:
                after, took = await _timed(client, "/after")
                assert took <= 1.5 * RTT + 0.002, took  # < 2 RTTs: the reactive reset's cost
                # the GET's first packet went out on the dead connection (the node answered it
                # with a reset too, which arrived after the retry had left)
                assert node2.stateless_resets_sent >= 1
            else:
                await asyncio.wait_for(old.wait_closed(), 1.0)
                assert loop.time() - restarted_at <= LATENCY + 0.002  # before the client sent anything
                assert client_node.connections == []  # the pool holds no dead connection
                await asyncio.sleep(0.3)  # the client's next request comes later
                after, took = await _timed(client, "/after")
                assert took <= RTT + 0.002, took  # a resumed connection, the GET as 0-RTT data
                assert node2.stateless_resets_sent == 0  # nothing reached it on the old connection
            assert after.text == "GET /after"
            assert isinstance(old.close_error, ConnectionReset) and "reset by peer" in str(old.close_error)
            assert client_node.stateless_resets_received == 1
            assert node2.proactive_resets_sent == len(remembered.cids)
            assert node2.early_data_accepted == 1
        await client_node.close()
        await server2.shutdown()
        await node2.close()
        assert json.loads(state.read_bytes())["connections"] == []  # a clean close leaves nothing to reset
        await node.close(timeout=0.1)

    sim.run(main())


def test_a_long_quiet_connection_is_still_reset(sim: Simulation, tmp_path: Path) -> None:
    """Nothing changed for longer than the idle timeout (the client's keep-alives hold the connection open): the
    file's time is refreshed every half idle timeout, so the restart still resets it."""
    server_host, client_host = _pair(sim)
    state = tmp_path / "peers.json"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        node, _server = await _start_server(server_host, state)
        client_node = await Node.bind(CLIENT_KEY, host="0.0.0.0", config=NetworkConfig(), network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as client:
            assert (await client.get("/before")).status_code == 200
            (old,) = client_node.connections
            await asyncio.sleep(1.5)
            writes = node.peer_state_writes
            await asyncio.sleep(50.0)  # longer than the idle timeout (30 s; the server's H3 idle close is 60 s)
            assert not old.closed
            assert writes + 2 <= node.peer_state_writes <= writes + 4  # every 15 s
            sim.crash(server_host)
            sim.restart(server_host)
            node2, server2 = await _start_server(server_host, state)
            restarted_at = loop.time()
            await asyncio.wait_for(old.wait_closed(), 1.0)
            assert loop.time() - restarted_at <= LATENCY + 0.002
            assert (await client.get("/after")).status_code == 200
        await client_node.close()
        await server2.shutdown()
        await node2.close()
        await node.close(timeout=0.1)

    sim.run(main())


@pytest.mark.parametrize("case", ["no file", "stale", "other port", "other key", "garbage"])
def test_no_proactive_reset_without_a_fresh_file_of_the_node(
    sim: Simulation, tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    """Without the node's own, recent file a restart is as before: the client learns of it
    when it sends (a reactive reset).  A file of another key names the wrong node; one
    rewritten for the other key gets its resets ignored (their tokens are not the node's)."""
    server_host, client_host = _pair(sim)
    state = tmp_path / "peers.json"
    other = SecretKey.from_seed("another node")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        node, _server = await _start_server(server_host, None if case == "no file" else state)
        client_node = await Node.bind(CLIENT_KEY, host="0.0.0.0", config=_config(), network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as client:
            assert (await client.get("/before")).status_code == 200
            (old,) = client_node.connections
            await asyncio.sleep(1.5)
            sim.crash(server_host)
            sim.restart(server_host)
            if case == "stale":  # written past the idle timeout ago: the peers dropped those connections
                doc = json.loads(state.read_bytes())
                write_private(state, json.dumps(doc | {"written_at": doc["written_at"] - 31.0}).encode())
            if case == "other port":  # another process with this key, on port 4434 (peers would ignore it)
                doc = json.loads(state.read_bytes())
                write_private(state, json.dumps(doc | {"port": 4434}).encode())
            if case == "garbage":
                write_private(state, b"{not json")
            if case == "other key":
                doc = json.loads(state.read_bytes())
                for who in (KEY, other):
                    write_private(state, json.dumps(doc | {"node": str(who.node_id)}).encode())
                    imposter, _ = await _start_server(server_host, state, other)
                    await asyncio.sleep(2 * RTT)
                    assert (imposter.proactive_resets_sent > 0) == (who is other)
                    await imposter.close()
                assert f"it is node {KEY.node_id}'s, not {other.node_id}'s" in caplog.text
                assert not old.closed and client_node.stateless_resets_received == 0  # wrong tokens: ignored
                return
            with caplog.at_level(logging.INFO, logger="asgi_p2p.endpoint"):
                node2, server2 = await _start_server(server_host, state)
            if case == "garbage":
                assert "not using peer state file" in caplog.text and "malformed" not in caplog.text
            if case == "stale":
                assert "not resetting the 1 connection(s)" in caplog.text and "written 3" in caplog.text
            if case == "other port":
                assert "they were on port 4434, this node is on 4433" in caplog.text
            await asyncio.sleep(2 * RTT)
            assert node2.proactive_resets_sent == 0
            assert not old.closed
            t0 = loop.time()
            assert (await client.get("/after")).status_code == 200
            assert client_node.stateless_resets_received == 1 and node2.stateless_resets_sent == 1
            assert loop.time() - t0 <= 2 * RTT + 0.002  # the reactive reset: 1 RTT more
        await client_node.close()
        await server2.shutdown()
        await node2.close()
        await node.close(timeout=0.1)

    sim.run(main())


def test_the_file_is_written_debounced_and_holds_only_live_direct_connections(sim: Simulation, tmp_path: Path) -> None:
    server_host, client_host = _pair(sim)
    state = tmp_path / "peers.json"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        node, server = await _start_server(server_host, state)
        clients = [await Node.bind(host="0.0.0.0", config=_config(), network=client_host) for _ in range(5)]
        t0 = loop.time()
        for c in clients:  # five connections within a few round trips: one or two writes, not five
            async with httpx.AsyncClient(
                transport=P2PTransport(c, addrs=[node.node_addr()]), base_url=f"https://{node.node_id}"
            ) as client:
                assert (await client.get("/")).status_code == 200
        await asyncio.sleep(1.2)
        assert 1 <= node.peer_state_writes <= 1 + (loop.time() - t0) / 1.0 + 1
        doc = json.loads(state.read_bytes())
        assert len(doc["connections"]) == 5
        assert sorted(tuple(c["addr"]) for c in doc["connections"]) == sorted(
            (client_host.address, c.local_address[1]) for c in clients
        )
        writes = node.peer_state_writes
        await asyncio.sleep(5.0)  # nothing changed: nothing written
        assert node.peer_state_writes == writes
        await clients[0].close()
        await asyncio.sleep(1.2)
        assert len(json.loads(state.read_bytes())["connections"]) == 4
        for c in clients[1:]:
            await c.close()
        await server.shutdown()
        await node.close()

    sim.run(main())


def test_an_unwritable_file_warns_once_and_the_node_serves(
    sim: Simulation, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server_host, client_host = _pair(sim)
    state = tmp_path / "missing-dir" / "peers.json"

    async def main() -> None:
        node, server = await _start_server(server_host, state)
        client_node = await Node.bind(host="0.0.0.0", config=_config(), network=client_host)
        async with httpx.AsyncClient(
            transport=P2PTransport(client_node, addrs=[node.node_addr()]), base_url=f"https://{node.node_id}"
        ) as client:
            for _ in range(3):
                assert (await client.get("/")).status_code == 200
                await asyncio.sleep(1.5)
        assert caplog.text.count("could not write peer state file") == 1
        await client_node.close()
        await server.shutdown()
        await node.close()

    sim.run(main())


def test_relayed_connections_are_not_remembered(tmp_path: Path) -> None:
    """Behind symmetric NATs two nodes talk only through the relay: no address to reset them
    at (a packet reaching the restarted node through the relay still gets a reactive reset)."""
    import random

    from asgi_p2p import NodeAddr
    from asgi_p2p.relay.server import RelayServer

    sim = Simulation(seed=5, mtu=1500, latency=0.02, loss=0.0)
    with sim:
        relay_host, a, b = sim.host("relay"), sim.host("alice", nat="symmetric"), sim.host("bob", nat="symmetric")

        async def bind(name: str, host: Host, url: str, state: Path | None) -> Node:
            node = await Node.bind(
                SecretKey.from_seed(name),
                host="0.0.0.0",
                port=4433,
                config=_config(),
                network=host,
                rng=random.Random(name),
                relay_url=url,
                peer_state=state,
            )
            assert node.relay is not None
            await node.relay.wait_connected(10)
            return node

        async def main() -> None:
            relay = await RelayServer.bind(SecretKey.from_seed("relay"), host="0.0.0.0", port=3478, network=relay_host)
            url = str(relay.url)
            alice = await bind("alice", a, url, tmp_path / "alice.json")
            bob = await bind("bob", b, url, None)
            conn = await bob.connect(NodeAddr(alice.node_id, relay_url=url))
            await conn.send(b"hello")
            assert await (await alice.listen().accept()).recv() == b"hello"
            assert conn.peer_connection.path.kind == "relay"
            await asyncio.sleep(1.5)
            # alice's own connection to the relay server is direct UDP; bob's, through it, is not
            remembered = json.loads((tmp_path / "alice.json").read_bytes())["connections"]
            assert [tuple(c["addr"]) for c in remembered] == [(relay_host.address, 3478)]
            assert len(alice.connections) == 2
            for node in (bob, alice):
                await node.close(timeout=0.1)
            await relay.close()

        sim.run(main())


def test_startup_resets_are_small_paced_and_sent_once(sim: Simulation, tmp_path: Path) -> None:
    """400 remembered ids: 28-byte resets ending with each id's token, the first id of every
    connection first, 64 every 10 ms, each exactly once."""
    from asgi_p2p.endpoint.reset import MIN_TRIGGER_SIZE, ResetTokens
    from tests.sim.sim_helpers import probe

    server_host, peer_host = _pair(sim)
    state = tmp_path / "peers.json"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        p = await probe(peer_host, 5000)
        conns = [
            RememberedConnection((peer_host.address, 5000), tuple(bytes([i, k]) * 4 for k in range(4)))
            for i in range(100)
        ]
        now = server_host.wall_clock_offset() + loop.time()
        write_private(state, dump_peer_state(KEY.node_id, 4433, now, conns))
        node = await Node.bind(KEY, host="0.0.0.0", port=4433, config=_config(), network=server_host, peer_state=state)
        t0 = loop.time()
        await p.wait_for(400)
        await asyncio.sleep(1.0)
        assert len(p.received) == 400 and node.proactive_resets_sent == 400  # once each
        tokens = ResetTokens(KEY)
        expected = [cid for _, cid in reset_order(conns)]
        assert [tokens.token(cid) for cid in expected] == [d[-16:] for d, _, _ in p.received]
        assert all(len(d) == MIN_TRIGGER_SIZE - 1 and d[0] & 0xC0 == 0x40 for d, _, _ in p.received)
        arrivals = [at - t0 - LATENCY for _, _, at in p.received]
        assert arrivals[63] <= 0.001 and arrivals[64] >= 0.009  # a batch of 64, then 10 ms
        assert arrivals[-1] == pytest.approx(0.06, abs=0.002)  # 7 batches
        await node.close()

    sim.run(main())


def test_the_file_holds_at_most_max_remembered_connections(
    sim: Simulation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However large max_connections, the file is bounded (here MAX_REMEMBERED lowered to 2)."""
    monkeypatch.setattr(endpoint_module, "MAX_REMEMBERED", 2)
    server_host, client_host = _pair(sim)
    state = tmp_path / "peers.json"

    async def main() -> None:
        node, server = await _start_server(server_host, state, config=NetworkConfig(keepalive_interval=0))
        assert node.config.max_connections > 2
        clients = [await Node.bind(host="0.0.0.0", config=_config(), network=client_host) for _ in range(3)]
        for c in clients:
            async with httpx.AsyncClient(
                transport=P2PTransport(c, addrs=[node.node_addr()]), base_url=f"https://{node.node_id}"
            ) as client:
                assert (await client.get("/")).status_code == 200
        await asyncio.sleep(1.2)
        assert len(node.connections) == 3
        assert [r.address for r in node.remembered_connections()] == [c.local_address for c in clients[:2]]
        assert len(json.loads(state.read_bytes())["connections"]) == 2
        for c in clients:
            await c.close()
        await server.shutdown()
        await node.close()

    sim.run(main())


def test_a_restart_with_fewer_max_connections_resets_the_first_remembered(sim: Simulation, tmp_path: Path) -> None:
    """The file of a life with max_connections=10 holds 3 connections; the next life allows 1:
    it reads the file's first connection (not none: the file is not refused) and resets it."""
    server_host, client_host = _pair(sim)
    state = tmp_path / "peers.json"

    async def main() -> None:
        node, _server = await _start_server(server_host, state, config=NetworkConfig(keepalive_interval=0))
        clients = [await Node.bind(host="0.0.0.0", config=_config(), network=client_host) for _ in range(3)]
        httpx_clients = [
            httpx.AsyncClient(transport=P2PTransport(c, addrs=[node.node_addr()]), base_url=f"https://{node.node_id}")
            for c in clients
        ]
        for client in httpx_clients:
            assert (await client.get("/")).status_code == 200
        await asyncio.sleep(1.2)
        remembered = node.remembered_connections()
        assert [r.address for r in remembered] == [c.local_address for c in clients]
        olds = [c.connections[0] for c in clients]
        sim.crash(server_host)
        sim.restart(server_host)
        node2, server2 = await _start_server(
            server_host, state, config=NetworkConfig(keepalive_interval=0, max_connections=1)
        )
        await asyncio.wait_for(olds[0].wait_closed(), 1.0)
        assert isinstance(olds[0].close_error, ConnectionReset)
        assert node2.proactive_resets_sent == len(remembered[0].cids)
        assert not olds[1].closed and not olds[2].closed  # reset reactively when they next send
        for client in httpx_clients:
            await client.aclose()
        for c in clients:
            await c.close()
        await server2.shutdown()
        await node2.close()
        await node.close(timeout=0.1)

    sim.run(main())


def test_an_early_connection_is_remembered_only_once_its_handshake_completed(sim: Simulation, tmp_path: Path) -> None:
    """An accepted 0-RTT connection is ready before the client proved its key (its ClientHello may
    be a replay from a spoofed address): it gets into the file only when the client's Finished
    arrives.  Here the Finished is lost (client -> server cut after the ClientHello arrived)."""
    server_host, client_host = _pair(sim)
    state = tmp_path / "peers.json"

    async def main() -> None:
        node, server = await _start_server(server_host, state)
        client_node = await Node.bind(CLIENT_KEY, host="0.0.0.0", config=_config(), network=client_host)
        transport = P2PTransport(client_node, addrs=[node.node_addr()])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node.node_id}") as client:
            assert (await client.get("/first")).status_code == 200  # a ticket for the next connection
            for conn in list(client_node.connections):
                conn.close(0, "test: come back later")
                await conn.wait_closed()
            await asyncio.sleep(1.5)
            assert node.remembered_connections() == [] and json.loads(state.read_bytes())["connections"] == []
            # the ClientHello (with the GET) arrives at 0.5 RTT; the client's Finished leaves at 1 RTT
            sim.after(0.75 * RTT, lambda: sim.partition(client_host, server_host, oneway=True))
            response = await client.get("/early")
            assert response.text == "GET /early" and node.early_data_accepted == 1
            await asyncio.sleep(1.5)  # time for the file to be written, were it to change
            (accepted,) = node.connections
            assert accepted.early and not accepted.handshake_completed
            assert node.remembered_connections() == []
            assert json.loads(state.read_bytes())["connections"] == []
            sim.heal(client_host, server_host, oneway=True)
            await asyncio.wait_for(accepted.wait_handshake(), 10.0)  # the client's Finished, retransmitted
            (remembered,) = node.remembered_connections()
            assert remembered.address == client_node.local_address
            await asyncio.sleep(1.2)
            assert [c["addr"] for c in json.loads(state.read_bytes())["connections"]] == [list(remembered.address)]
        await client_node.close()
        await server.shutdown()
        await node.close()

    sim.run(main())


def test_closing_during_the_startup_resets_stops_them(sim: Simulation, tmp_path: Path) -> None:
    """A node closed while its startup resets are still being paced out sends no more batches."""
    from tests.sim.sim_helpers import probe

    server_host, peer_host = _pair(sim)
    state = tmp_path / "peers.json"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        p = await probe(peer_host, 5000)
        conns = [RememberedConnection((peer_host.address, 5000), (bytes([i]) * 8,)) for i in range(200)]
        write_private(state, dump_peer_state(KEY.node_id, 4433, server_host.wall_clock_offset() + loop.time(), conns))
        node = await Node.bind(KEY, host="0.0.0.0", port=4433, config=_config(), network=server_host, peer_state=state)
        assert node.proactive_resets_sent == 64  # the first batch, at once
        await node.close()
        await asyncio.sleep(0.5)
        assert node.proactive_resets_sent == 64 and len(p.received) == 64

    sim.run(main())
