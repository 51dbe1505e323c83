"""Check-in: what a bundle offers this device, decided without changing anything.

Trust (the bundle's TUF metadata against the device's roots), target selection (pure, over the
verified targets and the device's facts), then the selected target's app content verified blob by
blob. `check` runs `select` then `verify_content` from the bundle; `install` runs the same two
with a source that stores the blobs, so both always agree on what would be installed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from usbupdater.apps.model import BlobSource, VerifiedApp
from usbupdater.apps.verify import verify_apps
from usbupdater.bundle import Bundle
from usbupdater.config import Config
from usbupdater.errors import ExitCode, UpdaterError
from usbupdater.hostinfo import machine_platform
from usbupdater.selection import (
    Action,
    DeviceFacts,
    Selection,
    required_apps,
    select_target,
)
from usbupdater.state import DeviceState
from usbupdater.target import InvalidTargetError, Target, TargetRecord, parse_target
from usbupdater.trust import TrustedMetadata, TrustSession

INITIAL_TARGET = "initial-target"


@dataclass(frozen=True)
class CheckIn:
    trusted: TrustedMetadata
    device: DeviceFacts
    selection: Selection
    session: TrustSession  # `install` commits it once the device accepted the update
    apps: Mapping[str, VerifiedApp] = field(default_factory=dict)  # the selected target's
    content_error: Optional[UpdaterError] = None  # 8 or 80 from the app content
    initial: Optional[TargetRecord] = None  # what a never-updated device runs (see initial_target)

    @property
    def error(self) -> Optional[UpdaterError]:
        return self.selection.error or self.content_error

    @property
    def code(self) -> ExitCode:
        """check's exit code: the failure, 0 when already on the best target, else 16."""
        if self.error is not None:
            return self.error.code
        if self.selection.action is Action.ALREADY_INSTALLED:
            return ExitCode.OK
        return ExitCode.UPDATE_AVAILABLE


def failed_targets(history: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Targets whose last recorded outcome on this device is a failure."""
    last: dict[str, str] = {}
    for entry in history:
        target, outcome = entry.get("target"), entry.get("outcome")
        if isinstance(target, str) and isinstance(outcome, str):
            last[target] = outcome
    return frozenset(t for t, o in last.items() if o == "failed")


def device_facts(
    cfg: Config, state: DeviceState, failed: frozenset[str] = frozenset()
) -> DeviceFacts:
    return DeviceFacts(
        hardware_id=cfg.provision.primary_ecu_hardware_id,
        tags=cfg.pacman.tags,
        compose_apps=cfg.pacman.compose_apps,
        reset_apps=cfg.pacman.reset_apps or (),
        apps_enabled=cfg.pacman.apps_enabled,
        current=state.current,
        failed_targets=failed,
    )


def initial_target(
    targets: Mapping[str, Mapping[str, Any]],
    device: DeviceFacts,
    booted: str,
    app_installed: Optional[Callable[[str, str], bool]] = None,
) -> TargetRecord:
    """What a device that was flashed and never updated runs: the signed target whose commit
    it booted, with those of its required apps the device has installed (preloaded), else an
    unnamed target whose apps are unknown (a rollback to it restores the rootfs only: 110)."""
    matches = []
    for name, entry in targets.items():
        try:
            t = parse_target(name, entry)
        except InvalidTargetError:
            continue
        if t.commit == booted and device.hardware_id in t.hardware_ids:
            matches.append(t)
    if matches:
        # Several targets may share a commit (apps-only updates came later): the one whose apps
        # the device has is the one it runs; else the first one built from that commit.
        def installed(t: Target) -> dict[str, str]:
            apps, _ = required_apps(t, device)
            if app_installed is None:
                return apps
            return {a: u for a, u in apps.items() if app_installed(a, u)}

        def score(t: Target) -> tuple[bool, int, int]:
            have, need = installed(t), required_apps(t, device)[0]
            return (len(have) == len(need), len(have), -t.version)

        t = max(matches, key=score)
        apps = installed(t)
        return TargetRecord(
            t.name, t.version, t.commit, apps, {**t.custom, "usbupdater-initial": True}
        )
    custom = {"usbupdater-initial": True, "usbupdater-apps-unknown": True}
    return TargetRecord(INITIAL_TARGET, 0, booted, {}, custom)


def trust(cfg: Config, bundle: Bundle, now: Optional[datetime] = None) -> TrustSession:
    """The trust session of this device's configuration for the bundle's `tuf/`."""
    return TrustSession.from_config(cfg, bundle.path / "tuf", now)


def select(
    session: TrustSession,
    bundle: Bundle,
    device: DeviceFacts,
    *,
    target_name: Optional[str] = None,
    force: bool = False,
    booted: Optional[str] = None,
    app_installed: Optional[Callable[[str, str], bool]] = None,
) -> CheckIn:
    """Verify trust with `session` (raises 11/12/14/15) and select; app content is not read yet.

    `booted` (the booted commit) lets a device without a recorded current target know its
    initial one; `app_installed` tells which of its apps it has.
    """
    trusted = session.verify()
    initial = None
    if device.current is None and booted:
        initial = initial_target(trusted.targets, device, booted, app_installed)
        device = replace(device, current=initial)
    names = trusted.bundle_targets.targets if trusted.bundle_targets else None
    selection = select_target(trusted.targets, names, device, bundle, target_name, force)
    return CheckIn(trusted, device, selection, session, initial=initial)


def verify_content(
    result: CheckIn, blobs: BlobSource, platform: Optional[tuple[str, Optional[str]]] = None
) -> CheckIn:
    """Verify the selected target's apps blob by blob (when there is something to install).

    `blobs` is where they are read: the bundle, or for `install` a source that copies each blob
    into the device store in the same read. `platform` (architecture, variant): the images'
    platform; default this machine's (matched as composectl does, apps.verify).
    """
    sel = result.selection
    chosen = sel.selected
    if sel.error is not None or chosen is None or sel.action is not Action.INSTALL:
        return result
    try:
        arch, variant = platform or machine_platform()
        apps = verify_apps(blobs, chosen.apps, arch, variant)
    except UpdaterError as exc:
        return replace(result, content_error=exc)
    return replace(result, apps=apps)


# --- a kind of device (the office check) -------------------------------------------------------


@dataclass(frozen=True)
class DeviceKind:
    """A kind of device, to check a bundle for it without being one: no sysroot, no state."""

    hardware_id: str
    tags: tuple[str, ...]
    device_type: str  # "ci" or "prod": which roots, which bundle type
    roots: Path  # the device's shipped roots: `<roots>/{ci,prod}/N.root.json` or `N.root.json`
    platform: tuple[str, Optional[str]]  # the images' (architecture, variant)

    @property
    def roots_dir(self) -> Path:
        """The device's layout (`/usr/lib/sota/tuf`) or the one directory of roots."""
        sub = self.roots / ("prod" if self.device_type == "prod" else "ci")
        return sub if sub.is_dir() else self.roots


def check_kind(src: Path, kind: DeviceKind, now: Optional[datetime] = None) -> CheckIn:
    """`check` for a device of this kind that was never updated: its shipped roots only (no
    stored trust, no time floor), no current target, every app of the target; nothing written."""
    facts = DeviceFacts(
        hardware_id=kind.hardware_id,
        tags=kind.tags,
        compose_apps=None,
        reset_apps=(),
        apps_enabled=True,
        current=None,
    )
    with tempfile.TemporaryDirectory() as empty, Bundle.open(src) as bundle:
        session = TrustSession(
            bundle.path / "tuf",
            shipped_roots_dir=kind.roots_dir,
            device_type=kind.device_type,
            device_tags=kind.tags,
            store_dir=Path(empty) / "tuf",  # stays empty: `commit` is never called
            now=now,
        )
        return verify_content(select(session, bundle, facts), bundle, kind.platform)
