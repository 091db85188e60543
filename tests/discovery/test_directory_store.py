"""A Directory persisted in SQLite: records survive a restart, checked again when loaded."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from asgi_p2p.discovery.records import Directory, DirectoryFull, NodeRecord, SignedNodeRecord
from asgi_p2p.discovery.store import SqliteRecordStore
from asgi_p2p.errors import InvalidConfiguration
from asgi_p2p.identity import SecretKey

NOW = 1_700_000_000.0
KEYS = [SecretKey.from_seed(f"store-{i}") for i in range(8)]


def record(key: SecretKey, seq: int = 1, ttl: float = 600.0, name: str | None = None) -> SignedNodeRecord:
    return NodeRecord(key.node_id, seq, NOW + ttl, "p2p-relay://x@192.0.2.9:1", (("192.0.2.1", 4433),), name).sign(key)


def reopen(path: Path, now: float = NOW + 1, **kwargs: int) -> tuple[Directory, list[str]]:
    d = Directory(store=SqliteRecordStore(path), **kwargs)  # type: ignore[arg-type]
    _, refused = d.load(now)
    return d, refused


def test_records_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "dir.sqlite3"
    d = Directory(store=SqliteRecordStore(path))
    d.publish(record(KEYS[0], name="alice"), NOW, source="192.0.2.1")
    d.publish(record(KEYS[1]), NOW, source="192.0.2.1")
    d.publish(record(KEYS[1], seq=2), NOW + 70, source="192.0.2.1")  # refreshed after live_after: live
    assert d.store is not None
    d.store.close()

    d2, refused = reopen(path, NOW + 80)
    assert refused == []
    assert len(d2) == 2
    found = d2.resolve_name("alice", NOW + 80)
    assert found is not None and found.record.node_id == KEYS[0].node_id
    again = d2.resolve(KEYS[1].node_id, NOW + 80)
    assert again is not None and again.record.seq == 2
    assert d2.is_live(KEYS[1].node_id) and not d2.is_live(KEYS[0].node_id)
    assert d2.count_from("192.0.2.1") == 2
    # the reloaded directory still enforces sequence numbers and names
    with pytest.raises(Exception, match="seq 2 is already published"):
        d2.publish(record(KEYS[1], seq=2, ttl=500), NOW + 81)
    with pytest.raises(Exception, match="is held by node"):
        d2.publish(record(KEYS[2], name="alice"), NOW + 81)


def test_removed_and_expired_records_are_gone_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "dir.sqlite3"
    d = Directory(store=SqliteRecordStore(path))
    d.publish(record(KEYS[0], ttl=100), NOW, source="192.0.2.1")
    d.publish(record(KEYS[1], ttl=1000), NOW, source="192.0.2.1")
    d.publish(record(KEYS[2], ttl=1000), NOW, source="192.0.2.1")
    assert d.remove(KEYS[2].node_id)  # an unpublish deletes the row
    d2, refused = reopen(path, NOW + 200)  # KEYS[0]'s record expired while the relay was down
    assert [s.record.node_id for s in d2.records(NOW + 200)] == [KEYS[1].node_id]
    assert len(refused) == 1 and "expired" in refused[0]
    rows = sqlite3.connect(path).execute("SELECT count(*) FROM records").fetchone()[0]
    assert rows == 1  # the expired row was deleted at load


def test_a_tampered_row_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "dir.sqlite3"
    d = Directory(store=SqliteRecordStore(path))
    good, bad = record(KEYS[0]), record(KEYS[1])
    d.publish(good, NOW)
    d.publish(bad, NOW)
    other = record(KEYS[3])
    db = sqlite3.connect(path)
    # someone with the file changes an address (the signature no longer matches) ...
    forged = bytearray(bad.data)
    forged[forged.index(bytes([192, 0, 2, 1]))] = 10
    db.execute("UPDATE records SET data = ? WHERE node_id = ?", (bytes(forged), KEYS[1].node_id.to_bytes()))
    # ... files a valid record under another node's key, and adds garbage
    db.execute("INSERT INTO records VALUES (?, ?, ?, ?, 0, NULL)", (KEYS[4].node_id.to_bytes(), other.data, NOW, NOW))
    db.execute("INSERT INTO records VALUES (?, ?, ?, ?, 0, NULL)", (b"x" * 32, b"P2PR\x01junk", NOW, NOW))
    db.execute("INSERT INTO records VALUES (?, ?, 'soon', ?, 0, NULL)", (KEYS[5].node_id.to_bytes(), other.data, NOW))
    db.commit()
    db.close()
    d2, refused = reopen(path)
    assert [s.data for s in d2.records(NOW + 1)] == [good.data]
    assert any("bad signature" in r for r in refused)
    assert any(f"holds the record of {KEYS[3].node_id}" in r for r in refused)
    assert len(refused) == 4
    assert sqlite3.connect(path).execute("SELECT count(*) FROM records").fetchone()[0] == 1


def test_bounds_hold_when_loading(tmp_path: Path) -> None:
    path = tmp_path / "dir.sqlite3"
    d = Directory(store=SqliteRecordStore(path))
    for i, key in enumerate(KEYS[:6]):
        d.publish(record(key), NOW + i, source="192.0.2.1" if i < 4 else "198.51.100.7")
    # a smaller directory keeps the most recently published records, within the per-address bound
    d2, refused = reopen(path, NOW + 10, capacity=5, max_per_address=2)
    kept = {s.record.node_id for s in d2.records(NOW + 10)}
    assert kept == {k.node_id for k in KEYS[2:6]}  # KEYS[0]: beyond capacity, KEYS[1]: its address is full
    assert d2.count_from("192.0.2.1") == 2 and d2.count_from("198.51.100.7") == 2
    assert len(refused) == 2
    assert any("1 records beyond this directory's capacity of 5" in r for r in refused)
    assert any("address 192.0.2.1 already holds 2 records" in r for r in refused)
    # and then refuses what a full directory refuses (every record is fresh, none stale)
    with pytest.raises(DirectoryFull, match=r"address 192\.0\.2\.1 holds its maximum"):
        d2.publish(record(KEYS[6]), NOW + 11, source="192.0.2.1")
    d2.publish(record(KEYS[6]), NOW + 11, source="203.0.113.5")
    with pytest.raises(DirectoryFull, match="maximum of 5 records"):
        d2.publish(record(KEYS[7]), NOW + 11, source="203.0.113.5")
    assert sqlite3.connect(path).execute("SELECT count(*) FROM records").fetchone()[0] == 5


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "dir.sqlite3"
    path.write_bytes(b"not a database at all, " * 100)
    with pytest.raises(InvalidConfiguration, match=r"dir\.sqlite3 is not usable"):
        SqliteRecordStore(path)
