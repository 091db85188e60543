"""``examples/file_transfer.py`` runs: a cut transfer resumes and every file arrives verified."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import REPO, cli_env


def test_file_transfer_example(tmp_path: Path) -> None:
    env = cli_env(tmp_path, PYTHONPATH=str(REPO))
    r = subprocess.run(
        [sys.executable, str(REPO / "examples" / "file_transfer.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert "kept, resuming" in out
    assert "album complete, 4580000 bytes on disk, every sha256 verified" in out
    assert "confirmed it" in out
    assert out.rstrip().endswith("ok")
