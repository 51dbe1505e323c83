"""`usbupdater report -s STICK`: what every device that used a stick did, for the technician.

Each device's service writes a JSON report per job into `<stick>/usbupdater-reports/`
(agent/report.py). This reads them on any machine (no device configuration), keeps each device's
latest outcome, and totals them. The reports are untrusted input: any device, or anyone with the
stick, may have written them. So at most MAX_FILES names are looked at and MAX_REPORT bytes of each
read, without following links; a report that is not one of ours (bad JSON, missing or mistyped
field, unknown result) is skipped and counted; every string is escaped (`textsafe`) and cut to a
bound before it is shown, and CSV cells cannot start a spreadsheet formula.

`parse` and `summarise` are pure; `read_dir` is the only I/O.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from usbupdater import safeio
from usbupdater.textsafe import safe_text

REPORT_DIR = "usbupdater-reports"  # agent/settings.py's default `report_dir`
MAX_FILES = 10_000  # report files read; a site has hundreds of devices at most
MAX_NAMES = 4 * MAX_FILES  # directory entries looked at (the .txt twins, strays)
MAX_REPORT = 256 << 10  # a real report is a few KiB
MAX_FIELD = 200  # characters of any value shown
OK_RESULTS = ("updated", "up-to-date")
TOTALS = ("updated", "up-to-date", "rolled-back", "failed")
# "rebooting": the report written before a reboot; the latest one for a device means the job
# never wrote its end (the stick was gone, or the device did not come back).
RESULTS = (*TOTALS, "rebooting")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Row:
    """One device's outcome, as its report says (every string escaped and bounded)."""

    serial: str
    hardware_id: str
    old_target: str
    new_target: str
    result: str
    time: str  # when the job ended, ISO 8601 UTC
    reboots: int
    message: str
    reports: int = 1  # how many reports this device left on the stick

    @property
    def key(self) -> tuple[str, str]:
        return (self.hardware_id, self.serial)


@dataclass(frozen=True)
class Summary:
    rows: tuple[Row, ...]  # one per device, the latest outcome first
    totals: dict[str, int] = field(default_factory=dict)
    reports: int = 0  # reports read and understood
    skipped: int = 0  # files that were not readable reports

    @property
    def ok(self) -> bool:
        """Every device ended updated or up to date (and there was at least one)."""
        return bool(self.rows) and all(r.result in OK_RESULTS for r in self.rows)


def _text(value: Any, *, optional: bool = False) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise ValueError("not a string")
    return safe_text(value, MAX_FIELD)


def parse(data: bytes) -> Optional[Row]:
    """The row of one report file, or None when it is not a report usbupdater wrote."""
    try:
        doc = json.loads(data.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("usbupdater_report") != 1:
            return None
        device = doc["device"]
        result = doc["result"]
        reboots = doc.get("reboots", 0)
        if not isinstance(device, dict) or result not in RESULTS:
            return None
        if isinstance(reboots, bool) or not isinstance(reboots, int) or not 0 <= reboots < 1000:
            return None
        finished = _text(doc["finished"])
        datetime.strptime(finished, TIME_FORMAT)  # a format check only
        return Row(
            serial=_text(device["serial"]),
            hardware_id=_text(device["hardware_id"]),
            old_target=_text(doc.get("old_target"), optional=True),
            new_target=_text(doc.get("new_target"), optional=True),
            result=result,
            time=finished,
            reboots=reboots,
            message=_text(doc.get("message", ""), optional=True),
        )
    except (ValueError, KeyError, TypeError, RecursionError, UnicodeDecodeError):
        return None


def summarise(parsed: Iterable[Optional[Row]]) -> Summary:
    """Each device's latest row (ties: the later file wins), newest first, and the totals."""
    latest: dict[tuple[str, str], Row] = {}
    counts: dict[tuple[str, str], int] = {}
    reports = skipped = 0
    for row in parsed:
        if row is None:
            skipped += 1
            continue
        reports += 1
        counts[row.key] = counts.get(row.key, 0) + 1
        old = latest.get(row.key)
        if old is None or row.time >= old.time:  # same format: text order is time order
            latest[row.key] = row
    rows = sorted(
        (Row(**{**asdict(r), "reports": counts[k]}) for k, r in latest.items()),
        key=lambda r: (r.time, r.hardware_id, r.serial),
        reverse=True,
    )
    totals = {t: 0 for t in TOTALS}
    for r in rows:
        name = r.result if r.result in totals else "unfinished"
        totals[name] = totals.get(name, 0) + 1
    return Summary(tuple(rows), totals, reports, skipped)


# --- output ---------------------------------------------------------------------------------------

COLUMNS = ("serial", "hardware_id", "from", "to", "result", "time", "reboots", "message")


def _cells(r: Row) -> list[str]:
    return [
        r.serial or "unknown",
        r.hardware_id,
        r.old_target or "unknown",
        r.new_target or ("(after the reboot)" if r.result == "rebooting" else "unknown"),
        r.result,
        r.time,
        str(r.reboots),
        r.message,
    ]


def totals_line(s: Summary) -> str:
    parts = [f"{s.totals.get(t, 0)} {t.replace('-', ' ')}" for t in TOTALS]
    if s.totals.get("unfinished"):
        parts.append(f"{s.totals['unfinished']} unfinished (last report: rebooting)")
    skipped = f"; {s.skipped} file(s) skipped (not a usbupdater report)" if s.skipped else ""
    return f"{len(s.rows)} device(s): {', '.join(parts)}{skipped}"


def format_text(s: Summary) -> str:
    if not s.rows:
        return "No device reports on the stick.\n" + totals_line(s) + "\n"
    lines = []
    for r in s.rows:
        c = _cells(r)
        lines.append(f"{c[4].upper():<11} {c[0]} ({c[1]}) {c[2]} -> {c[3]}")
        lines.append(f"            at {c[5]}, {c[6]} reboot(s): {c[7]}")
    lines.append(totals_line(s))
    return "\n".join(lines) + "\n"


def to_json(s: Summary) -> dict[str, Any]:
    return {
        "devices": [
            {
                "serial": r.serial,
                "hardware_id": r.hardware_id,
                "from": r.old_target or None,
                "to": r.new_target or None,
                "result": r.result,
                "time": r.time,
                "reboots": r.reboots,
                "message": r.message,
                "reports": r.reports,
            }
            for r in s.rows
        ],
        "totals": dict(s.totals),
        "reports": s.reports,
        "skipped": s.skipped,
        "ok": s.ok,
    }


def _csv_cell(value: str) -> str:
    """A cell a spreadsheet shows as text: a leading = + - @ (a formula) is quoted away."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def format_csv(s: Summary) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in s.rows:
        w.writerow([_csv_cell(c) for c in _cells(r)])
    return out.getvalue()


# --- I/O ------------------------------------------------------------------------------------------


def report_dir(stick: Path) -> Path:
    """The stick's report directory; a path that is one (or holds none) is taken as it is."""
    inner = stick / REPORT_DIR
    return inner if inner.is_dir() and not inner.is_symlink() else stick


def read_dir(path: Path) -> list[Optional[bytes]]:
    """The bytes of each `*.json` file (None for one that could not be read safely), in name
    order; at most MAX_FILES of them from the first MAX_NAMES entries."""
    dirfd = safeio.open_root(path)
    try:
        names: list[str] = []
        with os.scandir(dirfd) as it:
            for n, entry in enumerate(it):
                if n >= MAX_NAMES:
                    break
                if entry.name.endswith(".json") and not entry.name.startswith("."):
                    names.append(entry.name)
        out: list[Optional[bytes]] = []
        for name in sorted(names)[:MAX_FILES]:
            out.append(_read_one(dirfd, name))
        return out
    finally:
        os.close(dirfd)


def _read_one(dirfd: int, name: str) -> Optional[bytes]:
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return None
        return safeio.read_file(dirfd, name, MAX_REPORT)
    except (OSError, safeio.UnsafePathError):
        return None


def summarise_stick(stick: Path) -> Summary:
    return summarise(parse(d) if d is not None else None for d in read_dir(report_dir(stick)))


def render(s: Summary, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(to_json(s), indent=2) + "\n"
    if fmt == "csv":
        return format_csv(s)
    return format_text(s)
