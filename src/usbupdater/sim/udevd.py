"""A udevd for tests and the demo on machines whose PID 1 is not systemd.

`Udevd()` starts `systemd-udevd` unless one already answers `udevadm control --ping` (then it
is reused and left running); the one it started is stopped by its PID on exit.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Optional

UDEVD = Path("/lib/systemd/systemd-udevd")


class UdevdError(RuntimeError):
    pass


def alive() -> bool:
    ping = ["udevadm", "control", "--ping", "--timeout=1"]
    return subprocess.run(ping, capture_output=True, check=False).returncode == 0


class Udevd:
    def __init__(self, log: Optional[Path] = None) -> None:
        self.log = log
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        if alive():
            return
        if not UDEVD.exists():
            raise UdevdError(f"{UDEVD} is missing (Debian package udev)")
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [str(UDEVD)], stdout=out, stderr=out, start_new_session=True
            )
        finally:
            if self.log:
                out.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while not alive():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise UdevdError("udevd did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> Udevd:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()
