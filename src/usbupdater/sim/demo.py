"""`make demo`: watch a simulated device update itself from a USB stick, nobody at a keyboard.

Everything is real but the hardware: an OSTree root filesystem (the device), a Docker engine
running the device's app, udevd seeing a USB stick (an ext4 image on a loop device), the
`usbupdater watch` service doing what it does at a kiosk. Only the reboot is played: the device's
bootloader is simulated (`usbupdater.sim.device`).

    python -m usbupdater.sim.demo [--rollback] [--keep]

`--rollback` ships a new app version that never becomes healthy: the device goes back by itself.
Every process, mount and loop device the demo makes is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

from usbupdater.sim.apps import AppSpec, ServiceSpec
from usbupdater.sim.device import SimDevice, remove_tree
from usbupdater.sim.dockerd import PrivateDockerd
from usbupdater.sim.factory import Factory, TargetSpec
from usbupdater.sim.setup import CORE_ARGV, create_device
from usbupdater.sim.sticks import Sticks, sh
from usbupdater.sim.udevd import Udevd

PORT = 8080
START = time.monotonic()


# --- telling the story -------------------------------------------------------------------------


def say(text: str = "") -> None:
    print(text, flush=True)


def step(n: int, total: int, text: str) -> None:
    say(f"\n[{n}/{total}] {text}  ({time.monotonic() - START:.0f} s)")


def detail(text: str) -> None:
    for line in textwrap.wrap(text, 96) or [""]:
        say(f"      {line}")


# --- the device's app --------------------------------------------------------------------------


def hello(version: str, *, healthy: bool = True) -> AppSpec:
    """A tiny web app answering "Hello from <version>" (busybox httpd)."""
    page = f"Hello from {version}\n".encode()
    svc = ServiceSpec(
        cmd=("httpd", "-f", "-p", f"127.0.0.1:{PORT}", "-h", "/www"),
        healthcheck=("wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{PORT}/")
        if healthy
        else ("false",),
        compose={"network_mode": "none", "volumes": ["./www:/www:ro"]},
    )
    return AppSpec(
        "hello", services={"web": svc}, version_tag=version, files={"www/index.html": page}
    )


def ask_hello(dockerd: PrivateDockerd) -> str:
    """What the app answers, asked from inside its own network namespace."""
    import docker

    client = docker.DockerClient(base_url=dockerd.host)
    try:
        found = client.containers.list(filters={"label": "com.docker.compose.project=hello"})
        if not found:
            return "(no hello container is running)"
        res = found[0].exec_run(["wget", "-q", "-O", "-", f"http://127.0.0.1:{PORT}/"])
        out = res.output if isinstance(res.output, bytes) else b""
        return out.decode(errors="replace").strip() or "(no answer)"
    finally:
        client.close()


# --- the service -------------------------------------------------------------------------------


class Watcher:
    """`usbupdater watch` as the device's init system would run it."""

    def __init__(self, configs: list[Path], status: Path, log: Path) -> None:
        self.configs = configs
        self.status_file = status
        self.log = log
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "usbupdater", "watch"]
        for c in self.configs:
            argv += ["-c", str(c)]
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                argv, stdout=fh, stderr=fh, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def status(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def follow(
        self, until: Callable[[dict[str, Any]], bool], timeout: float = 240
    ) -> dict[str, Any]:
        """Print each new phase/message the service reports until `until` holds."""
        seen: Optional[tuple[Any, ...]] = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"the service stopped (exit {self.proc.returncode}); see {self.log}"
                )
            st = self.status()
            key = (st.get("phase"), st.get("message"), st.get("percent"))
            if st and key != seen:
                seen = key
                pct = f" {st['percent']}%" if isinstance(st.get("percent"), int) else ""
                detail(f"status: {st.get('phase')}{pct}: {st.get('message', '')}")
            if st and until(st):
                return st
            time.sleep(0.1)
        raise RuntimeError(f"timed out; last status {self.status()}; see {self.log}")


# --- the demo ----------------------------------------------------------------------------------


def agent_config(work: Path, dev: SimDevice, sticks: Sticks) -> Path:
    """What an integrator would put in /etc/sota/conf.d/60-usbupdater.toml, for this lab."""
    reboot = work / "reboot.sh"
    reboot.write_text(f"#!/bin/sh\ntouch {work / 'reboot-requested'}\n")
    reboot.chmod(0o755)
    runtime = dev.run_dir / "usbupdater"  # a tmpfs on a device: wiped by every reboot
    cfg = work / "60-usbupdater.toml"
    cfg.write_text(
        "[bootloader]\n"
        f'reboot_command = "{reboot}"\n'
        "[usbupdater]\n"
        # A loop device is not on USB: accept the demo's stick by its label instead.
        'match_buses = ""\n'
        f'match_properties = "ID_FS_LABEL={sticks.prefix}*"\n'
        "settle_time = 0.3\n"
        f'runtime_dir = "{runtime}"\n'
        f'media_dir = "{work / "media"}"\n'
        f'status_file = "{runtime / "status.json"}"\n'
        f'agent_state_dir = "{work / "device" / "sota" / "usbupdater" / "agent"}"\n'
        'console = ""\n'
        'aklite_active_command = "false"\n'  # no aktualizr-lite in this lab
        'engine_restart_command = "true"\n'
    )
    return cfg


def read_reports(img: Path, work: Path) -> list[tuple[str, str]]:
    """The text reports the service wrote on the stick (read from the image, not mounted)."""
    listing = sh("debugfs", "-R", "ls /usbupdater-reports", str(img), check=False).stdout
    out = []
    for name in sorted(listing.split()):
        if name.endswith(".txt"):
            dump = work / f"report-{name}"
            sh("debugfs", "-R", f"dump /usbupdater-reports/{name} {dump}", str(img))
            out.append((name, dump.read_text(errors="replace")))
    return out


@contextmanager
def lab(keep: bool) -> Iterator[tuple[Path, ExitStack]]:
    work = Path(tempfile.mkdtemp(prefix="usbupdater-demo-", dir="/var/tmp"))
    stack = ExitStack()
    try:
        with stack:
            yield work, stack
    finally:
        if keep:
            say(f"\n(kept {work})")
        else:
            remove_tree(work)


def run_demo(rollback: bool, keep: bool) -> int:
    total = 6
    with lab(keep) as (work, stack):
        step(1, total, "Building a device: root filesystem v1, a Docker engine, the app 'hello' v1")
        factory = Factory(work / "factory", hardware_id="kiosk-imx8", tag="main")
        v1 = factory.publish(TargetSpec(1, name="kiosk-imx8-lmp-1", apps=[hello("v1")]))
        v2_app = hello("v2", healthy=not rollback)
        v2 = factory.publish(
            TargetSpec(
                2,
                name="kiosk-imx8-lmp-2",
                apps=[v2_app],
                rootfs_files={"usr/share/kiosk/release": b"2\n"},
            )
        )
        dockerd = stack.enter_context(PrivateDockerd(work / "docker"))
        dev, cfg = create_device(
            work / "device",
            factory,
            v1.commit,
            docker_host=dockerd.host,
            apps_start_timeout=15,
        )
        stack.callback(dev.destroy)
        stack.callback(_remove_containers, dockerd)
        # The factory image came with its app: install v1's apps once, as the factory line would.
        flash = factory.write_bundle(work / "factory-line", [v1.name])
        for cmd in (["install", "-s", str(flash)], ["run"]):
            subprocess.run(
                [*CORE_ARGV, *cmd, "-c", str(cfg)],
                capture_output=True,
                check=False,
            )
        detail(f"The device runs {v1.name} (root filesystem {v1.commit[:12]}).")
        detail(f"Its app answers: {ask_hello(dockerd)!r}")

        step(2, total, "The factory publishes v2 and writes a signed offline bundle on a USB stick")
        bundle = factory.write_bundle(work / "bundle", [v2.name])
        sticks = Sticks(work / "sticks")
        (work / "sticks").mkdir()
        stack.callback(sticks.cleanup)
        img = sticks.image(bundle)
        what = "a new root filesystem and hello v2" + (
            " (this version never becomes healthy)" if rollback else ""
        )
        detail(
            f"{v2.name}: {what}. The stick holds what `fioctl targets offline-update` "
            "writes: signed metadata (tuf/), the root filesystem (ostree_repo/), the apps (apps/)."
        )

        step(3, total, "The device boots: udevd and the usbupdater service start")
        stack.enter_context(Udevd(work / "udevd.log"))
        watcher = Watcher(
            [cfg, agent_config(work, dev, sticks)],
            dev.run_dir / "usbupdater" / "status.json",
            work / "service.log",
        )
        stack.callback(watcher.stop)
        watcher.start()
        watcher.follow(lambda s: s.get("phase") == "idle", 60)

        step(4, total, "A technician plugs in the stick (nobody types anything)")
        sticks.attach(img)
        reboots = 0
        requested = work / "reboot-requested"
        while True:
            st = watcher.follow(lambda s: s.get("phase") in ("rebooting", "safe-to-remove"))
            if st.get("phase") == "safe-to-remove":
                break
            deadline = time.monotonic() + 60
            while not requested.exists():  # the service asks for the reboot right after saying so
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no reboot request came; see {work / 'service.log'}")
                time.sleep(0.05)
            reboots += 1
            if reboots > 3:
                raise RuntimeError("more reboots than any update needs")
            step(5, total, "The device reboots itself" + (" again" if reboots > 1 else ""))
            requested.unlink()
            watcher.stop()
            record = dev.reboot()
            detail(
                f"The bootloader started root filesystem {str(record['commit'])[:12]}; the "
                "service starts again and finishes the update."
            )
            watcher.start()

        final = watcher.status()
        step(6, total, "The result")
        detail(f"Result: {final.get('result')} - {final.get('message')}")
        booted = dev.booted_commit() or "?"
        version = "v2" if booted == v2.commit else "v1"
        detail(f"The device runs root filesystem {booted[:12]} ({version})")
        detail(f"The app answers: {ask_hello(dockerd)!r}")
        for name, text in read_reports(img, work):
            detail(f"Report on the stick, usbupdater-reports/{name}:")
            for line in text.splitlines():
                say(f"        | {line}")
        if final.get("safe_to_remove"):
            detail("The status says: SAFE TO REMOVE the stick.")
        watcher.stop()

        ok = final.get("result") == ("rolled-back" if rollback else "updated")
        say("\nSummary:")
        if rollback:
            detail(
                "v2's app never became healthy, so the device went back to v1 by itself: "
                "root filesystem redeployed, v1's app running again, and the report on the stick "
                "says why. The failed version will not be retried from this stick."
            )
        else:
            detail(
                "The device verified every byte of the stick against the signed metadata, "
                "installed the new root filesystem and app, rebooted, confirmed the update once "
                "the app was healthy, and left a report on the stick."
            )
        detail(
            f"Logs: {work / 'service.log'} (kept only with --keep). Everything is cleaned up now."
        )
        say(f"\nDemo {'finished' if ok else 'FAILED'} in {time.monotonic() - START:.0f} s.")
        return 0 if ok else 1


def _remove_containers(dockerd: PrivateDockerd) -> None:
    import docker

    try:
        client = docker.DockerClient(base_url=dockerd.host)
        for c in client.containers.list(all=True):
            c.remove(force=True)
        client.close()
    except Exception:  # noqa: S110 - the engine goes away next anyway
        pass


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--rollback", action="store_true", help="ship an app that fails its healthcheck"
    )
    ap.add_argument("--keep", action="store_true", help="keep the lab's files for a look")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        say("The demo needs root (loop devices, mounts, a Docker engine).")
        return 1
    say(
        "usbupdater demo: a kiosk updates itself from a USB stick"
        + (" - and rolls back a bad update" if args.rollback else "")
    )
    try:
        return run_demo(args.rollback, args.keep)
    except KeyboardInterrupt:
        say("\nInterrupted; cleaned up.")
        return 130


if __name__ == "__main__":
    sys.exit(main())
