"""Cases that need umockdev's fake sysfs and uevents; run by test_umockdev.py under
`umockdev-wrapper` (collected only there: the file name does not match test_*.py)."""

from __future__ import annotations

import json
import os
import queue
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import HERE, Agent, write_script
from usbupdater.agent.filter import refusal
from usbupdater.agent.settings import AgentSettings
from usbupdater.agent.watcher import UdevWatcher, UEvent

if "umockdev" not in os.environ.get("LD_PRELOAD", ""):
    pytest.skip("run under umockdev-wrapper", allow_module_level=True)

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev  # noqa: E402


def props(*pairs: str) -> list[str]:
    return list(pairs)


def add_stick(tb: Any) -> str:
    """A USB stick: the disk holds a partition table, its partition a FAT filesystem."""
    usb = tb.add_device(
        "usb",
        "usb1/1-1",
        None,
        ["idVendor", "0781", "idProduct", "5567"],
        props("DEVTYPE", "usb_device"),
    )
    disk = tb.add_device(
        "block",
        "sdb",
        usb,
        ["size", "31266816"],
        props(
            "DEVNAME",
            "/dev/sdb",
            "DEVTYPE",
            "disk",
            "ID_BUS",
            "usb",
            "ID_PART_TABLE_TYPE",
            "dos",
            "ID_SERIAL_SHORT",
            "4C530001",
        ),
    )
    part: str = tb.add_device(
        "block",
        "sdb1",
        disk,
        ["size", "31264768"],
        props(
            "DEVNAME",
            "/dev/sdb1",
            "DEVTYPE",
            "partition",
            "ID_BUS",
            "usb",
            "ID_FS_USAGE",
            "filesystem",
            "ID_FS_TYPE",
            "vfat",
            "ID_FS_UUID",
            "1234-ABCD",
            "ID_FS_LABEL",
            "UPDATE",
            "ID_SERIAL_SHORT",
            "4C530001",
        ),
    )
    return part


def test_device_filter_through_the_watcher() -> None:
    tb = UMockdev.Testbed.new()
    stick = add_stick(tb)
    sata = tb.add_device(
        "block",
        "sda",
        None,
        ["size", "500000000"],
        props(
            "DEVNAME",
            "/dev/sda",
            "DEVTYPE",
            "disk",
            "ID_BUS",
            "ata",
            "ID_FS_USAGE",
            "filesystem",
            "ID_FS_TYPE",
            "ext4",
        ),
    )
    cdrom = tb.add_device(
        "block",
        "sr0",
        None,
        ["size", "1000"],
        props(
            "DEVNAME",
            "/dev/sr0",
            "DEVTYPE",
            "disk",
            "ID_BUS",
            "usb",
            "ID_CDROM",
            "1",
            "ID_FS_USAGE",
            "filesystem",
            "ID_FS_TYPE",
            "iso9660",
        ),
    )
    bare = tb.add_device(
        "block",
        "sdc",
        None,
        ["size", "1000"],
        props("DEVNAME", "/dev/sdc", "DEVTYPE", "disk", "ID_BUS", "usb"),
    )
    q: queue.Queue[UEvent] = queue.Queue()
    w = UdevWatcher(q.put, lambda: None)
    w.start()
    try:
        for syspath in (stick, sata, cdrom, bare):
            tb.uevent(syspath, "add")
        events = [q.get(timeout=5) for _ in range(4)]
    finally:
        w.stop()
    s = AgentSettings()
    verdicts = {ev.props["DEVNAME"]: refusal(ev.props, s) for ev in events}
    assert verdicts["/dev/sdb1"] is None
    assert verdicts["/dev/sda"] == "bus 'ata' not in usb"
    assert verdicts["/dev/sr0"] == "optical drive"
    assert verdicts["/dev/sdc"] == "no filesystem"


def test_event_storm_installs_at_most_once(tmp_path: Path) -> None:
    tb = UMockdev.Testbed.new()
    part = add_stick(tb)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"install": [0], "current": "v1"}))
    mount = write_script(
        tmp_path / "mount.sh",
        'mkdir -p "$2/tuf" && echo \'{"signed": {"version": 7}}\' > "$2/tuf/targets.json"\n',
    )
    runtime = tmp_path / "run"
    cfg = tmp_path / "sota.toml"
    cfg.write_text(
        "[provision]\n"
        'primary_ecu_hardware_id = "intel-corei7-64"\n'
        "[storage]\n"
        f'path = "{tmp_path / "sota"}"\n'
        "[usbupdater]\n"
        f'updater_command = "{sys.executable} {HERE / "scripted_updater.py"} {plan}"\n'
        f'mount_command = "{mount} {{device}} {{mountpoint}}"\n'
        f'runtime_dir = "{runtime}"\n'
        f'media_dir = "{tmp_path / "media"}"\n'
        f'status_file = "{runtime / "status.json"}"\n'
        'console = ""\n'
        'aklite_active_command = "false"\n'
        'engine_restart_command = ""\n'
        "settle_time = 0.5\n"
    )
    agent = Agent(cfg, runtime / "status.json", tmp_path / "agent.log")
    agent.start()
    try:
        agent.wait_status(lambda s: s.get("phase") == "idle", 30, "idle")

        def storm(last: str) -> None:
            first = "add" if last == "remove" else "remove"
            t0 = time.monotonic()
            for i in range(200):
                tb.uevent(part, first if i % 2 == 0 else last)
                time.sleep(max(0.0, t0 + (i + 1) / 200 - time.monotonic()))

        def installs() -> int:
            calls = plan.with_suffix(".calls")
            if not calls.exists():
                return 0
            lines = calls.read_text().splitlines()
            return sum(1 for line in lines if json.loads(line)["argv"][0] == "install")

        storm(last="add")  # ends plugged in: one install
        agent.wait_status(lambda s: s.get("phase") == "safe-to-remove", 30, "the install")
        storm(last="remove")  # ends unplugged: nothing more
        time.sleep(1.5)
        assert installs() == 1
        assert agent.proc is not None and agent.proc.poll() is None
        records = agent.log_records()
        events = [r.get("event") for r in records]
        assert events.count("stick detected") == 1 and events.count("stick gone") == 1, events
        assert not [r for r in records if r.get("level") in ("error", "critical")], records
    finally:
        assert agent.stop() == 0
