"""spec section 7 on the simulated device: real ostree sysroot, file-backed bootloader,
simulated reboots, a real dockerd with docker-compose, bundles from the factory; every step
through the real `usbupdater` CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.rig import Rig
from usbupdater.apps.runner import AppsContext, run_apps
from usbupdater.apps.store import AppStore
from usbupdater.apps.verify import verify_apps
from usbupdater.bundle import Bundle
from usbupdater.config import load as load_config
from usbupdater.hostinfo import machine_arch
from usbupdater.sim.apps import AppSpec, ServiceSpec
from usbupdater.sim.dockerd import PrivateDockerd
from usbupdater.sim.factory import Factory, PublishedTarget, TargetSpec
from usbupdater.sim.signer import edit

pytestmark = pytest.mark.integration

NONET = {"network_mode": "none"}
HEALTHY = ServiceSpec(cmd=("sleep", "3600"), healthcheck=("true",), compose=NONET)


def web(tag: str, *, fails: bool = False) -> AppSpec:
    cmd = ("sh", "-c", "echo web failing; exit 3") if fails else ("sleep", "3600")
    return AppSpec("web", services={"main": ServiceSpec(cmd=cmd, compose=NONET)}, version_tag=tag)


MONITOR = AppSpec("monitor", services={"main": HEALTHY})


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    work = tmp_path_factory.mktemp("core-factory")
    f = Factory(work)
    f.publish(TargetSpec(1, apps=[web("1")]))
    f.publish(TargetSpec(2, apps=[web("2"), MONITOR], rootfs_files={"usr/share/v": b"2"}))
    f.publish(
        TargetSpec(3, apps=[web("3", fails=True), MONITOR], rootfs_files={"usr/share/v": b"3"})
    )
    f.publish(TargetSpec(4, apps=[web("4"), MONITOR], same_rootfs_as="intel-corei7-64-lmp-2"))
    f.publish(TargetSpec(5, apps=[web("5"), MONITOR], rootfs_files={"usr/share/v": b"5"}))
    f.publish(TargetSpec(6, apps=[web("6", fails=True)], same_rootfs_as="intel-corei7-64-lmp-1"))
    yield f
    shutil.rmtree(work, ignore_errors=True)


def T(factory: Factory, version: int) -> PublishedTarget:
    return factory.targets[f"intel-corei7-64-lmp-{version}"]


@pytest.fixture
def rig(tmp_path: Path, factory: Factory, dockerd: PrivateDockerd) -> Iterator[Rig]:
    r = Rig.create(tmp_path, factory, dockerd, T(factory, 1).commit)
    try:
        yield r
    finally:
        r.cleanup_engine()
        r.device.destroy()


def bundle(factory: Factory, tmp_path: Path, *versions: int, **kw: object) -> Path:
    names = [T(factory, v).name for v in versions]
    dst = tmp_path / ("bundle-" + "-".join(map(str, versions)))
    return factory.write_bundle(dst, names, **kw)  # type: ignore[arg-type]


def on_v1(rig: Rig, factory: Factory, tmp_path: Path) -> None:
    """A device flashed with v1 (no apps yet) takes v1's apps: 101, run 0."""
    assert rig.install(bundle(factory, tmp_path, 1)) == 101, rig.describe()
    assert rig.run() == 0, rig.describe()
    assert rig.state().current is not None and rig.state().current.name == T(factory, 1).name


def preload(rig: Rig, b: Path, target: PublishedTarget) -> None:
    """What a factory image with preloaded apps looks like: apps stored and running."""
    cfg = load_config([rig.config])
    store = AppStore(cfg.pacman.reset_apps_root)
    with Bundle.open(b) as src:
        verified = verify_apps(src, target.uris, machine_arch())
        store.add_apps(src, verified.values())
    ctx = AppsContext.from_config(cfg)
    run_apps(ctx, [store.load_app(n, u) for n, u in sorted(target.uris.items())])


# --- the happy paths ---------------------------------------------------------------------------


def test_update_rootfs_and_apps_install_100_reboot_run_0(
    rig: Rig, factory: Factory, tmp_path: Path
) -> None:
    on_v1(rig, factory, tmp_path)
    v1_web = rig.running()["web/main"]
    v2 = T(factory, 2)
    assert rig.install(bundle(factory, tmp_path, 1, 2)) == 100, rig.describe()
    st = rig.state()
    assert st.pending is not None and st.pending.target.name == v2.name
    assert rig.env()["upgrade_available"] == "1" and rig.env()["bootcount"] == "0"
    assert rig.deployments()[0] == v2.commit
    assert rig.run() == 100  # not rebooted yet: reboot first
    assert rig.reboot() == v2.commit
    assert rig.run() == 0, rig.describe()
    st = rig.state()
    assert st.pending is None and st.current is not None and st.current.name == v2.name
    assert rig.env()["upgrade_available"] == "0"
    running = rig.running()
    assert set(running) == {"web/main", "monitor/main"} and running["web/main"] != v1_web
    ct = rig.current_target_file()
    assert ct["TARGET_NAME"] == f'"{v2.name}"' and ct["CUSTOM_VERSION"] == '"2"'
    outcomes = [(h["command"], h["code"]) for h in rig.history()]
    assert outcomes[-2:] == [("install", 100), ("run", 0)]
    assert rig.run() == 40  # nothing pending any more
    assert rig.install(bundle(factory, tmp_path, 2)) == 0  # already installed


def test_apps_only_update_101_then_run_0(rig: Rig, factory: Factory, tmp_path: Path) -> None:
    on_v1(rig, factory, tmp_path)
    assert rig.install(bundle(factory, tmp_path, 2)) == 100
    rig.reboot()
    assert rig.run() == 0
    deployments = rig.deployments()
    monitor = rig.client().containers.list(filters={"label": "com.docker.compose.project=monitor"})
    assert rig.install(bundle(factory, tmp_path, 4)) == 101, rig.describe()
    assert rig.deployments() == deployments  # same rootfs: nothing deployed
    rig.dockerd.restart()  # what the automation does on 101
    assert rig.run() == 0, rig.describe()
    assert rig.state().current.name == T(factory, 4).name  # type: ignore[union-attr]
    after = rig.client().containers.list(filters={"label": "com.docker.compose.project=monitor"})
    assert [c.id for c in after] == [c.id for c in monitor]  # the unchanged app kept running


def test_ostree_only_device(tmp_path: Path, factory: Factory, dockerd: PrivateDockerd) -> None:
    rig = Rig.create(tmp_path, factory, dockerd, T(factory, 1).commit, pacman_type="ostree")
    try:
        assert rig.install(bundle(factory, tmp_path, 2)) == 100, rig.describe()
        rig.reboot()
        assert rig.run() == 0, rig.describe()
        assert rig.state().current.name == T(factory, 2).name  # type: ignore[union-attr]
        assert rig.state().current.apps == {}  # type: ignore[union-attr]
        assert rig.running() == {}
    finally:
        rig.device.destroy()


def test_several_targets_latest_incomplete_older_complete_installed(
    rig: Rig, factory: Factory, tmp_path: Path
) -> None:
    b = bundle(factory, tmp_path, 1, 2, 5)
    web5 = T(factory, 5).apps["web"]
    (b / "apps" / "apps" / "web" / web5.manifest_digest.split(":")[1] / "uri").unlink()
    assert rig.install(b) == 100, rig.describe()
    assert rig.state().pending.target.name == T(factory, 2).name  # type: ignore[union-attr]
    rig.reboot()
    assert rig.run() == 0


# --- boot firmware -----------------------------------------------------------------------------


def test_boot_firmware_not_confirmed_90_then_100_then_0(
    rig: Rig, factory: Factory, tmp_path: Path
) -> None:
    on_v1(rig, factory, tmp_path)
    rig.device.bootloader.set("bootupgrade_available", "1")
    before = rig.snapshot()
    b = bundle(factory, tmp_path, 2)
    assert rig.install(b) == 90, rig.describe()
    assert rig.snapshot() == before  # nothing deployed, nothing stored
    rig.device.bootloader.set("bootupgrade_available", "0")  # the confirming reboot happened
    assert rig.install(b) == 100
    rig.reboot()
    assert rig.run() == 0


def test_boot_firmware_update_run_90(rig: Rig, factory: Factory, tmp_path: Path) -> None:
    on_v1(rig, factory, tmp_path)
    assert rig.install(bundle(factory, tmp_path, 2)) == 100
    rig.reboot()
    rig.device.bootloader.set("bootupgrade_available", "1")  # the new image brought firmware
    assert rig.run() == 90, rig.describe()
    assert rig.state().current.name == T(factory, 2).name  # type: ignore[union-attr]


# --- rollbacks ---------------------------------------------------------------------------------


def test_bootloader_rollback_99(rig: Rig, factory: Factory, tmp_path: Path) -> None:
    on_v1(rig, factory, tmp_path)
    assert rig.install(bundle(factory, tmp_path, 2)) == 100
    rig.reboot()
    assert rig.run() == 0
    v2_running = rig.running()
    v5 = T(factory, 5)
    assert rig.install(bundle(factory, tmp_path, 5)) == 100
    rig.device.declare_unbootable(v5.commit)
    assert rig.reboot() == T(factory, 2).commit  # bootcount past bootlimit: back on v2
    assert rig.env()["rollback"] == "1"
    assert rig.run() == 99, rig.describe()
    st = rig.state()
    assert st.pending is None and st.current.name == T(factory, 2).name  # type: ignore[union-attr]
    assert rig.running() == v2_running
    assert v5.commit not in rig.deployments()
    assert rig.history()[-1]["outcome"] == "failed"
    # A failed target is not installed again from the bundle unless forced.
    b = bundle(factory, tmp_path, 5)
    assert rig.install(b) == 6 and "failed" in rig.last.stderr
    assert rig.install(b, "--force") == 100


def test_app_start_fails_100_reboot_run_0_back_on_previous(
    rig: Rig, factory: Factory, tmp_path: Path
) -> None:
    on_v1(rig, factory, tmp_path)
    assert rig.install(bundle(factory, tmp_path, 2)) == 100
    rig.reboot()
    assert rig.run() == 0
    v2 = T(factory, 2)
    assert rig.install(bundle(factory, tmp_path, 3)) == 100
    assert rig.reboot() == T(factory, 3).commit
    assert rig.run() == 100, rig.describe()  # apps failed: v2 redeployed, reboot to finish
    assert "web" in rig.last.stdout and "failing" in rig.last.stdout
    assert rig.deployments()[0] == v2.commit
    assert rig.reboot() == v2.commit
    assert rig.run() == 0, rig.describe()
    assert rig.state().current.name == v2.name  # type: ignore[union-attr]
    assert set(rig.running()) == {"web/main", "monitor/main"}
    assert rig.current_target_file()["TARGET_NAME"] == f'"{v2.name}"'


def test_apps_only_update_fails_99(rig: Rig, factory: Factory, tmp_path: Path) -> None:
    """Same rootfs, failing app: the previous apps start again at once."""
    on_v1(rig, factory, tmp_path)
    assert rig.install(bundle(factory, tmp_path, 6)) == 101
    assert rig.run() == 99, rig.describe()
    assert rig.state().current.name == T(factory, 1).name  # type: ignore[union-attr]
    assert set(rig.running()) == {"web/main"}


def test_rollback_to_the_initial_target(rig: Rig, factory: Factory, tmp_path: Path) -> None:
    """Flashed with v1 and its apps preloaded, never updated: v1 is the rollback target."""
    b1 = bundle(factory, tmp_path, 1)
    preload(rig, b1, T(factory, 1))
    before = rig.running()
    assert rig.install(bundle(factory, tmp_path, 2)) == 100, rig.describe()
    rig.device.declare_unbootable(T(factory, 2).commit)
    rig.reboot()
    assert rig.run() == 99, rig.describe()
    assert rig.state().current.name == T(factory, 1).name  # type: ignore[union-attr]
    assert rig.running() == before


def test_rollback_to_an_unknown_target_110_and_120(
    tmp_path: Path, factory: Factory, dockerd: PrivateDockerd
) -> None:
    """The device booted a commit no signed target names: its apps are unknown."""
    from usbupdater.sim.device import make_commit

    commit = make_commit(factory.treehub, "custom", "0.1")
    rig = Rig.create(tmp_path, factory, dockerd, commit)
    try:
        assert rig.install(bundle(factory, tmp_path, 2)) == 100
        rig.device.declare_unbootable(T(factory, 2).commit)
        assert rig.reboot() == commit
        assert rig.run() == 110, rig.describe()
        # Apps-driven: a failing target with nothing known to go back to.
        assert rig.install(bundle(factory, tmp_path, 3)) == 100
        rig.reboot()
        assert rig.run() == 120, rig.describe()
        assert rig.state().pending is None
    finally:
        rig.cleanup_engine()
        rig.device.destroy()


# --- refusals ----------------------------------------------------------------------------------


def test_refusals_leave_the_device_unchanged(rig: Rig, factory: Factory, tmp_path: Path) -> None:
    on_v1(rig, factory, tmp_path)
    assert rig.install(bundle(factory, tmp_path, 2)) == 100
    rig.reboot()
    assert rig.run() == 0
    before = rig.snapshot()

    v5 = [T(factory, 5).name]
    tampered = factory.write_bundle(tmp_path / "tampered", v5)
    bt = tampered / "tuf" / "bundle-targets.json"
    bt.write_bytes(edit(bt.read_bytes(), lambda s: s.update(version=99)))
    missing = factory.write_bundle(tmp_path / "missing", v5)
    shutil.rmtree(missing / "apps" / "blobs")
    corrupt = factory.write_bundle(tmp_path / "corrupt", v5)
    from usbupdater.sim.apps import corrupt_blob

    corrupt_blob(corrupt / "apps", T(factory, 5).apps["web"].images["main"].layer_digests[-1])
    downgrade = bundle(factory, tmp_path, 1)
    for b, code in ((tampered, 15), (missing, 8), (corrupt, 80), (downgrade, 102)):
        assert rig.install(b) == code, rig.describe()
        assert rig.last.stderr.strip().splitlines()[-1].startswith("usbupdater: ")
        assert rig.snapshot() == before, b
    assert rig.install(tmp_path / "nothing-here") == 14
    assert rig.snapshot() == before


def test_install_pending_30_and_run_nothing_pending_40(
    rig: Rig, factory: Factory, tmp_path: Path
) -> None:
    assert rig.run() == 40
    assert rig.install(bundle(factory, tmp_path, 2)) == 100
    before = rig.snapshot()
    assert rig.install(bundle(factory, tmp_path, 5)) == 30
    assert rig.snapshot() == before


# Kill -9 at every step boundary (and in rollbacks, and before a reboot): test_kills.py.


def test_apps_shortlisted_by_config(
    tmp_path: Path, factory: Factory, dockerd: PrivateDockerd
) -> None:
    """[pacman] compose_apps: only the listed apps are stored and run; `current` shows both."""
    rig = Rig.create(tmp_path, factory, dockerd, T(factory, 1).commit)
    text = rig.config.read_text().replace("[pacman]\n", '[pacman]\ncompose_apps = "web"\n', 1)
    rig.config.write_text(text)
    try:
        on_v1(rig, factory, tmp_path)
        assert rig.install(bundle(factory, tmp_path, 2)) == 100
        rig.reboot()
        assert rig.run() == 0, rig.describe()
        assert set(rig.running()) == {"web/main"}
        out = rig.cli("current").stdout
        assert "(on) web -> " in out and "(off) monitor -> " in out
        stored = {p.name for p in (rig.root / "sota" / "reset-apps" / "apps").iterdir()}
        assert stored == {"web"}
    finally:
        rig.cleanup_engine()
        rig.device.destroy()


def test_bundle_older_than_the_devices_metadata_still_installs(
    rig: Rig, factory: Factory, tmp_path: Path
) -> None:
    old = factory.write_bundle(tmp_path / "old", [T(factory, 2).name])  # metadata version k
    on_v1(rig, factory, tmp_path)  # the device now trusts version k + 1
    assert rig.install(old) == 100, rig.describe()
    rig.reboot()
    assert rig.run() == 0
    assert rig.state().current.name == T(factory, 2).name  # type: ignore[union-attr]


def test_expired_metadata_refused_with_12(rig: Rig, factory: Factory, tmp_path: Path) -> None:
    b = bundle(factory, tmp_path, 2)
    before = rig.snapshot()
    p = subprocess.run(
        [
            "faketime",
            "-f",
            "+800d",
            sys.executable,
            "-m",
            "usbupdater",
            "install",
            "-s",
            str(b),
            "-c",
            str(rig.config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 12, p.stderr
    assert rig.snapshot() == before


def test_stick_read_error_mid_install_is_one_clear_line(
    rig: Rig, factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stick pulled out mid-read fails with EIO. The kernel here has no device-mapper to make
    a real block device fail, so the app store's reader raises it after some blobs were copied."""
    import errno

    from usbupdater import core
    from usbupdater.apps import copying as store_mod
    from usbupdater.errors import AdapterError

    on_v1(rig, factory, tmp_path)
    before = rig.snapshot()
    real_open = store_mod.CopyingSource.open_blob
    calls = {"n": 0}

    def flaky_open(self: store_mod.CopyingSource, hexdigest: str, max_size: int) -> Any:
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.EIO, "Input/output error", f"/media/stick/apps/blobs/{hexdigest}")
        return real_open(self, hexdigest, max_size)

    monkeypatch.setattr(store_mod.CopyingSource, "open_blob", flaky_open)
    from usbupdater.sim.core import sim_device

    cfg = load_config([rig.config])
    with pytest.raises(AdapterError) as exc:
        core.install(cfg, bundle(factory, tmp_path, 2), device=sim_device(cfg))
    assert "I/O error" in exc.value.reason and "stick" in exc.value.reason
    assert calls["n"] > 3
    assert rig.snapshot() == before
