"""Progress: one typed record, counted from the real reads, sent to one sink.

Why a module of its own: the bytes are counted deep inside read loops (app blobs verified and
copied, the rootfs pulled) while the record is shown far away (a JSON log line the agent turns
into `status.json` `percent`, or a bar at a terminal). The read loops call `count(n)`; the
command that owns the work opens a `Meter` with `metering(...)`; the sink decides how to show
it. Nothing here does I/O except the default sink, which logs the record.

A meter's `done_bytes` never goes down, and its total only grows (a phase may learn more work),
so `percent` is capped at 100 and consumers keep the largest value they saw.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Optional

from usbupdater import log

logger = log.get_logger("progress")

# Exit codes of a command whose work is all done (100 %), even when a reboot must follow.
COMPLETE_CODES = (0, 16, 100, 101)
EMIT_INTERVAL = 0.5  # seconds between two byte records of one meter (phase changes always go)


@dataclass(frozen=True)
class Progress:
    """What is happening now and, when bytes are counted, how far along it is."""

    phase: str
    message: str
    done_bytes: Optional[int] = None
    total_bytes: Optional[int] = None

    @property
    def percent(self) -> Optional[float]:
        if self.done_bytes is None or not self.total_bytes:
            return None
        return round(min(100.0, 100.0 * self.done_bytes / self.total_bytes), 1)

    def fields(self) -> dict[str, object]:
        """The record's fields as logged (the agent reads them back, `backend.parse_progress`)."""
        return {
            "phase": self.phase,
            "message": self.message,
            "done_bytes": self.done_bytes,
            "total_bytes": self.total_bytes,
            "percent": self.percent,
        }


Sink = Callable[[Progress], None]


def log_sink(p: Progress) -> None:
    """The default: one JSON (or console) log record `progress` per update."""
    logger.info("progress", **p.fields())


_sink: Sink = log_sink


def set_sink(sink: Optional[Sink]) -> None:
    """Where records go for the rest of the process (None: back to the log)."""
    global _sink
    _sink = sink if sink is not None else log_sink


def emit(p: Progress) -> None:
    """Send one record as it is (the command's last word, say)."""
    _sink(p)


def done(message: str, complete: bool) -> None:
    """A command's last word: 100 % when its work completed (even if a reboot must follow)."""
    meter = _active.get()
    if meter is not None:
        if complete:
            meter.finish("done", message)
        else:
            meter.phase("done", message)
    else:
        _sink(Progress("done", message, 1 if complete else None, 1 if complete else None))


def announce(phase: str, message: str) -> None:
    """A phase with no byte count (or the start of one): goes out at once."""
    meter = _active.get()
    if meter is not None:
        meter.phase(phase, message)
    else:
        _sink(Progress(phase, message))


class Meter:
    """Counts the bytes of one command's work against a (growing) total; thread-safe."""

    def __init__(
        self,
        total_bytes: int = 0,
        *,
        sink: Optional[Sink] = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = EMIT_INTERVAL,
    ) -> None:
        self._lock = threading.Lock()
        self._sink = sink
        self._clock = clock
        self._interval = interval
        self._last = float("-inf")
        self.total_bytes = max(0, total_bytes)
        self.done_bytes = 0
        self._reserved: dict[str, int] = {}  # in the total already, by the step that will claim it
        self._phase = ""
        self._message = ""
        self.finished = False

    def _record(self) -> Progress:
        total = self.total_bytes if self.total_bytes > 0 else None
        return Progress(self._phase, self._message, self.done_bytes, total)

    def _send(self, p: Progress) -> None:
        (self._sink or _sink)(p)

    def add_total(self, n: int, claim: str = "") -> None:
        """More work became known (never less); taken first from what `claim` reserved."""
        if n > 0:
            with self._lock:
                taken = min(n, self._reserved.get(claim, 0))
                self._reserved[claim] = self._reserved.get(claim, 0) - taken
                self.total_bytes += n - taken

    def reserve(self, n: int, claim: str) -> None:
        """Work a later step will announce with `add_total(..., claim)` but whose size is known
        roughly now (an upper bound): in the total at once, so the percent does not fall when
        that step starts after others have progressed."""
        if n > 0:
            with self._lock:
                self.total_bytes += n
                self._reserved[claim] = self._reserved.get(claim, 0) + n

    def phase(self, phase: str, message: str) -> None:
        with self._lock:
            self._phase, self._message = phase, message
            self._last = self._clock()
            p = self._record()
        self._send(p)

    def add(self, n: int) -> None:
        if n <= 0:
            return
        with self._lock:
            self.done_bytes += n
            if self.total_bytes and self.done_bytes > self.total_bytes:
                self.total_bytes = self.done_bytes
            now = self._clock()
            if now - self._last < self._interval:
                return
            self._last = now
            p = self._record()
        self._send(p)

    def finish(self, phase: Optional[str] = None, message: Optional[str] = None) -> None:
        """The last record: whatever was counted is all there was (100 %)."""
        with self._lock:
            self.total_bytes = self.done_bytes  # what was expected but not read was not needed
            if phase is not None:
                self._phase = phase
            if message is not None:
                self._message = message
            self.finished = True
            p = self._record()
            if p.total_bytes is None:  # nothing was counted: the work is still all done
                p = Progress(p.phase, p.message, 1, 1)
        self._send(p)


_active: ContextVar[Optional[Meter]] = ContextVar("usbupdater_meter", default=None)


@contextlib.contextmanager
def metering(meter: Meter) -> Iterator[Meter]:
    """Make `meter` the one `count`/`announce` feed while the block runs (in this context)."""
    token = _active.set(meter)
    try:
        yield meter
    finally:
        _active.reset(token)


def active() -> Optional[Meter]:
    """The meter of the running command, for work started in another thread."""
    return _active.get()


def count(n: int) -> None:
    """Bytes really read; no-op when no command is metering."""
    meter = _active.get()
    if meter is not None:
        meter.add(n)


APPS = "apps"  # the claim of the app blobs' bytes (sized from the stick before it is read)


def reserve(n: int, claim: str) -> None:
    """An upper bound of bytes later steps will `expect` with `claim`, in the total now."""
    meter = _active.get()
    if meter is not None:
        meter.reserve(n, claim)


def expect(n: int, claim: str = "") -> None:
    """Bytes a step is about to read, added to the running meter's total."""
    meter = _active.get()
    if meter is not None:
        meter.add_total(n, claim)
