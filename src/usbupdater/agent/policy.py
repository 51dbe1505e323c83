"""What to do after each exit code: pure decisions, one table per command (spec section 4).

Kept free of I/O so every code is unit-tested; the service only carries the decisions out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

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


def meaning(code: Optional[int]) -> str:
    if code is None:
        return "the updater did not finish"
    return MEANINGS.get(code, f"exit code {code}")


def _failed(code: Optional[int], reason: str) -> Decision:
    text = meaning(code)
    return Decision("done", FAILED, f"{text}: {reason}" if reason else text)


def after_install(code: Optional[int], reason: str = "") -> Decision:
    if code == 0:
        return Decision("done", UP_TO_DATE, "nothing to do: the device already runs this target")
    if code == 100:
        return Decision("reboot", "", "installed; rebooting into the new version", "run")
    if code == 90:
        return Decision(
            "reboot",
            "",
            "a boot firmware update must be confirmed by a reboot first; installing after it",
            "install",
        )
    if code == 101:
        return Decision("engine", "", "apps installed; restarting the Docker engine")
    if code == 30:  # e.g. an install the service was killed in: `run` says what it needs next
        return Decision("run", "", "an installation is pending; finishing it first")
    return _failed(code, reason)


def after_run(
    code: Optional[int],
    reason: str = "",
    confirm_boot_firmware: bool = True,
    rolling_back: bool = False,
) -> Decision:
    """`rolling_back`: an earlier `run` of this update answered 100 (apps failed, previous
    version redeployed), so this `run` finishes the rollback, not the update."""
    if code == 0 and rolling_back:
        return Decision("done", ROLLED_BACK, "the update failed; the previous version runs again")
    if code == 0:
        return Decision("done", UPDATED, "updated; the apps are running")
    if code == 90:
        if confirm_boot_firmware:
            return Decision(
                "reboot", UPDATED, "updated; rebooting once more to confirm the boot firmware"
            )
        return Decision("done", UPDATED, "updated; the boot firmware is confirmed at next reboot")
    if code == 100:
        return Decision("reboot", "", "the apps failed; rolling back: rebooting", "run")
    if code in (99, 110):
        return Decision("done", ROLLED_BACK, meaning(code) + (f": {reason}" if reason else ""))
    if code == 40:
        return Decision("done", UP_TO_DATE, "nothing was pending")
    return _failed(code, reason)


# Codes an `install` can only return once the bundle's metadata verified against the device's
# roots (spec section 4): anything else, an unknown code or no code at all (the updater did not
# run or finish) means the stick proved nothing, and it gets no report (and no read-write mount).
VERIFIED_CODES = frozenset((0, 6, 8, 20, 30, 40, 60, 80, 90, 99, 100, 101, 102, 110, 120))
UNVERIFIED_CODES = frozenset((1, 11, 12, 14, 15))


def metadata_verified(code: Optional[int]) -> bool:
    """True when `code` comes after the bundle's metadata verified (spec section 4)."""
    return code in VERIFIED_CODES


def report_allowed(outcomes: Sequence[Mapping[str, Any]]) -> bool:
    """A report goes to the stick only when one of the job's `install` calls verified the
    bundle's metadata: a stick that proved nothing learns nothing about the device."""
    return any(o.get("command") == "install" and metadata_verified(o.get("code")) for o in outcomes)
