"""The service driving aklite-offline stand-ins of each dialect (aklite_offline_standin.py)
against real udevd and ext4 sticks on loop devices: exit codes to actions, `current` returning 1,
`auto` from the usage text, and aktualizr-lite held stopped across every reboot of the update.

A reboot is played as in test_plumbing: the service stops, /run is wiped; a boot that starts
aktualizr-lite before the service is played by creating the stand-in's "running" file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.agent.conftest import HERE, Agent, recorded, stateful_aklite, wait_for
from tests.agent.test_plumbing import Rig, fake_bundle, stick_reports
from usbupdater.sim.sticks import Sticks

pytestmark = pytest.mark.integration

STANDIN = HERE / "aklite_offline_standin.py"


@pytest.fixture
def standin(tmp_path: Path, sticks: Sticks, agents: list[Agent]) -> Any:
    def make(dialect: str, plan: dict[str, Any], running: bool = True) -> Rig:
        aklite = stateful_aklite(tmp_path)
        if running:
            (tmp_path / "aklite.running").touch()
        plan = {"events": str(tmp_path / "events.log"), **plan}
        r = Rig(
            tmp_path,
            sticks,
            plan,
            f'updater_dialect = "{dialect}"\n',
            updater=STANDIN,
            aklite=aklite,
        )
        agents.append(r.agent)
        return r

    return make


def steps(tmp_path: Path) -> list[str]:
    """The recorded order of what matters here: aktualizr-lite, the updater, engine, reboots."""
    return [
        e
        for e in recorded(tmp_path)
        if not e.startswith(("notify", "updater current", "aklite-active"))
    ]


def resolved(r: Rig) -> Optional[str]:
    for rec in r.agent.log_records():
        if rec.get("event") == "updater dialect":
            return str(rec["dialect"])
    return None


def final_report(sticks: Sticks, img: Path, tmp_path: Path) -> dict[str, Any]:
    sticks.detach(img)
    (final,) = [d for d in stick_reports(sticks, img, tmp_path) if d["result"] != "rebooting"]
    return final


@pytest.mark.parametrize(
    ("dialect", "era", "code", "detected"),
    [
        ("aklite-v2", "mp-95", 10, None),
        ("aklite-v1", "mp-91", 101, None),
        ("aklite-v1", "mp-92", 10, None),
        ("auto", "mp-95", 10, "aklite-v2"),
        ("auto", "mp-91", 101, "aklite"),
    ],
)
def test_apps_only_install_engine_restart_run_0(
    standin: Any,
    sticks: Sticks,
    tmp_path: Path,
    dialect: str,
    era: str,
    code: int,
    detected: Optional[str],
) -> None:
    r = standin(
        dialect,
        {
            "era": era,
            "install": [code],
            "run": [0],
            "current": "t-1",
            "current_after": {"run": "t-3"},
        },
    )
    r.agent.start()
    r.agent.wait_status(lambda s: s.get("phase") == "idle", what="idle")
    img = sticks.image(fake_bundle(tmp_path / "content"))
    sticks.attach(img)
    st = r.agent.wait_status(lambda s: s.get("phase") == "safe-to-remove", what="done")
    assert st["result"] == "updated", st
    assert st["target"] == "t-3"  # read from `current`, which returned 1
    assert steps(tmp_path) == [
        "aklite-stop",
        f"updater install {code}",
        "engine-restart",
        "updater run 0",
        "aklite-start",
    ]
    assert resolved(r) == detected
    r.agent.stop()
    final = final_report(sticks, img, tmp_path)
    assert (final["old_target"], final["new_target"]) == ("t-1", "t-3")
    assert [(s["code"], s["dialect"]) for s in final["steps"]] == [
        (code, detected or dialect),
        (0, detected or dialect),
    ]
    assert final["errors"] == []


@pytest.mark.parametrize(
    ("dialect", "era", "fw_code", "detected"),
    [
        ("aklite-v2", "mp-95", 5, None),
        ("aklite-v1", "mp-91", 90, None),
        ("auto", "mp-94", 5, "aklite-v2"),
        ("auto", "mp-92", 90, "aklite"),
    ],
)
def test_install_100_reboot_run_boot_firmware_reboot(
    standin: Any,
    sticks: Sticks,
    tmp_path: Path,
    dialect: str,
    era: str,
    fw_code: int,
    detected: Optional[str],
) -> None:
    """install 100 -> reboot -> run says "boot firmware updated" -> a second reboot confirms it.
    aktualizr-lite ran before the job; each boot starts it before the service (the worst case):
    the service stops it before anything else, and starts it only once the job is over."""
    running = tmp_path / "aklite.running"
    r = standin(
        dialect,
        {"era": era, "install": [100], "run": [fw_code], "current": "t-1"},
    )
    r.agent.start()
    r.agent.wait_status(lambda s: s.get("phase") == "idle", what="idle")
    img = sticks.image(fake_bundle(tmp_path / "content"))
    sticks.attach(img)
    for n in (1, 2):
        r.agent.wait_status(lambda s: s.get("phase") == "rebooting", what="rebooting")
        wait_for(lambda n=n: recorded(tmp_path).count("reboot") == n, what=f"reboot {n}")
        assert not running.exists()  # not started again before the reboot
        r.reboot()
        running.touch()  # the boot started aktualizr-lite before the service
        r.plan.write_text(json.dumps({**json.loads(r.plan.read_text()), "current": "t-2"}))
        r.agent.start()
    st = r.agent.wait_status(lambda s: s.get("phase") == "safe-to-remove", what="done")
    assert st["result"] == "updated", st
    assert running.exists()
    assert steps(tmp_path) == [
        "aklite-stop",
        "updater install 100",
        "reboot",
        "aklite-stop",  # at boot, before `run`
        f"updater run {fw_code}",
        "reboot",
        "aklite-stop",
        "aklite-start",  # the job is over
    ]
    assert resolved(r) == detected
    r.agent.stop()
    final = final_report(sticks, img, tmp_path)
    assert [s["code"] for s in final["steps"]] == [100, fw_code]
    assert (final["old_target"], final["new_target"], final["reboots"]) == ("t-1", "t-2", 2)


def test_aklite_not_running_before_is_not_started_after(
    standin: Any, sticks: Sticks, tmp_path: Path
) -> None:
    """aktualizr-lite was stopped when the job began: the boot starts it (an enabled unit), the
    service stops it for the `run`, and does not start it at the end."""
    running = tmp_path / "aklite.running"
    r = standin("aklite-v2", {"era": "mp-95", "install": [100], "run": [0]}, running=False)
    r.agent.start()
    r.agent.wait_status(lambda s: s.get("phase") == "idle", what="idle")
    img = sticks.image(fake_bundle(tmp_path / "content"))
    sticks.attach(img)
    wait_for(lambda: "reboot" in recorded(tmp_path), what="the reboot")
    r.reboot()
    running.touch()
    r.agent.start()
    st = r.agent.wait_status(lambda s: s.get("phase") == "safe-to-remove", what="done")
    assert st["result"] == "updated", st
    assert steps(tmp_path) == ["updater install 100", "reboot", "aklite-stop", "updater run 0"]
    assert not running.exists()


def test_the_usbupdater_dialect_does_not_read_aklite_codes(
    standin: Any, sticks: Sticks, tmp_path: Path
) -> None:
    """The same v2 stand-in read as usbupdater: 10 is no code of ours, the job fails (and the
    report, with no verified install code, is not written): the dialect is what makes it work."""
    r = standin("usbupdater", {"era": "mp-95", "install": [10], "run": [0]})
    r.agent.start()
    img = sticks.image(fake_bundle(tmp_path / "content"))
    sticks.attach(img)
    st = r.agent.wait_status(lambda s: s.get("phase") == "safe-to-remove", what="done")
    assert st["result"] == "failed" and st["code"] == 10, st
    assert steps(tmp_path) == ["aklite-stop", "updater install 10", "aklite-start"]
