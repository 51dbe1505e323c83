"""`run`'s steps after the reboot (or the engine restart): which rootfs booted, start the
target's apps, then confirm it or roll back (exit codes 0/90/99/100/110/120).

Each path ends in one atomic write of `state.json` (`core.end_run`): its COMMIT POINT.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Optional

from usbupdater import decisions, log, progress, timefmt
from usbupdater.core import (
    Device,
    Outcome,
    add_history,
    booted_or_none,
    end_run,
    tell_aklite,
    write_current_target,
)
from usbupdater.decisions import AppsFailurePlan, Situation
from usbupdater.errors import (
    ExitCode,
    UpdaterError,
)
from usbupdater.state import DeviceState, PendingInstall
from usbupdater.target import TargetRecord

if TYPE_CHECKING:
    pass

logger = log.get_logger("core")


def run_locked(dev: Device, state: DeviceState, p: PendingInstall) -> Outcome:
    booted = booted_or_none(dev)
    rebooted = dev.sentinel.rebooted_since_set()
    situation = decisions.run_situation(p, rebooted, booted)
    logger.info(
        "run", pending=p.target.name, booted=booted, rebooted=rebooted, situation=situation.value
    )
    if situation is Situation.NOT_REBOOTED:
        return Outcome(
            ExitCode.NEEDS_REBOOT,
            f"{p.target.name} is installed but the device has not rebooted yet: reboot, then "
            "call `usbupdater run` again",
            p.target.name,
        )
    if situation is Situation.BOOT_ROLLED_BACK:
        return _after_boot_rollback(dev, state, p, booted)
    return _start_target(dev, state, p, booted)


def _start_apps(dev: Device, apps: Mapping[str, str], other: Optional[TargetRecord] = None) -> None:
    """Run exactly `apps`; only apps of `other` (the target being replaced) may be taken down,
    never a `[pacman] reset_apps` app nor a project no target lists (started by hand)."""
    if not dev.cfg.pacman.apps_enabled:
        return
    from usbupdater.apps.runner import run_apps

    contents = [dev.app_store.load_app(n, u) for n, u in sorted(apps.items())]
    known = set(apps) | set(other.apps if other is not None else ())
    run_apps(dev.apps, contents, known=known, keep=dev.cfg.pacman.reset_apps or ())


def _start_target(
    dev: Device, state: DeviceState, p: PendingInstall, booted: Optional[str]
) -> Outcome:
    t = p.target
    progress.announce("starting-apps", f"starting the apps of {t.name}")
    try:
        _start_apps(dev, t.apps, p.previous)
    except UpdaterError as exc:
        return _after_apps_failure(dev, state, p, booted, exc)
    # Success: the target becomes current.
    bl = dev.bootloader
    bl.set_boot_ok()  # bootcount=0, upgrade_available=0
    dev.sentinel.clear()
    fw = bl.supports_boot_firmware and bl.boot_fw_update_pending()
    code = decisions.run_success_code(fw)
    verb = "rolled back to" if p.rollback_of else "updated to"
    message = f"{verb} {t.name}" + ("; an optional reboot confirms the boot firmware" if fw else "")
    write_current_target(dev.cfg.current_target_file, t)
    outcome = Outcome(code, message, t.name)
    outcome_name = "rolled-back" if p.rollback_of else "updated"
    add_history(dev, f"{p.txn}/run", "run", t, code, outcome_name, message)
    tell_aklite(dev, t, "current")  # before the commit point: a re-run records it again
    end_run(dev, state, outcome, current=t)  # COMMIT POINT of run: the target is current
    _prune_images(dev, t, p.previous)
    _after_success_cleanup(dev, t, p.previous)
    return outcome


def _after_success_cleanup(
    dev: Device, target: TargetRecord, previous: Optional[TargetRecord]
) -> None:
    """Prune what usbupdater added and no target needs any more: the current target's and the
    rollback target's apps and `[pacman] reset_apps` stay. Failures never undo the update."""
    from usbupdater.trust import advance_time_floor, store_dir

    try:
        advance_time_floor(store_dir(dev.cfg), datetime.now(timezone.utc))
        if dev.cfg.pacman.apps_enabled:
            from usbupdater.apps.prune_images import stored_apps_to_keep

            # The current and rollback targets' apps stay, and `[pacman] reset_apps` apps
            # (aktualizr-lite handleRemovedApps keeps them too).
            keep = {
                *stored_apps_to_keep(dev.app_store, target, dev.cfg.pacman),
                *(previous.apps.items() if previous else ()),
            }
            dev.app_store.prune(sorted(keep), dev.cfg.pacman.reset_apps or ())
    except (UpdaterError, OSError) as exc:
        logger.warning("clean-up after the update failed", reason=str(exc))


def _prune_images(dev: Device, current: TargetRecord, rollback: Optional[TargetRecord]) -> None:
    """`[pacman] docker_prune`: drop engine images no app of these targets uses (never fails
    the update; see apps/prune_images.py)."""
    if not (dev.cfg.pacman.apps_enabled and dev.cfg.pacman.docker_prune):
        return
    from usbupdater.apps.prune_images import prune_after_update

    prune_after_update(dev.cfg, dev.app_store, current, rollback)


def _failed(dev: Device, p: PendingInstall, code: ExitCode, message: str) -> None:
    """Remember that the pending target failed (it is not installed again unless forced)."""
    failed = p.target if not p.rollback_of else None
    if failed is not None:
        add_history(dev, f"{p.txn}/run", "run", failed, code, "failed", message)


def _after_boot_rollback(
    dev: Device, state: DeviceState, p: PendingInstall, booted: Optional[str]
) -> Outcome:
    """The bootloader did not boot the new rootfs: make the old one the default again."""
    prev = p.previous
    progress.announce("rolling-back", f"{p.target.name} did not boot; back on the previous version")
    if booted is not None:
        dev.rootfs.rollback_to(booted)  # drops the failed deployment; no reboot needed
    dev.bootloader.set_boot_ok()
    dev.sentinel.clear()
    restored = False
    if decisions.apps_known(prev):
        assert prev is not None
        try:
            _start_apps(dev, prev.apps, p.target)
            restored = True
        except UpdaterError as exc:
            logger.error("restoring the previous apps failed", reason=exc.reason)
    code = decisions.boot_rollback_code(prev, restored)
    what = prev.name if prev else "the previous version"
    message = {
        ExitCode.ROLLED_BACK: f"{p.target.name} failed to boot; rolled back to {what}",
        ExitCode.ROLLED_BACK_UNKNOWN_APPS: f"{p.target.name} failed to boot; rolled back to "
        f"{what}, whose apps are unknown",
        ExitCode.NO_ROLLBACK_TARGET: f"{p.target.name} failed to boot; rolled back to {what} but "
        "its apps did not start",
    }[code]
    current = prev if prev is not None and booted == prev.commit else state.current
    _failed(dev, p, code, message)
    if not p.rollback_of:  # a failed rollback target was recorded failing already
        back = prev is not None and current is prev
        tell_aklite(dev, *((prev, "rollback", p.target) if back else (p.target, "failed")))
    outcome = Outcome(code, message, p.target.name)
    return end_run(dev, state, outcome, current=current)


def _after_apps_failure(
    dev: Device, state: DeviceState, p: PendingInstall, booted: Optional[str], exc: UpdaterError
) -> Outcome:
    """The new target's apps did not start: go back to the last good target."""
    prev = p.previous
    logger.error("apps failed to start", target=p.target.name, reason=exc.reason)
    if p.rollback_of:  # the rollback target's own apps failed: nothing left to try
        outcome = Outcome(
            ExitCode.NO_ROLLBACK_TARGET,
            f"rolling back to {p.target.name} failed too: {exc.reason}",
            p.target.name,
        )
        return end_run(dev, state, outcome)
    # An initial target whose apps are unknown is no rollback target (aktualizr-lite: 120).
    plan = decisions.apps_failure_plan(prev if decisions.apps_known(prev) else None, booted)
    why = f"apps of {p.target.name} failed: {exc.reason}"
    _failed(dev, p, ExitCode.NEEDS_REBOOT, why)
    if plan is AppsFailurePlan.NO_TARGET:
        tell_aklite(dev, p.target, "failed")
        outcome = Outcome(
            ExitCode.NO_ROLLBACK_TARGET, f"{why}; no rollback target is known", p.target.name
        )
        return end_run(dev, state, outcome)
    assert prev is not None
    if plan is AppsFailurePlan.REDEPLOY:
        progress.announce("rolling-back", f"{why}; redeploying {prev.name}")
        dev.rootfs.rollback_to(prev.commit)
        dev.bootloader.update_notify()
        dev.sentinel.set()
        txn = f"{p.txn}-rollback"  # stable: a re-run after a kill is the same rollback
        rollback = PendingInstall(prev, None, True, txn, timefmt.now(), rollback_of=p.target.name)
        tell_aklite(dev, prev, "pending", p.target)
        outcome = Outcome(
            ExitCode.NEEDS_REBOOT,
            f"{why}; rolling back to {prev.name}: reboot, then call `usbupdater run` again",
            p.target.name,
        )
        return end_run(dev, state, outcome, pending=rollback)
    progress.announce("rolling-back", f"{why}; restarting the apps of {prev.name}")
    try:
        _start_apps(dev, prev.apps, p.target)
    except UpdaterError as exc2:
        tell_aklite(dev, p.target, "failed")
        outcome = Outcome(
            ExitCode.NO_ROLLBACK_TARGET,
            f"{why}; restoring {prev.name} failed too: {exc2.reason}",
            p.target.name,
        )
        return end_run(dev, state, outcome)
    dev.bootloader.set_boot_ok()
    write_current_target(dev.cfg.current_target_file, prev)
    tell_aklite(dev, prev, "rollback", p.target)
    outcome = Outcome(ExitCode.ROLLED_BACK, f"{why}; rolled back to {prev.name}", p.target.name)
    return end_run(dev, state, outcome, current=prev)
