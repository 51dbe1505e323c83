"""Driving the updater core as a subprocess: install, run, current, and their exit codes.

The agent knows the core only through its command line (spec section 4), so the same agent
drives our `usbupdater` or Foundries' `aklite-offline`. The core's stderr is passed on to the
agent's own stderr (the journal) line by line, each with its syslog priority when that is
journald's stream, and read on the way: JSON progress records (`{"event": "progress", "phase",
"done_bytes", "total_bytes", "percent", "message"}`) feed the status file, error records and the
last `usbupdater: ` line become the reason shown to people. Nothing here depends on those records
being present.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Callable, Optional

from usbupdater import log, proc, timefmt
from usbupdater.agent import dialect as dialects
from usbupdater.agent.settings import AgentSettings

REASON_PREFIXES = ("usbupdater: ", "aklite-offline: ")
TAIL_LINES = 20
MAX_LINE = 8192  # a longer stderr line is read in pieces, never held whole
PROBE_OUTPUT = 16 << 10  # of `--version`/`--help` output read to learn the dialect
MAX_STDOUT = 1 << 20  # of the core's stdout (`current` prints a few lines); the rest is dropped


@dataclass(frozen=True)
class Progress:
    phase: str
    percent: Optional[float]
    message: str
    done_bytes: Optional[int] = None
    total_bytes: Optional[int] = None


@dataclass(frozen=True)
class Outcome:
    """One call of the updater. `code` is None when it could not run or timed out."""

    command: str
    code: Optional[int]
    reason: str = ""
    errors: tuple[str, ...] = ()
    tail: tuple[str, ...] = ()
    started: float = 0.0
    seconds: float = 0.0
    stdout: str = field(default="", repr=False)
    dialect: str = dialects.USBUPDATER

    @property
    def meaning(self) -> dialects.Meaning:
        return dialects.interpret(self.dialect, self.command, self.code)

    def to_json(self) -> dict[str, object]:
        return {
            "command": self.command,
            "code": self.code,
            "dialect": self.dialect,
            "meaning": self.meaning.text,
            "reason": self.reason,
            "errors": list(self.errors),
            "time": timefmt.stamp(self.started),
            "seconds": round(self.seconds, 3),
        }


def _number(value: object) -> Optional[float]:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    return float(value) if ok and value >= 0 else None  # type: ignore[operator,arg-type]


def parse_progress(record: dict[str, object]) -> Optional[Progress]:
    """The core's `progress` record (`usbupdater.progress.Progress.fields`); the percent is
    taken from the byte counts when the record carries them, else from `percent`."""
    if record.get("event") != "progress":
        return None
    done, total = _number(record.get("done_bytes")), _number(record.get("total_bytes"))
    percent = _number(record.get("percent"))
    if done is not None and total:
        percent = 100.0 * done / total
    if percent is not None:
        percent = round(min(100.0, percent), 1)
    return Progress(
        str(record.get("phase") or ""),
        percent,
        str(record.get("message") or ""),
        None if done is None else int(done),
        None if total is None else int(total),
    )


def error_text(record: dict[str, object]) -> Optional[str]:
    if str(record.get("level", "")).lower() not in ("error", "critical", "fatal"):
        return None
    extra = record.get("error") or record.get("reason") or ""
    text = str(record.get("event", ""))
    return f"{text}: {extra}" if extra else text


class LineReader:
    """Digests the core's stderr lines: progress, errors, reason, a short tail."""

    def __init__(self, on_progress: Callable[[Progress], None]) -> None:
        self.on_progress = on_progress
        self.reason = ""
        self.errors: list[str] = []
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)

    def feed(self, line: str) -> None:
        _, line = log.split_priority(line.rstrip("\n"))
        if not line.strip():
            return
        self.tail.append(line[:500])
        for prefix in REASON_PREFIXES:
            if line.startswith(prefix):
                self.reason = line[len(prefix) :].strip()
                return
        if not line.startswith("{"):
            return
        try:
            record = json.loads(line)
        except ValueError:
            return
        if not isinstance(record, dict):
            return
        progress = parse_progress(record)
        if progress is not None:
            self.on_progress(progress)
            return
        err = error_text(record)
        if err and len(self.errors) < 20:
            self.errors.append(err[:500])


class Updater:
    """Calls `<updater_command> SUBCOMMAND ... -c PATH...` and reports how it ended."""

    def __init__(self, s: AgentSettings, echo: Optional[IO[str]] = None) -> None:
        self.s = s
        # `auto` stays unresolved until `resolve_dialect` (the service's start): the binary may
        # have changed with the OS update that the reboot brought in.
        self.dialect = s.updater_dialect if s.updater_dialect != dialects.AUTO else ""
        self.echo = echo if echo is not None else sys.stderr
        self._log = log.get_logger("backend")

    def call(
        self,
        args: Sequence[str],
        on_progress: Callable[[Progress], None] = lambda p: None,
        timeout: Optional[float] = None,
    ) -> Outcome:
        argv = self.s.updater_args(*args)
        name = args[0] if args else ""
        started = time.time()
        t0 = time.monotonic()
        reader = LineReader(on_progress)
        self._log.info("calling the updater", argv=argv)
        try:
            child = proc.spawn(argv, text=True, what=os.path.basename(argv[0]))
        except proc.CommandError as exc:
            return Outcome(
                name,
                None,
                f"cannot start the updater: {exc.reason}",
                started=started,
                dialect=self.dialect_now(),
            )
        limit = timeout if timeout is not None else self.s.updater_timeout
        out = _BoundedReader(child.stdout)
        out.start()
        guard = _Deadline(child, limit)
        code: Optional[int] = None
        err = child.stderr
        assert err is not None
        try:
            for line in iter(lambda: err.readline(MAX_LINE), ""):
                self._echo(line)
                reader.feed(line)
            guard.wait_exit()  # stderr closed: the exit, until the deadline (left unreaped)
        finally:  # also on an exception here (the agent's SIGTERM): the whole group goes
            guard.finish()  # reap, and kill what it left in its group
            guard.cancel()
            out.join(timeout=proc.KILL_GRACE)
        code = child.returncode
        expired = guard.expired
        if expired:
            reader.reason = f"{name} did not finish within {limit:.0f} s and was stopped"
            code = None
        elif code is not None and code < 0:
            reader.reason = reader.reason or f"{name} was killed by signal {-code}"
            code = None
        outcome = Outcome(
            name,
            code,
            reader.reason,
            tuple(reader.errors),
            tuple(reader.tail),
            started,
            time.monotonic() - t0,
            out.text(),
            self.dialect_now(),
        )
        self._log.info("updater finished", command=name, code=code, reason=outcome.reason)
        return outcome

    def _echo(self, line: str) -> None:
        if log.journal():  # the core's line keeps its level in the agent's journal
            line = f"<{line_priority(line)}>{log.split_priority(line)[1]}"
        try:
            self.echo.write(line if line.endswith("\n") else line + "\n")
            self.echo.flush()
        except (OSError, ValueError):
            pass

    def dialect_now(self) -> str:
        return self.dialect or self.resolve_dialect()

    def resolve_dialect(self) -> str:
        """The configured dialect; for `auto`, what the binary's `--version` and usage texts
        say (dialect.detect), asked once per service start."""
        if self.dialect:
            return self.dialect
        texts = []
        for args in (["--version"], ["--help"], ["install", "--help"]):
            argv = [*self.s.updater_command, *args]
            try:
                done = proc.run(
                    argv,
                    os.path.basename(argv[0]),
                    self.s.command_timeout,
                    check=False,
                    max_output=PROBE_OUTPUT,
                )
                texts.append(done.stdout + "\n" + done.stderr)
            except proc.CommandError as exc:
                self._log.warning("cannot ask the updater who it is", error=exc.reason)
                texts.append("")
        self.dialect, why = dialects.detect(texts[0], texts[1], texts[2])
        self._log.info("updater dialect", dialect=self.dialect, reason=why)
        return self.dialect

    def current(self) -> Optional[str]:
        """The target the device runs, from `current` ("Target: NAME"), or None. aklite-offline's
        `current` returns 1 even when it printed the target: the dialect says whether the exit
        code or only the output counts."""
        outcome = self.call(["current"], timeout=self.s.command_timeout)
        if outcome.meaning.action != dialects.READ_OUTPUT:
            return None
        return parse_current(outcome.stdout)


def line_priority(line: str) -> int:
    """The syslog priority of one of the core's stderr lines: its own prefix, else its JSON
    record's level; the one-line failure reason (`usbupdater: ...`) is an error."""
    given, text = log.split_priority(line)
    if given is not None:
        return given
    if text.startswith(REASON_PREFIXES):
        return log.PRIORITIES["error"]
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if isinstance(record, dict):
            return log.priority(record.get("level", "info"))
    return log.PRIORITIES["info"]


def parse_current(text: str) -> Optional[str]:
    m = re.search(r"^\s*Target:\s*(\S+)", text, re.MULTILINE)
    if not m or m.group(1).lower() in ("none", "none:", "unknown"):
        return None
    return m.group(1)


class _BoundedReader(threading.Thread):
    """Drains a pipe to its end, keeping only the first MAX_STDOUT characters."""

    def __init__(self, pipe: Optional[IO[str]]) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.parts: list[str] = []
        self.size = 0

    def run(self) -> None:
        if self.pipe is None:
            return
        for chunk in iter(lambda: self.pipe.read(65536), ""):  # type: ignore[union-attr]
            if self.size < MAX_STDOUT:
                self.parts.append(chunk[: MAX_STDOUT - self.size])
                self.size += len(self.parts[-1])

    def text(self) -> str:
        return "".join(self.parts)


class _Deadline:
    """The updater's time limit: SIGTERM to its group, SIGKILL after a grace.

    Only the calling thread reaps the child (in `finish`), after the last signal: its pid names
    the group, so it must not be reused while a signal can still be sent to it.
    """

    def __init__(self, child: subprocess.Popen[str], limit: float) -> None:
        self.child = child
        self.end = time.monotonic() + limit if limit > 0 else None
        self.expired = False
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(limit, self._expire) if limit > 0 else None
        if self._timer:
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            proc.signal_group(self.child.pid, signal.SIGTERM)
        time.sleep(proc.KILL_GRACE)
        with self._lock:
            if not self._done:
                proc.signal_group(self.child.pid, signal.SIGKILL)

    def wait_exit(self) -> None:
        left = None if self.end is None else max(self.end - time.monotonic(), 0.0)
        if not proc.wait_unreaped(self.child.pid, left):
            self.expired = True

    def finish(self) -> None:
        with self._lock:
            self._done = True
            proc.kill_group(self.child)

    def cancel(self) -> None:
        if self._timer:
            self._timer.cancel()
