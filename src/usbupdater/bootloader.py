"""Boot variables aktualizr-lite uses, behind one interface, and reboot detection.

The bootloader decides which deployment boots: U-Boot (or OP-TEE's fiovb, or EFI variables via
fioefi) counts `bootcount` while `upgrade_available=1` and boots the previous deployment past
`bootlimit`, setting `rollback=1`. The updater only has to arm that (`update_notify`), disarm it
after a good boot (`set_boot_ok`), respect a pending boot firmware update
(`boot_fw_update_pending`) and arm one when a new deployment brings new firmware
(`plan_boot_firmware`). Backends follow `[bootloader] rollback_mode`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

from usbupdater import log, proc, textsafe
from usbupdater.config import ROLLBACK_MODES, BootloaderConfig
from usbupdater.errors import AdapterError, ConfigError, UpdaterError
from usbupdater.fsutil import atomic_write, makedirs_durable, remove_durable

logger = log.get_logger("bootloader")

BOOT_VARIABLES = (
    "bootcount",
    "upgrade_available",
    "rollback",
    "bootupgrade_available",
    "bootfirmware_version",
    "rollback_protection",
)
# What `update_notify` changes: saved before arming so a refused install can put them back.
ARMED_VARIABLES = ("bootcount", "upgrade_available", "rollback")
# Modes whose bootloader can update its own firmware (aktualizr-lite's list).
BOOT_FIRMWARE_MODES = ("uboot_masked", "fiovb", "fioefi")
# stderr of a print tool for a variable that simply is not set (fw_printenv: `## Error: "x" not
# defined`; OP-TEE based tools report the TEE item as not found).


class Bootloader(ABC):
    """Read and write boot variables; the update operations are built on `get`/`set`."""

    mode: str = "none"

    @property
    def supports_boot_firmware(self) -> bool:
        return self.mode in BOOT_FIRMWARE_MODES

    @abstractmethod
    def get(self, name: str) -> Optional[str]:
        """A variable's value, None when it is not set."""

    @abstractmethod
    def set(self, name: str, value: str) -> None:
        """Set one variable durably."""

    def get_int(self, name: str, default: int = 0) -> int:
        value = self.get(name)
        if value is None or value.strip() == "":
            return default
        try:
            return int(value.strip())
        except ValueError:
            raise AdapterError(f"boot variable {name}={value!r} is not a number") from None

    def unset(self, name: str) -> None:
        """Remove a variable; backends that cannot store "unset" set what unset reads as."""
        self.set(name, "0")

    def read_vars(self, names: tuple[str, ...] = ARMED_VARIABLES) -> dict[str, Optional[str]]:
        return {n: self.get(n) for n in names}

    def restore(self, saved: Mapping[str, Optional[str]]) -> None:
        """Put variables back as `read_vars` found them, writing only the ones that differ
        (so a write that failed before changing anything needs no write to undo)."""
        for name, value in saved.items():
            if self.get(name) == value:
                continue
            if value is None:
                self.unset(name)
            else:
                self.set(name, value)

    def update_notify(self) -> None:
        """Arm the bootloader's boot counting before rebooting into a new deployment."""
        self.set("bootcount", "0")
        self.set("upgrade_available", "1")
        self.set("rollback", "0")

    def set_boot_ok(self) -> None:
        """The booted deployment is good: stop counting boots."""
        self.set("bootcount", "0")
        self.set("upgrade_available", "0")

    def boot_fw_update_pending(self) -> bool:
        """A boot firmware update waits for a confirming reboot (only modes that have one)."""
        if not self.supports_boot_firmware:
            return False
        return self.get_int("bootupgrade_available") == 1


class NoBootloader(Bootloader):
    """`rollback_mode = none`: nothing to count, nothing to roll back."""

    mode = "none"

    def get(self, name: str) -> Optional[str]:
        return None

    def set(self, name: str, value: str) -> None:
        return None


class ToolBootloader(Bootloader):
    """Variables through a print/set tool pair (`fw_printenv -n`/`fw_setenv`, fiovb, fioefi)."""

    def __init__(
        self,
        mode: str,
        printenv: str,
        setenv: str,
        *,
        print_args: tuple[str, ...] = (),
        tool_dir: Optional[Path] = None,
        timeout: float = 30.0,
    ) -> None:
        self.mode = mode
        self.printenv = printenv
        self.setenv = setenv
        self.print_args = print_args
        self.tool_dir = Path(tool_dir) if tool_dir else None
        self.timeout = timeout

    def _tool(self, name: str) -> str:
        if self.tool_dir is not None:
            path = self.tool_dir / name
            if not os.access(path, os.X_OK):
                raise AdapterError(f"{name}: not found or not executable in {self.tool_dir}")
            return str(path)
        found = shutil.which(name)
        if not found:
            raise AdapterError(f"{name}: command not found (needed by rollback_mode {self.mode})")
        return found

    def _run(self, tool: str, args: list[str]) -> subprocess.CompletedProcess[str]:
        """The tool's exit code and output; a timeout or a failure to start is an AdapterError."""
        return proc.run([self._tool(tool), *args], tool, self.timeout, check=False)

    def unset(self, name: str) -> None:
        if self.mode in ("uboot_generic", "uboot_masked"):  # `fw_setenv NAME` deletes NAME
            done = self._run(self.setenv, [name])
            if done.returncode != 0:
                raise AdapterError(f"{self.setenv} {name} (unset) failed (exit {done.returncode})")
        else:
            super().unset(name)

    def get(self, name: str) -> Optional[str]:
        """The variable's value; one the tool cannot read counts as unset (0), whatever its
        wording, as aktualizr-lite's BootloaderLite reads them (a fresh or unreadable
        environment must not stop an update). The tool's own text goes to the debug log only."""
        done = self._run(self.printenv, [*self.print_args, name])
        if done.returncode != 0:
            logger.debug(
                "boot variable unreadable, counted as unset",
                tool=self.printenv,
                variable=name,
                code=done.returncode,
                detail=proc.sanitize(done.stderr or done.stdout or "", 200),
            )
            return None
        return done.stdout.strip()

    def set(self, name: str, value: str) -> None:
        done = self._run(self.setenv, [name, value])
        if done.returncode != 0:
            logger.debug(
                "boot variable write failed",
                tool=self.setenv,
                code=done.returncode,
                detail=proc.sanitize(done.stderr or done.stdout or "", 200),
            )
            raise AdapterError(f"{self.setenv} {name} {value} failed (exit {done.returncode})")


def make_bootloader(rollback_mode: str, *, tool_dir: Optional[Path] = None) -> Bootloader:
    """The backend for `[bootloader] rollback_mode` (the simulation injects its own)."""
    if rollback_mode not in ROLLBACK_MODES:
        raise ConfigError(f"[bootloader] rollback_mode: unknown mode {rollback_mode!r}")
    if rollback_mode == "none":
        return NoBootloader()
    if rollback_mode in ("uboot_generic", "uboot_masked"):
        return ToolBootloader(
            rollback_mode, "fw_printenv", "fw_setenv", print_args=("-n",), tool_dir=tool_dir
        )
    prefix = rollback_mode  # "fiovb" or "fioefi"
    return ToolBootloader(
        rollback_mode, f"{prefix}_printenv", f"{prefix}_setenv", tool_dir=tool_dir
    )


class RebootSentinel:
    """Tells whether the machine rebooted since `set()`, as aktualizr-lite does.

    The sentinel lives in a tmpfs directory (`/var/run/aktualizr-session`): a real reboot wipes
    it, nothing else does. It answers only "rebooted since set?"; whether a reboot was needed at
    all is the caller's durable state (aktualizr-lite's `need_reboot` flag in sql.db), because a
    missing sentinel also means "never set".
    """

    def __init__(self, directory: Path, name: str = "need_reboot") -> None:
        self.directory = Path(directory)
        self.path = self.directory / name

    @classmethod
    def from_config(cls, cfg: BootloaderConfig) -> RebootSentinel:
        return cls(cfg.reboot_sentinel_dir, cfg.reboot_sentinel_name)

    def set(self) -> None:
        makedirs_durable(self.directory)
        atomic_write(self.path, b"")

    def is_set(self) -> bool:
        return self.path.exists()

    def rebooted_since_set(self) -> bool:
        """True once the sentinel is gone; meaningful only while the caller's flag is on."""
        return not self.path.exists()

    def clear(self) -> None:
        remove_durable(self.path)


# --- boot firmware updates ---------------------------------------------------------------------
#
# Matched against foundriesio/aktualizr-lite `src/bootloader/bootloaderlite.cc` (`installNotify`,
# `getVersion`, `extractVersionValue`, `isRollbackProtectionEnabled`) and `src/rootfstreemanager.cc`
# (`verifyBootloaderUpdate`): after the new rootfs is deployed, its `usr/lib/firmware/version.txt`
# says which boot firmware it carries (`bootfirmware_version=N`); when that differs from the
# bootloader's `bootfirmware_version` (or the latter is unreadable) the updater sets
# `bootupgrade_available=1`. LmP's U-Boot script then installs the firmware on the next boots and,
# on the reboot after the update was confirmed (`upgrade_available=0`), copies the deployment's
# version into `bootfirmware_version` and clears `bootupgrade_available` (foundriesio/meta-lmp
# `meta-lmp-base/recipes-bsp/u-boot/u-boot-ostree-scr-fit/boot-upgrade-regular.cmd.in`,
# `boot-header.cmd.in` `bootcmd_bootenv`). With `rollback_protection=1` (an OTP-backed variable
# on closed boards; the same header reads it) an older version is refused before anything boots.

# Where a deployment names its boot firmware (aktualizr-lite BootloaderLite::VersionFile).
FIRMWARE_VERSION_FILE = "usr/lib/firmware/version.txt"
FIRMWARE_VERSION_FILE_MAX = 4096  # one `key=value` line in practice
FIRMWARE_VERSION_MAX = 128  # U-Boot keeps it in 128 bytes (`fiovb read_pvalue ... 128`)
# Modes whose updater arms boot firmware updates here. aktualizr-lite also does it for fioefi,
# but there the tools need FIO_OSTREE_TARGET_SYSROOT set to the deployment; not supported yet.
FIRMWARE_ARM_MODES = ("uboot_masked", "fiovb")
_VERSION_KEY = "bootfirmware_version"


class BootFirmwareRollbackError(UpdaterError):
    """`rollback_protection=1` and the new deployment's boot firmware is older than the
    bootloader's, or its version cannot be read (aktualizr-lite: an install failure, exit 1)."""


class FirmwareAction(Enum):
    SKIP = "skip"  # nothing to arm
    ARM = "arm"  # set bootupgrade_available=1
    REFUSE = "refuse"  # rollback protection: the install must not go on


@dataclass(frozen=True)
class FirmwareDecision:
    action: FirmwareAction
    reason: str
    sets: Mapping[str, str] = field(default_factory=dict)  # variables to write when armed

    def apply(self, bl: Bootloader) -> None:
        for name, value in self.sets.items():
            bl.set(name, value)


def _as_version_number(value: Optional[str]) -> Optional[int]:
    """An unsigned decimal version (aktualizr-lite casts with lexical_cast<uint64_t>)."""
    if value is None or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def decide_boot_firmware(
    mode: str, target: Optional[str], current: Optional[str], rollback_protection: bool
) -> FirmwareDecision:
    """What installing a deployment means for the boot firmware (pure; table-tested).

    `target`: the new deployment's version; None when it has no version file (no firmware to
    update), "" when the file names no usable version. `current`: the bootloader's
    `bootfirmware_version`, None when unreadable or unset. Versions are compared as text, as
    aktualizr-lite does (firmware "versions" may be hashes); only rollback protection needs them
    to be numbers, and then an unreadable or non-numeric current version counts as 0.
    """
    if mode not in FIRMWARE_ARM_MODES:
        return FirmwareDecision(FirmwareAction.SKIP, f"rollback_mode {mode} arms no boot firmware")
    if target is None:
        return FirmwareDecision(FirmwareAction.SKIP, "the new deployment has no firmware version")
    shown_target = textsafe.safe_text(target, FIRMWARE_VERSION_MAX) or "(none)"
    shown_current = textsafe.safe_text(current, FIRMWARE_VERSION_MAX) if current else "unknown"
    if rollback_protection:
        new = _as_version_number(target)
        if new is None:
            return FirmwareDecision(
                FirmwareAction.REFUSE,
                f"the new boot firmware version {shown_target} is not a number and boot "
                "firmware rollback protection is on (rollback_protection=1)",
            )
        cur = _as_version_number(current) or 0
        if new < cur:
            return FirmwareDecision(
                FirmwareAction.REFUSE,
                f"boot firmware rollback from version {shown_current} to {shown_target} refused: "
                "rollback protection is on (rollback_protection=1)",
            )
    elif target == "":
        return FirmwareDecision(
            FirmwareAction.SKIP, "the new deployment's firmware version file names no version"
        )
    if current is not None and target == current:
        return FirmwareDecision(
            FirmwareAction.SKIP, f"boot firmware stays at version {shown_current}"
        )
    return FirmwareDecision(
        FirmwareAction.ARM,
        f"boot firmware will be updated from version {shown_current} to {shown_target}",
        {"bootupgrade_available": "1"},
    )


def parse_firmware_version(data: Optional[bytes]) -> Optional[str]:
    """The `bootfirmware_version` value of a version.txt (None: no file; "": no usable value).

    Read line by line as U-Boot's `env import -t ... bootfirmware_version` does (meta-lmp
    boot-header.cmd.in `bootcmd_bootenv`), so usbupdater compares what the bootloader will store.
    """
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == _VERSION_KEY:
            value = value.strip()
            return value if len(value) <= FIRMWARE_VERSION_MAX else ""
    return ""


def plan_boot_firmware(
    bl: Bootloader, read_version_file: Callable[[], Optional[bytes]]
) -> FirmwareDecision:
    """Decide for a new deployment (its version file read by `read_version_file`, None when
    absent); raises BootFirmwareRollbackError when rollback protection forbids it. Nothing is
    written: the caller saves the variables in `sets` for its undo, then `apply`s."""
    if bl.mode not in FIRMWARE_ARM_MODES:
        return decide_boot_firmware(bl.mode, None, None, False)
    try:
        target = parse_firmware_version(read_version_file())
    except (AdapterError, OSError) as exc:
        reason = exc.reason if isinstance(exc, AdapterError) else (exc.strerror or str(exc))
        logger.warning("cannot read the new deployment's firmware version", reason=reason)
        target = ""
    current = bl.get(_VERSION_KEY)  # unreadable: None, "unknown" (aktualizr-lite does the same)
    protection = (bl.get("rollback_protection") or "").strip() == "1"
    decision = decide_boot_firmware(bl.mode, target, current, protection)
    logger.info(
        "boot firmware",
        action=decision.action.value,
        reason=decision.reason,
        rollback_protection=protection,
    )
    if decision.action is FirmwareAction.REFUSE:
        raise BootFirmwareRollbackError(decision.reason)
    return decision
