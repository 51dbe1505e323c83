"""Kill -9 of the whole `usbupdater` process group at many points of `install` and `run`
(including `run`'s rollback paths, and kills followed by a reboot before the re-run); the
device converges every time.

"Converges" is asserted as precisely as a run that was never interrupted would be:
- updated: `state.json` has no pending record and names the target as current; the booted
  commit is the target's and is deployed once, as the next boot; the history holds the
  target's `install`/`installed` and `run`/`updated` entries exactly once each; the running
  containers are exactly the target's services, on the target's image ids; the bootloader has
  stopped counting boots (`upgrade_available=0`, `bootcount=0`); the reboot sentinel is gone;
  `current-target` names the target; no temporary file is left in the state dir, the app store
  or next to the bootloader environment;
- rolled back: the same, for the target that was current before, with the failed target's
  history being `install`/`installed` then `run`/`failed`, once each (the good target gains one
  `run`/`rolled-back` entry when the rollback went through a redeploy and a reboot).
Each test says which exit codes the re-run must give: a kill before a step's commit point (the
atomic write of `state.json`) is redone from the start; a kill after it finds the step done
(`install`: 30, pending; `run`: 40, nothing pending) or the next step waiting (a reboot).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.integration.killing import (
    Point,
    after,
    apps_stored,
    blob_copying,
    boot_entries_swapped,
    during,
    kill_at,
)
from tests.integration.rig import Rig
from usbupdater.sim.apps import AppSpec, ServiceSpec
from usbupdater.sim.dockerd import PrivateDockerd
from usbupdater.sim.factory import Factory, PublishedTarget, TargetSpec

pytestmark = pytest.mark.integration

NONET = {"network_mode": "none"}
MONITOR = AppSpec(
    "monitor",
    services={"main": ServiceSpec(cmd=("sleep", "3600"), healthcheck=("true",), compose=NONET)},
)
# A 16 MiB plain-tar layer: copying it into the store takes long enough to be caught.
BIG = AppSpec(
    "big",
    services={"main": ServiceSpec(cmd=("sleep", "3600"), data_layers=(16 << 20,), compose=NONET)},
    layer_compression="none",
)


def web(tag: str, *, fails: bool = False) -> AppSpec:
    cmd = ("sh", "-c", "echo web failing; exit 3") if fails else ("sleep", "3600")
    return AppSpec("web", services={"main": ServiceSpec(cmd=cmd, compose=NONET)}, version_tag=tag)


# --- targets and bundles, shared by the module ---------------------------------------------------


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    """v1: web. v2, v5: new rootfs, web + monitor. v3: new rootfs whose web fails. v6: v1's rootfs
    whose web fails. v7: new rootfs with 8 MiB of data, web + a 16 MiB app. v8: v1's rootfs,
    web + monitor (an apps-only update)."""
    work = tmp_path_factory.mktemp("kills-factory")
    f = Factory(work)
    v1 = f.publish(TargetSpec(1, apps=[web("1")]))
    f.publish(TargetSpec(2, apps=[web("2"), MONITOR], rootfs_files={"usr/share/v": b"2"}))
    f.publish(
        TargetSpec(3, apps=[web("3", fails=True), MONITOR], rootfs_files={"usr/share/v": b"3"})
    )
    f.publish(TargetSpec(5, apps=[web("5"), MONITOR], rootfs_files={"usr/share/v": b"5"}))
    f.publish(TargetSpec(6, apps=[web("6", fails=True)], same_rootfs_as=v1.name))
    f.publish(
        TargetSpec(
            7, apps=[web("7"), BIG], rootfs_files={"usr/share/v": b"7"}, rootfs_bytes=8 << 20
        )
    )
    f.publish(TargetSpec(8, apps=[web("8"), MONITOR], same_rootfs_as=v1.name))
    yield f
    shutil.rmtree(work, ignore_errors=True)


def T(factory: Factory, version: int) -> PublishedTarget:
    return factory.targets[f"intel-corei7-64-lmp-{version}"]


class Bundles:
    """One bundle per target, written on first use and shared (install only reads a stick)."""

    def __init__(self, factory: Factory, work: Path) -> None:
        self.factory = factory
        self.work = work
        self.written: dict[int, Path] = {}

    def __call__(self, version: int) -> Path:
        if version not in self.written:
            dst = self.work / f"bundle-{version}"
            self.written[version] = self.factory.write_bundle(dst, [T(self.factory, version).name])
        return self.written[version]


@pytest.fixture(scope="module")
def bundles(factory: Factory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bundles]:
    work = tmp_path_factory.mktemp("kills-bundles")
    yield Bundles(factory, work)
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def rigs(tmp_path: Path, factory: Factory, dockerd: PrivateDockerd) -> Iterator[Any]:
    """Make a device flashed with a given commit (torn down with its containers)."""
    made: list[Rig] = []

    def make(commit: str) -> Rig:
        r = Rig.create(tmp_path / f"dev{len(made)}", factory, dockerd, commit)
        made.append(r)
        return r

    try:
        yield make
    finally:
        for r in made:
            r.cleanup_engine()
            r.device.destroy()


def on(rig: Rig, bundles: Bundles, factory: Factory, version: int) -> PublishedTarget:
    """A device flashed with `version`'s rootfs takes its apps: 101, run 0."""
    assert rig.install(bundles(version)) == 101, rig.describe()
    assert rig.run() == 0, rig.describe()
    t = T(factory, version)
    assert rig.state().current is not None and rig.state().current.name == t.name
    return t


# --- what "converged" means ----------------------------------------------------------------------


def services(target: PublishedTarget) -> dict[str, str]:
    """The containers a target runs: compose project/service -> image id (its config digest)."""
    return {
        f"{app}/{svc}": img.config_digest
        for app, written in target.apps.items()
        for svc, img in written.images.items()
    }


def entries(rig: Rig, target: PublishedTarget) -> list[tuple[str, str]]:
    return [(h["command"], h["outcome"]) for h in rig.history() if h["target"] == target.name]


def leftovers(rig: Rig) -> list[Path]:
    """Temporary files of a killed step: app store blobs, atomic writes of state and env."""
    sota = rig.root / "sota"
    found = list((sota / "reset-apps").rglob(".tmp-*")) if (sota / "reset-apps").exists() else []
    found += [p for p in sota.rglob("*.tmp.*")]
    found += list(rig.device.root.glob(".*.tmp.*"))
    return found


def assert_no_leftovers(rig: Rig) -> None:
    """No temporary file is left: not of the store's blob copies, not of an atomic write of a
    process this test killed (the next write of that file removes a dead writer's temp)."""
    found = leftovers(rig)
    assert found == [], found


def assert_settled_on(rig: Rig, target: PublishedTarget) -> None:
    """The device runs `target` with nothing pending and nothing half-done."""
    st = rig.state()
    assert st.pending is None, st.pending
    assert st.current is not None and st.current.name == target.name
    assert rig.booted() == target.commit
    deployments = rig.deployments()
    assert deployments[0] == target.commit and deployments.count(target.commit) == 1, deployments
    assert rig.running() == services(target)
    env = rig.env()
    assert (env["upgrade_available"], env["bootcount"]) == ("0", "0"), env
    assert not rig.device.sentinel().is_set()
    assert rig.current_target_file()["TARGET_NAME"] == f'"{target.name}"'
    assert_no_leftovers(rig)


def assert_updated_once(rig: Rig, target: PublishedTarget) -> None:
    assert entries(rig, target) == [("install", "installed"), ("run", "updated")]
    assert_settled_on(rig, target)


def assert_rolled_back(
    rig: Rig, good: PublishedTarget, failed: PublishedTarget, *, redeployed: bool = False
) -> None:
    """Back on `good` (updated to before), `failed` recorded as failed once."""
    assert entries(rig, failed) == [("install", "installed"), ("run", "failed")]
    ok = [("install", "installed"), ("run", "updated")]
    assert entries(rig, good) == ok + ([("run", "rolled-back")] if redeployed else [])
    assert_settled_on(rig, good)


def pending_name(rig: Rig) -> Optional[str]:
    p = rig.state().pending
    return p.target.name if p is not None else None


# --- install: v1 -> v7 (new rootfs and apps) ------------------------------------------------------

INSTALL_POINTS = {
    p.name: p
    for p in (
        after("verifying"),
        after("copying-rootfs"),
        during("pull-local"),  # the ostree child is running: it must die with the group
        after("verifying-apps"),
        Point("blob-copy", when=blob_copying),
        after("copying-apps"),
        Point("apps-stored"),  # made in the test: every app of v7 is recorded in the store
        after("deploying"),
        Point("deployed"),  # made in the test: ostree has swapped the boot entries
        after("done"),
    )
}


def install_point(rig: Rig, name: str, target: PublishedTarget) -> Point:
    if name == "deployed":
        return boot_entries_swapped(rig)
    return apps_stored(target) if name == "apps-stored" else INSTALL_POINTS[name]


@pytest.mark.parametrize("name", list(INSTALL_POINTS))
def test_install_killed_then_rerun_converges(
    rigs: Any, factory: Factory, bundles: Bundles, name: str
) -> None:
    """Before "done" the commit point was not reached: nothing is pending and the re-run gives
    100 (content-addressed blobs are kept or copied again, a partial pull is pulled again,
    deploying the newest deployment again is a no-op: v7 is deployed once). After "done" the
    pending record is written: the re-run gives 30. Then reboot into v7, run 0."""
    rig = rigs(T(factory, 1).commit)
    v7 = T(factory, 7)
    kill_at(rig, ["install", "-s", str(bundles(7))], install_point(rig, name, v7))
    assert pending_name(rig) == (v7.name if name == "done" else None)
    assert rig.install(bundles(7)) == (30 if name == "done" else 100), rig.describe()
    assert rig.reboot() == v7.commit
    assert rig.run() == 0, rig.describe()
    assert_updated_once(rig, v7)


# --- install: v1 -> v8 (apps only, 101) -------------------------------------------------------


@pytest.mark.parametrize("name", ["verifying-apps", "copying-apps", "apps-stored", "done"])
def test_apps_only_install_killed_then_rerun_converges(
    rigs: Any, factory: Factory, bundles: Bundles, name: str
) -> None:
    """v1 (recorded as current) -> v8, no rootfs change: killed before the commit point, the
    re-run gives 101; after it, 30. "apps-stored" (every app recorded in the store) is only a few
    writes before the commit point, so the kill may land on either side: the code follows the
    state the kill left. Then run 0 (the engine restart 101 asks for changes nothing for this
    simulated engine). A never-updated device is covered below."""
    rig = rigs(T(factory, 1).commit)
    on(rig, bundles, factory, 1)
    v8 = T(factory, 8)
    point = apps_stored(v8) if name == "apps-stored" else after(name)
    kill_at(rig, ["install", "-s", str(bundles(8))], point)
    committed = pending_name(rig) == v8.name
    if name != "apps-stored":
        assert committed == (name == "done")
    assert rig.install(bundles(8)) == (30 if committed else 101), rig.describe()
    assert rig.run() == 0, rig.describe()
    assert_updated_once(rig, v8)


# --- run: the happy paths ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "point", [after("starting-apps"), during("docker-compose"), after("done")], ids=str
)
def test_run_killed_then_rerun_converges(
    rigs: Any, factory: Factory, bundles: Bundles, point: Point
) -> None:
    """v1 -> v2 rebooted: killed before "done" (also while docker-compose runs), the re-run
    starts the apps again and gives 0; after "done" v2 is current and the re-run gives 40."""
    rig = rigs(T(factory, 1).commit)
    v2 = T(factory, 2)
    assert rig.install(bundles(2)) == 100, rig.describe()
    assert rig.reboot() == v2.commit
    kill_at(rig, ["run"], point)
    assert rig.run() == (40 if point.phase == "done" else 0), rig.describe()
    assert_updated_once(rig, v2)


def test_apps_only_run_killed_then_rerun_converges(
    rigs: Any, factory: Factory, bundles: Bundles
) -> None:
    """v1 -> v8 (101): run killed while starting the apps; the re-run gives 0."""
    rig = rigs(T(factory, 1).commit)
    assert rig.install(bundles(8)) == 101, rig.describe()
    kill_at(rig, ["run"], after("starting-apps"))
    assert rig.run() == 0, rig.describe()
    assert_updated_once(rig, T(factory, 8))


# --- run: the rollback paths ---------------------------------------------------------------------


def booted_failing_v3(rigs: Any, factory: Factory, bundles: Bundles) -> Rig:
    """A device on v2 that installed v3 (new rootfs, its web fails) and rebooted into it."""
    rig = rigs(T(factory, 2).commit)
    on(rig, bundles, factory, 2)
    assert rig.install(bundles(3)) == 100, rig.describe()
    assert rig.reboot() == T(factory, 3).commit
    return rig


@pytest.mark.parametrize(
    ("phase", "then"), [("starting-apps", "starting-apps"), ("rolling-back", ""), ("done", "done")]
)
def test_apps_fail_on_new_rootfs_run_killed_then_rerun_converges(
    rigs: Any, factory: Factory, bundles: Bundles, phase: str, then: str
) -> None:
    """v3's apps fail on its new rootfs: run redeploys v2 (100). Killed before "done", the
    re-run tries v3's apps again, they fail again, v3's failure is recorded once and v2 is
    redeployed (once: redeploying the newest deployment is a no-op): 100. After "done" the
    rollback is pending and the device has not rebooted: 100 again. Then reboot into v2; the
    rollback's own run is killed too (`then`): its re-run gives 0 (killed before "done") or 40
    (after). Two kills share one device to keep the module fast; each is checked on its own."""
    rig = booted_failing_v3(rigs, factory, bundles)
    v2, v3 = T(factory, 2), T(factory, 3)
    kill_at(rig, ["run"], after(phase))
    assert rig.run() == 100, rig.describe()
    st = rig.state()
    assert st.pending is not None and st.pending.target.name == v2.name
    assert st.pending.rollback_of == v3.name
    assert rig.deployments()[0] == v2.commit
    assert entries(rig, v3) == [("install", "installed"), ("run", "failed")]
    assert rig.reboot() == v2.commit
    if then:
        kill_at(rig, ["run"], after(then))
    assert rig.run() == (40 if then == "done" else 0), rig.describe()
    assert_rolled_back(rig, v2, v3, redeployed=True)


@pytest.mark.parametrize("phase", ["rolling-back", "done"])
def test_apps_only_update_fails_run_killed_then_rerun_converges(
    rigs: Any, factory: Factory, bundles: Bundles, phase: str
) -> None:
    """v1 -> v6 (same rootfs, its web fails): run restarts v1's apps at once (99). Killed
    before "done", the re-run fails v6 again and restores v1: 99; after, 40."""
    rig = rigs(T(factory, 1).commit)
    v1 = on(rig, bundles, factory, 1)
    assert rig.install(bundles(6)) == 101, rig.describe()
    kill_at(rig, ["run"], after(phase))
    assert rig.run() == (40 if phase == "done" else 99), rig.describe()
    assert_rolled_back(rig, v1, T(factory, 6))


@pytest.mark.parametrize("phase", ["rolling-back", "done"])
def test_bootloader_rollback_run_killed_then_rerun_converges(
    rigs: Any, factory: Factory, bundles: Bundles, phase: str
) -> None:
    """v2 -> v5, v5 never boots: the bootloader falls back to v2 and run drops v5's deployment
    and restarts v2's apps (99). Killed before "done", the re-run does it again (dropping a
    deployment that is gone is a no-op): 99; after, 40. v5 is no longer deployed."""
    rig = rigs(T(factory, 2).commit)
    v2 = on(rig, bundles, factory, 2)
    v5 = T(factory, 5)
    assert rig.install(bundles(5)) == 100, rig.describe()
    rig.device.declare_unbootable(v5.commit)
    assert rig.reboot() == v2.commit
    assert rig.env()["rollback"] == "1"
    kill_at(rig, ["run"], after(phase))
    assert rig.run() == (40 if phase == "done" else 99), rig.describe()
    assert_rolled_back(rig, v2, v5)
    assert v5.commit not in rig.deployments()


def test_unknown_rollback_target_run_killed_then_rerun_converges(
    rigs: Any, factory: Factory, bundles: Bundles
) -> None:
    """Flashed with a commit no target names, v2 never boots: run gives 110 (the previous
    apps are unknown). Killed while rolling back, the re-run gives 110 and records v2's failure
    once; nothing is pending, v2 is no longer deployed, the boot counter is off."""
    from usbupdater.sim.device import make_commit

    commit = make_commit(factory.treehub, "custom", "0.1")
    rig = rigs(commit)
    v2 = T(factory, 2)
    assert rig.install(bundles(2)) == 100, rig.describe()
    rig.device.declare_unbootable(v2.commit)
    assert rig.reboot() == commit
    kill_at(rig, ["run"], after("rolling-back"))
    assert rig.run() == 110, rig.describe()
    assert rig.state().pending is None
    assert rig.booted() == commit and rig.deployments() == [commit]
    assert entries(rig, v2) == [("install", "installed"), ("run", "failed")]
    env = rig.env()
    assert (env["upgrade_available"], env["bootcount"]) == ("0", "0"), env
    assert not rig.device.sentinel().is_set()
    assert_no_leftovers(rig)


# --- killed, then rebooted before the re-run --------------------------------------------------


@pytest.mark.parametrize("name", ["deploying", "deployed", "done"])
def test_install_killed_rebooted_then_rerun_converges(
    rigs: Any, factory: Factory, bundles: Bundles, name: str
) -> None:
    """v1 -> v7 killed, then the device reboots before anyone re-runs install. It boots v1 when
    the kill came before ostree swapped the boot entries: the re-run gives 100, reboot, run 0.
    It boots v7 once they were swapped: without the pending record (killed before "done") the
    re-run finds v7 booted and only the apps missing: 101, run 0; with it (after "done"): 30,
    run 0. Either way v7 ends updated once. The device has been updated once before (v1 is
    recorded as current); see `test_first_update_killed_after_deploy_then_rebooted` for one
    that has not."""
    rig = rigs(T(factory, 1).commit)
    v1 = on(rig, bundles, factory, 1)
    v7 = T(factory, 7)
    kill_at(rig, ["install", "-s", str(bundles(7))], install_point(rig, name, v7))
    booted = rig.reboot()
    if name in ("deployed", "done"):
        assert booted == v7.commit
    else:
        assert booted in (v1.commit, v7.commit)  # the kill may land while ostree deploys
    code = rig.install(bundles(7))
    if booted == v1.commit:
        assert code == 100, rig.describe()
        assert rig.reboot() == v7.commit
    else:
        assert code == (30 if name == "done" else 101), rig.describe()
    assert rig.run() == 0, rig.describe()
    assert_updated_once(rig, v7)


def test_run_killed_rebooted_then_rerun_converges(
    rigs: Any, factory: Factory, bundles: Bundles
) -> None:
    """v1 -> v2 rebooted, run killed while starting the apps, rebooted again (v2 boots again,
    the boot counter still armed): run 0."""
    rig = rigs(T(factory, 1).commit)
    v2 = T(factory, 2)
    assert rig.install(bundles(2)) == 100, rig.describe()
    assert rig.reboot() == v2.commit
    kill_at(rig, ["run"], after("starting-apps"))
    assert rig.reboot() == v2.commit
    assert rig.run() == 0, rig.describe()
    assert_updated_once(rig, v2)


@pytest.mark.parametrize("name", ["rolling-back", "deployed"])
def test_apps_fail_run_killed_rebooted_then_rerun_converges(
    rigs: Any, factory: Factory, bundles: Bundles, name: str
) -> None:
    """v3's apps fail; run is killed while rolling back, then the device reboots.
    - Before v2's redeploy swapped the boot entries, v3 boots again: run fails its apps again,
      redeploys v2 (100), reboot, run 0: v2 gains one `rolled-back` entry.
    - After it, v2 boots while v3 is pending: run sees the bootloader's choice as a fallback and
      restarts v2's apps at once (99); v3's failure, already recorded, is not written twice."""
    rig = booted_failing_v3(rigs, factory, bundles)
    v2, v3 = T(factory, 2), T(factory, 3)
    point = boot_entries_swapped(rig) if name == "deployed" else after(name)
    kill_at(rig, ["run"], point)
    booted = rig.reboot()
    if name == "deployed":
        assert booted == v2.commit
    if booted == v3.commit:
        assert rig.run() == 100, rig.describe()
        assert rig.reboot() == v2.commit
        assert rig.run() == 0, rig.describe()
        assert_rolled_back(rig, v2, v3, redeployed=True)
    else:
        assert booted == v2.commit
        assert rig.run() == 99, rig.describe()
        assert_rolled_back(rig, v2, v3)


def test_rollback_run_killed_rebooted_then_rerun_converges(
    rigs: Any, factory: Factory, bundles: Bundles
) -> None:
    """The rollback's own run (on v2 after the redeploy) killed, then another reboot: v2 boots
    again, run 0."""
    rig = booted_failing_v3(rigs, factory, bundles)
    v2, v3 = T(factory, 2), T(factory, 3)
    assert rig.run() == 100, rig.describe()
    assert rig.reboot() == v2.commit
    kill_at(rig, ["run"], after("starting-apps"))
    assert rig.reboot() == v2.commit
    assert rig.run() == 0, rig.describe()
    assert_rolled_back(rig, v2, v3, redeployed=True)


# --- the first update of a never-updated device ---------------------------------------------------


def test_first_update_killed_after_deploy_then_rebooted(
    rigs: Any, factory: Factory, bundles: Bundles
) -> None:
    """Flashed with v1, never updated, install of v7 killed once ostree deployed it, then a
    reboot boots v7. Converging: the re-run finds v7 booted with its apps not started: 101,
    run 0, v7 updated once."""
    rig = rigs(T(factory, 1).commit)
    v7 = T(factory, 7)
    kill_at(rig, ["install", "-s", str(bundles(7))], boot_entries_swapped(rig))
    if pending_name(rig) is not None:
        pytest.fail("the kill came after install's commit point: the bug was not exercised")
    if rig.reboot() != v7.commit:
        pytest.fail("v7 was not deployed by the killed install: the bug was not exercised")
    assert rig.install(bundles(7)) == 101, rig.describe()
    assert rig.run() == 0, rig.describe()
    assert_updated_once(rig, v7)
