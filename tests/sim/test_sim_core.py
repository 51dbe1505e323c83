"""`python -m usbupdater.sim.core`: the program with the simulation's boot adapters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from usbupdater import config
from usbupdater.booted import ProcCmdlineBootedCommit
from usbupdater.bootloader import NoBootloader
from usbupdater.sim.boot import FileBootloader, RecordedBootedCommit
from usbupdater.sim.core import sim_device


def test_importing_it_binds_no_logger_before_the_cli_configures_the_log() -> None:
    """Loggers bound at import would print to stdout, not as JSON lines on stderr."""
    probe = (
        "import sys, usbupdater.sim.core\n"
        "print(sorted(m for m in ('usbupdater.core', 'usbupdater.bootloader', "
        "'usbupdater.progress') if m in sys.modules))"
    )
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]"


def test_sim_table_injects_the_boot_adapters(tmp_path: Path) -> None:
    base = '[provision]\nprimary_ecu_hardware_id = "hw"\n[bootloader]\nrollback_mode = "fiovb"\n'
    plain = tmp_path / "plain.toml"
    plain.write_text(base)
    dev = sim_device(config.load([plain]))
    assert isinstance(dev.rootfs.booted_source, ProcCmdlineBootedCommit)
    assert not isinstance(dev.bootloader, (FileBootloader, NoBootloader))  # the fiovb tools
    simulated = tmp_path / "sim.toml"
    simulated.write_text(
        base + f'[sim]\nboot_record = "{tmp_path / "b.json"}"\n'
        f'bootloader_env_file = "{tmp_path / "env.json"}"\n'
    )
    dev = sim_device(config.load([simulated]))
    assert isinstance(dev.rootfs.booted_source, RecordedBootedCommit)
    assert isinstance(dev.bootloader, FileBootloader) and dev.bootloader.mode == "fiovb"
    assert dev.booted_commit() is None  # nothing booted yet: no record
