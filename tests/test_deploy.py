"""The deployment files: systemd units pass ``systemd-analyze verify``, Dockerfiles are well formed,
and every command line they run is accepted by the real ``asgi-p2p`` argument parser.

No image is built and no service is started: ``systemd-analyze verify`` checks the unit
offline (it needs the ExecStart binaries to exist, so the venv's ``asgi-p2p`` stands in
for the documented ``/opt/asgi-p2p/bin/asgi-p2p``).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asgi_p2p.cli import _subcommands

REPO = Path(__file__).resolve().parents[1]
UNITS = sorted((REPO / "deploy" / "systemd").glob("*.service"))
DOCKERFILES = sorted((REPO / "deploy" / "docker").glob("Dockerfile.*"))
INSTALLED = "/opt/asgi-p2p/bin/asgi-p2p"  # where docs/deploy.md installs the package

DOCKER_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
    "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """Parse ``asgi-p2p ARGS`` with the real subcommand parser; a bad flag fails the test."""
    cmds = _subcommands()
    name, rest = argv[0], argv[1:]
    assert name in cmds, f"unknown asgi-p2p command {name!r}"
    parser = argparse.ArgumentParser(prog=f"asgi-p2p {name}", exit_on_error=False)
    cmds[name][1](parser)
    try:
        return parser.parse_args(rest)
    except (argparse.ArgumentError, SystemExit) as exc:  # pragma: no cover - the failure message
        pytest.fail(f"asgi-p2p {shlex.join(argv)}: {exc}")


def unit_values(text: str, key: str) -> list[str]:
    """The values of ``key=`` in a unit file (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.split("=", 1)[1].strip() for line in joined.splitlines() if line.startswith(f"{key}=")]


def test_deploy_files_exist() -> None:
    assert [u.name for u in UNITS] == ["asgi-p2p-relay.service", "asgi-p2p-serve.service"]
    assert [d.name for d in DOCKERFILES] == ["Dockerfile.relay", "Dockerfile.serve"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_passes_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing (Debian package systemd; `make sysdeps`)"
    text = unit.read_text()
    assert f"ExecStart={INSTALLED} " in text
    venv_cli = Path(sys.executable).parent / "asgi-p2p"
    assert venv_cli.exists()
    checked = tmp_path / unit.name
    checked.write_text(text.replace(INSTALLED, str(venv_cli)))
    r = subprocess.run(
        [analyze, "verify", "--man=no", str(checked)], capture_output=True, text=True, timeout=60, check=False
    )
    # systemd-analyze exits 0 on unknown keys and bad values but prints them: any output is a defect
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_command_line_and_sandbox(unit: Path, tmp_path: Path) -> None:
    text = unit.read_text()
    (start,) = unit_values(text, "ExecStart")
    argv = shlex.split(start.replace("${STATE_DIRECTORY}", "/var/lib/x").replace("${RUNTIME_DIRECTORY}", "/run/x"))
    assert argv[0] == INSTALLED
    args = parse_cli(argv[1:])
    assert str(args.key_file).startswith("/var/lib/x/")  # the key lives in the StateDirectory (0700)
    assert str(args.admin_socket).startswith("/run/x/")
    if argv[1] == "serve":  # a crash (Restart=on-failure) resets the peers' connections at once
        assert str(args.peer_state).startswith("/var/lib/x/")
    for key, value in [
        ("DynamicUser", "yes"),
        ("StateDirectoryMode", "0700"),
        ("UMask", "0077"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("Restart", "on-failure"),
        ("CapabilityBoundingSet", ""),
    ]:
        assert unit_values(text, key) == [value], key
    assert "AF_UNIX" in unit_values(text, "RestrictAddressFamilies")[0]  # the admin socket


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.strip().partition(" ")
        out.append((word, rest.strip()))
    assert not pending, f"{path.name}: a continuation line runs off the end"
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_structure(dockerfile: Path) -> None:
    inst = dockerfile_instructions(dockerfile)
    words = [w for w, _ in inst]
    assert words[0] == "FROM" and inst[0][1].startswith("python:3.11")
    unknown = [w for w in words if w not in DOCKER_INSTRUCTIONS]
    assert not unknown, f"not Dockerfile instructions: {unknown}"
    for word, rest in inst:
        if word in ("COPY", "ADD"):
            *sources, _dest = shlex.split(rest)
            for src in sources:
                assert (REPO / src).exists(), f"{dockerfile.name}: COPY {src}: not in the repository"
    (user,) = [rest for w, rest in inst if w == "USER"]
    assert user not in ("root", "0")
    (expose,) = [rest for w, rest in inst if w == "EXPOSE"]
    assert re.fullmatch(r"\d+/udp", expose), "QUIC needs the port published as UDP"
    (volume,) = [json.loads(rest) for w, rest in inst if w == "VOLUME"]
    (entrypoint,) = [json.loads(rest) for w, rest in inst if w == "ENTRYPOINT"]  # exec form: signals reach it
    (cmd,) = [json.loads(rest) for w, rest in inst if w == "CMD"]
    assert entrypoint[0] == "asgi-p2p"
    args = parse_cli(entrypoint[1:] + cmd)
    port = int(expose.split("/")[0])
    assert args.port == port and args.host == "0.0.0.0"
    assert str(args.key_file.parent) in volume  # the key survives a new container
    assert args.public_host, "in Docker's bridge network peers need the host's address (--public-host)"
