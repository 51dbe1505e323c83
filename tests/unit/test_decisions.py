from __future__ import annotations

import pytest

from usbupdater import decisions
from usbupdater.decisions import AppsFailurePlan, Situation
from usbupdater.errors import ExitCode
from usbupdater.state import PendingInstall
from usbupdater.target import TargetRecord

OLD = TargetRecord("t-1", 1, "a" * 64, {"web": "u1"})
NEW = TargetRecord("t-2", 2, "b" * 64, {"web": "u2"})
UNKNOWN = TargetRecord("initial-target", 0, "c" * 64, {}, {"usbupdater-apps-unknown": True})


def pending(reboot: bool = True, previous: TargetRecord | None = OLD) -> PendingInstall:
    return PendingInstall(NEW, previous, reboot, "txn")


@pytest.mark.parametrize(
    ("changed", "supports", "block", "pending_fw", "blocked"),
    [
        (True, True, True, True, True),
        (True, True, False, True, False),  # ostree_update_block off
        (True, False, True, True, False),  # rollback_mode without boot firmware
        (False, True, True, True, False),  # apps only: no new rootfs to hold back
        (True, True, True, False, False),
    ],
)
def test_boot_firmware_blocks(changed, supports, block, pending_fw, blocked) -> None:
    assert decisions.boot_firmware_blocks(changed, supports, block, pending_fw) is blocked


def test_install_code() -> None:
    assert decisions.install_code(True) == ExitCode.NEEDS_REBOOT
    assert decisions.install_code(False) == ExitCode.RESTART_ENGINE


def test_run_situation() -> None:
    assert decisions.run_situation(pending(), True, NEW.commit) is Situation.ON_TARGET
    assert decisions.run_situation(pending(), False, OLD.commit) is Situation.NOT_REBOOTED
    assert decisions.run_situation(pending(), True, OLD.commit) is Situation.BOOT_ROLLED_BACK
    assert decisions.run_situation(pending(), True, None) is Situation.BOOT_ROLLED_BACK
    # apps-only: no reboot was asked for, the booted commit is the target's
    assert decisions.run_situation(pending(False), False, NEW.commit) is Situation.ON_TARGET


def test_apps_failure_plan() -> None:
    assert decisions.apps_failure_plan(None, NEW.commit) is AppsFailurePlan.NO_TARGET
    assert decisions.apps_failure_plan(OLD, NEW.commit) is AppsFailurePlan.REDEPLOY
    same_rootfs = TargetRecord("t-0", 0, NEW.commit, {"web": "u0"})
    assert decisions.apps_failure_plan(same_rootfs, NEW.commit) is AppsFailurePlan.RESTORE_APPS


def test_boot_rollback_code() -> None:
    assert decisions.boot_rollback_code(OLD, True) == ExitCode.ROLLED_BACK
    assert decisions.boot_rollback_code(OLD, False) == ExitCode.NO_ROLLBACK_TARGET
    assert decisions.boot_rollback_code(UNKNOWN, False) == ExitCode.ROLLED_BACK_UNKNOWN_APPS
    assert decisions.boot_rollback_code(None, False) == ExitCode.ROLLED_BACK_UNKNOWN_APPS


def test_run_success_code() -> None:
    assert decisions.run_success_code(False) == ExitCode.OK
    assert decisions.run_success_code(True) == ExitCode.BOOT_FIRMWARE
