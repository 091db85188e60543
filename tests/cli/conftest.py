"""Run ``asgi-p2p`` as a subprocess with a private config dir; never leave a process behind."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

REPO = Path(__file__).resolve().parents[2]
APPDIR = Path(__file__).resolve().parent / "appdir"
START_TIMEOUT = 30.0
# serve and relay open an admin socket in $XDG_RUNTIME_DIR/asgi-p2p: keep the tests' (and
# the stale ones of killed processes) in one short directory, removed when the tests end
RUNTIME_DIR = tempfile.mkdtemp(prefix="asgi-p2p-tests-")
atexit.register(shutil.rmtree, RUNTIME_DIR, True)


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASGI_P2P_", "MUSIC_DIR", "XDG_"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "config"),
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        COLUMNS="200",
        XDG_RUNTIME_DIR=RUNTIME_DIR,
    )
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


@dataclass
class Cli:
    """Runs ``python -m asgi_p2p`` in the repository root with its own HOME and config dir."""

    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = cli_env(self.home, **self.env)

    @property
    def default_key(self) -> Path:
        return self.home / "config" / "asgi-p2p" / "node.key"

    def run(
        self,
        *args: str | Path,
        timeout: float = 60.0,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        cwd: Path = REPO,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run to completion (subprocess.run kills the child if it overruns ``timeout``)."""
        return subprocess.run(
            [sys.executable, "-m", "asgi_p2p", *map(str, args)],
            cwd=cwd,
            env={**self.env, **(env or {})},
            input=input,
            capture_output=True,
            timeout=timeout,
            check=False,
        )


class ServerProcess:
    """``asgi-p2p serve ...`` in the background; output goes to files so pipes never fill."""

    def __init__(self, cli: Cli, workdir: Path, args: tuple[str | Path, ...], env: dict[str, str] | None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.ticket_file = workdir / "ticket.txt"
        self.stdout_path = workdir / "stdout.txt"
        self.stderr_path = workdir / "stderr.txt"
        argv = [sys.executable, "-m", "asgi_p2p", *map(str, args)]
        if "--ticket-file" not in argv:
            argv += ["--ticket-file", str(self.ticket_file)]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(argv, cwd=REPO, env={**cli.env, **(env or {})}, stdout=out, stderr=err)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> str:
        """Wait for the ticket file; returns the ticket.  Fails if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ticket_file.exists():
                text = self.ticket_file.read_text().strip()
                if text:
                    return text
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode} before it was ready:\n{self.stderr}")
            time.sleep(0.05)
        pytest.fail(f"server not ready after {timeout}s:\n{self.stderr}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Starter(Protocol):
    def __call__(self, *args: str | Path, env: dict[str, str] | None = None, ready: bool = True) -> ServerProcess: ...


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    (tmp_path / "home").mkdir()
    return Cli(tmp_path / "home")


@pytest.fixture
def start_server(cli: Cli, tmp_path: Path) -> Iterator[Starter]:
    """``start_server(*args, env=..., ready=True)`` -> a running :class:`ServerProcess`, killed at teardown."""
    servers: list[ServerProcess] = []

    def start(*args: str | Path, env: dict[str, str] | None = None, ready: bool = True) -> ServerProcess:
        server = ServerProcess(cli, tmp_path / f"server{len(servers)}", args, env)
        servers.append(server)
        if ready:
            server.wait_ready()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.kill()


@pytest.fixture(scope="module")
def music(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, ServerProcess, str]]:
    """One music server (ephemeral key) shared by the read-only tests of a module."""
    home = tmp_path_factory.mktemp("music-home")
    cli = Cli(home)
    server = ServerProcess(cli, home / "server", ("serve", "apps.music:app", "--ephemeral"), None)
    try:
        ticket = server.wait_ready()
        yield cli, server, ticket
    finally:
        server.kill()


def free_udp_port() -> int:
    """A loopback UDP port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def one_line_error(stderr: bytes) -> str:
    """The error output must be exactly one line starting with ``asgi-p2p: error:``."""
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("asgi-p2p: error:")]
    assert errors, f"no 'asgi-p2p: error:' line in stderr:\n{stderr.decode(errors='replace')}"
    assert "Traceback" not in stderr.decode(errors="replace"), stderr.decode(errors="replace")
    assert len(errors) == 1
    return errors[0]
