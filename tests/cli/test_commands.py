"""CLI commands that need no network: help, keygen, id, key file permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from asgi_p2p.identity import NodeId

from .conftest import Cli, one_line_error

COMMANDS = ["keygen", "id", "serve", "get"]


def test_top_level_help_lists_commands(cli: Cli) -> None:
    r = cli.run("--help")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    for name in ["keygen", "id", "serve", "get", "relay"]:
        assert name in out


def test_no_command_prints_help_and_fails(cli: Cli) -> None:
    r = cli.run()
    assert r.returncode == 2
    assert b"usage: asgi-p2p" in r.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(cli: Cli, command: str) -> None:
    r = cli.run(command, "--help")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert f"usage: asgi-p2p {command}" in out
    expected = {
        "keygen": ["--key-file", "--force"],
        "id": ["--key-file"],
        "serve": [
            "APP",
            "--factory",
            "--app-dir",
            "--env-file",
            "--key-file",
            "--ephemeral",
            "--host",
            "--port",
            "--allow",
            "--allow-file",
            "--root-path",
            "--lifespan",
            "--limit-concurrency",
            "--timeout-graceful-shutdown",
            "--log-level",
            "--ticket-file",
            "--max-datagram-size",
        ],
        "get": ["-X", "-H", "-d", "-i", "-o", "-v", "--timeout", "--key-file", "--ephemeral", "-f"],
    }[command]
    for flag in expected:
        assert flag in out, f"{flag} missing from `{command} --help`"


def test_unknown_option_is_a_usage_error(cli: Cli) -> None:
    r = cli.run("keygen", "--no-such-flag")
    assert r.returncode == 2
    assert b"unrecognized arguments" in r.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_writes_0600_and_prints_node_id(cli: Cli, tmp_path: Path) -> None:
    key = tmp_path / "keys" / "node.key"
    r = cli.run("keygen", "--key-file", key)
    assert r.returncode == 0, r.stderr
    node_id = NodeId.parse(r.stdout.decode().strip())
    assert mode(key) == 0o600
    r2 = cli.run("id", "--key-file", key)
    assert r2.returncode == 0, r2.stderr
    assert NodeId.parse(r2.stdout.decode().strip()) == node_id


def test_keygen_refuses_to_overwrite_without_force(cli: Cli, tmp_path: Path) -> None:
    key = tmp_path / "node.key"
    first = cli.run("keygen", "--key-file", key).stdout
    r = cli.run("keygen", "--key-file", key)
    assert r.returncode != 0
    assert "already exists" in one_line_error(r.stderr)
    assert cli.run("id", "--key-file", key).stdout == first
    forced = cli.run("keygen", "--key-file", key, "--force")
    assert forced.returncode == 0
    assert forced.stdout != first
    assert mode(key) == 0o600


def test_default_key_is_created_0600_in_config_dir_and_stable(cli: Cli) -> None:
    assert not cli.default_key.exists()
    first = cli.run("id")
    assert first.returncode == 0, first.stderr
    assert cli.default_key.exists()
    assert mode(cli.default_key) == 0o600
    assert cli.run("id").stdout == first.stdout
    NodeId.parse(first.stdout.decode().strip())


@pytest.mark.parametrize("perms", [0o644, 0o640, 0o604])
def test_key_readable_by_others_is_refused(cli: Cli, tmp_path: Path, perms: int) -> None:
    key = tmp_path / "node.key"
    assert cli.run("keygen", "--key-file", key).returncode == 0
    os.chmod(key, perms)
    r = cli.run("id", "--key-file", key)
    assert r.returncode != 0
    line = one_line_error(r.stderr)
    assert "chmod 600" in line


def test_missing_key_file_is_a_clear_error(cli: Cli, tmp_path: Path) -> None:
    r = cli.run("id", "--key-file", tmp_path / "nope.key")
    assert r.returncode != 0
    assert "keygen" in one_line_error(r.stderr)


def test_garbage_key_file_is_a_clear_error(cli: Cli, tmp_path: Path) -> None:
    key = tmp_path / "node.key"
    key.write_bytes(b"not a key")
    key.chmod(0o600)
    r = cli.run("id", "--key-file", key)
    assert r.returncode != 0
    assert "not a PEM" in one_line_error(r.stderr)


def test_keygen_works_without_the_http_layer(cli: Cli, tmp_path: Path) -> None:
    """A broken HTTP layer must not take keygen/id down with it."""
    shadow = tmp_path / "shadow" / "asgi_p2p"
    shadow.mkdir(parents=True)
    import asgi_p2p

    pkg = Path(asgi_p2p.__file__).parent
    for entry in pkg.iterdir():
        if entry.name in ("http", "__pycache__"):
            continue
        (shadow / entry.name).symlink_to(entry)
    (shadow / "http").mkdir()
    (shadow / "http" / "__init__.py").write_text("raise ImportError('http layer broken on purpose')\n")
    env = {"PYTHONPATH": str(shadow.parent)}
    r = cli.run("keygen", "--key-file", tmp_path / "k.key", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = cli.run("id", "--key-file", tmp_path / "k.key", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert cli.run("--help", env=env, cwd=tmp_path).returncode == 0
    # the commands that need HTTP say so in one line instead of a traceback
    r = cli.run("get", "p2p1xyz", env=env, cwd=tmp_path)
    assert r.returncode != 0
    assert "broken on purpose" in one_line_error(r.stderr)
