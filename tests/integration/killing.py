"""SIGKILL the whole `usbupdater` process group at a chosen point, and prove nothing survived.

The CLI starts in its own session (so its process group is its own and holds every child it
started: `ostree`, `docker-compose`), and the whole group gets SIGKILL, as systemd's
`KillMode=control-group` or a power cut does. A point is one of:
- `phase`: right after the CLI reports that progress phase (JSON lines on its stderr; the kill is
  sent from the thread that reads them, so the CLI has gone on by microseconds, not a step);
- `child`: while a child of the group whose command line holds that text runs (for example the
  `ostree pull-local` of the rootfs, or `docker-compose up`);
- `when`: as soon as a condition on the device holds (polled every few milliseconds), for
  example "an app blob is being copied into the store" or "ostree swapped the boot entries".
The CLI must still be running when the kill lands (exit status -SIGKILL), else the point was
missed and the test says so instead of passing on a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from tests.integration.rig import Rig
from usbupdater.sim.factory import PublishedTarget

DEADLINE = 120.0  # a point not reached by then is a failure, not a hang
POLL = 0.002


@dataclass(frozen=True)
class Point:
    """Where to kill: after a progress `phase`, during a `child` command, or `when` a condition
    on the device holds; `name` says which in test ids and messages."""

    name: str
    phase: str = ""
    child: str = ""
    when: Optional[Callable[[Rig], bool]] = None

    def __str__(self) -> str:
        return self.name


def after(phase: str) -> Point:
    return Point(phase, phase=phase)


def during(child: str) -> Point:
    return Point(f"during-{child.replace(' ', '-')}", child=child)


@dataclass
class Killed:
    """What the killed CLI had done: the phases it reported and how it ended."""

    point: Point
    phases: list[str] = field(default_factory=list)
    returncode: Optional[int] = None
    stderr: list[str] = field(default_factory=list)


def _proc_stat(pid: str) -> Optional[tuple[str, int]]:
    """(state, process group) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def _cmdline(pid: str) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def live_processes() -> list[str]:
    """Pids of every process that is not a zombie (a zombie holds nothing but its pid)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(entry)
            if st is not None and st[0] != "Z":
                out.append(entry)
    return out


def group_members(pgid: int) -> list[str]:
    """Live processes of a process group, each as "pid cmdline"."""
    found = []
    for pid in live_processes():
        st = _proc_stat(pid)
        if st is not None and st[1] == pgid:
            found.append(f"{pid} {_cmdline(pid)}")
    return found


def naming(text: str) -> list[str]:
    """Live processes (other than this one) whose command line holds `text`."""
    me = str(os.getpid())
    return [f"{pid} {c}" for pid in live_processes() if pid != me and text in (c := _cmdline(pid))]


def wait_gone(pgid: int, root: Path, timeout: float = 10.0) -> None:
    """Assert that the killed group is empty and no process names the device's directory."""
    deadline = time.monotonic() + timeout
    while True:
        left = group_members(pgid) + naming(str(root))
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not left, f"processes survived the kill of group {pgid}: {left}"


def _child_running(pgid: int, text: str) -> bool:
    return any(text in m.split(" ", 1)[1] for m in group_members(pgid) if " " in m)


def blob_copying(rig: Rig) -> bool:
    """An app blob is half copied into the store: a `.tmp-` file there is past 1 MiB."""
    blobs = rig.root / "sota" / "reset-apps" / "blobs" / "sha256"
    try:
        tmps = list(blobs.glob(".tmp-*"))
    except OSError:
        return False
    for p in tmps:
        try:
            if p.stat().st_size > (1 << 20):
                return True
        except FileNotFoundError:
            continue
    return False


def kill_at(rig: Rig, args: list[str], point: Point) -> Killed:
    """Run `usbupdater ARGS -c CONFIG` and SIGKILL its whole process group at `point`."""
    cmd = [sys.executable, "-m", "usbupdater", *args, "-c", str(rig.config)]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own group: the kill reaches every child it starts
    )
    pgid = proc.pid
    rig.killed.append(proc.pid)
    result = Killed(point)
    fired = threading.Event()

    def kill() -> None:
        if not fired.is_set():
            fired.set()
            with contextlib.suppress(ProcessLookupError):  # gone: the exit status says so
                os.killpg(pgid, signal.SIGKILL)

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            result.stderr.append(line)
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") != "progress":
                continue
            result.phases.append(str(record.get("phase")))
            if point.phase and record.get("phase") == point.phase:
                kill()  # from this thread: no hand-over delay between the report and the kill

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + DEADLINE
        while not fired.is_set() and proc.poll() is None and time.monotonic() < deadline:
            if (point.child and _child_running(pgid, point.child)) or (
                point.when is not None and point.when(rig)
            ):
                kill()
                break
            time.sleep(POLL if not point.phase else 0.05)
    finally:
        if not fired.is_set():
            with contextlib.suppress(ProcessLookupError):  # never leave it running
                os.killpg(pgid, signal.SIGKILL)
        result.returncode = proc.wait(timeout=30)
        reader.join(timeout=30)
        wait_gone(pgid, rig.root)
    if not (fired.is_set() and result.returncode == -signal.SIGKILL):
        # Not an assertion: a missed point is a broken test, never an "expected failure".
        pytest.fail(
            f"kill point {point} was not reached while the CLI ran: it ended with "
            f"{result.returncode} after phases {result.phases}; stderr tail: {result.stderr[-3:]}"
        )
    return result


def boot_entries_swapped(rig: Rig) -> Point:
    """A point right after `ostree admin deploy` made the new deployment the next boot: ostree
    swaps the `boot/loader` symlink (loader.0 <-> loader.1) as its own commit point."""
    link = rig.device.sysroot / "boot" / "loader"
    before = os.readlink(link)

    def swapped(_: Rig) -> bool:
        try:
            return os.readlink(link) != before
        except OSError:
            return False

    return Point("deployed", when=swapped)


def apps_stored(target: PublishedTarget) -> Point:
    """A point right after the app store recorded every app of `target` (each app's record is
    the last file written for it), before install's commit point."""

    def stored(rig: Rig) -> bool:
        apps = rig.root / "sota" / "reset-apps" / "apps"
        return all(
            (apps / name / w.manifest_digest.split(":")[1] / "usbupdater-app.json").exists()
            for name, w in target.apps.items()
        )

    return Point("apps-stored", when=stored)
