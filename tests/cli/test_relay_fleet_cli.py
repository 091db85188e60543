"""`serve --relay A --relay B` and `get --relay A,B`: several relays, as real processes on 127.0.0.1."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from asgi_p2p.cli import _common
from asgi_p2p.identity import SecretKey
from asgi_p2p.ticket import Ticket
from tests.cli.conftest import Cli, ServerProcess, Starter
from tests.cli.test_nat_cli import Background, directory_ticket, helpers, ok
from tests.cli.test_settings import captured, run

__all__ = ["captured", "directory_ticket", "helpers"]  # fixtures, imported for their names

pytestmark = pytest.mark.timeout(120)


def _relay(cli: Cli, tmp_path: Path, helpers: list[Background], name: str) -> Background:
    url_file = tmp_path / f"{name}.url"
    argv = [sys.executable, "-m", "asgi_p2p", "relay", "--ephemeral", "--url-file", str(url_file)]
    relay = Background(cli, tmp_path / name, argv, url_file)
    helpers.append(relay)
    return relay


def _wait_stderr(server: ServerProcess, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.stderr.splitlines():
            if text in line:
                return line
        time.sleep(0.05)
    pytest.fail(f"no {text!r} in the server's log within {timeout}s:\n{server.stderr}")


def test_serve_with_two_relays_homes_on_one_and_moves_when_it_dies(
    cli: Cli, start_server: Starter, tmp_path: Path, helpers: list[Background]
) -> None:
    relays = {r.wait_ready(): r for r in (_relay(cli, tmp_path, helpers, n) for n in ("relay-a", "relay-b"))}
    url_a, url_b = relays
    server = start_server("apps.music:app", "--ephemeral", "--relay", url_a, "--relay", url_b)
    ticket = Ticket.parse(server.wait_ready())
    home = ticket.relay_url
    assert home in (url_a, url_b)  # the home relay, by round-trip time
    other = url_b if home == url_a else url_a
    assert f"relay    {home} (sees us at 127.0.0.1:" in server.stdout
    _wait_stderr(server, f"home relay {home}", 10)

    # a client whose relays (comma-separated) are the other one and a dead one connects to the
    # node's home relay on demand
    relay_only = Ticket(ticket.node_id, home, [])
    dead = f"p2p-relay://{SecretKey.generate().node_id}@127.0.0.1:9"
    r = cli.run("get", "-v", "--relay", f"{dead},{other}", f"{relay_only}/")
    assert json.loads(ok(r))["tracks"] == 4, r.stderr.decode()

    # the home relay dies: the node moves home to the other one within a few seconds
    killed = time.monotonic()
    relays[home].kill()
    line = _wait_stderr(server, "moved home to relay", 20)
    print(f"re-homed {time.monotonic() - killed:.2f} s after the relay process was killed")
    assert f"home relay {home} lost" in line and f"moved home to relay {other}" in line
    assert str(ticket.node_id) in line  # the full node id
    r = cli.run("get", "--relay", other, f"{Ticket(ticket.node_id, other, [])}/")
    assert json.loads(ok(r))["tracks"] == 4


def test_relay_list_from_the_environment(captured: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = (f"p2p-relay://{SecretKey.from_seed(n).node_id}@127.0.0.1:{p}" for n, p in (("a", 1), ("b", 2)))
    monkeypatch.setenv("ASGI_P2P_RELAY_URL", f"{a} {b}")
    args = run(captured, "serve", "apps.music:app", "--ephemeral")
    assert _common.relay_urls_option(args.relay) == [a, b]


def test_too_many_relays_is_a_one_line_error(cli: Cli) -> None:
    urls = ",".join(f"p2p-relay://{SecretKey.generate().node_id}@127.0.0.1:{3000 + i}" for i in range(9))
    r = cli.run("apps.music:app", "--ephemeral", "--relay", urls, timeout=30)
    assert r.returncode != 0
    assert "--relay: 9 relay URLs; at most 8 are allowed" in r.stderr.decode()


def test_relay_list_from_a_config_file_and_commas(captured: dict[str, Any], tmp_path: Path) -> None:
    a, b, c = (f"p2p-relay://{SecretKey.from_seed(n).node_id}@127.0.0.1:{p}" for n, p in (("a", 1), ("b", 2), ("c", 3)))
    config = tmp_path / "serve.toml"
    config.write_text(f"relay_url = [{a!r}, {b!r}]\n".replace("'", '"'))
    args = run(captured, "serve", "apps.music:app", "--ephemeral", "--config", str(config))
    assert args.relay == [a, b]
    assert _common.relay_urls_option(args.relay) == [a, b]
    assert _common.relay_kwargs([a, b]) == {"relay_urls": [a, b]}
    assert _common.relay_kwargs([a]) == {"relay_url": a}
    args = run(captured, "serve", "apps.music:app", "--ephemeral", "--relay", f"{a},{b}", "--relay", c)
    assert _common.relay_urls_option(args.relay) == [a, b, c]  # the flag wins over the file


def test_published_record_follows_the_home_relay(
    cli: Cli, start_server: Starter, tmp_path: Path, helpers: list[Background], directory_ticket: str
) -> None:
    relays = {r.wait_ready(): r for r in (_relay(cli, tmp_path, helpers, n) for n in ("relay-a", "relay-b"))}
    url_a, url_b = relays
    server = start_server(
        *("apps.music:app", "--ephemeral", "--relay", f"{url_a},{url_b}"),
        *("--directory", directory_ticket, "--publish", "--name", "music"),
    )
    ticket = Ticket.parse(server.wait_ready())
    home = ticket.relay_url
    assert home is not None
    other = url_b if home == url_a else url_a
    r = cli.run("get", "-v", "--directory", directory_ticket, "music/")
    assert f"relay {home}" in r.stderr.decode() and json.loads(ok(r))["tracks"] == 4
    relays[home].kill()
    _wait_stderr(server, f"republished our record: home relay {other}", 20)
    r = cli.run("get", "-v", "--directory", directory_ticket, "music/")
    assert f"relay {other}" in r.stderr.decode() and json.loads(ok(r))["tracks"] == 4
    assert Ticket.parse(server.ticket_file.read_text()).relay_url == other  # the ticket file follows too
