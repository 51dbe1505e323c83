"""The bundles on a stick, and each one's verdict for this device (the I/O of stick_choice).

`bundle_names` lists the top-level directories holding `tuf/targets.json` without following
links (the service's media.py uses it too). `verdict` verifies one directory's TUF metadata with
the trust code and runs target selection against the device's facts, exactly as `check` does,
but reads no app content and persists nothing. `resolve` turns what `-s` named into the bundle
directory: the stick itself when it is a bundle, its one bundle, or the one `choose` picks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from usbupdater import safeio
from usbupdater.errors import ExitCode, NoTargetError, UpdaterError
from usbupdater.stick_choice import Choice, Verdict, choose

if TYPE_CHECKING:
    from usbupdater.bundle import Bundle
    from usbupdater.checkin import CheckIn
    from usbupdater.config import Config
    from usbupdater.core import Device
    from usbupdater.selection import DeviceFacts

MARKER = "tuf/targets.json"
MAX_ENTRIES = 1000  # top-level entries looked at; a stick with more is not a bundle stick


def bundle_names(root: Path) -> Optional[list[str]]:
    """None when `root` is itself a bundle; else the top-level directories that hold one."""
    rootfd = safeio.open_root(root)
    try:
        if safeio.exists(rootfd, MARKER):
            return None
        found = []
        with os.scandir(rootfd) as it:
            for n, entry in enumerate(it):
                if n >= MAX_ENTRIES:
                    break
                name = entry.name
                if name.startswith(".") or safeio.is_ignored(name):
                    continue
                try:
                    safeio.check_component(name)
                    if safeio.exists(rootfd, f"{name}/{MARKER}"):
                        found.append(name)
                except (OSError, safeio.UnsafePathError):
                    continue  # a file, a link, a bad name or unreadable: not a bundle
        return sorted(found)
    finally:
        os.close(rootfd)


@dataclass(frozen=True)
class DeviceView:
    """What selection needs to know about the device (as `check` gathers it)."""

    facts: DeviceFacts
    booted: Optional[str] = None
    app_installed: Optional[Callable[[str, str], bool]] = None


def device_view(cfg: Config, dev: Device) -> DeviceView:
    """Gathered as `check` does: state, the booted commit, preloaded apps (nothing written)."""
    from usbupdater.apps.preload import DeviceAppStore
    from usbupdater.checkin import device_facts, failed_targets
    from usbupdater.core import booted_or_none

    facts = device_facts(cfg, dev.state.load(), failed_targets(dev.state.history()))
    booted = booted_or_none(dev, quiet=True)
    apps = DeviceAppStore(cfg.pacman.reset_apps_root, persist=False)
    return DeviceView(facts, booted, apps.has_app_version if cfg.pacman.apps_enabled else None)


def select_in_view(cfg: Config, bundle: Bundle, view: DeviceView) -> CheckIn:
    """Trust and selection for the device `view` describes (what `check` and `pick` decide)."""
    from usbupdater.checkin import select, trust

    return select(
        trust(cfg, bundle), bundle, view.facts, booted=view.booted, app_installed=view.app_installed
    )


def verdict(cfg: Config, path: Path, name: str, view: DeviceView) -> Verdict:
    """Verify the metadata of the bundle at `path` and say what it offers this device."""
    from usbupdater.bundle import Bundle

    try:
        with Bundle.open(path) as bundle:
            result = select_in_view(cfg, bundle, view)
    except UpdaterError as exc:
        return Verdict(name, why=f"metadata not accepted: {exc.reason}")
    except (OSError, safeio.UnsafePathError) as exc:
        return Verdict(name, why=f"cannot read it: {exc}")
    sel = result.selection
    if not sel.candidates:
        return Verdict(name, why=sel.error.reason if sel.error else "no target for this device")
    best = sel.candidates[0].target
    return Verdict(name, best.version, best.name)


def pick(
    cfg: Config, stick: Path, names: list[str], view: DeviceView
) -> tuple[Choice, list[Verdict]]:
    verdicts = [verdict(cfg, stick / n, n, view) for n in names]
    return choose(verdicts), verdicts


def resolve(cfg: Config, src: Path, view: DeviceView) -> Path:
    """The bundle directory `-s src` means (see the module text); raises 6 or 1 when a stick
    with several bundles has none, or no single newest one, for this device."""
    try:
        names = bundle_names(src)
    except (OSError, safeio.UnsafePathError):
        return src  # whatever the stick's problem, opening it as a bundle reports it
    if not names:
        return src
    if len(names) == 1:
        return src / names[0]
    choice, _ = pick(cfg, src, names, view)
    if choice.chosen is None:
        if choice.code == ExitCode.NO_TARGET:
            raise NoTargetError(choice.message)
        raise UpdaterError(choice.message)
    return src / choice.chosen
