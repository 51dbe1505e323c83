"""Persistence: what is accepted, rollback and the fallback to the device's metadata, time floor,
and nothing written when verification fails."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from trust_helpers import LATER, T0, TARGETS, Device, tree_snapshot

from usbupdater.errors import ExpiredError, SecurityError, StateError, UpdaterError
from usbupdater.sim.signer import SigningKey, ostree_target
from usbupdater.trust import effective_now, shipped_roots_dir, store_dir
from usbupdater.trust.store import FLOOR_FILE, STORE_FILE

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def test_commit_persists_roots_and_metadata(device: Device) -> None:
    device.repo.rotate_root()
    device.repo.rotate_root()
    device.write_bundle()
    device.accept()
    stored = json.loads((device.store / STORE_FILE).read_bytes())
    assert sorted(stored["roots"]) == ["3", "4"]
    assert stored["targets"]["signed"]["version"] == 1
    assert json.loads((device.store / FLOOR_FILE).read_bytes()) == {"time": "2030-01-01T00:00:00Z"}
    # The stored v4 is now the anchor: a bundle from v4 on still verifies without 3.root.json.
    device.write_bundle(version=2, first_root=4)
    assert device.verify().root_version == 4


def test_verify_alone_writes_nothing(device: Device) -> None:
    device.write_bundle()
    device.verify()
    assert not device.store.exists()


def test_commit_requires_verify(device: Device) -> None:
    with pytest.raises(RuntimeError):
        device.session().commit()


def test_bundle_older_than_device_uses_stored_metadata(device: Device) -> None:
    newer = {**TARGETS, "hw-lmp-44": ostree_target("d" * 64, "44", ["hw"], ["main"])}
    device.write_bundle(newer, version=5)
    device.accept()
    device.write_bundle(version=3)  # an older stick
    result = device.verify()
    assert result.from_device_cache
    assert result.targets_version == 5 and "hw-lmp-44" in result.targets


def test_older_targets_behind_a_newer_timestamp(device: Device) -> None:
    device.write_bundle(version=5)
    device.accept()
    device.write_bundle(versions={"timestamp": 6, "snapshot": 6, "targets": 2})
    result = device.verify()
    assert result.from_device_cache and result.targets_version == 5


def test_rollback_with_expired_device_metadata_is_refused(device: Device) -> None:
    soon = T0 + timedelta(days=10)
    device.write_bundle(version=5, expires=soon)
    device.accept()
    device.write_bundle(version=3)
    with pytest.raises(SecurityError, match="rollback: timestamp v3 is older than the device's v5"):
        device.verify(now=soon + timedelta(days=1))


def test_same_version_is_not_a_rollback(device: Device) -> None:
    device.write_bundle(version=5)
    device.accept()
    result = device.verify()
    assert not result.from_device_cache and result.targets_version == 5


def test_key_rotation_restarts_versions(device: Device) -> None:
    """After the timestamp key rotates, the device's old timestamp no longer counts (python-tuf)."""
    device.write_bundle(version=5)
    device.accept()
    device.repo.rotate_root(
        keys={r: [SigningKey.ed25519()] for r in ("timestamp", "snapshot", "targets")}
    )
    device.write_bundle(version=1)
    result = device.verify()
    assert not result.from_device_cache and result.targets_version == 1


def _failures() -> list[tuple[str, Callable[[Device], None]]]:
    def bad_sig(d: Device) -> None:
        d.repo.rotate_root()
        d.write_bundle(version=7)
        d.files["targets.json"] = d.files["targets.json"].replace(b'"version":7', b'"version":8')
        d.rewrite()

    def expired(d: Device) -> None:
        d.repo.rotate_root()
        d.write_bundle(version=7, expires=T0 - timedelta(days=1))

    def missing(d: Device) -> None:
        d.repo.rotate_root()
        d.write_bundle(version=7)
        (d.tuf / "snapshot.json").unlink()

    def bad_bundle(d: Device) -> None:
        d.repo.rotate_root()
        d.tags = ("other",)
        d.write_bundle(version=7)

    return [
        ("bad_sig", bad_sig),
        ("expired", expired),
        ("missing", missing),
        ("bundle", bad_bundle),
    ]


@pytest.mark.parametrize(("name", "breaker"), _failures())
def test_failure_changes_nothing_in_the_state_dir(
    device: Device, name: str, breaker: Callable[[Device], None]
) -> None:
    device.write_bundle(version=2)
    device.accept()
    state = device.root / "var/sota"
    before = tree_snapshot(state)
    breaker(device)
    session = device.session()
    with pytest.raises(UpdaterError) as info:
        session.verify()
    assert info.value.code in (11, 12, 14, 15)
    with pytest.raises(RuntimeError):
        session.commit()
    assert tree_snapshot(state) == before


def test_time_floor_refuses_long_expired_metadata_on_a_1970_clock(device: Device) -> None:
    device.write_bundle(version=1)
    device.accept(now=T0)
    device.write_bundle(version=2, expires=T0 - timedelta(days=30), bundle=None)
    with pytest.raises(ExpiredError, match="time is 2030-01-01T00:00:00Z"):
        device.verify(now=EPOCH)
    assert effective_now(device.store, EPOCH) == T0


def test_time_floor_from_the_metadata(device: Device) -> None:
    """The newest createdAt/updatedAt of a signed target is a time known to have passed."""
    created = {
        "hw": ostree_target("e" * 64, "1", ["hw"], ["main"], updatedAt="2029-06-01T00:00:00Z")
    }
    device.write_bundle(created)
    device.accept(now=EPOCH)  # a 1970 clock, but the metadata is still valid then
    assert effective_now(device.store, EPOCH) == datetime(2029, 6, 1, tzinfo=timezone.utc)


def test_time_floor_never_moves_back(device: Device) -> None:
    device.write_bundle()
    device.accept(now=T0 + timedelta(days=2))
    device.accept(now=T0)
    assert effective_now(device.store, EPOCH) == T0 + timedelta(days=2)


def test_corrupt_store_fails_closed(device: Device) -> None:
    device.write_bundle()
    device.store.mkdir(parents=True)
    (device.store / STORE_FILE).write_bytes(b"{not json")
    with pytest.raises(StateError, match="corrupt trusted metadata store"):
        device.verify()


def test_config_helpers(device: Device) -> None:
    from usbupdater.config import from_tables

    cfg = from_tables(
        {
            "provision": {"primary_ecu_hardware_id": "hw"},
            "storage": {"path": "/var/sota", "uptane_metadata_path": "/usr/lib/sota/tuf"},
            "usbupdater": {"device_type": "prod"},
        }
    )
    assert str(shipped_roots_dir(cfg)) == "/usr/lib/sota/tuf/prod"
    assert str(store_dir(cfg)) == "/var/sota/usbupdater/tuf"
    unknown = from_tables({"provision": {"primary_ecu_hardware_id": "hw"}})
    assert shipped_roots_dir(unknown).name == "ci"


def test_expires_is_the_earliest_role(device: Device) -> None:
    early = T0 + timedelta(days=3)
    device.write_bundle(role_expires={"snapshot": early})
    assert device.verify().expires == early
    assert early < LATER


def test_verify_writes_nothing_and_commit_persists(device: Device) -> None:
    from usbupdater.trust import TrustSession, advance_time_floor

    device.write_bundle()
    kwargs = dict(
        shipped_roots_dir=device.shipped,
        device_type="ci",
        device_tags=["main"],
        store_dir=device.store,
        now=T0,
    )
    result = TrustSession(device.tuf, **kwargs).verify()  # type: ignore[arg-type]
    assert not device.store.exists()
    assert result.targets_version == 1
    session = TrustSession(device.tuf, **kwargs)  # type: ignore[arg-type]
    accepted = session.verify()
    accepted.targets["hw-lmp-42"]["custom"]["local-src-dir"] = "/x"  # type: ignore[index]
    session.commit()
    stored = json.loads((device.store / STORE_FILE).read_bytes())
    assert "local-src-dir" not in stored["targets"]["signed"]["targets"]["hw-lmp-42"]["custom"]
    advance_time_floor(device.store, T0 + timedelta(days=1))
    assert effective_now(device.store, EPOCH) == T0 + timedelta(days=1)
