"""Our own `[usbupdater]` table: every key, parsed once into one frozen model.

The core (`install`, `run`, `check`) and the agent (`watch`) read the same model
(`Config.usbupdater`); the agent's `AgentSettings` extends it with what it takes from the other
tables. Every key has a default that suits an LmP device, so a device needs no `[usbupdater]`
table at all; tests and integrators override single keys (loop devices instead of USB, fusefat
instead of the kernel's vfat, scripts instead of systemctl). Commands are strings split like a
shell would (`shlex`), never run through a shell. Every key is documented in the README.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from usbupdater.errors import ConfigError

if TYPE_CHECKING:  # config imports this module; a Table is only passed in
    from usbupdater.config import Table

DEVICE_TYPES = ("", "ci", "prod")
OWN_UPDATER = "usbupdater"
# Whose exit codes the updater core speaks (`updater_dialect`; agent/dialect.py decodes them).
USBUPDATER = "usbupdater"
AKLITE_V1 = "aklite-v1"
AKLITE_V2 = "aklite-v2"
AKLITE = "aklite"  # either of the two (LmP v87..v93 whose help text does not tell them apart)
AUTO = "auto"
DIALECTS = (USBUPDATER, AKLITE_V1, AKLITE_V2, AKLITE)
SETTING_VALUES = (*DIALECTS, AUTO)


@dataclass(frozen=True)
class UsbUpdaterSettings:
    """The `[usbupdater]` keys (see the README's configuration table)."""

    # --- the core ---
    state_dir: Optional[Path] = None  # default: <storage.path>/usbupdater
    lock_path: Path = Path("/var/lock/aklite.lock")
    # "ci", "prod", or "" (unknown: ci roots, no bundle type check). `config.load` resolves it
    # from the device certificate when the key is unset (devicetype.py); the reason says how.
    device_type: str = ""
    device_type_reason: str = ""
    docker_host: str = ""  # empty: $DOCKER_HOST, else the engine's default socket
    apps_start_timeout: float = 120.0  # seconds for every service to run (and be healthy)
    status_file: Path = Path("/run/usbupdater/status.json")
    bootloader_tool_dir: Optional[Path] = None  # the fw_printenv/... tools; default: $PATH
    # --- the agent (`usbupdater watch`) ---
    updater_command: tuple[str, ...] = (sys.executable, "-m", "usbupdater")
    # Whose exit codes the core speaks (dialect.py); `auto` is resolved when the service starts.
    updater_dialect: str = USBUPDATER
    # Which block devices count (udev properties).
    match_buses: tuple[str, ...] = ("usb",)
    match_fs_types: tuple[str, ...] = ("vfat", "exfat", "ext4", "ext3", "ext2")
    match_devtypes: tuple[str, ...] = ("disk", "partition")
    match_properties: tuple[tuple[str, str], ...] = ()
    settle_time: float = 0.5
    # Where things live.
    runtime_dir: Path = Path("/run/usbupdater")
    media_dir: Path = Path("/run/usbupdater/media")
    agent_state_dir: Path = Path("/var/sota/usbupdater/agent")
    # Mounting. argv templates: {type} {options} {device} {mountpoint} are replaced token by
    # token.
    mount_command: tuple[str, ...] = (
        "mount",
        "-t",
        "{type}",
        "-o",
        "{options}",
        "{device}",
        "{mountpoint}",
    )
    umount_command: tuple[str, ...] = ("umount", "{mountpoint}")
    lazy_umount_command: tuple[str, ...] = ("umount", "-l", "{mountpoint}")
    mount_type: str = ""
    mount_options: str = "ro,nosuid,nodev,noexec,noatime"
    fat_mount_options: str = "uid=0,gid=0,fmask=0133,dmask=0022"
    report_mount_options: str = "rw,nosuid,nodev,noexec,noatime"
    write_report: bool = True
    report_dir: str = "usbupdater-reports"
    # People.
    notify_command: tuple[str, ...] = ()
    console: str = "/dev/console"
    # The rest of the system.
    aklite_active_command: tuple[str, ...] = (
        "systemctl",
        "is-active",
        "--quiet",
        "aktualizr-lite",
    )
    aklite_stop_command: tuple[str, ...] = ("systemctl", "stop", "aktualizr-lite")
    aklite_start_command: tuple[str, ...] = (
        "systemctl",
        "start",
        "--no-block",
        "aktualizr-lite",
    )
    engine_restart_command: tuple[str, ...] = ("systemctl", "restart", "docker")
    confirm_boot_firmware: bool = True
    max_reboots: int = 3
    command_timeout: float = 120.0
    updater_timeout: float = 3600.0


def split_command(key: str, value: str, table: str = "usbupdater") -> tuple[str, ...]:
    """A command line from the configuration, split as a shell would (never run by one)."""
    try:
        return tuple(shlex.split(value))
    except ValueError as exc:
        raise ConfigError(f"[{table}] {key}: cannot split {value!r}: {exc}") from None


def _properties(value: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in value:
        key, sep, pattern = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"[usbupdater] match_properties: {item!r} is not KEY=GLOB")
        pairs.append((key.strip(), pattern.strip()))
    return tuple(pairs)


def parse(t: Table, storage_path: Path) -> UsbUpdaterSettings:
    """The `[usbupdater]` table -> the model (errors name the key)."""
    d = UsbUpdaterSettings

    def cmd(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        return split_command(key, t.get_str(key, shlex.join(default)))

    def lst(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        v = t.get_list(key)
        return default if v is None else v

    updater = cmd("updater_command", (OWN_UPDATER,))
    if not updater:
        raise ConfigError("[usbupdater] updater_command: empty")
    if updater[0] == OWN_UPDATER:  # our own core: the same interpreter, no PATH lookup
        updater = (sys.executable, "-m", "usbupdater", *updater[1:])
    state_dir = t.get_opt_path("state_dir")
    runtime = t.get_path("runtime_dir", d.runtime_dir)
    settle = t.get_float("settle_time", d.settle_time)
    max_reboots = int(t.get_float("max_reboots", d.max_reboots))
    if settle < 0 or max_reboots < 1:
        raise ConfigError("[usbupdater] settle_time must be >= 0 and max_reboots >= 1")
    return UsbUpdaterSettings(
        state_dir=state_dir,
        lock_path=t.get_path("lock_path", d.lock_path),
        device_type=t.get_choice("device_type", "", DEVICE_TYPES),
        docker_host=t.get_str("docker_host", ""),
        apps_start_timeout=t.get_float("apps_start_timeout", d.apps_start_timeout),
        status_file=t.get_path("status_file", d.status_file),
        bootloader_tool_dir=t.get_opt_path("bootloader_tool_dir"),
        updater_command=updater,
        updater_dialect=t.get_choice("updater_dialect", USBUPDATER, SETTING_VALUES),
        match_buses=lst("match_buses", d.match_buses),
        match_fs_types=lst("match_fs_types", d.match_fs_types),
        match_devtypes=lst("match_devtypes", d.match_devtypes),
        match_properties=_properties(lst("match_properties", ())),
        settle_time=settle,
        runtime_dir=runtime,
        media_dir=t.get_path("media_dir", runtime / "media"),
        agent_state_dir=t.get_path(
            "agent_state_dir", (state_dir or storage_path / "usbupdater") / "agent"
        ),
        mount_command=cmd("mount_command", d.mount_command),
        umount_command=cmd("umount_command", d.umount_command),
        lazy_umount_command=cmd("lazy_umount_command", d.lazy_umount_command),
        mount_type=t.get_str("mount_type", ""),
        mount_options=t.get_str("mount_options", d.mount_options),
        fat_mount_options=t.get_str("fat_mount_options", d.fat_mount_options),
        report_mount_options=t.get_str("report_mount_options", d.report_mount_options),
        write_report=t.get_bool("write_report", True),
        report_dir=t.get_str("report_dir", d.report_dir),
        notify_command=cmd("notify_command", ()),
        console=t.get_str("console", d.console),
        aklite_active_command=cmd("aklite_active_command", d.aklite_active_command),
        aklite_stop_command=cmd("aklite_stop_command", d.aklite_stop_command),
        aklite_start_command=cmd("aklite_start_command", d.aklite_start_command),
        engine_restart_command=cmd("engine_restart_command", d.engine_restart_command),
        confirm_boot_firmware=t.get_bool("confirm_boot_firmware", True),
        max_reboots=max_reboots,
        command_timeout=t.get_float("command_timeout", d.command_timeout),
        updater_timeout=t.get_float("updater_timeout", d.updater_timeout),
    )
