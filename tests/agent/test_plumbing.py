"""The service against real udevd and loop devices, with a scripted updater standing in for the
core: the plumbing (events, mounts, marker, reboot, report) independent of the core's behaviour."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.agent.conftest import (
    HERE,
    Agent,
    agent_settings_toml,
    recorded,
    wait_for,
)
from usbupdater.sim.sticks import Sticks, mounts_under, sh

pytestmark = pytest.mark.integration


def fake_bundle(root: Path, version: int = 3) -> Path:
    (root / "tuf").mkdir(parents=True)
    (root / "tuf" / "targets.json").write_text(json.dumps({"signed": {"version": version}}))
    return root


class Rig:
    def __init__(
        self,
        root: Path,
        sticks: Sticks,
        plan: dict[str, Any],
        extra: str = "",
        *,
        updater: Path = HERE / "scripted_updater.py",
        aklite: Optional[Path] = None,
    ) -> None:
        self.root = root
        self.sticks = sticks
        self.plan = root / "plan.json"
        self.plan.write_text(json.dumps(plan))
        self.runtime = root / "run" / "usbupdater"
        self.cfg = root / "sota.toml"
        rec = root / "record.sh"
        self.cfg.write_text(
            "[provision]\n"
            'primary_ecu_hardware_id = "intel-corei7-64"\n'
            'primary_ecu_serial = "SN-42"\n'
            "[storage]\n"
            f'path = "{root / "sota"}"\n'
            "[bootloader]\n"
            f'reboot_command = "{rec} reboot"\n'
            "[usbupdater]\n"
            f'updater_command = "{sys.executable} {updater} {self.plan}"\n'
            + agent_settings_toml(root, sticks, self.runtime, extra, aklite=aklite)
        )
        self.agent = Agent(self.cfg, self.runtime / "status.json", root / "agent.log")

    def calls(self) -> list[list[str]]:
        p = self.plan.with_suffix(".calls")
        if not p.exists():
            return []
        return [json.loads(line)["argv"] for line in p.read_text().splitlines()]

    def installs(self) -> int:
        return sum(1 for c in self.calls() if c[0] == "install")

    def reboot(self) -> None:
        """What a reboot does to the agent: it stops, /run is wiped."""
        self.agent.stop()
        shutil.rmtree(self.root / "run")


@pytest.fixture
def rig(tmp_path: Path, sticks: Sticks, agents: list[Agent]) -> Any:
    def make(plan: dict[str, Any], extra: str = "") -> Rig:
        r = Rig(tmp_path, sticks, plan, extra)
        agents.append(r.agent)
        return r

    return make


def stick_reports(sticks: Sticks, img: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """Read the reports on an image (debugfs: no mount needed, works while detached)."""
    out = sh("debugfs", "-R", "ls -l /usbupdater-reports", str(img), check=False).stdout
    docs = []
    for name in out.split():
        if name.endswith(".json"):
            dump = tmp_path / name
            sh("debugfs", "-R", f"dump /usbupdater-reports/{name} {dump}", str(img))
            docs.append(json.loads(dump.read_text()))
    return docs


def test_hotplug_install_reboot_run(rig: Any, sticks: Sticks, tmp_path: Path) -> None:
    r = rig({"install": [100], "run": [0], "current": "v1", "current_after": {"run": "v2"}})
    r.agent.start()
    r.agent.wait_status(lambda s: s.get("phase") == "idle", what="idle")
    img = sticks.image(fake_bundle(tmp_path / "content"))
    sticks.attach(img)
    r.agent.wait_status(lambda s: s.get("phase") == "rebooting", what="rebooting")
    wait_for(lambda: "reboot" in recorded(tmp_path), what="reboot request")
    assert not mounts_under(tmp_path / "media")
    r.reboot()
    r.agent.start()
    st = r.agent.wait_status(lambda s: s.get("phase") == "safe-to-remove", what="done")
    assert st["result"] == "updated" and st["safe_to_remove"] is True
    assert [c[0] for c in r.calls() if c[0] != "current"] == ["install", "run"]
    assert "aklite-stop" in recorded(tmp_path) and "aklite-start" in recorded(tmp_path)
    # The stick stays plugged in: another restart does not install again.
    r.agent.stop()
    r.agent.start()
    wait_for(
        lambda: any(x["event"] == "bundle already handled" for x in r.agent.log_records()),
        what="handled bundle ignored",
    )
    assert r.installs() == 1
    r.agent.stop()
    sticks.detach(img)
    reports = stick_reports(sticks, img, tmp_path)
    assert {d["result"] for d in reports} == {"rebooting", "updated"}
    final = next(d for d in reports if d["result"] == "updated")
    assert final["old_target"] == "v1" and final["new_target"] == "v2"
    assert [s["code"] for s in final["steps"]] == [100, 0]
    assert final["device"] == {"hardware_id": "intel-corei7-64", "serial": "SN-42"}


FUSEFAT = (
    'mount_command = "fusefat -o {options} {device} {mountpoint}"\n'
    'fat_mount_options = ""\n'
    'report_mount_options = "rw+,nosuid,nodev,noexec"\n'
)


@pytest.mark.skipif(shutil.which("fusefat") is None, reason="fusefat missing")
def test_fat_stick_through_fusefat(rig: Any, sticks: Sticks, tmp_path: Path) -> None:
    """FAT sticks: this kernel has no vfat, so the mount program is fusefat (configurable)."""
    r = rig({"install": [0], "current": "v1"}, FUSEFAT)
    img = sticks.fat_image(fake_bundle(tmp_path / "content"))
    r.agent.start()
    sticks.attach(img)
    st = r.agent.wait_status(lambda s: s.get("phase") == "safe-to-remove", what="done")
    assert st["result"] == "up-to-date" and st["stick"]["fs_type"] == "vfat"
    assert r.installs() == 1
    r.agent.stop()
    assert not mounts_under(tmp_path / "media")
    sticks.detach(img)
    mnt = tmp_path / "check"
    mnt.mkdir()
    sh("fusefat", "-o", "ro", str(img), str(mnt))
    try:
        (report,) = sorted((mnt / "usbupdater-reports").glob("*.json"))
        assert json.loads(report.read_text())["result"] == "up-to-date"
    finally:
        sh("umount", str(mnt))
