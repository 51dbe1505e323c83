"""Check-in: what a bundle offers this device, decided without changing anything.

Trust (the bundle's TUF metadata against the device's roots), target selection (pure, over the
verified targets and the device's facts), then the selected target's app content verified blob by
blob. `check` runs `select` then `verify_content` from the bundle; `install` runs the same two
with a source that stores the blobs, so both always agree on what would be installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Optional

from usbupdater.apps.model import BlobSource, VerifiedApp
from usbupdater.apps.verify import verify_apps
from usbupdater.bundle import Bundle
from usbupdater.config import Config
from usbupdater.errors import ExitCode, UpdaterError
from usbupdater.hostinfo import machine_platform
from usbupdater.selection import (
    Action,
    CurrentTarget,
    DeviceFacts,
    Selection,
    Stage,
    required_apps,
    select_target,
)
from usbupdater.state import DeviceState, TargetRecord
from usbupdater.target import InvalidTargetError, Target, parse_target
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
    cur = state.current
    return DeviceFacts(
        hardware_id=cfg.provision.primary_ecu_hardware_id,
        tags=cfg.pacman.tags,
        compose_apps=cfg.pacman.compose_apps,
        reset_apps=cfg.pacman.reset_apps or (),
        apps_enabled=cfg.pacman.apps_enabled,
        current=CurrentTarget(cur.name, cur.version, cur.sha256, dict(cur.apps)) if cur else None,
        failed_targets=failed,
    )


def as_current(t: TargetRecord) -> CurrentTarget:
    return CurrentTarget(t.name, t.version, t.sha256, dict(t.apps))


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
        if t.sha256 == booted and device.hardware_id in t.hardware_ids:
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
            t.name, t.version, t.sha256, apps, {**t.custom, "usbupdater-initial": True}
        )
    custom = {"usbupdater-initial": True, "usbupdater-apps-unknown": True}
    return TargetRecord(INITIAL_TARGET, 0, booted, {}, custom)


def select(
    cfg: Config,
    bundle: Bundle,
    device: DeviceFacts,
    *,
    target_name: Optional[str] = None,
    force: bool = False,
    now: Optional[datetime] = None,
    booted: Optional[str] = None,
    app_installed: Optional[Callable[[str, str], bool]] = None,
) -> CheckIn:
    """Verify trust (raises 11/12/14/15) and select; app content is not read yet.

    `booted` (the booted commit) lets a device without a recorded current target know its
    initial one; `app_installed` tells which of its apps it has.
    """
    session = TrustSession.from_config(cfg, bundle.path / "tuf", now)
    trusted = session.verify()
    initial = None
    if device.current is None and booted:
        initial = initial_target(trusted.targets, device, booted, app_installed)
        device = replace(
            device,
            current=CurrentTarget(
                initial.name, initial.version, initial.sha256, dict(initial.apps)
            ),
        )
    names = trusted.bundle_targets.targets if trusted.bundle_targets else None
    selection = select_target(trusted.targets, names, device, bundle, target_name, force)
    return CheckIn(trusted, device, selection, session, initial=initial)


def verify_content(result: CheckIn, blobs: BlobSource) -> CheckIn:
    """Verify the selected target's apps blob by blob (when there is something to install).

    `blobs` is where they are read: the bundle, or for `install` a source that copies each blob
    into the device store in the same read.
    """
    sel = result.selection
    chosen = sel.selected
    if sel.error is not None or chosen is None or sel.action is not Action.INSTALL:
        return result
    try:
        arch, variant = machine_platform()  # matched as composectl does (apps.verify)
        apps = verify_apps(blobs, chosen.apps, arch, variant)
    except UpdaterError as exc:
        return replace(result, content_error=exc)
    return replace(result, apps=apps)


# --- presentation ------------------------------------------------------------------------------


def describe(result: CheckIn) -> dict[str, Any]:
    """A JSON-able account of every target and why it would or would not be installed."""
    sel = result.selection
    chosen = sel.selected.target.name if sel.selected else None
    targets: list[dict[str, Any]] = []
    for c in sel.candidates:
        t = c.target
        status = "selected" if t.name == chosen and sel.error is None else "installable"
        if t.name == chosen and sel.action is Action.ALREADY_INSTALLED:
            status = "installed"
        targets.append(
            {
                "name": t.name,
                "version": t.version,
                "ostree": t.sha256,
                "status": status,
                "reason": c.apps_note,
                "apps": {a: {"uri": u, "on": a in c.apps} for a, u in sorted(t.apps.items())},
            }
        )
    for r in sel.rejections:
        rt = r.target
        targets.append(
            {
                "name": r.name,
                "version": rt.version if rt else None,
                "ostree": rt.sha256 if rt else None,
                "status": "not-for-device" if r.stage <= Stage.NOT_FOR_DEVICE else "rejected",
                "reason": r.reason,
                "apps": {a: {"uri": u, "on": False} for a, u in sorted(rt.apps.items())}
                if rt
                else {},
            }
        )
    targets.sort(key=lambda d: (d["version"] is None, -(d["version"] or 0), d["name"]))
    md = result.trusted
    bt = md.bundle_targets
    return {
        "code": int(result.code),
        "error": result.error.reason if result.error else None,
        "selected": chosen,
        "action": sel.action.value if sel.action else None,
        "device": {
            "hardware_id": result.device.hardware_id,
            "tags": list(result.device.tags),
            "current": result.device.current.name if result.device.current else None,
        },
        "metadata": {
            "root_version": md.root_version,
            "targets_version": md.targets_version,
            "expires": md.expires.isoformat(),
            "from_device_cache": md.from_device_cache,
            "bundle": {"type": bt.type, "tag": bt.tag, "targets": list(bt.targets)} if bt else None,
        },
        "targets": targets,
    }


def format_text(doc: Mapping[str, Any]) -> str:
    """The account for a person at a terminal."""
    lines = []
    md = doc["metadata"]
    bundle = md["bundle"]
    origin = (
        f"bundle for tag {bundle['tag']} ({bundle['type']})"
        if bundle
        else "legacy bundle (no bundle-targets.json)"
    )
    lines.append(
        f"Bundle metadata: verified, {origin}; targets v{md['targets_version']}, "
        f"root v{md['root_version']}, expires {md['expires']}"
    )
    if md["from_device_cache"]:
        lines.append("  (the bundle's metadata is older than the device's: using the device's)")
    dev = doc["device"]
    lines.append(
        f"Device: {dev['hardware_id']}, tags {', '.join(dev['tags']) or '(none)'}, "
        f"running {dev['current'] or 'an unrecorded target'}"
    )
    lines.append("Found Targets:")
    shown = [t for t in doc["targets"] if t["status"] != "not-for-device"]
    for t in shown:
        mark = {"selected": "*", "installed": "="}.get(t["status"], " ")
        lines.append(f" {mark} {t['name']} (version {t['version']}): {t['status']}")
        if t["ostree"]:
            lines.append(f"\tostree: {t['ostree']}")
        for app, a in t["apps"].items():
            lines.append(f"\t\t({'on' if a['on'] else 'off'}) {app} -> {a['uri']}")
        lines.append(f"\t{t['reason']}")
    hidden = len(doc["targets"]) - len(shown)
    if hidden:
        lines.append(f"   ({hidden} other target(s) are not for this device; --json lists them)")
    if doc["error"]:
        lines.append(f"Result: {doc['error']}")
    elif doc["action"] == Action.ALREADY_INSTALLED.value:
        lines.append(f"Result: the device already runs {doc['selected']}")
    else:
        lines.append(f"Result: {doc['selected']} can be installed")
    return "\n".join(lines)
