"""Which target to install: pure functions over verified metadata and device facts.

Rules (spec section 3, aklite-offline's CheckInLocal and GetTargetToInstall): a candidate is an
`OSTREE` target for this hardware id, carrying one of the device's tags (when it has tags),
listed by bundle-targets.json (when present), whose commit and required apps are in the bundle,
and which has not failed on this device before (unless forced). The default is the highest
version; `--target NAME` picks one. A lower version than the current one is refused unless
forced; the current target with the same commit and apps is "already installed".

Nothing here raises on a bad target: every target ends up either a candidate or a rejection
with a reason a person can read, so `check` can show all of them. The errors the install path
needs (6, 8, 20, 102) are carried in `Selection.error` and raised by `Selection.require`.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from usbupdater.errors import (
    ContentMissingError,
    DowngradeRefusedError,
    NoTargetError,
    TargetNotFoundError,
    UpdaterError,
)
from usbupdater.target import InvalidTargetError, Target, TargetRecord, parse_target


class BundleContent(Protocol):
    """What selection asks the bundle; `usbupdater.bundle.Bundle` implements it."""

    def commit_problem(self, commit: str) -> Optional[str]: ...

    def app_problem(self, name: str, uri: str) -> Optional[str]: ...


@dataclass(frozen=True)
class DeviceFacts:
    hardware_id: str
    tags: tuple[str, ...] = ()
    compose_apps: Optional[tuple[str, ...]] = None  # [pacman] compose_apps; None: all apps
    reset_apps: tuple[str, ...] = ()  # [pacman] reset_apps ("*": all): required whatever else
    apps_enabled: bool = True  # [pacman] type "ostree" means no apps
    current: Optional[TargetRecord] = None  # what the device runs now
    failed_targets: frozenset[str] = frozenset()


class Stage(enum.IntEnum):
    """How far a target got; the furthest stage decides the error when nothing is left."""

    INVALID = 0  # unusable metadata
    NOT_FOR_DEVICE = 1  # format, hardware id, tag, or not in bundle-targets
    CONTENT = 2  # for this device, but its content is not in the bundle
    FAILED = 3  # complete, but it failed on this device before


@dataclass(frozen=True)
class Rejection:
    name: str
    reason: str
    stage: Stage
    target: Optional[Target] = None


@dataclass(frozen=True)
class Candidate:
    target: Target
    apps: Mapping[str, str]  # the apps required (and to be run): app -> uri
    apps_note: str  # why these apps, e.g. "fetched-apps shortlist: a, b"


class Action(enum.Enum):
    INSTALL = "install"
    ALREADY_INSTALLED = "already-installed"


@dataclass(frozen=True)
class Selection:
    candidates: tuple[Candidate, ...]  # installable, highest version first
    rejections: tuple[Rejection, ...]
    selected: Optional[Candidate] = None
    action: Optional[Action] = None
    error: Optional[UpdaterError] = None

    def require(self) -> tuple[Candidate, Action]:
        """The selected candidate and what to do, or raise the error (6, 8, 20, 102)."""
        if self.error is not None:
            raise self.error
        assert self.selected is not None and self.action is not None
        return self.selected, self.action


def required_apps(target: Target, device: DeviceFacts) -> tuple[dict[str, str], str]:
    """Apps the target needs on this device, and why (aktualizr-lite's offline rules)."""
    if not device.apps_enabled:
        return {}, "apps are off on this device ([pacman] type = ostree)"
    apps = dict(target.apps)
    notes = []
    fetched = target.fetched_apps
    if fetched is not None:
        if not fetched.uri:
            return {}, "apps were turned off for this bundle (fetched-apps.uri is empty)"
        if fetched.shortlist:
            apps = {a: u for a, u in apps.items() if a in fetched.shortlist}
            notes.append(f"fetched-apps shortlist: {', '.join(fetched.shortlist)}")
            if not apps:
                return {}, f"{notes[0]} names none of the target's apps"
    if device.compose_apps is not None:
        # aktualizr-lite's required apps are compose_apps plus reset_apps
        # (src/composeappmanager.cc getRequiredApps): a reset app stays required.
        reset = set(device.reset_apps)
        apps = {
            a: u for a, u in apps.items() if a in device.compose_apps or a in reset or "*" in reset
        }
        notes.append(f"[pacman] compose_apps: {', '.join(device.compose_apps) or '(empty)'}")
        if reset:
            notes.append(f"[pacman] reset_apps: {', '.join(sorted(reset))}")
    return apps, "; ".join(notes) or "all of the target's apps"


def _for_device(t: Target, device: DeviceFacts, listed: Optional[frozenset[str]]) -> Optional[str]:
    if listed is not None and t.name not in listed:
        return "not listed in the bundle's bundle-targets.json"
    if t.target_format != "OSTREE":
        return f"targetFormat is {t.target_format or 'missing'}, not OSTREE"
    if device.hardware_id not in t.hardware_ids:
        ids = ", ".join(t.hardware_ids) or "none"
        return f"for hardware ids {ids}, not {device.hardware_id}"
    if device.tags and not set(device.tags) & set(t.tags):
        tags = ", ".join(t.tags) or "none"
        return f"tags {tags} share none with the device's ({', '.join(device.tags)})"
    return None


def evaluate(
    targets: Mapping[str, Mapping[str, Any]],
    bundle_target_names: Optional[Collection[str]],
    device: DeviceFacts,
    content: BundleContent,
    force: bool = False,
) -> tuple[list[Candidate], list[Rejection]]:
    """Sort every target into a candidate (highest version first) or a reasoned rejection."""
    listed = frozenset(bundle_target_names) if bundle_target_names is not None else None
    candidates: list[Candidate] = []
    rejections: list[Rejection] = []
    for name in sorted(targets):
        try:
            t = parse_target(name, targets[name])
        except InvalidTargetError as exc:
            rejections.append(Rejection(name, f"invalid metadata: {exc}", Stage.INVALID))
            continue
        why = _for_device(t, device, listed)
        if why:
            rejections.append(Rejection(name, why, Stage.NOT_FOR_DEVICE, t))
            continue
        apps, note = required_apps(t, device)
        problems = [content.commit_problem(t.commit)]
        problems += [content.app_problem(a, u) for a, u in sorted(apps.items())]
        missing = [p for p in problems if p]
        if missing:
            rejections.append(Rejection(name, "; ".join(missing), Stage.CONTENT, t))
            continue
        if name in device.failed_targets and not force:
            reason = "failed on this device before (use --force to try again)"
            rejections.append(Rejection(name, reason, Stage.FAILED, t))
            continue
        candidates.append(Candidate(t, apps, note))
    candidates.sort(key=lambda c: (c.target.version, c.target.name), reverse=True)
    return candidates, rejections


def _no_candidate_error(rejections: list[Rejection], device: DeviceFacts) -> UpdaterError:
    furthest = max((r.stage for r in rejections), default=Stage.INVALID)
    stuck = [r for r in rejections if r.stage == furthest]
    stuck.sort(key=lambda r: (r.target.version if r.target else -1, r.name), reverse=True)
    first = stuck[0] if stuck else None
    detail = f": {first.name}: {first.reason}" if first else ": the bundle lists no targets"
    if furthest == Stage.CONTENT:
        return ContentMissingError(f"no target has its content in the bundle{detail}")
    tags = f" and tags {', '.join(device.tags)}" if device.tags else ""
    if furthest == Stage.FAILED:
        return NoTargetError(f"every installable target failed before{detail}")
    return NoTargetError(f"no target for hardware id {device.hardware_id}{tags}{detail}")


def select_target(
    targets: Mapping[str, Mapping[str, Any]],
    bundle_target_names: Optional[Collection[str]],
    device: DeviceFacts,
    content: BundleContent,
    target_name: Optional[str] = None,
    force: bool = False,
) -> Selection:
    """Evaluate every target and pick one; never raises (see `Selection.require`)."""
    candidates, rejections = evaluate(targets, bundle_target_names, device, content, force)
    result = Selection(tuple(candidates), tuple(rejections))

    def fail(error: UpdaterError, selected: Optional[Candidate] = None) -> Selection:
        return Selection(result.candidates, result.rejections, selected, None, error)

    if not candidates:
        return fail(_no_candidate_error(rejections, device))
    if target_name is None:
        chosen = candidates[0]
    else:
        found = [c for c in candidates if c.target.name == target_name]
        if not found:
            why = next((r.reason for r in rejections if r.name == target_name), None)
            reason = f": {why}" if why else " in the bundle's metadata"
            verb = "is not installable" if why else "is not"
            return fail(TargetNotFoundError(f"target {target_name} {verb}{reason}"))
        chosen = found[0]
    current = device.current
    t = chosen.target
    if current is not None:
        if (
            t.name == current.name
            and t.commit == current.commit
            and dict(chosen.apps) == dict(current.apps)
        ):
            return Selection(result.candidates, result.rejections, chosen, Action.ALREADY_INSTALLED)
        if t.version < current.version and not force:
            return fail(
                DowngradeRefusedError(
                    f"refusing to downgrade from {current.name} (version {current.version}) to "
                    f"{t.name} (version {t.version}); use --force to allow it"
                ),
                chosen,
            )
    return Selection(result.candidates, result.rejections, chosen, Action.INSTALL)
