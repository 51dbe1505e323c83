"""The fixtures are aktualizr's DDL: migrations and the full schema build the same tables."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.akdb.conftest import build_db


def _tables(path: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(path)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: conn.execute(f"PRAGMA table_info({n})").fetchall() for n in sorted(names)}
    finally:
        conn.close()


def _version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT version FROM version").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("major", ["v25", "v26"])
def test_migrated_equals_fresh_schema(tmp_path: Path, major: str) -> None:
    fresh = build_db(tmp_path / "fresh.db", f"{major}-schema")
    migrated = build_db(tmp_path / "migrated.db", f"{major}-migrated")
    assert _tables(fresh) == _tables(migrated)
    assert _version(fresh) == _version(migrated) == int(major[1:])
    assert "installed_versions" in _tables(fresh)
