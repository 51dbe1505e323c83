"""Boot variables aktualizr-lite uses, behind one interface, and reboot detection.

The bootloader decides which deployment boots: U-Boot (or OP-TEE's fiovb, or EFI variables via
fioefi) counts `bootcount` while `upgrade_available=1` and boots the previous deployment past
`bootlimit`, setting `rollback=1`. The updater only has to arm that (`update_notify`), disarm it
after a good boot (`set_boot_ok`), and respect a pending boot firmware update
(`boot_fw_update_pending`). Backends follow `[bootloader] rollback_mode`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from usbupdater import log, proc
from usbupdater.config import ROLLBACK_MODES, BootloaderConfig
from usbupdater.errors import AdapterError, ConfigError
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


class FileBootloader(Bootloader):
    """Variables in one JSON file: the simulated device's environment (and the demo's)."""

    def __init__(self, path: Path, mode: str = "uboot_masked") -> None:
        self.path = Path(path)
        self.mode = mode

    def read_all(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise AdapterError(f"{self.path}: cannot read boot environment: {exc}") from None
        if not isinstance(data, dict):
            raise AdapterError(f"{self.path}: boot environment is not a JSON object")
        return {str(k): str(v) for k, v in data.items()}

    def write_all(self, values: dict[str, str]) -> None:
        atomic_write(self.path, json.dumps(values, indent=1, sort_keys=True).encode())

    def get(self, name: str) -> Optional[str]:
        return self.read_all().get(name)

    def set(self, name: str, value: str) -> None:
        values = self.read_all()
        values[name] = str(value)
        self.write_all(values)

    def unset(self, name: str) -> None:
        values = self.read_all()
        if values.pop(name, None) is not None:
            self.write_all(values)


def make_bootloader(
    rollback_mode: str,
    *,
    tool_dir: Optional[Path] = None,
    env_file: Optional[Path] = None,
) -> Bootloader:
    """The backend for `[bootloader] rollback_mode`; `env_file` selects the file-backed one."""
    if rollback_mode not in ROLLBACK_MODES:
        raise ConfigError(f"[bootloader] rollback_mode: unknown mode {rollback_mode!r}")
    if env_file is not None:
        return FileBootloader(env_file, mode=rollback_mode)
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


def from_config(cfg: BootloaderConfig, *, env_file: Optional[Path] = None) -> Bootloader:
    return make_bootloader(cfg.rollback_mode, env_file=env_file)


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
