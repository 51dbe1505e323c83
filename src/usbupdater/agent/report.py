"""The report written back to the stick: proof a technician can carry away.

JSON for tools plus a few human lines, in `<stick>/<report_dir>/`, written during a short
read-write mount and fsynced before the stick is unmounted. The stick is untrusted: the report
directory must be a real directory on the stick's own filesystem (never a symlink leading out of
it), and nothing outside it is written.

A report is written only for a bundle whose metadata verified against the device's roots
(`policy.report_allowed`), and it never holds the machine-id (`settings.pseudonym`). Every string
in it may come from the stick or the core's reason, so each one is escaped (`textsafe`): the text
file is one line per item, and both files are valid UTF-8 whatever bytes the stick's names hold.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any, Optional

from usbupdater import timefmt
from usbupdater.agent import dialect as dialects
from usbupdater.agent.journal import JobRecord
from usbupdater.agent.settings import AgentSettings
from usbupdater.errors import ExitCode
from usbupdater.fsutil import atomic_write
from usbupdater.textsafe import clean, safe_text

REPORT_VERSION = 1
MAX_VALUE = 500  # characters of any string value (after escaping)


# Actions a report does not list as errors (usbupdater's 0, 90, 100, 101 and their kin).
NOT_ERRORS = frozenset(
    (
        dialects.UP_TO_DATE,
        dialects.REBOOT_RUN,
        dialects.REBOOT_INSTALL,
        dialects.ENGINE_RUN,
        dialects.UPDATED,
        dialects.UPDATED_BOOT_FW,
        dialects.REBOOT_ROLLBACK,
    )
)


def failed(o: dict[str, Any]) -> bool:
    """A recorded call the report lists as an error, read in its core's dialect."""
    d = str(o.get("dialect") or dialects.USBUPDATER)
    return dialects.interpret(d, str(o.get("command")), o.get("code")).action not in NOT_ERRORS


def _meaning(o: dict[str, Any]) -> str:
    return str(o.get("meaning") or ExitCode.describe(o.get("code")))


def iso(ts: float) -> str:
    return timefmt.stamp(ts)


def build(
    job: JobRecord, s: AgentSettings, result: str, message: str, now: Optional[float] = None
) -> dict[str, Any]:
    now = time.time() if now is None else now
    errors = [
        f"{o['command']} exited {o['code']}: {o.get('reason') or _meaning(o)}"
        for o in job.outcomes
        if failed(o)
    ]
    for o in job.outcomes:
        errors += [e for e in o.get("errors", []) if e not in errors]
    doc = {
        "usbupdater_report": REPORT_VERSION,
        "result": result,
        "message": message,
        "device": {"hardware_id": s.hardware_id, "serial": s.device_serial},
        "stick": job.stick,
        "bundle": {"identity": job.bundle, "targets_version": job.targets_version},
        "old_target": job.old_target,
        "new_target": job.new_target,
        "steps": job.outcomes,
        "reboots": job.reboots,
        "notes": job.notes,
        "errors": errors + job.notes,
        "started": iso(job.started),
        "finished": iso(now),
    }
    return clean(doc, MAX_VALUE)  # type: ignore[no-any-return]


def text(doc: dict[str, Any]) -> str:
    dev = doc["device"]
    pending = "(after the reboot)" if doc["result"] == "rebooting" else "unknown"
    lines = [
        f"usbupdater report: {str(doc['result']).upper()}",
        f"{doc['message']}",
        f"Device: {dev['hardware_id']} serial {dev['serial'] or 'unknown'}",
        f"Target: {doc['old_target'] or 'unknown'} -> {doc['new_target'] or pending}",
        f"Time: {doc['started']} .. {doc['finished']}",
    ]
    for step in doc["steps"]:
        reason = f" ({step['reason']})" if step.get("reason") else ""
        lines.append(f"  {step['time']} {step['command']}: exit {step['code']}{reason}")
    lines += [f"Error: {e}" for e in doc["errors"]]
    return "\n".join(safe_text(line, 2 * MAX_VALUE) for line in lines) + "\n"


def file_stem(doc: dict[str, Any]) -> str:
    stamp = str(doc["finished"]).replace("-", "").replace(":", "")
    dev = doc["device"]
    who = f"{dev['hardware_id']}-{dev['serial'][:12]}-{doc['result']}"
    who = re.sub(r"[^A-Za-z0-9_.-]", "_", who)
    return f"{stamp}-{who}".strip("-")


class UnsafeStick(Exception):
    """The report directory on the stick is not a plain directory of the stick."""


def report_dir(mountpoint: Path, name: str) -> Path:
    """`<mountpoint>/<name>`, created if needed, refused if it is a link or leaves the stick."""
    if not name or "/" in name or name in (".", ".."):
        raise UnsafeStick(f"bad report directory name {name!r}")
    root = os.lstat(mountpoint)
    path = mountpoint / name
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o755)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_dev != root.st_dev:
        raise UnsafeStick(f"{name} on the stick is not a plain directory")
    return path


def write(mountpoint: Path, s: AgentSettings, doc: dict[str, Any]) -> Path:
    """Write the JSON and the text report into the stick's report directory, durably."""
    d = report_dir(mountpoint, s.report_dir)
    stem = file_stem(doc)
    for suffix in (".txt", ".json"):
        target = d / (stem + suffix)
        if target.is_symlink():
            raise UnsafeStick(f"{target.name} on the stick is a symbolic link")
    atomic_write(d / (stem + ".txt"), text(doc).encode())
    atomic_write(d / (stem + ".json"), json.dumps(doc, indent=1).encode() + b"\n")
    return d / (stem + ".json")
