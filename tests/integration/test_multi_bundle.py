"""A stick with several bundles: `pick`, `check -s STICK` and `install -s STICK` choose this
device's from the verified metadata (real bundles written by the factory, real trust code)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Device
from usbupdater.sim.factory import Factory
from usbupdater.sim.setup import CORE_ARGV

pytestmark = pytest.mark.integration

V2 = "intel-corei7-64-lmp-2"


def cli(device: Device, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CORE_ARGV, *args, "-c", str(device.config)],
        capture_output=True,
        text=True,
        timeout=180,
    )


def pick(device: Device, stick: Path) -> tuple[int, Any]:
    p = cli(device, "pick", "-s", str(stick), "--json")
    return p.returncode, json.loads(p.stdout)


@pytest.fixture
def three(factory: Factory, tmp_path: Path) -> Path:
    """This device's bundle, one for other hardware, one for this hardware but another tag."""
    stick = tmp_path / "stick"
    factory.write_bundle(stick / "mine", [V2])
    factory.write_bundle(stick / "other-board", ["other-board-lmp-3"])
    factory.write_bundle(stick / "wrong-tag", [V2], tag="beta")
    (stick / "usbupdater-reports").mkdir()
    (stick / "notes.txt").write_text("not a bundle")
    return stick


def test_pick_names_the_bundle_and_why_the_others_do_not_fit(device: Device, three: Path) -> None:
    code, doc = pick(device, three)
    assert code == 0, doc
    assert doc["chosen"] == "mine"
    by = {b["name"]: b for b in doc["bundles"]}
    assert set(by) == {"mine", "other-board", "wrong-tag"}
    assert by["mine"]["fits"] and by["mine"]["target"] == V2 and by["mine"]["version"] == 2
    assert not by["other-board"]["fits"] and "intel-corei7-64" in by["other-board"]["why"]
    assert not by["wrong-tag"]["fits"] and "beta" in by["wrong-tag"]["why"]


def test_check_and_install_take_the_stick(device: Device, three: Path) -> None:
    p = cli(device, "check", "-s", str(three), "--json")
    assert p.returncode == 16, p.stderr
    assert json.loads(p.stdout)["selected"] == V2


def test_no_bundle_for_this_device_lists_each(device: Device, three: Path) -> None:
    import shutil

    shutil.rmtree(three / "mine")
    code, doc = pick(device, three)
    assert code == 6 and doc["chosen"] is None
    assert doc["message"].startswith("no bundle for this device (2 bundle(s) seen: ")
    assert "other-board: " in doc["message"] and "wrong-tag: " in doc["message"]
    p = cli(device, "check", "-s", str(three))
    assert p.returncode == 6 and "no bundle for this device" in p.stderr


def test_newest_wins_and_a_tie_is_refused(factory: Factory, device: Device, tmp_path: Path) -> None:
    stick = tmp_path / "stick"
    factory.write_bundle(stick / "old", ["intel-corei7-64-lmp-1"])
    factory.write_bundle(stick / "new", [V2])
    code, doc = pick(device, stick)
    assert code == 0 and doc["chosen"] == "new"
    assert "1 other bundle(s) fit with older targets" in doc["message"]
    factory.write_bundle(stick / "new\x1b[31m", [V2])
    code, doc = pick(device, stick)
    assert code == 1 and doc["chosen"] is None
    assert "same version 2" in doc["message"] and "\x1b" not in doc["message"]
    assert "new\\x1b[31m" in doc["message"]
    p = cli(device, "install", "-s", str(stick), "--json")
    assert p.returncode == 1 and "same version 2" in json.loads(p.stdout)["message"]
