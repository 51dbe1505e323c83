"""A simulated device: a real OSTree sysroot, a file-backed bootloader and U-Boot-like reboots.

Nothing boots here, so `reboot()` plays the bootloader's part, following LmP's U-Boot script
(meta-lmp `u-boot-ostree-scr-fit/*/boot.cmd`) and U-Boot's env-backed boot counter:
- each boot try while `upgrade_available=1` increments `bootcount`;
- `bootcount > bootlimit` (default 3) runs `altbootcmd`: it boots the second boot entry (the
  previous deployment) and, unless `rollback` is already 1, sets `rollback=1` and
  `upgrade_available=0` (LmP's `bootcmd_set_rollback`); `bootcount` stays past the limit;
- `rollback=1` keeps booting the previous deployment until an update resets it;
- a commit declared unbootable fails every try (the next try follows);
- boot firmware (modes uboot_masked and fiovb), as meta-lmp's `boot-header.cmd.in` and
  `boot-upgrade-regular.cmd.in` (`u-boot-ostree-scr-fit`) do: an unset `bootfirmware_version` is
  read from the default deployment's `usr/lib/firmware/version.txt` (`bootcmd_bootenv`); while
  `upgrade_available=1` and `bootupgrade_available=1` the new firmware boots from the secondary
  path (nothing to record here); once the update is confirmed (`upgrade_available=0`) the next
  boot with `bootupgrade_available=1` copies the deployment's version into
  `bootfirmware_version`, clears `bootupgrade_available` and resets (the confirming reboot);
  a rollback past `bootlimit` clears `bootupgrade_available` (`rollback_setup`).
The booted deployment is recorded in a JSON file that `RecordedBootedCommit` reads, and the
simulated `/run` (where the reboot sentinel lives) is wiped, as a real reboot wipes its tmpfs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional, Union

from usbupdater.booted import boot_entry_options
from usbupdater.bootloader import (
    FIRMWARE_ARM_MODES,
    FIRMWARE_VERSION_FILE,
    FIRMWARE_VERSION_FILE_MAX,
    RebootSentinel,
    parse_firmware_version,
)
from usbupdater.config import BootloaderConfig
from usbupdater.fsutil import atomic_write
from usbupdater.ostree_cli import Deployment, run_ostree
from usbupdater.rootfs import OstreeSysroot
from usbupdater.sim.boot import FileBootloader, RecordedBootedCommit

DEFAULT_KVER = "5.15.0-lmp"
DEFAULT_KARGS = ("root=LABEL=otaroot", "rw", "console=ttyS0,115200")
_CHUNK = 1 << 20


class SimBootError(Exception):
    """The simulated device found nothing bootable."""


def remove_tree(path: Union[str, os.PathLike[str]]) -> None:
    """Remove a tree that may hold ostree deployments (immutable bit set) or nothing at all."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return
    if p.is_dir() and not p.is_symlink():
        # ostree marks each deployment root immutable; rmtree cannot unlink under it otherwise.
        subprocess.run(["chattr", "-R", "-f", "-i", str(p)], capture_output=True, check=False)
        shutil.rmtree(p)
    else:
        p.unlink()


def init_archive_repo(repo: Path) -> None:
    """Create an archive-mode repo (what fioctl's bundle holds) unless it already exists."""
    if not (repo / "config").exists():
        repo.mkdir(parents=True, exist_ok=True)
        run_ostree(["init", f"--repo={repo}", "--mode=archive"])


def make_commit(
    repo: Path,
    branch: str,
    version: str,
    files: Optional[dict[str, bytes]] = None,
    extra_bytes: int = 0,
    *,
    kver: str = DEFAULT_KVER,
) -> str:
    """Commit a deployable tree on `branch` of an archive repo (created if absent).

    The tree has `usr/lib/os-release` with VERSION, a kernel and initramfs under
    `usr/lib/modules/<kver>/` (the same bytes for every version, so the boot checksum only
    changes with `kver`), `files` (relative path -> content), and `extra_bytes` of random data
    (incompressible, so its size is real on disk and in transfer).
    """
    repo = Path(repo)
    init_archive_repo(repo)
    with tempfile.TemporaryDirectory(prefix=".tree-", dir=repo.parent) as tmp:
        tree = Path(tmp)
        content: dict[str, bytes] = {
            "usr/lib/os-release": (
                f'ID=lmp\nNAME="Linux-microPlatform"\nVERSION="{version}"\n'
                f'VERSION_ID="{version}"\nPRETTY_NAME="Linux-microPlatform {version}"\n'
            ).encode(),
            f"usr/lib/modules/{kver}/vmlinuz": f"simulated kernel {kver}\n".encode(),
            f"usr/lib/modules/{kver}/initramfs.img": f"simulated initramfs {kver}\n".encode(),
            "usr/etc/hostname": b"simdevice\n",
        }
        content.update(files or {})
        for rel, data in content.items():
            dest = tree / rel.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        if extra_bytes > 0:
            dest = tree / "usr/share/sim" / f"extra-{version}.bin"
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "wb") as fh:
                left = extra_bytes
                while left:
                    n = min(left, _CHUNK)
                    fh.write(os.urandom(n))
                    left -= n
        proc = run_ostree(
            [
                "commit",
                f"--repo={repo}",
                f"--branch={branch}",
                f"--tree=dir={tree}",
                f"--subject=version {version}",
                f"--add-metadata-string=version={version}",
            ]
        )
    commit = proc.stdout.strip().splitlines()[-1]
    return commit


class SimDevice:
    """One simulated device under `root`: sysroot, boot environment, /run, boot record."""

    def __init__(self, root: Path, *, osname: str = "lmp", mode: str = "uboot_masked") -> None:
        self.root = Path(root)
        self.osname = osname
        self.sysroot = self.root / "sysroot"
        self.run_dir = self.root / "run"
        self.sentinel_dir = self.run_dir / "aktualizr-session"
        self.env_file = self.root / "bootenv.json"
        self.record_file = self.root / "booted.json"
        self.cmdline_file = self.root / "cmdline"
        self.unbootable_file = self.root / "unbootable.json"
        self.bootloader = FileBootloader(self.env_file, mode=mode)
        self.booted_source = RecordedBootedCommit(self.record_file)

    @classmethod
    def create(
        cls,
        root: Path,
        src_repo: Path,
        commit: str,
        *,
        osname: str = "lmp",
        kargs: Iterable[str] = DEFAULT_KARGS,
        bootlimit: int = 3,
        mode: str = "uboot_masked",
    ) -> SimDevice:
        """A device that was flashed with `commit` and booted it once."""
        dev = cls(root, osname=osname, mode=mode)
        sysroot = dev.sysroot
        sysroot.mkdir(parents=True, exist_ok=True)
        run_ostree(["admin", "init-fs", str(sysroot)])
        run_ostree(["admin", "os-init", f"--sysroot={sysroot}", osname])
        repo = sysroot / "ostree" / "repo"
        run_ostree(["pull-local", f"--repo={repo}", str(src_repo), commit])
        run_ostree(
            [
                "admin",
                "deploy",
                f"--sysroot={sysroot}",
                f"--os={osname}",
                *(f"--karg={k}" for k in kargs),
                commit,
            ]
        )
        dev.bootloader.write_all(
            {
                "bootcount": "0",
                "bootlimit": str(bootlimit),
                "upgrade_available": "0",
                "rollback": "0",
                "bootupgrade_available": "0",
            }
        )
        dev.reboot()
        return dev

    # --- what the updater uses ----------------------------------------------------------------

    def rootfs(self, **kwargs: Any) -> OstreeSysroot:
        """The sysroot adapter wired to this device's boot record (kwargs: OstreeSysroot's)."""
        return OstreeSysroot(self.sysroot, self.osname, booted_source=self.booted_source, **kwargs)

    def sentinel(self) -> RebootSentinel:
        return RebootSentinel(self.sentinel_dir)

    def bootloader_config(self) -> BootloaderConfig:
        return BootloaderConfig(
            rollback_mode=self.bootloader.mode,
            reboot_command="/bin/true",
            reboot_sentinel_dir=self.sentinel_dir,
        )

    def booted_commit(self) -> Optional[str]:
        return self.booted_source.booted_commit()

    def boot_record(self) -> dict[str, object]:
        data = json.loads(self.record_file.read_text(encoding="utf-8"))
        assert isinstance(data, dict)
        return data

    # --- test controls ------------------------------------------------------------------------

    def unbootable(self) -> set[str]:
        try:
            return set(json.loads(self.unbootable_file.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return set()

    def declare_unbootable(self, commit: str, unbootable: bool = True) -> None:
        """Make every boot try of `commit` fail (or work again)."""
        bad = self.unbootable()
        if unbootable:
            bad.add(commit)
        else:
            bad.discard(commit)
        atomic_write(self.unbootable_file, json.dumps(sorted(bad)).encode())

    def reboot(self) -> dict[str, object]:
        """Wipe /run, let the simulated bootloader pick a deployment, record what booted."""
        remove_tree(self.run_dir)
        self.run_dir.mkdir(parents=True)
        deployments = self.rootfs().deployments()
        if not deployments:
            raise SimBootError(f"{self.sysroot}: no deployment to boot")
        env = self.bootloader
        bad = self.unbootable()
        bootlimit = env.get_int("bootlimit", 3)
        tries: list[str] = []
        applied: Optional[str] = None  # the firmware version a confirming reboot applied
        firmware = env.mode in FIRMWARE_ARM_MODES
        for _ in range(bootlimit + 4):
            if firmware and env.get("bootfirmware_version") is None:
                self._import_firmware_version(deployments[0])  # first boot after flashing
            if env.get_int("upgrade_available") == 1:
                env.set("bootcount", str(env.get_int("bootcount") + 1))
            past_limit = bootlimit > 0 and env.get_int("bootcount") > bootlimit
            alt = past_limit and env.get_int("upgrade_available") == 1
            confirmed = env.get_int("upgrade_available") == 0
            if firmware and confirmed and env.get_int("bootupgrade_available") == 1:
                self._import_firmware_version(deployments[0])  # the confirming reboot
                env.set("bootupgrade_available", "0")
                applied = env.get("bootfirmware_version")
                continue  # `reset`: the script runs again
            if alt or env.get_int("rollback") == 1:
                if env.get_int("rollback") != 1:  # altbootcmd: bootcmd_set_rollback
                    env.set("rollback", "1")
                    env.set("upgrade_available", "0")
                    if firmware:  # boot-upgrade-regular.cmd.in rollback_setup
                        env.set("bootupgrade_available", "0")
                chosen = deployments[1] if len(deployments) > 1 else deployments[0]
            else:
                chosen = deployments[0]
            tries.append(chosen.dirname)
            if chosen.commit not in bad:
                break
        else:
            raise SimBootError(f"no bootable deployment; tried {tries}")
        cmdline = boot_entry_options(self.sysroot, chosen)
        atomic_write(self.cmdline_file, (" ".join(cmdline) + "\n").encode())
        record: dict[str, object] = {
            "commit": chosen.commit,
            "deployment": chosen.dirname,
            "index": chosen.index,
            "tries": tries,
            "boot_firmware_applied": applied,
            "cmdline": cmdline,
        }
        atomic_write(self.record_file, json.dumps(record, indent=1).encode())
        return record

    def firmware_version(self, deployment: Deployment) -> Optional[str]:
        """`bootfirmware_version` in a deployment's version.txt, as U-Boot imports it."""
        data = self.rootfs().read_deployment_file(
            deployment, FIRMWARE_VERSION_FILE, FIRMWARE_VERSION_FILE_MAX
        )
        value = parse_firmware_version(data)
        return value or None

    def _import_firmware_version(self, deployment: Deployment) -> None:
        """meta-lmp `bootcmd_bootenv`: unset the variable, import it from version.txt."""
        value = self.firmware_version(deployment)
        if value is None:
            self.bootloader.unset("bootfirmware_version")
        else:
            self.bootloader.set("bootfirmware_version", value)

    def destroy(self) -> None:
        remove_tree(self.root)
