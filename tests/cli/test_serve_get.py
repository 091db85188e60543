"""``asgi-p2p serve`` and ``asgi-p2p get`` as subprocesses talking over real UDP on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from asgi_p2p.identity import NodeId, SecretKey
from asgi_p2p.ticket import Ticket

from .conftest import APPDIR, REPO, Cli, ServerProcess, Starter, free_udp_port, one_line_error

MusicServer = tuple[Cli, ServerProcess, str]


def ok(r: subprocess.CompletedProcess[bytes]) -> bytes:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout[:2000]!r}\nstderr: {r.stderr.decode()}"
    return r.stdout


def first_track(cli: Cli, ticket: str) -> dict[str, object]:
    tracks = json.loads(ok(cli.run("get", f"{ticket}/tracks")))
    assert isinstance(tracks, list) and tracks
    track = tracks[0]
    assert isinstance(track, dict)
    return track


# -- serve output --------------------------------------------------------------------


def test_serve_prints_node_id_ticket_and_get_line(music: MusicServer) -> None:
    _, server, ticket = music
    out = server.stdout
    parsed = Ticket.parse(ticket)
    assert str(parsed.node_id) in out
    assert ticket in out
    assert f"asgi-p2p get {ticket}/" in out
    assert parsed.direct_addresses and parsed.direct_addresses[0][0] == "127.0.0.1"


# -- get against the music app -------------------------------------------------------


def test_get_tracks(music: MusicServer) -> None:
    cli, _, ticket = music
    tracks = json.loads(ok(cli.run("get", f"{ticket}/tracks")))
    assert len(tracks) == 4
    assert {"id", "title", "artist", "audio_url", "size"} <= set(tracks[0])


def test_get_include_headers(music: MusicServer) -> None:
    cli, _, ticket = music
    out = ok(cli.run("get", "-i", f"{ticket}/tracks"))
    head, sep, body = out.partition(b"\r\n\r\n")
    assert sep
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/3 200 OK"
    assert any(line.lower() == "content-type: application/json" for line in lines[1:])
    assert json.loads(body)


def test_get_head(music: MusicServer) -> None:
    cli, _, ticket = music
    track = first_track(cli, ticket)
    out = ok(cli.run("get", "-I", f"{ticket}{track['audio_url']}"))
    assert out.startswith(b"HTTP/3 200")
    assert b"content-type: audio/wav" in out.lower()
    assert out.endswith(b"\r\n\r\n")  # headers only, no body


def test_get_output_file(music: MusicServer, tmp_path: Path) -> None:
    cli, _, ticket = music
    track = first_track(cli, ticket)
    dest = tmp_path / "song.wav"
    r = cli.run("get", "-o", dest, f"{ticket}{track['audio_url']}")
    assert ok(r) == b""
    data = dest.read_bytes()
    assert len(data) == track["size"]
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert f"wrote {track['size']} bytes".encode() in r.stderr
    quiet = cli.run("get", "-s", "-o", tmp_path / "again.wav", f"{ticket}{track['audio_url']}")
    assert ok(quiet) == b"" and quiet.stderr == b""
    assert (tmp_path / "again.wav").read_bytes() == data


def test_get_range_header(music: MusicServer) -> None:
    cli, _, ticket = music
    track = first_track(cli, ticket)
    out = ok(cli.run("get", "-i", "-H", "Range: bytes=0-99", f"{ticket}{track['audio_url']}"))
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/3 206")
    assert f"content-range: bytes 0-99/{track['size']}".encode() in head.lower()
    assert len(body) == 100 and body.startswith(b"RIFF")


def test_get_post_json_and_form(music: MusicServer, tmp_path: Path) -> None:
    cli, _, ticket = music
    track = first_track(cli, ticket)
    key = tmp_path / "client.key"
    me = SecretKey.generate()
    me.save(key)
    body = json.dumps({"name": "road trip", "tracks": [track["id"]]})
    r = cli.run(
        "get",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        "--key-file",
        key,
        "-i",
        f"{ticket}/playlists",
    )
    head, _, raw = ok(r).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/3 201")
    created = json.loads(raw)
    assert created["name"] == "road trip"
    assert created["owner"] == str(me.node_id)  # the app sees our proven node id
    # -d without -X is a POST; without content-type it is a form, as with curl
    form = json.loads(ok(cli.run("get", "-d", f"name=form list&tracks={track['id']}", f"{ticket}/playlists")))
    assert form["name"] == "form list" and form["tracks"] == [track["id"]]
    # -d @file
    payload = tmp_path / "p.json"
    payload.write_text(json.dumps({"name": "from file", "tracks": []}))
    from_file = cli.run("get", "-d", f"@{payload}", "-H", "content-type: application/json", f"{ticket}/playlists")
    assert json.loads(ok(from_file))["name"] == "from file"
    listed = json.loads(ok(cli.run("get", f"{ticket}/playlists")))
    assert {p["name"] for p in listed} >= {"road trip", "form list", "from file"}


def test_get_http_error_status(music: MusicServer) -> None:
    cli, _, ticket = music
    r = cli.run("get", f"{ticket}/tracks/nope")
    assert r.returncode == 0  # like curl: any HTTP response is a success unless -f
    assert json.loads(r.stdout) == {"error": "no track 'nope'"}
    failed = cli.run("get", "-f", f"{ticket}/tracks/nope")
    assert failed.returncode == 22
    assert "404" in one_line_error(failed.stderr)
    assert failed.stdout == b""


def test_get_verbose(music: MusicServer) -> None:
    cli, _, ticket = music
    node_id = Ticket.parse(ticket).node_id
    r = cli.run("get", "-v", f"{ticket}/")
    ok(r)
    err = r.stderr.decode()
    assert f"peer node {node_id}" in err
    assert "ALPN h3" in err
    assert "rtt" in err
    assert "127.0.0.1:" in err
    assert "> GET / HTTP/3" in err
    assert "< HTTP/3 200" in err


def test_get_bare_node_id_with_addr(music: MusicServer) -> None:
    cli, _, ticket = music
    t = Ticket.parse(ticket)
    host, port = t.direct_addresses[0]
    r = cli.run("get", "--addr", f"{host}:{port}", f"{t.node_id}/tracks")
    assert len(json.loads(ok(r))) == 4
    hex_form = cli.run("get", "--addr", f"{host}:{port}", f"https://{t.node_id.to_bytes().hex()}/")
    assert json.loads(ok(hex_form))["tracks"] == 4


def test_get_bare_node_id_without_address_fails_clearly(music: MusicServer) -> None:
    cli, _, ticket = music
    t = Ticket.parse(ticket)
    r = cli.run("get", f"{t.node_id}/tracks")
    assert r.returncode != 0
    assert "no address known" in one_line_error(r.stderr)


def test_get_damaged_ticket(music: MusicServer) -> None:
    cli, _, ticket = music
    damaged = ticket[:-1] + ("y" if ticket[-1] != "y" else "b")
    r = cli.run("get", f"{damaged}/tracks")
    assert r.returncode != 0
    assert "ticket" in one_line_error(r.stderr)


# -- failures ----------------------------------------------------------------------------


def test_get_dead_peer_fails_fast(cli: Cli) -> None:
    ticket = Ticket(SecretKey.generate().node_id, None, [("127.0.0.1", free_udp_port())])
    start = time.monotonic()
    r = cli.run("get", "--timeout", "2", f"{ticket}/", timeout=30)
    elapsed = time.monotonic() - start
    assert r.returncode == 28, r.stderr  # like curl: nobody answered in time
    line = one_line_error(r.stderr)
    assert "timed out" in line and str(ticket.node_id) in line
    assert elapsed < 15


def test_wrong_node_id_at_right_address_is_an_auth_error(music: MusicServer) -> None:
    cli, _, ticket = music
    real = Ticket.parse(ticket)
    impostor = Ticket(SecretKey.generate().node_id, None, real.direct_addresses)
    r = cli.run("get", "--timeout", "5", f"{impostor}/tracks", timeout=30)
    assert r.returncode == 7
    line = one_line_error(r.stderr)
    assert "authentication" in line.lower() or "not" in line.lower()
    assert r.stdout == b""


def test_allow_list(cli: Cli, start_server: Starter, tmp_path: Path) -> None:
    friend = SecretKey.generate()
    friend_key = tmp_path / "friend.key"
    friend.save(friend_key)
    other = SecretKey.generate()
    allow_file = tmp_path / "allowed.txt"
    allow_file.write_text(f"# friends\n{other.node_id.to_bytes().hex()}  # hex works too\n\n")
    server = start_server("apps.music:app", "--ephemeral", "--allow", str(friend.node_id), "--allow-file", allow_file)
    ticket = server.wait_ready()
    assert len(json.loads(ok(cli.run("get", "--key-file", friend_key, f"{ticket}/tracks")))) == 4
    other_key = tmp_path / "other.key"
    other.save(other_key)
    ok(cli.run("get", "--key-file", other_key, f"{ticket}/"))
    refused = cli.run("get", "--timeout", "5", f"{ticket}/tracks", timeout=30)  # ephemeral: not allowed
    assert refused.returncode == 7
    assert "allow" in one_line_error(refused.stderr).lower()
    assert refused.stdout == b""


def test_bad_allow_value_is_a_one_line_error(cli: Cli) -> None:
    r = cli.run("serve", "apps.music:app", "--ephemeral", "--allow", "not-a-node", timeout=30)
    assert r.returncode != 0
    assert "--allow" in one_line_error(r.stderr)


# -- lifecycle -------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_gracefully(start_server: Starter, sig: signal.Signals) -> None:
    server = start_server("apps.music:app", "--ephemeral")
    server.signal(sig)
    assert server.wait_exit(timeout=20) == 0, server.stderr
    assert "Traceback" not in server.stderr


def test_sigterm_waits_for_in_flight_request(cli: Cli, start_server: Starter) -> None:
    server = start_server("--app-dir", APPDIR, "sample_app:app", "--ephemeral", env={"SLOW_SECONDS": "1.5"})
    ticket = server.wait_ready()
    result: dict[str, subprocess.CompletedProcess[bytes]] = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", cli.run("get", f"{ticket}/slow", timeout=30)))
    thread.start()
    try:
        # wait until the request is in flight (the app then sleeps 1.5 s), however slowly
        # the client process starts on a loaded machine
        deadline = time.monotonic() + 20
        while "slow request started" not in server.stderr and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "slow request started" in server.stderr, server.stderr
        server.signal(signal.SIGTERM)
        assert server.wait_exit(timeout=20) == 0, server.stderr
    finally:
        thread.join(timeout=30)
    r = result["r"]
    assert json.loads(ok(r))["path"] == "/slow"


def test_lifespan_startup_failure_exits_non_zero(cli: Cli, start_server: Starter, tmp_path: Path) -> None:
    server = start_server("apps.music:app", "--ephemeral", env={"MUSIC_DIR": str(tmp_path / "missing")}, ready=False)
    code = server.wait_exit(timeout=30)
    assert code != 0
    assert not server.ticket_file.exists()
    errors = [line for line in server.stderr.splitlines() if line.startswith("asgi-p2p: error:")]
    assert len(errors) == 1, server.stderr


def test_lifespan_failure_message_from_raw_app(start_server: Starter) -> None:
    server = start_server("--app-dir", APPDIR, "sample_app:app", "--ephemeral", env={"FAIL_STARTUP": "1"}, ready=False)
    assert server.wait_exit(timeout=30) != 0
    errors = [line for line in server.stderr.splitlines() if line.startswith("asgi-p2p: error:")]
    assert len(errors) == 1, server.stderr
    assert "refuses to start" in errors[0]


def test_signal_during_hanging_startup_exits(start_server: Starter) -> None:
    server = start_server("--app-dir", APPDIR, "sample_app:app", "--ephemeral", env={"HANG_STARTUP": "1"}, ready=False)
    deadline = time.monotonic() + 20  # the app is in its startup, however slowly the process starts
    while "startup hanging" not in server.stderr and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.proc.poll() is None, server.stderr
    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=20) == 1
    assert "interrupted during application startup" in server.stderr


def test_port_in_use_is_a_one_line_error(cli: Cli) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        r = cli.run("apps.music:app", "--ephemeral", "--port", str(port), timeout=30)
    assert r.returncode == 1
    assert str(port) in one_line_error(r.stderr)


def test_lifespan_off_skips_startup(cli: Cli, start_server: Starter) -> None:
    server = start_server(
        "--app-dir", APPDIR, "sample_app:app", "--ephemeral", "--lifespan", "off", env={"FAIL_STARTUP": "1"}
    )
    seen = json.loads(ok(cli.run("get", f"{server.wait_ready()}/")))
    assert seen["started"] is False


# -- app loading --------------------------------------------------------------------------------


def test_app_dir_root_path_and_peer_scope(cli: Cli, start_server: Starter, tmp_path: Path) -> None:
    server = start_server("--app-dir", APPDIR, "sample_app:app", "--ephemeral", "--root-path", "/api")
    key = tmp_path / "me.key"
    me = SecretKey.generate()
    me.save(key)
    seen = json.loads(ok(cli.run("get", "--key-file", key, "-H", "X-Test: 1", f"{server.wait_ready()}/api/x?q=1")))
    assert seen["root_path"] == "/api"
    assert seen["query"] == "q=1"
    assert seen["peer"] == str(me.node_id)
    assert seen["headers"]["x-test"] == "1"
    assert seen["started"] is True


def test_factory(cli: Cli, start_server: Starter) -> None:
    server = start_server("--app-dir", APPDIR, "--factory", "sample_app:make_app", "--ephemeral")
    assert json.loads(ok(cli.run("get", f"{server.wait_ready()}/hello")))["path"] == "/hello"
    music = start_server("--factory", "apps.music:create_app", "--ephemeral")
    assert len(json.loads(ok(cli.run("get", f"{music.wait_ready()}/tracks")))) == 4


def test_env_file(cli: Cli, start_server: Starter, tmp_path: Path) -> None:
    music_dir = tmp_path / "My Music" / "Live"
    music_dir.mkdir(parents=True)
    sys.path.insert(0, str(REPO))
    try:
        from apps.music import write_tone_wav
    finally:
        sys.path.remove(str(REPO))
    write_tone_wav(music_dir / "The Testers - Env File Blues.wav", "C4 E4", 0.05)
    env_file = tmp_path / "app.env"
    env_file.write_text(f'# settings\nexport MUSIC_DIR="{tmp_path / "My Music"}"\nGREETING=hello there  # note\n')
    server = start_server("apps.music:app", "--ephemeral", "--env-file", env_file)
    tracks = json.loads(ok(cli.run("get", f"{server.wait_ready()}/tracks")))
    assert [(t["artist"], t["title"], t["album"]) for t in tracks] == [("The Testers", "Env File Blues", "Live")]
    echo = start_server("--app-dir", APPDIR, "sample_app:app", "--ephemeral", "--env-file", env_file)
    assert json.loads(ok(cli.run("get", f"{echo.wait_ready()}/")))["greeting"] == "hello there"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("nosuchmodule:app",), "could not import module"),
        (("apps.music:nope",), "no attribute"),
        (("apps.music",), "module:attribute"),
        (("apps.music:app", "--env-file", "/nonexistent/x.env"), "--env-file"),
    ],
)
def test_bad_app_is_a_one_line_error(cli: Cli, args: tuple[str, ...], expected: str) -> None:
    r = cli.run("serve", *args, "--ephemeral", timeout=30)
    assert r.returncode != 0
    assert expected in one_line_error(r.stderr)


def test_app_routed_without_serve_keyword(cli: Cli, start_server: Starter) -> None:
    server = start_server("apps.music:app", "--ephemeral")  # `asgi-p2p APP` == `asgi-p2p serve APP`
    assert server.proc.args[3] == "apps.music:app"  # type: ignore[index]
    assert json.loads(ok(cli.run("get", f"{server.wait_ready()}/")))["tracks"] == 4


# -- identity -------------------------------------------------------------------------------------


def test_default_key_is_stable_and_0600(cli: Cli, start_server: Starter) -> None:
    first = start_server("apps.music:app")
    id1 = Ticket.parse(first.wait_ready()).node_id
    first.signal(signal.SIGTERM)
    assert first.wait_exit() == 0
    assert cli.default_key.exists()
    assert cli.default_key.stat().st_mode & 0o777 == 0o600
    second = start_server("apps.music:app")
    assert Ticket.parse(second.wait_ready()).node_id == id1
    assert NodeId.parse(ok(cli.run("id")).decode().strip()) == id1
    ephemeral = start_server("apps.music:app", "--ephemeral")
    assert Ticket.parse(ephemeral.wait_ready()).node_id != id1


def test_serve_refuses_world_readable_key(cli: Cli, tmp_path: Path) -> None:
    key = tmp_path / "node.key"
    SecretKey.generate().save(key)
    os.chmod(key, 0o644)
    r = cli.run("serve", "apps.music:app", "--key-file", key, timeout=30)
    assert r.returncode != 0
    assert "chmod 600" in one_line_error(r.stderr)


def test_fixed_port_and_ticket_file(cli: Cli, start_server: Starter, tmp_path: Path) -> None:
    port = free_udp_port()
    ticket_file = tmp_path / "sub" / "t.txt"
    server = start_server(
        "apps.music:app", "--ephemeral", "--port", str(port), "--ticket-file", ticket_file, ready=False
    )
    server.ticket_file = ticket_file
    ticket = Ticket.parse(server.wait_ready())
    assert ticket.direct_addresses == (("127.0.0.1", port),)
    assert ticket_file.read_text().endswith("\n")


def test_get_with_a_key_file_resumes_the_session_of_its_previous_run(music: MusicServer, tmp_path: Path) -> None:
    cli, _, ticket = music
    key = SecretKey.generate()
    key_file = tmp_path / "me.key"
    key.save(key_file)
    cache = cli.home / ".cache" / "asgi-p2p" / "sessions" / f"{key.node_id}.json"
    first = cli.run("get", "-v", "--key-file", key_file, f"{ticket}/tracks")
    assert len(json.loads(ok(first))) == 4
    assert "resuming the TLS session" not in first.stderr.decode()
    assert cache.exists() and cache.stat().st_mode & 0o777 == 0o600
    assert str(Ticket.parse(ticket).node_id) in cache.read_text()

    again = cli.run("get", "-v", "--key-file", key_file, f"{ticket}/tracks")
    assert len(json.loads(ok(again))) == 4
    err = again.stderr.decode()
    assert "1 TLS session ticket(s) from" in err and "resuming the TLS session" in err, err

    off = cli.run("get", "-v", "--no-session-cache", "--key-file", key_file, f"{ticket}/tracks")
    assert "resuming the TLS session" not in ok(off).decode() + off.stderr.decode()

    cache.chmod(0o644)  # readable by others: a credential left open is not used
    loose = cli.run("get", "-v", "--key-file", key_file, f"{ticket}/tracks")
    err = loose.stderr.decode()
    assert len(json.loads(ok(loose))) == 4
    assert "accessible by group or others" in err and "resuming the TLS session" not in err
    assert cache.stat().st_mode & 0o777 == 0o600  # rewritten privately

    cache.write_bytes(b"damaged")
    damaged = cli.run("get", "--key-file", key_file, f"{ticket}/tracks")
    assert len(json.loads(ok(damaged))) == 4
    assert "malformed ticket file" in damaged.stderr.decode()
