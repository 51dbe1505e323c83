"""Pure verification of a bundle's metadata chain against what the device already trusts.

Like python-tuf's `trusted_metadata_set`, but offline and in one pass: no I/O except through the
`fetch` callable, no clock except `now`, nothing persisted. Order of checks per role follows
python-tuf (signatures, then versions, then expiry), so a rollback is recognised even when the
old metadata has also expired.

Rollback: a bundle whose timestamp/snapshot/targets are older than the device's is not an attack
by itself (a stick made before the device's last update); aktualizr-lite then continues with the
device's stored metadata when that is still valid, and so do we (`from_device_cache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Optional

from tuf.api.metadata import MetaFile, Root, Snapshot, Targets, Timestamp

from usbupdater.errors import BundleMetadataError, ExpiredError, MetadataMissingError, SecurityError
from usbupdater.log import get_logger
from usbupdater.trust.dialect import (
    MAX_META_SIZE,
    MAX_TARGETS_SIZE,
    Envelope,
    check_meta,
    check_threshold,
    format_time,
    load,
    meta_read_limit,
    precheck_meta,
    valid_keyids,
)

log = get_logger("trust")

MAX_ROOT_ROTATIONS = 256  # as python-tuf: bounds the work a stick full of roots can cause
BUNDLE_KEY = "x-fio-offline-bundle"
BUNDLE_TYPES = ("ci", "prod")

# fetch(name, max_size) -> the file's bytes, or None when it is absent; raises for unreadable ones.
Fetch = Callable[[str, int], Optional[bytes]]


@dataclass(frozen=True)
class BundleTargets:
    """The verified `x-fio-offline-bundle` of bundle-targets.json: the targets a stick is for."""

    type: str  # "ci" | "prod"
    tag: str
    targets: tuple[str, ...]
    expires: datetime


@dataclass(frozen=True)
class StoredMeta:
    """The device's persisted top-level metadata (any may be absent)."""

    timestamp: Envelope[Timestamp] | None = None
    snapshot: Envelope[Snapshot] | None = None
    targets: Envelope[Targets] | None = None


@dataclass(frozen=True)
class ChainResult:
    root: Envelope[Root]  # newest root
    new_roots: tuple[Envelope[Root], ...]  # roots accepted from the bundle, ascending
    timestamp: Envelope[Timestamp]
    snapshot: Envelope[Snapshot]
    targets: Envelope[Targets]
    bundle_targets: BundleTargets | None
    from_device_cache: bool

    @property
    def expires(self) -> datetime:
        times = [self.root.expires, self.timestamp.expires, self.snapshot.expires]
        times.append(self.targets.expires)
        if self.bundle_targets is not None:
            times.append(self.bundle_targets.expires)
        return min(times)


class _Rollback(Exception):
    """The bundle's metadata is older than the device's (reason in args[0])."""


def _check_expiry(env: Envelope[Any], now: datetime) -> None:
    if env.expires <= now:
        raise ExpiredError(
            f"{env.label}: expired at {format_time(env.expires)} (time is {format_time(now)})"
        )


def _fetch_required(fetch: Fetch, name: str, limit: int) -> bytes:
    data = fetch(name, limit)
    if data is None:
        raise MetadataMissingError(f"{name}: missing from the bundle")
    return data


def _fetch_declared(
    fetch: Fetch, role: str, cap: int, meta: MetaFile, parent: str
) -> tuple[bytes, bool]:
    """Read `<role>.json` and check its raw bytes against what `parent` declares, unparsed.

    The read is bounded by the declared length (plus a little slack) and a mismatching file is
    refused before any JSON parsing, so an unauthenticated 16 MiB file costs a read and a hash,
    not a parse. Returns the bytes and whether the raw bytes already matched; when not, the
    caller must check the canonical form with `check_meta` after parsing (small files only).
    """
    name = f"{role}.json"
    limit = meta_read_limit(meta.length, cap)
    try:
        data = _fetch_required(fetch, name, limit)
    except SecurityError as exc:
        if limit < cap:  # the file outgrew its declared length (or is unsafe: the reason says)
            raise SecurityError(f"{exc.reason}; {parent} declares {meta.length} bytes") from None
        raise
    raw_ok, why = precheck_meta(data, meta.length, meta.hashes)
    if why:
        raise SecurityError(f"{role} v{meta.version}: {why} in {parent} (file not parsed)")
    return data, raw_ok


def walk_roots(
    trusted: Envelope[Root], fetch: Fetch, now: datetime
) -> tuple[Envelope[Root], tuple[Envelope[Root], ...]]:
    """Follow N+1.root.json from the trusted root; return the newest root and the new ones.

    Each new root must be signed by a threshold of the previous root's root keys and of its own,
    and hold exactly the version its name says. Intermediate roots may have expired (a device that
    slept through several rotations must still catch up); the newest must not.
    """
    root = trusted
    new: list[Envelope[Root]] = []
    for version in range(trusted.version + 1, trusted.version + 1 + MAX_ROOT_ROTATIONS):
        name = f"{version}.root.json"
        data = fetch(name, MAX_META_SIZE)
        if data is None:
            break
        candidate: Envelope[Root] = load(data, "root", name)
        if candidate.version != version:
            raise SecurityError(f"{name}: holds root v{candidate.version}, expected v{version}")
        check_threshold(candidate, root.model, "root", f"root v{root.version}")
        check_threshold(candidate, candidate.model, "root", "itself")
        root = candidate
        new.append(candidate)
    _check_expiry(root, now)
    return root, tuple(new)


def verify_bundle_targets(
    data: bytes,
    root: Envelope[Root],
    now: datetime,
    device_type: str,
    device_tags: Sequence[str],
) -> BundleTargets:
    """bundle-targets.json as aktualizr-lite checks it; every failure is a `BundleMetadataError`."""
    name = "bundle-targets.json"
    try:
        env: Envelope[Targets] = load(data, "targets", name)
    except SecurityError as exc:
        raise BundleMetadataError(exc.reason) from None
    targets_role = root.model.roles["targets"]
    for s in env.signatures:
        if s.keyid not in targets_role.keyids:
            raise BundleMetadataError(
                f"{name} v{env.version}: signed by {s.keyid[:12]}, not a targets key of "
                f"root v{root.version}"
            )
    got = len(valid_keyids(env, root.model, "targets"))
    if got < targets_role.threshold:
        raise BundleMetadataError(
            f"{name} v{env.version}: {got} valid signature(s) by the targets keys of "
            f"root v{root.version}, {targets_role.threshold} needed"
        )
    if env.expires <= now:
        raise BundleMetadataError(
            f"{name} v{env.version}: expired at {format_time(env.expires)} "
            f"(time is {format_time(now)})"
        )
    info = env.signed.get(BUNDLE_KEY)
    if (
        not isinstance(info, dict)
        or info.get("type") not in BUNDLE_TYPES
        or not isinstance(info.get("tag"), str)
        or not isinstance(info.get("targets"), list)
        or not all(isinstance(t, str) for t in info["targets"])
    ):
        raise BundleMetadataError(
            f"{name} v{env.version}: {BUNDLE_KEY} must hold type ci|prod, a tag and a target list"
        )
    if device_type and info["type"] != device_type:
        raise BundleMetadataError(
            f"{name} v{env.version}: bundle is for {info['type']} devices, "
            f"this one is {device_type}"
        )
    if device_tags and info["tag"] not in device_tags:
        raise BundleMetadataError(
            f"{name} v{env.version}: bundle tag {info['tag']!r} is not one of the device's tags "
            f"({', '.join(device_tags)})"
        )
    return BundleTargets(info["type"], info["tag"], tuple(info["targets"]), env.expires)


def _reference(env: Envelope[Any] | None, root: Envelope[Root]) -> Envelope[Any] | None:
    """Stored metadata counts for rollback checks only while the newest root's keys still sign it
    (python-tuf's rule: a key rotation lets the repository start its versions again)."""
    if env is None:
        return None
    role = env.role
    if len(valid_keyids(env, root.model, role)) < root.model.roles[role].threshold:
        return None
    return env


def _verify_top(
    root: Envelope[Root], fetch: Fetch, stored: StoredMeta, now: datetime
) -> tuple[Envelope[Timestamp], Envelope[Snapshot], Envelope[Targets]]:
    ref_ts = _reference(stored.timestamp, root)
    ref_snap = _reference(stored.snapshot, root)
    ref_targets = _reference(stored.targets, root)
    signer = f"root v{root.version}"

    ts: Envelope[Timestamp] = load(
        _fetch_required(fetch, "timestamp.json", MAX_META_SIZE), "timestamp", "timestamp.json"
    )
    check_threshold(ts, root.model, "timestamp", signer)
    if ref_ts is not None and ts.version < ref_ts.version:
        raise _Rollback(f"{ts.label} is older than the device's v{ref_ts.version}")
    snap_meta = ts.model.snapshot_meta
    if ref_snap is not None and snap_meta.version < ref_snap.version:
        raise _Rollback(
            f"{ts.label} names snapshot v{snap_meta.version}, older than the device's "
            f"v{ref_snap.version}"
        )
    _check_expiry(ts, now)

    snap_data, raw_ok = _fetch_declared(fetch, "snapshot", MAX_META_SIZE, snap_meta, ts.label)
    snap: Envelope[Snapshot] = load(snap_data, "snapshot", "snapshot.json")
    why = None if raw_ok else check_meta(snap_data, snap, snap_meta.length, snap_meta.hashes)
    if why:
        raise SecurityError(f"{snap.label}: {why} in {ts.label}")
    check_threshold(snap, root.model, "snapshot", signer)
    if snap.version != snap_meta.version:
        raise SecurityError(f"{snap.label}: {ts.label} names snapshot v{snap_meta.version}")
    targets_meta = snap.model.meta.get("targets.json")
    if targets_meta is None:
        raise SecurityError(f"{snap.label}: lists no targets.json")
    if ref_targets is not None and targets_meta.version < ref_targets.version:
        raise _Rollback(
            f"{snap.label} names targets v{targets_meta.version}, older than the device's "
            f"v{ref_targets.version}"
        )
    _check_expiry(snap, now)

    targets_data, raw_ok = _fetch_declared(
        fetch, "targets", MAX_TARGETS_SIZE, targets_meta, snap.label
    )
    targets: Envelope[Targets] = load(targets_data, "targets", "targets.json")
    why = (
        None
        if raw_ok
        else check_meta(targets_data, targets, targets_meta.length, targets_meta.hashes)
    )
    if why:
        raise SecurityError(f"{targets.label}: {why} in {snap.label}")
    check_threshold(targets, root.model, "targets", signer)
    if targets.version != targets_meta.version:
        raise SecurityError(f"{targets.label}: {snap.label} names targets v{targets_meta.version}")
    _check_expiry(targets, now)
    return ts, snap, targets


def _stored_chain(
    root: Envelope[Root], stored: StoredMeta, now: datetime
) -> tuple[tuple[Envelope[Timestamp], Envelope[Snapshot], Envelope[Targets]] | None, str]:
    """The device's stored metadata if it is complete, signed under `root`, consistent and fresh."""
    ts, snap, targets = stored.timestamp, stored.snapshot, stored.targets
    if ts is None or snap is None or targets is None:
        return None, "the device has no complete stored metadata"
    for env in (ts, snap, targets):
        if _reference(env, root) is None:
            return None, f"the device's {env.label} is not signed by root v{root.version}'s keys"
        if env.expires <= now:
            return None, f"the device's {env.label} expired at {format_time(env.expires)}"
    targets_meta = snap.model.meta.get("targets.json")
    if ts.model.snapshot_meta.version != snap.version or (
        targets_meta is None or targets_meta.version != targets.version
    ):
        return None, "the device's stored metadata is inconsistent"
    return (ts, snap, targets), ""


def verify_chain(
    trusted_root: Envelope[Root],
    fetch: Fetch,
    stored: StoredMeta,
    now: datetime,
    device_type: str,
    device_tags: Sequence[str],
) -> ChainResult:
    """Verify everything the bundle holds; raise the `UpdaterError` its first problem maps to."""
    root, new_roots = walk_roots(trusted_root, fetch, now)

    bundle_targets = None
    bt_data = fetch("bundle-targets.json", MAX_META_SIZE)
    if bt_data is None:
        log.warning("bundle-targets.json is absent: legacy bundle, no bundle type/tag checks")
    else:
        bundle_targets = verify_bundle_targets(bt_data, root, now, device_type, device_tags)

    try:
        ts, snap, targets = _verify_top(root, fetch, stored, now)
        from_cache = False
    except _Rollback as rollback:
        cached, why = _stored_chain(root, stored, now)
        if cached is None:
            raise SecurityError(f"rollback: {rollback.args[0]}, and {why}") from None
        log.warning(
            "bundle metadata is older than the device's: using the device's stored metadata",
            reason=str(rollback.args[0]),
        )
        ts, snap, targets = cached
        from_cache = True
    return ChainResult(root, new_roots, ts, snap, targets, bundle_targets, from_cache)
