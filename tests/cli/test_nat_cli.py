"""`serve --relay`, `get --relay`, `--directory` / `--publish` / `--name` as real processes on 127.0.0.1.

mDNS is never turned on here (it would announce on the host's LAN); only its argument
checks run, which fail before anything is opened.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asgi_p2p.identity import SecretKey
from asgi_p2p.ticket import Ticket
from tests.cli.conftest import REPO, START_TIMEOUT, Cli, Starter, one_line_error

pytestmark = pytest.mark.timeout(120)


class Background:
    """A helper process that writes one line to a file when ready; killed by PID at teardown."""

    def __init__(self, cli: Cli, workdir: Path, argv: list[str], ready_file: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.ready_file = ready_file
        self.stderr_path = workdir / "stderr.txt"
        self.stdout_path = workdir / "stdout.txt"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=cli.env, stdout=out, stderr=err)

    def wait_ready(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.ready_file.exists() and (text := self.ready_file.read_text().strip()):
                return text
            if self.proc.poll() is not None:
                pytest.fail(f"{self.proc.args!r} exited with {self.proc.returncode}:\n{self.stderr_path.read_text()}")
            time.sleep(0.05)
        pytest.fail(f"{self.proc.args!r} not ready after {START_TIMEOUT}s:\n{self.stderr_path.read_text()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def helpers(cli: Cli, tmp_path: Path) -> Iterator[list[Background]]:
    procs: list[Background] = []
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()


@pytest.fixture
def relay_url(cli: Cli, tmp_path: Path, helpers: list[Background]) -> str:
    url_file = tmp_path / "relay.url"
    argv = [sys.executable, "-m", "asgi_p2p", "relay", "--ephemeral", "--url-file", str(url_file)]
    relay = Background(cli, tmp_path / "relay", argv, url_file)
    helpers.append(relay)
    return relay.wait_ready()


@pytest.fixture
def directory_ticket(cli: Cli, tmp_path: Path, helpers: list[Background]) -> str:
    ticket_file = tmp_path / "directory.ticket"
    argv = [sys.executable, "-m", "tests.cli.directory_node", str(ticket_file)]
    node = Background(cli, tmp_path / "directory", argv, ticket_file)
    helpers.append(node)
    return node.wait_ready()


def ok(r: subprocess.CompletedProcess[bytes]) -> bytes:
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout


def path_lines(stderr: bytes) -> list[str]:
    return [line for line in stderr.decode(errors="replace").splitlines() if line.startswith("* path: ")]


def test_serve_with_relay_puts_it_in_the_ticket_and_a_relay_only_ticket_works(
    cli: Cli, start_server: Starter, relay_url: str
) -> None:
    server = start_server("apps.music:app", "--ephemeral", "--relay", relay_url)
    ticket = Ticket.parse(server.wait_ready())
    assert ticket.relay_url == relay_url
    assert ticket.direct_addresses and all(h == "127.0.0.1" for h, _ in ticket.direct_addresses)
    port = ticket.direct_addresses[0][1]
    assert f"relay    {relay_url} (sees us at 127.0.0.1:{port})" in server.stdout

    relay_only = Ticket(ticket.node_id, relay_url, [])  # no direct address: only the relay knows the way
    # the first request leaves with the client's Finished, so its response may come before the
    # hole punch (which starts once the handshake is confirmed): wait for the direct path
    r = cli.run("get", "-v", "--wait-direct", "10", f"{relay_only}/tracks")
    assert len(json.loads(ok(r))) == 4
    err = r.stderr.decode()
    assert "no direct path within" not in err, err
    assert f"* our relay {relay_url}" in err  # the ticket's relay became ours: nothing to pass
    assert f"(dialled relay {relay_url})" in err  # dialled through the relay ...
    lines = path_lines(r.stderr)
    assert lines, err
    # ... and the paths layer found the node's own address (learned from the relay's signal)
    assert re.fullmatch(rf"\* path: direct 127\.0\.0\.1:{port} rtt [0-9.]+ ms.*", lines[-1]), lines
    assert f"path at the end: direct 127.0.0.1:{port}" in err

    explicit = cli.run("get", "--relay", relay_url, f"{relay_only}/")
    assert json.loads(ok(explicit))["tracks"] == 4


def test_get_relay_only_ticket_of_another_relay_is_a_clear_error(
    cli: Cli, start_server: Starter, relay_url: str
) -> None:
    server = start_server("apps.music:app", "--ephemeral", "--relay", relay_url)
    ticket = Ticket.parse(server.wait_ready())
    other = f"p2p-relay://{SecretKey.generate().node_id}@127.0.0.1:9"
    r = cli.run("get", "--relay", other, "--timeout", "5", f"{Ticket(ticket.node_id, relay_url, [])}/", timeout=60)
    assert r.returncode == 7, r.stderr
    line = one_line_error(r.stderr)
    assert "only reachable through relay" in line and relay_url in line
    assert r.stdout == b""


@pytest.mark.parametrize(
    "bad",
    [
        "https://example.com",
        "p2p-relay://127.0.0.1:3340",  # no node id: an impostor could answer
        f"p2p-relay://{'a' * 52}@127.0.0.1:3340",
        "p2p-relay://{node}@127.0.0.1:99999",
        "p2p-relay://{node}@127.0.0.1",
    ],
)
def test_bad_relay_url_is_a_one_line_error(cli: Cli, bad: str) -> None:
    bad = bad.format(node=SecretKey.generate().node_id)
    ticket = Ticket(SecretKey.generate().node_id, None, [("127.0.0.1", 9)])
    for argv in (["apps.music:app", "--ephemeral", "--relay", bad], ["get", "--relay", bad, f"{ticket}/"]):
        r = cli.run(*argv, timeout=30)
        assert r.returncode == 1, (argv, r.stderr)
        line = one_line_error(r.stderr)
        assert "--relay" in line and "invalid relay URL" in line and "p2p-relay://NODE_ID@HOST:PORT" in line


def test_bad_relay_url_from_the_environment_names_the_variable(cli: Cli) -> None:
    r = cli.run("apps.music:app", "--ephemeral", env={"ASGI_P2P_RELAY_URL": "relay.example:3340"}, timeout=30)
    assert r.returncode == 1
    assert "$ASGI_P2P_RELAY_URL" in one_line_error(r.stderr)


def test_dns_settings_from_the_environment_name_the_variable(cli: Cli) -> None:
    r = cli.run("apps.music:app", "--ephemeral", env={"ASGI_P2P_DNS_UPDATE": "127.0.0.1"}, timeout=30)
    assert r.returncode == 1
    assert "$ASGI_P2P_DNS_UPDATE needs --dns-zone" in one_line_error(r.stderr)
    r = cli.run("apps.music:app", "--ephemeral", env={"ASGI_P2P_DNS_ZONE": "p2p.test"}, timeout=30)
    assert r.returncode == 1
    assert "$ASGI_P2P_DNS_ZONE needs --dns-update HOST[:PORT]" in one_line_error(r.stderr)


def test_relay_url_from_the_environment(cli: Cli, start_server: Starter, relay_url: str) -> None:
    server = start_server("apps.music:app", "--ephemeral", env={"ASGI_P2P_RELAY_URL": relay_url})
    assert Ticket.parse(server.wait_ready()).relay_url == relay_url


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--publish"], "--publish needs a directory"),
        (["--directory", "{dir}"], "add --publish"),
        (["--name", "music"], "--name is published with --publish or --mdns"),
        (["--mdns-interface", "127.0.0.1"], "--mdns-interface needs --mdns"),
        (["--mdns", "--mdns-interface", "eth0"], "is not an IP address"),
        (["--directory", "not-a-ticket", "--publish"], "--directory:"),
        (["--directory", "p2p-relay://relay.example:3340", "--publish"], "--directory: invalid relay URL"),
        (["--directory", "{dir}", "--publish", "--name", "Bad Name!"], "--name: invalid node name"),
        (["--dns-zone", "p2p.test"], "--dns-zone needs --dns-update HOST[:PORT] and --dns-tsig-key-file"),
        (["--dns-update", "127.0.0.1"], "--dns-update needs --dns-zone"),
        (["--dns-zone", "p2p.test", "--dns-update", "127.0.0.1", "--dns-tsig-key-file", "/nonexistent"], "cannot read"),
    ],
)
def test_discovery_flag_mistakes_are_one_line_errors(cli: Cli, argv: list[str], message: str) -> None:
    directory = Ticket(SecretKey.generate().node_id, None, [("127.0.0.1", 9)]).encode()
    argv = [a.format(dir=directory) for a in argv]
    r = cli.run("apps.music:app", "--ephemeral", *argv, timeout=30)
    assert r.returncode == 1, r.stderr
    assert message in one_line_error(r.stderr)
    assert r.stdout == b""  # never started serving


def test_get_name_needs_a_discovery_source(cli: Cli) -> None:
    r = cli.run("get", "music.home/tracks", timeout=30)
    assert r.returncode == 1
    assert "add --dns-zone ZONE, --directory TICKET or --mdns" in one_line_error(r.stderr)
    r = cli.run("get", "--dns-server", "127.0.0.1", "music.home/tracks", timeout=30)
    assert r.returncode == 1
    assert "--dns-server needs --dns-zone" in one_line_error(r.stderr)


def test_publish_to_a_directory_then_get_by_name_and_by_node_id(
    cli: Cli, start_server: Starter, directory_ticket: str, relay_url: str
) -> None:
    server = start_server(
        *("apps.music:app", "--ephemeral", "--relay", relay_url),
        *("--directory", directory_ticket, "--publish", "--name", "music.test"),
    )
    ticket = Ticket.parse(server.wait_ready())
    assert "published to directory" in server.stdout and "'music.test'" in server.stdout

    by_name = cli.run("get", "-v", "--directory", directory_ticket, "music.test/tracks")
    assert len(json.loads(ok(by_name))) == 4
    err = by_name.stderr.decode()
    assert f"* resolved name 'music.test' to node {ticket.node_id}" in err
    assert relay_url in err  # the signed record carries the relay, which get then uses

    by_id = cli.run("get", "--directory", directory_ticket, f"{ticket.node_id}/")
    assert json.loads(ok(by_id))["tracks"] == 4

    unknown = cli.run("get", "--directory", directory_ticket, "--timeout", "5", "nobody.test/", timeout=60)
    assert unknown.returncode == 6, unknown.stderr  # like curl's "could not resolve host"
    line = one_line_error(unknown.stderr)
    assert "could not resolve name 'nobody.test'" in line and "directory" in line


def test_nothing_is_published_by_default(cli: Cli, start_server: Starter, directory_ticket: str) -> None:
    server = start_server("apps.music:app", "--ephemeral")
    ticket = Ticket.parse(server.wait_ready())
    r = cli.run("get", "--directory", directory_ticket, "--timeout", "5", f"{ticket.node_id}/", timeout=60)
    assert r.returncode == 6, r.stderr
    assert "could not resolve node" in one_line_error(r.stderr)


def test_publish_to_the_relays_directory(cli: Cli, start_server: Starter, relay_url: str) -> None:
    """A relay serves a directory too: `--relay URL --publish` publishes there, `get --directory URL` finds it."""
    server = start_server("apps.music:app", "--ephemeral", "--relay", relay_url, "--publish", "--name", "music")
    ticket = Ticket.parse(server.wait_ready())
    r = cli.run("get", "-v", "--directory", relay_url, "music/tracks")
    assert len(json.loads(ok(r))) == 4
    assert f"* resolved name 'music' to node {ticket.node_id}" in r.stderr.decode()
