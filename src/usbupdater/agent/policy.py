"""What to do after each exit code: pure decisions, one table per command (spec section 4).

Kept free of I/O so every code is unit-tested; the service only carries the decisions out. The
codes are read through the core's dialect (dialect.py: ours or aklite-offline's), so the
decisions depend only on the normalised action.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from usbupdater.agent import dialect as dialects

# Short meanings for people (status file, report), by exit code.
MEANINGS: dict[int, str] = {
    0: "ok",
    1: "unexpected error",
    6: "no target for this device in the bundle",
    8: "target content missing from the bundle",
    11: "the bundle failed a security check (signature, threshold, rollback)",
    12: "the bundle's metadata has expired",
    14: "the bundle's metadata is missing",
    15: "the bundle's metadata is invalid (type, tag, signature or expiry)",
    20: "the requested target is not in the bundle",
    30: "an earlier installation is still pending",
    40: "nothing was pending",
    60: "not enough space on the device",
    80: "the bundle's content does not match its signed metadata",
    90: "boot firmware update",
    99: "the update failed; the device is back on the previous version",
    100: "reboot needed",
    101: "apps installed; the Docker engine needs a restart",
    102: "downgrade refused",
    110: "the new version failed to boot; rolled back, the previous apps are unknown",
    120: "the apps failed and no rollback target is known",
}

# Results a finished job can have (status file `result`, report `result`).
UPDATED = "updated"
UP_TO_DATE = "up-to-date"
ROLLED_BACK = "rolled-back"
FAILED = "failed"


@dataclass(frozen=True)
class Decision:
    """`step`: done | reboot | engine | run. `after_reboot`: run | install | none."""

    step: str
    result: str = ""
    message: str = ""
    after_reboot: str = "none"


def meaning(code: Optional[int], dialect: str = dialects.USBUPDATER, command: str = "") -> str:
    if code is None:
        return "the updater did not finish"
    if command:
        return dialects.interpret(dialect, command, code).text
    return MEANINGS.get(code, f"exit code {code}")


def _failed(text: str, reason: str) -> Decision:
    return Decision("done", FAILED, f"{text}: {reason}" if reason else text)


def after_install(
    code: Optional[int], reason: str = "", dialect: str = dialects.USBUPDATER
) -> Decision:
    m = dialects.interpret(dialect, "install", code)
    if m.action == dialects.UP_TO_DATE:
        return Decision("done", UP_TO_DATE, "nothing to do: the device already runs this target")
    if m.action == dialects.REBOOT_RUN:
        return Decision("reboot", "", "installed; rebooting into the new version", "run")
    if m.action == dialects.REBOOT_INSTALL:
        return Decision(
            "reboot",
            "",
            "a boot firmware update must be confirmed by a reboot first; installing after it",
            "install",
        )
    if m.action == dialects.ENGINE_RUN:
        return Decision("engine", "", "apps installed; restarting the Docker engine")
    if m.action == dialects.RUN:  # e.g. an install the service was killed in
        return Decision("run", "", "an installation is pending; finishing it first")
    return _failed(m.text, reason)


def after_run(
    code: Optional[int],
    reason: str = "",
    confirm_boot_firmware: bool = True,
    rolling_back: bool = False,
    dialect: str = dialects.USBUPDATER,
) -> Decision:
    """`rolling_back`: an earlier `run` of this update answered "reboot to roll back" (apps
    failed, previous version redeployed), so this `run` finishes the rollback, not the update."""
    m = dialects.interpret(dialect, "run", code)
    if m.action == dialects.UPDATED and rolling_back:
        return Decision("done", ROLLED_BACK, "the update failed; the previous version runs again")
    if m.action == dialects.UPDATED:
        return Decision("done", UPDATED, "updated; the apps are running")
    if m.action == dialects.UPDATED_BOOT_FW:
        if confirm_boot_firmware:
            return Decision(
                "reboot", UPDATED, "updated; rebooting once more to confirm the boot firmware"
            )
        return Decision("done", UPDATED, "updated; the boot firmware is confirmed at next reboot")
    if m.action == dialects.REBOOT_ROLLBACK:
        return Decision("reboot", "", "the apps failed; rolling back: rebooting", "run")
    if m.action == dialects.ROLLED_BACK:
        return Decision("done", ROLLED_BACK, m.text + (f": {reason}" if reason else ""))
    if m.action == dialects.NOTHING_PENDING:
        return Decision("done", UP_TO_DATE, "nothing was pending")
    return _failed(m.text, reason)


def rolls_back(outcome: Mapping[str, Any]) -> bool:
    """True for a recorded `run` that answered "reboot to complete the rollback"."""
    if outcome.get("command") != "run":
        return False
    d = str(outcome.get("dialect") or dialects.USBUPDATER)
    return dialects.interpret(d, "run", outcome.get("code")).action == dialects.REBOOT_ROLLBACK


# Codes an `install` can only return once the bundle's metadata verified against the device's
# roots (spec section 4): anything else, an unknown code or no code at all (the updater did not
# run or finish) means the stick proved nothing, and it gets no report (and no read-write mount).
VERIFIED_CODES = frozenset((0, 6, 8, 20, 30, 40, 60, 80, 90, 99, 100, 101, 102, 110, 120))
UNVERIFIED_CODES = frozenset((1, 11, 12, 14, 15))


def metadata_verified(code: Optional[int], dialect: str = dialects.USBUPDATER) -> bool:
    """True when `code` of `install` comes after the bundle's metadata verified (spec section
    4); for another core, what its dialect's table says."""
    if dialect == dialects.USBUPDATER:
        return code in VERIFIED_CODES
    return dialects.interpret(dialect, "install", code).verified


def report_allowed(outcomes: Sequence[Mapping[str, Any]]) -> bool:
    """A report goes to the stick only when one of the job's `install` calls verified the
    bundle's metadata: a stick that proved nothing learns nothing about the device."""
    return any(
        o.get("command") == "install"
        and metadata_verified(o.get("code"), str(o.get("dialect") or dialects.USBUPDATER))
        for o in outcomes
    )
