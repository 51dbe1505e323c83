"""What the service's dispatcher queues (udev events, a finished job, STOP/RESCAN) and the job
the worker runs for one stick."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from usbupdater.agent.filter import Stick
from usbupdater.agent.watcher import UEvent


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


STOP = _Signal("STOP")
RESCAN = _Signal("RESCAN")


@dataclass(frozen=True)
class JobDone:
    hold: bool  # a reboot was requested: take no other stick in this boot


Item = Union[UEvent, JobDone, _Signal]


def natural(name: str) -> tuple[Any, ...]:
    """Sort key putting /dev/sdb2 before /dev/sdb10 (the order people expect)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


class Job:
    """One stick being handled by the worker; the dispatcher may tell it the stick left."""

    def __init__(self, stick: Stick) -> None:
        self.stick = stick
        self.mountpoint: Optional[Path] = None
        self.gone = threading.Event()
