"""The terminal's view of progress: a bar for a person at a TTY, the log otherwise.

Why a sink of its own: `install`, `run` and `check` count the bytes they really read
(`progress.count`); at a terminal a person wants to see phase, bytes done/total, rate and time
left on one line that updates in place, not a stream of JSON. When stderr is not a terminal (the
agent, a pipe, journald) or `--quiet` is given, nothing changes: progress stays a log record.
Log lines printed while the bar is shown go above it (the bar clears its line, the log line is
written, the bar is drawn again), so neither garbles the other.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable, Optional, TextIO

from usbupdater import log, progress
from usbupdater.progress import Progress
from usbupdater.textsafe import safe_text

CLEAR = "\r\x1b[K"
BAR_CELLS = 24


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover (the loop returns)


def human_duration(seconds: float) -> str:
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_line(p: Progress, rate: Optional[float], width: int, cells: int = BAR_CELLS) -> str:
    """One bar line: phase, bar, percent, bytes done/total, rate, ETA, message (cut to width)."""
    parts = [p.phase or "working"]
    pct = p.percent
    if pct is not None and p.done_bytes is not None and p.total_bytes:
        filled = int(cells * pct / 100)
        parts.append("[" + "#" * filled + "." * (cells - filled) + "]")
        parts.append(f"{pct:5.1f} %")
        if p.total_bytes > 1:  # 1/1 is "all done" from a command that counted nothing
            parts.append(f"{human_bytes(p.done_bytes)} / {human_bytes(p.total_bytes)}")
            if rate and rate > 0:
                parts.append(f"{human_bytes(rate)}/s")
                if pct < 100:
                    parts.append(f"ETA {human_duration((p.total_bytes - p.done_bytes) / rate)}")
    if p.message:
        parts.append(p.message)
    line = safe_text("  ".join(parts), 1000)
    return line[: max(10, width - 1)]


class Bar:
    """A `progress` sink drawing one line in place on a terminal; one line kept per phase."""

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.clock = clock
        self._lock = threading.RLock()
        self._line = ""  # what is drawn now ("" when nothing is)
        self._phase: Optional[str] = None
        self._start: Optional[tuple[float, int]] = None  # (time, bytes) when counting began

    def width(self) -> int:
        try:
            return os.get_terminal_size(self.out.fileno()).columns or 80
        except (OSError, ValueError, AttributeError):
            return 80

    def rate(self, p: Progress) -> Optional[float]:
        """Bytes per second since the first counted byte of this command."""
        if p.done_bytes is None:
            return None
        now = self.clock()
        if self._start is None:
            self._start = (now, p.done_bytes)
            return None
        t0, b0 = self._start
        return (p.done_bytes - b0) / (now - t0) if now - t0 > 0.2 else None

    def __call__(self, p: Progress) -> None:
        with self._lock:
            line = format_line(p, self.rate(p), self.width())
            if self._phase is not None and p.phase != self._phase and self._line:
                self._write("\n")  # keep the finished phase's last line on screen
                self._line = ""
            self._phase = p.phase
            self._line = line
            self._write(CLEAR + line)
            if p.phase == "done":
                self._write("\n")
                self._line = ""

    def log_line(self, text: str) -> None:
        """A log line goes above the bar, which is drawn again below it."""
        with self._lock:
            self._write(CLEAR + text + ("\n" if not text.endswith("\n") else ""))
            if self._line:
                self._write(self._line)

    def close(self) -> None:
        with self._lock:
            if self._line:
                self._write("\n")
                self._line = ""

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            pass


class _LogStream:
    """What the logger prints to while a bar is shown: whole lines, handed to the bar."""

    def __init__(self, bar: Bar) -> None:
        self.bar = bar
        self._buf = ""

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self.bar.log_line(line)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def run_metered(call: Callable[[], int], *, bar: bool, log_level: int) -> int:
    """Run a command under one meter; at a terminal (and `bar`) show it as a bar on stderr.

    A command that ended with its work complete and did not say so itself (`check`) finishes
    the meter, so the last record is 100 %.
    """
    shown = Bar(sys.stderr) if bar and sys.stderr.isatty() else None
    if shown is not None:
        progress.set_sink(shown)
        log.configure(log_level, stream=_LogStream(shown), json_lines=False)  # type: ignore[arg-type]
    meter = progress.Meter()
    try:
        with progress.metering(meter):
            code = call()
        if code in progress.COMPLETE_CODES and not meter.finished:
            meter.finish("done", "")
        return code
    finally:
        if shown is not None:
            shown.close()
            progress.set_sink(None)
            log.configure(log_level)
