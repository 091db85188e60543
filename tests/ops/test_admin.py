"""The admin socket: 0600, same user only, JSON lines, bounded requests, timeouts, stale sockets."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asgi_p2p.errors import InvalidConfiguration
from asgi_p2p.ops.admin import MAX_REQUEST, AdminError, AdminServer, admin_call, find_admin_sockets


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[AdminServer]:
    srv = AdminServer(tmp_path / "node.sock", timeout=0.5)
    srv.register("echo", lambda request: {"got": request.get("x")}, "echo x")

    async def slow(_request: dict[str, object]) -> None:
        await asyncio.sleep(5)

    srv.register("slow", slow, "never in time")

    def broken(_request: dict[str, object]) -> None:
        raise RuntimeError("boom")

    srv.register("broken", broken, "fails")
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


async def _raw(path: Path, data: bytes) -> list[dict[str, object]]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    answers = []
    async with asyncio.timeout(5):
        while line := await reader.readline():
            answers.append(json.loads(line))
            if len(answers) == data.count(b"\n"):
                break
    writer.close()
    return answers


async def test_socket_is_0600_and_answers_registered_commands(server: AdminServer) -> None:
    assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
    assert await admin_call(server.path, "echo", x=3) == {"got": 3}
    assert "echo" in await admin_call(server.path, "help")
    # several requests on one connection, in order
    answers = await _raw(server.path, b'{"command":"echo","x":1}\n{"command":"echo","x":2}\n')
    assert [a["result"] for a in answers] == [{"got": 1}, {"got": 2}]


async def test_bad_requests_get_clear_errors(server: AdminServer) -> None:
    with pytest.raises(AdminError, match="unknown command 'nope'"):
        await admin_call(server.path, "nope")
    with pytest.raises(AdminError, match="took longer than"):
        await admin_call(server.path, "slow")
    with pytest.raises(AdminError, match="RuntimeError: boom"):
        await admin_call(server.path, "broken")
    (bad_json,) = await _raw(server.path, b"{not json\n")
    assert bad_json["ok"] is False and "not JSON" in str(bad_json["error"])
    (no_command,) = await _raw(server.path, b'{"x": 1}\n')
    assert '"command"' in str(no_command["error"])


async def test_request_size_is_bounded(server: AdminServer) -> None:
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    writer.write(b'{"command":"echo","x":"' + b"a" * (MAX_REQUEST + 10))
    async with asyncio.timeout(5):
        line = await reader.readline()
        assert "longer than" in json.loads(line)["error"]
        assert await reader.read() == b""  # and the connection is closed
    writer.close()


async def test_idle_connection_is_closed(server: AdminServer) -> None:
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    async with asyncio.timeout(5):
        line = await reader.readline()
        assert "idle" in json.loads(line)["error"]
        assert await reader.read() == b""
    writer.close()


async def test_other_user_is_refused(tmp_path: Path) -> None:
    """SO_PEERCRED: a connection whose uid is not allowed gets an error line and is closed."""
    real = os.getuid()
    srv = AdminServer(tmp_path / "n.sock", allowed_uids=frozenset({real + 4242}))  # as if run by someone else
    srv.register("echo", lambda request: request, "echo")
    async with srv:
        with pytest.raises(AdminError, match=f"refused: uid {real} is not the node's user"):
            await admin_call(srv.path, "echo")
        assert srv.refused_users == 1
    assert AdminServer(tmp_path / "m.sock").allowed_uids == {real, 0}  # by default: the node's user and root


# a system python user nobody may run (the test venv's may live in root's home)
_NOBODY_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or not os.access(_NOBODY_PYTHON, os.X_OK),
    reason="needs root and /usr/bin/python3 to run a client as nobody (test_other_user_is_refused covers the check)",
)
async def test_real_other_user_cannot_use_the_socket(tmp_path: Path) -> None:
    """As user nobody: the 0600 socket refuses to connect; made world-writable, SO_PEERCRED still refuses."""
    directory = Path(tempfile.mkdtemp(prefix="adm-"))
    try:
        os.chmod(directory, 0o755)
        srv = AdminServer(directory / "n.sock")
        await srv.start()
        client = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_UNIX)\n"
            "try:\n s.connect(sys.argv[1])\nexcept PermissionError:\n print('EACCES'); sys.exit(0)\n"
            "s.settimeout(10); print(s.makefile().readline().strip())\n"  # refused before any request
        )

        async def as_nobody() -> str:
            proc = await asyncio.create_subprocess_exec(
                _NOBODY_PYTHON, "-I", "-c", client, str(srv.path), user=65534, stdout=subprocess.PIPE
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 20)
            return out.decode().strip()

        try:
            assert await as_nobody() == "EACCES"
            srv.path.chmod(0o666)  # a mistake by hand: the uid check still holds
            answer = json.loads(await as_nobody())
            assert answer == {"ok": False, "error": "refused: uid 65534 is not the node's user"}
        finally:
            await srv.close()
    finally:
        shutil.rmtree(directory)


async def test_stale_socket_is_replaced_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    first = AdminServer(path)
    await first.start()
    with pytest.raises(AdminError, match="in use by another running node"):
        await AdminServer(path).start()
    await first.close()
    assert not path.exists()  # removed at close
    # a socket file left by a killed node: nobody answers, so it is replaced
    import socket

    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    second = AdminServer(path)
    await second.start()
    assert find_admin_sockets(tmp_path) == [path]
    await second.close()
    # a regular file is never replaced
    path.write_text("x")
    with pytest.raises(AdminError, match="not a socket"):
        await AdminServer(path).start()


def test_long_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfiguration, match="unix sockets allow 107"):
        AdminServer(tmp_path / ("x" * 120 + ".sock"))


async def test_client_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(AdminError, match="no admin socket at"):
        await admin_call(tmp_path / "none.sock", "status")


async def test_close_with_open_connections_is_quiet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    srv = AdminServer(tmp_path / "n.sock")
    await srv.start()
    reader, writer = await asyncio.open_unix_connection(str(srv.path))
    writer.write(b'{"command":"help"}\n')
    assert json.loads(await reader.readline())["ok"] is True
    await srv.close()  # the connection is still open
    assert await reader.read() == b""  # closed by the server
    writer.close()
    await asyncio.sleep(0)  # let the loop run the connection task's callbacks
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    assert not srv.path.exists()
