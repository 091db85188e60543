"""``examples/tunnel_migration/``, run as its README says: an unchanged nginx behind ``asgi-p2p proxy``,
reached side by side by headless chromium through ``asgi-p2p gateway`` and by ``client.py`` over
``P2PTransport``.

The example directory is copied to a temporary directory (the commands write ``run/`` there);
the only changes are free ports instead of the README's 8000 (nginx.conf) and 8080 (the
gateway's ``--listen``, plus a ``--url-file`` to learn the port), and ``python -m asgi_p2p``
for the ``asgi-p2p`` command.  Every process is ended by its PID, also on failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from asgi_p2p import Node
from asgi_p2p.errors import P2PError
from asgi_p2p.http import P2PTransport
from asgi_p2p.ticket import Ticket
from tests.cli.conftest import REPO, START_TIMEOUT, cli_env
from tests.proxy.nginx import NGINX, free_tcp_port

from .browser import chromium

pytestmark = pytest.mark.timeout(120)

EXAMPLE = REPO / "examples" / "tunnel_migration"

#: The README's commands, verbatim (the test checks they are there), and what the test runs for each.
NGINX_CMD = 'nginx -p "$PWD" -c nginx.conf -e run/error.log &'
KEYGEN_GATEWAY = "asgi-p2p keygen --key-file run/gateway.key >> run/allow.txt"
KEYGEN_CLIENT = "asgi-p2p keygen --key-file run/client.key >> run/allow.txt"
PROXY_CMD = (
    "asgi-p2p proxy http://127.0.0.1:8000 --key-file run/node.key --allow-file run/allow.txt "
    "--ticket-file run/ticket.txt &"
)
GATEWAY_CMD = 'asgi-p2p gateway --listen 127.0.0.1:8080 --key-file run/gateway.key "$(cat run/ticket.txt)" &'
CLIENT_CMD = 'python client.py --key-file run/client.key "$(cat run/ticket.txt)"'

AUDIO_METADATA = """async () => {
  const audio = document.querySelector("li.track audio");
  if (audio.readyState < 1) {
    await new Promise((resolve, reject) => {
      audio.addEventListener("loadedmetadata", resolve, { once: true });
      audio.addEventListener("error", () => reject(new Error("audio error " + audio.error.code)), { once: true });
    });
  }
  return { duration: audio.duration, src: audio.currentSrc };
}"""


class Processes:
    """The example's background processes, each ended by its PID (terminate, then kill)."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.env = env
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        logs = self.cwd / "run" / "test-logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{name}.out").open("wb") as out, (logs / f"{name}.err").open("wb") as err:
            proc = subprocess.Popen(argv, cwd=self.cwd, env=self.env, stdout=out, stderr=err)
        self.procs.append((name, proc))
        return proc

    def output(self) -> str:
        logs = self.cwd / "run" / "test-logs"
        parts = [f"--- {p.name}:\n{p.read_text(errors='replace')}" for p in sorted(logs.glob("*")) if p.stat().st_size]
        for extra in ("error.log", "access.log"):
            path = self.cwd / "run" / extra
            if path.exists():
                parts.append(f"--- run/{extra}:\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self.procs:
                if proc.poll() is not None:
                    pytest.fail(f"{name} exited with {proc.returncode} before {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout}s:\n{self.output()}")
            time.sleep(0.05)

    def stop_all(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _nonempty(path: Path) -> Callable[[], bool]:
    return lambda: path.exists() and bool(path.read_text().strip())


def test_the_readme_shows_the_commands_this_test_runs() -> None:
    readme = (EXAMPLE / "README.md").read_text()
    for command in (NGINX_CMD, KEYGEN_GATEWAY, KEYGEN_CLIENT, PROXY_CMD, GATEWAY_CMD, CLIENT_CMD):
        assert command in readme, command
    assert "listen 127.0.0.1:8000;" in (EXAMPLE / "nginx.conf").read_text()
    listed = (EXAMPLE / "site" / "SHA256SUMS").read_text().split()
    assert listed[1] == "audio/tone.wav"
    assert listed[0] == hashlib.sha256((EXAMPLE / "site" / "audio" / "tone.wav").read_bytes()).hexdigest()


async def test_nginx_reached_by_chromium_through_the_gateway_and_by_a_python_client(tmp_path: Path) -> None:
    ex = tmp_path / "tunnel_migration"
    shutil.copytree(EXAMPLE, ex, ignore=shutil.ignore_patterns("run", "__pycache__"))
    port = free_tcp_port()
    conf = ex / "nginx.conf"
    conf.write_text(conf.read_text().replace("listen 127.0.0.1:8000;", f"listen 127.0.0.1:{port};"))
    (ex / "run" / "tmp").mkdir(parents=True)  # mkdir -p run/tmp
    home = tmp_path / "home"
    home.mkdir()
    env = cli_env(home, PYTHONPATH=str(REPO))
    asgi_p2p = [sys.executable, "-m", "asgi_p2p"]
    audio = (EXAMPLE / "site" / "audio" / "tone.wav").read_bytes()
    run = ex / "run"
    procs = Processes(ex, env)
    try:
        procs.start("nginx", [NGINX, "-p", str(ex), "-c", "nginx.conf", "-e", "run/error.log"])
        keygens = [
            await asyncio.create_subprocess_exec(
                *asgi_p2p, "keygen", "--key-file", f"run/{who}.key", cwd=ex, env=env, stdout=asyncio.subprocess.PIPE
            )
            for who in ("gateway", "client")
        ]
        async with asyncio.timeout(60):
            outputs = [await keygen.communicate() for keygen in keygens]
        assert [k.returncode for k in keygens] == [0, 0], procs.output()
        ids = [out.decode().strip() for out, _ in outputs]
        await asyncio.to_thread(procs.wait_for, "nginx listening", lambda: _listening(port))
        gateway_id, client_id = ids
        (run / "allow.txt").write_text("".join(f"{i}\n" for i in ids))  # keygen ... >> run/allow.txt, twice

        proxy_argv = ["--key-file", "run/node.key", "--allow-file", "run/allow.txt", "--ticket-file", "run/ticket.txt"]
        procs.start("proxy", [*asgi_p2p, "proxy", f"http://127.0.0.1:{port}", *proxy_argv])
        procs.wait_for("run/ticket.txt", _nonempty(run / "ticket.txt"))
        ticket = (run / "ticket.txt").read_text().strip()
        node_id = str(Ticket.parse(ticket).node_id)

        gateway_argv = ["--listen", "127.0.0.1:0", "--key-file", "run/gateway.key", ticket]
        procs.start("gateway", [*asgi_p2p, "gateway", *gateway_argv, "--url-file", "run/gateway.url"])
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            "client.py",
            *("--key-file", "run/client.key", ticket),
            cwd=ex,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await asyncio.to_thread(procs.wait_for, "run/gateway.url", _nonempty(run / "gateway.url"))
            url = (run / "gateway.url").read_text().strip()
            async with chromium(tmp_path) as browser:
                page = await browser.new_page()
                response = await page.goto(url + "/", timeout=30_000)
                assert response is not None and response.status == 200, procs.output()
                assert await page.text_content("h1") == "Music on nginx"
                assert await page.text_content("li.track .title") == "Tone in A (3 s)"
                meta = await page.evaluate(AUDIO_METADATA)
                assert meta["src"] == url + "/audio/tone.wav"
                assert abs(meta["duration"] - 3.0) < 0.01, meta
            async with asyncio.timeout(60):
                out, err = await client.communicate()
        finally:
            if client.returncode is None:
                client.kill()
                await client.wait()
        assert client.returncode == 0, out.decode() + err.decode() + procs.output()
        digest = hashlib.sha256(audio).hexdigest()
        assert f"audio/tone.wav  {len(audio)} bytes  sha256 {digest}  OK" in out.decode()

        def lines() -> list[str]:
            path = run / "access.log"
            return path.read_text().splitlines() if path.exists() else []

        def logged(path: str, caller: str) -> list[str]:
            return [line for line in lines() if f'"GET {path} HTTP/1.1"' in line and f" peer={caller} " in line]

        procs.wait_for(
            "the access log lines", lambda: bool(logged("/", gateway_id) and logged("/audio/tone.wav", client_id))
        )
        # nginx logs the header's '"' as the four characters \x22
        forwarded = f'forwarded="for=\\x22_{gateway_id}\\x22;by=\\x22_{node_id}\\x22;'
        page_line = logged("/", gateway_id)[0]
        assert re.search(r'" 200 \d+ ', page_line) and forwarded in page_line, page_line
        browser_audio = logged("/audio/tone.wav", gateway_id)  # the <audio> element, through the gateway
        assert browser_audio, "\n".join(lines())
        assert any(" 206 " in line and 'range="bytes=' in line for line in browser_audio), browser_audio
        client_line = logged("/audio/tone.wav", client_id)[0]
        assert f" 200 {len(audio)} " in client_line, client_line
        assert f'forwarded="for=\\x22_{client_id}\\x22;by=\\x22_{node_id}\\x22;' in client_line, client_line
        # only the two allowed callers ever reached nginx
        assert all(f" peer={gateway_id} " in line or f" peer={client_id} " in line for line in lines()), lines()

        # a caller the node does not allow is refused in the handshake and never reaches nginx
        before = len(lines())
        stranger = await Node.bind(host="127.0.0.1")
        transport = P2PTransport(stranger)
        transport.add_addr(Ticket.parse(ticket).to_node_addr())
        try:
            async with httpx.AsyncClient(transport=transport, timeout=20) as http:
                with pytest.raises((P2PError, httpx.HTTPError)):
                    await http.get(f"https://{node_id}/audio/tone.wav")
        finally:
            await stranger.close()
        assert len(lines()) == before
    finally:
        procs.stop_all()
