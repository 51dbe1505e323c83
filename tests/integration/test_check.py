"""`usbupdater check` as a program, against bundles written by the factory."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Device
from usbupdater.sim.apps import corrupt_blob, drop_blob
from usbupdater.sim.factory import Factory
from usbupdater.sim.signer import edit
from usbupdater.state import DeviceState, StateStore
from usbupdater.target import TargetRecord

pytestmark = pytest.mark.integration


def check(device: Device, bundle: Path, *extra: str, faketime: str = "") -> tuple[int, Any, str]:
    cmd = [sys.executable, "-m", "usbupdater", "check", "-c", str(device.config)]
    cmd += ["-s", str(bundle), "--json", *extra]
    if faketime:
        cmd = ["faketime", "-f", faketime, *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    doc = json.loads(p.stdout) if p.stdout.strip().startswith("{") else None
    return p.returncode, doc, p.stderr


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_newer_target_available_exits_16_and_lists_targets(
    factory: Factory, device: Device, tmp_path: Path
) -> None:
    bundle = factory.write_bundle(
        tmp_path / "b", ["intel-corei7-64-lmp-1", "intel-corei7-64-lmp-2"]
    )
    before = tree_digest(device.root)
    code, doc, err = check(device, bundle)
    assert code == 16, err
    assert doc["selected"] == "intel-corei7-64-lmp-2" and doc["action"] == "install"
    by_name = {t["name"]: t for t in doc["targets"]}
    assert by_name["intel-corei7-64-lmp-2"]["status"] == "selected"
    assert by_name["intel-corei7-64-lmp-1"]["status"] == "installable"
    assert by_name["other-board-lmp-3"]["status"] == "not-for-device"
    assert set(by_name["intel-corei7-64-lmp-2"]["apps"]) == {"shellhttpd", "monitor"}
    assert doc["metadata"]["bundle"]["tag"] == "main"
    assert tree_digest(device.root) == before  # check changes nothing


def test_text_output_for_a_person(factory: Factory, device: Device, tmp_path: Path) -> None:
    bundle = factory.write_bundle(tmp_path / "b", ["intel-corei7-64-lmp-2"])
    p = subprocess.run(
        [sys.executable, "-m", "usbupdater", "check", "-c", str(device.config), "-s", str(bundle)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 16, p.stderr
    assert "Found Targets:" in p.stdout
    assert "* intel-corei7-64-lmp-2 (version 2): selected" in p.stdout
    assert "(on) shellhttpd -> hub.foundries.io/acme/shellhttpd@sha256:" in p.stdout
    assert "Result: intel-corei7-64-lmp-2 can be installed" in p.stdout


def test_already_running_the_best_target_exits_0(
    factory: Factory, device: Device, tmp_path: Path
) -> None:
    v2 = factory.targets["intel-corei7-64-lmp-2"]
    StateStore(device.state_dir).save(
        DeviceState(current=TargetRecord(v2.name, 2, v2.commit, v2.uris))
    )
    bundle = factory.write_bundle(tmp_path / "b", ["intel-corei7-64-lmp-2"])
    code, doc, err = check(device, bundle)
    assert code == 0, err
    assert doc["action"] == "already-installed"


def test_downgrade_is_refused(factory: Factory, device: Device, tmp_path: Path) -> None:
    v2 = factory.targets["intel-corei7-64-lmp-2"]
    StateStore(device.state_dir).save(
        DeviceState(current=TargetRecord(v2.name, 2, v2.commit, v2.uris))
    )
    bundle = factory.write_bundle(tmp_path / "b", ["intel-corei7-64-lmp-1"])
    code, doc, _ = check(device, bundle)
    assert code == 102 and "downgrade" in doc["error"]


def test_latest_incomplete_so_older_complete_one_is_selected(
    factory: Factory, device: Device, tmp_path: Path
) -> None:
    bundle = factory.write_bundle(
        tmp_path / "b", ["intel-corei7-64-lmp-1", "intel-corei7-64-lmp-2"]
    )
    monitor = factory.targets["intel-corei7-64-lmp-2"].apps["monitor"]
    (bundle / "apps" / "apps" / "monitor" / monitor.manifest_digest.split(":")[1] / "uri").unlink()
    code, doc, err = check(device, bundle)
    assert code == 16, err
    assert doc["selected"] == "intel-corei7-64-lmp-1"
    v2 = next(t for t in doc["targets"] if t["name"] == "intel-corei7-64-lmp-2")
    assert v2["status"] == "rejected" and "monitor" in v2["reason"]


def test_missing_app_content_exits_8(factory: Factory, device: Device, tmp_path: Path) -> None:
    bundle = factory.write_bundle(tmp_path / "b", ["intel-corei7-64-lmp-2"])
    img = factory.targets["intel-corei7-64-lmp-2"].apps["monitor"].images["main"]
    drop_blob(bundle / "apps", img.config_digest)
    code, doc, _ = check(device, bundle)
    assert code == 8 and "monitor" in doc["error"]


def test_one_flipped_byte_exits_80(factory: Factory, device: Device, tmp_path: Path) -> None:
    bundle = factory.write_bundle(tmp_path / "b", ["intel-corei7-64-lmp-2"])
    img = factory.targets["intel-corei7-64-lmp-2"].apps["shellhttpd"].images["main"]
    corrupt_blob(bundle / "apps", img.config_digest)  # the busybox layer is shared
    code, doc, _ = check(device, bundle)
    assert code == 80 and "shellhttpd" in doc["error"]


def test_ostree_commit_missing_exits_8(factory: Factory, device: Device, tmp_path: Path) -> None:
    bundle = factory.write_bundle(tmp_path / "b", ["intel-corei7-64-lmp-2"], ostree=False)
    code, doc, _ = check(device, bundle)
    assert code == 8 and doc["selected"] is None


def test_foreign_hardware_id_exits_6(factory: Factory, device: Device, tmp_path: Path) -> None:
    bundle = factory.write_bundle(tmp_path / "b", ["other-board-lmp-3"])
    code, doc, _ = check(device, bundle)
    assert code == 6 and "intel-corei7-64" in doc["error"]


def test_foreign_tag_exits_15(factory: Factory, device: Device, tmp_path: Path) -> None:
    bundle = factory.write_bundle(tmp_path / "b", ["intel-corei7-64-lmp-2"], tag="devel")
    code, _, err = check(device, bundle)
    assert code == 15 and "devel" in err


def test_tampered_bundle_metadata_exits_15(
    factory: Factory, device: Device, tmp_path: Path
) -> None:
    bundle = factory.write_bundle(tmp_path / "b", ["intel-corei7-64-lmp-2"])
    bt = bundle / "tuf" / "bundle-targets.json"

    def add_target(signed: dict[str, Any]) -> None:
        signed["x-fio-offline-bundle"]["targets"].append("other-board-lmp-3")

    bt.write_bytes(edit(bt.read_bytes(), add_target))
    code, doc, err = check(device, bundle)
    assert code == 15 and err.strip().count("\n") == 0 and "bundle-targets" in err
    # --json still prints one object: the refusal, no targets (nothing was verified)
    assert doc["code"] == 15 and "bundle-targets" in doc["error"] and doc["targets"] == []


def test_missing_metadata_dir_exits_14(factory: Factory, device: Device, tmp_path: Path) -> None:
    bundle = factory.write_bundle(tmp_path / "b", ["intel-corei7-64-lmp-2"])
    os.rename(bundle / "tuf", bundle / "tuf.moved")
    assert check(device, bundle)[0] == 14
    assert check(device, tmp_path / "no-such-stick")[0] == 14


def test_expired_metadata_exits_12_under_faketime(
    factory: Factory, device: Device, tmp_path: Path
) -> None:
    bundle = factory.write_bundle(tmp_path / "b", ["intel-corei7-64-lmp-2"])
    code, _, err = check(device, bundle, faketime="+800d")
    assert code == 12, err
    assert "expired" in err


def test_bundle_older_than_the_devices_metadata_still_checks(
    factory: Factory, device: Device, tmp_path: Path
) -> None:
    """The device persisted newer metadata (from a later bundle): fall back to it."""
    from usbupdater import config
    from usbupdater.bundle import Bundle
    from usbupdater.checkin import device_facts, select, trust

    old = factory.write_bundle(tmp_path / "old", ["intel-corei7-64-lmp-2"])
    new = factory.write_bundle(tmp_path / "new", ["intel-corei7-64-lmp-2"])
    cfg = config.load([device.config])
    with Bundle.open(new) as b:
        select(trust(cfg, b), b, device_facts(cfg, DeviceState())).session.commit()
    code, doc, err = check(device, old)
    assert code == 16, err
    assert doc["metadata"]["from_device_cache"] is True
