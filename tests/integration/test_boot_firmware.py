"""Boot firmware updates from real data on the "LmP factory image" device: the new deployment's
`usr/lib/firmware/version.txt` arms `bootupgrade_available` at install (aktualizr-lite
BootloaderLite::installNotify), the simulated U-Boot applies it on the reboot after `run`
confirmed the update (meta-lmp boot-upgrade-regular.cmd.in), and `rollback_protection=1` refuses
older firmware (aktualizr-lite RootfsTreeManager::verifyBootloaderUpdate) with the device
unchanged. Real ostree, real dockerd, the real CLI; ostree-only targets keep it quick."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from usbupdater.sim.factory import Factory, TargetSpec
from usbupdater.sim.lmp import LmpDevice, create_lmp_device
from usbupdater.sim.setup import CORE_ARGV
from usbupdater.state import StateStore

pytestmark = pytest.mark.integration

HW = "intel-corei7-64-lmp"


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    work = tmp_path_factory.mktemp("fw-factory")
    f = Factory(work)
    f.publish(TargetSpec(1, boot_firmware_version=1))  # flashed
    f.publish(TargetSpec(2, boot_firmware_version=2, rootfs_files={"usr/share/v": b"2"}))
    f.publish(TargetSpec(3, boot_firmware_version=2, rootfs_files={"usr/share/v": b"3"}))
    f.publish(TargetSpec(4, boot_firmware_version=1, rootfs_files={"usr/share/v": b"4"}))
    f.publish(TargetSpec(5, boot_firmware_version=3, rootfs_files={"usr/share/v": b"5"}))
    yield f
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def bundles(factory: Factory, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    d = tmp_path_factory.mktemp("fw-bundles")
    return {v: factory.write_bundle(d / str(v), [f"{HW}-{v}"]) for v in (2, 3, 4, 5)}


@pytest.fixture
def lmp(tmp_path: Path, factory: Factory, dockerd: Any) -> Iterator[LmpDevice]:
    dev = create_lmp_device(
        tmp_path / "lmp", factory, f"{HW}-1", docker_host=dockerd.host, preload_apps=False
    )
    try:
        yield dev
    finally:
        dev.device.destroy()


def cli(dev: LmpDevice, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CORE_ARGV, *args, *dev.config_args()],
        capture_output=True,
        text=True,
        timeout=300,
    )


def install(dev: LmpDevice, bundle: Path) -> subprocess.CompletedProcess[str]:
    return cli(dev, "install", "-s", str(bundle))


def env(dev: LmpDevice) -> dict[str, str]:
    return dev.device.bootloader.read_all()


def booted(dev: LmpDevice, factory: Factory) -> int:
    commit = dev.device.booted_commit()
    return next(t.version for t in factory.targets.values() if t.commit == commit)


def snapshot(dev: LmpDevice) -> dict[str, Any]:
    """What a refused install must leave as it was: deployments, boot environment, every file
    of the updater's state (and TUF metadata) under /var/sota, the reboot sentinel, the
    sysroot repo's objects."""
    files = {}
    for p in sorted((dev.root / "var/sota").rglob("*")):
        if p.is_file():
            files[str(p.relative_to(dev.root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    objects = dev.device.sysroot / "ostree/repo/objects"
    return {
        "deployments": [d.dirname for d in dev.device.rootfs().deployments()],
        "env": env(dev),
        "files": files,
        "sentinel": sorted(p.name for p in dev.device.run_dir.rglob("*")),
        "objects": sorted(str(p.relative_to(objects)) for p in objects.rglob("*")),
    }


def test_new_firmware_is_armed_confirmed_and_applied(
    lmp: LmpDevice, factory: Factory, bundles: dict[int, Path]
) -> None:
    assert env(lmp)["bootfirmware_version"] == "1"  # the flashed deployment's, as U-Boot read it
    p = install(lmp, bundles[2])
    assert p.returncode == 100, p.stderr
    e = env(lmp)
    assert e["bootupgrade_available"] == "1" and e["upgrade_available"] == "1"
    assert e["bootfirmware_version"] == "1"  # only the bootloader changes it

    lmp.device.reboot()  # the new firmware on trial (secondary boot path)
    assert booted(lmp, factory) == 2
    p = cli(lmp, "run")
    assert p.returncode == 90, p.stderr  # updated; an optional reboot confirms the firmware
    state = StateStore(lmp.root / "var/sota/usbupdater").load()
    assert state.current is not None and state.current.name == f"{HW}-2"
    assert env(lmp)["upgrade_available"] == "0" and env(lmp)["bootupgrade_available"] == "1"

    # Before the confirming reboot a new rootfs waits: 90, nothing changed.
    before = snapshot(lmp)
    p = install(lmp, bundles[3])
    assert p.returncode == 90, p.stderr
    assert "boot firmware" in p.stdout + p.stderr
    assert snapshot(lmp) == before

    record = lmp.device.reboot()  # the confirming reboot: U-Boot applies version 2
    assert record["boot_firmware_applied"] == "2"
    assert env(lmp)["bootupgrade_available"] == "0" and env(lmp)["bootfirmware_version"] == "2"

    p = install(lmp, bundles[3])  # same firmware: nothing to arm
    assert p.returncode == 100, p.stderr
    assert env(lmp)["bootupgrade_available"] == "0"
    lmp.device.reboot()
    assert booted(lmp, factory) == 3
    p = cli(lmp, "run")
    assert p.returncode == 0, p.stderr


def test_rollback_protection_refuses_older_firmware(
    lmp: LmpDevice, factory: Factory, bundles: dict[int, Path]
) -> None:
    # On the way to firmware 2 first, then protection on (U-Boot sets it on closed boards).
    assert install(lmp, bundles[2]).returncode == 100
    lmp.device.reboot()
    assert cli(lmp, "run").returncode == 90
    lmp.device.reboot()
    assert env(lmp)["bootfirmware_version"] == "2"
    lmp.device.bootloader.set("rollback_protection", "1")

    before = snapshot(lmp)
    p = install(lmp, bundles[4])  # a newer target carrying the older firmware 1
    assert p.returncode == 1, p.stderr
    assert "boot firmware rollback from version 2 to 1" in p.stderr, p.stderr
    assert "rollback_protection=1" in p.stderr and "refused" in p.stderr
    assert snapshot(lmp) == before
    assert booted(lmp, factory) == 2

    p = install(lmp, bundles[5])  # newer firmware still goes through
    assert p.returncode == 100, p.stderr
    assert env(lmp)["bootupgrade_available"] == "1"


def test_a_killed_install_that_armed_the_firmware_is_re_run(
    lmp: LmpDevice, factory: Factory, bundles: dict[int, Path]
) -> None:
    """Killed after arming, before the pending record: the re-run is not held back by its own
    `bootupgrade_available=1` (the deployment it made is the next boot, not a booted one)."""
    state = lmp.root / "var/sota/usbupdater/state.json"
    saved = state.read_bytes() if state.exists() else None
    assert install(lmp, bundles[2]).returncode == 100
    if saved is None:  # what a kill before the COMMIT POINT leaves: no pending record
        state.unlink()
    else:
        state.write_bytes(saved)
    assert env(lmp)["bootupgrade_available"] == "1"  # armed by the "killed" run
    p = install(lmp, bundles[2])
    assert p.returncode == 100, p.stderr
    lmp.device.reboot()
    assert booted(lmp, factory) == 2
    assert cli(lmp, "run").returncode == 90
