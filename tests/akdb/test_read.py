"""Reading aktualizr-lite's database: roots, rollback floors, installed targets; never creating."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.akdb.conftest import build_db, meta_doc, store_current, store_online
from usbupdater import aklite_db
from usbupdater.aklite_db import Absent, AkliteDbError, ReadOnlyDb


def test_missing_database_is_absent_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "sota" / "sql.db"
    state = aklite_db.read_state(path)
    assert not state.available and "does not exist" in state.reason
    assert isinstance(aklite_db.open_readonly(path), Absent)
    assert not path.exists() and not path.parent.exists()


def test_reads_roots_floors_and_current(db: Path, build: str) -> None:
    state = aklite_db.read_state(db)
    assert state.available, state.reason
    assert state.schema_version == (25 if build.startswith("v25") else 26)
    assert [r.version for r in state.image_roots] == [1, 2]
    assert state.latest_image_root is not None
    assert state.latest_image_root.raw == meta_doc("root", 2)  # exact bytes, for verification
    # non-root rows carry version -1: the version comes from the document
    assert dict(state.floors) == {"root": 2, "timestamp": 5, "snapshot": 5, "targets": 5}
    assert state.image_top["targets"].raw == meta_doc("targets", 5)
    assert state.director_root is None
    assert state.current is not None
    assert (state.current.name, state.current.sha256) == ("intel-corei7-64-lmp-10", "a" * 64)
    assert state.current.custom == {"version": "10"}
    assert state.current.hashes == {"sha256": "a" * 64}
    assert state.pending is None


def test_director_root_is_kept_apart(db: Path) -> None:
    store_online(db, (1, 7), None, repo=1)
    state = aklite_db.read_state(db)
    assert state.director_root is not None and state.director_root.version == 7
    assert [r.version for r in state.image_roots] == [1, 2]


def test_root_left_at_version_minus_one_by_a_migration(tmp_path: Path) -> None:
    path = build_db(tmp_path / "sql.db", "v25-migrated")
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO meta VALUES (?, 0, 0, -1)", (meta_doc("root", 4),))
    conn.commit()
    conn.close()
    state = aklite_db.read_state(path)
    assert [r.version for r in state.image_roots] == [4]
    assert state.current is None and state.image_top == {}


def test_without_primary_ecu_reads_the_empty_serial(tmp_path: Path) -> None:
    """libaktualizr's lazy init: no primary in `ecus`, rows under serial ''."""
    path = build_db(tmp_path / "sql.db", "v25-schema", primary=False)
    store_current(path, "t-1", "b" * 64, {})
    conn = sqlite3.connect(path)
    conn.execute("UPDATE installed_versions SET ecu_serial = ''")
    conn.commit()
    conn.close()
    state = aklite_db.read_state(path)
    assert state.current is not None and state.current.name == "t-1"


def _set_version(path: Path, version: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("UPDATE version SET version = ?", (version,))
    conn.commit()
    conn.close()


@pytest.mark.parametrize("version", [24, 27, 0])
def test_unknown_schema_version_is_absent(tmp_path: Path, version: int) -> None:
    path = build_db(tmp_path / "sql.db", "v25-schema")
    store_online(path, (1, 2, 3), 5)
    _set_version(path, version)
    state = aklite_db.read_state(path)
    assert not state.available
    assert f"schema version {version} is not one usbupdater knows" in state.reason
    assert state.image_roots == () and state.floors == {}


def test_not_an_aktualizr_database_is_absent(tmp_path: Path) -> None:
    path = tmp_path / "sql.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE other(x)")
    conn.commit()
    conn.close()
    assert "no `version` table" in aklite_db.read_state(path).reason


def test_supported_version_with_other_columns_is_absent(tmp_path: Path) -> None:
    path = tmp_path / "sql.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE version(version INTEGER); INSERT INTO version VALUES (25);"
        "CREATE TABLE ecus(serial TEXT, is_primary INTEGER);"
        "CREATE TABLE meta(meta BLOB, repo INTEGER, meta_type INTEGER, version INTEGER);"
        "CREATE TABLE installed_versions(id INTEGER PRIMARY KEY, name TEXT);"
    )
    conn.close()
    reason = aklite_db.read_state(path).reason
    assert "`installed_versions` lacks" in reason and "sha256" in reason


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "sql.db"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(AkliteDbError, match="cannot read its schema"):
        aklite_db.read_state(path)


def test_open_readonly_refuses_writes(db: Path) -> None:
    opened = aklite_db.open_readonly(db)
    assert isinstance(opened, ReadOnlyDb)
    with opened, pytest.raises(sqlite3.OperationalError, match="readonly"):
        opened._conn.execute("DELETE FROM meta")


def _hold_lock(path: Path, kind: str, ready: threading.Event, release: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"BEGIN {kind}")
    conn.execute("UPDATE installed_versions SET length = 7")
    ready.set()
    release.wait(10)
    conn.execute("ROLLBACK")
    conn.close()


def test_exclusive_lock_bounded_wait_then_clear_error(db: Path) -> None:
    ready, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(db, "EXCLUSIVE", ready, release))
    holder.start()
    try:
        assert ready.wait(5)
        t0 = time.monotonic()
        with pytest.raises(AkliteDbError, match=r"locked by another process \(waited 0.3 s"):
            aklite_db.read_state(db, busy_timeout=0.3)
        elapsed = time.monotonic() - t0
        assert 0.25 <= elapsed < 3
    finally:
        release.set()
        holder.join()
    assert aklite_db.read_state(db).available  # usable again once the writer is gone


def test_reader_not_blocked_by_a_writer_in_progress(db: Path) -> None:
    """A RESERVED lock (aktualizr-lite mid-transaction) leaves the committed state readable."""
    ready, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(db, "IMMEDIATE", ready, release))
    holder.start()
    try:
        assert ready.wait(5)
        state = aklite_db.read_state(db, busy_timeout=0.3)
        assert state.current is not None and state.current.length == 0
    finally:
        release.set()
        holder.join()
