"""Hostile `ostree_repo/` on a stick, through the real CLI (`python -m usbupdater install`) on a
simulated device with the real ostree: refused with its exit code and a fixed one-line reason,
promptly, nothing of a linked file quoted anywhere, no ostree left running, device unchanged."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from usbupdater.sim.device import SimDevice, remove_tree
from usbupdater.sim.factory import Factory, TargetSpec
from usbupdater.sim.setup import CORE_ARGV, create_device

pytestmark = pytest.mark.integration

INSTALL = (*CORE_ARGV, "install", "-s")
SECRET = "usbupdater-test-secret-5b1f0c7e-d41d"


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    work = tmp_path_factory.mktemp("hostile-repo-factory")
    f = Factory(work)
    f.publish(TargetSpec(1))
    f.publish(TargetSpec(2, rootfs_files={"usr/share/v": b"2"}, rootfs_bytes=64 << 10))
    yield f
    shutil.rmtree(work, ignore_errors=True)


@dataclass
class Case:
    root: Path
    device: SimDevice
    config: Path
    bundle: Path

    @property
    def repo(self) -> Path:
        return self.bundle / "ostree_repo"

    def install(self) -> tuple[subprocess.CompletedProcess[str], float]:
        t0 = time.monotonic()
        p = subprocess.run(
            [*INSTALL, str(self.bundle), "-c", str(self.config), "--log-level", "0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return p, time.monotonic() - t0

    def snapshot(self) -> tuple[object, ...]:
        repo = self.device.sysroot / "ostree" / "repo"
        # object files (a failed pull may leave empty objects/XX/ directories, as ostree does)
        objects = sorted(str(p.relative_to(repo)) for p in (repo / "objects").rglob("*.*"))
        return (tuple(self.device.rootfs().deployments()), tuple(objects))

    def unique_object(self) -> Path:
        """The biggest content object of the bundle the device does not have yet."""
        have = {p.name.split(".")[0] for p in (self.device.sysroot / "ostree/repo").rglob("*")}
        new = [p for p in self.repo.rglob("*.filez") if p.name.split(".")[0] not in have]
        return max(new, key=lambda p: p.stat().st_size)


@pytest.fixture
def case(tmp_path: Path, factory: Factory) -> Iterator[Case]:
    root = tmp_path / "dev"
    root.mkdir()
    try:
        v1 = factory.targets[f"{factory.hardware_id}-lmp-1"].commit
        dev, cfg = create_device(root, factory, v1, pacman_type="ostree")
        bundle = factory.write_bundle(tmp_path / "stick" / "bundle")
        yield Case(root, dev, cfg, bundle)
    finally:
        remove_tree(root)


def ostree_processes_on(path: Path) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"ostree") and str(path).encode() in b" ".join(argv):
            found.append(int(pid))
    return found


def reason(p: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("usbupdater: ")]
    assert lines, p.stderr[-2000:]
    return lines[-1]


def everything_written(root: Path) -> str:
    text = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            text.append(p.read_bytes().decode("utf-8", "replace"))
    return "\n".join(text)


@pytest.mark.timeout(60)
def test_genuine_bundle_installs(case: Case) -> None:
    p, _ = case.install()
    assert p.returncode == 100, p.stderr[-2000:]


@pytest.mark.timeout(30)
def test_config_linked_to_a_secret_is_refused_and_never_quoted(case: Case, tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "shadow"
    secret.parent.mkdir()
    secret.write_text(f"{SECRET}:$6$x:19000:0:99999:7:::\n")
    (case.repo / "config").unlink()
    os.symlink(secret, case.repo / "config")
    before = case.snapshot()
    p, _ = case.install()
    assert p.returncode == 80, p.stderr[-2000:]
    assert reason(p) == (
        "usbupdater: bundle's OSTree repo refused: ostree_repo/config is a symbolic link"
    )
    assert SECRET not in p.stdout and SECRET not in p.stderr
    assert SECRET not in everything_written(case.root)  # state, history, logs of the device
    assert case.snapshot() == before
    assert ostree_processes_on(case.repo) == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["config", "ref", "object"])
def test_fifo_is_refused_promptly(case: Case, where: str) -> None:
    path = {
        "config": case.repo / "config",
        "ref": case.repo / "refs" / "heads" / "lmp",
        "object": case.unique_object() if where == "object" else case.repo,
    }[where]
    if path.exists():
        path.unlink()
    os.mkfifo(path)
    before = case.snapshot()
    p, seconds = case.install()
    assert p.returncode == 80, p.stderr[-2000:]
    rel = path.relative_to(case.bundle)
    assert reason(p).startswith(f"usbupdater: bundle's OSTree repo refused: {rel} is ")
    assert seconds < 15
    assert case.snapshot() == before
    assert ostree_processes_on(case.repo) == []


@pytest.mark.timeout(60)
def test_corrupt_object_is_80_with_a_fixed_message(case: Case) -> None:
    obj = case.unique_object()
    data = bytearray(obj.read_bytes())
    data[-64] ^= 0xFF
    obj.write_bytes(bytes(data))
    before = case.snapshot()
    p, _ = case.install()
    assert p.returncode == 80, p.stderr[-2000:]
    assert "bundle content failed verification" in reason(p)
    assert "error:" not in reason(p).lower()  # none of ostree's own words
    assert case.snapshot() == before


@pytest.mark.timeout(60)
def test_missing_object_is_8(case: Case) -> None:
    obj = case.unique_object()
    checksum = obj.parent.name + obj.name.split(".")[0]
    obj.unlink()
    before = case.snapshot()
    p, _ = case.install()
    assert p.returncode == 8, p.stderr[-2000:]
    assert reason(p).endswith(f"bundle content missing (object {checksum})")
    assert case.snapshot() == before
