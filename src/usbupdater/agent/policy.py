"""The job's state machine: every transition is a pure decision here (spec section 4).

Kept free of I/O so every transition is unit-tested as a table; jobs.py only carries the
decisions out. The core's codes are read through its dialect (dialect.py: ours or
aklite-offline's), so the decisions depend only on the normalised action.

One stick's job: MOUNTING -> INSTALLING -> (RESTARTING_ENGINE ->) FINISHING (`run`) ->
REPORTING -> DONE, leaving for REBOOTING (DONE for this boot) wherever the core asks for a
reboot; after the boot `resume` picks the state up again from the marker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional

from usbupdater.agent import dialect as dialects


class State(str, Enum):
    """What a job is doing; the value is the status board's phase."""

    MOUNTING = "mounting"
    INSTALLING = "installing"
    RESTARTING_ENGINE = "restarting-engine"
    FINISHING = "finishing"  # `run`: start the apps, confirm the boot, or roll back
    REBOOTING = "rebooting"
    REPORTING = "reporting"
    DONE = "done"


# The marker's `step` (journal.JobRecord) for each state that can be interrupted.
JOURNAL_STEP = {
    State.INSTALLING: "install",
    State.RESTARTING_ENGINE: "engine",
    State.FINISHING: "run",
    State.REBOOTING: "reboot",
}

# Results a finished job can have (status file `result`, report `result`).
UPDATED = "updated"
UP_TO_DATE = "up-to-date"
ROLLED_BACK = "rolled-back"
FAILED = "failed"
IGNORED = "ignored"  # no bundle, or one already handled: the job ends without a result

# What mounting found.
MOUNT_FAILED = "mount-failed"
NO_BUNDLE = "no-bundle"
BUNDLE = "bundle"

MAX_INSTALL_ATTEMPTS = 2  # installs the service was stopped in before it gives up
INTERRUPTED = "the service stopped during the install"


@dataclass(frozen=True)
class Decision:
    """The next `state`; `result` and `message` for REPORTING, `after_reboot` (run | install |
    none) for REBOOTING."""

    state: State
    result: str = ""
    message: str = ""
    after_reboot: str = "none"


@dataclass(frozen=True)
class Facts:
    """What a job learnt in its current state (only the fields that state reads matter)."""

    found: str = BUNDLE  # MOUNTING
    handled: bool = False  # MOUNTING: this bundle's identity is in handled.json
    replugged: bool = False  # MOUNTING: the stick was unplugged in this run of the service
    code: Optional[int] = None  # INSTALLING, FINISHING: the core's exit code
    reason: str = ""
    dialect: str = dialects.USBUPDATER
    confirm_boot_firmware: bool = True
    rolling_back: bool = False  # FINISHING: an earlier `run` asked to reboot to roll back
    reboots: int = 0  # reboots this job has asked for so far
    max_reboots: int = 3


def transition(state: State, f: Facts) -> Decision:
    """The state after `state`, given what the job learnt in it."""
    if state is State.MOUNTING:
        d = after_mount(f.found, f.handled, f.replugged)
    elif state is State.INSTALLING:
        d = after_install(f.code, f.reason, f.dialect)
    elif state is State.RESTARTING_ENGINE:
        d = Decision(State.FINISHING, message="starting the apps")
    elif state is State.FINISHING:
        d = after_run(f.code, f.reason, f.confirm_boot_firmware, f.rolling_back, f.dialect)
    else:  # REBOOTING ends the job in this boot (resume goes on); REPORTING ends it
        d = Decision(State.DONE)
    return cap_reboots(d, f.reboots, f.max_reboots)


def after_mount(found: str, handled: bool, replugged: bool) -> Decision:
    """A stick without a bundle is ignored; a bundle already handled is too, unless the stick was
    unplugged and plugged in again (a person asking to retry)."""
    if found == MOUNT_FAILED:
        return Decision(State.DONE, FAILED)
    if found != BUNDLE or (handled and not replugged):
        return Decision(State.DONE, IGNORED)
    return Decision(State.INSTALLING, message="verifying the bundle")


def cap_reboots(d: Decision, reboots: int, max_reboots: int) -> Decision:
    """A job that already asked for `max_reboots` reboots fails instead of rebooting again."""
    if d.state is State.REBOOTING and reboots >= max_reboots:
        return Decision(State.REPORTING, FAILED, f"gave up after {reboots} reboots: {d.message}")
    return d


def retrying(prev_bundle: str, prev_step: str, bundle: str) -> bool:
    """The marker shows the service stopped while installing this same bundle: this install is
    another attempt (counted, notes kept)."""
    return prev_bundle == bundle and prev_step == JOURNAL_STEP[State.INSTALLING]


def resume(
    step: str, after_reboot: str, rebooted: bool, stick_present: bool, attempts: int
) -> Decision:
    """Where a job the marker shows in flight goes on at service start. INSTALLING means: keep
    the marker in step `install` and install when the stick is seen (it may still be there)."""
    if step == JOURNAL_STEP[State.INSTALLING]:  # the updater went down with the service
        if not stick_present:
            return Decision(State.REPORTING, FAILED, f"{INTERRUPTED}, and the stick is gone")
        if attempts >= MAX_INSTALL_ATTEMPTS:
            return Decision(State.REPORTING, FAILED, f"{INTERRUPTED}, twice: giving up")
        return Decision(
            State.INSTALLING, message=f"{INTERRUPTED}; trying again if the stick is still there"
        )
    if step == JOURNAL_STEP[State.REBOOTING] and not rebooted:
        return Decision(
            State.REBOOTING,
            message="the reboot did not happen; rebooting",
            after_reboot=after_reboot,
        )
    if step == JOURNAL_STEP[State.REBOOTING] and after_reboot == "install":
        if not stick_present:
            why = "the boot firmware is confirmed; plug the stick in again to install"
            return Decision(State.REPORTING, FAILED, why)
        return Decision(State.INSTALLING)
    if step == JOURNAL_STEP[State.REBOOTING] and after_reboot == "none":
        return Decision(State.REPORTING, UPDATED, "updated")
    # after a reboot that asked for `run`, or a crash during the engine or run steps
    return Decision(State.FINISHING, message="finishing the update after the reboot")


def _failed(text: str, reason: str) -> Decision:
    return Decision(State.REPORTING, FAILED, f"{text}: {reason}" if reason else text)


def after_install(
    code: Optional[int], reason: str = "", dialect: str = dialects.USBUPDATER
) -> Decision:
    m = dialects.interpret(dialect, "install", code)
    if m.action == dialects.UP_TO_DATE:
        return Decision(
            State.REPORTING, UP_TO_DATE, "nothing to do: the device already runs this target"
        )
    if m.action == dialects.REBOOT_RUN:
        return Decision(State.REBOOTING, "", "installed; rebooting into the new version", "run")
    if m.action == dialects.REBOOT_INSTALL:
        return Decision(
            State.REBOOTING,
            "",
            "a boot firmware update must be confirmed by a reboot first; installing after it",
            "install",
        )
    if m.action == dialects.ENGINE_RUN:
        return Decision(State.RESTARTING_ENGINE, "", "apps installed; restarting the Docker engine")
    if m.action == dialects.RUN:  # e.g. an install the service was killed in
        return Decision(State.FINISHING, "", "an installation is pending; finishing it first")
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
        return Decision(
            State.REPORTING, ROLLED_BACK, "the update failed; the previous version runs again"
        )
    if m.action == dialects.UPDATED:
        return Decision(State.REPORTING, UPDATED, "updated; the apps are running")
    if m.action == dialects.UPDATED_BOOT_FW:
        if confirm_boot_firmware:
            return Decision(
                State.REBOOTING,
                UPDATED,
                "updated; rebooting once more to confirm the boot firmware",
            )
        return Decision(
            State.REPORTING, UPDATED, "updated; the boot firmware is confirmed at next reboot"
        )
    if m.action == dialects.REBOOT_ROLLBACK:
        return Decision(State.REBOOTING, "", "the apps failed; rolling back: rebooting", "run")
    if m.action == dialects.ROLLED_BACK:
        return Decision(State.REPORTING, ROLLED_BACK, m.text + (f": {reason}" if reason else ""))
    if m.action == dialects.NOTHING_PENDING:
        return Decision(State.REPORTING, UP_TO_DATE, "nothing was pending")
    return _failed(m.text, reason)


def rolls_back(outcome: Mapping[str, Any]) -> bool:
    """True for a recorded `run` that answered "reboot to complete the rollback"."""
    if outcome.get("command") != "run":
        return False
    d = str(outcome.get("dialect") or dialects.USBUPDATER)
    return dialects.interpret(d, "run", outcome.get("code")).action == dialects.REBOOT_ROLLBACK


def rolling_back(earlier: Sequence[Mapping[str, Any]]) -> bool:
    """An earlier `run` of this job answered "reboot to roll back", so a `run` now finishes the
    rollback, not the update."""
    return any(rolls_back(o) for o in earlier)


def metadata_verified(code: Optional[int], dialect: str = dialects.USBUPDATER) -> bool:
    """True when `code` of `install` can only come after the bundle's metadata verified against
    the device's roots (spec section 4), as the dialect's table says: anything else, an unknown
    code or no code at all (the updater did not run or finish) means the stick proved nothing,
    and it gets no report (and no read-write mount)."""
    return dialects.interpret(dialect, "install", code).verified


def report_allowed(outcomes: Sequence[Mapping[str, Any]]) -> bool:
    """A report goes to the stick only when one of the job's `install` calls verified the
    bundle's metadata: a stick that proved nothing learns nothing about the device."""
    return any(
        o.get("command") == "install"
        and metadata_verified(o.get("code"), str(o.get("dialect") or dialects.USBUPDATER))
        for o in outcomes
    )
