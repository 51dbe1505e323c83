"""The agent's job as a state machine: every transition of policy.py as a table row (pure)."""

from __future__ import annotations

import pytest

from usbupdater.agent import policy
from usbupdater.errors import ExitCode

# --- policy: the job's state machine, one row per transition ---

S = policy.State
F = policy.Facts

# (state, facts) -> (next state, result, after_reboot)
TRANSITIONS = [
    # mounting: a bundle is installed once, unless the stick was plugged in again
    (S.MOUNTING, F(), S.INSTALLING, "", "none"),
    (S.MOUNTING, F(found=policy.MOUNT_FAILED), S.DONE, policy.FAILED, "none"),
    (S.MOUNTING, F(found=policy.NO_BUNDLE), S.DONE, policy.IGNORED, "none"),
    (S.MOUNTING, F(handled=True), S.DONE, policy.IGNORED, "none"),
    (S.MOUNTING, F(handled=True, replugged=True), S.INSTALLING, "", "none"),
    (S.MOUNTING, F(replugged=True), S.INSTALLING, "", "none"),
    # installing: every exit code of `install`
    (S.INSTALLING, F(code=0), S.REPORTING, policy.UP_TO_DATE, "none"),
    (S.INSTALLING, F(code=100), S.REBOOTING, "", "run"),
    (S.INSTALLING, F(code=90), S.REBOOTING, "", "install"),
    (S.INSTALLING, F(code=101), S.RESTARTING_ENGINE, "", "none"),
    (S.INSTALLING, F(code=30), S.FINISHING, "", "none"),
    (S.INSTALLING, F(code=11), S.REPORTING, policy.FAILED, "none"),
    (S.INSTALLING, F(code=80), S.REPORTING, policy.FAILED, "none"),
    (S.INSTALLING, F(code=102), S.REPORTING, policy.FAILED, "none"),
    (S.INSTALLING, F(code=None), S.REPORTING, policy.FAILED, "none"),  # did not finish
    (S.INSTALLING, F(code=42), S.REPORTING, policy.FAILED, "none"),  # unknown
    # the reboot cap: a job that rebooted max_reboots times fails instead
    (S.INSTALLING, F(code=100, reboots=2, max_reboots=3), S.REBOOTING, "", "run"),
    (S.INSTALLING, F(code=100, reboots=3, max_reboots=3), S.REPORTING, policy.FAILED, "none"),
    (S.INSTALLING, F(code=90, reboots=1, max_reboots=1), S.REPORTING, policy.FAILED, "none"),
    # restarting the engine: `run` comes next, whatever the hook said
    (S.RESTARTING_ENGINE, F(), S.FINISHING, "", "none"),
    # finishing (`run`): every exit code, rollback detection, the boot firmware confirmation
    (S.FINISHING, F(code=0), S.REPORTING, policy.UPDATED, "none"),
    (S.FINISHING, F(code=0, rolling_back=True), S.REPORTING, policy.ROLLED_BACK, "none"),
    (S.FINISHING, F(code=90), S.REBOOTING, policy.UPDATED, "none"),
    (S.FINISHING, F(code=90, confirm_boot_firmware=False), S.REPORTING, policy.UPDATED, "none"),
    (S.FINISHING, F(code=90, reboots=3), S.REPORTING, policy.FAILED, "none"),
    (S.FINISHING, F(code=100), S.REBOOTING, "", "run"),
    (S.FINISHING, F(code=100, reboots=3), S.REPORTING, policy.FAILED, "none"),
    (S.FINISHING, F(code=99), S.REPORTING, policy.ROLLED_BACK, "none"),
    (S.FINISHING, F(code=110), S.REPORTING, policy.ROLLED_BACK, "none"),
    (S.FINISHING, F(code=120), S.REPORTING, policy.FAILED, "none"),
    (S.FINISHING, F(code=40), S.REPORTING, policy.UP_TO_DATE, "none"),
    (S.FINISHING, F(code=30), S.REPORTING, policy.FAILED, "none"),
    (S.FINISHING, F(code=1), S.REPORTING, policy.FAILED, "none"),
    (S.FINISHING, F(code=None), S.REPORTING, policy.FAILED, "none"),
    # rebooting ends the job in this boot (resume goes on); reporting ends it
    (S.REBOOTING, F(), S.DONE, "", "none"),
    (S.REPORTING, F(), S.DONE, "", "none"),
    (S.DONE, F(), S.DONE, "", "none"),
]


@pytest.mark.parametrize(("state", "facts", "nxt", "result", "after"), TRANSITIONS)
def test_transition(
    state: policy.State, facts: policy.Facts, nxt: policy.State, result: str, after: str
) -> None:
    d = policy.transition(state, facts)
    assert (d.state, d.result, d.after_reboot) == (nxt, result, after)


def test_every_state_has_a_row() -> None:
    assert {row[0] for row in TRANSITIONS} == set(policy.State)


# resume at service start: (marker step, after_reboot, rebooted, stick present, attempts)
RESUMES = [
    (("install", "none", False, True, 1), S.INSTALLING, ""),  # try again when the stick is seen
    (("install", "none", True, True, 1), S.INSTALLING, ""),
    (("install", "none", False, False, 1), S.REPORTING, policy.FAILED),  # the stick is gone
    (("install", "none", False, True, 2), S.REPORTING, policy.FAILED),  # the attempt limit
    (("reboot", "run", False, True, 1), S.REBOOTING, ""),  # the reboot did not happen
    (("reboot", "install", False, False, 1), S.REBOOTING, ""),
    (("reboot", "none", False, True, 1), S.REBOOTING, ""),
    (("reboot", "run", True, False, 1), S.FINISHING, ""),
    (("reboot", "install", True, True, 1), S.INSTALLING, ""),  # boot firmware confirmed
    (("reboot", "install", True, False, 1), S.REPORTING, policy.FAILED),
    (("reboot", "none", True, False, 1), S.REPORTING, policy.UPDATED),
    (("engine", "none", False, True, 1), S.FINISHING, ""),  # a crash while restarting the engine
    (("run", "none", True, False, 1), S.FINISHING, ""),  # a crash during `run`
]


@pytest.mark.parametrize(("facts", "nxt", "result"), RESUMES)
def test_resume(facts: tuple[str, str, bool, bool, int], nxt: policy.State, result: str) -> None:
    d = policy.resume(*facts)
    assert (d.state, d.result) == (nxt, result)
    if nxt is S.REBOOTING:
        assert d.after_reboot == facts[1]  # the same reboot, asked again


@pytest.mark.parametrize(
    ("prev_bundle", "prev_step", "retry"),
    [
        ("b", "install", True),
        ("b", "reboot", False),
        ("b", "run", False),
        ("other", "install", False),
    ],
)
def test_retrying(prev_bundle: str, prev_step: str, retry: bool) -> None:
    assert policy.retrying(prev_bundle, prev_step, "b") is retry


@pytest.mark.parametrize(
    ("earlier", "rolling"),
    [
        ([], False),
        ([{"command": "install", "code": 100}], False),
        ([{"command": "install", "code": 100}, {"command": "run", "code": 100}], True),
        ([{"command": "run", "code": 90}], False),
    ],
)
def test_rolling_back(earlier: list[dict[str, object]], rolling: bool) -> None:
    assert policy.rolling_back(earlier) is rolling


def test_run_0_after_a_run_100_finishes_a_rollback() -> None:
    d = policy.after_run(0, "", True, rolling_back=True)
    assert (d.state, d.result) == (S.REPORTING, policy.ROLLED_BACK)
    assert "previous version" in d.message


def test_failure_message_carries_the_reason() -> None:
    d = policy.after_install(15, "bundle-targets.json: tag 'qa' is not one of main")
    assert "invalid" in d.message and "tag 'qa'" in d.message
    assert (
        "gave up after 3 reboots" in policy.transition(S.FINISHING, F(code=100, reboots=3)).message
    )


def test_exit_code_meanings() -> None:
    assert ExitCode.NEEDS_REBOOT.meaning == "reboot needed"
    assert ExitCode.describe(90) == "boot firmware update"
    assert ExitCode.describe(42) == "exit code 42"
    assert ExitCode.describe(None) == "the updater did not finish"
    assert all(c.meaning for c in ExitCode)
