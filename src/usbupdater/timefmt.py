"""The one time format of everything usbupdater writes: UTC to the second, `Z` suffix.

`2026-01-01T12:00:00Z` in the state, the history, status.json, the journal, reports and
`check --json`: the form TUF metadata uses, sortable as text. `parse` also reads the
`+00:00` form state files were written in before (and fractions), so old files keep working.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Optional

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def stamp(ts: Optional[float] = None) -> str:
    """A POSIX time (default: now) as text."""
    return time.strftime(FORMAT, time.gmtime(ts))


def text(value: datetime) -> str:
    """An aware datetime as text (in UTC)."""
    return value.astimezone(timezone.utc).strftime(FORMAT)


def now() -> str:
    return text(datetime.now(timezone.utc))


def parse(value: str) -> datetime:
    """`...Z` or `...+00:00` (any offset) -> an aware datetime; ValueError otherwise."""
    body = value.strip()
    if body.endswith(("Z", "z")):
        body = body[:-1] + "+00:00"
    if "." in body:  # Python 3.9's fromisoformat wants exactly 3 or 6 fraction digits
        head, rest = body.split(".", 1)
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        body = f"{head}.{(digits + '000000')[:6]}{rest[len(digits) :]}"
    parsed = datetime.fromisoformat(body)
    if parsed.tzinfo is None:
        raise ValueError(f"no time zone: {value!r}")
    return parsed


def normalize(value: str) -> str:
    """A time read from a file, in the one format; text that is no time is kept as it is."""
    try:
        return text(parse(value))
    except ValueError:
        return value
