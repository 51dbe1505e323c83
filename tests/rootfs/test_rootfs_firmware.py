"""A deployment's boot firmware version file, read without following links out of it, and the
simulated U-Boot's boot firmware steps (meta-lmp u-boot-ostree-scr-fit boot scripts)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from usbupdater.bootloader import FIRMWARE_VERSION_FILE, FIRMWARE_VERSION_FILE_MAX
from usbupdater.errors import AdapterError
from usbupdater.ostree_cli import run_ostree
from usbupdater.sim.device import SimDevice, make_commit, remove_tree

pytestmark = pytest.mark.integration


def _fw(n: int) -> dict[str, bytes]:
    return {FIRMWARE_VERSION_FILE: f"bootfirmware_version={n}\n".encode()}


def _commit_tree(repo: Path, build: object) -> str:
    """A commit of a tree that `build(root)` fills (links and all), on branch `odd`."""
    with tempfile.TemporaryDirectory(dir=repo.parent) as tmp:
        root = Path(tmp)
        for rel, data in {
            "usr/lib/modules/5.15.0-lmp/vmlinuz": b"k\n",
            "usr/lib/modules/5.15.0-lmp/initramfs.img": b"i\n",
            "usr/etc/hostname": b"sim\n",
            "usr/lib/os-release": b"ID=lmp\nVERSION=odd\n",
        }.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        build(root)  # type: ignore[operator]
        done = run_ostree(["commit", f"--repo={repo}", "--branch=odd", f"--tree=dir={root}"])
    return done.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class Commits:
    repo: Path
    fw1: str
    fw2: str
    none: str
    link: str
    dir_link: str
    big: str


@pytest.fixture(scope="module")
def commits(tmp_path_factory: pytest.TempPathFactory) -> Commits:
    repo = tmp_path_factory.mktemp("fw") / "repo"
    fw1 = make_commit(repo, "lmp", "1", _fw(1))
    fw2 = make_commit(repo, "lmp", "2", _fw(2))
    none = make_commit(repo, "lmp", "3")

    def link(root: Path) -> None:
        (root / "usr/lib/firmware").mkdir(parents=True)
        (root / "usr/lib/firmware/version.txt").symlink_to("/etc/hostname")

    def dir_link(root: Path) -> None:
        (root / "usr/share/fw").mkdir(parents=True)
        (root / "usr/share/fw/version.txt").write_text("bootfirmware_version=9\n")
        (root / "usr/lib").mkdir(parents=True, exist_ok=True)
        os.symlink("../share/fw", root / "usr/lib/firmware")

    def big(root: Path) -> None:
        (root / "usr/lib/firmware").mkdir(parents=True)
        (root / "usr/lib/firmware/version.txt").write_bytes(
            b"bootfirmware_version=1\n" + b"#" * FIRMWARE_VERSION_FILE_MAX
        )

    return Commits(
        repo,
        fw1,
        fw2,
        none,
        _commit_tree(repo, link),
        _commit_tree(repo, dir_link),
        _commit_tree(repo, big),
    )


@pytest.fixture
def device(tmp_path: Path, commits: Commits) -> Iterator[SimDevice]:
    try:
        yield SimDevice.create(tmp_path / "device", commits.repo, commits.fw1)
    finally:
        remove_tree(tmp_path / "device")


def _read(device: SimDevice, commits: Commits, commit: str) -> bytes | None:
    rootfs = device.rootfs()
    dep = rootfs.install(commits.repo, commit)
    return rootfs.read_deployment_file(dep, FIRMWARE_VERSION_FILE, FIRMWARE_VERSION_FILE_MAX)


def test_reads_the_version_file(device: SimDevice, commits: Commits) -> None:
    assert _read(device, commits, commits.fw2) == b"bootfirmware_version=2\n"
    assert _read(device, commits, commits.none) is None


@pytest.mark.parametrize(
    ("which", "why"),
    [("link", "symbolic link"), ("dir_link", "symbolic link"), ("big", "more than")],
)
def test_refuses_links_and_big_files(
    device: SimDevice, commits: Commits, which: str, why: str
) -> None:
    with pytest.raises(AdapterError) as err:
        _read(device, commits, getattr(commits, which))
    assert why in err.value.reason


def test_reads_the_version_file_from_the_commit(device: SimDevice, commits: Commits) -> None:
    """Before deploying (rollback protection): the commit in the sysroot repo."""
    rootfs = device.rootfs()
    for c in (commits.fw2, commits.none, commits.link, commits.dir_link, commits.big):
        rootfs.pull(commits.repo, c)
    read = rootfs.read_commit_file
    assert read(commits.fw2, FIRMWARE_VERSION_FILE, 100) == b"bootfirmware_version=2\n"
    assert read(commits.none, FIRMWARE_VERSION_FILE, 100) is None
    assert read(commits.fw2, "usr/lib/nothere/version.txt", 100) is None
    for c, why in (
        (commits.link, "/usr/lib/firmware/version.txt is a symbolic link"),
        (commits.dir_link, "/usr/lib/firmware is a symbolic link"),
        (commits.big, "more than the 4096 allowed"),
        (commits.fw2[::-1], "ostree ls failed"),  # not in the repo
    ):
        with pytest.raises(AdapterError) as err:
            read(c, FIRMWARE_VERSION_FILE, FIRMWARE_VERSION_FILE_MAX)
        assert why in err.value.reason
    with pytest.raises(AdapterError):
        read(commits.fw2, "usr/lib", 100)  # a directory


def test_first_boot_imports_the_deployed_version(device: SimDevice) -> None:
    """boot-header.cmd.in: an unset bootfirmware_version is read from version.txt."""
    assert device.bootloader.get("bootfirmware_version") == "1"
    device.bootloader.unset("bootfirmware_version")
    device.reboot()
    assert device.bootloader.get("bootfirmware_version") == "1"


def test_firmware_applies_on_the_reboot_after_confirmation(
    device: SimDevice, commits: Commits
) -> None:
    bl = device.bootloader
    device.rootfs().install(commits.repo, commits.fw2)
    bl.update_notify()
    bl.set("bootupgrade_available", "1")
    record = device.reboot()  # secondary path: new firmware on trial, nothing recorded yet
    assert record["commit"] == commits.fw2 and record["boot_firmware_applied"] is None
    assert bl.get("bootupgrade_available") == "1" and bl.get("bootfirmware_version") == "1"
    device.reboot()  # not confirmed yet: still on trial
    assert bl.get("bootupgrade_available") == "1"
    bl.set_boot_ok()  # `run` confirmed the update
    record = device.reboot()  # the confirming reboot
    assert record["commit"] == commits.fw2 and record["boot_firmware_applied"] == "2"
    assert bl.get("bootupgrade_available") == "0" and bl.get("bootfirmware_version") == "2"


def test_rollback_drops_the_firmware_update(device: SimDevice, commits: Commits) -> None:
    bl = device.bootloader
    device.rootfs().install(commits.repo, commits.fw2)
    device.declare_unbootable(commits.fw2)
    bl.update_notify()
    bl.set("bootupgrade_available", "1")
    record = device.reboot()
    assert record["commit"] == commits.fw1
    assert bl.get("rollback") == "1" and bl.get("bootupgrade_available") == "0"
    assert bl.get("bootfirmware_version") == "1"


def test_modes_without_firmware_leave_the_variables(tmp_path: Path, commits: Commits) -> None:
    try:
        dev = SimDevice.create(tmp_path / "d", commits.repo, commits.fw1, mode="uboot_generic")
        assert dev.bootloader.get("bootfirmware_version") is None
        dev.bootloader.set("bootupgrade_available", "1")
        dev.reboot()
        assert dev.bootloader.get("bootupgrade_available") == "1"
    finally:
        remove_tree(tmp_path / "d")
