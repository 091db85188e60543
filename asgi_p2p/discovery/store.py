"""Persistence of a :class:`~asgi_p2p.discovery.records.Directory` in SQLite (stdlib ``sqlite3``).

A relay's directory keeps its records across restarts when given a
:class:`SqliteRecordStore`: every accepted publish writes the signed record
(and what the directory remembers about it: when it was first and last
published, whether it counts as live, the publisher's address unit) and every
removal deletes it, write-through.  :meth:`Directory.load
<asgi_p2p.discovery.records.Directory.load>` reads the rows back at start-up and
checks each one as a publish would: the signature (a row edited in the file is
refused), the expiry, the row's node id against the record's, the bounds
(capacity, records per address, names).  Refused rows are deleted.

Each write is one small statement in its own transaction on a WAL-mode database
with ``synchronous=NORMAL`` (no fsync per commit): tens of microseconds, so it
runs inline on the event loop.  A failing write (disk full, file removed) is
logged and counted in :attr:`SqliteRecordStore.write_errors`; the directory
keeps serving from memory.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidConfiguration

__all__ = ["SCHEMA_VERSION", "SqliteRecordStore", "StoredRecord"]

log = logging.getLogger("asgi_p2p.discovery")

#: ``PRAGMA user_version`` of the database this module writes.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    node_id BLOB PRIMARY KEY,
    data    BLOB NOT NULL,
    first   REAL NOT NULL,
    last    REAL NOT NULL,
    live    INTEGER NOT NULL,
    source  TEXT
)
"""


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One row: the signed record bytes and what the directory remembers about it."""

    node_id: bytes
    data: bytes
    first: float
    last: float
    live: bool
    source: str | None


class SqliteRecordStore:
    """The records of one directory in an SQLite file (created, with its directory, if missing).

    Raises :class:`~asgi_p2p.errors.InvalidConfiguration` if ``path`` cannot be
    opened or is not a database of this format.  ``":memory:"`` keeps nothing
    across restarts (for tests).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        #: writes that failed (the record stays in memory only)
        self.write_errors = 0
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise InvalidConfiguration(f"cannot open the directory database {self.path}: {exc}") from None
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise InvalidConfiguration(
                    f"directory database {self.path} has schema version {version}; "
                    f"this version of asgi-p2p reads version {SCHEMA_VERSION}"
                )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            self._db.close()
            raise InvalidConfiguration(
                f"directory database {self.path} is not usable ({exc}); move it away or pass another path"
            ) from None

    def rows(self, limit: int) -> Iterator[StoredRecord]:
        """At most ``limit`` rows, the most recently published first (unchecked: the directory checks them)."""
        try:
            cursor = self._db.execute(
                "SELECT node_id, data, first, last, live, source FROM records ORDER BY last DESC LIMIT ?", (limit,)
            )
            for node_id, data, first, last, live, source in cursor:
                if not (
                    isinstance(node_id, bytes)
                    and isinstance(data, bytes)
                    and isinstance(first, (int, float))
                    and isinstance(last, (int, float))
                ):
                    # a row edited by hand: an empty record, which the directory refuses (and deletes)
                    node_id, data, first, last = (node_id if isinstance(node_id, bytes) else b""), b"", 0.0, 0.0
                yield StoredRecord(
                    node_id,
                    data,
                    float(first),
                    float(last),
                    bool(live),
                    source if isinstance(source, str) else None,
                )
        except sqlite3.Error as exc:
            raise InvalidConfiguration(f"directory database {self.path} cannot be read: {exc}") from None

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM records").fetchone()[0])

    def put(self, row: StoredRecord) -> None:
        """Insert or replace the row of ``row.node_id``."""
        self._write(
            "INSERT OR REPLACE INTO records (node_id, data, first, last, live, source) VALUES (?, ?, ?, ?, ?, ?)",
            (row.node_id, row.data, row.first, row.last, int(row.live), row.source),
        )

    def delete(self, node_id: bytes) -> None:
        """Delete the row of ``node_id`` (no error if there is none)."""
        self._write("DELETE FROM records WHERE node_id = ?", (node_id,))

    def delete_except(self, keep: list[bytes]) -> None:
        """Delete every row whose node id is not in ``keep`` (after loading)."""
        try:
            self._db.execute("BEGIN")
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS keep (node_id BLOB PRIMARY KEY)")
            self._db.execute("DELETE FROM keep")
            self._db.executemany("INSERT OR IGNORE INTO keep VALUES (?)", [(k,) for k in keep])
            self._db.execute("DELETE FROM records WHERE node_id NOT IN (SELECT node_id FROM keep)")
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._failed(exc)
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        try:
            self._db.execute(sql, params)
        except sqlite3.Error as exc:
            self._failed(exc)

    def _failed(self, exc: sqlite3.Error) -> None:
        self.write_errors += 1
        log.warning("directory database %s: write failed (the record is kept in memory only): %s", self.path, exc)

    def close(self) -> None:
        self._db.close()

    def __repr__(self) -> str:
        return f"<SqliteRecordStore {self.path}>"
