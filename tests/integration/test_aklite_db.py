"""Issue 15 items 1, 2 and 4 on the simulated device: usbupdater next to aktualizr-lite.

A real `sql.db` built from aktualizr's DDL (tests/akdb) sits at `<storage.path>/sql.db`; every
step runs through the real `usbupdater` CLI; what aktualizr-lite would read back is checked with
libaktualizr's own queries (tests/akdb/conftest.py), written independently of usbupdater.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.akdb.conftest import (
    aklite_current,
    aklite_pending,
    build_db,
    known_but_not_installed,
    meta_rows,
    rollback_target,
    store_current,
)
from tests.integration.rig import Rig
from usbupdater.apps.store import RECORD
from usbupdater.sim.apps import AppSpec, ServiceSpec
from usbupdater.sim.dockerd import PrivateDockerd
from usbupdater.sim.factory import Factory, PublishedTarget, TargetSpec
from usbupdater.sim.signer import SigningKey

pytestmark = pytest.mark.integration

NONET = {"network_mode": "none"}


def app(name: str, tag: str, *, fails: bool = False) -> AppSpec:
    cmd = ("sh", "-c", "exit 3") if fails else ("sleep", "3600")
    return AppSpec(name, services={"main": ServiceSpec(cmd=cmd, compose=NONET)}, version_tag=tag)


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    work = tmp_path_factory.mktemp("akdb-factory")
    f = Factory(work)
    f.publish(TargetSpec(1, apps=[app("web", "1"), app("tool", "1")]))
    f.publish(TargetSpec(2, apps=[app("web", "2"), app("tool", "2")], rootfs_files={"usr/v": b"2"}))
    f.publish(
        TargetSpec(
            3, apps=[app("web", "3", fails=True), app("tool", "2")], rootfs_files={"usr/v": b"3"}
        )
    )
    f.publish(TargetSpec(4, apps=[app("web", "4"), app("tool", "4")], same_rootfs_as=name(f, 2)))
    f.publish(
        TargetSpec(
            5, apps=[app("web", "5", fails=True), app("tool", "2")], same_rootfs_as=name(f, 2)
        )
    )
    yield f
    shutil.rmtree(work, ignore_errors=True)


def name(f: Factory, version: int) -> str:
    return f"{f.hardware_id}-lmp-{version}"


def T(f: Factory, version: int) -> PublishedTarget:
    return f.targets[name(f, version)]


def make_rig(tmp_path: Path, f: Factory, dockerd: PrivateDockerd, **kw: str) -> Rig:
    return Rig.create(tmp_path, f, dockerd, T(f, 1).commit, **kw)


@pytest.fixture
def rig(tmp_path: Path, factory: Factory, dockerd: PrivateDockerd) -> Iterator[Rig]:
    r = make_rig(tmp_path, factory, dockerd)
    try:
        yield r
    finally:
        r.cleanup_engine()
        r.device.destroy()


def sqldb(rig: Rig, build: str = "v26-migrated") -> Path:
    """aktualizr-lite's database of a device that was online: roots 1-2, the flashed target."""
    path = rig.root / "sota" / "sql.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    build_db(path, build)
    conn = sqlite3.connect(path)
    try:
        for v in (1, 2):
            conn.execute("INSERT INTO meta VALUES (?, 0, 0, ?)", (rig_repo_root(rig, v), v))
        conn.commit()
    finally:
        conn.close()
    return path


def rig_repo_root(rig: Rig, version: int) -> bytes:
    return (rig.root / "usr-lib-sota-tuf" / "ci" / f"{version}.root.json").read_bytes()


def store_online_top(path: Path, files: dict[str, bytes]) -> None:
    """What an online update leaves: timestamp/snapshot/targets rows, version -1 (storeNonRoot)."""
    conn = sqlite3.connect(path)
    try:
        for role, role_id in (("timestamp", 3), ("snapshot", 1), ("targets", 2)):
            conn.execute("DELETE FROM meta WHERE repo = 0 AND meta_type = ?", (role_id,))
            conn.execute("INSERT INTO meta VALUES (?, 0, ?, -1)", (files[f"{role}.json"], role_id))
        conn.commit()
    finally:
        conn.close()


def bundle(f: Factory, tmp_path: Path, version: int, **kw: object) -> Path:
    return f.write_bundle(tmp_path / f"bundle-{version}-{f.meta_version}", [name(f, version)], **kw)  # type: ignore[arg-type]


def update(rig: Rig, b: Path, code: int = 100) -> None:
    assert rig.install(b) == code, rig.describe()
    if code == 100:
        rig.reboot()
    assert rig.run() == 0, rig.describe()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- trust: the database's root and floors --------------------------------------------------


def test_online_rotated_root_verifies_a_bundle_signed_after_it(
    tmp_path: Path, dockerd: PrivateDockerd
) -> None:
    f = Factory(tmp_path / "rotating")
    f.publish(TargetSpec(1))
    f.publish(TargetSpec(2, rootfs_files={"usr/v": b"2"}))
    rig = make_rig(tmp_path / "dev", f, dockerd, pacman_type="ostree")
    try:
        # Online, aktualizr-lite followed a rotation to root v3 with new keys for every role.
        f.repo.rotate_root(keys={r: [SigningKey.ed25519()] for r in f.repo.keys})
        b = bundle(f, tmp_path, 2)
        (b / "tuf" / "3.root.json").unlink()  # the stick was made after the rotation
        # Without the database: keys root v2 does not know (bundle-targets.json is checked first).
        assert rig.install(b) == 15, rig.describe()
        db = sqldb(rig)
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO meta VALUES (?, 0, 0, 3)", (f.repo.root_bytes(3),))
        conn.commit()
        conn.close()
        assert rig.install(b) == 100, rig.describe()
        assert aklite_pending(db)["name"] == name(f, 2)  # type: ignore[index]
        rig.reboot()
        assert rig.run() == 0, rig.describe()
        assert aklite_current(db)["sha256"] == T(f, 2).commit  # type: ignore[index]
        assert aklite_pending(db) is None
        trusted = json.loads((rig.state_dir / "tuf" / "trusted.json").read_bytes())
        assert "3" in trusted["roots"]  # the walked database root joins usbupdater's store
    finally:
        rig.device.destroy()


def test_outdated_bundle_not_named_by_the_online_metadata_is_refused_11(
    rig: Rig, factory: Factory, tmp_path: Path
) -> None:
    db = sqldb(rig)
    # Online metadata v50 that knows only target 1; the stick's metadata is v10.
    store_online_top(
        db, factory.repo.bundle_files({name(factory, 1): T(factory, 1).entry}, version=50)
    )
    before, db_before = rig.snapshot(), digest(db)
    assert rig.install(bundle(factory, tmp_path, 2, metadata_version=10)) == 11, rig.describe()
    assert "older than what the device got online" in rig.last.stderr
    assert rig.snapshot() == before and digest(db) == db_before


def test_outdated_bundle_falls_back_to_the_online_metadata_and_run_records_current(
    rig: Rig, factory: Factory, tmp_path: Path
) -> None:
    db = sqldb(rig)
    store_current(db, name(factory, 1), T(factory, 1).commit, {"version": "1"})
    everything = {n: t.entry for n, t in factory.targets.items()}
    store_online_top(db, factory.repo.bundle_files(everything, version=50))
    assert rig.install(bundle(factory, tmp_path, 2, metadata_version=10)) == 100, rig.describe()
    assert "device's stored metadata" in rig.last.stderr
    pending = aklite_pending(db)
    assert pending is not None and pending["name"] == name(factory, 2)
    assert aklite_current(db)["name"] == name(factory, 1)  # type: ignore[index]
    rig.reboot()
    assert rig.run() == 0, rig.describe()
    current = aklite_current(db)
    assert current is not None and current["name"] == name(factory, 2)
    assert current["sha256"] == T(factory, 2).commit and current["custom"]["version"] == "2"
    assert aklite_pending(db) is None and rollback_target(db) == name(factory, 2)
    assert {v for t, _, v in meta_rows(db) if t != 0} == {50}  # floors never moved back


def test_newer_bundle_moves_the_databases_metadata_forward(
    rig: Rig, factory: Factory, tmp_path: Path
) -> None:
    db = sqldb(rig, "v25-schema")
    update(rig, bundle(factory, tmp_path, 2, metadata_version=60))
    assert aklite_current(db)["name"] == name(factory, 2)  # type: ignore[index]
    assert {v for t, _, v in meta_rows(db) if t != 0} == {60}


# --- rollbacks ------------------------------------------------------------------------------


def test_boot_rollback_leaves_the_old_target_current(
    rig: Rig, factory: Factory, tmp_path: Path
) -> None:
    db = sqldb(rig)
    update(rig, bundle(factory, tmp_path, 1), 101)
    assert aklite_current(db)["name"] == name(factory, 1)  # type: ignore[index]
    v2 = T(factory, 2)
    assert rig.install(bundle(factory, tmp_path, 2)) == 100, rig.describe()
    rig.device.declare_unbootable(v2.commit)
    assert rig.reboot() == T(factory, 1).commit
    assert rig.run() == 99, rig.describe()
    assert aklite_current(db)["name"] == name(factory, 1)  # type: ignore[index]
    assert aklite_pending(db) is None
    assert known_but_not_installed(db) == [v2.name]
    assert rig.run() == 40  # nothing pending; the database is as the rollback left it
    assert aklite_current(db)["name"] == name(factory, 1)  # type: ignore[index]


def test_apps_failure_redeploy_and_restart_leave_the_old_target_current(
    rig: Rig, factory: Factory, tmp_path: Path
) -> None:
    db = sqldb(rig, "v25-migrated")
    update(rig, bundle(factory, tmp_path, 1), 101)
    update(rig, bundle(factory, tmp_path, 2))
    v2, v3 = T(factory, 2), T(factory, 3)
    # Redeploy path: v3's apps fail after its reboot, v2 is redeployed (pending) then confirmed.
    assert rig.install(bundle(factory, tmp_path, 3)) == 100, rig.describe()
    assert rig.reboot() == v3.commit
    assert rig.run() == 100, rig.describe()
    assert aklite_pending(db)["name"] == v2.name  # type: ignore[index]
    assert v3.name in known_but_not_installed(db)
    assert rig.reboot() == v2.commit
    assert rig.run() == 0, rig.describe()
    assert aklite_current(db)["name"] == v2.name and aklite_pending(db) is None  # type: ignore[index]
    # Restart path: an apps-only update whose apps fail: v2's apps are restarted (99).
    assert rig.install(bundle(factory, tmp_path, 5)) == 101, rig.describe()
    assert rig.run() == 99, rig.describe()
    assert aklite_current(db)["name"] == v2.name and aklite_pending(db) is None  # type: ignore[index]
    assert T(factory, 5).name in known_but_not_installed(db)
    assert rollback_target(db) == v2.name


def test_unknown_schema_is_never_written(rig: Rig, factory: Factory, tmp_path: Path) -> None:
    db = sqldb(rig)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE version SET version = 99")
    conn.commit()
    conn.close()
    before = digest(db)
    update(rig, bundle(factory, tmp_path, 2))
    assert rig.state().current.name == name(factory, 2)  # type: ignore[union-attr]
    assert digest(db) == before


# --- pruning --------------------------------------------------------------------------------


def test_prune_keeps_what_usbupdater_did_not_add_and_reset_apps(
    rig: Rig, factory: Factory, tmp_path: Path
) -> None:
    text = rig.config.read_text().replace("[pacman]\n", '[pacman]\nreset_apps = "tool"\n', 1)
    rig.config.write_text(text)
    update(rig, bundle(factory, tmp_path, 1), 101)
    store = rig.root / "sota" / "reset-apps"
    web1 = T(factory, 1).apps["web"]
    web1_dir = store / "apps" / "web" / web1.uri.rpartition(":")[2]
    tool1_dir = store / "apps" / "tool" / T(factory, 1).apps["tool"].uri.rpartition(":")[2]
    assert (web1_dir / RECORD).is_file() and (tool1_dir / RECORD).is_file()
    # What someone else put into the store: a loose blob, and an app version (no record of
    # usbupdater's) whose manifest names web v1's bundle blob.
    loose = b"preloaded by the factory image"
    loose_blob = store / "blobs" / "sha256" / hashlib.sha256(loose).hexdigest()
    loose_blob.write_bytes(loose)
    foreign = store / "apps" / "preloaded" / ("e" * 64)
    foreign.mkdir(parents=True)
    (foreign / "manifest.json").write_text(json.dumps({"layers": [{"digest": web1.bundle_digest}]}))
    shared_blob = store / "blobs" / "sha256" / web1.bundle_digest.partition(":")[2]

    update(rig, bundle(factory, tmp_path, 2))  # web1/tool1 stay: v1 is the rollback target
    assert (web1_dir / RECORD).is_file()
    update(rig, bundle(factory, tmp_path, 4), 101)  # apps only: v2 is now the rollback target
    assert not web1_dir.exists()  # usbupdater's own app version, needed by nobody: pruned
    web1_only = store / "blobs" / "sha256" / web1.manifest_digest.partition(":")[2]
    assert not web1_only.exists()
    assert (tool1_dir / RECORD).is_file()  # [pacman] reset_apps
    for d in ("web", "tool"):  # the current (v4) and rollback (v2) targets' apps
        for v in (2, 4):
            uri = T(factory, v).apps[d].uri
            assert (store / "apps" / d / uri.rpartition(":")[2] / RECORD).is_file()
    assert loose_blob.read_bytes() == loose
    assert (foreign / "manifest.json").is_file() and shared_blob.is_file()
