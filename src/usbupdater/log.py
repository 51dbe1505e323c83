"""Logging: JSON lines for journald, plain readable lines for a technician at a terminal.

`--log-level` follows aklite-offline: 0 trace, 1 debug, 2 info (default), 3 warning, 4 error,
5 fatal. Logs go to stderr; command results meant for people or scripts go to stdout.
"""

from __future__ import annotations

import logging
import sys
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


def configure(
    level: int = DEFAULT_LEVEL, stream: Optional[TextIO] = None, json_lines: Optional[bool] = None
) -> None:
    """Set up structlog once per process; `json_lines` defaults to "stream is not a terminal"."""
    out = stream if stream is not None else sys.stderr
    if json_lines is None:
        json_lines = not out.isatty()
    renderer: Any
    if json_lines:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
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
    """A bound logger tagged with the component name."""
    return structlog.get_logger().bind(component=name)
