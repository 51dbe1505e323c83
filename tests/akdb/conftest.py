"""Real `sql.db` files built from aktualizr's DDL, and libaktualizr's own reading of them.

The reading side (`aklite_current`, `installation_log`, ...) is written independently of
`usbupdater.aklite_db`, from the SQL that libaktualizr's `SQLStorage` runs, so a test compares
our writes with what aktualizr-lite would see.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Optional

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
PRIMARY_SERIAL = "3d1c2b0e-primary"
HWID = "intel-corei7-64"

# How a device's database came to be: provisioned at that schema, or migrated up to it.
BUILDS = ("v25-schema", "v25-migrated", "v26-schema", "v26-migrated")


def _script(conn: sqlite3.Connection, path: Path) -> None:
    conn.executescript(path.read_text())


def build_db(path: Path, build: str, *, primary: bool = True) -> Path:
    """Create `path` as aktualizr would: from schema.sql, or from migration 00 upwards."""
    conn = sqlite3.connect(path)
    try:
        if build == "v25-schema":
            _script(conn, FIXTURES / "v25" / "schema.sql")
        elif build == "v26-schema":
            _script(conn, FIXTURES / "v26" / "schema.sql")
        elif build in ("v25-migrated", "v26-migrated"):
            for m in sorted((FIXTURES / "v25" / "migration").glob("migrate.*.sql")):
                _script(conn, m)
            if build == "v26-migrated":
                _script(conn, FIXTURES / "v26" / "migrate.26.sql")
        else:
            raise ValueError(build)
        if primary:  # aktualizr-lite registers the primary ECU at provisioning
            conn.execute(
                "INSERT INTO ecus(id, serial, hardware_id, is_primary) VALUES (0, ?, ?, 1)",
                (PRIMARY_SERIAL, HWID),
            )
        conn.commit()
    finally:
        conn.close()
    return path


def meta_doc(role: str, version: int, **signed: Any) -> bytes:
    """A metadata document shaped like Foundries' (aklite_db never verifies signatures)."""
    body = {"_type": role.capitalize(), "version": version, "expires": "2030-01-01T00:00:00Z"}
    body.update(signed)
    return json.dumps({"signatures": [{"keyid": "k", "sig": "s"}], "signed": body}).encode()


def store_online(
    path: Path, roots: tuple[int, ...], top_version: Optional[int], repo: int = 0
) -> None:
    """What libaktualizr's storeRoot / storeNonRoot leave after an online update."""
    conn = sqlite3.connect(path)
    try:
        for v in roots:
            conn.execute(
                "INSERT INTO meta VALUES (?, ?, 0, ?)",
                (sqlite3.Binary(meta_doc("root", v)), repo, v),
            )
        if top_version is not None:
            for role, role_id in (("timestamp", 3), ("snapshot", 1), ("targets", 2)):
                conn.execute(
                    "INSERT INTO meta VALUES (?, ?, ?, -1)",
                    (sqlite3.Binary(meta_doc(role, top_version)), repo, role_id),
                )
        conn.commit()
    finally:
        conn.close()


def store_current(path: Path, name: str, sha256: str, custom: dict[str, Any]) -> None:
    """An installed_versions row as aktualizr-lite writes it for a confirmed target."""
    conn = sqlite3.connect(path)
    try:
        conn.execute(
            "INSERT INTO installed_versions(ecu_serial, sha256, name, hashes, length, custom_meta, "
            "correlation_id, is_current, is_pending, was_installed) VALUES (?,?,?,?,0,?,'',1,0,1)",
            (PRIMARY_SERIAL, sha256, name, f"sha256:{sha256}", json.dumps(custom)),
        )
        conn.commit()
    finally:
        conn.close()


# --- libaktualizr's reading (SQLStorage::loadInstalledVersions / loadInstallationLog) ---------


def _serial(conn: sqlite3.Connection) -> str:
    row = conn.execute("SELECT serial FROM ecus WHERE is_primary = 1;").fetchone()
    return row[0] if row else ""


def _flagged(path: Path, flag: str) -> Optional[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT sha256, name, hashes, length, correlation_id, custom_meta FROM "
            f"installed_versions WHERE ecu_serial = ? AND {flag} = 1 LIMIT 1;",
            (_serial(conn),),
        ).fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    return {
        "sha256": row[0],
        "name": row[1],
        "hashes": row[2],
        "length": row[3],
        "custom": json.loads(row[5]) if row[5] else None,
    }


def aklite_current(path: Path) -> Optional[dict[str, Any]]:
    return _flagged(path, "is_current")


def aklite_pending(path: Path) -> Optional[dict[str, Any]]:
    return _flagged(path, "is_pending")


def installation_log(path: Path, only_installed: bool) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        extra = " AND was_installed = 1" if only_installed else ""
        rows = conn.execute(
            "SELECT id, sha256, name FROM installed_versions WHERE ecu_serial = ?"
            f"{extra} ORDER BY id;",
            (_serial(conn),),
        ).fetchall()
    finally:
        conn.close()
    return [r[2] for r in rows]


def rollback_target(path: Path) -> Optional[str]:
    """LiteClient::getRollbackTarget: the last successfully installed target."""
    log = installation_log(path, True)
    return log[-1] if log else None


def known_but_not_installed(path: Path) -> list[str]:
    """helpers.cc: targets aktualizr-lite treats as failing and will not pick again."""
    installed = set(installation_log(path, True))
    return [n for n in installation_log(path, False) if n not in installed]


def rows(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT name, is_current, is_pending, was_installed FROM installed_versions ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def meta_rows(path: Path, repo: int = 0) -> list[tuple[int, int, int]]:
    """(meta_type, version column, signed.version) of every meta row of `repo`."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        got = conn.execute(
            "SELECT meta_type, version, meta FROM meta WHERE repo = ? ORDER BY meta_type, version",
            (repo,),
        ).fetchall()
    finally:
        conn.close()
    return [(t, v, json.loads(m)["signed"]["version"]) for t, v, m in got]


def load_latest_root(path: Path, repo: int = 0) -> Optional[bytes]:
    """SQLStorage::loadLatestRoot."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT meta FROM meta WHERE (repo=? AND meta_type=?) ORDER BY version DESC LIMIT 1;",
            (repo, 0),
        ).fetchone()
    finally:
        conn.close()
    return bytes(row[0]) if row else None


def load_non_root(path: Path, role_id: int, repo: int = 0) -> Optional[bytes]:
    """SQLStorage::loadNonRoot."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT meta FROM meta WHERE (repo=? AND meta_type=?) ORDER BY version DESC LIMIT 1;",
            (repo, role_id),
        ).fetchone()
    finally:
        conn.close()
    return bytes(row[0]) if row else None


@pytest.fixture(params=BUILDS)
def build(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db(tmp_path: Path, build: str) -> Path:
    """A provisioned device that went online once: roots 1..2, top-level v5, target 10 current."""
    path = build_db(tmp_path / "sql.db", build)
    store_online(path, (1, 2), 5)
    store_current(path, "intel-corei7-64-lmp-10", "a" * 64, {"version": "10"})
    return path
