"""The office check: `check --device-roots ROOTS --hwid H --tag T` verifies a bundle for a kind
of device without being one (no configuration, sysroot or state), with `check`'s exit codes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Device
from usbupdater.sim.apps import AppSpec, corrupt_blob
from usbupdater.sim.factory import Factory, TargetSpec

pytestmark = pytest.mark.integration

V1, V2, OTHER = "intel-corei7-64-lmp-1", "intel-corei7-64-lmp-2", "other-board-lmp-3"


def office(bundle: Path, roots: Path, *extra: str, cwd: Path) -> tuple[int, Any, str]:
    """`usbupdater check` as a technician runs it: no -c, from an empty directory."""
    cmd = [sys.executable, "-m", "usbupdater", "check", "-s", str(bundle)]
    cmd += ["--device-roots", str(roots), "--json", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)
    doc = json.loads(p.stdout) if p.stdout.strip().startswith("{") else None
    return p.returncode, doc, p.stderr


def device_check(device: Device, bundle: Path) -> tuple[int, Any]:
    cmd = [sys.executable, "-m", "usbupdater", "check", "-c", str(device.config)]
    p = subprocess.run([*cmd, "-s", str(bundle), "--json"], capture_output=True, text=True)
    return p.returncode, json.loads(p.stdout)


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def roots(factory: Factory, tmp_path: Path) -> Path:
    """What a device of the factory's kind ships under /usr/lib/sota/tuf."""
    d = tmp_path / "usr-lib-sota-tuf"
    factory.write_device_roots(d)
    return d


def test_newest_target_for_the_kind_exits_16_and_writes_nothing(
    factory: Factory, roots: Path, device: Device, tmp_path: Path
) -> None:
    bundle = factory.write_bundle(tmp_path / "b", [V1, V2, OTHER])
    work = tmp_path / "cwd"
    work.mkdir()
    before = digest(tmp_path)
    hwid, tag = factory.hardware_id, factory.tag
    code, doc, err = office(bundle, roots, "--hwid", hwid, "--tag", tag, cwd=work)
    assert code == 16, err
    assert doc["selected"] == V2 and doc["action"] == "install"
    assert doc["device"] == {"hardware_id": hwid, "tags": [tag], "current": None}
    status = {t["name"]: t["status"] for t in doc["targets"]}
    assert status == {V2: "selected", V1: "installable", OTHER: "not-for-device"}
    assert doc["metadata"]["from_device_cache"] is False
    assert digest(tmp_path) == before  # roots, bundle, the device's files: all unchanged
    # A device of that kind that was never updated decides the same.
    assert device_check(device, bundle) == (code, doc)


def test_the_other_kind_on_the_same_bundle(factory: Factory, roots: Path, tmp_path: Path) -> None:
    bundle = factory.write_bundle(tmp_path / "b", [V2, OTHER])
    code, doc, err = office(bundle, roots, "--hwid", "other-board", "--tag", "main", cwd=tmp_path)
    assert code == 16, err
    assert doc["selected"] == OTHER


def test_refusals_keep_checks_exit_codes(factory: Factory, roots: Path, tmp_path: Path) -> None:
    bundle = factory.write_bundle(tmp_path / "b", [V2])
    hw = ("--hwid", factory.hardware_id)
    # No target for this hardware id: 6.
    code, doc, _ = office(
        bundle, roots, "--hwid", "imx8mm-lpddr4-evk", "--tag", "main", cwd=tmp_path
    )
    assert code == 6 and "imx8mm-lpddr4-evk" in doc["error"]
    # The bundle was made for another tag: 15 (its signed bundle-targets.json says so).
    code, doc, err = office(bundle, roots, *hw, "--tag", "devel", cwd=tmp_path)
    assert code == 15 and "main" in err and doc["code"] == 15 and doc["targets"] == []
    # A production device refuses a ci bundle (and trusts its prod roots only: none here).
    code, doc, err = office(bundle, roots, *hw, "--tag", "main", "--type", "prod", cwd=tmp_path)
    assert code in (11, 14, 15) and doc["code"] == code, err
    # Roots of another factory: the signatures do not verify (bundle-targets.json is checked
    # against the trusted root first, as on a device).
    stranger = Factory(tmp_path / "stranger")
    code, _, err = office(
        bundle, stranger.write_device_roots(tmp_path / "other-roots"), *hw, cwd=tmp_path
    )
    assert code == 15 and "not a targets key" in err, err
    # One flipped byte in an app blob: 80, as on the device.
    img = factory.targets[V2].apps["shellhttpd"].images["main"]
    corrupt_blob(bundle / "apps", img.config_digest)
    code, doc, _ = office(bundle, roots, *hw, "--tag", "main", cwd=tmp_path)
    assert code == 80 and "shellhttpd" in doc["error"]


def test_a_directory_of_roots_and_another_arch(tmp_path: Path) -> None:
    """ROOTS may hold the N.root.json files themselves. `--arch` names the device's machine:
    an image index offering this machine's and one other platform has none for riscv64."""
    f = Factory(tmp_path / "factory")
    f.publish(TargetSpec(1, apps=[AppSpec("web", manifest_list=True)]))
    flat = tmp_path / "flat"
    shutil.copytree(f.write_device_roots(tmp_path / "roots"), flat)
    bundle = f.write_bundle(tmp_path / "b", [f"{f.hardware_id}-lmp-1"])
    hw = ("--hwid", f.hardware_id, "--tag", f.tag)
    code, doc, err = office(bundle, flat, *hw, cwd=tmp_path)
    assert code == 16, err
    code, doc, err = office(bundle, flat, *hw, "--arch", "riscv64", cwd=tmp_path)
    assert code == 80 and "linux/riscv64" in doc["error"], doc


def test_usage_errors_exit_1(tmp_path: Path) -> None:
    for args in (["--hwid", "x"], ["--device-roots", str(tmp_path)], ["--tag", "main"]):
        p = subprocess.run(
            [sys.executable, "-m", "usbupdater", "check", "-s", str(tmp_path), *args],
            capture_output=True,
            text=True,
        )
        assert p.returncode == 1 and "--" in p.stderr, p.stderr
    missing = ["--device-roots", str(tmp_path / "missing")]
    p = subprocess.run(
        [sys.executable, "-m", "usbupdater", "check", "-s", str(tmp_path), "--hwid", "x", *missing],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and "not a directory" in p.stderr
