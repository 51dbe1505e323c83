"""Boot firmware decisions at install, as aktualizr-lite's BootloaderLite::installNotify and
RootfsTreeManager::verifyBootloaderUpdate make them (src/bootloader/bootloaderlite.cc,
src/rootfstreemanager.cc), and the version file as U-Boot imports it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest

from usbupdater.bootloader import (
    BootFirmwareRollbackError,
    FirmwareAction,
    decide_boot_firmware,
    parse_firmware_version,
    plan_boot_firmware,
)
from usbupdater.errors import AdapterError, ExitCode
from usbupdater.sim.boot import FileBootloader

SKIP, ARM, REFUSE = FirmwareAction.SKIP, FirmwareAction.ARM, FirmwareAction.REFUSE


@pytest.mark.parametrize(
    ("mode", "target", "current", "protection", "action"),
    [
        # modes without a firmware update armed here
        ("none", "2", "1", False, SKIP),
        ("uboot_generic", "2", "1", False, SKIP),
        ("fioefi", "2", "1", False, SKIP),  # aktualizr-lite arms it with FIO_OSTREE_TARGET_SYSROOT
        # no version file in the new deployment: no firmware update
        ("uboot_masked", None, "1", False, SKIP),
        ("uboot_masked", None, "1", True, SKIP),
        # versions differ (text comparison, so hashes work too): arm
        ("uboot_masked", "2", "1", False, ARM),
        ("fiovb", "2", "1", False, ARM),
        ("uboot_masked", "1", "2", False, ARM),  # older, no rollback protection
        ("uboot_masked", "abc1", "abc0", False, ARM),
        ("uboot_masked", "7", "07", True, ARM),  # numerically equal, textually not
        # current unreadable/unset: arm (aktualizr-lite: current "unknown")
        ("uboot_masked", "2", None, False, ARM),
        ("uboot_masked", "2", None, True, ARM),
        ("uboot_masked", "0", None, True, ARM),
        # same version: nothing to do
        ("uboot_masked", "2", "2", False, SKIP),
        ("fiovb", "2", "2", True, SKIP),
        # rollback protection
        ("uboot_masked", "3", "2", True, ARM),
        ("uboot_masked", "1", "2", True, REFUSE),
        ("fiovb", "1", "2", True, REFUSE),
        ("uboot_masked", "1", "garbage", True, ARM),  # a non-numeric current counts as 0
        ("uboot_masked", "abc", "1", True, REFUSE),  # the new version must be a number
        ("uboot_masked", "-1", "0", True, REFUSE),
        ("uboot_masked", "", "1", True, REFUSE),  # version file without a version
        ("uboot_masked", "", "1", False, SKIP),  # ... is no firmware update without it
    ],
)
def test_decision_table(
    mode: str, target: Optional[str], current: Optional[str], protection: bool, action: object
) -> None:
    d = decide_boot_firmware(mode, target, current, protection)
    assert d.action is action, d.reason
    assert dict(d.sets) == ({"bootupgrade_available": "1"} if action is ARM else {})


def test_refusal_names_both_versions() -> None:
    d = decide_boot_firmware("uboot_masked", "3", "5", True)
    assert "from version 5 to 3" in d.reason and "rollback_protection=1" in d.reason


def test_versions_in_messages_are_made_printable() -> None:
    d = decide_boot_firmware("uboot_masked", "1\x1b[31m", "2", True)
    assert "\x1b" not in d.reason


@pytest.mark.parametrize(
    ("data", "version"),
    [
        (None, None),
        (b"bootfirmware_version=7\n", "7"),
        (b"bootfirmware_version=7", "7"),
        (b"  bootfirmware_version = 12 \r\n", "12"),
        (b"other=1\nbootfirmware_version=5\n", "5"),
        (b"bootfirmware_version=\n", ""),
        (b"boot=100\n", ""),  # aktualizr-lite: malformed
        (b"", ""),
        (b"bootfirmware_version=\xff\n", ""),
        (b"bootfirmware_version=" + b"9" * 129, ""),  # longer than U-Boot keeps
    ],
)
def test_version_file(data: Optional[bytes], version: Optional[str]) -> None:
    assert parse_firmware_version(data) == version


def _env(tmp_path: Path, mode: str = "uboot_masked", **values: str) -> FileBootloader:
    bl = FileBootloader(tmp_path / "env.json", mode=mode)
    bl.write_all(dict(values))
    return bl


def test_plan_reads_the_bootloader_and_writes_nothing(tmp_path: Path) -> None:
    bl = _env(tmp_path, bootfirmware_version="1", rollback_protection="0")
    d = plan_boot_firmware(bl, lambda: b"bootfirmware_version=2\n")
    assert d.action is ARM
    assert bl.get("bootupgrade_available") is None
    d.apply(bl)
    assert bl.get("bootupgrade_available") == "1"


def test_plan_refuses_with_rollback_protection(tmp_path: Path) -> None:
    bl = _env(tmp_path, bootfirmware_version="5", rollback_protection="1")
    with pytest.raises(BootFirmwareRollbackError) as err:
        plan_boot_firmware(bl, lambda: b"bootfirmware_version=3\n")
    assert err.value.code == ExitCode.ERROR  # aktualizr-lite: kInstallFailed
    assert "from version 5 to 3" in err.value.reason


def test_plan_does_not_read_the_file_in_other_modes(tmp_path: Path) -> None:
    def boom() -> bytes:
        raise AssertionError("read")

    assert plan_boot_firmware(_env(tmp_path, mode="uboot_generic"), boom).action is SKIP


def test_unreadable_version_file_is_malformed(tmp_path: Path) -> None:
    def unsafe() -> bytes:
        raise AdapterError("usr/lib/firmware/version.txt in deployment x: is a symbolic link")

    bl = _env(tmp_path, bootfirmware_version="1", rollback_protection="0")
    assert plan_boot_firmware(bl, unsafe).action is SKIP
    bl.set("rollback_protection", "1")
    with pytest.raises(BootFirmwareRollbackError):
        plan_boot_firmware(bl, unsafe)
