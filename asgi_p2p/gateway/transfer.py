"""File transfer between peers: a file or a directory, resumable, verified with sha256.

The sender serves :class:`SendApp` (an ordinary ASGI app) with the content's
:class:`Manifest`; the receiver calls :func:`receive` with an httpx client (a
:class:`~asgi_p2p.http.P2PTransport`).  The protocol is plain HTTP:

- ``GET /manifest``: JSON ``{"version": 1, "name", "kind": "file"|"dir", "files": [{"path",
  "size", "sha256"}], "total"}``.  A directory is sent as the list of its regular files
  (relative POSIX paths, sorted; empty directories and symlinks are not sent);
- ``GET /files/<index>`` (and ``HEAD``): the file's bytes, with ``ETag: "<sha256>"``,
  ``Accept-Ranges: bytes`` and single ``Range`` requests (206), ``If-Range`` honoured;
- ``POST /received``: the receiver verified everything (the sender may stop).

The receiver downloads into a staging name next to the destination
(``.NAME.<digest>.asgi-p2p-part``, a file or a directory), resumes a staged file with
``Range: bytes=N-`` and ``If-Range``, checks every file's sha256, and only then renames the
staged file (or directory) to the final name.  A digest mismatch deletes the staged file and
fails: nothing unverified ever carries the final name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..errors import P2PError
from ..http.types import Receive, Scope, Send

__all__ = [
    "CHUNK",
    "FileEntry",
    "Manifest",
    "SendApp",
    "TransferError",
    "build_manifest",
    "fetch_manifest",
    "receive",
    "staging_path",
]

log = logging.getLogger("asgi_p2p.gateway.transfer")

#: bytes read from disk (and sent) at a time
CHUNK = 256 * 1024
MANIFEST_VERSION = 1
#: the most files one manifest may list, and the largest manifest the receiver reads
MAX_FILES = 100_000
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class TransferError(P2PError):
    """The transfer cannot go on (a bad manifest, a digest mismatch, a destination in the way...)."""


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative POSIX path ("" for a single file: the manifest's name is the file)
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    name: str
    kind: str  # "file" or "dir"
    files: tuple[FileEntry, ...]

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def digest(self) -> str:
        """sha256 of the canonical manifest: names one transfer's content."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "name": self.name,
            "kind": self.kind,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
            "total": self.total,
        }

    @classmethod
    def from_json(cls, obj: Any) -> Manifest:
        """Parse and check a manifest from a peer: every name must stay inside the destination."""
        try:
            if obj["version"] != MANIFEST_VERSION:
                raise TransferError(f"unsupported manifest version {obj['version']!r}")
            name, kind, raw_files = obj["name"], obj["kind"], obj["files"]
            if kind not in ("file", "dir") or not isinstance(raw_files, list) or len(raw_files) > MAX_FILES:
                raise TransferError("malformed manifest")
            _check_name(name)
            files = []
            seen: set[str] = set()
            for item in raw_files:
                path, size, digest = item["path"], item["size"], item["sha256"]
                if not isinstance(size, int) or size < 0 or not isinstance(digest, str) or not _SHA256.match(digest):
                    raise TransferError(f"malformed manifest entry {item!r}")
                if kind == "file":
                    if path != "" or len(raw_files) != 1:
                        raise TransferError("malformed manifest: a file transfer lists exactly one file")
                else:
                    _check_relative(path)
                    if path in seen:
                        raise TransferError(f"manifest lists {path!r} twice")
                    seen.add(path)
                files.append(FileEntry(path, size, digest))
        except (KeyError, TypeError) as exc:
            raise TransferError(f"malformed manifest ({exc})") from None
        return cls(name, kind, tuple(files))


def _check_name(name: Any) -> None:
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or len(name) > 255
    ):
        raise TransferError(f"unsafe name in manifest: {name!r}")


def _check_relative(path: Any) -> None:
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\x00" in path:
        raise TransferError(f"unsafe path in manifest: {path!r}")
    for part in path.split("/"):
        if part in ("", ".", "..") or len(part) > 255:
            raise TransferError(f"unsafe path in manifest: {path!r}")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def build_manifest(path: Path) -> Manifest:
    """The manifest of a file or a directory (reads and hashes every file: run it in a thread)."""
    path = path.resolve()
    if path.is_file():
        return Manifest(path.name, "file", (FileEntry("", path.stat().st_size, _sha256_file(path)),))
    if not path.is_dir():
        raise TransferError(f"{path}: no such file or directory")
    files = []
    for item in sorted(_walk(path)):
        rel = item.relative_to(path).as_posix()
        files.append(FileEntry(rel, item.stat().st_size, _sha256_file(item)))
        if len(files) > MAX_FILES:
            raise TransferError(f"{path}: more than {MAX_FILES} files")
    return Manifest(path.name, "dir", tuple(files))


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):  # does not follow symlinked directories
        dirnames.sort()
        for name in filenames:
            item = Path(dirpath) / name
            if item.is_file() and not item.is_symlink():
                yield item


# -- the sending side -----------------------------------------------------------------------


class SendApp:
    """Serves ``manifest`` of the file or directory ``root`` (see the module docstring).

    ``on_received(peer_id)`` runs when a receiver reports that it verified everything.
    """

    def __init__(self, root: Path, manifest: Manifest, *, on_received: Callable[[str], None] | None = None) -> None:
        self.root = root.resolve()
        self.manifest = manifest
        self.on_received = on_received
        self._manifest_body = json.dumps(manifest.to_json()).encode()
        #: peer ids that reported a verified transfer
        self.received_by: list[str] = []

    def _file(self, index: int) -> Path:
        entry = self.manifest.files[index]
        return self.root if self.manifest.kind == "file" else self.root / entry.path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return  # a websocket: closing it without accepting answers 403
        method, path = scope["method"], scope["path"]
        if path == "/manifest" and method in ("GET", "HEAD"):
            await _respond(send, 200, self._manifest_body, "application/json", head=method == "HEAD")
        elif path.startswith("/files/") and method in ("GET", "HEAD"):
            index = path[len("/files/") :]
            if not index.isdigit() or int(index) >= len(self.manifest.files):
                await _respond(send, 404, b"no such file\n")
                return
            await self._send_file(int(index), scope, send, head=method == "HEAD")
        elif path == "/received" and method == "POST":
            while (await receive()).get("more_body"):
                pass
            peer = scope.get("extensions", {}).get("p2p", {}).get("peer_id", "?")
            self.received_by.append(peer)
            log.info("%s received and verified %s", peer, self.manifest.name)
            await _respond(send, 204, b"")
            if self.on_received is not None:
                self.on_received(peer)
        else:
            await _respond(send, 404 if method in ("GET", "HEAD") else 405, b"not found\n")

    async def _send_file(self, index: int, scope: Scope, send: Send, *, head: bool) -> None:
        entry = self.manifest.files[index]
        etag = f'"{entry.sha256}"'.encode()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            path = self._file(index)
            if self.manifest.kind == "dir" and not path.resolve().is_relative_to(self.root):
                raise OSError(f"{path} now leads outside {self.root} (a symlink?)")
            f = path.open("rb")
        except OSError as exc:
            log.warning("cannot open %s: %s", self._file(index), exc)
            await _respond(send, 410, b"the file is no longer there\n")
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            if size != entry.size:
                await _respond(send, 409, b"the file changed since it was offered\n")
                return
            start, end = 0, size
            status = 200
            wanted = headers.get("range")
            if_range = headers.get("if-range")
            if wanted is not None and (if_range is None or if_range == etag.decode()):
                parsed = _parse_range(wanted, size)
                if parsed is None:
                    body = b"unsatisfiable range\n"
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 416,
                            "headers": [(b"content-range", f"bytes */{size}".encode())],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
                if parsed != (0, size):
                    start, end = parsed
                    status = 206
            out = [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(end - start).encode()),
                (b"etag", etag),
                (b"accept-ranges", b"bytes"),
            ]
            if status == 206:
                out.append((b"content-range", f"bytes {start}-{end - 1}/{size}".encode()))
            await send({"type": "http.response.start", "status": status, "headers": out})
            if head or end == start:
                await send({"type": "http.response.body", "body": b""})
                return
            f.seek(start)
            left = end - start
            while left > 0:
                chunk = f.read(min(CHUNK, left))  # a local file: reads come from the page cache
                if not chunk:
                    raise OSError(f"{self._file(index)} shrank while being sent")
                left -= len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) of a single ``bytes=`` range; ``None``: unsatisfiable.

    Several ranges are answered with the whole file (RFC 9110 allows ignoring Range)."""
    if "," in value:
        return 0, size
    m = _RANGE.match(value.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return 0, size  # not a byte range we understand: ignore it
    if not m.group(1):  # suffix: the last N bytes
        n = int(m.group(2))
        return (max(0, size - n), size) if n > 0 and size > 0 else None
    start = int(m.group(1))
    end = min(int(m.group(2)) + 1, size) if m.group(2) else size
    if start >= size or end <= start:
        return None
    return start, end


async def _respond(send: Send, status: int, body: bytes, ctype: str = "text/plain", *, head: bool = False) -> None:
    headers = [(b"content-type", ctype.encode())]
    if status != 204:
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head or status == 204 else body})


# -- the receiving side -------------------------------------------------------------------------


def staging_path(dest: Path, manifest: Manifest) -> Path:
    """Where ``manifest`` is downloaded before it is verified and renamed to ``dest``."""
    digest = manifest.files[0].sha256 if manifest.kind == "file" else manifest.digest
    return dest.with_name(f".{dest.name}.{digest[:16]}.asgi-p2p-part")


async def fetch_manifest(client: httpx.AsyncClient) -> Manifest:
    async with client.stream("GET", "/manifest") as r:
        if r.status_code != 200:
            raise TransferError(f"the sender answered {r.status_code} for its manifest")
        data = b""
        async for chunk in r.aiter_bytes():
            data += chunk
            if len(data) > MAX_MANIFEST_BYTES:
                raise TransferError("the manifest is too large")
    try:
        return Manifest.from_json(json.loads(data))
    except ValueError as exc:
        raise TransferError(f"the manifest is not JSON: {exc}") from None


async def receive(
    client: httpx.AsyncClient,
    dest: Path,
    manifest: Manifest,
    *,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Download ``manifest`` from the sender ``client`` talks to, into ``dest`` (which must not
    exist), resuming what an earlier attempt staged; returns ``dest``.

    ``progress(n)`` is called with every ``n`` bytes now on disk (including those found
    staged).  Raises :class:`TransferError` (a digest mismatch removes the staged file) or
    httpx errors (the staged part is kept for the next attempt).
    """
    _check_free(dest)
    stage = staging_path(dest, manifest)
    report = progress or (lambda n: None)
    if manifest.kind == "file":
        await _fetch_file(client, 0, manifest.files[0], stage, report)
        os.replace(stage, dest)
    else:
        stage.mkdir(exist_ok=True)
        for index, entry in enumerate(manifest.files):
            final = stage / entry.path
            if _is_there(final):  # verified by an earlier attempt (renamed only after its check)
                report(entry.size)
                continue
            final.parent.mkdir(parents=True, exist_ok=True)
            part = final.with_name(final.name + ".part")
            await _fetch_file(client, index, entry, part, report)
            os.replace(part, final)
        _check_free(dest, f"; the verified copy is in {stage}")
        os.replace(stage, dest)
    try:
        await client.post("/received", content=b"")
    except httpx.HTTPError as exc:  # the content is here and verified: that is what matters
        log.info("could not tell the sender: %s", exc)
    return dest


async def _fetch_file(
    client: httpx.AsyncClient, index: int, entry: FileEntry, part: Path, report: Callable[[int], None]
) -> None:
    have, h = _staged(part, entry.size)
    if have:
        report(have)
    headers = {}
    if have:
        headers = {"range": f"bytes={have}-", "if-range": f'"{entry.sha256}"'}
    if have < entry.size or entry.size == 0:
        async with client.stream("GET", f"/files/{index}", headers=headers) as r:
            if r.status_code == 200 and have:  # the sender ignored the range: start over
                report(-have)
                have = 0
                h = hashlib.sha256()
            elif r.status_code not in (200, 206):
                text = (await r.aread())[:200].decode("utf-8", "replace").strip()
                raise TransferError(f"the sender answered {r.status_code} for {entry.path or 'the file'}: {text}")
            with part.open("r+b" if have else "wb") as f:
                f.seek(have)
                f.truncate()
                async for chunk in r.aiter_raw():
                    f.write(chunk)
                    h.update(chunk)
                    have += len(chunk)
                    if have > entry.size:
                        break
                    report(len(chunk))
    if have != entry.size or h.hexdigest() != entry.sha256:
        os.unlink(part)
        raise TransferError(
            f"{entry.path or 'the file'}: sha256 mismatch (expected {entry.sha256}, got {h.hexdigest()}, "
            f"{have} of {entry.size} bytes); the unverified data was deleted"
        )


def _is_there(path: Path) -> bool:
    return os.path.lexists(path)


def _check_free(dest: Path, note: str = "") -> None:
    if os.path.lexists(dest):
        raise TransferError(f"{dest} already exists; choose another name with -o{note}")


def _staged(part: Path, size: int) -> tuple[int, Any]:
    """Bytes already staged in ``part`` and their running sha256 (an oversized part is dropped)."""
    h = hashlib.sha256()
    try:
        have = part.stat().st_size
    except FileNotFoundError:
        return 0, h
    if have > size:
        part.unlink()
        return 0, h
    with part.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return have, h
