"""Operating ``asgi-p2p serve`` (and ``relay``) as a service.

Its logs, ticket file, ``--public-host``, SIGHUP and ``--reload``; and the admin commands
``asgi-p2p status``, ``invite``, ``pair`` and ``peers`` against running ``serve`` and
``relay`` processes.  Subprocesses on 127.0.0.1 (the client side runs in this process
where a live connection must be held across a SIGHUP or a revoke).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from asgi_p2p import Node, SecretKey
from asgi_p2p.errors import P2PError
from asgi_p2p.http import P2PTransport
from asgi_p2p.ticket import Ticket

from .conftest import APPDIR, REPO, Cli, ServerProcess, Starter, one_line_error

SAMPLE = ("--app-dir", str(APPDIR), "sample_app:app", "--ephemeral")
TIMESTAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


def stop(server: ServerProcess) -> None:
    server.signal(signal.SIGINT)
    assert server.wait_exit() == 0, server.stderr


def wait_for(predicate: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def get_ok(cli: Cli, url: str, *extra: str) -> bytes:
    r = cli.run("get", url, *extra)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def test_text_log_has_timestamps_full_ids_and_the_query(cli: Cli, start_server: Starter, tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    client_key = SecretKey.generate()
    client_key.save(key)
    client_id = str(client_key.node_id)
    server = start_server("serve", *SAMPLE)
    ticket = server.wait_ready()
    get_ok(cli, f"{ticket}/echo?a=1&b=two", "--key-file", str(key))
    stop(server)
    log = server.stderr
    access = [line for line in log.splitlines() if "asgi_p2p.http.access" in line]
    assert len(access) == 1, log
    assert re.fullmatch(
        rf'{TIMESTAMP} INFO     asgi_p2p\.http\.access: {client_id} - "GET /echo\?a=1&b=two HTTP/3" 200 OK',
        access[0],
    ), access
    assert all(re.match(TIMESTAMP, line) for line in log.splitlines() if line.strip()), log
    assert "relay ->" not in log and "-> relay" not in log  # no relay configured: no path lines about one
    assert not server.ticket_file.exists()  # removed at exit


def test_json_log_format(cli: Cli, start_server: Starter) -> None:
    server = start_server("serve", *SAMPLE, "--log-format", "json")
    ticket = server.wait_ready()
    get_ok(cli, f"{ticket}/echo?x=1")
    stop(server)
    records = [json.loads(line) for line in server.stderr.splitlines() if line.strip()]
    access = [r for r in records if r["logger"] == "asgi_p2p.http.access"]
    assert len(access) == 1, records
    rec = access[0]
    assert (rec["method"], rec["path"], rec["status"], rec["outcome"], rec["kind"]) == (
        "GET",
        "/echo?x=1",
        200,
        "complete",
        "http",
    )
    assert len(rec["client"]) == 52 and rec["level"] == "INFO"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["time"])
    assert any(r["message"] == "stopped" for r in records)


def test_no_access_log_and_unknown_variables(cli: Cli, start_server: Starter) -> None:
    server = start_server("serve", *SAMPLE, "--no-access-log", env={"ASGI_P2P_LOG_LEVL": "debug"})
    get_ok(cli, f"{server.wait_ready()}/echo")
    stop(server)
    assert "asgi_p2p.http.access" not in server.stderr
    assert "stopped" in server.stderr  # the other logs stay
    # a misspelt variable is reported at start, with the setting it probably meant
    assert re.search(
        rf"^{TIMESTAMP} WARNING  asgi_p2p\.cli: unknown variable ASGI_P2P_LOG_LEVL is ignored "
        r"\(did you mean ASGI_P2P_LOG_LEVEL\?\)$",
        server.stderr,
        re.M,
    ), server.stderr


def test_log_config_json_and_ini(cli: Cli, start_server: Starter, tmp_path: Path) -> None:
    access_file = tmp_path / "access.log"
    config = {
        "version": 1,
        "formatters": {"plain": {"format": "ACCESS %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(access_file), "formatter": "plain"}},
        "loggers": {"asgi_p2p.http.access": {"handlers": ["file"], "propagate": False, "level": "INFO"}},
    }
    (tmp_path / "log.json").write_text(json.dumps(config))
    server = start_server("serve", *SAMPLE, "--log-config", str(tmp_path / "log.json"))
    get_ok(cli, f"{server.wait_ready()}/json-config")
    stop(server)
    assert re.fullmatch(r'ACCESS \w{52} - "GET /json-config HTTP/3" 200 OK\n', access_file.read_text())
    assert "asgi_p2p.http.access" not in server.stderr  # propagate: False

    ini = tmp_path / "log.ini"
    ini.write_text(
        "[loggers]\nkeys=root,access\n[handlers]\nkeys=err\n[formatters]\nkeys=f\n"
        "[logger_root]\nlevel=INFO\nhandlers=err\n"
        "[logger_access]\nlevel=INFO\nhandlers=err\nqualname=asgi_p2p.http.access\npropagate=0\n"
        "[handler_err]\nclass=StreamHandler\nformatter=f\nargs=(sys.stderr,)\n"
        "[formatter_f]\nformat=INI %(name)s %(message)s\n"
    )
    server = start_server("serve", *SAMPLE, "--log-config", str(ini))
    get_ok(cli, f"{server.wait_ready()}/ini-config")
    stop(server)
    assert re.search(r'^INI asgi_p2p\.http\.access \w{52} - "GET /ini-config HTTP/3" 200 OK$', server.stderr, re.M)


def test_log_config_errors_are_one_line(cli: Cli, tmp_path: Path) -> None:
    yaml_file = tmp_path / "log.yaml"
    yaml_file.write_text("version: 1\nroot: {level: INFO}\n")
    r = cli.run("serve", *SAMPLE, "--log-config", str(yaml_file))
    try:
        import yaml  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        assert r.returncode == 1
        assert f"asgi-p2p: error: --log-config {yaml_file}: a YAML file needs PyYAML" in r.stderr.decode()
    else:  # with PyYAML the file is used (the server would start: nothing more to check here)
        pass
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}')
    r = cli.run("serve", *SAMPLE, "--log-config", str(bad))
    assert r.returncode == 1
    assert r.stderr.decode().startswith(f"asgi-p2p: error: --log-config {bad}: ValueError: Unable to configure handler")


def test_ticket_file_removed_at_start_and_public_host(cli: Cli, start_server: Starter, tmp_path: Path) -> None:
    stale = tmp_path / "ticket"
    stale.write_text("p2p1stale\n")
    r = cli.run("serve", "no_such_module:app", "--ephemeral", "--ticket-file", str(stale))
    assert r.returncode == 1 and not stale.exists()  # a failed start leaves no stale ticket behind

    # the ticket advertises --public-host:--public-port first (nothing dials it here)
    server = start_server("serve", *SAMPLE, "--public-host", "node.asgi-p2p.invalid", "--public-port", "4999")
    parsed = Ticket.parse(server.wait_ready())
    assert parsed.direct_addresses[0] == ("node.asgi-p2p.invalid", 4999)
    assert ("127.0.0.1", server_port(server)) in parsed.direct_addresses
    stop(server)
    r = cli.run("serve", *SAMPLE, "--public-port", "4999")
    assert r.returncode == 1 and "--public-port needs --public-host" in r.stderr.decode()


def server_port(server: ServerProcess) -> int:
    m = re.search(r"udp 127\.0\.0\.1:(\d+)", server.stdout)
    assert m, server.stdout
    return int(m.group(1))


def test_sighup_reloads_the_allow_list_without_dropping_connections(start_server: Starter, tmp_path: Path) -> None:
    keep, removed, added = SecretKey.generate(), SecretKey.generate(), SecretKey.generate()
    allow = tmp_path / "allowed"
    allow.write_text(f"# phones\n{keep.node_id}  # alice\n{removed.node_id}\n")
    server = start_server("serve", *SAMPLE, "--allow-file", str(allow), "--log-level", "info")
    addr = Ticket.parse(server.wait_ready()).to_node_addr()

    async def client(key: SecretKey) -> tuple[Node, httpx.AsyncClient]:
        node = await Node.bind(key, host="127.0.0.1")
        transport = P2PTransport(node)
        transport.add_addr(addr)
        return node, httpx.AsyncClient(transport=transport, base_url=f"https://{addr.node_id}", timeout=10.0)

    async def scenario() -> None:
        nodes: list[Node] = []
        clients: list[httpx.AsyncClient] = []
        try:
            for key in (keep, removed, added):
                node, c = await client(key)
                nodes.append(node)
                clients.append(c)
            kept, gone, new = clients
            assert (await kept.get("/before")).status_code == 200
            assert (await gone.get("/before")).status_code == 200
            with pytest.raises(httpx.HTTPError):
                await new.get("/not-yet")
            conn = nodes[0].connections[0]
            allow.write_text(f"{keep.node_id}  # alice\n{added.node_id}  # bob's phone\n")
            server.signal(signal.SIGHUP)
            await asyncio.to_thread(wait_for, lambda: "allow-list reloaded" in server.stderr, "the reload")
            assert (await kept.get("/after")).status_code == 200  # the same connection, still up
            assert nodes[0].connections == [conn] and not conn.closed
            assert (await new.get("/now")).status_code == 200
            # the removed id's live connection was closed by the server; a new one is refused
            await asyncio.to_thread(wait_for, lambda: not nodes[1].connections, "the removed id's connection to close")
            await gone.aclose()
            await nodes[1].close()
            node, again = await client(removed)
            nodes.append(node)
            clients.append(again)
            with pytest.raises(httpx.HTTPError):
                await again.get("/refused")
        finally:
            for c in clients:
                await c.aclose()
            for n in nodes:
                await n.close()

    asyncio.run(scenario())
    log = server.stderr
    assert (
        "SIGHUP: allow-list reloaded: 2 node id(s), 1 added, 1 removed (1 connection(s) of removed ids closed)" in log
    )
    assert f"SIGHUP: allowed {added.node_id}" in log
    assert f"SIGHUP: no longer allowed {removed.node_id}" in log
    assert f"refused node {removed.node_id}" in log  # the full id, ready to paste into the allow-file
    stop(server)


def test_sighup_names_what_cannot_change(start_server: Starter, tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text("limit_concurrency = 4\n")
    server = start_server("serve", *SAMPLE, "--config", str(config))
    server.wait_ready()
    config.write_text("limit_concurrency = 8\nport = 4999\nlifespan = 'off'\n")
    server.signal(signal.SIGHUP)
    wait_for(lambda: "cannot change while serving" in server.stderr, "the reload")
    assert "SIGHUP: --limit-concurrency is now 8" in server.stderr
    assert "SIGHUP: --lifespan, --port changed but cannot change while serving; restart to apply" in server.stderr
    config.write_text("limit_concurrency = 'many'\n")
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in server.stderr, "the failed reload")
    assert f"SIGHUP: reload failed, settings unchanged: {config}: limit_concurrency:" in server.stderr
    stop(server)


def test_sighup_applies_a_changed_log_config(cli: Cli, start_server: Starter, tmp_path: Path) -> None:
    """A ``log_config`` added to the ``--config`` file takes effect at the SIGHUP (nothing else changed);
    one that cannot be used is named and leaves logging as it was."""
    access_file = tmp_path / "access.log"
    log_json = tmp_path / "log.json"
    log_json.write_text(
        json.dumps(
            {
                "version": 1,
                "formatters": {"plain": {"format": "ACCESS %(message)s"}},
                "handlers": {
                    "file": {"class": "logging.FileHandler", "filename": str(access_file), "formatter": "plain"}
                },
                "loggers": {"asgi_p2p.http.access": {"handlers": ["file"], "propagate": False, "level": "INFO"}},
            }
        )
    )
    config = tmp_path / "serve.toml"
    config.write_text("limit_concurrency = 4\n")
    server = start_server("serve", *SAMPLE, "--config", str(config))
    ticket = server.wait_ready()
    get_ok(cli, f"{ticket}/before")
    config.write_text(f"limit_concurrency = 4\nlog_config = '{log_json}'\n")
    server.signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: logging reconfigured" in server.stderr, "the reload")
    get_ok(cli, f"{ticket}/after")
    wait_for(lambda: access_file.exists() and "GET /after" in access_file.read_text(), "the access line in the file")
    assert re.fullmatch(r'ACCESS \w{52} - "GET /after HTTP/3" 200 OK\n', access_file.read_text())
    assert "cannot change while serving" not in server.stderr
    assert '"GET /before HTTP/3"' in server.stderr and '"GET /after HTTP/3"' not in server.stderr

    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}')
    config.write_text(f"limit_concurrency = 4\nlog_config = '{bad}'\n")
    server.signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: logging unchanged" in server.stderr, "the failed logging reload")
    assert f"SIGHUP: logging unchanged: --log-config {bad}: ValueError: Unable to configure handler" in server.stderr
    get_ok(cli, f"{ticket}/still")  # still serving, still logging to the file
    wait_for(lambda: "GET /still" in access_file.read_text(), "the access line after the failed reload")
    stop(server)


def test_reload_restarts_on_a_source_change(cli: Cli, start_server: Starter, tmp_path: Path) -> None:
    appdir = tmp_path / "app"
    appdir.mkdir()
    source = appdir / "devapp.py"
    template = (
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'VERSION'})\n"
    )
    source.write_text(template.replace("VERSION", "one"))
    server = start_server(
        "serve", "--reload", "--app-dir", str(appdir), "devapp:app", "--ephemeral", "--lifespan", "off"
    )
    first = server.wait_ready()
    assert get_ok(cli, f"{first}/") == b"one"
    source.write_text(template.replace("VERSION", "two"))

    def restarted() -> bool:
        text = server.ticket_file.read_text().strip() if server.ticket_file.exists() else ""
        return bool(text) and text != first

    wait_for(restarted, "the restarted server's ticket", timeout=60.0)
    assert get_ok(cli, f"{server.ticket_file.read_text().strip()}/") == b"two"
    assert "devapp.py changed; restarting the server" in server.stderr
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0, server.stderr
    assert not server.ticket_file.exists()  # the child stopped (and removed its ticket)


def test_errors_name_the_variable_a_flag_came_from(cli: Cli, tmp_path: Path) -> None:
    r = cli.run("serve", *SAMPLE, env={"ASGI_P2P_ALLOW": "not-a-node-id"})
    assert r.returncode == 1
    err = r.stderr.decode().strip()
    assert err.startswith("asgi-p2p: error: --allow: ") and err.endswith("(--allow from ASGI_P2P_ALLOW)"), err
    config = tmp_path / "serve.toml"
    config.write_text("mdns_interface = ['192.0.2.1']\n")
    r = cli.run("serve", *SAMPLE, "--config", str(config))
    assert r.returncode == 1
    assert r.stderr.decode().strip() == (
        f"asgi-p2p: error: --mdns-interface needs --mdns (--mdns-interface from {config}: mdns_interface)"
    )


def test_relay_sighup_names_what_needs_a_restart(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text("limit_clients = 10\n")
    url_file = tmp_path / "url"
    err_path = tmp_path / "stderr"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "asgi_p2p",
                "relay",
                "--ephemeral",
                "--config",
                str(config),
                "--url-file",
                str(url_file),
            ],
            cwd=REPO,
            env=cli.env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_for(url_file.exists, "the relay URL")
        config.write_text("limit_clients = 20\nlog_level = 'debug'\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "cannot change while the relay runs" in err_path.read_text(), "the reload")
        text = err_path.read_text()
        assert "SIGHUP: logging reconfigured (level debug)" in text
        assert "SIGHUP: --limit-clients changed but cannot change while the relay runs; restart to apply" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # SIGHUP did not kill it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


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


def test_sighup_pairing_and_revoke_share_one_allow_list(
    cli: Cli, start_server: Starter, rundir: Path, tmp_path: Path
) -> None:
    sock = rundir / "s.sock"
    allow_file = tmp_path / "allowed.txt"
    allow_file.write_text("# my devices\n")
    server = start_server("serve", *SAMPLE, "--allow-file", allow_file, "--admin-socket", sock)
    ticket = server.wait_ready()

    def reloaded(n: int) -> str:
        """The log line of the n-th SIGHUP's allow-list reload."""
        server.signal(signal.SIGHUP)
        wait_for(lambda: server.stderr.count("allow-list reloaded") == n, f"reload {n}")
        return [line for line in server.stderr.splitlines() if "allow-list reloaded" in line][-1]

    r = cli.run("invite", "--label", "phone", "--admin-socket", sock)
    assert r.returncode == 0, r.stderr.decode()
    device_key = tmp_path / "phone.key"
    r = cli.run("pair", r.stdout.decode().strip(), "--key-file", device_key)
    assert r.returncode == 0, r.stderr.decode()
    device = SecretKey.load(device_key).node_id
    # SIGHUP re-reads the file pairing appended to: the paired device stays allowed
    assert reloaded(1).endswith("1 node id(s), 0 added, 0 removed (0 connection(s) of removed ids closed)")
    get_ok(cli, f"{ticket}/echo", "--key-file", device_key)
    # an id written into the file by hand: SIGHUP allows it, and `peers` (the pairing side) lists it
    by_hand = SecretKey.generate().node_id
    with allow_file.open("a") as f:
        f.write(f"{by_hand}  # laptop\n")
    assert reloaded(2).endswith("2 node id(s), 1 added, 0 removed (0 connection(s) of removed ids closed)")
    assert f"SIGHUP: allowed {by_hand}" in server.stderr
    r = cli.run("peers", "--json", "--admin-socket", sock)
    assert r.returncode == 0, r.stderr.decode()
    peers = json.loads(r.stdout)["peers"]
    assert [(p["node_id"], p["label"]) for p in peers] == [(str(device), "phone"), (str(by_hand), "laptop")]
    # revoked live: the next SIGHUP finds nothing to remove, and the device stays out
    r = cli.run("peers", "revoke", str(device), "--admin-socket", sock)
    assert r.returncode == 0, r.stderr.decode()
    assert reloaded(3).endswith("1 node id(s), 0 added, 0 removed (0 connection(s) of removed ids closed)")
    assert cli.run("get", f"{ticket}/echo", "--key-file", device_key).returncode != 0
    assert f"refused node {device}" in server.stderr
    stop(server)
