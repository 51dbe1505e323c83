"""Acceptance: one stick for a whole site. A stick with three bundles (two hardware ids, one for
the wrong tag) goes from device to device, each driven by the real `usbupdater watch` service
(real udevd, an ext4 stick on a loop device, the real core, simulated devices sharing one private
dockerd); afterwards `usbupdater report` reads the reports they left on the stick."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import Agent, recorded
from tests.agent.test_acceptance import Bench
from tests.integration.rig import Rig
from usbupdater.sim.apps import AppSpec, ServiceSpec
from usbupdater.sim.dockerd import PrivateDockerd
from usbupdater.sim.factory import Factory, TargetSpec
from usbupdater.sim.sticks import Sticks, mounts_under, sh

pytestmark = pytest.mark.integration

NONET = {"network_mode": "none"}
A1, A2 = "intel-corei7-64-lmp-1", "intel-corei7-64-lmp-2"
B1, B2, B3 = "other-board-lmp-1", "other-board-lmp-2", "other-board-lmp-3"


def web(tag: str, healthy: bool = True) -> AppSpec:
    svc = ServiceSpec(
        cmd=("sleep", "3600"), compose=NONET, healthcheck=None if healthy else ("false",)
    )
    return AppSpec("web", services={"main": svc}, version_tag=tag)


@pytest.fixture(scope="module")
def factories(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Factory, Factory]]:
    """One factory (one set of keys) building for two kinds of device."""
    work = tmp_path_factory.mktemp("site-factory")
    a = Factory(work / "a")
    a.publish(TargetSpec(1, apps=[web("a1")]))
    a.publish(TargetSpec(2, apps=[web("a2")], rootfs_files={"usr/share/v": b"a2"}))
    b = Factory(work / "b", hardware_id="other-board", repo=a.repo)
    b.publish(TargetSpec(1))
    b.publish(TargetSpec(2, apps=[web("b2")], same_rootfs_as=B1))
    b.publish(TargetSpec(3, apps=[web("b3", healthy=False)], same_rootfs_as=B1))
    yield a, b
    shutil.rmtree(work, ignore_errors=True)


def site_stick(tmp: Path, a: Factory, b: Factory, board: str) -> Path:
    content = tmp / "site-stick"
    a.write_bundle(content / "intel", [A2])
    b.write_bundle(content / "other-board", [board])
    a.write_bundle(content / "intel-beta", [A2], tag="beta")  # for devices tagged beta
    return content


class Site:
    def __init__(self, tmp: Path, dockerd: PrivateDockerd, sticks: Sticks, agents: list[Agent]):
        self.tmp, self.dockerd, self.sticks, self.agents = tmp, dockerd, sticks, agents
        self.benches: list[Bench] = []

    def device(self, factory: Factory, flashed: str, **kw: Any) -> Bench:
        d = self.tmp / f"device{len(self.benches) + 1}"
        d.mkdir()
        rig = Rig.create(d / "dev", factory, self.dockerd, factory.targets[flashed].commit, **kw)
        # Each machine its own serial (else all share this host's machine-id pseudonym).
        serial = f'\n[provision]\nprimary_ecu_serial = "site-{len(self.benches) + 1}"\n'
        bench = Bench(d, rig, self.sticks, factory, serial)
        self.agents.append(bench.agent)
        self.benches.append(bench)
        return bench

    def visit(self, b: Bench, img: Path) -> dict[str, Any]:
        """Plug the stick into a running device, play its reboots, unplug when it says so."""
        b.agent.start()
        b.agent.wait_status(lambda s: s.get("phase") == "idle", 60, "idle")
        self.sticks.attach(img)
        reboots = 0
        while True:
            st = b.agent.wait_status(
                lambda s: s.get("phase") in ("safe-to-remove", "rebooting"), 240, "an end"
            )
            if st["phase"] == "safe-to-remove":
                break
            reboots += 1
            b.wait_reboot_request(reboots)
            b.reboot()
            b.agent.start()
        b.agent.stop()
        self.sticks.detach(img)
        b.rig.cleanup_engine()  # the next device's apps have the same names
        return st

    def cleanup(self) -> None:
        for b in self.benches:
            b.agent.kill()
            for point in mounts_under(self.tmp):
                sh("umount", "-l", point, check=False)
            b.rig.cleanup_engine()
            b.rig.device.destroy()


@pytest.fixture
def site(
    tmp_path: Path, dockerd: PrivateDockerd, sticks: Sticks, agents: list[Agent]
) -> Iterator[Site]:
    s = Site(tmp_path, dockerd, sticks, agents)
    try:
        yield s
    finally:
        s.cleanup()


def chosen(b: Bench) -> list[str]:
    return [str(r.get("why")) for r in b.agent.log_records() if r.get("event") == "bundle chosen"]


def test_one_stick_updates_a_device_of_each_kind(
    site: Site, factories: tuple[Factory, Factory], tmp_path: Path
) -> None:
    a, b = factories
    img = site.sticks.image(site_stick(tmp_path, a, b, B2))
    intel = site.device(a, A1)
    st = site.visit(intel, img)
    assert st["result"] == "updated" and st["target"] == A2, st
    assert intel.rig.state().current.name == A2
    assert "reboot" in recorded(intel.tmp)
    assert chosen(intel) and chosen(intel)[0].startswith("bundle intel: target " + A2)
    board = site.device(b, B1)
    st = site.visit(board, img)
    assert st["result"] == "updated" and st["target"] == B2, st
    assert board.rig.state().current.name == B2
    assert chosen(board)[0].startswith("bundle other-board: target " + B2)


def test_site_run_ends_with_a_report_of_every_device(
    site: Site, factories: tuple[Factory, Factory], tmp_path: Path
) -> None:
    a, b = factories
    img = site.sticks.image(site_stick(tmp_path, a, b, B3))
    results = {}
    for factory, flashed, kw in (
        (a, A1, {}),  # updated (a new rootfs: a reboot)
        (a, A2, {"pacman_type": "ostree"}),  # already runs the bundle's target
        (b, B1, {}),  # the new apps fail their health check: rolled back
    ):
        bench = site.device(factory, flashed, **kw)
        results[flashed] = site.visit(bench, img)["result"]
    assert results == {A1: "updated", A2: "up-to-date", B1: "rolled-back"}
    out = tmp_path / "from-the-stick"
    out.mkdir()
    sh("debugfs", "-R", f"rdump /usbupdater-reports {out}", str(img))
    p = subprocess.run(
        [sys.executable, "-m", "usbupdater", "report", "-s", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1, p.stderr  # one device did not end updated or up to date
    doc = json.loads(p.stdout)
    assert len(doc["devices"]) == 3, doc
    by_serial = {d["serial"]: d for d in doc["devices"]}
    assert {s: d["result"] for s, d in by_serial.items()} == {
        "site-1": "updated",
        "site-2": "up-to-date",
        "site-3": "rolled-back",
    }
    by_result = {d["result"]: d for d in doc["devices"]}
    # A device never updated by usbupdater has no recorded target to come from.
    assert by_result["updated"]["from"] is None and by_result["updated"]["to"] == A2
    assert by_result["updated"]["reboots"] == 1
    assert by_result["rolled-back"]["hardware_id"] == "other-board"
    assert doc["totals"] == {"updated": 1, "up-to-date": 1, "rolled-back": 1, "failed": 0}
    assert doc["devices"][0]["result"] == "rolled-back"  # the latest first
    text = subprocess.run(
        [sys.executable, "-m", "usbupdater", "report", "-s", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "3 device(s): 1 updated, 1 up to date, 1 rolled back, 0 failed" in text.stdout


def test_no_bundle_for_this_device_is_said_and_nothing_happens(
    site: Site, factories: tuple[Factory, Factory], tmp_path: Path
) -> None:
    a, b = factories
    content = tmp_path / "foreign-stick"
    b.write_bundle(content / "other-board", [B2])
    a.write_bundle(content / "intel-beta", [A2], tag="beta")
    img = site.sticks.image(content)
    intel = site.device(a, A1)
    before = intel.rig.snapshot()
    intel.agent.start()
    intel.agent.wait_status(lambda s: s.get("phase") == "idle", 60, "idle")
    site.sticks.attach(img)
    st = intel.agent.wait_status(
        lambda s: "no bundle for this device" in s.get("message", ""), 120, "the refusal"
    )
    assert st["phase"] == "idle" and st["result"] is None, st
    assert "2 bundle(s) seen: intel-beta: metadata not accepted: " in st["message"]
    assert "other-board: no target for hardware id intel-corei7-64" in st["message"]
    assert not intel.installs()
    intel.agent.stop()
    assert intel.rig.snapshot() == before
