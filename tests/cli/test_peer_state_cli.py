"""``asgi-p2p serve`` keeps a peer state file by default: killed with SIGKILL and started
again (same key and port), it resets its clients' connections at once, before they send.

Real UDP on 127.0.0.1: a serve subprocess and an in-process client node.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from asgi_p2p import ConnectionReset, NetworkConfig, Node, NodeAddr
from asgi_p2p.cli import all_parsers
from asgi_p2p.http import P2PTransport
from asgi_p2p.ticket import Ticket
from tests.cli.conftest import Cli, Starter, free_udp_port


def _state_file(cli: Cli, node_id: object, port: int) -> Path:
    # platformdirs' user data dir with $XDG_DATA_HOME unset (cli_env drops XDG_*)
    return cli.home / ".local" / "share" / "asgi-p2p" / f"peer-state-{node_id}-{port}.json"


def _connections_in(path: Path) -> list[dict[str, object]] | None:
    if not path.exists():
        return None
    conns: list[dict[str, object]] = json.loads(path.read_bytes())["connections"]
    return conns


async def _remembered(path: Path, count: int, timeout: float = 10.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        conns = _connections_in(path)
        if conns is not None and len(conns) == count:
            return conns
        assert time.monotonic() < deadline, f"{path} does not hold {count} connection(s)"
        await asyncio.sleep(0.05)


async def test_serve_keeps_a_peer_state_file_and_resets_its_clients_after_sigkill(
    cli: Cli, start_server: Starter
) -> None:
    port = free_udp_port()
    first = start_server("serve", "apps.music:app", "--port", str(port))
    node_id = Ticket.parse(first.wait_ready()).node_id
    state = _state_file(cli, node_id, port)
    client_node = await Node.bind(host="127.0.0.1", config=NetworkConfig(keepalive_interval=0))
    try:
        transport = P2PTransport(client_node, addrs=[NodeAddr(node_id, [("127.0.0.1", port)])])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node_id}", timeout=30) as client:
            assert (await client.get("/")).status_code == 200
            (old,) = client_node.connections
            (entry,) = await _remembered(state, 1)
            assert entry["addr"] == ["127.0.0.1", client_node.local_address[1]]
            assert state.stat().st_mode & 0o777 == 0o600
            first.kill()  # SIGKILL: no CONNECTION_CLOSE
            second = start_server("serve", "apps.music:app", "--port", str(port))
            # the client sends nothing: the restarted server's reset closes the dead connection
            await asyncio.wait_for(old.wait_closed(), 10.0)
            assert isinstance(old.close_error, ConnectionReset)
            assert client_node.stateless_resets_received == 1 and client_node.connections == []
            assert (await client.get("/")).status_code == 200
            await _remembered(state, 1)  # the new connection, in the new life's file
            second.signal(signal.SIGTERM)
            assert second.wait_exit() == 0
            assert json.loads(state.read_bytes())["connections"] == []  # a clean exit told every peer
    finally:
        await client_node.close()


async def test_no_peer_state_flag_keeps_no_file(cli: Cli, start_server: Starter) -> None:
    """Nor does a node on a random port (``--port 0``, the default): peers take a reset only
    from the address their connection uses, which the next run would not have."""
    port = free_udp_port()
    random_port = start_server("serve", "apps.music:app")
    other = Ticket.parse(random_port.wait_ready())
    first = start_server("serve", "apps.music:app", "--port", str(port), "--no-peer-state")
    node_id = Ticket.parse(first.wait_ready()).node_id
    client_node = await Node.bind(host="127.0.0.1", config=NetworkConfig(keepalive_interval=0))
    try:
        transport = P2PTransport(client_node, addrs=[NodeAddr(node_id, [("127.0.0.1", port)])])
        async with httpx.AsyncClient(transport=transport, base_url=f"https://{node_id}", timeout=30) as client:
            assert (await client.get("/")).status_code == 200
            (old,) = client_node.connections
            to_other = P2PTransport(client_node, addrs=[NodeAddr(other.node_id, list(other.direct_addresses))])
            async with httpx.AsyncClient(transport=to_other, base_url=f"https://{other.node_id}") as other_client:
                assert (await other_client.get("/")).status_code == 200
            await asyncio.sleep(1.5)  # past when a file would be written
            first.kill()
            start_server("serve", "apps.music:app", "--port", str(port), "--no-peer-state")
            await asyncio.sleep(1.0)
            assert not old.closed  # nothing told the client: it learns when it sends
            assert (await client.get("/")).status_code == 200
            assert client_node.stateless_resets_received == 1  # the reactive reset
        random_port.kill()
        assert not _state_file(cli, node_id, port).parent.exists()
    finally:
        await client_node.close()


def test_peer_state_and_no_peer_state_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    parser = all_parsers()["serve"]
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--peer-state", "peers.json", "--no-peer-state", "m:app"])
    assert exc.value.code == 2
    assert "argument --no-peer-state: not allowed with argument --peer-state" in capsys.readouterr().err
    assert parser.parse_args(["--peer-state", "peers.json", "m:app"]).peer_state == Path("peers.json")
    assert parser.parse_args(["--no-peer-state", "m:app"]).no_peer_state
