"""The simulation kit: commits, reboots with boot counting, cleanup, and a real small disk."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from ostree_helpers import SourceRepo

from usbupdater.booted import ProcCmdlineBootedCommit
from usbupdater.errors import ExitCode, NoSpaceError
from usbupdater.sim.boot import RecordedBootedCommit
from usbupdater.sim.device import SimBootError, SimDevice, make_commit, remove_tree

pytestmark = pytest.mark.integration


def test_make_commit_tree(src_repo: SourceRepo) -> None:
    def cat(path: str) -> str:
        return subprocess.run(
            ["ostree", "cat", f"--repo={src_repo.path}", src_repo.v2, path],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    assert 'VERSION="2"' in cat("/usr/lib/os-release")
    assert cat("/usr/share/app/v2.txt") == "two\n"
    assert "kernel" in cat("/usr/lib/modules/5.15.0-lmp/vmlinuz")
    mode = (src_repo.path / "config").read_text()
    assert "mode=archive" in mode


def test_reboot_wipes_run_and_records_boot(device: SimDevice, src_repo: SourceRepo) -> None:
    (device.sentinel_dir).mkdir(parents=True)
    (device.sentinel_dir / "need_reboot").write_text("")
    record = device.reboot()
    assert not device.sentinel_dir.exists()
    assert device.run_dir.is_dir()
    assert record["commit"] == src_repo.v1
    assert json.loads(device.record_file.read_text())["commit"] == src_repo.v1
    assert RecordedBootedCommit(device.record_file).booted_commit() == src_repo.v1
    # the recorded kernel command line resolves through the sysroot's ostree= link
    assert "ostree=" in device.cmdline_file.read_text()
    real = ProcCmdlineBootedCommit(device.sysroot, cmdline=device.cmdline_file)
    assert real.booted_commit() == src_repo.v1
    # without ostree= the real reader falls back to `ostree admin status`: nothing booted here
    empty = device.root / "empty-cmdline"
    empty.write_text("root=/dev/vda rw\n")
    assert ProcCmdlineBootedCommit(device.sysroot, cmdline=empty).booted_commit() is None


def test_no_record_means_unknown(tmp_path: Path) -> None:
    assert RecordedBootedCommit(tmp_path / "none.json").booted_commit() is None


def test_nothing_bootable(device: SimDevice, src_repo: SourceRepo) -> None:
    device.declare_unbootable(src_repo.v1)
    with pytest.raises(SimBootError):
        device.reboot()
    device.declare_unbootable(src_repo.v1, unbootable=False)
    assert device.reboot()["commit"] == src_repo.v1


def test_bootlimit_is_configurable(tmp_path: Path, src_repo: SourceRepo) -> None:
    try:
        dev = SimDevice.create(tmp_path / "d", src_repo.path, src_repo.v1, bootlimit=1)
        dev.rootfs().install(src_repo.path, src_repo.v2)
        dev.declare_unbootable(src_repo.v2)
        dev.bootloader.update_notify()
        record = dev.reboot()
        assert record["commit"] == src_repo.v1
        assert len(record["tries"]) == 2  # type: ignore[arg-type]
        assert dev.bootloader.get("bootcount") == "2"
    finally:
        remove_tree(tmp_path / "d")


def test_remove_tree_clears_immutable_bits(device: SimDevice) -> None:
    deploy = next(p for p in (device.sysroot / "ostree/deploy/lmp/deploy").iterdir() if p.is_dir())
    attrs = subprocess.run(["lsattr", "-d", str(deploy)], capture_output=True, text=True)
    assert "i" in attrs.stdout.split()[0]
    remove_tree(device.root)
    assert not device.root.exists()
    remove_tree(device.root)  # absent: fine


# --- a real small filesystem ------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB ext4 filesystem on a loop device, mounted; always detached afterwards."""
    img = tmp_path / "disk.img"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with open(img, "wb") as fh:
        fh.truncate(24 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    try:
        loop = subprocess.run(
            ["losetup", "-f", "--show", str(img)], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"no loop device: {exc}")
    mounted = False
    try:
        subprocess.run(["mount", loop, str(mnt)], check=True)
        mounted = True
        yield mnt
    finally:
        if mounted:
            remove_tree(mnt / "device")
            subprocess.run(["umount", str(mnt)], check=False)
        subprocess.run(["losetup", "-d", loop], check=False)


def test_not_enough_space_on_real_filesystem(
    small_fs: Path, src_repo: SourceRepo, tmp_path: Path
) -> None:
    big_repo = src_repo.copy(tmp_path / "big_repo")
    big = make_commit(big_repo, "lmp", "9", extra_bytes=30 << 20)
    dev = SimDevice.create(small_fs / "device", src_repo.path, src_repo.v1)
    rootfs = dev.rootfs()
    objects = sorted(p.name for p in (dev.sysroot / "ostree/repo/objects").rglob("*"))
    deployments = rootfs.deployments()
    with pytest.raises(NoSpaceError) as exc:
        rootfs.install(big_repo, big)
    assert exc.value.code == ExitCode.NO_SPACE
    message = str(exc.value)
    assert "need" in message and "bytes are free" in message
    assert rootfs.deployments() == deployments
    assert sorted(p.name for p in (dev.sysroot / "ostree/repo/objects").rglob("*")) == objects
    # past a wrong estimate, ostree's own ENOSPC / min-free-space refusal is still exit 60
    blind = dev.rootfs(free_space=lambda _p: 1 << 40)
    with pytest.raises(NoSpaceError, match="ostree pull-local"):
        blind.install(big_repo, big)
    assert rootfs.deployments() == deployments
    assert sorted(p.name for p in (dev.sysroot / "ostree/repo/objects").rglob("*")) == objects
    # a commit that fits still installs on the same filesystem
    assert rootfs.install(big_repo, src_repo.v2).commit == src_repo.v2
