"""Recording offline installs where aktualizr-lite looks, atomically, never in an unknown schema."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.akdb.conftest import (
    aklite_current,
    aklite_pending,
    build_db,
    known_but_not_installed,
    load_latest_root,
    load_non_root,
    meta_doc,
    meta_rows,
    rollback_target,
    rows,
    store_online,
)
from usbupdater import aklite_db, aklite_write
from usbupdater.aklite_db import AkliteDbError
from usbupdater.aklite_write import AkTarget, Mode, TufUpdate

OLD = AkTarget("intel-corei7-64-lmp-10", "a" * 64, custom={"version": "10"})
NEW = AkTarget.from_signed(
    "intel-corei7-64-lmp-11",
    {
        "hashes": {"sha256": "c" * 64},
        "length": 0,
        "custom": {"version": "11", "hardwareIds": ["intel-corei7-64"], "tags": ["main"]},
    },
)


def _dump(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def test_install_pending_then_run_current(db: Path) -> None:
    rec = aklite_write.record_installed(db, NEW, Mode.PENDING)
    assert rec.written
    pending = aklite_pending(db)
    assert pending is not None and pending["name"] == NEW.name
    current = aklite_current(db)
    assert current is not None and current["name"] == OLD.name  # still running the old one

    aklite_write.record_installed(db, NEW, Mode.CURRENT)
    current = aklite_current(db)
    assert current is not None
    assert (current["name"], current["sha256"]) == (NEW.name, "c" * 64)
    assert current["hashes"] == f"sha256:{'c' * 64}" and current["length"] == 0
    assert current["custom"] == {
        "hardwareIds": ["intel-corei7-64"],
        "tags": ["main"],
        "version": "11",
    }
    assert aklite_pending(db) is None
    # the pending row itself became current (no duplicate), the old one is no longer current
    assert rows(db) == [(OLD.name, 0, 0, 1), (NEW.name, 1, 0, 1)]
    assert rollback_target(db) == NEW.name and known_but_not_installed(db) == []
    state = aklite_db.read_state(db)
    assert state.current is not None and state.current.name == NEW.name


def test_current_without_pending_adds_a_row(db: Path) -> None:
    """An apps-only update confirmed at once: aktualizr-lite's kCurrent inserts the row."""
    aklite_write.record_installed(db, NEW, Mode.CURRENT)
    assert rows(db) == [(OLD.name, 0, 0, 1), (NEW.name, 1, 0, 1)]


def test_boot_rollback_names_the_old_target_and_marks_the_new_failing(db: Path) -> None:
    aklite_write.record_installed(db, NEW, Mode.PENDING)
    aklite_write.record_installed(db, OLD, Mode.ROLLBACK, failed=NEW)
    current = aklite_current(db)
    assert current is not None
    assert (current["name"], current["sha256"]) == (OLD.name, "a" * 64)
    assert aklite_pending(db) is None
    # aktualizr-lite will not try NEW again online, and rolls back to OLD if needed
    assert known_but_not_installed(db) == [NEW.name]
    assert rollback_target(db) == OLD.name
    assert rows(db) == [(OLD.name, 0, 0, 1), (NEW.name, 0, 0, 0), (OLD.name, 1, 0, 1)]


def test_apps_failure_redeploy_keeps_old_pending_until_reboot(db: Path) -> None:
    aklite_write.record_installed(db, NEW, Mode.PENDING)
    aklite_write.record_installed(db, NEW, Mode.CURRENT)  # booted fine...
    # ...then a later run finds its apps broken: redeploy OLD, reboot, run
    aklite_write.record_installed(db, OLD, Mode.PENDING, failed=NEW)
    pending = aklite_pending(db)
    assert pending is not None and pending["name"] == OLD.name
    aklite_write.record_installed(db, OLD, Mode.CURRENT)
    current = aklite_current(db)
    assert current is not None and current["name"] == OLD.name
    assert aklite_pending(db) is None


def test_failed_without_rollback_target(db: Path) -> None:
    aklite_write.record_installed(db, NEW, Mode.PENDING)
    aklite_write.record_installed(db, NEW, Mode.FAILED)
    assert aklite_pending(db) is None
    current = aklite_current(db)
    assert current is not None and current["name"] == OLD.name
    assert known_but_not_installed(db) == [NEW.name]


@pytest.mark.parametrize(
    ("mode", "target", "failed"),
    [
        (Mode.PENDING, NEW, None),
        (Mode.CURRENT, NEW, None),
        (Mode.ROLLBACK, OLD, NEW),
        (Mode.PENDING, OLD, NEW),
        (Mode.FAILED, NEW, None),
    ],
)
def test_a_repeated_record_is_a_no_op(
    db: Path, mode: Mode, target: AkTarget, failed: AkTarget | None
) -> None:
    """A `run` killed after its database write and re-run records the same outcome again."""
    aklite_write.record_installed(db, NEW, Mode.PENDING)
    aklite_write.record_installed(db, target, mode, failed=failed)
    once = _dump(db)
    aklite_write.record_installed(db, target, mode, failed=failed)
    assert _dump(db) == once


def test_rollback_needs_the_failed_target(db: Path) -> None:
    with pytest.raises(ValueError, match="failed target"):
        aklite_write.record_installed(db, OLD, Mode.ROLLBACK)


def test_root_rotation_and_new_metadata_stored_like_sqlstorage(db: Path) -> None:
    meta = TufUpdate(
        roots=(meta_doc("root", 3), meta_doc("root", 2), meta_doc("root", 4)),
        timestamp=meta_doc("timestamp", 9),
        snapshot=meta_doc("snapshot", 9),
        targets=meta_doc("targets", 9),
    )
    rec = aklite_write.record_installed(db, NEW, Mode.CURRENT, metadata=meta)
    assert rec.roots_stored == (3, 4) and rec.top_stored
    assert load_latest_root(db) == meta_doc("root", 4)
    assert load_non_root(db, 2) == meta_doc("targets", 9)
    # roots under their version (root 2 untouched), non-root rows at -1 as storeNonRoot does
    assert meta_rows(db) == [
        (0, 1, 1),
        (0, 2, 2),
        (0, 3, 3),
        (0, 4, 4),
        (1, -1, 9),
        (2, -1, 9),
        (3, -1, 9),
    ]
    state = aklite_db.read_state(db)
    assert dict(state.floors) == {"root": 4, "timestamp": 9, "snapshot": 9, "targets": 9}


def test_new_root_without_top_level_clears_it_as_update_root_does(db: Path) -> None:
    aklite_write.record_installed(
        db, NEW, Mode.CURRENT, metadata=TufUpdate(roots=(meta_doc("root", 3),))
    )
    assert meta_rows(db) == [(0, 1, 1), (0, 2, 2), (0, 3, 3)]


def test_older_metadata_never_lowers_the_floors(db: Path) -> None:
    """A bundle older than what the device got online: the database's set is kept whole."""
    before = meta_rows(db)
    meta = TufUpdate(
        roots=(meta_doc("root", 1),),
        timestamp=meta_doc("timestamp", 6),
        snapshot=meta_doc("snapshot", 6),
        targets=meta_doc("targets", 4),  # one role older: nothing of the set is stored
    )
    rec = aklite_write.record_installed(db, NEW, Mode.CURRENT, metadata=meta)
    assert rec.written and rec.roots_stored == () and not rec.top_stored
    assert meta_rows(db) == before
    current = aklite_current(db)
    assert current is not None and current["name"] == NEW.name  # the install is still recorded


def _file_state(path: Path) -> tuple[str, list[str]]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), sorted(
        p.name for p in path.parent.iterdir()
    )


@pytest.mark.parametrize("version", [24, 27])
def test_unknown_schema_is_never_written(tmp_path: Path, version: int) -> None:
    path = build_db(tmp_path / "sql.db", "v25-migrated")
    store_online(path, (1, 2), 5)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE version SET version = ?", (version,))
    conn.commit()
    conn.close()
    before = _file_state(path)
    rec = aklite_write.record_installed(
        path, NEW, Mode.CURRENT, metadata=TufUpdate(roots=(meta_doc("root", 3),))
    )
    assert not rec.written and f"schema version {version}" in rec.reason
    aklite_db.read_state(path)
    assert _file_state(path) == before


def test_missing_database_is_never_created(tmp_path: Path) -> None:
    path = tmp_path / "sql.db"
    rec = aklite_write.record_installed(path, NEW, Mode.CURRENT)
    assert not rec.written and "does not exist" in rec.reason
    assert list(tmp_path.iterdir()) == []


def test_locked_database_bounded_wait_then_error_unchanged(db: Path) -> None:
    before = _dump(db)
    ready, release = threading.Event(), threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")
        ready.set()
        release.wait(10)
        conn.execute("ROLLBACK")
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert ready.wait(5)
        t0 = time.monotonic()
        with pytest.raises(AkliteDbError, match="locked by another process"):
            aklite_write.record_installed(db, NEW, Mode.CURRENT, busy_timeout=0.3)
        assert 0.25 <= time.monotonic() - t0 < 3
    finally:
        release.set()
        holder.join()
    assert _dump(db) == before


def test_exception_midway_leaves_the_database_unchanged(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _dump(db)

    def boom(conn: sqlite3.Connection, meta: TufUpdate) -> tuple[tuple[int, ...], bool]:
        # installed_versions was already updated in this transaction
        assert conn.execute("SELECT count(*) FROM installed_versions").fetchone()[0] == 2
        raise OSError("simulated failure")

    monkeypatch.setattr(aklite_write, "_store_metadata", boom)
    with pytest.raises(OSError, match="simulated"):
        aklite_write.record_installed(
            db, NEW, Mode.ROLLBACK, failed=OLD, metadata=TufUpdate(roots=(meta_doc("root", 3),))
        )
    assert _dump(db) == before
    assert not (db.parent / "sql.db-journal").exists()


def test_process_killed_midway_leaves_the_committed_state(db: Path) -> None:
    """SIGKILL-like death inside the transaction: the next reader sees the old state."""
    before = _dump(db)
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from usbupdater import aklite_db, aklite_write
        from usbupdater.aklite_write import AkTarget, Mode, TufUpdate

        def die(conn, meta):
            conn.execute("PRAGMA cache_spill = 1")
            os._exit(9)

        aklite_write._store_metadata = die
        aklite_write.record_installed(
            Path({str(db)!r}), AkTarget("t-12", "d" * 64), Mode.CURRENT,
            metadata=TufUpdate(roots=()),
        )
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert proc.returncode == 9
    state = aklite_db.read_state(db)  # recovers a hot journal if one was left
    assert state.current is not None and state.current.name == OLD.name
    assert _dump(db) == before


def test_reader_recovers_the_hot_journal_of_a_killed_writer(db: Path) -> None:
    """aktualizr-lite killed mid-write leaves a hot journal; a read-only open alone fails on it."""
    before = _dump(db)
    script = textwrap.dedent(
        f"""
        import os, sqlite3
        conn = sqlite3.connect({str(db)!r}, isolation_level=None)
        conn.execute("PRAGMA cache_size = 1")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE installed_versions SET is_current = 0")
        for i in range(300):
            conn.execute("INSERT INTO report_events(json_string) VALUES (?)", ("x" * 2000,))
        os._exit(9)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert proc.returncode == 9
    journal = db.parent / "sql.db-journal"
    assert journal.stat().st_size > 0  # the case under test: a hot journal is there
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute("SELECT * FROM version").fetchall()
    state = aklite_db.read_state(db)
    assert state.current is not None and state.current.name == OLD.name
    assert not journal.exists()
    assert _dump(db) == before
