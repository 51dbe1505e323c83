"""Which OSTree commit the running system booted, and the boot entries that say so.

A device asks the kernel command line (`ostree=`), resolved through its symlink to
`<commit>.<serial>`; the simulation kit asks its recorded boot instead (`usbupdater.sim.boot`).
Both are a `BootedCommitSource`, which `OstreeSysroot` takes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Protocol

from usbupdater.errors import AdapterError
from usbupdater.ostree_cli import Deployment, parse_deploy_dir, parse_status, run_ostree


class BootedCommitSource(Protocol):
    """Tells which OSTree commit the running system booted (None: unknown / not booted)."""

    def booted_commit(self) -> Optional[str]: ...


def boot_entry_options(sysroot: Path, deployment: Deployment) -> list[str]:
    """The whole `options` line of a deployment's boot entry, `ostree=` included."""
    entries = Path(sysroot) / "boot" / "loader" / "entries"
    for conf in sorted(entries.glob("*.conf")) if entries.is_dir() else ():
        opts = _entry_options(conf)
        target = next((a.split("=", 1)[1] for a in opts if a.startswith("ostree=")), None)
        if target and _resolve_ostree_arg(Path(sysroot), target) == (
            deployment.commit,
            deployment.serial,
        ):
            return opts
    raise AdapterError(f"{entries}: no boot entry for deployment {deployment.dirname}")


def _entry_options(conf: Path) -> list[str]:
    try:
        text = conf.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("options"):
            return line.split()[1:]
    return []


def _resolve_ostree_arg(sysroot: Path, value: str) -> Optional[tuple[str, int]]:
    """`ostree=/ostree/boot.N/<os>/<bootcsum>/<i>` -> (commit, serial) via its symlink."""
    link = sysroot / value.lstrip("/")
    try:
        real = Path(os.path.realpath(link))
    except OSError:
        return None
    return parse_deploy_dir(real.name)


class ProcCmdlineBootedCommit:
    """The booted commit on a real device.

    First the `ostree=` kernel argument (resolved through its symlink to `<commit>.<serial>`):
    it is what the initramfs mounted, and it needs no subprocess. Else the `*` line of
    `ostree admin status`.
    """

    def __init__(
        self,
        sysroot: Path = Path("/"),
        *,
        cmdline: Path = Path("/proc/cmdline"),
        ostree_bin: str = "ostree",
    ) -> None:
        self.sysroot = Path(sysroot)
        self.cmdline = Path(cmdline)
        self.ostree_bin = ostree_bin

    def booted_commit(self) -> Optional[str]:
        try:
            args = self.cmdline.read_text(encoding="utf-8", errors="replace").split()
        except OSError:
            args = []
        for arg in args:
            if arg.startswith("ostree="):
                found = _resolve_ostree_arg(self.sysroot, arg.split("=", 1)[1])
                if found:
                    return found[0]
        done = run_ostree(
            ["admin", "status", f"--sysroot={self.sysroot}"], ostree_bin=self.ostree_bin
        )
        booted = [d for d in parse_status(done.stdout) if d.booted]
        return booted[0].commit if booted else None
