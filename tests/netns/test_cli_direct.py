"""The real CLI through real NAT: `asgi-p2p get` from a home behind a router to a node on the public net.

A client behind any NAT reaches a public server directly (no hole punching, no relay needed); the
issue-5 tests for two homes and the relay build on the same rig (see README.md).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.conftest import cli_env
from tests.netns.rig import Impair, Rig


@pytest.mark.parametrize("nat", ["eim", "symmetric"])
def test_get_from_behind_nat_reaches_a_public_node(make_rig: Callable[..., Rig], tmp_path: Path, nat: str) -> None:
    rig = make_rig()
    server = rig.home("s", nat="none", wan=Impair(delay_ms=5))
    client = rig.home("c", nat=nat, wan=Impair(delay_ms=10, loss_pct=2))
    (tmp_path / "home").mkdir()
    env = cli_env(tmp_path / "home")
    args = ("apps.music:app", "--ephemeral", "--host", "0.0.0.0", "--port", "4433")
    proc, ticket = rig.serve(server.host, tmp_path / "ticket", *args, env=env)
    got = rig.run(client.host, [sys.executable, "-m", "asgi_p2p", "get", "-v", f"{ticket}/"], env=env, timeout=60)
    assert got.returncode == 0, f"{got.stderr}\nserver log:\n{rig.log(proc)}"
    body = json.loads(got.stdout)
    assert body["app"] == "asgi-p2p music library"
    assert f"{server.host.ip}:4433" in got.stderr  # it dialled the server's public address itself
