"""The device's trusted metadata under `<state_dir>/tuf/`, persisted atomically.

`trusted.json` holds, in ONE file, every root the device accepted from a bundle and the last
accepted timestamp/snapshot/targets, as their original documents (their signatures stay
checkable). One file, one `atomic_write`: after a power cut the device trusts either the old set
or the new one, never a timestamp of one and a targets of the other.

`time-floor.json` holds the newest time the device has known to be true; it only moves forward,
and is kept apart so that advancing it never rewrites the (possibly large) metadata.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from usbupdater import safeio
from usbupdater.errors import StateError
from usbupdater.fsutil import atomic_write
from usbupdater.trust.dialect import MiB, canonical, format_time, parse_json, parse_time

STORE_FILE = "trusted.json"
FLOOR_FILE = "time-floor.json"
STORE_FORMAT = 1
MAX_STORE_SIZE = 64 * MiB
TOP_ROLES = ("timestamp", "snapshot", "targets")


@dataclass(frozen=True)
class StoredDocs:
    """What `trusted.json` holds: original documents, not yet re-verified."""

    roots: dict[int, dict[str, Any]] = field(default_factory=dict)
    top: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> document

    def to_bytes(self) -> bytes:
        return canonical(
            {
                "format": STORE_FORMAT,
                "roots": {str(v): d for v, d in sorted(self.roots.items())},
                **{role: self.top.get(role) for role in TOP_ROLES},
            }
        )


def _read(store_dir: Path, name: str, limit: int) -> bytes | None:
    try:
        fd = safeio.open_root(store_dir)
    except FileNotFoundError:
        return None
    except (OSError, safeio.UnsafePathError) as exc:
        raise StateError(f"{store_dir}: cannot open the trusted metadata store: {exc}") from None
    try:
        return safeio.read_file(fd, name, limit)
    except FileNotFoundError:
        return None
    except (OSError, safeio.UnsafePathError) as exc:
        raise StateError(f"{store_dir / name}: cannot read: {exc}") from None
    finally:
        os.close(fd)


def load_docs(store_dir: Path) -> StoredDocs:
    """Read `trusted.json`; a corrupt one is a `StateError` (fail closed: it guards rollbacks)."""
    data = _read(store_dir, STORE_FILE, MAX_STORE_SIZE)
    if data is None:
        return StoredDocs()
    path = store_dir / STORE_FILE
    try:
        doc = parse_json(data, str(path))
        if not isinstance(doc, dict) or doc.get("format") != STORE_FORMAT:
            raise ValueError(
                f"unknown format {doc.get('format') if isinstance(doc, dict) else doc!r}"
            )
        roots = {int(v): d for v, d in doc["roots"].items()}
        top = {role: doc[role] for role in TOP_ROLES if doc.get(role) is not None}
        if not all(isinstance(d, dict) for d in [*roots.values(), *top.values()]):
            raise ValueError("an entry is not an object")
    except Exception as exc:
        raise StateError(f"{path}: corrupt trusted metadata store ({exc})") from None
    return StoredDocs(roots, top)


def save_docs(store_dir: Path, docs: StoredDocs) -> None:
    atomic_write(store_dir / STORE_FILE, docs.to_bytes(), mode=0o600)


def load_time_floor(store_dir: Path) -> datetime | None:
    """The persisted time floor, or None; a corrupt file is ignored (it only ever tightens)."""
    data = _read(store_dir, FLOOR_FILE, 4096)
    if data is None:
        return None
    try:
        doc = parse_json(data, FLOOR_FILE)
        return parse_time(doc["time"])
    except Exception:
        return None


def save_time_floor(store_dir: Path, when: datetime) -> None:
    """Advance the time floor to `when` (never moves it back)."""
    old = load_time_floor(store_dir)
    if old is not None and old >= when:
        return
    atomic_write(store_dir / FLOOR_FILE, canonical({"time": format_time(when)}), mode=0o600)
