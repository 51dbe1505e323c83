"""OstreeSysroot against real ostree on simulated devices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ostree_helpers import SourceRepo

from usbupdater.booted import ProcCmdlineBootedCommit
from usbupdater.errors import (
    AdapterError,
    ContentMissingError,
    ExitCode,
    NoSpaceError,
    VerificationError,
)
from usbupdater.rootfs import OstreeSysroot
from usbupdater.sim.device import DEFAULT_KARGS, SimDevice

pytestmark = pytest.mark.integration


def object_path(repo: Path, checksum: str, suffix: str = "filez") -> Path:
    return repo / "objects" / checksum[:2] / f"{checksum[2:]}.{suffix}"


def snapshot(dev: SimDevice) -> tuple[object, ...]:
    """What must not change when an install is refused."""
    repo = dev.sysroot / "ostree" / "repo"
    objects = sorted(str(p.relative_to(repo)) for p in (repo / "objects").rglob("*"))
    refs = sorted(str(p.relative_to(repo)) for p in (repo / "refs").rglob("*"))
    deploy = sorted(os.listdir(dev.sysroot / "ostree" / "deploy" / "lmp" / "deploy"))
    entries = sorted(os.listdir(dev.sysroot / "boot" / "loader" / "entries"))
    return (dev.rootfs().deployments(), objects, refs, deploy, entries)


def test_install_v2_over_v1_and_reboot(device: SimDevice, src_repo: SourceRepo) -> None:
    rootfs = device.rootfs()
    assert [d.commit for d in rootfs.deployments()] == [src_repo.v1]
    assert rootfs.booted_commit() == src_repo.v1
    assert rootfs.pending_commit() is None

    est = rootfs.check_space(src_repo.path, src_repo.v2)
    assert est.new_objects >= 1
    dep = rootfs.install(src_repo.path, src_repo.v2)
    assert dep.commit == src_repo.v2 and dep.index == 0
    assert [d.commit for d in rootfs.deployments()] == [src_repo.v2, src_repo.v1]
    assert rootfs.pending_commit() == src_repo.v2
    assert rootfs.booted_commit() == src_repo.v1
    # kernel arguments of the merge deployment are kept
    deps = rootfs.deployments()
    assert rootfs.kernel_args(deps[0]) == list(DEFAULT_KARGS)
    assert rootfs.kernel_args(deps[1]) == list(DEFAULT_KARGS)

    device.bootloader.update_notify()
    sentinel = device.sentinel()
    sentinel.set()
    assert not sentinel.rebooted_since_set()
    device.reboot()
    assert sentinel.rebooted_since_set()
    assert rootfs.booted_commit() == src_repo.v2
    assert rootfs.pending_commit() is None
    assert device.bootloader.get("bootcount") == "1"
    assert device.bootloader.get("upgrade_available") == "1"
    device.bootloader.set_boot_ok()
    assert device.bootloader.get("bootcount") == "0"
    assert device.bootloader.get("upgrade_available") == "0"
    # the real-device reader agrees with the simulation through the recorded cmdline
    real = ProcCmdlineBootedCommit(device.sysroot, cmdline=device.cmdline_file)
    assert real.booted_commit() == src_repo.v2


def test_unbootable_v3_rolls_back_to_v2(device: SimDevice, src_repo: SourceRepo) -> None:
    rootfs = device.rootfs()
    rootfs.install(src_repo.path, src_repo.v2)
    device.bootloader.update_notify()
    device.reboot()
    device.bootloader.set_boot_ok()

    rootfs.install(src_repo.path, src_repo.v3)
    assert [d.commit for d in rootfs.deployments()] == [src_repo.v3, src_repo.v2]
    device.declare_unbootable(src_repo.v3)
    device.bootloader.update_notify()
    record = device.reboot()

    assert rootfs.booted_commit() == src_repo.v2
    v3_dir = rootfs.deployments()[0].dirname
    assert record["tries"] == [v3_dir] * 3 + [rootfs.deployments()[1].dirname]
    env = device.bootloader.read_all()
    # LmP's altbootcmd: rollback=1, upgrade_available=0; bootcount stays past bootlimit (3)
    assert env["rollback"] == "1"
    assert env["upgrade_available"] == "0"
    assert env["bootcount"] == "4"
    assert rootfs.pending_commit() == src_repo.v3  # deployed but not booted: rolled back

    # later boots stay on v2 while rollback=1
    device.reboot()
    assert rootfs.booted_commit() == src_repo.v2

    # the updater drops the failed deployment: v2 is the default again, no reboot needed
    dep = rootfs.rollback_to(src_repo.v2)
    assert dep.commit == src_repo.v2
    assert [d.commit for d in rootfs.deployments()] == [src_repo.v2]
    assert rootfs.pending_commit() is None
    rootfs.prune()
    assert not rootfs.has_commit(src_repo.v3)
    device.bootloader.set_boot_ok()
    device.reboot()
    assert rootfs.booted_commit() == src_repo.v2


def test_rollback_to_older_commit_redeploys_when_new_one_booted(
    device: SimDevice, src_repo: SourceRepo
) -> None:
    """Apps failed on the booted new rootfs: the old commit is deployed again (reboot needed)."""
    rootfs = device.rootfs()
    rootfs.install(src_repo.path, src_repo.v2)
    device.bootloader.update_notify()
    device.reboot()
    assert rootfs.booted_commit() == src_repo.v2
    dep = rootfs.rollback_to(src_repo.v1)
    assert dep.commit == src_repo.v1
    assert rootfs.pending_commit() == src_repo.v1
    device.bootloader.update_notify()
    device.reboot()
    assert rootfs.booted_commit() == src_repo.v1


def test_same_commit_twice_makes_one_deployment(device: SimDevice, src_repo: SourceRepo) -> None:
    rootfs = device.rootfs()
    first = rootfs.install(src_repo.path, src_repo.v2)
    second = rootfs.install(src_repo.path, src_repo.v2)
    assert first == second
    assert [d.dirname for d in rootfs.deployments()] == [
        first.dirname,
        rootfs.deployments()[1].dirname,
    ]
    assert [d.commit for d in rootfs.deployments()] == [src_repo.v2, src_repo.v1]
    assert rootfs.deploy(src_repo.v2).serial == first.serial


def test_missing_object_is_refused_and_sysroot_unchanged(
    device: SimDevice, src_repo: SourceRepo, tmp_path: Path
) -> None:
    bad = src_repo.copy(tmp_path / "missing_repo")
    object_path(bad, src_repo.v3_only_object).unlink()
    before = snapshot(device)
    with pytest.raises(ContentMissingError) as exc:
        device.rootfs().install(bad, src_repo.v3)
    assert src_repo.v3_only_object in str(exc.value)
    assert exc.value.code == ExitCode.CONTENT_MISSING
    assert snapshot(device) == before
    assert not device.rootfs().has_commit(src_repo.v3)


def test_corrupted_object_is_refused_and_sysroot_unchanged(
    device: SimDevice, src_repo: SourceRepo, tmp_path: Path
) -> None:
    bad = src_repo.copy(tmp_path / "corrupt_repo")
    obj = object_path(bad, src_repo.v3_only_object)
    data = bytearray(obj.read_bytes())
    data[-64] ^= 0xFF  # inside the compressed payload: decompresses, wrong checksum (or fails)
    obj.write_bytes(bytes(data))
    before = snapshot(device)
    with pytest.raises(VerificationError) as exc:
        device.rootfs().install(bad, src_repo.v3)
    assert exc.value.reason == (f"commit {src_repo.v3[:12]}: bundle content failed verification")
    assert snapshot(device) == before
    assert not device.rootfs().has_commit(src_repo.v3)


def test_corrupted_object_same_size_reports_checksum(
    device: SimDevice, src_repo: SourceRepo, tmp_path: Path
) -> None:
    """A swapped-in valid object of another checksum: ostree names the mismatch (exit 80)."""
    bad = src_repo.copy(tmp_path / "swapped_repo")
    target = object_path(bad, src_repo.v3_only_object)
    other = next(
        p for p in (bad / "objects").rglob("*.filez") if p.name != target.name and p.stat().st_size
    )
    target.write_bytes(other.read_bytes())
    before = snapshot(device)
    with pytest.raises(VerificationError) as exc:
        device.rootfs().install(bad, src_repo.v3)
    assert exc.value.code == ExitCode.VERIFICATION_FAILED
    assert str(exc.value) == (
        f"commit {src_repo.v3[:12]}: bundle content failed verification"
        f" (object {src_repo.v3_only_object})"
    )
    assert "Corrupted" not in str(exc.value)  # ostree's own words are not quoted
    assert snapshot(device) == before


def test_no_space_injected(device: SimDevice, src_repo: SourceRepo) -> None:
    rootfs = device.rootfs(free_space=lambda _p: 4096)
    before = snapshot(device)
    with pytest.raises(NoSpaceError) as exc:
        rootfs.install(src_repo.path, src_repo.v3)
    assert exc.value.code == ExitCode.NO_SPACE == 60
    assert "only 4096 bytes are free" in str(exc.value)
    assert "need" in str(exc.value)
    assert snapshot(device) == before


def test_space_estimate_counts_only_new_objects(device: SimDevice, src_repo: SourceRepo) -> None:
    rootfs = device.rootfs(deploy_allowance=0)
    est = rootfs.estimate_space(src_repo.path, src_repo.v3)
    assert est.needed_bytes >= 32 << 10  # at least the random extra file
    assert est.new_objects >= 3  # v3.bin, extra, os-release
    rootfs.pull(src_repo.path, src_repo.v3)
    assert rootfs.estimate_space(src_repo.path, src_repo.v3).new_objects == 0


def test_prune_removes_pulled_but_undeployed(device: SimDevice, src_repo: SourceRepo) -> None:
    rootfs = device.rootfs()
    rootfs.pull(src_repo.path, src_repo.v3)
    assert rootfs.has_commit(src_repo.v3)
    rootfs.prune()
    assert not rootfs.has_commit(src_repo.v3)
    assert rootfs.has_commit(src_repo.v1)
    assert [d.commit for d in rootfs.deployments()] == [src_repo.v1]


def test_deploy_without_pull_and_bad_input(device: SimDevice, src_repo: SourceRepo) -> None:
    rootfs = device.rootfs()
    with pytest.raises(ContentMissingError):
        rootfs.deploy(src_repo.v2)
    with pytest.raises(AdapterError, match="not an OSTree commit"):
        rootfs.deploy("v2")
    with pytest.raises(ContentMissingError) as exc:
        rootfs.install(src_repo.path, "0" * 64)
    assert exc.value.reason == f"commit {'0' * 12}: bundle content missing (object {'0' * 64})"


def test_ostree_failure_is_a_fixed_message(tmp_path: Path) -> None:
    rootfs = OstreeSysroot(tmp_path / "nosysroot")
    with pytest.raises(AdapterError) as exc:
        rootfs.deployments()
    assert str(exc.value) == "ostree admin status failed (exit 1)"


def test_missing_ostree_binary(tmp_path: Path) -> None:
    rootfs = OstreeSysroot(tmp_path, ostree_bin=str(tmp_path / "no-ostree"))
    with pytest.raises(AdapterError, match=r"^ostree admin status: command not found$"):
        rootfs.deployments()
