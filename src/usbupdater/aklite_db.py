"""aktualizr-lite's SQLite database (`sql.db`): the schema, and reading its trust and targets.

Design note
-----------
aktualizr-lite keeps its state in libaktualizr's `SQLStorage` database, `[storage] sqldb_path`
(default `<storage.path>/sql.db`). A device that is online some of the time must keep one trust
history and one installed-target record whichever binary updated it, so usbupdater reads and
writes the same rows libaktualizr does (issue 15, items 1 and 2).

Schema versions: 25 (upstream aktualizr `config/sql/schema.sql` since 2020-05; every Foundries
`aktualizr` fork branch we could read) and 26 (adds only the `offlinesnapshot`/`offlineupdates`
rows of `meta_types`). Their DDL is a test fixture under `tests/akdb/fixtures/` (README there
names the source commits). On top of the version number the columns we use are checked, so a
database whose tables differ is treated like an unknown version: logged, never written.

Read (`read_state`, or `open_readonly` + `ReadOnlyDb`; a `file:...?mode=ro` URI that never
creates the file; a missing database or an unknown schema is `Absent`, not an error; the one
exception to read-only: the hot journal of a killed writer is rolled back first, as any SQLite
client does, else the database stays unreadable until aktualizr-lite starts again):
- the Image repository's roots (`meta`, repo 0 = "images", meta_type 0), raw bytes, ascending;
  offline bundles are signed by the Image repo; the Director repo (1) is exposed too;
- the Image repository's timestamp/snapshot/targets (`meta` types 3/1/2): raw bytes and the
  `signed.version` inside (libaktualizr stores non-root rows with version -1 and reads the
  version from the document, as `extractVersionUntrusted` does): rollback floors;
- the primary ECU's current and pending `installed_versions` rows, with the very queries of
  `SQLStorage::loadInstalledVersions` (serial from `ecus WHERE is_primary = 1`, or "").

Written: see `usbupdater.aklite_write`; what core records when: `usbupdater.aklite_record`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Optional, Union

from usbupdater.errors import StateError
from usbupdater.log import get_logger

log = get_logger("aklite-db")

SUPPORTED_SCHEMA_VERSIONS: frozenset[int] = frozenset({25, 26})
DEFAULT_BUSY_TIMEOUT = 5.0  # seconds; aktualizr-lite's transactions are short
DEFAULT_SQLDB_NAME = "sql.db"

# libaktualizr's enums (uptane/tuf.h: RepositoryType::Type, Role::RoleEnum; repo_types and
# meta_types tables).
IMAGE_REPO = 0
DIRECTOR_REPO = 1
ROLE_ROOT = 0
ROLE_SNAPSHOT = 1
ROLE_TARGETS = 2
ROLE_TIMESTAMP = 3
TOP_ROLES: Mapping[str, int] = MappingProxyType(
    {"timestamp": ROLE_TIMESTAMP, "snapshot": ROLE_SNAPSHOT, "targets": ROLE_TARGETS}
)
LOAD_NON_ROOT = (
    "SELECT meta FROM meta WHERE (repo=? AND meta_type=?) ORDER BY version DESC LIMIT 1;"
)
_LOAD_FLAGGED = {  # SQLStorage::loadInstalledVersions, current and pending
    "is_current": "SELECT sha256, name, hashes, length, correlation_id, custom_meta FROM "
    "installed_versions WHERE ecu_serial = ? AND is_current = 1 LIMIT 1;",
    "is_pending": "SELECT sha256, name, hashes, length, correlation_id, custom_meta FROM "
    "installed_versions WHERE ecu_serial = ? AND is_pending = 1 LIMIT 1;",
}
ANY_VERSION = -1  # Uptane::Version::ANY_VERSION: how storeNonRoot stores every non-root row

# Columns we read or write; a table lacking one is not a schema we know.
_REQUIRED_COLUMNS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "version": frozenset({"version"}),
        "ecus": frozenset({"serial", "is_primary"}),
        "meta": frozenset({"meta", "repo", "meta_type", "version"}),
        "installed_versions": frozenset(
            {
                "id",
                "ecu_serial",
                "sha256",
                "name",
                "hashes",
                "length",
                "correlation_id",
                "is_current",
                "is_pending",
                "was_installed",
                "custom_meta",
            }
        ),
    }
)


class AkliteDbError(StateError):
    """aktualizr-lite's database exists but cannot be read or written (busy, corrupt, I/O)."""


def sqldb_path(storage_path: Path, sqldb: Optional[str | Path] = None) -> Path:
    """`[storage] sqldb_path`: relative to `storage.path` unless absolute (libaktualizr's rule)."""
    p = Path(sqldb) if sqldb else Path(DEFAULT_SQLDB_NAME)
    return p if p.is_absolute() else Path(storage_path) / p


# --------------------------------------------------------------------------- plain data


@dataclass(frozen=True)
class Absent:
    """The database is not used; `reason` says why (missing file, unknown schema...)."""

    reason: str


@dataclass(frozen=True)
class StoredMeta:
    """One metadata document as stored: its version and its exact bytes."""

    version: int
    raw: bytes


@dataclass(frozen=True)
class InstalledVersion:
    """An `installed_versions` row as `loadInstalledVersions` turns it into a target."""

    name: str
    sha256: str
    length: int
    hashes: Mapping[str, str]
    custom: Optional[Mapping[str, Any]]  # None: empty or unparsable custom_meta
    correlation_id: str


@dataclass(frozen=True)
class AkliteState:
    """Everything usbupdater reads from the database, as plain data; empty when not available."""

    available: bool
    reason: str = ""
    schema_version: Optional[int] = None
    image_roots: tuple[StoredMeta, ...] = ()  # ascending versions
    image_top: Mapping[str, StoredMeta] = field(default_factory=dict)  # role name -> newest
    director_root: Optional[StoredMeta] = None
    current: Optional[InstalledVersion] = None
    pending: Optional[InstalledVersion] = None

    @property
    def latest_image_root(self) -> Optional[StoredMeta]:
        return self.image_roots[-1] if self.image_roots else None

    @property
    def floors(self) -> Mapping[str, int]:
        """Role name -> the newest version aktualizr-lite accepted (root included)."""
        out = {role: m.version for role, m in self.image_top.items()}
        if self.image_roots:
            out["root"] = self.image_roots[-1].version
        return out


# --------------------------------------------------------------------------- opening


def _uri(path: Path, mode: str) -> str:
    return f"{Path(path).absolute().as_uri()}?mode={mode}"


def connect(path: Path, mode: str, busy_timeout: float) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves (Python 3.9-3.13 alike).
    conn = sqlite3.connect(_uri(path, mode), uri=True, timeout=busy_timeout, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    return conn


def _is_busy(exc: sqlite3.Error) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


def db_error(path: Path, what: str, exc: sqlite3.Error, busy_timeout: float) -> AkliteDbError:
    if _is_busy(exc):
        return AkliteDbError(
            f"aktualizr-lite's database {path} is locked by another process "
            f"(waited {busy_timeout:g} s to {what}); try again when it is idle"
        )
    return AkliteDbError(f"aktualizr-lite's database {path}: cannot {what}: {exc}")


def check_schema(conn: sqlite3.Connection) -> Union[int, Absent]:
    """The schema version, or why this database is not one we know."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "version" not in tables:
        return Absent("it has no `version` table: not an aktualizr database")
    rows = conn.execute("SELECT version FROM version LIMIT 1").fetchall()
    if not rows or not isinstance(rows[0][0], int):
        return Absent("its `version` table holds no schema version")
    version = int(rows[0][0])
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        known = ", ".join(str(v) for v in sorted(SUPPORTED_SCHEMA_VERSIONS))
        return Absent(f"its schema version {version} is not one usbupdater knows ({known})")
    for table, needed in _REQUIRED_COLUMNS.items():
        if table not in tables:
            return Absent(f"schema version {version} but no `{table}` table")
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        missing = sorted(needed - have)
        if missing:
            return Absent(f"schema version {version} but `{table}` lacks {', '.join(missing)}")
    return version


def _read_schema(conn: sqlite3.Connection) -> Union[int, Absent]:
    conn.execute("BEGIN")
    try:
        return check_schema(conn)
    finally:
        conn.execute("COMMIT")


def _hot_journal(path: Path, exc: sqlite3.Error) -> bool:
    """A read-only open meets the rollback journal of a writer that was killed."""
    journal = path.with_name(path.name + "-journal")
    try:
        return "readonly" in str(exc).lower() and journal.stat().st_size > 0
    except OSError:
        return False


def _recover(path: Path, busy_timeout: float) -> None:
    """Let SQLite roll the hot journal back (any read-write open does; so does aktualizr-lite).

    The one write a reader makes: it restores the last committed state, nothing else.
    """
    log.warning(
        "aktualizr-lite's database: rolling back an interrupted transaction", path=str(path)
    )
    try:
        conn = connect(path, "rw", busy_timeout)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise db_error(path, "roll back an interrupted transaction", exc, busy_timeout) from None


class ReadOnlyDb:
    """A read-only connection to a database of a supported schema; use as a context manager."""

    def __init__(self, path: Path, conn: sqlite3.Connection, schema_version: int) -> None:
        self.path = Path(path)
        self.schema_version = schema_version
        self._conn = conn

    def __enter__(self) -> ReadOnlyDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def roots(self, repo: int = IMAGE_REPO) -> tuple[StoredMeta, ...]:
        """Every stored root of `repo`, ascending (version -1 rows: the version inside)."""
        by_version: dict[int, StoredMeta] = {}
        for raw, version in self._conn.execute(
            "SELECT meta, version FROM meta WHERE repo = ? AND meta_type = ? ORDER BY version",
            (repo, ROLE_ROOT),
        ):
            data = as_bytes(raw)
            v = version if isinstance(version, int) and version >= 0 else signed_version(data)
            if v is None:
                log.warning("aktualizr-lite's database: a root has no version", repo=repo)
                continue
            by_version[v] = StoredMeta(v, data)
        return tuple(by_version[v] for v in sorted(by_version))

    def top(self, repo: int = IMAGE_REPO) -> dict[str, StoredMeta]:
        """Role name -> the row `loadNonRoot` returns, with the version inside the document."""
        out = {}
        for role, role_id in TOP_ROLES.items():
            row = self._conn.execute(
                LOAD_NON_ROOT,
                (repo, role_id),
            ).fetchone()
            if row is None:
                continue
            data = as_bytes(row[0])
            v = signed_version(data)
            if v is None:
                log.warning(f"aktualizr-lite's database: its {role} has no readable version")
                continue
            out[role] = StoredMeta(v, data)
        return out

    def primary_serial(self) -> str:
        return primary_serial(self._conn)

    def installed(self) -> tuple[Optional[InstalledVersion], Optional[InstalledVersion]]:
        """(current, pending) as `loadInstalledVersions` reads them for the primary ECU."""
        serial = self.primary_serial()
        return load_flagged(self._conn, serial, "is_current"), load_flagged(
            self._conn, serial, "is_pending"
        )

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction, so several reads see one state of the file."""
        self._conn.execute("BEGIN")
        try:
            yield
        finally:
            self._conn.execute("COMMIT")


def open_readonly(
    path: Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
) -> Union[ReadOnlyDb, Absent]:
    """Open aktualizr-lite's database read-only, never creating it.

    A missing file or an unknown schema is `Absent(reason)` (logged); a database that exists but
    stays busy for `busy_timeout` seconds, or cannot be read, raises `AkliteDbError`.
    """
    path = Path(path)
    if not path.exists():
        return Absent(f"{path} does not exist")
    try:
        conn = connect(path, "ro", busy_timeout)
    except sqlite3.Error as exc:
        if not path.exists():  # removed between the check and the open
            return Absent(f"{path} does not exist")
        raise db_error(path, "open it", exc, busy_timeout) from None
    try:
        checked = _read_schema(conn)
    except sqlite3.Error as exc:
        conn.close()
        if not _hot_journal(path, exc):
            raise db_error(path, "read its schema", exc, busy_timeout) from None
        _recover(path, busy_timeout)
        try:
            conn = connect(path, "ro", busy_timeout)
            checked = _read_schema(conn)
        except sqlite3.Error as exc2:
            conn.close()
            raise db_error(path, "read its schema", exc2, busy_timeout) from None
    if isinstance(checked, Absent):
        conn.close()
        absent = Absent(f"aktualizr-lite's database {path} is ignored: {checked.reason}")
        log.warning(absent.reason)
        return absent
    return ReadOnlyDb(path, conn, checked)


def read_state(path: Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> AkliteState:
    """Everything the trust code and the core need from the database, in one read transaction."""
    opened = open_readonly(path, busy_timeout)
    if isinstance(opened, Absent):
        return AkliteState(available=False, reason=opened.reason)
    with opened as db:
        try:
            with db.snapshot():
                roots = db.roots(IMAGE_REPO)
                top = db.top(IMAGE_REPO)
                director = db.roots(DIRECTOR_REPO)
                current, pending = db.installed()
        except sqlite3.Error as exc:
            raise db_error(db.path, "read it", exc, busy_timeout) from None
        return AkliteState(
            available=True,
            schema_version=db.schema_version,
            image_roots=roots,
            image_top=MappingProxyType(top),
            director_root=director[-1] if director else None,
            current=current,
            pending=pending,
        )


# --------------------------------------------------------------------------- helpers


def as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return b""


def signed_version(raw: bytes) -> Optional[int]:
    """`signed.version` of a metadata document, unverified (`extractVersionUntrusted`)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    signed = doc.get("signed") if isinstance(doc, dict) else None
    version = signed.get("version") if isinstance(signed, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version >= 0:
        return version
    return None


def primary_serial(conn: sqlite3.Connection) -> str:
    row = conn.execute("SELECT serial FROM ecus WHERE is_primary = 1;").fetchone()
    return row[0] if row is not None and isinstance(row[0], str) else ""


def _decode_hashes(encoded: str, sha256: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for token in encoded.split(";"):
        kind, sep, value = token.partition(":")
        if sep and kind and value:
            out[kind.lower()] = value
    out.setdefault("sha256", sha256)
    return out


def load_flagged(conn: sqlite3.Connection, serial: str, flag: str) -> Optional[InstalledVersion]:
    row = conn.execute(_LOAD_FLAGGED[flag], (serial,)).fetchone()
    if row is None:
        return None
    sha256, name, hashes, length, correlation_id, custom_str = row
    custom: Optional[Mapping[str, Any]] = None
    if custom_str:
        try:
            parsed = json.loads(custom_str)
        except ValueError:
            log.warning("aktualizr-lite's database: unparsable custom data", target=str(name))
        else:
            custom = parsed if isinstance(parsed, dict) else None
    return InstalledVersion(
        name=str(name),
        sha256=str(sha256),
        length=int(length or 0),
        hashes=_decode_hashes(str(hashes or ""), str(sha256)),
        custom=custom,
        correlation_id=str(correlation_id or ""),
    )
