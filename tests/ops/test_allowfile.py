"""The allow-file as the node changes it: labels, appending, removing (comments kept), reloading."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from asgi_p2p.errors import InvalidConfiguration
from asgi_p2p.identity import SecretKey
from asgi_p2p.ops.allowfile import AllowList, check_label


def test_labels_add_remove_reload(tmp_path: Path) -> None:
    a, b, c, fixed = (SecretKey.generate().node_id for _ in range(4))
    path = tmp_path / "allowed.txt"
    path.write_text(f"# my devices\n{a.to_bytes().hex()}  # laptop\n\n{b}\n# end")  # no final newline
    path.chmod(0o640)
    allow = AllowList([fixed], path)
    assert allow(a) and allow(b) and allow(fixed) and not allow(c)
    assert [(str(e.node_id), e.label, e.source) for e in allow.entries()] == [
        (str(fixed), None, "flag"),
        (str(a), "laptop", "file"),
        (str(b), None, "file"),
    ]
    assert allow.add(c, "phone") is True
    assert allow(c)
    assert path.read_text().endswith(f"# end\n{c}  # phone\n")
    assert allow.add(c, "again") is False  # already there: the file is not touched
    assert path.read_text().count(str(c)) == 1
    entry = allow.remove(a)
    assert entry.label == "laptop" and not allow(a)
    text = path.read_text()
    assert a.to_bytes().hex() not in text and "# my devices" in text and "# end" in text and str(b) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the rewrite keeps the file's mode
    with pytest.raises(InvalidConfiguration, match="--allow on the command line"):
        allow.remove(fixed)
    with pytest.raises(InvalidConfiguration, match="not in the allow-file"):
        allow.remove(a)
    # an edit by hand is picked up by reload() (SIGHUP)
    path.write_text(f"{a}  # back\n")
    allow.reload()
    assert allow(a) and not allow(b) and not allow(c) and allow.label(a) == "back"


def test_bad_file_and_labels_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "allowed.txt"
    path.write_text("not-a-node-id  # oops\n")
    with pytest.raises(InvalidConfiguration, match=r"allowed.txt:1: "):
        AllowList([], path)
    with pytest.raises(InvalidConfiguration, match="cannot read --allow-file"):
        AllowList([], tmp_path / "missing.txt")
    with pytest.raises(InvalidConfiguration, match="control characters"):
        check_label("pho\nne")
    with pytest.raises(InvalidConfiguration, match="at most 64"):
        check_label("x" * 65)
    assert check_label("  ") is None and check_label(" tablet ") == "tablet"
    with pytest.raises(InvalidConfiguration, match="no --allow-file"):
        AllowList([], None).add(SecretKey.generate().node_id, None)


def test_reload_with_new_sources_and_a_bad_file_changes_nothing(tmp_path: Path) -> None:
    a, b, fixed, new_fixed = (SecretKey.generate().node_id for _ in range(4))
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text(f"{a}  # laptop\n")
    second.write_text(f"{b}  # phone\n")
    allow = AllowList([fixed], first)
    # SIGHUP after --allow / --allow-file changed in the settings: both sources are replaced
    allow.reload([new_fixed], second)
    assert allow.path == second and allow(b) and allow(new_fixed) and not allow(a) and not allow(fixed)
    assert allow.label(b) == "phone"
    # a file that does not parse (or is gone) leaves the list and its path as they were
    first.write_text("not-a-node-id\n")
    with pytest.raises(InvalidConfiguration, match=r"first\.txt:1"):
        allow.reload([fixed], first)
    second.unlink()
    with pytest.raises(InvalidConfiguration, match="cannot read --allow-file"):
        allow.reload()
    assert allow.path == second and allow(b) and allow(new_fixed) and not allow(fixed)
    # no file any more: only the --allow ids
    allow.reload([fixed], None)
    assert allow.path is None and [e.node_id for e in allow.entries()] == [fixed]
