"""Fault injection on real filesystems: one published factory for the package, a device on v1.

The device is the simulated one of tests/integration (real ostree sysroot, file bootloader, the
shared private dockerd); v2 changes the rootfs (1 MiB of random bytes, so the pull reads a real
`.filez`) and the app `web` (a 2 MiB data layer, so a fault can land in the middle of a blob).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.rig import Rig
from usbupdater.sim.apps import AppSpec, ServiceSpec
from usbupdater.sim.dockerd import PrivateDockerd
from usbupdater.sim.factory import Factory, TargetSpec
from usbupdater.sim.sticks import mounts_under

NONET = {"network_mode": "none"}
LAYER = 2 << 20


def web(tag: str, data_layers: tuple[int, ...] = ()) -> AppSpec:
    main = ServiceSpec(cmd=("sleep", "3600"), compose=NONET, data_layers=data_layers)
    return AppSpec("web", services={"main": main}, version_tag=tag)


class Kit:
    """The factory and the two bundles every fault test starts from."""

    def __init__(self, work: Path) -> None:
        self.factory = Factory(work / "factory")
        f = self.factory
        self.v1 = f.publish(TargetSpec(1, apps=[web("1")]))
        self.v2 = f.publish(
            TargetSpec(
                2,
                apps=[web("2", (LAYER,))],
                rootfs_files={"usr/share/v": b"2"},
                rootfs_bytes=1 << 20,
            )
        )
        self.b1 = f.write_bundle(work / "bundle-1", [self.v1.name])
        self.b2 = f.write_bundle(work / "bundle-2", [self.v1.name, self.v2.name])

    def layer_blob(self) -> str:
        """Bundle-relative path of v2's 2 MiB layer (the biggest app blob)."""
        return self._biggest(self.b2 / "apps", set(self.v2.apps["web"].blobs), by_name=True)

    def filez(self) -> str:
        """Bundle-relative path of the biggest file object of v2's commit (not in v1's)."""
        return self._biggest(self.b2 / "ostree_repo" / "objects", None, suffix=".filez")

    def _biggest(
        self, root: Path, digests: set[str] | None, *, by_name: bool = False, suffix: str = ""
    ) -> str:
        files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
        if by_name and digests is not None:
            hexes = {d.split(":", 1)[-1] for d in digests}
            files = [p for p in files if p.name in hexes]
        files = [p for p in files if p.name.endswith(suffix)]
        assert files, f"nothing to fault under {root}"
        best = max(files, key=lambda p: p.stat().st_size)
        return str(best.relative_to(self.b2))


@pytest.fixture(scope="package")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    work = tmp_path_factory.mktemp("faults")
    yield Kit(work)
    shutil.rmtree(work, ignore_errors=True)


def on_v1(rig: Rig, kit: Kit) -> None:
    """The device runs v1 and its app (installed by usbupdater), so there is much to keep."""
    assert rig.install(kit.b1) == 101, rig.describe()
    assert rig.run() == 0, rig.describe()


def converges(rig: Rig, kit: Kit) -> None:
    """A good stick then takes the device to v2 as if nothing had happened."""
    assert rig.install(kit.b2) == 100, rig.describe()
    assert rig.reboot() == kit.v2.commit
    assert rig.run() == 0, rig.describe()
    st = rig.state()
    assert st.pending is None and st.current is not None and st.current.name == kit.v2.name
    assert set(rig.running()) == {"web/main"}


def unchanged(rig: Rig, before: dict[str, Any]) -> None:
    """The device is as it was (spec section 6); a difference is named, not just shown."""
    after = rig.snapshot()
    if after != before:
        files_a, files_b = before["files"], after["files"]
        diff = {
            "added": sorted(set(files_b) - set(files_a)),
            "removed": sorted(set(files_a) - set(files_b)),
            "changed": sorted(k for k in set(files_a) & set(files_b) if files_a[k] != files_b[k]),
            **{k: (before[k], after[k]) for k in before if k != "files" and before[k] != after[k]},
        }
        raise AssertionError(f"the device changed: {diff}\n{rig.describe()}")


def pull_running(repo: Path) -> list[int]:
    """PIDs of `ostree pull-local` processes writing into `repo`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"pull-local" in cmd and f"--repo={repo}".encode() in cmd:
            found.append(int(pid))
    return found


def one_line(rig: Rig) -> str:
    """The failure line the CLI printed: exactly one, and nothing quoted from a tool."""
    lines = [ln for ln in rig.last.stderr.splitlines() if ln.startswith("usbupdater:")]
    assert len(lines) == 1, rig.describe()
    line = lines[0]
    for raw in ("Traceback", "GLib", "[Errno", "error: ", "While ", "Opening ", "ostree:"):
        assert raw not in line.replace("I/O error: ", ""), rig.describe()
    return line


@pytest.fixture
def rig(tmp_path: Path, kit: Kit, dockerd: PrivateDockerd) -> Iterator[Rig]:
    r = Rig.create(tmp_path / "dev", kit.factory, dockerd, kit.v1.commit)
    try:
        yield r
    finally:
        for point in mounts_under(tmp_path):  # a test that failed half-way
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=30, check=False)
        r.cleanup_engine()
        r.device.destroy()
