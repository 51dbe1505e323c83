"""Unit tests of the agent's pure parts and small adapters (no udev, no mounts)."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import pytest

from usbupdater import config
from usbupdater.agent import policy, report
from usbupdater.agent.backend import LineReader, Progress, Updater, line_priority, parse_current
from usbupdater.agent.filter import Stick, refusal
from usbupdater.agent.journal import JobRecord, Journal, boot_token
from usbupdater.agent.media import NoBundle, fill, find_bundle, mount_options, mountpoint_name
from usbupdater.agent.settings import AgentSettings
from usbupdater.agent.status import StatusBoard
from usbupdater.agent.watcher import Debouncer, UEvent
from usbupdater.errors import ConfigError

STICK = {
    "SUBSYSTEM": "block",
    "DEVPATH": "/devices/pci0000:00/usb1/1-1/host6/block/sdb/sdb1",
    "DEVNAME": "/dev/sdb1",
    "DEVTYPE": "partition",
    "ID_BUS": "usb",
    "ID_FS_USAGE": "filesystem",
    "ID_FS_TYPE": "vfat",
    "ID_FS_UUID": "1234-ABCD",
    "ID_FS_LABEL": "UPDATE",
    "ID_SERIAL_SHORT": "4C530001",
}


def cfg_with(tmp_path: Path, usbupdater: str = "", bootloader: str = "") -> config.Config:
    f = tmp_path / "c.toml"
    f.write_text(
        '[provision]\nprimary_ecu_hardware_id = "hw"\nprimary_ecu_serial = "SN1"\n'
        f'[storage]\npath = "{tmp_path / "sota"}"\n'
        f"[bootloader]\n{bootloader}\n[usbupdater]\n{usbupdater}\n"
    )
    return config.load([f])


# --- settings ---


def test_settings_defaults(tmp_path: Path) -> None:
    s = AgentSettings.from_config(cfg_with(tmp_path), ("rel.toml",))
    assert s.updater_command == (sys.executable, "-m", "usbupdater")
    assert s.updater_args("run") == [
        sys.executable,
        "-m",
        "usbupdater",
        "run",
        "-c",
        os.path.abspath("rel.toml"),
    ]
    assert s.match_buses == ("usb",) and "vfat" in s.match_fs_types
    assert s.agent_state_dir == tmp_path / "sota" / "usbupdater" / "agent"
    assert s.media_dir == Path("/run/usbupdater/media")
    assert s.status_file == Path("/run/usbupdater/status.json")
    assert s.reboot_command == ("/sbin/reboot",)
    assert s.hardware_id == "hw" and s.device_serial == "SN1"


def test_settings_overrides(tmp_path: Path) -> None:
    s = AgentSettings.from_config(
        cfg_with(
            tmp_path,
            'updater_command = "/usr/bin/aklite-offline"\nmatch_buses = ""\n'
            'match_properties = "ID_FS_LABEL=UPD*, ID_SERIAL_SHORT=4C53*"\n'
            'mount_command = "fusefat -o {options} {device} {mountpoint}"\n'
            'runtime_dir = "/tmp/rt"\nnotify_command = "/bin/led \'a b\'"\n',
            'reboot_command = "/bin/systemctl reboot"',
        )
    )
    assert s.updater_command == ("/usr/bin/aklite-offline",)
    assert s.match_buses == ()
    assert s.match_properties == (("ID_FS_LABEL", "UPD*"), ("ID_SERIAL_SHORT", "4C53*"))
    assert s.media_dir == Path("/tmp/rt/media")
    assert s.notify_command == ("/bin/led", "a b")
    assert s.reboot_command == ("/bin/systemctl", "reboot")


@pytest.mark.parametrize(
    "bad",
    [
        'match_properties = "NOEQUALS"',
        "settle_time = -1",
        'notify_command = "\'"',
        'updater_command = ""',
        "write_report = 7",
    ],
)
def test_settings_errors_name_the_key(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match=r"\[usbupdater\]"):
        AgentSettings.from_config(cfg_with(tmp_path, bad))


# --- filter ---


def test_filter_accepts_a_usb_partition() -> None:
    assert refusal(STICK, AgentSettings()) is None
    st = Stick.from_properties(STICK)
    assert st.devnode == "/dev/sdb1" and st.serial == "4C530001" and st.fs_uuid == "1234-ABCD"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"ID_BUS": "ata"}, "bus 'ata'"),
        ({"ID_CDROM": "1", "ID_FS_TYPE": "iso9660"}, "optical drive"),
        ({"ID_FS_USAGE": ""}, "no filesystem"),
        ({"ID_FS_USAGE": "crypto"}, "no filesystem"),
        ({"ID_FS_TYPE": "ntfs"}, "filesystem 'ntfs'"),
        ({"DEVTYPE": "usb_device"}, "device type"),
        ({"SUBSYSTEM": "usb"}, "not a block device"),
        ({"DEVNAME": ""}, "no device node"),
    ],
)
def test_filter_refusals(change: dict[str, str], why: str) -> None:
    reason = refusal({**STICK, **change}, AgentSettings())
    assert reason is not None and why in reason


def test_filter_match_properties_and_any_bus() -> None:
    s = AgentSettings(match_buses=(), match_properties=(("ID_FS_LABEL", "UPD*"),))
    assert refusal({**STICK, "ID_BUS": ""}, s) is None
    assert "ID_FS_LABEL" in str(refusal({**STICK, "ID_FS_LABEL": "PHOTOS"}, s))


# --- debouncer ---


def ev(action: str, key: str = "/d/sdb1", fs: bool = True) -> UEvent:
    props = {"DEVPATH": key, "ID_FS_USAGE": "filesystem" if fs else ""}
    return UEvent(action, props)


def test_debouncer_collapses_a_storm_into_its_last_event() -> None:
    d = Debouncer(0.5)
    for i in range(200):
        d.feed(ev("add" if i % 2 else "remove"), now=i * 0.005)
    assert d.due(1.0) == []  # still within 0.5 s of the last event (0.995)
    (last,) = d.due(1.5)
    assert last.action == "add" and last.present
    assert d.next_deadline() is None


def test_debouncer_keys_are_independent() -> None:
    d = Debouncer(0.2)
    d.feed(ev("add", "/a"), 0.0)
    d.feed(ev("add", "/b"), 0.1)
    assert [e.key for e in d.due(0.25)] == ["/a"]
    assert d.next_deadline() == pytest.approx(0.3)
    assert "/b" in d


def test_uevent_presence() -> None:
    assert not ev("remove").present
    assert not ev("change", fs=False).present  # medium gone / loop detached
    assert ev("change").present


# --- backend ---


def test_line_reader() -> None:
    seen: list[Progress] = []
    r = LineReader(seen.append)
    r.feed('{"event": "progress", "phase": "copying-rootfs", "percent": 40, "message": "m"}\n')
    r.feed('{"event": "progress", "phase": "verifying", "percent": null, "message": ""}\n')
    r.feed('{"event": "verify failed", "level": "error", "error": "bad sig"}\n')
    r.feed("not json at all\n")
    r.feed("{broken json\n")
    r.feed("usbupdater: targets.json: signature threshold not met\n")
    assert seen == [Progress("copying-rootfs", 40.0, "m"), Progress("verifying", None, "")]
    assert r.errors == ["verify failed: bad sig"]
    assert r.reason == "targets.json: signature threshold not met"
    assert len(r.tail) == 6
    r.feed('<6>{"event": "progress", "phase": "p", "done_bytes": 30, "total_bytes": 120}\n')
    r.feed('{"event": "progress", "phase": "p", "done_bytes": 3, "total_bytes": 0, "percent": 7}')
    assert seen[-2:] == [Progress("p", 25.0, "", 30, 120), Progress("p", 7.0, "", 3, 0)]
    r.feed('<3>{"event": "apply failed", "level": "error"}\n')  # a journald prefix is no matter
    assert r.errors[-1] == "apply failed"


def test_line_priority_of_the_cores_lines() -> None:
    assert line_priority('{"event": "x", "level": "error"}') == 3
    assert line_priority('{"event": "x", "level": "warning"}') == 4
    assert line_priority('{"event": "x", "level": "debug"}') == 7
    assert line_priority("usbupdater: targets.json: signature threshold not met") == 3
    assert line_priority("<2>anything") == 2
    assert line_priority("plain text") == line_priority("{broken") == 6


def test_parse_current() -> None:
    assert parse_current("Target: intel-lmp-2\nVersion: 2\n") == "intel-lmp-2"
    assert parse_current("Target: none recorded (this device ...)\n") is None
    assert parse_current("garbage") is None


def test_updater_call_codes_progress_and_timeout(tmp_path: Path) -> None:
    script = tmp_path / "u.py"
    script.write_text(
        "import sys, json, time\n"
        "cmd = sys.argv[1]\n"
        "if cmd == 'slow': time.sleep(30)\n"
        "print(json.dumps({'event': 'progress', 'phase': cmd, 'percent': 50}), file=sys.stderr)\n"
        "print('Target: t-7')\n"
        "print('usbupdater: it broke', file=sys.stderr)\n"
        "sys.exit(80 if cmd == 'install' else 0)\n"
    )
    echo = (tmp_path / "echo.log").open("w")
    u = Updater(AgentSettings(updater_command=(sys.executable, str(script))), echo=echo)
    got: list[Progress] = []
    out = u.call(["install", "-s", "/x"], got.append)
    assert out.code == 80 and out.reason == "it broke" and got[0].percent == 50.0
    assert out.to_json()["code"] == 80
    assert u.current() == "t-7"
    slow = u.call(["slow"], timeout=0.5)
    assert slow.code is None and "did not finish" in slow.reason
    missing = Updater(AgentSettings(updater_command=("/nonexistent/updater",))).call(["run"])
    assert missing.code is None and "cannot start" in missing.reason
    echo.close()
    assert "usbupdater: it broke" in (tmp_path / "echo.log").read_text()


# --- journal ---


def test_journal_marker_and_handled(tmp_path: Path) -> None:
    j = Journal(tmp_path / "agent")
    assert j.load() is None
    rec = JobRecord(bundle="u:.:abc", stick={"devnode": "/dev/sdb1"}, step="reboot")
    rec.outcomes.append({"command": "install", "code": 100})
    j.save(rec)
    assert j.load() == rec
    j.clear()
    assert j.load() is None
    assert j.handled("u:.:abc") is None
    j.mark_handled("u:.:abc", "updated", "t-2")
    assert j.handled("u:.:abc")["result"] == "updated"  # type: ignore[index]


def test_journal_damaged_marker_is_set_aside(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.marker_path.write_text("{not json")
    assert j.load() is None
    assert (tmp_path / "marker.damaged").exists()


def test_boot_token(tmp_path: Path) -> None:
    f = tmp_path / "run" / "boot-token"
    t = boot_token(f)
    assert boot_token(f) == t
    f.unlink()  # a reboot wipes the tmpfs
    assert boot_token(f) != t


# --- media ---


def test_mount_argv_and_options() -> None:
    s = AgentSettings()
    assert "fmask=0133" in mount_options(s, "vfat") and "ro" in mount_options(s, "vfat")
    assert "fmask" not in mount_options(s, "ext4")
    assert mount_options(s, "ext4", rw=True).startswith("rw,")
    argv = fill(s.mount_command, type="vfat", options="ro", device="/dev/sdb1", mountpoint="/m")
    assert argv == ["mount", "-t", "vfat", "-o", "ro", "/dev/sdb1", "/m"]
    assert fill(("x{unknown}",)) == ["x{unknown}"]
    assert mountpoint_name("/dev/sdb1") == "sdb1"
    assert mountpoint_name("/dev/disk/../x") == "disk_.._x"


def bundle_at(root: Path, version: int = 5) -> Path:
    (root / "tuf").mkdir(parents=True)
    (root / "tuf" / "targets.json").write_text(json.dumps({"signed": {"version": version}}))
    snapshot = {"signed": {"meta": {"targets.json": {"version": version}}}}
    (root / "tuf" / "snapshot.json").write_text(json.dumps(snapshot))
    return root


def test_find_bundle_top_level_or_one_directory(tmp_path: Path) -> None:
    b = find_bundle(bundle_at(tmp_path / "a"), "UUID-1")
    assert b.path == tmp_path / "a" and b.targets_version == 5
    assert b.identity.startswith("UUID-1:.:")
    stick = tmp_path / "s"
    bundle_at(stick / "offline-update")
    (stick / "._offline-update").mkdir()  # a macOS sidecar
    b2 = find_bundle(stick)
    assert b2.path == stick / "offline-update" and ":offline-update:" in b2.identity
    bundle_at(stick / "second")
    with pytest.raises(NoBundle, match="several bundles"):
        find_bundle(stick)
    empty = tmp_path / "e"
    empty.mkdir()
    with pytest.raises(NoBundle, match="no update bundle"):
        find_bundle(empty)


def test_find_bundle_refuses_symlinks(tmp_path: Path) -> None:
    real = bundle_at(tmp_path / "elsewhere")
    stick = tmp_path / "s"
    stick.mkdir()
    (stick / "tuf").symlink_to(real / "tuf")
    with pytest.raises(NoBundle):
        find_bundle(stick)


def test_identity_changes_with_content(tmp_path: Path) -> None:
    a = find_bundle(bundle_at(tmp_path / "a", 5), "U").identity
    b = find_bundle(bundle_at(tmp_path / "b", 6), "U").identity
    c = find_bundle(bundle_at(tmp_path / "c", 5), "V").identity
    assert len({a, b, c}) == 3


# --- report ---


def test_report_content_and_text(tmp_path: Path) -> None:
    rec = JobRecord(bundle="u:.:x", stick={"devnode": "/dev/sdb1", "serial": "4C53"})
    rec.old_target, rec.new_target = "t-1", "t-2"
    rec.outcomes = [
        {"command": "install", "code": 100, "reason": "", "errors": [], "time": "T1"},
        {"command": "run", "code": 99, "reason": "web failed", "errors": ["e1"], "time": "T2"},
    ]
    s = AgentSettings(hardware_id="hw", device_serial="SN")
    doc = report.build(rec, s, policy.ROLLED_BACK, "rolled back", now=0)
    assert doc["errors"] == ["run exited 99: web failed", "e1"]
    txt = report.text(doc)
    assert "ROLLED-BACK" in txt and "t-1 -> t-2" in txt and "run: exit 99 (web failed)" in txt
    path = report.write(tmp_path, s, doc)
    assert json.loads(path.read_text())["result"] == "rolled-back"
    assert path.with_suffix(".txt").exists()


def test_report_refuses_a_symlinked_directory(tmp_path: Path) -> None:
    stick, outside = tmp_path / "stick", tmp_path / "outside"
    stick.mkdir()
    outside.mkdir()
    (stick / "usbupdater-reports").symlink_to(outside)
    rec = JobRecord(bundle="b", stick={})
    doc = report.build(rec, AgentSettings(), "failed", "m")
    with pytest.raises(report.UnsafeStick):
        report.write(stick, AgentSettings(), doc)
    assert not list(outside.iterdir())


# --- status ---


def test_status_file_notify_and_console(tmp_path: Path) -> None:
    log = tmp_path / "notify.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(
        "#!/bin/sh\n"
        f'echo "$1|$2|$USBUPDATER_PERCENT|$USBUPDATER_RESULT|$USBUPDATER_DONE_BYTES" >> {log}\n'
    )
    hook.chmod(0o755)
    console = tmp_path / "console"
    s = AgentSettings(
        status_file=tmp_path / "run" / "status.json",
        notify_command=(str(hook),),
        console=str(console),
    )
    now = [0.0]
    b = StatusBoard(s, clock=lambda: now[0])
    b.set("installing", "verifying", target=None)
    seen = []
    for t, pct in ((0.1, 1), (0.5, 2), (1.2, 15), (1.3, 16), (1.4, 9), (2.5, 55), (2.6, None)):
        now[0] = t
        b.progress(pct, "copying", "copying-rootfs", None if pct is None else pct * 10, 1000)
        seen.append(json.loads(s.status_file.read_text())["percent"])
    assert seen == [1, 2, 15, 16, 16, 55, 55]  # a late smaller record never shows
    assert json.loads(s.status_file.read_text())["done_bytes"] == 550
    now[0] = 2.7
    b.set("safe-to-remove", "done", result="updated")
    doc = json.loads(s.status_file.read_text())
    assert doc["phase"] == "safe-to-remove" and doc["safe_to_remove"] is True
    assert doc["result"] == "updated" and doc["percent"] is None and doc["done_bytes"] is None
    assert doc["time"] == "1970-01-01T00:00:02Z"
    assert log.read_text().splitlines() == [
        "installing|verifying|||",
        "installing|copying|1||10",  # each 10 % step, with the same numbers
        "installing|copying|15||150",
        "installing|copying|55||550",
        "safe-to-remove|done||updated|",
    ]
    lines = console.read_text().splitlines()
    assert lines[0] == "usbupdater: installing verifying"
    assert [ln.split()[2] for ln in lines[1:-1]] == ["15%", "55%"]  # at most one a second
    assert lines[-1] == "usbupdater: safe-to-remove done"  # a phase change always shows


def test_status_board_two_writers(tmp_path: Path) -> None:
    """The dispatcher (`remember`) and the worker (`set`, `progress`) write at once: `set`
    builds a new document from the old one, so without the lock a field the dispatcher added
    meanwhile would be lost."""
    s = AgentSettings(status_file=tmp_path / "status.json")
    b = StatusBoard(s, clock=lambda: 0.0)
    b.set("installing", "verifying")
    n = 5000
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        t = threading.Thread(target=lambda: [b.remember(**{f"k{i}": i}) for i in range(n)])
        t.start()
        while t.is_alive():
            b.set("installing", "copying")
            b.progress(50, "copying", "copying-rootfs")
        t.join()
    finally:
        sys.setswitchinterval(old)
    snap = b.snapshot()
    assert [i for i in range(n) if snap.get(f"k{i}") != i] == []
    assert snap["phase"] == "installing" and snap["percent"] == 50
