"""Proactive stateless resets: what a node remembers of its live connections, on disk.

A node that crashes and restarts (same key, same port) has forgotten its
connections, but its peers have not: each finds out only when it next sends on
one (the restarted node answers with a stateless reset, see :mod:`.reset`), a
round trip lost on the peer's next request.  A node given a *peer state file*
writes to it, shortly after its connections change, the peer's UDP address and
the connection ids this node issued (the ones the peer sends to) of each live
connection on a direct path.  When it starts again it sends every remembered
peer, at once, a stateless reset for each of those ids: the tokens derive from
the node key (:class:`.reset.ResetTokens`), so the peer recognises the reset
exactly as one answering its own packet, and closes the connection before its
next request needs it.

The file is the node's own: mode 0600, replaced atomically (a new file, synced to
disk, renamed over it: a crash or power loss never leaves half a file), at most
``max_connections`` entries of a few ids each and never more than
:data:`MAX_REMEMBERED` (the file then stays under :data:`MAX_PEER_STATE_SIZE`, the
most a node reads back).  It holds the connections live when it was last written,
and when (rewritten every half idle timeout while it holds any), and the node's
port: a file older than the idle timeout is not used (the peers have dropped those
connections already), nor one of another port (peers take a reset only from the
address their connection uses).  A file that is damaged, another node's, too large,
a symbolic link, another user's or readable by others is ignored with a warning.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import os
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..identity import NodeId
from ..net.base import Address

__all__ = [
    "MAX_CIDS_PER_PEER",
    "MAX_PEER_STATE_SIZE",
    "MAX_REMEMBERED",
    "RememberedConnection",
    "dump_peer_state",
    "load_peer_state",
    "read_peer_state",
    "reset_order",
    "write_private",
]

log = logging.getLogger("asgi_p2p.endpoint")

_VERSION = 1
#: connection ids remembered per connection: the one the peer sent to last, then others
#: it may switch to (each costs one reset datagram at startup)
MAX_CIDS_PER_PEER = 4
#: the largest peer state file read (1,024 connections of 4 ids take about 150 KB)
MAX_PEER_STATE_SIZE = 1 << 20
_CID_MAX = 20  # RFC 9000: a connection id is at most 20 bytes
#: the most connections the file holds, whatever ``max_connections``: its worst-case entry
#: (an IPv6 address with a 15-character scope of escaped non-ASCII bytes, a 5-digit port,
#: 4 ids of 20 bytes in hex, the JSON around them) takes 337 bytes, so 3,000 of them and
#: the header fit in :data:`MAX_PEER_STATE_SIZE` (typical entries take 115-150 bytes)
MAX_REMEMBERED = 3_000


@dataclass(frozen=True)
class RememberedConnection:
    """One connection of a previous life: where its peer is, and the ids it sends to."""

    address: Address
    cids: tuple[bytes, ...]


def dump_peer_state(node_id: NodeId, port: int, written_at: float, conns: Iterable[RememberedConnection]) -> bytes:
    """Serialize the connections of node ``node_id`` on UDP port ``port`` live at ``written_at``
    (Unix time), as JSON."""
    doc = {
        "version": _VERSION,
        "node": str(node_id),
        "port": port,
        "written_at": written_at,
        "connections": [{"addr": [c.address[0], c.address[1]], "cids": [x.hex() for x in c.cids]} for c in conns],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def load_peer_state(data: bytes, node_id: NodeId, limit: int) -> tuple[int, float, list[RememberedConnection]]:
    """The port, time and connections :func:`dump_peer_state` wrote for ``node_id``: its first
    ``limit`` connections (a node whose ``max_connections`` was lowered since the file was
    written resets the first ones), each of at most :data:`MAX_CIDS_PER_PEER` ids; raises
    ValueError for anything else."""
    if len(data) > MAX_PEER_STATE_SIZE:
        raise ValueError(f"larger than {MAX_PEER_STATE_SIZE} bytes")
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("version") != _VERSION:
            raise ValueError("not a peer state file of this version")
        if NodeId.parse(doc["node"]) != node_id:
            raise ValueError(f"it is node {doc['node']}'s, not {node_id}'s")
        port = doc["port"]
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"bad port {port!r}")
        written_at = float(doc["written_at"])
        if not math.isfinite(written_at):
            raise ValueError("its time is not a finite number")
        records = doc["connections"]
        if not isinstance(records, list):
            raise ValueError("its connections are not a list")
        out: list[RememberedConnection] = []
        for r in records[: max(0, limit)]:
            host, peer_port = r["addr"]
            if not isinstance(host, str):
                raise ValueError(f"bad address {host!r}")
            ipaddress.ip_address(host)  # an address, never a name to look up
            if not isinstance(peer_port, int) or not 0 < peer_port < 65536:
                raise ValueError(f"bad port {peer_port!r}")
            cids = tuple(bytes.fromhex(x) for x in r["cids"])
            if not 0 < len(cids) <= MAX_CIDS_PER_PEER or not all(0 < len(c) <= _CID_MAX for c in cids):
                raise ValueError(f"bad connection ids {r['cids']!r}")
            out.append(RememberedConnection((str(host), peer_port), cids))
        return port, written_at, out
    except ValueError:
        raise
    except (KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ValueError(f"malformed ({type(exc).__name__}: {exc})") from None


def read_peer_state(path: Path, node_id: NodeId, limit: int) -> tuple[int, float, list[RememberedConnection]] | None:
    """Read ``path`` (see :func:`load_peer_state`); None (after a warning) if it is missing,
    unreadable, a symbolic link, damaged, another node's, owned by another user, or accessible
    by group or others (a file planted in a shared directory would make the node send resets
    where its author chose)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("not using peer state file %s: %s", path, exc)
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            log.warning("not using peer state file %s: not a regular file", path)
            return None
        euid = os.geteuid() if hasattr(os, "geteuid") else st.st_uid  # (POSIX only)
        if st.st_uid != euid:
            log.warning("not using peer state file %s: owned by uid %d, not %d", path, st.st_uid, euid)
            return None
        if st.st_mode & 0o077:
            log.warning("not using peer state file %s: accessible by group or others (run `chmod 600 %s`)", path, path)
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_PEER_STATE_SIZE + 1)
    except OSError as exc:
        log.warning("not using peer state file %s: %s", path, exc)
        return None
    finally:
        os.close(fd)
    try:
        return load_peer_state(data, node_id, limit)
    except ValueError as exc:
        log.warning("not using peer state file %s: %s", path, exc)
        return None


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, mode 0600: a new temporary file beside it
    (created exclusively: never one someone else made), written and synced to disk, then
    renamed over it.  On failure the temporary file is removed and ``path`` is unchanged."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)  # the rename must not reach the disk before the data (a power loss)
        finally:
            os.close(fd)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


def reset_order(conns: Sequence[RememberedConnection]) -> list[tuple[Address, bytes]]:
    """The resets to send for ``conns``: every connection's first id (the one its peer sent
    to last) before any connection's second, and so on."""
    out: list[tuple[Address, bytes]] = []
    for i in range(MAX_CIDS_PER_PEER):
        out.extend((c.address, c.cids[i]) for c in conns if i < len(c.cids))
    return out
