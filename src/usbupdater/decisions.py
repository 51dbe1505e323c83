"""What to do next: the core's decisions as plain functions over data (no I/O).

`core` gathers the facts (booted commit, reboot sentinel, bootloader flags, state) and acts on
what these functions return, so every branch of aklite-offline's contract is unit-tested here.
"""

from __future__ import annotations

import enum
from typing import Optional

from usbupdater.errors import ExitCode
from usbupdater.state import PendingInstall
from usbupdater.target import TargetRecord


def boot_firmware_blocks(
    rootfs_changed: bool, supports_boot_firmware: bool, update_block: bool, fw_pending: bool
) -> bool:
    """A new rootfs waits while a boot firmware update is unconfirmed (install exits 90)."""
    return rootfs_changed and supports_boot_firmware and update_block and fw_pending


def install_code(rootfs_changed: bool) -> ExitCode:
    """100: reboot, then run; 101: apps only, restart the engine, then run."""
    return ExitCode.NEEDS_REBOOT if rootfs_changed else ExitCode.RESTART_ENGINE


class Situation(enum.Enum):
    """Where `run` finds the device."""

    NOT_REBOOTED = "not-rebooted"  # a new rootfs is deployed but the device has not rebooted
    BOOT_ROLLED_BACK = "boot-rolled-back"  # rebooted, but not into the pending commit
    ON_TARGET = "on-target"  # running the pending target's rootfs: start its apps


def run_situation(pending: PendingInstall, rebooted: bool, booted: Optional[str]) -> Situation:
    if booted == pending.target.commit:
        return Situation.ON_TARGET
    if pending.reboot_required and not rebooted:
        return Situation.NOT_REBOOTED
    return Situation.BOOT_ROLLED_BACK


class AppsFailurePlan(enum.Enum):
    REDEPLOY = "redeploy"  # previous target has another rootfs: deploy it, reboot, run (100)
    RESTORE_APPS = "restore-apps"  # same rootfs: start the previous apps now (99)
    NO_TARGET = "no-target"  # nothing known to go back to (120)


def apps_failure_plan(previous: Optional[TargetRecord], booted: Optional[str]) -> AppsFailurePlan:
    if previous is None:
        return AppsFailurePlan.NO_TARGET
    if previous.commit != booted:
        return AppsFailurePlan.REDEPLOY
    return AppsFailurePlan.RESTORE_APPS


def apps_known(target: Optional[TargetRecord]) -> bool:
    """Whether the device knows which apps a target ran (not so for an unknown initial one)."""
    return target is not None and not target.custom.get("usbupdater-apps-unknown", False)


def boot_rollback_code(previous: Optional[TargetRecord], apps_restored: bool) -> ExitCode:
    """After the bootloader fell back: 99 when the previous target runs again with its apps,
    110 when its apps are unknown, 120 when restoring them failed."""
    if not apps_known(previous):
        return ExitCode.ROLLED_BACK_UNKNOWN_APPS
    return ExitCode.ROLLED_BACK if apps_restored else ExitCode.NO_ROLLBACK_TARGET


def run_success_code(boot_fw_pending: bool) -> ExitCode:
    """0, or 90 when a boot firmware update waits for an (optional) confirming reboot."""
    return ExitCode.BOOT_FIRMWARE if boot_fw_pending else ExitCode.OK
