"""The agent's own `[usbupdater]` keys, parsed once into a frozen dataclass.

Every key has a default that suits an LmP device, so a device needs no agent configuration at
all; tests and integrators override single keys (loop devices instead of USB, fusefat instead of
the kernel's vfat, scripts instead of systemctl). Commands are strings split like a shell would
(`shlex`), never run through a shell.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from usbupdater.agent import dialect as dialects
from usbupdater.config import Config
from usbupdater.errors import ConfigError

OWN_UPDATER = "usbupdater"


def _split(key: str, value: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(value))
    except ValueError as exc:
        raise ConfigError(f"[usbupdater] {key}: cannot split {value!r}: {exc}") from None


def _properties(value: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in value:
        key, sep, pattern = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"[usbupdater] match_properties: {item!r} is not KEY=GLOB")
        pairs.append((key.strip(), pattern.strip()))
    return tuple(pairs)


@dataclass(frozen=True)
class AgentSettings:
    """What `usbupdater watch` needs to know; see the README's configuration table."""

    updater_command: tuple[str, ...] = (sys.executable, "-m", "usbupdater")
    # Whose exit codes the core speaks (dialect.py); `auto` is resolved when the service starts.
    updater_dialect: str = dialects.USBUPDATER
    config_paths: tuple[str, ...] = ()  # the -c paths the agent got: passed to the updater
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
    status_file: Path = Path("/run/usbupdater/status.json")
    # Mounting.
    # argv templates: {type} {options} {device} {mountpoint} are replaced token by token.
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
    reboot_command: tuple[str, ...] = ("/sbin/reboot",)
    confirm_boot_firmware: bool = True
    max_reboots: int = 3
    command_timeout: float = 120.0
    updater_timeout: float = 3600.0
    # Identity written into reports: `[provision] primary_ecu_serial`, else a pseudonym of the
    # machine-id (never the machine-id itself).
    hardware_id: str = ""
    device_serial: str = ""

    @classmethod
    def from_config(cls, cfg: Config, config_paths: tuple[str, ...] = ()) -> AgentSettings:
        t = cfg.table("usbupdater")

        def cmd(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
            return _split(key, t.get_str(key, shlex.join(default)))

        def lst(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
            v = t.get_list(key)
            return default if v is None else v

        updater = cmd("updater_command", (OWN_UPDATER,))
        if not updater:
            raise ConfigError("[usbupdater] updater_command: empty")
        if updater[0] == OWN_UPDATER:  # our own core: the same interpreter, no PATH lookup
            updater = (sys.executable, "-m", "usbupdater", *updater[1:])
        runtime = t.get_path("runtime_dir", cls.runtime_dir)
        settle = t.get_float("settle_time", cls.settle_time)
        max_reboots = int(t.get_float("max_reboots", cls.max_reboots))
        if settle < 0 or max_reboots < 1:
            raise ConfigError("[usbupdater] settle_time must be >= 0 and max_reboots >= 1")
        return cls(
            updater_command=updater,
            updater_dialect=t.get_choice(
                "updater_dialect", dialects.USBUPDATER, dialects.SETTING_VALUES
            ),
            config_paths=tuple(os.path.abspath(p) for p in config_paths),
            match_buses=lst("match_buses", cls.match_buses),
            match_fs_types=lst("match_fs_types", cls.match_fs_types),
            match_devtypes=lst("match_devtypes", cls.match_devtypes),
            match_properties=_properties(lst("match_properties", ())),
            settle_time=settle,
            runtime_dir=runtime,
            media_dir=t.get_path("media_dir", runtime / "media"),
            agent_state_dir=t.get_path("agent_state_dir", cfg.state_dir / "agent"),
            status_file=cfg.usbupdater.status_file,
            mount_command=cmd("mount_command", cls.mount_command),
            umount_command=cmd("umount_command", cls.umount_command),
            lazy_umount_command=cmd("lazy_umount_command", cls.lazy_umount_command),
            mount_type=t.get_str("mount_type", ""),
            mount_options=t.get_str("mount_options", cls.mount_options),
            fat_mount_options=t.get_str("fat_mount_options", cls.fat_mount_options),
            report_mount_options=t.get_str("report_mount_options", cls.report_mount_options),
            write_report=t.get_bool("write_report", True),
            report_dir=t.get_str("report_dir", cls.report_dir),
            notify_command=cmd("notify_command", ()),
            console=t.get_str("console", cls.console),
            aklite_active_command=cmd("aklite_active_command", cls.aklite_active_command),
            aklite_stop_command=cmd("aklite_stop_command", cls.aklite_stop_command),
            aklite_start_command=cmd("aklite_start_command", cls.aklite_start_command),
            engine_restart_command=cmd("engine_restart_command", cls.engine_restart_command),
            reboot_command=_split("reboot_command", cfg.bootloader.reboot_command),
            confirm_boot_firmware=t.get_bool("confirm_boot_firmware", True),
            max_reboots=max_reboots,
            command_timeout=t.get_float("command_timeout", cls.command_timeout),
            updater_timeout=t.get_float("updater_timeout", cls.updater_timeout),
            hardware_id=cfg.provision.primary_ecu_hardware_id,
            device_serial=cfg.provision.primary_ecu_serial or machine_pseudonym(),
        )

    def updater_args(self, *args: str) -> list[str]:
        """The updater's command line for one subcommand, with the agent's `-c` paths."""
        cfgs = [a for p in self.config_paths for a in ("-c", p)]
        return [*self.updater_command, *args, *cfgs]

    @property
    def boot_token_file(self) -> Path:
        """Lives in the runtime dir (a tmpfs): its absence after start means "rebooted"."""
        return self.runtime_dir / "boot-token"


# The application id for the report's serial pseudonym (a fixed random 128-bit id, never
# changed: changing it changes every device's pseudonym).
SERIAL_APP_ID = bytes.fromhex("04d0c67edc1848b6b969a929efb2f0c0")
PSEUDONYM_HEX = 16


def pseudonym(machine_id: str) -> str:
    """The serial a report shows when the config names none: the same for the same device in
    every report, but neither the machine-id nor another program's id can be derived from it.

    It is systemd's application-specific id (`sd_id128_get_machine_app_specific`: HMAC-SHA256
    keyed by the machine-id over SERIAL_APP_ID), truncated to 16 hex digits, so a technician can
    match a report to a device with `systemd-id128 machine-id --app-specific=<SERIAL_APP_ID>`.
    """
    try:
        key = bytes.fromhex(machine_id.strip())
    except ValueError:
        key = b""
    if len(key) != 16:  # not a machine-id: still hash it, never show it
        key = machine_id.strip().encode("utf-8", "surrogateescape")
    digest = bytearray(hmac.new(key, SERIAL_APP_ID, hashlib.sha256).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40  # the UUID v4 bits systemd sets
    digest[8] = (digest[8] & 0x3F) | 0x80
    return digest.hex()[:PSEUDONYM_HEX]


MACHINE_ID_PATHS = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def machine_pseudonym(paths: tuple[str, ...] = MACHINE_ID_PATHS) -> str:
    """`pseudonym` of this machine's id; empty when there is none."""
    for p in paths:
        try:
            value = Path(p).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if value:
            return pseudonym(value)
    return ""
