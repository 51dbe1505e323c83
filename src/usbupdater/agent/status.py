"""Feedback for people: the status file, the notify hook, the console line, systemd's STATUS.

`status.json` is rewritten atomically on every change, so a kiosk display or a shell loop can
read it at any time. Its `percent` comes from the bytes the core really read (`done_bytes` of
`total_bytes`) and never goes down within a phase: records may arrive late, a display must not
jump back. The notify command runs on each phase change and on each 10 % of a long step (a
kiosk shows the bar, an LED can ignore it), synchronously and with a short timeout, so its calls
arrive in order; its failure never stops an update. The console gets a line on each phase change
and at most one a second in between: enough for a technician at a serial console, not a flood.

Messages and fields may carry stick-controlled names (folder, target, label) and the core's
reason: every string is passed through `textsafe.safe_text` when it enters the board, so the
status file, the notify hook, the console and sd_notify only ever see one escaped line.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from usbupdater import log, proc, timefmt
from usbupdater.agent.settings import AgentSettings
from usbupdater.fsutil import atomic_write
from usbupdater.textsafe import clean, safe_text

NOTIFY_TIMEOUT = 10.0
CONSOLE_INTERVAL = 1.0  # seconds between two console lines of one phase
MAX_MESSAGE = 300  # characters of a status message (after escaping)
MAX_FIELD = 200  # characters of any other string field
# O_CREAT: the console may be a log file; /dev/console always exists.
_CONSOLE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOCTTY | os.O_NONBLOCK
_CONSOLE_FLAGS |= os.O_CLOEXEC
# Phases: what the agent is doing now. `result` says how a finished job ended.
PHASES = (
    "starting",
    "idle",
    "mounting",
    "installing",
    "restarting-engine",
    "finishing",
    "rebooting",
    "reporting",
    "safe-to-remove",
)


def iso(ts: float) -> str:
    return timefmt.stamp(ts)


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about readiness or status; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    # One line per field: a newline in a stick's name must not start a forged assignment.
    message = "\n".join(safe_text(line, 400) for line in message.split("\n"))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode("utf-8", "replace"), addr)
    except OSError:
        pass


_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(method: _F) -> _F:
    """The dispatcher and the worker thread both write the board: one at a time."""

    @functools.wraps(method)
    def call(self: StatusBoard, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return call  # type: ignore[return-value]


class StatusBoard:
    """The one place that says what the agent is doing; every write is atomic. Safe to use from
    the dispatcher and the worker thread (one lock; `doc` is read through `snapshot`/`get`)."""

    def __init__(self, s: AgentSettings, clock: Callable[[], float] = time.time) -> None:
        self.s = s
        self.clock = clock
        self._log = log.get_logger("status")
        self.doc: dict[str, Any] = {}
        self._console_mark: tuple[str, float] = ("", float("-inf"))  # phase, time of the line
        self._notify_mark: tuple[str, int] = ("", -1)  # phase, decile of the last call
        self._lock = threading.RLock()

    @property
    def path(self) -> Path:
        return self.s.status_file

    @_locked
    def snapshot(self) -> dict[str, Any]:
        return dict(self.doc)

    @_locked
    def get(self, key: str) -> Any:
        return self.doc.get(key)

    @_locked
    def restore(self, doc: dict[str, Any]) -> None:
        """Put back what `snapshot` returned (written at the next `set`)."""
        self.doc = dict(doc)

    @_locked
    def remember(self, **fields: Any) -> None:
        """Keep fields for the next write, without a write of their own."""
        self.doc.update(clean(fields, MAX_FIELD))

    @_locked
    def set(self, phase: str, message: str = "", **fields: Any) -> None:
        """Move to `phase`; other keys (target, device, result, code, ...) are kept until reset."""
        previous = self.doc.get("phase")
        doc = dict(self.doc)
        doc.update(clean(fields, MAX_FIELD))
        doc.update(phase=phase, message=safe_text(message, MAX_MESSAGE), time=iso(self.clock()))
        doc.setdefault("percent", None)
        if phase != previous and "percent" not in fields:
            doc.update(percent=None, done_bytes=None, total_bytes=None)
        doc["safe_to_remove"] = phase in ("idle", "safe-to-remove")
        self.doc = doc
        self._write()
        if phase != previous:
            self._notify_mark = (phase, _decile(doc.get("percent")))
            self._notify()
            sd_notify(f"STATUS={phase}: {safe_text(doc['message'], 180)}")
        self._console()

    @_locked
    def progress(
        self,
        percent: Optional[float],
        message: str,
        step: str = "",
        done_bytes: Optional[int] = None,
        total_bytes: Optional[int] = None,
    ) -> None:
        """A progress record from the core, inside the current phase (percent: the largest)."""
        pct = _monotonic(self.doc.get("percent"), percent)
        self.doc.update(
            percent=pct,
            message=safe_text(message, MAX_MESSAGE) if message else self.doc.get("message", ""),
            step=safe_text(step, MAX_FIELD) if step else self.doc.get("step"),
            time=iso(self.clock()),
        )
        if done_bytes is not None and total_bytes:
            self.doc.update(done_bytes=int(done_bytes), total_bytes=int(total_bytes))
        self._write()
        mark = (str(self.doc.get("phase", "")), _decile(pct))
        if mark != self._notify_mark:
            self._notify_mark = mark
            self._notify()
        self._console()

    @_locked
    def reset(self, **fields: Any) -> None:
        """Forget the previous job's fields (target, device, result, ...)."""
        self.doc = {k: v for k, v in self.doc.items() if k in ("phase", "message")}
        self.doc.update(clean(fields, MAX_FIELD))

    def _write(self) -> None:
        data = json.dumps(self.doc, indent=1, sort_keys=True).encode() + b"\n"
        try:
            atomic_write(self.path, data)
        except OSError as exc:
            self._log.warning("cannot write the status file", path=str(self.path), error=str(exc))

    def _notify(self) -> None:
        if not self.s.notify_command:
            return
        d = self.doc
        env = dict(os.environ)
        env.update(
            USBUPDATER_PHASE=str(d.get("phase", "")),
            USBUPDATER_MESSAGE=str(d.get("message", "")),
            USBUPDATER_PERCENT="" if d.get("percent") is None else str(d["percent"]),
            USBUPDATER_DONE_BYTES="" if d.get("done_bytes") is None else str(d["done_bytes"]),
            USBUPDATER_TOTAL_BYTES="" if d.get("total_bytes") is None else str(d["total_bytes"]),
            USBUPDATER_STEP=str(d.get("step") or ""),
            USBUPDATER_TARGET=str(d.get("target") or ""),
            USBUPDATER_RESULT=str(d.get("result") or ""),
            USBUPDATER_CODE="" if d.get("code") is None else str(d["code"]),
            USBUPDATER_DEVICE=str(d.get("device") or ""),
            USBUPDATER_SAFE_TO_REMOVE="1" if d.get("safe_to_remove") else "0",
            USBUPDATER_STATUS_FILE=str(self.path),
        )
        argv = [*self.s.notify_command, env["USBUPDATER_PHASE"], env["USBUPDATER_MESSAGE"]]
        limit = min(NOTIFY_TIMEOUT, self.s.command_timeout)
        try:
            proc.run(argv, "notify command", limit, env=env, max_output=4096)
        except proc.CommandError as exc:  # its reason is fixed text, never the hook's stderr
            self._log.warning("notify command failed", error=exc.reason)

    def _console(self) -> None:
        if not self.s.console:
            return
        d = self.doc
        phase = str(d.get("phase", ""))
        pct = d.get("percent")
        now = self.clock()
        last_phase, last_time = self._console_mark
        if phase == last_phase and 0 <= now - last_time < CONSOLE_INTERVAL:
            return
        self._console_mark = (phase, now)
        shown = "" if pct is None else f" {pct:.0f}%"
        line = safe_text(f"usbupdater: {phase}{shown} {d.get('message', '')}".rstrip(), 400) + "\n"
        try:
            fd = os.open(self.s.console, _CONSOLE_FLAGS, 0o644)
        except OSError:
            return
        try:
            os.write(fd, line.encode("utf-8", "replace"))
        except OSError:
            pass
        finally:
            os.close(fd)


def _decile(percent: Optional[float]) -> int:
    return -1 if percent is None else int(percent // 10)


def _monotonic(previous: Any, percent: Optional[float]) -> Optional[float]:
    """The percent to show: within [0, 100], never below what was shown in this phase."""
    if percent is None:
        return previous if isinstance(previous, (int, float)) else None
    pct = round(max(0.0, min(100.0, percent)), 1)
    return max(pct, previous) if isinstance(previous, (int, float)) else pct
