"""The agent's settings: the `[usbupdater]` model plus what the agent takes from other tables.

Every `[usbupdater]` key is parsed once, in `usbupdater.settings`; here only the `-c` paths the
agent passes on, the reboot command of `[bootloader]` and the device's identity are added.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from usbupdater.config import Config
from usbupdater.settings import UsbUpdaterSettings, split_command


@dataclass(frozen=True)
class AgentSettings(UsbUpdaterSettings):
    """What `usbupdater watch` needs to know; see the README's configuration table."""

    config_paths: tuple[str, ...] = ()  # the -c paths the agent got: passed to the updater
    reboot_command: tuple[str, ...] = ("/sbin/reboot",)
    # Identity written into reports: `[provision] primary_ecu_serial`, else a pseudonym of the
    # machine-id (never the machine-id itself).
    hardware_id: str = ""
    device_serial: str = ""

    @classmethod
    def from_config(cls, cfg: Config, config_paths: tuple[str, ...] = ()) -> AgentSettings:
        own = {f.name: getattr(cfg.usbupdater, f.name) for f in dataclasses.fields(cfg.usbupdater)}
        return cls(
            **own,
            config_paths=tuple(os.path.abspath(p) for p in config_paths),
            reboot_command=split_command(
                "reboot_command", cfg.bootloader.reboot_command, "bootloader"
            ),
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
