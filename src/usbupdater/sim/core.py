"""`python -m usbupdater.sim.core`: the `usbupdater` program on a simulated device.

The same command line as `usbupdater`, but the core's `Device` gets the simulation's boot
adapters (`usbupdater.sim.boot`) from the `[sim]` table of the configuration:

    [sim]
    boot_record = "/path/booted.json"          # which deployment the simulated device booted
    bootloader_env_file = "/path/bootenv.json"  # its boot variables

Without a `[sim]` table it is the real program. Production code knows nothing of this: the
device's wheel does not ship `usbupdater.sim`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from usbupdater import cli

if TYPE_CHECKING:  # imported when used, as `cli` does: after it configured the log
    from usbupdater.config import Config
    from usbupdater.core import Device


def sim_device(cfg: Config) -> Device:
    """The core's device with the boot record and boot variables `[sim]` names."""
    from usbupdater.core import Device
    from usbupdater.sim.boot import FileBootloader, RecordedBootedCommit

    t = cfg.table("sim")
    record = t.get_opt_path("boot_record")
    env = t.get_opt_path("bootloader_env_file")
    return Device(
        cfg,
        booted_source=RecordedBootedCommit(record) if record else None,
        bootloader=FileBootloader(env, mode=cfg.bootloader.rollback_mode) if env else None,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.main(argv, make_device=sim_device)


if __name__ == "__main__":
    sys.exit(main())
