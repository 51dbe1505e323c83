"""Verify a bundle's `tuf/` against the device's trust, then (separately) persist what was accepted.

Verification and persistence are two calls because the core decides when accepting is final
(a failure later in `install` must not have moved the device's trust); `verify()` never writes.

aktualizr-lite's database (`[storage] sqldb_path`, read-only, see `usbupdater.aklite_db`) is a
second trust history: its roots newer than ours are walked as a chain from our newest root (each
signed by its predecessor's and its own root keys, as a bundle's roots are), and its
timestamp/snapshot/targets join ours as rollback floors and as the fallback when the stick is
older than what the device got online. A missing database or an unknown schema is ignored.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

from usbupdater import aklite_db, safeio
from usbupdater.config import Config
from usbupdater.errors import MetadataMissingError, SecurityError, UpdaterError
from usbupdater.log import get_logger
from usbupdater.trust import store
from usbupdater.trust.dialect import (
    MAX_META_SIZE,
    Envelope,
    canonical,
    format_time,
    load,
    parse_time,
)
from usbupdater.trust.trusted_set import (
    BundleTargets,
    ChainResult,
    StoredMeta,
    verify_chain,
    walk_roots,
)

log = get_logger("trust")

_ROOT_NAME = re.compile(r"^([1-9][0-9]{0,8})\.root\.json$")


@dataclass(frozen=True)
class TrustedMetadata:
    """What the rest of the updater may rely on after a successful verification."""

    targets: Mapping[str, Mapping[str, Any]]  # signed["targets"] of the verified targets.json
    targets_version: int
    root_version: int
    bundle_targets: BundleTargets | None  # None: legacy bundle (a warning was logged)
    expires: datetime  # earliest expiry among the roles used
    from_device_cache: bool  # bundle older than the device: the device's stored metadata is used


def shipped_roots_dir(config: Config) -> Path:
    """`<uptane_metadata_path>/prod` for production devices, else `ci` (aktualizr-lite's rule)."""
    kind = "prod" if config.usbupdater.device_type == "prod" else "ci"
    return config.storage.uptane_metadata_path / kind


def store_dir(config: Config) -> Path:
    return config.state_dir / "tuf"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def effective_now(store_path: Path, now: datetime | None = None) -> datetime:
    """The later of the clock (`now`, default the system clock) and the persisted time floor.

    A device without an RTC boots in 1970; without the floor it would accept metadata that
    expired long ago.
    """
    clock = now if now is not None else _utcnow()
    if clock.tzinfo is None:
        clock = clock.replace(tzinfo=timezone.utc)
    floor = store.load_time_floor(store_path)
    return max(clock, floor) if floor is not None else clock


def _shipped_versions(shipped: Path) -> dict[int, Path]:
    try:
        names = os.listdir(shipped)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise MetadataMissingError(f"{shipped}: cannot list the shipped roots: {exc}") from None
    out = {}
    for n in names:
        m = _ROOT_NAME.match(n)
        if m:
            out[int(m.group(1))] = shipped / n
    return out


def _trusted_root(shipped: Path, docs: store.StoredDocs) -> Envelope[Any]:
    """The newest root the device trusts: shipped with its image or accepted before (stored)."""
    shipped_versions = _shipped_versions(shipped)
    best = max([*shipped_versions, *docs.roots], default=None)
    if best is None:
        raise MetadataMissingError(
            f"no trusted root: {shipped} holds no N.root.json and the device has accepted none"
        )
    if best in docs.roots:
        name = f"stored root v{best}"
        data = canonical(docs.roots[best])
    else:
        name = str(shipped_versions[best])
        try:
            with open(shipped_versions[best], "rb") as fh:
                data = fh.read(MAX_META_SIZE + 1)
        except OSError as exc:
            raise MetadataMissingError(f"{name}: cannot read: {exc.strerror}") from None
        if len(data) > MAX_META_SIZE:
            raise SecurityError(f"{name}: larger than {MAX_META_SIZE} bytes")
    root = load(data, "root", name)
    if root.version != best:
        raise SecurityError(f"{name}: holds root v{root.version}, expected v{best}")
    return root


# Intermediate roots may have expired (walk_roots checks the newest one only); the roots of the
# database are a stepping stone, the bundle's walk from them checks the expiry of the newest.
_NEVER = datetime.min.replace(tzinfo=timezone.utc) + timedelta(days=1)
DB_SOURCE = "aktualizr-lite's database"


def _db_roots(
    local: Envelope[Any], ak: aklite_db.AkliteState
) -> tuple[Envelope[Any], tuple[Envelope[Any], ...]]:
    """Extend our newest root with the database's newer roots, verified as a chain from it.

    A database root that does not chain (a gap, a bad signature) ends the walk there, or is
    ignored with a warning: it can only make us trust less, never more.
    """
    newer = {m.version: m.raw for m in ak.image_roots if m.version > local.version}
    if not newer:
        return local, ()

    def fetch(name: str, limit: int) -> bytes | None:
        m = _ROOT_NAME.match(name)
        raw = newer.get(int(m.group(1))) if m else None
        if raw is not None and len(raw) > limit:
            raise SecurityError(f"{DB_SOURCE}: {name} is larger than {limit} bytes")
        return raw

    try:
        root, walked = walk_roots(local, fetch, _NEVER)
    except UpdaterError as exc:
        log.warning(f"{DB_SOURCE}: its roots after v{local.version} are ignored", error=exc.reason)
        return local, ()
    if walked:
        log.info(f"{DB_SOURCE}: root v{root.version} (online root rotation) is trusted")
    return root, walked


def _stored_meta(
    docs: store.StoredDocs, ak: aklite_db.AkliteState
) -> tuple[StoredMeta, dict[str, str]]:
    """Per role the newest of our stored metadata and the database's, and where each came from.

    Both come from the same Image repository, whose versions only grow, so the newest of each
    role form one set (the fallback) and are the rollback floors.
    """
    envs: dict[str, Envelope[Any]] = {}
    sources: dict[str, str] = {}
    for role, doc in docs.top.items():
        try:
            envs[role] = load(canonical(doc), role, f"stored {role}")
            sources[role] = "usbupdater"
        except SecurityError as exc:  # written by us after verification: should not happen
            log.error(f"ignoring the device's stored {role}", error=exc.reason)
    for role, meta in ak.image_top.items():
        try:
            env: Envelope[Any] = load(meta.raw, role, f"{role} of {DB_SOURCE}")
        except SecurityError as exc:
            log.warning(f"{DB_SOURCE}: its {role} is ignored", error=exc.reason)
            continue
        if role not in envs or env.version > envs[role].version:
            envs[role], sources[role] = env, DB_SOURCE
    stored = StoredMeta(envs.get("timestamp"), envs.get("snapshot"), envs.get("targets"))
    return stored, sources


def _older_than_online(sources: Mapping[str, str], stored: StoredMeta) -> str:
    """The tail of a refusal when the device's newer metadata came from an online update."""
    if DB_SOURCE not in sources.values():
        return ""
    online = stored.targets.version if stored.targets is not None else None
    return "; the stick is older than what the device got online" + (
        f" (targets v{online})" if online is not None else ""
    )


def _check_cache_names_bundle(result: ChainResult, sources: Mapping[str, str]) -> None:
    """Falling back to the device's metadata only helps when it names the stick's targets."""
    if not result.from_device_cache or result.bundle_targets is None:
        return
    known = result.targets.signed.get("targets", {})
    if any(name in known for name in result.bundle_targets.targets):
        return
    where = "got online" if sources.get("targets") == DB_SOURCE else "accepted before"
    raise SecurityError(
        f"the stick's TUF metadata is older than what the device {where} "
        f"(targets v{result.targets.version}), and the device's metadata does not name the "
        "stick's targets: use a newer bundle"
    )


def _known_true_time(result: ChainResult) -> datetime | None:
    """A time the signed metadata proves has passed: the newest createdAt/updatedAt of a target."""
    best = None
    for entry in result.targets.signed.get("targets", {}).values():
        custom = entry.get("custom") if isinstance(entry, dict) else None
        if not isinstance(custom, dict):
            continue
        for key in ("createdAt", "updatedAt"):
            try:
                t = parse_time(custom.get(key))
            except ValueError:
                continue
            best = t if best is None or t > best else best
    return best


class TrustSession:
    """One verification of one bundle's `tuf/` directory, and the commit of what it accepted.

    `verify()` reads the bundle, the shipped roots and the store, raises an `UpdaterError`
    (11/12/14/15; `StateError` for a corrupt store) or returns `TrustedMetadata`, and writes
    nothing. `commit()` then persists the accepted roots and metadata (one atomic write) and
    advances the time floor. `now` replaces the system clock (tests); either way the time used
    is raised to the persisted time floor.
    """

    def __init__(
        self,
        tuf_dir: Path,
        *,
        shipped_roots_dir: Path,
        device_type: str,
        device_tags: Sequence[str],
        store_dir: Path,
        now: datetime | None = None,
        sqldb_path: Path | None = None,
    ) -> None:
        self.tuf_dir = Path(tuf_dir)
        self.sqldb_path = Path(sqldb_path) if sqldb_path is not None else None
        self._db_roots: tuple[Envelope[Any], ...] = ()
        self.shipped_roots_dir = Path(shipped_roots_dir)
        self.device_type = device_type
        self.device_tags = tuple(device_tags)
        self.store_dir = Path(store_dir)
        self.clock = now
        self._result: ChainResult | None = None
        self._docs: store.StoredDocs | None = None
        self._now: datetime | None = None

    @classmethod
    def from_config(
        cls, config: Config, tuf_dir: Path, now: datetime | None = None
    ) -> TrustSession:
        return cls(
            tuf_dir,
            shipped_roots_dir=shipped_roots_dir(config),
            device_type=config.usbupdater.device_type,
            device_tags=config.pacman.tags,
            store_dir=store_dir(config),
            now=now,
            sqldb_path=config.storage.sqldb_path,
        )

    def verify(self) -> TrustedMetadata:
        now = effective_now(self.store_dir, self.clock)
        docs = store.load_docs(self.store_dir)
        # A busy or corrupt database raises (StateError): its floors guard against rollbacks.
        ak = (
            aklite_db.read_state(self.sqldb_path)
            if self.sqldb_path is not None
            else aklite_db.AkliteState(available=False)
        )
        trusted, db_roots = _db_roots(_trusted_root(self.shipped_roots_dir, docs), ak)
        stored, sources = _stored_meta(docs, ak)
        try:
            dirfd = safeio.open_root(self.tuf_dir)
        except FileNotFoundError:
            raise MetadataMissingError(f"{self.tuf_dir}: no TUF metadata directory") from None
        except (OSError, safeio.UnsafePathError) as exc:
            raise SecurityError(f"{self.tuf_dir}: cannot open: {exc}") from None
        try:

            def fetch(name: str, limit: int) -> bytes | None:
                try:
                    return safeio.read_file(dirfd, name, limit)
                except FileNotFoundError:
                    return None
                except safeio.UnsafePathError as exc:
                    raise SecurityError(f"{name}: refused: {exc.reason}") from None
                # Any other OSError (EIO from a failing or pulled stick) is no statement about
                # the metadata: it reaches the caller, which reports an I/O error.

            try:
                result = verify_chain(
                    trusted, fetch, stored, now, self.device_type, self.device_tags
                )
            except SecurityError as exc:
                if not exc.reason.startswith("rollback:"):
                    raise
                raise SecurityError(exc.reason + _older_than_online(sources, stored)) from None
        finally:
            os.close(dirfd)
        _check_cache_names_bundle(result, sources)
        self._result, self._docs, self._now = result, docs, now
        self._db_roots = db_roots
        log.info(
            "TUF metadata verified",
            root_version=result.root.version,
            targets_version=result.targets.version,
            expires=format_time(result.expires),
            from_device_cache=result.from_device_cache,
        )
        return TrustedMetadata(
            # A deep copy: callers may annotate entries; what commit() persists must stay as signed.
            targets=MappingProxyType(copy.deepcopy(result.targets.signed.get("targets", {}))),
            targets_version=result.targets.version,
            root_version=result.root.version,
            bundle_targets=result.bundle_targets,
            expires=result.expires,
            from_device_cache=result.from_device_cache,
        )

    def commit(self) -> None:
        """Persist what `verify()` accepted; only valid after it succeeded."""
        if self._result is None or self._docs is None or self._now is None:
            raise RuntimeError("TrustSession.commit() before a successful verify()")
        result, old = self._result, self._docs
        roots = dict(old.roots)
        roots.update({r.version: r.doc for r in (*self._db_roots, *result.new_roots)})
        top = {
            "timestamp": result.timestamp.doc,
            "snapshot": result.snapshot.doc,
            "targets": result.targets.doc,
        }
        new = store.StoredDocs(roots, top)
        if new != old:
            store.save_docs(self.store_dir, new)
        known = _known_true_time(result)
        floor = max(self._now, known) if known is not None else self._now
        store.save_time_floor(self.store_dir, min(floor, result.expires))
