"""Acceptance: the real `usbupdater watch` service, real udevd, ext4 sticks on loop devices, the
real `usbupdater` core and the simulated device (ostree sysroot, file-backed bootloader, private
dockerd). The reboot command records the request; the test plays the reboot (the service is
stopped, `SimDevice.reboot()` wipes /run and boots) and starts the service again."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.agent.conftest import (
    Agent,
    agent_settings_toml,
    recorded,
    stateful_aklite,
    wait_for,
    write_script,
)
from tests.agent.test_hygiene import huge_targets, vm_hwm_kib
from tests.integration.rig import Rig
from usbupdater.agent import policy
from usbupdater.agent.settings import machine_pseudonym
from usbupdater.sim.apps import AppSpec, ServiceSpec, corrupt_blob
from usbupdater.sim.dockerd import PrivateDockerd
from usbupdater.sim.factory import Factory, PublishedTarget, TargetSpec
from usbupdater.sim.setup import CORE_ARGV
from usbupdater.sim.signer import edit
from usbupdater.sim.sticks import Sticks, mounts_under, sh

pytestmark = pytest.mark.integration

NONET = {"network_mode": "none"}


def web(tag: str) -> AppSpec:
    svc = ServiceSpec(cmd=("sleep", "3600"), compose=NONET)
    return AppSpec("web", services={"main": svc}, version_tag=tag)


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    """v1 (flashed), v2 a new rootfs (install 100), v3 new apps on v1's rootfs (install 101)."""
    work = tmp_path_factory.mktemp("agent-factory")
    f = Factory(work)
    f.publish(TargetSpec(1, apps=[web("1")]))
    f.publish(TargetSpec(2, apps=[web("2")], rootfs_files={"usr/share/v": b"2"}))
    f.publish(TargetSpec(3, apps=[web("3")], same_rootfs_as="intel-corei7-64-lmp-1"))
    yield f
    shutil.rmtree(work, ignore_errors=True)


def T(factory: Factory, v: int) -> PublishedTarget:
    return factory.targets[f"intel-corei7-64-lmp-{v}"]


class Bench:
    """A simulated device, its sticks and the agent service driving the real core."""

    def __init__(
        self,
        tmp: Path,
        rig: Rig,
        sticks: Sticks,
        factory: Factory,
        extra: str,
        aklite: Optional[Path] = None,
    ) -> None:
        self.tmp = tmp
        self.rig = rig
        self.sticks = sticks
        self.factory = factory
        runtime = rig.device.run_dir / "usbupdater"  # wiped by every simulated reboot
        self.agent_cfg = tmp / "agent.toml"
        rec = write_script(tmp / "record.sh", f'echo "$@" >> {tmp / "events.log"}\n')
        self.agent_cfg.write_text(
            "[bootloader]\n"
            f'reboot_command = "{rec} reboot"\n'
            "[usbupdater]\n"
            f'agent_state_dir = "{tmp / "agent-state"}"\n'
            + agent_settings_toml(tmp, sticks, runtime, extra, aklite=aklite)
        )
        self.agent = Agent([rig.config, self.agent_cfg], runtime / "status.json", tmp / "agent.log")

    def stick(self, *versions: int, **kw: Any) -> Path:
        names = [T(self.factory, v).name for v in versions]
        dst = self.tmp / f"bundle-{'-'.join(map(str, versions))}-{len(self.sticks.attached)}"
        self.factory.write_bundle(dst, names, **kw)
        return dst

    def image(self, content: Path) -> Path:
        return self.sticks.image(content)

    def reboot(self) -> str:
        """The service is stopped by the shutdown, then the device boots."""
        self.agent.stop()
        return self.rig.reboot()

    def wait_done(self, timeout: float = 120) -> dict[str, Any]:
        return self.agent.wait_status(
            lambda s: s.get("phase") == "safe-to-remove", timeout, "safe-to-remove"
        )

    def wait_reboot_request(self, n: int = 1, timeout: float = 120) -> None:
        self.agent.wait_status(lambda s: s.get("phase") == "rebooting", timeout, "rebooting")
        wait_for(lambda: recorded(self.tmp).count("reboot") >= n, timeout, "the reboot command")

    def installs(self) -> list[dict[str, Any]]:
        return [
            r
            for r in self.agent.log_records()
            if r.get("event") == "calling the updater" and "install" in r.get("argv", [])
        ]

    def reports(self, img: Path) -> list[dict[str, Any]]:
        out = sh("debugfs", "-R", "ls -l /usbupdater-reports", str(img), check=False).stdout
        docs = []
        for name in sorted(out.split()):
            if name.endswith(".json"):
                dump = self.tmp / f"report-{name}"
                sh("debugfs", "-R", f"dump /usbupdater-reports/{name} {dump}", str(img))
                docs.append(json.loads(dump.read_text()))
        return docs


@pytest.fixture
def bench(
    tmp_path: Path,
    factory: Factory,
    dockerd: PrivateDockerd,
    sticks: Sticks,
    agents: list[Agent],
) -> Iterator[Any]:
    made: list[Bench] = []

    def make(extra: str = "", aklite: Optional[Path] = None) -> Bench:
        rig = Rig.create(tmp_path / "dev", factory, dockerd, T(factory, 1).commit)
        b = Bench(tmp_path, rig, sticks, factory, extra, aklite)
        agents.append(b.agent)
        made.append(b)
        return b

    try:
        yield make
    finally:
        for b in made:
            b.agent.kill()
            for point in mounts_under(tmp_path):
                sh("umount", "-l", point, check=False)
            b.rig.cleanup_engine()
            b.rig.device.destroy()


def test_hotplug_install_100_reboot_run_0(bench: Any) -> None:
    b = bench()
    b.agent.start()
    b.agent.wait_status(lambda s: s.get("phase") == "idle", 30, "idle")
    img = b.image(b.stick(2))
    b.sticks.attach(img)
    b.wait_reboot_request()
    assert b.rig.state().pending is not None
    assert not mounts_under(b.tmp / "media")  # unmounted before the reboot
    booted = b.reboot()
    assert booted == T(b.factory, 2).commit
    b.agent.start()
    st = b.wait_done()
    assert st["result"] == "updated", st
    assert st["target"] == T(b.factory, 2).name
    assert b.rig.state().current.name == T(b.factory, 2).name
    assert "web/main" in b.rig.running()
    # Left plugged in across another restart: handled once.
    b.agent.stop()
    b.agent.start()
    wait_for(
        lambda: any(r["event"] == "bundle already handled" for r in b.agent.log_records()),
        30,
        "the handled bundle to be recognised",
    )
    assert len(b.installs()) == 1
    b.agent.stop()
    events = recorded(b.tmp)
    assert events.count("reboot") == 1
    assert ("aklite-stop" in events and events[-1].startswith("notify")) or "aklite-start" in events
    reports = b.reports(img)
    final = [d for d in reports if d["result"] == "updated"]
    assert len(final) == 1, reports
    assert final[0]["new_target"] == T(b.factory, 2).name
    assert [s["code"] for s in final[0]["steps"]] == [100, 0]
    assert final[0]["device"]["hardware_id"] == b.factory.hardware_id


def test_aktualizr_lite_stays_stopped_across_the_reboot(bench: Any, tmp_path: Path) -> None:
    """aktualizr-lite runs when the stick arrives; the real core installs a new rootfs (100).
    Recorded order: stop before install ... reboot ... (the boot started it) stop before `run`
    ... start after `run`; never a start between install and run."""
    running = tmp_path / "aklite.running"
    running.touch()
    log = tmp_path / "events.log"
    wrapper = write_script(
        tmp_path / "updater.sh",
        f'[ "$1" = current ] || echo "updater $1" >> {log}\nexec {shlex.join(CORE_ARGV)} "$@"\n',
    )
    b = bench(f'updater_command = "{wrapper}"\n', aklite=stateful_aklite(tmp_path))
    b.agent.start()
    b.agent.wait_status(lambda s: s.get("phase") == "idle", 30, "idle")
    img = b.image(b.stick(2))
    b.sticks.attach(img)
    b.wait_reboot_request()
    assert not running.exists()
    assert b.reboot() == T(b.factory, 2).commit
    running.touch()  # the boot started aktualizr-lite before the service (the worst case)
    b.agent.start()
    st = b.wait_done()
    assert st["result"] == "updated", st
    assert running.exists()
    b.agent.stop()
    order = [e for e in recorded(tmp_path) if not e.startswith(("notify", "aklite-active"))]
    assert order == [
        "aklite-stop",
        "updater install",
        "reboot",
        "aklite-stop",
        "updater run",
        "aklite-start",
    ]


def test_coldplug_install_101_engine_restart_run_0(bench: Any) -> None:
    b = bench()
    img = b.image(b.stick(3))
    b.sticks.attach(img)
    sh("udevadm", "settle", "--timeout=10")
    b.agent.start()
    st = b.wait_done()
    assert st["result"] == "updated", st
    assert "engine-restart" in recorded(b.tmp)
    assert "reboot" not in recorded(b.tmp)
    assert b.rig.state().current.name == T(b.factory, 3).name
    b.agent.stop()
    (final,) = [d for d in b.reports(img) if d["result"] == "updated"]
    assert [s["code"] for s in final["steps"]] == [101, 0]


def test_stick_without_bundle_is_ignored(bench: Any, tmp_path: Path) -> None:
    b = bench()
    content = tmp_path / "photos"
    content.mkdir()
    (content / "holiday.jpg").write_bytes(b"\xff\xd8 not an update")
    b.agent.start()
    b.agent.wait_status(lambda s: s.get("phase") == "idle", 30, "idle")
    img = b.image(content)
    b.sticks.attach(img)
    st = b.agent.wait_status(lambda s: "no update bundle" in s.get("message", ""), 30, "ignored")
    assert st["phase"] == "idle" and st["safe_to_remove"]
    ignored = [r for r in b.agent.log_records() if r.get("event") == "stick ignored"]
    assert len(ignored) == 1
    assert not b.installs()
    assert not mounts_under(b.tmp / "media")


def image_sha256(img: Path) -> str:
    h = hashlib.sha256()
    with open(img, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_tampered_bundle_gets_no_report_stick_and_device_unchanged(bench: Any) -> None:
    """Metadata that does not verify: the stick proved nothing, so it is not remounted
    read-write and learns nothing about the device; not one byte of it changes."""
    b = bench()
    before = b.rig.snapshot()
    bundle = b.stick(2)
    targets = bundle / "tuf" / "targets.json"
    targets.write_bytes(
        edit(targets.read_bytes(), lambda s: s.update(expires="2099-01-01T00:00:00Z"))
    )
    img = b.image(bundle)
    stick_before = image_sha256(img)
    b.agent.start()
    b.sticks.attach(img)
    st = b.wait_done()
    assert st["result"] == "failed" and not policy.metadata_verified(st["code"]), st
    assert st["message"]  # says why
    assert b.rig.snapshot() == before
    b.agent.stop()
    assert not b.reports(img)
    events = [r["event"] for r in b.agent.log_records()]
    assert "no report written: the bundle's metadata did not verify" in events
    assert not [r for r in b.agent.log_records() if r.get("event") == "mounted" and r.get("rw")]
    b.sticks.detach(img)
    assert image_sha256(img) == stick_before


def test_verified_failure_is_reported_with_a_pseudonymous_serial(bench: Any) -> None:
    """A bundle whose metadata verifies but whose content does not (80) is reported; the
    report's serial is the configured one or the machine-id's pseudonym, never the machine-id."""
    b = bench()
    bundle = b.stick(3)
    corrupt_blob(bundle / "apps", T(b.factory, 3).apps["web"].images["main"].layer_digests[-1])
    img = b.image(bundle)
    b.agent.start()
    b.sticks.attach(img)
    st = b.wait_done()
    assert st["result"] == "failed" and policy.metadata_verified(st["code"]), st
    b.agent.stop()
    (rep,) = b.reports(img)
    assert rep["result"] == "failed" and rep["steps"][0]["code"] == st["code"]
    machine_id = Path("/etc/machine-id").read_text().strip()
    serial = rep["device"]["serial"]
    assert serial and machine_id not in json.dumps(rep)
    assert serial == machine_pseudonym()  # the rig names no primary_ecu_serial


def test_two_sticks_one_at_a_time(bench: Any) -> None:
    b = bench()
    img1 = b.image(b.stick(3))
    img2 = b.image(b.stick(3))
    b.agent.start()
    b.agent.wait_status(lambda s: s.get("phase") == "idle", 30, "idle")
    b.sticks.attach(img1)
    b.sticks.attach(img2)
    wait_for(lambda: len(b.reports(img1)) + len(b.reports(img2)) >= 2, 180, "both sticks' reports")
    b.agent.stop()
    results = sorted(d["result"] for img in (img1, img2) for d in b.reports(img))
    assert results == ["up-to-date", "updated"]  # whichever settled first installed
    # Never in parallel: each updater call ends before the next one starts.
    seq = [
        r["event"]
        for r in b.agent.log_records()
        if r.get("event") in ("calling the updater", "updater finished")
    ]
    assert seq == ["calling the updater", "updater finished"] * (len(seq) // 2)


def test_stick_removed_during_install(bench: Any, tmp_path: Path) -> None:
    """The stick leaves after install started: the mount is detached at once, the updater fails
    cleanly and the device is unchanged. A wrapper holds the core at its start until the removal
    has been handled, so the order is deterministic."""
    gate = tmp_path / "gate"
    gate.mkdir()
    wrapper = write_script(
        tmp_path / "updater.sh",
        f'if [ "$1" = install ]; then touch {gate}/started; '
        f"while [ ! -e {gate}/go ]; do sleep 0.05; done; fi\n"
        f'exec {shlex.join(CORE_ARGV)} "$@"\n',
    )
    b = bench(f'updater_command = "{wrapper}"\n')
    before = b.rig.snapshot()
    img = b.image(b.stick(2))
    b.agent.start()
    dev = b.sticks.attach(img)
    wait_for(lambda: (gate / "started").exists(), 60, "the install to start")
    point = b.tmp / "media" / Path(dev).name
    assert point.exists()
    sh("udevadm", "trigger", "--action=remove", f"/sys/class/block/{Path(dev).name}")
    wait_for(lambda: not mounts_under(b.tmp / "media"), 30, "the lazy unmount")
    (gate / "go").touch()
    st = b.wait_done()
    assert st["result"] == "failed", st
    assert b.rig.snapshot() == before
    notes = [r for r in b.agent.log_records() if r.get("event") == "stick removed while in use"]
    assert notes
    assert not b.reports(img)  # the stick was gone: no report written
    sh("udevadm", "trigger", "--action=add", f"/sys/class/block/{Path(dev).name}")


def test_service_killed_during_install_then_restarted(bench: Any) -> None:
    b = bench()
    img = b.image(b.stick(2))
    b.agent.start()
    b.agent.wait_status(lambda s: s.get("phase") == "idle", 30, "idle")
    b.sticks.attach(img)
    b.agent.wait_status(
        lambda s: s.get("phase") in ("installing", "rebooting") and s.get("step") != "",
        60,
        "the install",
    )
    b.agent.kill()  # SIGKILL to the service and the core it runs (a crash, a power cut)
    b.agent.start()
    # Whatever step the kill hit, the service ends up asking for the reboot.
    b.wait_reboot_request()
    assert b.reboot() == T(b.factory, 2).commit
    b.agent.start()
    st = b.wait_done()
    assert st["result"] == "updated", st
    assert b.rig.state().current.name == T(b.factory, 2).name
    assert len(b.installs()) <= 2
    b.agent.stop()
    assert any(d["result"] == "updated" for d in b.reports(img))


def test_sigterm_is_a_clean_stop(bench: Any) -> None:
    b = bench()
    b.agent.start()
    b.agent.wait_status(lambda s: s.get("phase") == "idle", 30, "idle")
    b.agent.signal(signal.SIGTERM)
    assert b.agent.proc is not None
    assert b.agent.proc.wait(10) == 0
    assert subprocess.run(["pgrep", "-f", str(b.agent_cfg)], capture_output=True).returncode == 1


NASTY_DIR = os.fsdecode(b"upd\x1b[2J\rfake line\nate\xff\xfe" + "\u202egnp.exe".encode())


def printable(text: str) -> bool:
    return all(unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Cn", "Zl", "Zp") for c in text)


def test_hostile_folder_name_is_escaped_everywhere(
    bench: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundle sits in a folder whose name holds a terminal escape, CR, LF, bytes that are not
    UTF-8 and a bidi override: the job completes as it should, and every line people see (status
    file, console, sd_notify, report) is one clean escaped line."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    try:
        b = bench()
        content = tmp_path / "nasty-stick"
        b.factory.write_bundle(content / NASTY_DIR, [T(b.factory, 3).name])
        img = b.image(content)
        b.agent.start()
        b.sticks.attach(img)
        st = b.wait_done()
        notes = []
        with contextlib.suppress(BlockingIOError):
            while True:
                notes.append(sock.recv(4096))
    finally:
        sock.close()
    assert st["result"] == "updated", st
    assert b.rig.state().current.name == T(b.factory, 3).name
    b.agent.stop()
    log = b.agent.log.read_text(errors="replace")
    assert "Traceback" not in log and "unexpected error" not in log
    for v in (st["message"], json.dumps(st)):
        assert printable(v)
    console = (b.tmp / "console.log").read_bytes().decode("utf-8")
    lines = console.splitlines()
    assert lines and all(ln.startswith("usbupdater: ") and printable(ln) for ln in lines)
    assert console.count("\n") == len(lines)  # no stray CR or LF inside a line
    statuses = [n.decode("utf-8") for n in notes if n.startswith(b"STATUS=")]
    assert statuses and all(printable(m) for m in statuses)
    (rep,) = [d for d in b.reports(img) if d["result"] == "updated"]
    ident = rep["bundle"]["identity"]
    assert printable(ident) and "\\x1b[2J\\x0dfake line\\x0aate\\xff\\xfe\\u202e" in ident
    txt = sh("debugfs", "-R", "ls /usbupdater-reports", str(img)).stdout
    name = next(n for n in txt.split() if n.endswith(".txt"))
    dump = tmp_path / "report.txt"
    sh("debugfs", "-R", f"dump /usbupdater-reports/{name} {dump}", str(img))
    text = dump.read_bytes().decode("utf-8")
    assert all(printable(line) for line in text.splitlines())


def test_64mib_targets_json_keeps_the_service_small(bench: Any) -> None:
    """An unsigned 64 MiB targets.json (json.loads would need over 1 GB) is only hashed in chunks
    to identify the bundle: the service's own peak RSS stays far below its MemoryHigh."""
    b = bench()
    bundle = b.stick(3)
    huge_targets(bundle / "tuf" / "targets.json")
    img = b.image(bundle)
    b.agent.start()
    b.agent.wait_status(lambda s: s.get("phase") == "idle", 30, "idle")
    assert b.agent.proc is not None
    b.sticks.attach(img)
    st = b.wait_done(timeout=180)
    peak = vm_hwm_kib(b.agent.proc.pid)
    assert st["result"] == "failed" and not policy.metadata_verified(st["code"]), st
    assert peak < 60 * 1024, f"service peak RSS {peak} KiB"
    b.agent.stop()
    assert not b.reports(img)
