"""App blobs that do not fit are refused (60) before the store's filesystem fills up.

The store lives on a real, tiny ext4 filesystem (mkfs.ext4 on an image, losetup, mount) mounted
where the simulated device keeps its app store; the install runs through the real CLI while a
thread watches the filesystem's free space.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.rig import Rig
from usbupdater.config import load as load_config
from usbupdater.sim.apps import AppSpec, ServiceSpec
from usbupdater.sim.dockerd import PrivateDockerd
from usbupdater.sim.factory import Factory, TargetSpec

pytestmark = pytest.mark.integration

MiB = 1 << 20
FS_SIZE = 32 * MiB
NONET = {"network_mode": "none"}


def name(version: int) -> str:
    return f"intel-corei7-64-lmp-{version}"


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    work = tmp_path_factory.mktemp("space-factory")
    f = Factory(work)
    small = ServiceSpec(cmd=("sleep", "3600"), compose=NONET)
    f.publish(TargetSpec(1, apps=[AppSpec("web", services={"main": small}, version_tag="1")]))
    # Random (incompressible) layers: 3 x 8 MiB, more than the 32 MiB filesystem holds above
    # its 20 % reserve, though each one alone fits.
    big = ServiceSpec(cmd=("sleep", "3600"), compose=NONET, data_layers=(8 * MiB,) * 3)
    f.publish(
        TargetSpec(
            2,
            apps=[AppSpec("web", services={"main": big}, version_tag="2")],
            same_rootfs_as=name(1),
        )
    )
    yield f
    shutil.rmtree(work, ignore_errors=True)


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture
def tiny_store(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB ext4 filesystem mounted at the path the rig's config uses as its app store."""
    image = tmp_path / "var.img"
    with open(image, "wb") as fh:
        fh.truncate(FS_SIZE)
    _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
    loop = _run("losetup", "--find", "--show", str(image)).strip()
    mountpoint = tmp_path / "sota" / "reset-apps"
    mountpoint.mkdir(parents=True)
    try:
        _run("mount", "-t", "ext4", loop, str(mountpoint))
        try:
            (mountpoint / "lost+found").rmdir()
            yield mountpoint
        finally:
            subprocess.run(["umount", str(mountpoint)], check=False, timeout=60)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False, timeout=60)


@pytest.fixture
def rig(
    tmp_path: Path, factory: Factory, dockerd: PrivateDockerd, tiny_store: Path
) -> Iterator[Rig]:
    r = Rig.create(tmp_path, factory, dockerd, factory.targets[name(1)].commit)
    try:
        assert load_config([r.config]).pacman.reset_apps_root == tiny_store
        yield r
    finally:
        r.cleanup_engine()
        r.device.destroy()


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_apps_too_big_for_the_store_60_before_it_fills(
    rig: Rig, factory: Factory, tmp_path: Path, tiny_store: Path
) -> None:
    assert rig.install(factory.write_bundle(tmp_path / "b1", [name(1)])) == 101, rig.describe()
    assert rig.run() == 0, rig.describe()
    before = rig.snapshot()
    reserve = FS_SIZE * 20 // 100  # the default [pacman] storage_watermark = 80
    assert _free(tiny_store) > reserve + 8 * MiB  # one layer fits, three do not

    lowest = [_free(tiny_store)]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            lowest[0] = min(lowest[0], _free(tiny_store))
            done.wait(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        code = rig.install(factory.write_bundle(tmp_path / "b2", [name(2)]))
    finally:
        done.set()
        watcher.join()
    assert code == 60, rig.describe()
    line = rig.last.stderr.strip().splitlines()[-1]
    assert "storage_watermark = 80%" in line and "bytes short" in line, line
    assert line.startswith("usbupdater: not enough space"), line
    assert lowest[0] >= reserve - MiB, (lowest[0], reserve)  # never into the reserve
    assert _free(tiny_store) > reserve
    assert rig.snapshot() == before


def test_watermark_is_read_and_clamped(
    rig: Rig, factory: Factory, tmp_path: Path, tiny_store: Path
) -> None:
    """storage_watermark = 5 is clamped to aktualizr-lite's minimum, 20: 80 % of the filesystem
    stays free, so the first big layer is refused before any of its bytes is written."""
    assert rig.install(factory.write_bundle(tmp_path / "b1", [name(1)])) == 101, rig.describe()
    assert rig.run() == 0, rig.describe()
    cfg = rig.config.read_text().replace("[pacman]\n", "[pacman]\nstorage_watermark = 5\n", 1)
    rig.config.write_text(cfg)
    before = rig.snapshot()
    free = _free(tiny_store)
    assert rig.install(factory.write_bundle(tmp_path / "b2", [name(2)])) == 60, rig.describe()
    assert "storage_watermark = 20%" in rig.last.stderr
    assert abs(_free(tiny_store) - free) <= 64 * 1024  # small blobs came and went, no layer
    assert rig.snapshot() == before
