"""A tiny /var that fills up at each step of `install`, on real ext4 loop mounts.

The simulated device lives on three small ext4 filesystems (sysroot, state dir, app store), so
each step's writes land on a filesystem of its own: filling one at a chosen moment puts the
ENOSPC in that step. The moment is chosen with the faulty stick's stall (sim.faultfs): the
install blocks on a read of the stick, the test fills the filesystem, then releases the read.
Filled before the install, the updater should see it coming (60); filled under it, it fails
clearly. Either way the device is as it was and nothing of the attempt stays on the disk.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from tests.faults.conftest import Kit, converges, on_v1, one_line, pull_running, unchanged
from tests.integration.rig import Rig
from usbupdater.sim.dockerd import PrivateDockerd
from usbupdater.sim.faultfs import FaultStick
from usbupdater.sim.setup import CORE_ARGV
from usbupdater.sim.sticks import sh

pytestmark = pytest.mark.integration

MiB = 1 << 20
SLACK = 64 * 1024  # ext4 may keep a grown directory block or two


class TinyFs:
    """An ext4 image on a loop device, mounted at `mountpoint`, that a test can fill."""

    def __init__(self, image: Path, mountpoint: Path, size_mb: int) -> None:
        self.image, self.mountpoint, self.size_mb = image, mountpoint, size_mb
        self.loop: Optional[str] = None
        self.ballast = mountpoint / ".ballast"

    def mount(self) -> None:
        sh("truncate", "-s", f"{self.size_mb}M", str(self.image))
        sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", str(self.image))
        self.loop = sh("losetup", "-f", "--show", str(self.image)).stdout.strip()
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        sh("mount", "-t", "ext4", self.loop, str(self.mountpoint))
        (self.mountpoint / "lost+found").rmdir()

    def free(self) -> int:
        st = os.statvfs(self.mountpoint)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Take all free space but `leave` bytes (0: up to the last block)."""
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            chunk = b"\0" * MiB
            while (room := self.free() - leave) > 0:
                try:
                    os.write(fd, chunk[: min(room, MiB)])
                    os.fsync(fd)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if len(chunk) == 4096:
                        break
                    chunk = chunk[: len(chunk) // 2]
        finally:
            os.close(fd)

    def drain(self) -> None:
        self.ballast.unlink(missing_ok=True)
        os.sync()

    def close(self) -> None:
        if self.loop is not None:
            if sh("umount", str(self.mountpoint), check=False).returncode != 0:
                sh("umount", "-l", str(self.mountpoint), check=False)
            sh("losetup", "-d", self.loop, check=False)
            self.loop = None
        self.image.unlink(missing_ok=True)


@dataclass
class Tiny:
    rig: Rig
    sysroot: TinyFs
    state: TinyFs
    apps: TinyFs

    @property
    def all(self) -> tuple[TinyFs, ...]:
        return (self.sysroot, self.state, self.apps)


@pytest.fixture
def tiny(tmp_path: Path, kit: Kit, dockerd: PrivateDockerd) -> Iterator[Tiny]:
    root = tmp_path / "dev"
    sysroot = TinyFs(tmp_path / "sysroot.img", root / "device", 16)
    state = TinyFs(tmp_path / "state.img", root / "sota", 8)
    apps = TinyFs(tmp_path / "apps.img", root / "sota" / "reset-apps", 16)
    mounted: list[TinyFs] = []
    rig: Optional[Rig] = None
    try:
        for fs in (sysroot, state, apps):  # the app store is mounted inside the state dir
            fs.mount()
            mounted.append(fs)
        rig = Rig.create(root, kit.factory, dockerd, kit.v1.commit)
        yield Tiny(rig, sysroot, state, apps)
    finally:
        if rig is not None:
            rig.cleanup_engine()
        for fs in reversed(mounted):
            fs.close()
        if rig is not None:
            rig.device.destroy()


def fill_under_install(
    t: Tiny, kit: Kit, tmp_path: Path, stall_in: str, fs: TinyFs, *, after_pull: bool = False
) -> None:
    """Install v2 from a stick that stalls at `stall_in`; fill `fs` while it waits."""
    rig = t.rig
    with FaultStick(kit.b2, tmp_path / "stick", stall=(stall_in, MiB // 2, 120.0)) as stick:
        argv = [*CORE_ARGV, "install", "-s", str(stick.path)]
        proc = subprocess.Popen(
            [*argv, "-c", str(rig.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            assert stick.wait_for("stall"), "the install never reached the stall"
            if after_pull:
                deadline = time.monotonic() + 30
                while not rig.device.rootfs().has_commit(kit.v2.commit) or pull_running(
                    rig.device.sysroot / "ostree" / "repo"
                ):
                    assert time.monotonic() < deadline, "the pull did not finish"
                    time.sleep(0.05)
            fs.fill()
            stick.release()
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    rig.last = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


LEFT_OBJECTS = "undoing it failed, left on the device: the new commit's objects"


def settle(t: Tiny, before: dict[str, object], free: dict[str, int]) -> None:
    """Drop the ballast; the device is unchanged and the attempt left nothing on any disk.

    One honest exception: with the sysroot full at the deploy, even `ostree admin cleanup`
    cannot run (it writes refs first). The message then says the pulled objects stay; they are
    unreferenced, and the next cleanup (here: run by hand, on a device: the next install)
    reclaims them.
    """
    for fs in t.all:
        fs.drain()
    unchanged(t.rig, before)
    if LEFT_OBJECTS in t.rig.last.stderr:
        sh("ostree", "admin", "cleanup", f"--sysroot={t.rig.device.sysroot}")
    for fs in t.all:
        left = free[str(fs.mountpoint)] - fs.free()
        assert left <= SLACK, (
            f"{fs.mountpoint}: the failed install left {left} bytes behind: "
            f"{t.rig.last.stderr.strip().splitlines()[-1:]}"
        )


def start(t: Tiny, kit: Kit) -> tuple[dict[str, object], dict[str, int]]:
    on_v1(t.rig, kit)
    os.sync()
    return t.rig.snapshot(), {str(fs.mountpoint): fs.free() for fs in t.all}


def no_space(rig: Rig, codes: tuple[int, ...] = (60,)) -> None:
    assert rig.last.returncode in codes, rig.describe()
    line = one_line(rig)
    assert "space" in line.lower(), line


# --- seen coming: the updater measures before it writes (60) ----------------------------------


def test_apps_do_not_fit_60_before_any_blob_is_copied(tiny: Tiny, kit: Kit, tmp_path: Path) -> None:
    """The signed sizes tell: no blob is read (the stick's layer fails at byte 0 if it is)."""
    before, free = start(tiny, kit)
    tiny.apps.fill(leave=MiB)  # the new layer alone is 2 MiB
    with FaultStick(kit.b2, tmp_path / "stick", eio_at=(kit.layer_blob(), 0)) as stick:
        assert tiny.rig.install(stick.path) == 60, tiny.rig.describe()
    no_space(tiny.rig)
    assert stick.events() == [], "the layer was read before the space was checked"
    settle(tiny, before, free)


def test_rootfs_does_not_fit_60_before_the_pull(tiny: Tiny, kit: Kit, tmp_path: Path) -> None:
    before, free = start(tiny, kit)
    tiny.sysroot.fill(leave=MiB // 2)  # the new commit holds 1 MiB of new objects
    assert tiny.rig.install(kit.b2) == 60, tiny.rig.describe()
    no_space(tiny.rig)
    settle(tiny, before, free)


# --- not seen coming: something else fills /var while the install runs ------------------------


def test_fills_during_the_app_blob_copy(tiny: Tiny, kit: Kit, tmp_path: Path) -> None:
    before, free = start(tiny, kit)
    fill_under_install(tiny, kit, tmp_path, kit.layer_blob(), tiny.apps)
    settle(tiny, before, free)
    no_space(tiny.rig, (1, 60))


def test_fills_during_the_ostree_pull(tiny: Tiny, kit: Kit, tmp_path: Path) -> None:
    before, free = start(tiny, kit)
    fill_under_install(tiny, kit, tmp_path, kit.filez(), tiny.sysroot)
    settle(tiny, before, free)
    no_space(tiny.rig, (1, 60))


def test_fills_during_the_deploy(tiny: Tiny, kit: Kit, tmp_path: Path) -> None:
    before, free = start(tiny, kit)
    fill_under_install(tiny, kit, tmp_path, kit.layer_blob(), tiny.sysroot, after_pull=True)
    settle(tiny, before, free)
    no_space(tiny.rig, (1, 60))
    converges(tiny.rig, kit)


def test_fills_during_the_state_write(tiny: Tiny, kit: Kit, tmp_path: Path) -> None:
    before, free = start(tiny, kit)
    fill_under_install(tiny, kit, tmp_path, kit.layer_blob(), tiny.state)
    settle(tiny, before, free)
    no_space(tiny.rig, (1, 60))
    converges(tiny.rig, kit)
