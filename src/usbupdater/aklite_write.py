"""Writing aktualizr-lite's database: what aklite-offline records after install, run and
rollbacks. Reading, the schema versions and the design note are in `usbupdater.aklite_db`.

`record_installed` (one `BEGIN IMMEDIATE` transaction, `mode=rw` so the file is never
created, and only for a supported schema):
- `installed_versions` as `SQLStorage::saveInstalledVersion` does for aktualizr-lite's modes:
  PENDING (kPending: after `install` 100), CURRENT (kCurrent: after `run` confirmed), FAILED
  (kNone: the flags cleared, `was_installed` kept, so aktualizr-lite lists the target as "known
  but not installed" and never picks it again), ROLLBACK (FAILED for `failed`, then CURRENT for
  the target the device is back on); `failed=` with PENDING covers a rollback that needs a reboot;
- Image repo metadata as `storeRoot`/`storeNonRoot` and `updateRoot` do: each root newer than
  the stored newest is inserted under its version and then the repo's non-root rows are cleared
  (`clearNonRootMeta`); timestamp/snapshot/targets replace the role's rows, version -1. They are
  written only if none is older than what is stored (the database's floors never move back and
  the three stay one consistent set). Nothing is verified here: callers pass verified bytes.
The caller must hold the aklite lock (`usbupdater.lock.AkliteLock`); this module does not take
it (the core already holds it around `install`/`run`). A busy database is waited for
`busy_timeout` seconds, then `AkliteDbError`.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from usbupdater.aklite_db import (
    ANY_VERSION,
    DEFAULT_BUSY_TIMEOUT,
    IMAGE_REPO,
    LOAD_NON_ROOT,
    ROLE_ROOT,
    TOP_ROLES,
    Absent,
    InstalledVersion,
    as_bytes,
    check_schema,
    connect,
    db_error,
    load_flagged,
    primary_serial,
    signed_version,
)
from usbupdater.log import get_logger

log = get_logger("aklite-db")


@dataclass(frozen=True)
class AkTarget:
    """A target as `saveInstalledVersion` stores it (an OSTree target's length is 0)."""

    name: str
    sha256: str
    length: int = 0
    hashes: Mapping[str, str] = field(default_factory=dict)  # algorithm -> hex; sha256 added
    custom: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_signed(cls, name: str, entry: Mapping[str, Any]) -> AkTarget:
        """From a verified targets.json entry (`hashes`, `length`, `custom`)."""
        hashes = entry.get("hashes")
        hashes = hashes if isinstance(hashes, Mapping) else {}
        sha256 = hashes.get("sha256")
        if not isinstance(sha256, str) or not sha256:
            raise ValueError(f"target {name!r} has no sha256 hash")
        length = entry.get("length", 0)
        custom = entry.get("custom")
        return cls(
            name=name,
            sha256=sha256,
            length=length if isinstance(length, int) and not isinstance(length, bool) else 0,
            hashes={k: v for k, v in hashes.items() if isinstance(k, str) and isinstance(v, str)},
            custom=custom if isinstance(custom, Mapping) else {},
        )

    def encoded_hashes(self) -> str:
        """`Hash::encodeVector`: `type:hex` joined by `;`, sha256 always present."""
        hashes = {k.lower(): v.lower() for k, v in self.hashes.items()}
        hashes.setdefault("sha256", self.sha256.lower())
        order = sorted(hashes, key=lambda k: (k != "sha256", k))
        return ";".join(f"{k}:{hashes[k]}" for k in order if k in ("sha256", "sha512"))

    def custom_meta(self) -> str:
        """`Utils::jsonToCanonicalStr(custom)`: sorted keys, no spaces."""
        return json.dumps(dict(self.custom), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class TufUpdate:
    """Verified Image-repo metadata to store: new roots (any order) and the top-level set."""

    roots: Sequence[bytes] = ()
    timestamp: Optional[bytes] = None
    snapshot: Optional[bytes] = None
    targets: Optional[bytes] = None


class Mode(enum.Enum):
    PENDING = "pending"  # kPending: installed, waits for the reboot and `run`
    CURRENT = "current"  # kCurrent: `run` confirmed it
    FAILED = "failed"  # kNone: a failing target, aktualizr-lite will not pick it again
    ROLLBACK = "rollback"  # `failed` marked FAILED, the target back to CURRENT


@dataclass(frozen=True)
class Recorded:
    """What `record_installed` did: `written` False means the database was left untouched."""

    written: bool
    reason: str = ""
    roots_stored: tuple[int, ...] = ()
    top_stored: bool = False


# --------------------------------------------------------------------------- writing

_KIND = {Mode.PENDING: "pending", Mode.CURRENT: "current", Mode.FAILED: "none"}


def _save_installed_version(
    conn: sqlite3.Connection, serial: str, target: AkTarget, kind: str, correlation_id: str
) -> None:
    """`SQLStorage::saveInstalledVersion` for the primary ECU: update the last row or add one."""
    last = conn.execute(
        "SELECT id, sha256, name, was_installed FROM installed_versions WHERE ecu_serial = ? "
        "ORDER BY id DESC LIMIT 1;",
        (serial,),
    ).fetchone()
    old_id: Optional[int] = None
    old_was_installed = False
    if last is not None and last[1] == target.sha256 and last[2] == target.name:
        old_id, old_was_installed = int(last[0]), last[3] == 1
    if kind == "current":
        conn.execute(
            "UPDATE installed_versions SET is_current = 0, is_pending = 0 WHERE ecu_serial = ?",
            (serial,),
        )
    elif kind == "pending":
        conn.execute("UPDATE installed_versions SET is_pending = 0 WHERE ecu_serial = ?", (serial,))
    current, pending = int(kind == "current"), int(kind == "pending")
    if old_id is not None:
        conn.execute(
            "UPDATE installed_versions SET correlation_id = ?, is_current = ?, is_pending = ?, "
            "was_installed = ? WHERE id = ?;",
            (correlation_id, current, pending, int(current == 1 or old_was_installed), old_id),
        )
    else:
        conn.execute(
            "INSERT INTO installed_versions(ecu_serial, sha256, name, hashes, length, custom_meta, "
            "correlation_id, is_current, is_pending, was_installed) VALUES (?,?,?,?,?,?,?,?,?,?);",
            (
                serial,
                target.sha256,
                target.name,
                target.encoded_hashes(),
                target.length,
                target.custom_meta(),
                correlation_id,
                current,
                pending,
                current,
            ),
        )


def _store_metadata(conn: sqlite3.Connection, meta: TufUpdate) -> tuple[tuple[int, ...], bool]:
    """storeRoot/clearNonRootMeta/storeNonRoot for the Image repo; never moves a floor back."""
    row = conn.execute(
        "SELECT MAX(version) FROM meta WHERE repo = ? AND meta_type = ?", (IMAGE_REPO, ROLE_ROOT)
    ).fetchone()
    newest = row[0] if row is not None and isinstance(row[0], int) else -1
    stored_roots: list[int] = []
    new_roots: dict[int, bytes] = {}
    for raw in meta.roots:
        v = signed_version(raw)
        if v is None:
            raise ValueError("a root to store has no signed.version")
        new_roots[v] = raw
    for v in sorted(new_roots):
        if v <= newest:
            continue  # aktualizr fetches only roots newer than its newest; never replace one
        conn.execute(
            "DELETE FROM meta WHERE (repo=? AND meta_type=? AND version=?);",
            (IMAGE_REPO, ROLE_ROOT, v),
        )
        conn.execute(
            "INSERT INTO meta(meta, repo, meta_type, version) VALUES (?, ?, ?, ?);",
            (sqlite3.Binary(new_roots[v]), IMAGE_REPO, ROLE_ROOT, v),
        )
        conn.execute(
            "DELETE FROM meta WHERE (repo=? AND meta_type != 0);", (IMAGE_REPO,)
        )  # updateRoot: clearNonRootMeta after each new root
        stored_roots.append(v)
        newest = v

    given = {
        role: raw
        for role, raw in (
            ("timestamp", meta.timestamp),
            ("snapshot", meta.snapshot),
            ("targets", meta.targets),
        )
        if raw is not None
    }
    if not given:
        return tuple(stored_roots), False
    versions: dict[str, int] = {}
    for role, raw in given.items():
        v = signed_version(raw)
        if v is None:
            raise ValueError(f"the {role} to store has no signed.version")
        versions[role] = v
        old = conn.execute(
            LOAD_NON_ROOT,
            (IMAGE_REPO, TOP_ROLES[role]),
        ).fetchone()
        old_v = signed_version(as_bytes(old[0])) if old is not None else None
        if old_v is not None and old_v > v:
            log.info(
                f"aktualizr-lite's database holds a newer {role} (v{old_v} > v{v}): "
                "its metadata is kept"
            )
            return tuple(stored_roots), False
    for role, raw in given.items():
        conn.execute(
            "DELETE FROM meta WHERE (repo=? AND meta_type=?);", (IMAGE_REPO, TOP_ROLES[role])
        )
        conn.execute(
            "INSERT INTO meta(meta, repo, meta_type, version) VALUES (?, ?, ?, ?);",
            (sqlite3.Binary(raw), IMAGE_REPO, TOP_ROLES[role], ANY_VERSION),
        )
    return tuple(stored_roots), True


def _already_recorded(conn: sqlite3.Connection, serial: str, target: AkTarget, mode: Mode) -> bool:
    """The rows already say what `mode` would make them say (a re-run after a kill).

    saveInstalledVersion appends a row whenever the last row is another target, so writing a
    rollback (failed, then target) twice would append rows again; this keeps re-runs no-ops.
    """

    def same(row: Optional[InstalledVersion]) -> bool:
        return row is not None and row.name == target.name and row.sha256 == target.sha256

    pending = load_flagged(conn, serial, "is_pending")
    if mode is Mode.PENDING:
        return same(pending)
    if mode in (Mode.CURRENT, Mode.ROLLBACK):
        return pending is None and same(load_flagged(conn, serial, "is_current"))
    return False  # FAILED updates the target's own last row: idempotent as it is


def _apply(
    conn: sqlite3.Connection,
    target: AkTarget,
    mode: Mode,
    failed: Optional[AkTarget],
    metadata: Optional[TufUpdate],
    correlation_id: str,
) -> tuple[tuple[int, ...], bool]:
    serial = primary_serial(conn)
    if _already_recorded(conn, serial, target, mode):
        log.info(
            "aktualizr-lite's database already records the target",
            target=target.name,
            mode=mode.value,
        )
    else:
        if failed is not None:
            _save_installed_version(conn, serial, failed, "none", correlation_id)
        kind = "current" if mode is Mode.ROLLBACK else _KIND[mode]
        _save_installed_version(conn, serial, target, kind, correlation_id)
    if metadata is None:
        return (), False
    return _store_metadata(conn, metadata)


def record_installed(
    path: Path,
    target: AkTarget,
    mode: Mode,
    *,
    failed: Optional[AkTarget] = None,
    metadata: Optional[TufUpdate] = None,
    correlation_id: str = "",
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
) -> Recorded:
    """Record `target` (and `failed`, and `metadata`) the way aktualizr-lite would, atomically.

    The caller holds the aklite lock. A missing database or an unknown schema is left alone
    (`Recorded(False, reason)`, logged); busy past `busy_timeout` or an SQLite failure raises
    `AkliteDbError` with the database unchanged.
    """
    if mode is Mode.ROLLBACK and failed is None:
        raise ValueError("Mode.ROLLBACK needs the failed target")
    path = Path(path)
    if not path.exists():
        return Recorded(False, f"{path} does not exist")
    try:
        conn = connect(path, "rw", busy_timeout)
    except sqlite3.Error as exc:
        if not path.exists():
            return Recorded(False, f"{path} does not exist")
        raise db_error(path, "open it for writing", exc, busy_timeout) from None
    started = time.monotonic()
    try:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise db_error(path, "start a write", exc, busy_timeout) from None
        try:
            checked = check_schema(conn)
            if isinstance(checked, Absent):
                conn.execute("ROLLBACK")
                reason = f"aktualizr-lite's database {path} is not updated: {checked.reason}"
                log.warning(reason)
                return Recorded(False, reason)
            roots, top = _apply(conn, target, mode, failed, metadata, correlation_id)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise db_error(path, "update it", exc, busy_timeout) from None
            raise
    finally:
        conn.close()
    log.info(
        "aktualizr-lite's database: target recorded",
        target=target.name,
        mode=mode.value,
        failing=failed.name if failed is not None else None,
        ms=round((time.monotonic() - started) * 1000),
    )
    return Recorded(True, "", roots, top)
