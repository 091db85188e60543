"""The allow-list of a serving node, changed while it runs.

Node ids come from two places: ``--allow`` (fixed, unless a SIGHUP reloads changed settings) and
the allow-file (``--allow-file``), one node id per line with an optional
``# label`` after it::

    # my devices
    pb4yb7e1kqz8...  # phone
    3dmx...          # laptop

Pairing appends a line at once (:meth:`AllowList.add`); revoking rewrites the file
without that id's lines, keeping every other line and comment (:meth:`AllowList.remove`);
:meth:`AllowList.reload` reads the file again (``serve`` does on SIGHUP, through the same
object).  An :class:`AllowList` is callable, so it is the endpoint's allow policy itself:
changes apply to the next handshake.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidConfiguration, InvalidNodeId
from ..identity import NodeId

__all__ = ["AllowEntry", "AllowList", "check_label", "parse_allow_text"]

log = logging.getLogger("asgi_p2p.ops.allowfile")

#: Longest label (characters) a paired device may carry.
MAX_LABEL = 64
#: Most entries an allow-file may hold (a bound on memory and on the file's size).
MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class AllowEntry:
    node_id: NodeId
    label: str | None
    #: "flag" (--allow) or "file" (--allow-file)
    source: str


def check_label(label: str | None) -> str | None:
    """A label as stored after ``#`` in the allow-file: printable, one line, at most :data:`MAX_LABEL`."""
    if label is None:
        return None
    label = label.strip()
    if not label:
        return None
    if len(label) > MAX_LABEL:
        raise InvalidConfiguration(f"label is {len(label)} characters; at most {MAX_LABEL}")
    if not label.isprintable():
        raise InvalidConfiguration(f"label {label!r} has control characters")
    return label


def parse_allow_text(text: str, path: str = "<allow-file>") -> list[AllowEntry]:
    """Entries of an allow-file's text (blank lines and ``#`` comments ignored)."""
    entries: list[AllowEntry] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        item, _, comment = line.partition("#")
        item = item.strip()
        if not item:
            continue
        try:
            node_id = NodeId.parse(item)
        except InvalidNodeId as exc:
            raise InvalidConfiguration(f"{path}:{lineno}: {exc}") from None
        entries.append(AllowEntry(node_id, comment.strip() or None, "file"))
        if len(entries) > MAX_ENTRIES:
            raise InvalidConfiguration(f"{path}: more than {MAX_ENTRIES} node ids")
    return entries


class AllowList:
    """Node ids from ``--allow`` (fixed) plus those in an allow-file (changed live)."""

    def __init__(self, fixed: list[NodeId], path: Path | None) -> None:
        self.path = path
        self._fixed = {node_id: AllowEntry(node_id, None, "flag") for node_id in fixed}
        self._file: dict[NodeId, AllowEntry] = {}
        if path is not None:
            self.reload()

    def __call__(self, node_id: NodeId) -> bool:
        return node_id in self._fixed or node_id in self._file

    def __contains__(self, node_id: NodeId) -> bool:
        return self(node_id)

    def __len__(self) -> int:
        return len(self._fixed.keys() | self._file.keys())

    def entries(self) -> list[AllowEntry]:
        """Every allowed node: command-line ones first, then the file's in file order."""
        out = list(self._fixed.values())
        out += [e for e in self._file.values() if e.node_id not in self._fixed]
        return out

    def label(self, node_id: NodeId) -> str | None:
        entry = self._file.get(node_id)
        return entry.label if entry is not None else None

    def _read(self, path: Path | None = None) -> str:
        path = path or self.path
        assert path is not None
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidConfiguration(f"cannot read --allow-file {path}: {exc.strerror or exc}") from None

    def reload(self, fixed: list[NodeId] | None = None, path: Path | None = None) -> None:
        """Read the allow-file again (the ids it no longer lists are refused from the next handshake).

        With ``fixed`` (SIGHUP after the settings changed), ``fixed`` replaces the ``--allow`` ids
        and ``path`` the allow-file (None: no file).  Nothing changes if the file cannot be read.
        """
        new_path = path if fixed is not None else self.path
        entries = parse_allow_text(self._read(new_path), str(new_path)) if new_path is not None else []
        file: dict[NodeId, AllowEntry] = {}
        for e in entries:
            file.setdefault(e.node_id, e)
        self.path, self._file = new_path, file
        if fixed is not None:
            self._fixed = {node_id: AllowEntry(node_id, None, "flag") for node_id in fixed}

    def add(self, node_id: NodeId, label: str | None) -> bool:
        """Allow ``node_id`` now and append it to the allow-file; False if it was already allowed."""
        if self.path is None:
            raise InvalidConfiguration("no --allow-file: the node has nowhere to record allowed devices")
        label = check_label(label)
        if node_id in self._file:
            return False
        if len(self._file) >= MAX_ENTRIES:
            raise InvalidConfiguration(f"{self.path} already holds {MAX_ENTRIES} node ids")
        line = f"{node_id}  # {label}\n" if label else f"{node_id}\n"
        text = self._read()
        prefix = "" if not text or text.endswith("\n") else "\n"
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(prefix + line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise InvalidConfiguration(f"cannot write --allow-file {self.path}: {exc.strerror or exc}") from None
        self._file[node_id] = AllowEntry(node_id, label, "file")
        log.info("allowed node %s%s (added to %s)", node_id, f" ({label})" if label else "", self.path)
        return True

    def remove(self, node_id: NodeId) -> AllowEntry:
        """Stop allowing ``node_id``: rewrite the allow-file without its lines; returns its entry.

        Raises :class:`InvalidConfiguration` if it is not in the file (e.g. only on the command line).
        """
        if node_id in self._fixed:
            raise InvalidConfiguration(
                f"node {node_id} is allowed by --allow on the command line; restart the node without it"
            )
        if self.path is None or node_id not in self._file:
            raise InvalidConfiguration(f"node {node_id} is not in the allow-file")
        text = self._read()
        kept = []
        for line in text.splitlines(keepends=True):
            item = line.partition("#")[0].strip()
            if item:
                try:
                    if NodeId.parse(item) == node_id:
                        continue
                except InvalidNodeId:
                    pass
            kept.append(line)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text("".join(kept), encoding="utf-8")
            os.chmod(tmp, self.path.stat().st_mode & 0o777)
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise InvalidConfiguration(f"cannot rewrite --allow-file {self.path}: {exc.strerror or exc}") from None
        entry = self._file.pop(node_id)
        log.info("revoked node %s (removed from %s)", node_id, self.path)
        return entry
