"""Generated metadata (sim.signer): rotation, thresholds, roles, versions, expiry, missing files."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from trust_helpers import BUNDLE, LATER, T0, TARGETS, Device

from usbupdater.errors import ExpiredError, MetadataMissingError, SecurityError
from usbupdater.sim.signer import SigningKey, edit, resign


def test_fresh_bundle_verifies(device: Device) -> None:
    device.write_bundle()
    result = device.verify()
    assert result.root_version == 2 and result.targets_version == 1
    assert dict(result.targets) == TARGETS
    assert result.bundle_targets is not None
    assert result.bundle_targets.targets == tuple(BUNDLE.targets)
    assert result.expires == LATER and not result.from_device_cache


def test_root_rotation_with_key_changes(device: Device) -> None:
    repo = device.repo
    repo.rotate_root(keys={"root": [SigningKey.rsa()]})  # v3: RSA root key
    three = [SigningKey.ed25519() for _ in range(3)]
    repo.rotate_root(keys={"root": three}, thresholds={"root": 2})  # v4: 2-of-3 root keys
    repo.rotate_root(  # v5: root keys and every online key change, signed by 2 old + 1 new
        keys={r: [SigningKey.ed25519()] for r in ("root", "timestamp", "snapshot", "targets")},
        thresholds={"root": 1},
        signers=[three[0], three[2], SigningKey.ed25519()],
    )
    # v5 is signed by an unrelated key instead of its own root key: fix by appending its own.
    repo.roots[-1] = json.loads(resign(repo.root_bytes(5), repo.keys["root"], append=True))
    device.write_bundle()
    assert sorted(n for n in device.files if "root" in n) == [
        "3.root.json",
        "4.root.json",
        "5.root.json",
    ]
    assert device.verify().root_version == 5


def test_new_root_needs_threshold_of_old_root_keys(device: Device) -> None:
    device.repo.rotate_root(signers=[SigningKey.ed25519()])
    device.write_bundle()
    with pytest.raises(SecurityError, match=r"root v3: 0 valid signature.*root keys of root v2"):
        device.verify()


def test_new_root_needs_its_own_signature(device: Device) -> None:
    old = list(device.repo.keys["root"])
    device.repo.rotate_root(signers=old)
    device.write_bundle()
    with pytest.raises(SecurityError, match=r"root v3: 0 valid signature.*root keys of itself"):
        device.verify()


def test_root_chain_stops_at_a_gap(device: Device) -> None:
    device.repo.rotate_root()
    device.repo.rotate_root()  # v4: the bundle will lack 3.root.json
    device.write_bundle()
    del device.files["3.root.json"]
    device.rewrite()
    # Without v3 the chain stays at v2; metadata is signed by v4's keys... same online keys here,
    # so it verifies on root v2, and 4.root.json is never trusted.
    assert device.verify().root_version == 2


def test_root_file_holding_another_version(device: Device) -> None:
    device.repo.rotate_root()
    device.write_bundle()
    device.files["3.root.json"] = device.repo.root_bytes(2)
    device.rewrite()
    with pytest.raises(SecurityError, match=r"3.root.json: holds root v2, expected v3"):
        device.verify()


def test_intermediate_root_may_be_expired(device: Device) -> None:
    device.repo.rotate_root(expires=T0 - timedelta(days=100))
    device.repo.rotate_root()
    device.write_bundle()
    assert device.verify().root_version == 4


def test_expired_newest_root(device: Device) -> None:
    device.repo.rotate_root(expires=T0 - timedelta(seconds=1))
    device.write_bundle()
    with pytest.raises(ExpiredError, match="root v3: expired"):
        device.verify()


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets"])
def test_expired_role(device: Device, role: str) -> None:
    device.write_bundle(role_expires={role: T0 - timedelta(days=1)})
    with pytest.raises(ExpiredError, match=f"{role} v1: expired") as info:
        device.verify()
    assert info.value.code == 12


def _two_of_three(device: Device) -> list[SigningKey]:
    keys = [SigningKey.ed25519() for _ in range(3)]
    device.repo.rotate_root(keys={"targets": keys}, thresholds={"targets": 2})
    return keys


def test_threshold_two_of_three_one_bad_signature(device: Device) -> None:
    keys = _two_of_three(device)
    files = device.write_bundle(bundle=None)
    doc = json.loads(files["targets.json"])
    doc["signatures"][1]["sig"] = doc["signatures"][0]["sig"]  # one bad of three
    assert len(doc["signatures"]) == len(keys)
    device.files["targets.json"] = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    # The snapshot's hash covers the signatures too: re-make the parents to isolate the check.
    _rechain(device)
    assert device.verify().targets_version == 1


def test_threshold_two_of_three_two_bad_signatures(device: Device) -> None:
    _two_of_three(device)
    files = device.write_bundle(bundle=None)
    doc = json.loads(files["targets.json"])
    for i in (1, 2):
        doc["signatures"][i]["sig"] = doc["signatures"][0]["sig"]
    device.files["targets.json"] = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    _rechain(device)
    with pytest.raises(SecurityError, match=r"targets v1: 1 valid signature.*2 needed"):
        device.verify()


def test_duplicate_signatures_count_once(device: Device) -> None:
    _two_of_three(device)
    files = device.write_bundle(bundle=None)
    one = device.repo.keys["targets"][0]
    device.files["targets.json"] = resign(files["targets.json"], [one, one, one])
    _rechain(device)
    with pytest.raises(SecurityError, match=r"targets v1: 1 valid signature.*2 needed"):
        device.verify()


def _rechain(device: Device) -> None:
    """Re-sign snapshot and timestamp over the (changed) targets.json of `device.files`."""
    repo = device.repo
    snap = repo.snapshot_bytes(
        device.files["targets.json"], version=1, targets_version=1, expires=LATER
    )
    ts = repo.timestamp_bytes(snap, version=1, snapshot_version=1, expires=LATER)
    device.files.update({"snapshot.json": snap, "timestamp.json": ts})
    device.rewrite()


@pytest.mark.parametrize(
    ("role", "signer"), [("timestamp", "targets"), ("snapshot", "timestamp"), ("targets", "root")]
)
def test_signature_by_a_key_of_another_role(device: Device, role: str, signer: str) -> None:
    files = device.write_bundle(bundle=None)
    device.files[f"{role}.json"] = resign(files[f"{role}.json"], device.repo.keys[signer])
    if role == "targets":
        _rechain(device)
    elif role == "snapshot":
        ts = device.repo.timestamp_bytes(
            device.files["snapshot.json"], version=1, snapshot_version=1, expires=LATER
        )
        device.files["timestamp.json"] = ts
    device.rewrite()
    with pytest.raises(SecurityError, match=f"{role} v1: 0 valid signature"):
        device.verify()


def test_tampered_signed_content(device: Device) -> None:
    files = device.write_bundle()

    def bump(signed: dict[str, object]) -> None:
        signed["expires"] = "2099-01-01T00:00:00Z"

    device.files["timestamp.json"] = edit(files["timestamp.json"], bump)
    device.rewrite()
    with pytest.raises(SecurityError, match="timestamp v1: 0 valid signature"):
        device.verify()


@pytest.mark.parametrize("mixed", ["snapshot.json", "targets.json", "timestamp.json"])
def test_mix_and_match_two_versions(device: Device, mixed: str) -> None:
    old = device.write_bundle(version=1)
    new = device.write_bundle(version=2)
    device.files = {**new, mixed: old[mixed]}
    device.rewrite()
    with pytest.raises(SecurityError) as info:
        device.verify()
    assert info.value.code == 11
    assert "does not match" in info.value.reason


def test_version_only_meta_is_accepted(device: Device) -> None:
    """Some real metadata gives only a version for a file: then only the version is checked."""
    files = device.write_bundle(bundle=None)

    def drop(signed: dict[str, dict[str, dict[str, object]]]) -> None:
        del signed["meta"]["targets.json"]["hashes"], signed["meta"]["targets.json"]["length"]

    snap = resign(edit(files["snapshot.json"], drop), device.repo.keys["snapshot"])
    ts = device.repo.timestamp_bytes(snap, version=1, snapshot_version=1, expires=LATER)
    device.files.update({"snapshot.json": snap, "timestamp.json": ts})
    device.rewrite()
    assert device.verify().targets_version == 1


def test_version_mismatch_with_parent(device: Device) -> None:
    device.write_bundle(versions={"snapshot": 3})  # the timestamp names v3 too: consistent
    assert device.verify().targets_version == 1
    files = device.files

    def lie(signed: dict[str, dict[str, dict[str, object]]]) -> None:
        signed["meta"]["snapshot.json"]["version"] = 4

    device.files["timestamp.json"] = resign(
        edit(files["timestamp.json"], lie), device.repo.keys["timestamp"]
    )
    device.rewrite()
    with pytest.raises(SecurityError, match="snapshot v3: timestamp v1 names snapshot v4"):
        device.verify()


@pytest.mark.parametrize("name", ["timestamp.json", "snapshot.json", "targets.json"])
def test_missing_role_file(device: Device, name: str) -> None:
    device.write_bundle()
    del device.files[name]
    device.rewrite()
    with pytest.raises(MetadataMissingError, match=f"{name}: missing") as info:
        device.verify()
    assert info.value.code == 14


def test_missing_trusted_root(device: Device) -> None:
    device.write_bundle()
    for f in device.shipped.iterdir():
        f.unlink()
    with pytest.raises(MetadataMissingError, match="no trusted root"):
        device.verify()


def test_missing_tuf_directory(device: Device) -> None:
    with pytest.raises(MetadataMissingError, match="no TUF metadata directory"):
        device.verify()


def test_bundle_root_missing_after_key_rotation(device: Device) -> None:
    """The bundle's metadata is signed by keys of a root the bundle does not carry: 11."""
    device.repo.rotate_root(keys={"timestamp": [SigningKey.ed25519()]})
    device.write_bundle()
    del device.files["3.root.json"]
    device.rewrite()
    with pytest.raises(SecurityError, match=r"timestamp v1: 0 valid signature.*root v2"):
        device.verify()


def test_unknown_signature_method_does_not_count(device: Device) -> None:
    files = device.write_bundle()
    doc = json.loads(files["timestamp.json"])
    doc["signatures"][0]["method"] = "rsassa-pss-sha256"  # an ED25519 key
    device.files["timestamp.json"] = json.dumps(doc).encode()
    device.rewrite()
    with pytest.raises(SecurityError, match="timestamp v1: 0 valid"):
        device.verify()
