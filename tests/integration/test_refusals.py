"""A refused install leaves the device as it was (spec section 6), also when it fails after
`ostree admin deploy`: the new deployment, the boot variables, the reboot sentinel and the app
store files it added are all taken back, and the message says so.

Real parts: the simulated device's ostree sysroot, its file-backed boot environment, a private
dockerd; faults are injected in-process where no real component can be made to fail on cue.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.rig import Rig
from usbupdater import core
from usbupdater.config import load as load_config
from usbupdater.errors import AdapterError, UpdaterError, VerificationError
from usbupdater.sim.apps import AppSpec, ServiceSpec
from usbupdater.sim.boot import FileBootloader
from usbupdater.sim.core import sim_device
from usbupdater.sim.dockerd import PrivateDockerd
from usbupdater.sim.factory import Factory, TargetSpec
from usbupdater.state import StateStore

pytestmark = pytest.mark.integration

NONET = {"network_mode": "none"}


def web(tag: str) -> AppSpec:
    return AppSpec(
        "web",
        services={"main": ServiceSpec(cmd=("sleep", "3600"), compose=NONET)},
        version_tag=tag,
    )


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    work = tmp_path_factory.mktemp("refusals-factory")
    f = Factory(work)
    f.publish(TargetSpec(1, apps=[web("1")]))
    f.publish(TargetSpec(2, apps=[web("2")], rootfs_files={"usr/share/v": b"2" * 5000}))
    yield f
    shutil.rmtree(work, ignore_errors=True)


def name(version: int) -> str:
    return f"intel-corei7-64-lmp-{version}"


@pytest.fixture
def rig(tmp_path: Path, factory: Factory, dockerd: PrivateDockerd) -> Iterator[Rig]:
    r = Rig.create(tmp_path, factory, dockerd, factory.targets[name(1)].commit)
    try:
        assert r.install(factory.write_bundle(tmp_path / "b1", [name(1)])) == 101, r.describe()
        assert r.run() == 0, r.describe()
        yield r
    finally:
        r.cleanup_engine()
        r.device.destroy()


def device_view(rig: Rig) -> dict[str, Any]:
    """rig.snapshot() plus what it leaves out: the sentinel and the sysroot repo's objects."""
    objects = rig.device.sysroot / "ostree" / "repo" / "objects"
    return {
        **rig.snapshot(),
        "sentinel": sorted(p.name for p in rig.device.sentinel_dir.glob("*")),
        "objects": sorted(str(p.relative_to(objects)) for p in objects.rglob("*") if p.is_file()),
    }


def corrupt_new_objects(rig: Rig, bundle: Path) -> int:
    """Flip a byte in every file object of the bundle's repo the device does not have yet."""
    have = rig.device.sysroot / "ostree" / "repo" / "objects"
    n = 0
    for obj in sorted((bundle / "ostree_repo" / "objects").rglob("*.filez")):
        if (have / obj.parent.name / obj.name.replace(".filez", ".file")).exists():
            continue
        data = bytearray(obj.read_bytes())
        data[len(data) // 2] ^= 0xFF
        obj.unlink()  # pull-local may have hard-linked it to the factory's repo
        obj.write_bytes(bytes(data))
        n += 1
    return n


def test_corrupt_ostree_object_80_leaves_device_unchanged(
    rig: Rig, factory: Factory, tmp_path: Path
) -> None:
    """Apps verify fine, ostree refuses an object: no app dir, blob or object stays behind."""
    bundle = factory.write_bundle(tmp_path / "b2", [name(2)])
    assert corrupt_new_objects(rig, bundle) > 0
    before = device_view(rig)
    assert rig.install(bundle) == 80, rig.describe()
    assert rig.last.stderr.strip().splitlines()[-1].startswith("usbupdater: ")
    assert device_view(rig) == before
    store = load_config([rig.config]).pacman.reset_apps_root
    assert [p.name for p in (store / "apps" / "web").iterdir()] == [
        _uri_hex(factory.targets[name(1)].uris["web"])
    ]


def _uri_hex(uri: str) -> str:
    return uri.rpartition("@sha256:")[2]


class _FailingEnv(FileBootloader):
    """The device's boot environment whose writes of `fail_on` fail (a full or worn-out env
    partition), after the earlier variables of `update_notify` were written."""

    fail_on = "rollback"

    def set(self, name: str, value: str) -> None:
        if name == self.fail_on:
            raise AdapterError(f"fw_setenv {name} {value} failed (1): Cannot write environment")
        super().set(name, value)


def _device_with(rig: Rig, **replace: Any) -> tuple[Any, core.Device]:
    cfg = load_config([rig.config])
    dev = sim_device(cfg)
    dev.__dict__.update(replace)  # cached_property slots: bootloader, app_store, ...
    return cfg, dev


def test_bootloader_write_failure_after_deploy_is_undone(
    rig: Rig, factory: Factory, tmp_path: Path
) -> None:
    bundle = factory.write_bundle(tmp_path / "b2", [name(2)])
    env = _FailingEnv(rig.device.env_file, mode=rig.device.bootloader.mode)
    env.fail_on = "rollback"  # bootcount and upgrade_available are written first
    cfg, dev = _device_with(rig, bootloader=env)
    before = device_view(rig)
    assert before["deployments"] == [factory.targets[name(1)].commit]
    with pytest.raises(AdapterError) as info:
        core.install(cfg, bundle, device=dev)
    reason = info.value.reason
    assert reason.startswith("arming the bootloader failed: fw_setenv rollback 0 failed")
    assert reason.endswith("the new deployment was removed, nothing was installed")
    assert device_view(rig) == before  # env, deployments, objects, store, state, sentinel
    assert StateStore(rig.state_dir).load().pending is None


def test_undo_that_fails_says_what_remains(rig: Rig, factory: Factory, tmp_path: Path) -> None:
    """If the boot variables cannot be written back either, the message says so honestly."""
    bundle = factory.write_bundle(tmp_path / "b2", [name(2)])
    env = _FailingEnv(rig.device.env_file, mode=rig.device.bootloader.mode)
    cfg, dev = _device_with(rig, bootloader=env)
    real_set = FileBootloader.set
    calls: list[str] = []

    def set_once(self: FileBootloader, var: str, value: str) -> None:
        calls.append(var)
        if var == "rollback" or calls.count(var) > 1:  # writing back fails too
            raise AdapterError(f"fw_setenv {var} {value} failed (1): Cannot write environment")
        real_set(self, var, value)

    env.set = set_once.__get__(env)  # type: ignore[method-assign]
    before = device_view(rig)
    with pytest.raises(AdapterError) as info:
        core.install(cfg, bundle, device=dev)
    reason = info.value.reason
    assert "undoing it failed, left on the device: boot variables changed" in reason
    after = device_view(rig)
    assert after["deployments"] == before["deployments"]  # the rest was still undone
    assert after["sentinel"] == before["sentinel"]


def test_state_write_failure_after_deploy_is_undone(
    rig: Rig, factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pending record cannot be written (read-only or full state partition): nothing may
    boot a target no record expects."""
    bundle = factory.write_bundle(tmp_path / "b2", [name(2)])
    real_save = StateStore.save

    def save(self: StateStore, state: Any) -> None:
        if state.pending is not None:
            raise OSError(errno.EROFS, "Read-only file system", str(self.state_path))
        real_save(self, state)

    monkeypatch.setattr(StateStore, "save", save)
    cfg, dev = _device_with(rig)
    before = device_view(rig)
    with pytest.raises(UpdaterError) as info:
        core.install(cfg, bundle, device=dev)
    reason = info.value.reason
    assert reason.startswith("recording the installation failed: Read-only file system")
    assert reason.endswith("the new deployment was removed, nothing was installed")
    after = device_view(rig)
    for key in ("deployments", "objects", "sentinel", "images", "containers"):
        assert after[key] == before[key], key
    changed = {
        k
        for k in after["files"].keys() | before["files"].keys()
        if after["files"].get(k) != before["files"].get(k)
    }
    # Only the verified metadata (kept: it raises the rollback floor); the install's history
    # entry is taken back with the rest.
    assert all("/usbupdater/tuf/" in k for k in changed), changed
    assert StateStore(rig.state_dir).load().pending is None


def test_corrupt_app_blob_80_removes_app_dirs_from_earlier_partial_copy(
    rig: Rig, factory: Factory, tmp_path: Path
) -> None:
    """A content refusal (80) after the apps verified but before recording them takes nothing."""
    bundle = factory.write_bundle(tmp_path / "b2", [name(2)])
    from usbupdater.sim.apps import corrupt_blob

    t2 = factory.targets[name(2)]
    corrupt_blob(bundle / "apps", t2.apps["web"].images["main"].layer_digests[-1])
    before = device_view(rig)
    with pytest.raises(VerificationError):
        cfg, dev = _device_with(rig)
        core.install(cfg, bundle, device=dev)
    assert device_view(rig) == before


# Stand-ins keeping variables as files; like U-Boot's fw_setenv, `setenv NAME` deletes NAME.
_PRINTENV = """#!/bin/sh
[ "$1" = "-n" ] && shift
if [ -f "{env}/$1" ]; then cat "{env}/$1"; echo; exit 0; fi
echo "## Error: \\"$1\\" not defined" >&2
exit 1
"""
_SETENV = """#!/bin/sh
if [ $# -eq 1 ]; then rm -f "{env}/$1"; else printf '%s' "$2" > "{env}/$1"; fi
"""


@pytest.mark.parametrize("mode", ["uboot_masked", "fiovb"])
def test_tool_bootloader_variables_restored_after_update_notify(tmp_path: Path, mode: str) -> None:
    """The undo of `update_notify` through stand-in tools: values written back, a variable that
    was unset is deleted again (U-Boot) or set to what unset reads as, 0 (fiovb)."""
    from usbupdater.bootloader import ToolBootloader, make_bootloader

    prefix = "fw" if mode.startswith("uboot") else mode
    bindir, env = tmp_path / "bin", tmp_path / "env"
    bindir.mkdir()
    env.mkdir()
    for tool, text in (("printenv", _PRINTENV), ("setenv", _SETENV)):
        script = bindir / f"{prefix}_{tool}"
        script.write_text(text.format(env=env))
        script.chmod(0o755)
    bl = make_bootloader(mode, tool_dir=bindir)
    assert isinstance(bl, ToolBootloader)
    bl.set("bootcount", "2")
    bl.set("upgrade_available", "0")
    saved = bl.read_vars()
    assert saved == {"bootcount": "2", "upgrade_available": "0", "rollback": None}
    bl.update_notify()
    files = {p.name: p.read_text() for p in env.iterdir()}
    assert files == {"bootcount": "0", "upgrade_available": "1", "rollback": "0"}
    bl.restore(saved)
    expected = {"bootcount": "2", "upgrade_available": "0"}
    if mode == "fiovb":
        expected["rollback"] = "0"
    assert {p.name: p.read_text() for p in env.iterdir()} == expected
