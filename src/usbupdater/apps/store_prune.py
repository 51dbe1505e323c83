"""Pruning the device's app store after a confirmed update, without touching what is not ours."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

from usbupdater import hexdigest
from usbupdater.apps.model import VerifiedApp
from usbupdater.apps.store import RECORD, TMP_PREFIX, VERIFIED_ONLY, AppStore
from usbupdater.errors import VerificationError
from usbupdater.fsutil import fsync_dir

_SCAN_LIMIT = 4 << 20  # manifests, indexes, configs: what names other blobs
_DIGEST_IN_TEXT = re.compile(rb"(?<![0-9a-f])" + hexdigest.PATTERN.encode() + rb"(?![0-9a-f])")


def prune_store(
    store: AppStore, keep: Iterable[tuple[str, str]], keep_names: Iterable[str] = ()
) -> list[str]:
    """Remove what usbupdater added and no kept app needs; never what others put here.

    The store is shared with aktualizr-lite (its restorable apps, the image's preloaded apps),
    so only app versions with usbupdater's record (`usbupdater-app.json`) that are not in
    `keep` ((name, uri) pairs: the current and the rollback target's apps) and whose name is not
    in `keep_names` (`[pacman] reset_apps`) are removed, and only blobs some record of
    usbupdater names, that no remaining record needs and that no remaining app version without
    a record can reach (its files, then the small blobs they name, scanned for digests). Blobs
    nobody's record names are someone else's: kept. Call only after a successful `run`.
    Returns the digests removed.
    """
    keep_set, names = set(keep), set(keep_names)
    ours: set[str] = set()  # digests some usbupdater record names
    needed: set[str] = set()  # digests a remaining recorded app needs
    foreign: list[Path] = []  # remaining app versions without a usable record
    for name, ver in _versions(store):
        uri_file = ver / "uri"
        uri = uri_file.read_text() if uri_file.is_file() else ""
        app = None if (ver / VERIFIED_ONLY).exists() else _record(ver)
        if app is not None:
            ours.update(b.digest for b in app.blobs)
        if app is not None and (name, uri) not in keep_set and name not in names:
            shutil.rmtree(ver)
            if not any(ver.parent.iterdir()):
                ver.parent.rmdir()
            continue
        if app is not None:
            needed.update(b.digest for b in app.blobs)
        else:
            foreign.append(ver)
    needed |= _reachable(store, foreign)
    removed = []
    if store.blob_dir.is_dir():
        for p in store.blob_dir.iterdir():
            digest = "sha256:" + p.name
            if p.name.startswith(TMP_PREFIX):
                p.unlink()
            elif digest in ours and digest not in needed:
                p.unlink()
                removed.append(digest)
        fsync_dir(store.blob_dir)
    return removed


def _versions(store: AppStore) -> list[tuple[str, Path]]:
    apps_dir = store.root / "apps"
    if not apps_dir.is_dir():
        return []
    out: list[tuple[str, Path]] = []
    for name_dir in sorted(apps_dir.iterdir()):
        if name_dir.is_dir() and not name_dir.is_symlink():
            out.extend((name_dir.name, v) for v in sorted(name_dir.iterdir()) if v.is_dir())
    return out


def _record(ver: Path) -> Optional[VerifiedApp]:
    try:
        return VerifiedApp.from_json(json.loads((ver / RECORD).read_bytes()))
    except (OSError, ValueError, KeyError, TypeError, VerificationError):
        return None


def _reachable(store: AppStore, roots: Iterable[Path]) -> set[str]:
    """Digests named by the files under `roots`, and by the small blobs those name."""
    seen: set[str] = set()
    todo: list[Path] = []
    for root in roots:
        todo.extend(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    while todo:
        path = todo.pop()
        try:
            if path.stat().st_size > _SCAN_LIMIT:
                continue  # layers and bundles: archives, they name no blobs
            text = path.read_bytes()
        except OSError:
            continue
        for m in _DIGEST_IN_TEXT.finditer(text):
            hexdigest = m.group(0).decode()
            if "sha256:" + hexdigest not in seen:
                seen.add("sha256:" + hexdigest)
                todo.append(store.blob_dir / hexdigest)
    return seen
