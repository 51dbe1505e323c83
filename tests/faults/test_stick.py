"""A stick that fails under the updater: EIO at byte N, a stall, pulled out mid-read.

Each install goes through the real CLI against a FUSE mount of a good bundle (sim.faultfs), so
the fault reaches usbupdater and ostree through the kernel, as a dying USB stick does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults.conftest import Kit, converges, on_v1, one_line, pull_running, unchanged
from tests.integration.rig import Rig
from usbupdater.sim.faultfs import FaultStick, FileFault
from usbupdater.sim.setup import CORE_ARGV

pytestmark = pytest.mark.integration


def faulty_install(rig: Rig, kit: Kit, tmp_path: Path, **fault: FileFault) -> FaultStick:
    """Install v2 from a faulty stick; the device must be as it was (the caller checks the code,
    then `fired`)."""
    on_v1(rig, kit)
    before = rig.snapshot()
    with FaultStick(kit.b2, tmp_path / "stick", **fault) as stick:  # type: ignore[arg-type]
        rig.install(stick.path)
    unchanged(rig, before)
    return stick


def fired(stick: FaultStick) -> None:
    assert stick.events(), "the fault was never reached"


def io_error(rig: Rig) -> None:
    assert rig.last.returncode == 1, rig.describe()
    line = one_line(rig)
    assert "I/O error" in line and "Nothing was installed" in line, line


def ostree_failed(rig: Rig, kit: Kit) -> None:
    """ostree read the fault: an I/O error (1) or a content code (80), said in our words."""
    assert rig.last.returncode in (1, 80), rig.describe()
    one_line(rig)
    assert not rig.device.rootfs().has_commit(kit.v2.commit)  # the partial pull was pruned


def test_eio_in_the_middle_of_an_app_layer(rig: Rig, kit: Kit, tmp_path: Path) -> None:
    layer = kit.layer_blob()
    stick = faulty_install(rig, kit, tmp_path, eio_at=(layer, 1 << 20))
    io_error(rig)
    fired(stick)
    converges(rig, kit)


def test_eio_in_an_ostree_object_of_the_commit(rig: Rig, kit: Kit, tmp_path: Path) -> None:
    obj = kit.filez()
    stick = faulty_install(rig, kit, tmp_path, eio_at=(obj, 4096))
    ostree_failed(rig, kit)
    fired(stick)
    converges(rig, kit)


def test_eio_in_targets_json(rig: Rig, kit: Kit, tmp_path: Path) -> None:
    stick = faulty_install(rig, kit, tmp_path, eio_at=("tuf/targets.json", 100))
    io_error(rig)  # not "malformed JSON": the read stopped, the file is not bad
    fired(stick)
    converges(rig, kit)


def test_stick_pulled_mid_layer(rig: Rig, kit: Kit, tmp_path: Path) -> None:
    stick = faulty_install(rig, kit, tmp_path, vanish_at=(kit.layer_blob(), 1 << 20))
    io_error(rig)
    fired(stick)
    converges(rig, kit)


def test_stick_pulled_mid_ostree_pull(rig: Rig, kit: Kit, tmp_path: Path) -> None:
    stick = faulty_install(rig, kit, tmp_path, vanish_at=(kit.filez(), 4096))
    ostree_failed(rig, kit)
    fired(stick)
    converges(rig, kit)


def test_stall_in_a_layer_ends_with_the_kill(rig: Rig, kit: Kit, tmp_path: Path) -> None:
    """A stick that stops answering: the core blocks in the kernel until its caller (the agent's
    `updater_timeout`) kills its process group; nothing is recorded, a good stick converges."""
    on_v1(rig, kit)
    before = rig.snapshot()
    stall = (kit.layer_blob(), 1 << 20, 3600.0)
    with FaultStick(kit.b2, tmp_path / "stick", stall=stall) as stick:
        argv = [*CORE_ARGV, "install", "-s", str(stick.path)]
        core = subprocess.Popen(
            [*argv, "-c", str(rig.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            while not stick.events() and core.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert stick.events(), f"the stall was never reached (exit {core.poll()})"
            with pytest.raises(subprocess.TimeoutExpired):
                core.wait(timeout=1.0)  # stalled, not failed
        finally:
            if core.poll() is None:
                os.killpg(core.pid, signal.SIGKILL)  # what the agent does on its timeout
        assert core.wait(timeout=10) == -signal.SIGKILL
    after = rig.snapshot()
    store = rig.root / "sota" / "reset-apps" / "blobs" / "sha256"
    inflight = rig.state_dir / "installing.json"  # what a killed install ran before (by design)
    for name in set(after["files"]) - set(before["files"]) - {str(inflight)}:
        path = Path(name)
        assert path.parent == store, f"a killed install left {name}"
        if not path.name.startswith(".tmp-"):  # a complete blob is content-addressed
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
    for key in ("deployments", "images", "containers"):
        assert after[key] == before[key]
    kept = {
        k: v for k, v in after["files"].items() if Path(k).parent != store and k != str(inflight)
    }
    assert kept == {k: v for k, v in before["files"].items() if Path(k).parent != store}
    converges(rig, kit)
    assert not inflight.exists(), "the in-flight record outlived the install that converged"
    leftovers = [p.name for p in store.iterdir() if p.name.startswith(".tmp-")]
    assert not leftovers, f"the partial copy of the killed install is still there: {leftovers}"


def test_stall_in_the_pull_the_killed_core_takes_ostree_with_it(
    rig: Rig, kit: Kit, tmp_path: Path
) -> None:
    """The agent stops a core that overran its time with a signal to the core alone; the ostree
    pull it started, blocked on the same stick, must not outlive it (spec: children die with
    their parent)."""
    on_v1(rig, kit)
    before = rig.snapshot()
    repo = rig.device.sysroot / "ostree" / "repo"
    left: list[int] = []
    with FaultStick(kit.b2, tmp_path / "stick", stall=(kit.filez(), 4096, 3600.0)) as stick:
        argv = [*CORE_ARGV, "install", "-s", str(stick.path)]
        core = subprocess.Popen(
            [*argv, "-c", str(rig.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            assert stick.wait_for("stall"), "the pull never reached the stall"
            assert pull_running(repo), "no ostree pull is running"
            core.terminate()  # what the agent's updater_timeout does
            assert core.wait(timeout=10) == -signal.SIGTERM
            deadline = time.monotonic() + 5
            while (left := pull_running(repo)) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            if core.poll() is None:
                os.killpg(core.pid, signal.SIGKILL)
            for pid in pull_running(repo):  # an orphan of this test's own core
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert not left, f"ostree pull-local {left} outlived the killed core"
    after = rig.snapshot()
    for key in ("deployments", "images", "containers"):
        assert after[key] == before[key]
    converges(rig, kit)
