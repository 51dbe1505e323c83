"""bundle-targets.json: signature by targets keys, expiry, device type and tag; absent = legacy."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from trust_helpers import LATER, T0, Device

from usbupdater import log
from usbupdater.errors import BundleMetadataError
from usbupdater.sim.signer import BundleInfo, SigningKey, edit, resign


def _bundle_error(device: Device, match: str) -> None:
    with pytest.raises(BundleMetadataError, match=match) as info:
        device.verify()
    assert info.value.code == 15


def test_absent_is_a_legacy_bundle(device: Device) -> None:
    """The warning is a JSON log record like every other (structlog, not stdlib logging)."""
    device.write_bundle(bundle=None)
    out = io.StringIO()
    log.configure(2, stream=out)
    try:
        result = device.verify()
    finally:
        log.configure()
    assert result.bundle_targets is None
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    legacy = [r for r in records if "legacy bundle" in r["event"]]
    assert legacy and legacy[0]["level"] == "warning" and legacy[0]["component"] == "trust"


def test_verified_bundle_targets(device: Device) -> None:
    device.write_bundle(bundle=BundleInfo("ci", "main", ["hw-lmp-43"]))
    bt = device.verify().bundle_targets
    assert bt is not None
    assert (bt.type, bt.tag, bt.targets, bt.expires) == ("ci", "main", ("hw-lmp-43",), LATER)


def test_signature_by_an_unknown_key(device: Device) -> None:
    files = device.write_bundle()
    device.files["bundle-targets.json"] = resign(
        files["bundle-targets.json"], [SigningKey.ed25519()], append=True
    )
    device.rewrite()
    _bundle_error(device, "bundle-targets.json v1: signed by .*not a targets key of root v2")


def test_signed_by_the_timestamp_key(device: Device) -> None:
    files = device.write_bundle()
    device.files["bundle-targets.json"] = resign(
        files["bundle-targets.json"], device.repo.keys["timestamp"]
    )
    device.rewrite()
    _bundle_error(device, "not a targets key")


def test_tampered(device: Device) -> None:
    files = device.write_bundle()

    def widen(signed: dict[str, dict[str, object]]) -> None:
        signed["x-fio-offline-bundle"]["tag"] = "other"

    device.files["bundle-targets.json"] = edit(files["bundle-targets.json"], widen)
    device.rewrite()
    _bundle_error(device, r"0 valid signature\(s\) by the targets keys of root v2, 1 needed")


def test_threshold_of_targets_keys(device: Device) -> None:
    keys = [SigningKey.ed25519(), SigningKey.ed25519()]
    device.repo.rotate_root(keys={"targets": keys}, thresholds={"targets": 2})
    files = device.write_bundle()
    assert device.verify().bundle_targets is not None
    device.files["bundle-targets.json"] = resign(files["bundle-targets.json"], keys[:1])
    device.rewrite()
    _bundle_error(device, "1 valid signature.*2 needed")


def test_expired(device: Device) -> None:
    device.write_bundle(role_expires={"bundle-targets": T0 - timedelta(hours=1)})
    _bundle_error(device, "bundle-targets.json v1: expired")


def test_prod_bundle_on_ci_device(device: Device) -> None:
    device.write_bundle(bundle=BundleInfo("prod", "main", ["hw-lmp-42"]))
    _bundle_error(device, "bundle is for prod devices, this one is ci")


def test_ci_bundle_on_prod_device(device: Device) -> None:
    device.device_type = "prod"
    device.repo.write_device_roots(device.shipped)  # the prod roots directory
    device.write_bundle()
    _bundle_error(device, "bundle is for ci devices, this one is prod")


def test_unknown_device_type_skips_the_type_check(device: Device) -> None:
    device.device_type = ""  # uses the ci roots
    device.write_bundle(bundle=BundleInfo("prod", "main", ["hw-lmp-42"]))
    bt = device.verify().bundle_targets
    assert bt is not None and bt.type == "prod"


def test_tag_not_one_of_the_device_tags(device: Device) -> None:
    device.tags = ("devel", "qa")
    device.write_bundle()
    _bundle_error(device, "bundle tag 'main' is not one of the device's tags \\(devel, qa\\)")


def test_device_without_tags_skips_the_tag_check(device: Device) -> None:
    device.tags = ()
    device.write_bundle(bundle=BundleInfo("ci", "anything", []))
    assert device.verify().bundle_targets is not None


@pytest.mark.parametrize(
    "info",
    [None, "x", {"type": "beta", "tag": "main", "targets": []}, {"type": "ci", "tag": "main"}],
)
def test_malformed_offline_bundle_field(device: Device, info: object) -> None:
    files = device.write_bundle()

    def replace(signed: dict[str, object]) -> None:
        signed["x-fio-offline-bundle"] = info

    device.files["bundle-targets.json"] = resign(
        edit(files["bundle-targets.json"], replace), device.repo.keys["targets"]
    )
    device.rewrite()
    _bundle_error(device, "must hold type ci|prod")


def test_malformed_json(device: Device) -> None:
    device.write_bundle()
    device.files["bundle-targets.json"] = b'{"signed": '
    device.rewrite()
    _bundle_error(device, "bundle-targets.json: malformed JSON")


def test_wrong_type(device: Device) -> None:
    files = device.write_bundle()
    doc = json.loads(files["bundle-targets.json"])
    doc["signed"]["_type"] = "Timestamp"
    device.files["bundle-targets.json"] = json.dumps(doc).encode()
    device.rewrite()
    _bundle_error(device, "bundle-targets.json: not valid targets metadata")
