"""``asgi-p2p status``, ``invite``, ``pair`` and ``peers`` against running ``serve`` and ``relay`` processes."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from asgi_p2p.errors import P2PError
from asgi_p2p.identity import SecretKey
from asgi_p2p.node import Node
from asgi_p2p.ticket import Ticket

from .conftest import REPO, Cli, ServerProcess, Starter, one_line_error


@pytest.fixture
def rundir() -> Iterator[Path]:
    """A short runtime dir (unix socket paths are limited to 107 bytes; pytest's tmp_path is long)."""
    path = Path(tempfile.mkdtemp(prefix="ap"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def cli_async(cli: Cli, *args: str | Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the CLI without blocking the loop (in-process nodes keep their connections alive meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asgi_p2p",
        *map(str, args),
        cwd=REPO,
        env={**cli.env, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def ok(result: tuple[int, str, str]) -> str:
    code, out, err = result
    assert code == 0, err
    return out


async def test_status_shows_a_live_peer(cli: Cli, start_server: Starter, rundir: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(rundir)}
    server = start_server("apps.music:app", "--ephemeral", env=env)
    addr = Ticket.parse(server.ticket_file.read_text().strip()).to_node_addr()
    assert f"admin    {rundir}/asgi-p2p/{addr.node_id}.sock" in server.stdout
    client = await Node.bind(SecretKey.generate())
    try:
        conn = await asyncio.wait_for(client.connect(addr), 10)
        await conn.send(b"x" * 5000)
        # the node is found in the default runtime dir: no --admin-socket needed
        status = json.loads(ok(await cli_async(cli, "status", "--json", env=env)))
        assert status["node_id"] == str(addr.node_id)
        assert {"kind": "udp", "address": f"127.0.0.1:{addr.direct_addresses[0][1]}"} in status["listeners"]
        assert status["relay"] is None
        (peer,) = status["peers"]
        assert peer["node_id"] == str(client.node_id)  # the full z-base-32 id
        assert peer["path"] == "direct"
        assert peer["address"] == f"127.0.0.1:{client.local_address[1]}"
        assert peer["direction"] == "in" and peer["alpn"] == "asgi-p2p/msg/1"
        assert peer["rtt_ms"] > 0
        assert peer["bytes_received"] > 5000 and peer["bytes_sent"] > 0
        assert peer["connected_seconds"] >= 0 and peer["since"].endswith("Z")
        text = ok(await cli_async(cli, "status", env=env))
        assert f"node id    {addr.node_id}" in text
        assert str(client.node_id) in text
        assert f"direct 127.0.0.1:{client.local_address[1]}" in text
        assert "relay      none" in text
        await conn.close()
    finally:
        await client.close()


def _start_relay(cli: Cli, workdir: Path, admin: Path) -> tuple[subprocess.Popen[bytes], str]:
    url_file = workdir / "relay-url.txt"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asgi_p2p",
            "relay",
            "--ephemeral",
            "--url-file",
            str(url_file),
            "--admin-socket",
            str(admin),
        ],
        cwd=REPO,
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if url_file.exists() and url_file.read_text().strip():
            return proc, url_file.read_text().strip()
        assert proc.poll() is None, "relay exited"
        time.sleep(0.05)
    proc.kill()
    pytest.fail("relay not ready")


def test_status_shows_relay_state_and_the_relay_has_a_status_too(
    cli: Cli, start_server: Starter, rundir: Path, tmp_path: Path
) -> None:
    relay, url = _start_relay(cli, tmp_path, rundir / "relay.sock")
    try:
        server = start_server("apps.music:app", "--ephemeral", "--relay", url, "--admin-socket", rundir / "s.sock")
        status = json.loads(cli.run("status", "--json", "--admin-socket", rundir / "s.sock").stdout)
        assert status["relay"]["url"] == url
        assert status["relay"]["connected"] is True
        assert status["relay"]["observed_address"].startswith("127.0.0.1:")
        assert status["peers"] == []  # the relay connection is not a peer
        text = cli.run("status", "--admin-socket", rundir / "s.sock").stdout.decode()
        assert f"relay      {url} (connected, sees us at 127.0.0.1:" in text
        # the relay's own admin socket: its client (the serving node) is a peer there
        relay_status = json.loads(cli.run("status", "--json", "--admin-socket", rundir / "relay.sock").stdout)
        node_id = Ticket.parse(server.ticket_file.read_text().strip()).node_id
        assert str(node_id) in [p["node_id"] for p in relay_status["peers"]]
    finally:
        relay.terminate()
        relay.wait(timeout=30)


async def test_invite_pair_peers_revoke(cli: Cli, start_server: Starter, rundir: Path, tmp_path: Path) -> None:
    sock = rundir / "s.sock"
    allow_file = tmp_path / "allowed.txt"
    allow_file.write_text("# my devices\n")  # nobody yet: pairing fills it
    server: ServerProcess = start_server(
        "apps.music:app", "--ephemeral", "--allow-file", allow_file, "--admin-socket", sock
    )
    ticket = server.ticket_file.read_text().strip()
    assert "nobody is allowed yet: `asgi-p2p invite` makes an invite" in server.stdout
    device_key = tmp_path / "phone.key"
    code, invite, err = await cli_async(cli, "invite", "--label", "phone", "--expires", "10m", "--admin-socket", sock)
    assert code == 0, err
    invite = invite.strip()
    assert invite.startswith("p2pinvite1") and "usable once, expires in 10m" in err
    details = json.loads(ok(await cli_async(cli, "invite", "--json", "--uses", "2", "--admin-socket", sock)))
    assert details["uses"] == 2 and details["expires"] == 600 and details["invite"].startswith("p2pinvite1")
    listing = ok(await cli_async(cli, "invite", "--list", "--admin-socket", sock))
    assert "2 pending invite(s)" in listing
    assert re.search(rf"{details['id']}  2/2 use\(s\) left, expires in \d+m\d\ds\n", listing), listing
    code, out, err = await cli_async(cli, "pair", invite, "--key-file", device_key)
    assert code == 0, err
    device = SecretKey.load(device_key)
    assert out.strip() == ticket
    assert f"now allows this device ({device.node_id}) as 'phone'" in err
    assert f"{device.node_id}  # phone\n" in allow_file.read_text()
    assert f"paired node {device.node_id} (phone)" in server.stderr
    tracks = json.loads(ok(await cli_async(cli, "get", "--key-file", device_key, f"{ticket}/tracks")))
    assert len(tracks) == 4
    # the invite was for one device
    code, _, err = await cli_async(cli, "pair", invite, "--key-file", tmp_path / "tablet.key")
    assert code == 1 and "used already" in one_line_error(err.encode())
    # peers lists it with its label
    text = ok(await cli_async(cli, "peers", "--admin-socket", sock))
    assert f"1 allowed node(s) in {allow_file}" in text
    assert f"{device.node_id}  -          # phone" in text
    # a live connection of the device, closed by revoke
    node = await Node.bind(device)
    try:
        conn = await asyncio.wait_for(node.connect(Ticket.parse(ticket).to_node_addr()), 10)
        listing = json.loads(ok(await cli_async(cli, "peers", "--json", "--admin-socket", sock)))
        assert listing["peers"] == [
            {"node_id": str(device.node_id), "label": "phone", "source": "file", "connected": True}
        ]
        out = ok(await cli_async(cli, "peers", "revoke", str(device.node_id), "--admin-socket", sock))
        assert f"revoked {device.node_id} (phone)" in out and "1 live connection(s) closed" in out
        with pytest.raises(P2PError):
            await asyncio.wait_for(conn.recv(), 10)
        with pytest.raises(P2PError, match="not allowed"):  # and it may not come back
            await asyncio.wait_for(node.connect(Ticket.parse(ticket).to_node_addr()), 10)
    finally:
        await node.close()
    assert str(device.node_id) not in allow_file.read_text()
    assert "# my devices" in allow_file.read_text()  # the rest of the file is kept
    code, _, err = await cli_async(cli, "peers", "revoke", str(device.node_id), "--admin-socket", sock)
    assert code == 1 and "not in the allow-file" in one_line_error(err.encode())


def test_admin_errors_are_one_line(cli: Cli, start_server: Starter, rundir: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(rundir)}
    r = cli.run("status", env=env)
    assert r.returncode == 1 and "no running asgi-p2p node found" in one_line_error(r.stderr)
    key = rundir / "k.key"
    start_server("apps.music:app", "--key-file", key, env=env)  # no allow-file: status works, invites do not
    r = cli.run("invite", env=env)
    assert r.returncode == 1 and "pairing needs an allow-file" in one_line_error(r.stderr)
    r = cli.run("invite", "--expires", "soon", env=env)
    assert r.returncode == 2 and b"expected a duration like 90s" in r.stderr
    start_server("apps.music:app", "--ephemeral", env=env)
    r = cli.run("status", env=env)
    assert r.returncode == 1 and "2 nodes run here" in one_line_error(r.stderr)
    # the same key twice: the default socket is taken, so the second serves without one
    twin = start_server("apps.music:app", "--key-file", key, env=env)
    assert "this node opens no admin socket: admin socket" in twin.stderr
    assert "is in use by another running node (choose another --admin-socket)" in twin.stderr
    assert "admin " not in twin.stdout
    r = cli.run("pair", "p2p1notaninvite")
    assert r.returncode == 1 and "an invite starts with 'p2pinvite1'" in one_line_error(r.stderr)
