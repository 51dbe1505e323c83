"""Fixtures for the agent: a private udevd, ext4 "sticks" on loop devices, the service process.

Everything started here is stopped by its PID and everything attached or mounted is undone in
finalizers, also when a test fails: udevd (only if we started it), loop devices we attached,
mounts under the test's directories, the service's process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from usbupdater.sim.sticks import Sticks
from usbupdater.sim.udevd import UDEVD, Udevd

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def udevd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A udevd for the session (reused, never stopped, if one already runs)."""
    if os.geteuid() != 0 or not UDEVD.exists() or not shutil.which("losetup"):
        pytest.fail("needs root, systemd-udevd and losetup")
    with Udevd(tmp_path_factory.mktemp("udevd") / "udevd.log"):
        yield


@pytest.fixture
def sticks(tmp_path: Path, udevd: None) -> Iterator[Sticks]:
    s = Sticks(tmp_path)
    try:
        yield s
    finally:
        s.cleanup()


def wait_for(pred: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Agent:
    """`python -m usbupdater watch -c CFG` in a process group of its own."""

    def __init__(self, cfg: Path | list[Path], status: Path, log: Path) -> None:
        self.cfgs = cfg if isinstance(cfg, list) else [cfg]
        self.status_file = status
        self.log = log
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "usbupdater", "watch"]
                + [a for c in self.cfgs for a in ("-c", str(c))],
                stdout=fh,
                stderr=fh,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def status(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.status_file.read_text())
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}

    def wait_status(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 60, what: str = "status"
    ) -> dict[str, Any]:
        def check() -> Optional[dict[str, Any]]:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {self.tail()}")
            st = self.status()
            return st if st and pred(st) else None

        try:
            return wait_for(check, timeout, what)  # type: ignore[no-any-return]
        except AssertionError as exc:
            raise AssertionError(f"{exc}; status={self.status()}; log:\n{self.tail()}") from None

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 20) -> Optional[int]:
        """SIGTERM (a service stop), then SIGKILL to the whole group if it lingers."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait()
        self._reap_group()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the service and its children at once (a crash or a power cut)."""
        if self.proc is not None:
            self.signal(signal.SIGKILL)
            self.proc.wait()
            self._reap_group()

    def _reap_group(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def stateful_aklite(root: Path) -> Path:
    """A stand-in for `systemctl is-active/stop/start aktualizr-lite`: records each call in
    events.log and keeps "running" as a file (`aklite.running`) a test can create to play a boot
    that started aktualizr-lite."""
    events = root / "events.log"
    state = root / "aklite.running"
    return write_script(
        root / "aklite.sh",
        f'echo "aklite-$1" >> {events}\n'
        'case "$1" in\n'
        f"  active) test -e {state} ;;\n"
        f"  stop) rm -f {state} ;;\n"
        f"  start) touch {state} ;;\n"
        "  *) exit 2 ;;\n"
        "esac\n",
    )


def agent_settings_toml(
    root: Path, sticks: Sticks, runtime: Path, extra: str = "", *, aklite: Optional[Path] = None
) -> str:
    """The `[usbupdater]` keys a test agent needs: loop devices, private dirs, recording hooks
    (`aklite`: a `stateful_aklite` script instead of the one that always says "running")."""
    events = root / "events.log"
    rec = write_script(root / "record.sh", f'echo "$@" >> {events}\n')
    ak = f"{aklite}" if aklite is not None else f"{rec} aklite"
    return (
        'match_buses = ""\n'
        f'match_properties = "ID_FS_LABEL={sticks.prefix}*"\n'
        "settle_time = 0.2\n"
        f'runtime_dir = "{runtime}"\n'
        f'media_dir = "{root / "media"}"\n'
        f'status_file = "{runtime / "status.json"}"\n'
        f'console = "{root / "console.log"}"\n'
        f'notify_command = "{rec} notify"\n'
        f'aklite_active_command = "{ak}{" " if aklite else "-"}active"\n'
        f'aklite_stop_command = "{ak}{" " if aklite else "-"}stop"\n'
        f'aklite_start_command = "{ak}{" " if aklite else "-"}start"\n'
        f'engine_restart_command = "{rec} engine-restart"\n'
        "command_timeout = 20\n" + extra
    )


def recorded(root: Path) -> list[str]:
    try:
        return (root / "events.log").read_text().splitlines()
    except FileNotFoundError:
        return []


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    d = tmp_path / "agent"
    d.mkdir()
    return d


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    """Every Agent a test registers here is stopped at the end."""
    started: list[Agent] = []
    try:
        yield started
    finally:
        for a in started:
            a.stop(timeout=10)
