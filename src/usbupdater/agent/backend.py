"""Driving the updater core as a subprocess: install, run, current, and their exit codes.

The agent knows the core only through its command line (spec section 4), so the same agent
drives our `usbupdater` or Foundries' `aklite-offline`. The core's stderr is passed on to the
agent's own stderr (the journal) line by line, and read on the way: JSON progress records
(`{"event": "progress", "phase", "percent", "message"}`) feed the status file, error records and
the last `usbupdater: ` line become the reason shown to people. Nothing here depends on those
records being present.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Callable, Optional

from usbupdater import log
from usbupdater.agent.settings import AgentSettings

REASON_PREFIXES = ("usbupdater: ", "aklite-offline: ")
TAIL_LINES = 20


@dataclass(frozen=True)
class Progress:
    phase: str
    percent: Optional[float]
    message: str


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

    def to_json(self) -> dict[str, object]:
        return {
            "command": self.command,
            "code": self.code,
            "reason": self.reason,
            "errors": list(self.errors),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "seconds": round(self.seconds, 3),
        }


def parse_progress(record: dict[str, object]) -> Optional[Progress]:
    if record.get("event") != "progress":
        return None
    pct = record.get("percent")
    percent = float(pct) if isinstance(pct, (int, float)) and not isinstance(pct, bool) else None
    return Progress(str(record.get("phase") or ""), percent, str(record.get("message") or ""))


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
        line = line.rstrip("\n")
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
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                bufsize=1,
            )
        except OSError as exc:
            return Outcome(name, None, f"cannot start {argv[0]}: {exc.strerror}", started=started)
        out: list[str] = []
        assert proc.stdout is not None and proc.stderr is not None
        stdout_thread = threading.Thread(target=lambda: out.append(proc.stdout.read()))  # type: ignore[union-attr]
        stdout_thread.start()
        limit = timeout if timeout is not None else self.s.updater_timeout
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            proc.terminate()

        timer = threading.Timer(limit, expire) if limit > 0 else None
        if timer:
            timer.start()
        try:
            for line in proc.stderr:
                self._echo(line)
                reader.feed(line)
            code: Optional[int] = proc.wait()
        finally:
            if timer:
                timer.cancel()
            stdout_thread.join()
        if expired.is_set():
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
            "".join(out),
        )
        self._log.info("updater finished", command=name, code=code, reason=outcome.reason)
        return outcome

    def _echo(self, line: str) -> None:
        try:
            self.echo.write(line if line.endswith("\n") else line + "\n")
            self.echo.flush()
        except (OSError, ValueError):
            pass

    def current(self) -> Optional[str]:
        """The target the device runs, from `current` ("Target: NAME"), or None."""
        outcome = self.call(["current"], timeout=self.s.command_timeout)
        if outcome.code != 0:
            return None
        return parse_current(outcome.stdout)


def parse_current(text: str) -> Optional[str]:
    m = re.search(r"^\s*Target:\s*(\S+)", text, re.MULTILINE)
    if not m or m.group(1).lower() in ("none", "none:"):
        return None
    return m.group(1)
