"""SIGKILL the whole `usbupdater` process group at a chosen point, and prove nothing survived.

The CLI starts in its own session, so its process group is its own, and the whole group gets
SIGKILL, as a service manager killing the main process's group does. The tools it starts
(`ostree`, `docker-compose`) run in sessions of their own with a parent-death signal
(`usbupdater.proc`), so the group kill reaches them only through that signal: every descendant
seen while the CLI ran (polled every few ms) must be gone afterwards, as must every process
whose command line names the device's directory. A point is one of:
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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from tests.integration.rig import Rig
from usbupdater.sim.factory import PublishedTarget
from usbupdater.sim.setup import CORE_ARGV

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


@dataclass(frozen=True)
class Proc:
    pid: int
    state: str
    ppid: int
    pgid: int
    start: int  # start time in clock ticks since boot: (pid, start) names one process

    def alive(self) -> bool:
        """Still running (a zombie holds nothing but its pid; a reused pid is another one)."""
        now = _stat(self.pid)
        return now is not None and now.start == self.start and now.state != "Z"


def _stat(pid: int) -> Optional[Proc]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = text[text.rindex(")") + 2 :].split()
    return Proc(pid, f[0], int(f[1]), int(f[2]), int(f[19]))


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def processes() -> list[Proc]:
    """Every process that is not a zombie."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            p = _stat(int(entry))
            if p is not None and p.state != "Z":
                out.append(p)
    return out


def descendants(root: int, procs: Optional[list[Proc]] = None) -> list[Proc]:
    """Children of `root`, their children, and so on (children in sessions of their own too:
    the updater starts every tool so, with a parent-death signal)."""
    procs = processes() if procs is None else procs
    by_parent: dict[int, list[Proc]] = {}
    for p in procs:
        by_parent.setdefault(p.ppid, []).append(p)
    found, todo = [], [root]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def _describe(procs: list[Proc]) -> list[str]:
    return [f"{p.pid} {_cmdline(p.pid)}" for p in procs]


def survivors(pgid: int, seen: dict[tuple[int, int], Proc], root: Path) -> list[str]:
    """What outlived the kill: members of the killed group, descendants seen while the CLI ran,
    and any process whose command line names the device's directory."""
    me = os.getpid()
    left = [p for p in processes() if p.pgid == pgid and p.pid != me]
    left += [p for p in seen.values() if p.alive() and p not in left]
    out = _describe(left)
    out += [
        f"{p.pid} {c}"
        for p in processes()
        if p.pid != me and p not in left and str(root) in (c := _cmdline(p.pid))
    ]
    return out


GRACE = 1.5  # seconds for SIGKILL and parent-death signals to land; far below any tool's work


def wait_gone(pgid: int, seen: dict[tuple[int, int], Proc], root: Path) -> None:
    """Assert that nothing the killed CLI started outlives it (the signals take a moment to
    land; the grace is short so that an orphan cannot pass by finishing its work)."""
    deadline = time.monotonic() + GRACE
    while True:
        left = survivors(pgid, seen, root)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not left, f"processes survived the kill of group {pgid}: {left}"


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
    cmd = [*CORE_ARGV, *args, "-c", str(rig.config)]
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
    seen: dict[tuple[int, int], Proc] = {}  # every descendant met while the CLI ran
    try:
        deadline = time.monotonic() + DEADLINE
        next_scan = 0.0
        while not fired.is_set() and proc.poll() is None and time.monotonic() < deadline:
            if point.when is not None and point.when(rig):  # cheap: checked first
                kill()
                break
            if point.child or time.monotonic() >= next_scan:
                kids = descendants(pgid)
                seen.update(((k.pid, k.start), k) for k in kids)
                next_scan = time.monotonic() + 0.02
                if point.child and any(point.child in _cmdline(k.pid) for k in kids):
                    kill()
                    break
            time.sleep(POLL if not point.phase else 0.01)
    finally:
        if not fired.is_set():
            with contextlib.suppress(ProcessLookupError):  # never leave it running
                os.killpg(pgid, signal.SIGKILL)
        result.returncode = proc.wait(timeout=30)
        reader.join(timeout=30)
        wait_gone(pgid, seen, rig.root)
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
