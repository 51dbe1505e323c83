"""Configuration of a simulated device: the aktualizr-lite snippet that points usbupdater at it.

Tests, benchmarks and the demo run the `usbupdater` program against a `SimDevice` as
`python -m usbupdater.sim.core` (`CORE_ARGV`: the real program with the simulation's boot
adapters); this is the one place that says how (its sysroot, boot record, file-backed
bootloader, /run). The service (`watch`) runs that same core (`updater_command`).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from usbupdater.sim.device import SimDevice
from usbupdater.sim.factory import Factory

# `python -m usbupdater.sim.core`; not imported from there, to keep `usbupdater.core` out of the
# processes that only build devices.
CORE_ARGV = (sys.executable, "-m", "usbupdater.sim.core")


def device_config(
    dev: SimDevice,
    *,
    hardware_id: str,
    tags: str,
    storage: Path,
    uptane_metadata_path: Path,
    lock_path: Path,
    docker_host: str = "",
    pacman_type: str = "ostree+compose_apps",
    compose_bin: str = "/usr/bin/docker-compose",
    apps_start_timeout: float = 60,
    reboot_command: str = "/bin/true",
    extra: str = "",
) -> str:
    """The TOML text of a configuration for `dev` (write it, then pass it with `-c`)."""
    return (
        "[provision]\n"
        f'primary_ecu_hardware_id = "{hardware_id}"\n'
        "[storage]\n"
        f'path = "{storage}"\n'
        f'uptane_metadata_path = "{uptane_metadata_path}"\n'
        "[pacman]\n"
        f'type = "{pacman_type}"\n'
        f'sysroot = "{dev.sysroot}"\n'
        f'os = "{dev.osname}"\n'
        f'tags = "{tags}"\n'
        f'docker_compose_bin = "{compose_bin}"\n'
        "[bootloader]\n"
        f'rollback_mode = "{dev.bootloader.mode}"\n'
        f'reboot_command = "{reboot_command}"\n'
        f'reboot_sentinel_dir = "{dev.sentinel_dir}"\n'
        "[sim]\n"
        f'boot_record = "{dev.record_file}"\n'
        f'bootloader_env_file = "{dev.env_file}"\n'
        "[usbupdater]\n"
        f'lock_path = "{lock_path}"\n'
        f'updater_command = "{shlex.join(CORE_ARGV)}"\n'
        f'docker_host = "{docker_host}"\n'
        f"apps_start_timeout = {apps_start_timeout}\n" + extra
    )


def create_device(
    root: Path, factory: Factory, flashed_commit: str, **config: Any
) -> tuple[SimDevice, Path]:
    """A simulated device under `root` flashed with `flashed_commit`, trusting the factory's
    roots, and its configuration file (keyword arguments: those of `device_config`)."""
    dev = SimDevice.create(root / "device", factory.treehub, flashed_commit)
    roots = root / "usr-lib-sota-tuf"
    factory.write_device_roots(roots)
    cfg = root / "sota.toml"
    cfg.write_text(
        device_config(
            dev,
            hardware_id=factory.hardware_id,
            tags=factory.tag,
            storage=root / "sota",
            uptane_metadata_path=roots,
            lock_path=root / "aklite.lock",
            **config,
        )
    )
    return dev, cfg
