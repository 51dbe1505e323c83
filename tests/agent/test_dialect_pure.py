"""The (dialect, command, code) table, the decisions made from it, and `auto` detection from the
real output of each stand-in (and of our own CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.conftest import HERE
from usbupdater.agent import dialect as d
from usbupdater.agent import policy
from usbupdater.agent.backend import Updater
from usbupdater.agent.policy import State as S
from usbupdater.agent.settings import AgentSettings
from usbupdater.config import from_tables
from usbupdater.errors import ConfigError

STANDIN = HERE / "aklite_offline_standin.py"

# (dialect, command, code) -> action, from the sources named in dialect.py.
CASES = [
    # ours
    (d.USBUPDATER, "install", 0, d.UP_TO_DATE),
    (d.USBUPDATER, "install", 100, d.REBOOT_RUN),
    (d.USBUPDATER, "install", 101, d.ENGINE_RUN),
    (d.USBUPDATER, "install", 90, d.REBOOT_INSTALL),
    (d.USBUPDATER, "install", 10, d.FAIL),
    (d.USBUPDATER, "run", 0, d.UPDATED),
    (d.USBUPDATER, "run", 90, d.UPDATED_BOOT_FW),
    (d.USBUPDATER, "run", 5, d.FAIL),
    (d.USBUPDATER, "check", 16, d.UPDATE_AVAILABLE),
    (d.USBUPDATER, "current", 0, d.READ_OUTPUT),
    (d.USBUPDATER, "current", 1, d.FAIL),
    # v1: LmP v87..v92 (src/offline/client.cc)
    (d.AKLITE_V1, "install", 0, d.UP_TO_DATE),
    (d.AKLITE_V1, "install", 1, d.FAIL),
    (d.AKLITE_V1, "install", 10, d.ENGINE_RUN),
    (d.AKLITE_V1, "install", 90, d.REBOOT_INSTALL),
    (d.AKLITE_V1, "install", 100, d.REBOOT_RUN),
    (d.AKLITE_V1, "install", 101, d.ENGINE_RUN),
    (d.AKLITE_V1, "install", 102, d.FAIL),
    (d.AKLITE_V1, "run", 0, d.UPDATED),
    (d.AKLITE_V1, "run", 90, d.UPDATED_BOOT_FW),
    (d.AKLITE_V1, "run", 99, d.ROLLED_BACK),
    (d.AKLITE_V1, "run", 100, d.REBOOT_ROLLBACK),
    (d.AKLITE_V1, "run", 110, d.ROLLED_BACK),
    (d.AKLITE_V1, "run", 120, d.FAIL),
    (d.AKLITE_V1, "run", 5, d.FAIL),
    (d.AKLITE_V1, "check", 1, d.LISTED),
    (d.AKLITE_V1, "current", 1, d.READ_OUTPUT),
    # v2: LmP v93+ (aklite::cli::StatusCode, remapped by aklite-offline's cmds.cpp)
    (d.AKLITE_V2, "install", 0, d.UP_TO_DATE),
    (d.AKLITE_V2, "install", 10, d.ENGINE_RUN),
    (d.AKLITE_V2, "install", 30, d.RUN),
    (d.AKLITE_V2, "install", 90, d.REBOOT_INSTALL),
    (d.AKLITE_V2, "install", 100, d.REBOOT_RUN),
    (d.AKLITE_V2, "install", 101, d.FAIL),
    (d.AKLITE_V2, "install", 102, d.FAIL),
    (d.AKLITE_V2, "install", 110, d.FAIL),
    (d.AKLITE_V2, "install", 130, d.FAIL),
    (d.AKLITE_V2, "install", 15, d.FAIL),
    (d.AKLITE_V2, "run", 0, d.UPDATED),
    (d.AKLITE_V2, "run", 5, d.UPDATED_BOOT_FW),
    (d.AKLITE_V2, "run", 40, d.NOTHING_PENDING),
    (d.AKLITE_V2, "run", 99, d.ROLLED_BACK),
    (d.AKLITE_V2, "run", 100, d.REBOOT_ROLLBACK),
    (d.AKLITE_V2, "run", 120, d.FAIL),
    (d.AKLITE_V2, "check", 0, d.NO_UPDATE),
    (d.AKLITE_V2, "check", 3, d.NO_UPDATE),
    (d.AKLITE_V2, "check", 16, d.UPDATE_AVAILABLE),
    (d.AKLITE_V2, "check", 17, d.UPDATE_AVAILABLE),
    (d.AKLITE_V2, "check", 18, d.UPDATE_AVAILABLE),
    (d.AKLITE_V2, "current", 1, d.READ_OUTPUT),
    # either
    (d.AKLITE, "install", 101, d.ENGINE_RUN),
    (d.AKLITE, "install", 10, d.ENGINE_RUN),
    (d.AKLITE, "run", 5, d.UPDATED_BOOT_FW),
    (d.AKLITE, "run", 90, d.UPDATED_BOOT_FW),
    (d.AKLITE, "run", 40, d.NOTHING_PENDING),
    (d.AKLITE, "run", 110, d.ROLLED_BACK),
]


@pytest.mark.parametrize(("dialect", "command", "code", "action"), CASES)
def test_table(dialect: str, command: str, code: int, action: str) -> None:
    assert d.interpret(dialect, command, code).action == action


@pytest.mark.parametrize("dialect", d.DIALECTS)
def test_no_code_and_unknown_codes_fail(dialect: str) -> None:
    for command in ("install", "run", "check", "current"):
        assert d.interpret(dialect, command, None).action == d.FAIL
        assert d.interpret(dialect, command, 237).action == d.FAIL


@pytest.mark.parametrize("command", ("install", "run", "check", "current"))
def test_v1_and_v2_never_disagree(command: str) -> None:
    """What makes the `aklite` union safe for the releases whose help text does not tell."""
    v1, v2 = d.TABLE[(d.AKLITE_V1, command)], d.TABLE[(d.AKLITE_V2, command)]
    for code in set(v1) & set(v2):
        assert v1[code].action == v2[code].action, code


@pytest.mark.parametrize(
    ("dialect", "code", "verified"),
    [
        (d.AKLITE_V2, 10, True),
        (d.AKLITE_V2, 100, True),
        (d.AKLITE_V2, 30, False),  # refused before the bundle is read
        (d.AKLITE_V2, 15, False),
        (d.AKLITE_V1, 101, True),
        (d.AKLITE_V1, 1, False),
        (d.AKLITE, 10, True),
        (d.AKLITE, 1, False),
        (d.USBUPDATER, 30, True),
        (d.USBUPDATER, 10, False),
    ],
)
def test_metadata_verified_per_dialect(dialect: str, code: int, verified: bool) -> None:
    assert policy.metadata_verified(code, dialect) is verified
    outcome = {"command": "install", "code": code, "dialect": dialect}
    assert policy.report_allowed([outcome]) is verified


@pytest.mark.parametrize(
    ("dialect", "install", "run_fw"),
    [(d.AKLITE_V1, 101, 90), (d.AKLITE_V1, 10, 90), (d.AKLITE_V2, 10, 5), (d.AKLITE, 10, 5)],
)
def test_decisions_are_the_same_actions(dialect: str, install: int, run_fw: int) -> None:
    assert policy.after_install(install, "", dialect).state is S.RESTARTING_ENGINE
    d100 = policy.after_install(100, "", dialect)
    assert (d100.state, d100.after_reboot) == (S.REBOOTING, "run")
    fw = policy.after_run(run_fw, "", True, dialect=dialect)
    assert (fw.state, fw.result) == (S.REBOOTING, policy.UPDATED)
    assert policy.after_run(run_fw, "", False, dialect=dialect).state is S.REPORTING
    assert policy.after_run(0, "", dialect=dialect).result == policy.UPDATED
    back = policy.after_run(100, "", dialect=dialect)
    assert (back.state, back.after_reboot) == (S.REBOOTING, "run")
    assert policy.rolls_back({"command": "run", "code": 100, "dialect": dialect})
    assert policy.after_run(0, "", rolling_back=True, dialect=dialect).result == policy.ROLLED_BACK
    assert policy.after_run(99, "", dialect=dialect).result == policy.ROLLED_BACK


def test_v2_specific_decisions() -> None:
    assert policy.after_run(40, "", dialect=d.AKLITE_V2).result == policy.UP_TO_DATE
    assert policy.after_install(110, "", d.AKLITE_V2).result == policy.FAILED
    assert policy.after_install(30, "", d.AKLITE_V2).state is S.FINISHING
    failed = policy.after_install(102, "why", d.AKLITE_V2)
    assert failed.result == policy.FAILED and "downgrade" in failed.message


# --- auto ---


def outputs(tmp_path: Path, argv: list[str]) -> tuple[str, str, str]:
    texts = []
    for args in (["--version"], ["--help"], ["install", "--help"]):
        p = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60)
        texts.append(p.stdout + "\n" + p.stderr)
    return texts[0], texts[1], texts[2]


@pytest.mark.parametrize(
    ("era", "expected"),
    [
        ("mp-91", d.AKLITE),
        ("mp-92", d.AKLITE),
        ("mp-93", d.AKLITE),
        ("mp-94", d.AKLITE_V2),
        ("mp-95", d.AKLITE_V2),
    ],
)
def test_detect_from_each_standin(tmp_path: Path, era: str, expected: str) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"era": era}))
    dialect, why = d.detect(*outputs(tmp_path, [sys.executable, str(STANDIN), str(plan)]))
    assert dialect == expected, why


def test_detect_our_own_cli(tmp_path: Path) -> None:
    got = d.detect(*outputs(tmp_path, [sys.executable, "-m", "usbupdater"]))
    assert got[0] == d.USBUPDATER


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("Current aktualizr version is: v96.0.0", d.AKLITE_V2),
        ("aklite-offline mp-92-4-gabcdef", d.AKLITE_V1),
        ("aklite-offline version: 93", d.AKLITE_V2),
        ("usbupdater 0.1.0", d.USBUPDATER),
        ("", d.USBUPDATER),  # says nothing: our codes, the documented contract
    ],
)
def test_detect_from_a_version_line(version: str, expected: str) -> None:
    assert d.detect(version, "", "")[0] == expected


def test_updater_resolves_auto_and_reads_current_despite_exit_1(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"era": "mp-95", "current": "intel-corei7-64-lmp-7"}))
    argv = (sys.executable, str(STANDIN), str(plan))
    up = Updater(AgentSettings(updater_command=argv, updater_dialect=d.AUTO))
    assert up.dialect == ""
    assert up.current() == "intel-corei7-64-lmp-7"  # `current` returned 1
    assert up.dialect == d.AKLITE_V2
    ours = Updater(AgentSettings(updater_command=argv))  # read as usbupdater: 1 is a failure
    assert ours.current() is None
    plan.write_text(json.dumps({"era": "mp-95", "current": "unknown"}))
    assert up.current() is None  # aklite's name for "no known target"


def _settings(value: str) -> AgentSettings:
    tables = {
        "provision": {"primary_ecu_hardware_id": "hw"},
        "usbupdater": {"updater_dialect": value},
    }
    return AgentSettings.from_config(from_tables(tables))


def test_setting() -> None:
    assert AgentSettings().updater_dialect == d.USBUPDATER
    for value in d.SETTING_VALUES:
        assert _settings(value).updater_dialect == value
    with pytest.raises(ConfigError, match="updater_dialect"):
        _settings("aklite-v3")
