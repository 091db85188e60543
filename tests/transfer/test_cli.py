"""``asgi-p2p send`` / ``receive`` and ``proxy`` argument errors, as subprocesses on loopback."""

from __future__ import annotations

import os
from pathlib import Path

from tests.cli.conftest import Cli, ServerProcess, one_line_error


def test_send_and_receive_a_directory(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    (src / "2024").mkdir(parents=True)
    (src / "2024" / "a.jpg").write_bytes(os.urandom(700_000))
    (src / "notes.txt").write_text("hello\n")
    cli = Cli(tmp_path / "home")
    sender = ServerProcess(cli, tmp_path / "sender", ("send", src, "--ephemeral"), None)
    try:
        ticket = sender.wait_ready()
        r = cli.run("receive", ticket, "-o", tmp_path / "missing" / "photos")
        assert r.returncode == 1
        assert "does not exist" in one_line_error(r.stderr)
        out = tmp_path / "inbox"
        out.mkdir()
        r = cli.run("receive", ticket, "-o", out)
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout.decode().strip() == str(out / "photos")
        assert "sha256 verified" in r.stderr.decode()
        assert (out / "photos" / "2024" / "a.jpg").read_bytes() == (src / "2024" / "a.jpg").read_bytes()
        assert (out / "photos" / "notes.txt").read_text() == "hello\n"
        assert [p.name for p in out.iterdir()] == ["photos"]  # no staging left behind
        assert sender.wait_exit() == 0  # the sender stops once the receiver verified it
        assert "received photos and verified it" in sender.stdout
        assert "asgi-p2p receive " + ticket in sender.stdout
        # the same name again: refused, nothing overwritten
        again = ServerProcess(cli, tmp_path / "sender2", ("send", src, "--ephemeral"), None)
        try:
            r = cli.run("receive", again.wait_ready(), "-o", out)
            assert r.returncode == 1
            assert "already exists" in one_line_error(r.stderr)
        finally:
            again.kill()
    finally:
        sender.kill()


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")
    r = cli.run("receive", "p2p1notaticket")
    assert r.returncode == 1 and "not a ticket" in one_line_error(r.stderr)
    r = cli.run("send", tmp_path / "missing", "--ephemeral")
    assert r.returncode == 1 and "no such file or directory" in one_line_error(r.stderr)
    r = cli.run("proxy", "ftp://127.0.0.1:21", "--ephemeral")
    assert r.returncode == 1 and "expected http://HOST:PORT" in one_line_error(r.stderr)
    r = cli.run("proxy", "unix:run/app.sock", "--ephemeral")
    assert r.returncode == 1 and "must be absolute" in one_line_error(r.stderr)
