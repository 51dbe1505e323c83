"""Logging: JSON lines for journald, plain readable lines for a technician at a terminal.

`--log-level` follows aklite-offline: 0 trace, 1 debug, 2 info (default), 3 warning, 4 error,
5 fatal. Logs go to stderr; command results meant for people or scripts go to stdout.

When stderr is systemd's journal stream (`JOURNAL_STREAM` names its device and inode, as
systemd documents), every line starts with its syslog priority (`<3>` error, `<4>` warning, `<6>`
info, `<7>` debug), which journald strips and records, so `journalctl -p err` shows failures.
Anywhere else (a terminal, a pipe to the agent) lines carry no prefix; the agent adds the
priority when it passes the core's lines on to its own journal stream (`split_priority`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Optional, TextIO

import structlog

# aklite-offline level -> Python logging level (trace has no stdlib level: it is debug).
LEVELS = {
    0: logging.DEBUG,
    1: logging.DEBUG,
    2: logging.INFO,
    3: logging.WARNING,
    4: logging.ERROR,
    5: logging.CRITICAL,
}
DEFAULT_LEVEL = 2
# structlog level name -> syslog priority (sd-daemon(3) prefixes).
PRIORITIES = {
    "critical": 2,
    "fatal": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
_PREFIX = re.compile(r"^<([0-7])>")
_journal = False


def priority(level: object) -> int:
    """The syslog priority of a level name (info when unknown)."""
    return PRIORITIES.get(str(level).lower(), 6)


def split_priority(line: str) -> tuple[Optional[int], str]:
    """A line's `<N>` priority prefix, if any, and the line without it."""
    m = _PREFIX.match(line)
    return (int(m.group(1)), line[m.end() :]) if m else (None, line)


def is_journal_stream(stream: TextIO) -> bool:
    """Whether `stream` is the journal stream systemd connected us to (sd_journal_stream_fd)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def journal() -> bool:
    """Whether this process's log lines go to journald with priority prefixes."""
    return _journal


class _Prioritized:
    """Wraps a renderer: its line gets the `<N>` prefix of the record's level."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        level = event.get("level", method)
        return f"<{priority(level)}>{self.renderer(logger, method, event)}"


def configure(
    level: int = DEFAULT_LEVEL,
    stream: Optional[TextIO] = None,
    json_lines: Optional[bool] = None,
    journal: Optional[bool] = None,
) -> None:
    """Set up structlog once per process; `json_lines` defaults to "stream is not a terminal",
    `journal` (priority prefixes) to "stream is systemd's journal stream"."""
    global _journal
    out = stream if stream is not None else sys.stderr
    if json_lines is None:
        json_lines = not out.isatty()
    _journal = is_journal_stream(out) if journal is None else journal
    renderer: Any
    if json_lines:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    if _journal:
        renderer = _Prioritized(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A logger tagged with the component name. Lazy: it follows the configuration in force
    when it logs, so a module-level logger created before `configure` still obeys it."""
    return structlog.get_logger(component=name)
