"""Issue 14 items 1 and 7 on the "LmP factory image" device (sim/lmp.py): apps preloaded in
composectl's layout and started by the first boot, a private real dockerd, the real CLI.

- the factory target's stick is "already installed" (0), containers untouched;
- a rollback to the factory target (boot failure: the bootloader's fallback; apps failure on the
  same rootfs) keeps the preloaded apps' very containers (99);
- a preloaded app with a corrupt store blob is not present; install copies it from the stick;
- a compose project started by hand survives a rollback and an update;
- docker_prune removes an image no target uses after a confirmed update, keeps the rollback
  target's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.lmp_rig import LmpRig
from usbupdater.sim.apps import AppSpec, ServiceSpec, blob_path, corrupt_blob
from usbupdater.sim.dockerd import PrivateDockerd
from usbupdater.sim.factory import Factory, PublishedTarget, TargetSpec
from usbupdater.sim.lmp import create_lmp_device
from usbupdater.sim.lmp_apps import preload_tag

pytestmark = pytest.mark.integration

NONET = {"network_mode": "none", "init": True}
SLEEP = ServiceSpec(cmd=("sleep", "3600"), compose=NONET)
SHELLHTTPD = AppSpec("shellhttpd", services={"main": SLEEP})
MONITOR = AppSpec("monitor", services={"main": ServiceSpec(cmd=("sleep", "9999"), compose=NONET)})
BROKEN = AppSpec(
    "broken", services={"main": ServiceSpec(cmd=("sh", "-c", "exit 4"), compose=NONET)}
)
PRELOADED = ("monitor/main", "shellhttpd/main")


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    work = tmp_path_factory.mktemp("lmp-device-factory")
    f = Factory(work)
    f.publish(TargetSpec(1, apps=[SHELLHTTPD, MONITOR]))  # flashed, apps preloaded
    # an apps-only update whose new app fails: same rootfs, the preloaded apps unchanged
    f.publish(
        TargetSpec(2, apps=[SHELLHTTPD, MONITOR, BROKEN], same_rootfs_as="intel-corei7-64-lmp-1")
    )
    # a new rootfs and a new shellhttpd
    shell3 = AppSpec("shellhttpd", services={"main": SLEEP}, version_tag="3")
    f.publish(TargetSpec(3, apps=[shell3, MONITOR], rootfs_files={"usr/share/v": b"3"}))
    yield f
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def engine() -> Iterator[PrivateDockerd]:
    """A private engine: docker_prune must not see (or remove) other modules' images."""
    with PrivateDockerd() as d:
        yield d


def T(factory: Factory, v: int) -> PublishedTarget:
    return factory.targets[f"intel-corei7-64-lmp-{v}"]


@pytest.fixture
def rig(tmp_path: Path, factory: Factory, engine: PrivateDockerd) -> Iterator[LmpRig]:
    lmp = create_lmp_device(
        tmp_path / "lmp",
        factory,
        T(factory, 1).name,
        docker_host=engine.host,
        start_apps=True,
        apps_start_timeout=20,
    )
    r = LmpRig(lmp, engine)
    try:
        yield r
    finally:
        r.cleanup()


def bundle(factory: Factory, tmp_path: Path, v: int) -> Path:
    return factory.write_bundle(tmp_path / f"bundle-{v}", [T(factory, v).name])


def preloaded(rig: LmpRig) -> dict[str, tuple[str, str]]:
    running = rig.containers()
    return {k: running[k] for k in PRELOADED}


def test_factory_targets_stick_is_already_installed(
    rig: LmpRig, factory: Factory, tmp_path: Path
) -> None:
    before = preloaded(rig)
    b = bundle(factory, tmp_path, 1)
    assert rig.check(b) == 0, rig.describe()  # check: already on the best target...
    assert not list(rig.store.rglob("usbupdater-app.json"))  # ...and it cached nothing
    assert rig.install(b) == 0, rig.describe()
    assert "already installed" in rig.last.stdout
    assert rig.state().pending is None
    assert preloaded(rig) == before  # same containers, nothing restarted
    # the verdict is cached as the store's record, one per preloaded app
    assert len(list(rig.store.rglob("usbupdater-app.json"))) == 2
    assert rig.install(b) == 0, rig.describe()


def test_boot_failure_rollback_to_factory_target_keeps_apps(
    rig: LmpRig, factory: Factory, tmp_path: Path
) -> None:
    before = preloaded(rig)
    v1, v3 = T(factory, 1), T(factory, 3)
    assert rig.install(bundle(factory, tmp_path, 3)) == 100, rig.describe()
    pending = rig.state().pending
    assert pending is not None and pending.previous is not None
    assert pending.previous.apps == v1.uris  # the factory target with its preloaded apps
    rig.lmp.device.declare_unbootable(v3.commit)
    assert rig.reboot() == v1.commit  # the simulated U-Boot fell back after bootlimit tries
    assert rig.run() == 99, rig.describe()
    assert preloaded(rig) == before  # the very same containers
    st = rig.state()
    assert st.current is not None and st.current.name == v1.name and st.current.apps == v1.uris


def test_apps_failure_same_rootfs_rollback_keeps_apps(
    rig: LmpRig, factory: Factory, tmp_path: Path
) -> None:
    before = preloaded(rig)
    assert rig.install(bundle(factory, tmp_path, 2)) == 101, rig.describe()
    assert rig.run() == 99, rig.describe()
    assert "broken" in rig.last.stdout
    assert preloaded(rig) == before
    assert not any(k.startswith("broken/") for k in rig.containers())
    assert not (rig.compose_root / "broken").exists()  # the failed app was taken down
    assert rig.state().current.name == T(factory, 1).name  # type: ignore[union-attr]


def test_corrupt_preloaded_blob_is_not_present_and_is_copied_again(
    rig: LmpRig, factory: Factory, tmp_path: Path
) -> None:
    before = preloaded(rig)
    layer = rig.lmp.preloaded["monitor"].images["main"].layer_digests[-1]
    corrupt_blob(rig.store, layer)
    b = bundle(factory, tmp_path, 1)
    assert rig.install(b) == 101, rig.describe()  # monitor is not present: install it
    data = blob_path(rig.store, layer).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer  # a good copy from the stick
    assert rig.run() == 0, rig.describe()
    assert preloaded(rig) == before  # still running the verified images: not recreated
    assert rig.install(b) == 0, rig.describe()


def _start_by_hand(rig: LmpRig) -> None:
    """`docker-compose up -d` typed by a person in compose_apps_root/handmade."""
    img = rig.lmp.preloaded["monitor"].images["main"]  # the image every target keeps
    d = rig.compose_root / "handmade"
    d.mkdir()
    (d / "docker-compose.yml").write_text(
        'version: "3.7"\nservices:\n  sh:\n'
        f"    image: {preload_tag(img)}\n"
        '    command: ["sleep", "3600"]\n    network_mode: none\n    init: true\n'
    )
    subprocess.run(
        ["docker-compose", "up", "-d"],
        cwd=d,
        env={**os.environ, "DOCKER_HOST": rig.dockerd.host},
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_hand_started_project_survives_rollback_and_update_and_prune(
    rig: LmpRig, factory: Factory, tmp_path: Path
) -> None:
    _start_by_hand(rig)
    hand = rig.containers()["handmade/sh"]
    v1, v3 = T(factory, 1), T(factory, 3)
    # an apps-failure rollback loads broken's image and leaves it behind
    assert rig.install(bundle(factory, tmp_path, 2)) == 101, rig.describe()
    assert rig.run() == 99, rig.describe()
    assert rig.containers()["handmade/sh"] == hand
    broken_image = T(factory, 2).apps["broken"].images["main"].config_digest
    assert broken_image in rig.image_ids()
    # a confirmed update: v3's new shellhttpd replaces the factory one
    assert rig.install(bundle(factory, tmp_path, 3)) == 100, rig.describe()
    assert rig.reboot() == v3.commit
    assert rig.run() == 0, rig.describe()
    running = rig.containers()
    assert running["handmade/sh"] == hand  # never taken down
    new_shell = v3.apps["shellhttpd"].images["main"].config_digest
    assert running["shellhttpd/main"][1] == new_shell
    images = rig.image_ids()
    assert broken_image not in images  # no target uses it: pruned
    old_shell = v1.apps["shellhttpd"].images["main"].config_digest
    assert old_shell in images  # no container uses it: kept as the rollback target's
    assert v1.apps["monitor"].images["main"].config_digest in images
