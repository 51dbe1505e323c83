from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from usbupdater.state import DeviceState, PendingInstall, StateStore
from usbupdater.target import TargetRecord


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "usbupdater", *args], capture_output=True, text=True, timeout=60
    )


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys\n"
        "from usbupdater import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('docker', 'tuf', 'pyudev', 'securesystemslib') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_bad_usage_exits_1() -> None:
    assert run("frobnicate").returncode == 1
    assert run().returncode == 1
    assert run("status", "--bogus").returncode == 1


def test_global_flags_accepted_after_the_command(device_config: Path) -> None:
    r = run("current", "-c", str(device_config), "--log-level", "3")
    assert r.returncode == 0, r.stderr
    assert "none recorded" in r.stdout


def test_current_and_status_show_state(device_config: Path, tmp_path: Path) -> None:
    store = StateStore(tmp_path / "sota" / "usbupdater")
    v1 = TargetRecord(
        "rpi-1", 1, "a" * 64, {"shellhttpd": "hub.foundries.io/f/shellhttpd@sha256:" + "1" * 64}
    )
    v2 = TargetRecord("rpi-2", 2, "b" * 64)
    store.save(DeviceState(current=v1, pending=PendingInstall(v2, v1, True, "t")))
    r = run("-c", str(device_config), "current")
    assert r.returncode == 0, r.stderr
    assert "Target: rpi-1" in r.stdout and "Ostree hash: " + "a" * 64 in r.stdout
    assert "(on) shellhttpd -> hub.foundries.io" in r.stdout and "Pending: rpi-2" in r.stdout
    r = run("-c", str(device_config), "status", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["current"]["name"] == "rpi-1" and doc["pending"]["target"]["name"] == "rpi-2"
    assert doc["service"] is None  # no watch service has written its status file


def test_status_shows_the_services_phase(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    status.write_text('{"phase": "installing", "message": "verifying the bundle"}')
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[provision]\nprimary_ecu_hardware_id = "hw"\n'
        f'[storage]\npath = "{tmp_path}"\n[usbupdater]\nstatus_file = "{status}"\n'
    )
    r = run("status", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "Service: installing: verifying the bundle" in r.stdout


def test_config_error_is_one_line_with_code_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[pacman\n")
    r = run("-c", str(bad), "status")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and str(bad) in r.stderr


def test_corrupt_state_is_reported(device_config: Path, tmp_path: Path) -> None:
    (tmp_path / "sota" / "usbupdater").mkdir(parents=True)
    (tmp_path / "sota" / "usbupdater" / "state.json").write_text("{")
    r = run("-c", str(device_config), "status")
    assert r.returncode == 1 and "corrupt" in r.stderr


def test_current_json(device_config: Path, tmp_path: Path) -> None:
    r = run("current", "-c", str(device_config), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "target": None,
        "version": None,
        "commit": None,
        "apps": {},
        "pending": None,
    }
    store = StateStore(tmp_path / "sota" / "usbupdater")
    v1 = TargetRecord(
        "rpi-1",
        1,
        "a" * 64,
        {"a": "hub/a@sha256:" + "1" * 64},
        {"docker_compose_apps": {"a": {"uri": "x"}, "b": {"uri": "hub/b"}}},
    )
    store.save(
        DeviceState(
            current=v1, pending=PendingInstall(TargetRecord("rpi-2", 2, "b"), v1, True, "t")
        )
    )
    doc = json.loads(run("current", "-c", str(device_config), "--json").stdout)
    assert doc["target"] == "rpi-1" and doc["version"] == 1 and doc["commit"] == "a" * 64
    assert doc["apps"] == {
        "a": {"uri": "hub/a@sha256:" + "1" * 64, "on": True},
        "b": {"uri": "hub/b", "on": False},
    }
    assert doc["pending"] == "rpi-2"


def test_install_and_run_json_print_one_object(device_config: Path, tmp_path: Path) -> None:
    r = run("run", "-c", str(device_config), "--json")
    assert r.returncode == 40, r.stderr  # nothing pending: the exit code is unchanged
    doc = json.loads(r.stdout)
    assert doc["command"] == "run" and doc["code"] == 40 and doc["message"]
    assert set(doc) == {"command", "code", "message", "target"}
    r = run("install", "-c", str(device_config), "-s", str(tmp_path / "no-bundle"), "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == doc["code"] != 0 and doc["command"] == "install"
    assert len(r.stdout.splitlines()) == 1


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("usbupdater ")
