"""The progress bar a person sees: the real `usbupdater install` with its stderr on a terminal
(a pty), against the simulated device; and the plain log lines when stderr is not a terminal."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import struct
import subprocess
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.rig import Rig
from tests.progress_targets import MIB, progress_factory
from usbupdater.sim.dockerd import PrivateDockerd
from usbupdater.sim.factory import Factory
from usbupdater.sim.setup import CORE_ARGV

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    """v1 flashed; v2 a new rootfs and an app with a large layer (bytes worth counting)."""
    work = tmp_path_factory.mktemp("bar-factory")
    yield progress_factory(work, 48 * MIB, 8 * MIB)
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def rig(tmp_path: Path, factory: Factory, dockerd: PrivateDockerd) -> Iterator[Rig]:
    r = Rig.create(tmp_path, factory, dockerd, factory.targets["intel-corei7-64-lmp-1"].commit)
    try:
        yield r
    finally:
        r.cleanup_engine()
        r.device.destroy()


def at_terminal(argv: list[str], columns: int = 160) -> tuple[int, str, str]:
    """Run `argv` with stderr on a pty (stdout a pipe); return code, terminal text, stdout."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        p = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, text=True
        )
        os.close(slave)
        out, _ = p.communicate(timeout=300)
        reader.join(timeout=10)
    finally:
        os.close(master)
    return p.returncode, b"".join(chunks).decode("utf-8", "replace"), out


def bar_states(screen: str) -> list[str]:
    """Every state the bar was drawn in, in order (each redraw starts with a line clear)."""
    return [s.strip() for s in re.split(r"\r\x1b\[K|\n", screen) if s.strip()]


def percents(states: list[str]) -> list[float]:
    return [float(m.group(1)) for s in states if (m := re.search(r"\]\s+([\d.]+) %", s))]


def v2_bundle(factory: Factory, tmp_path: Path) -> Path:
    names = ["intel-corei7-64-lmp-1", "intel-corei7-64-lmp-2"]
    return factory.write_bundle(tmp_path / "bundle", names)


def test_install_at_a_terminal_shows_a_bar_that_ends_at_100(
    rig: Rig, factory: Factory, tmp_path: Path
) -> None:
    bundle = v2_bundle(factory, tmp_path)
    argv = [*CORE_ARGV, "install", "-s", str(bundle), "-c", str(rig.config)]
    code, screen, out = at_terminal(argv)
    assert code == 100, screen
    assert "reboot" in out.lower()
    states = bar_states(screen)
    assert not any(s.startswith("{") for s in states), screen  # no JSON at a terminal
    phases = [s.split()[0] for s in states]
    assert "verifying" in phases and phases[-1] == "done", states
    pcts = percents(states)
    assert pcts and pcts[-1] == 100.0, states
    assert pcts == sorted(pcts), states  # the bar never goes back
    assert len(set(states)) >= 3, states  # it advanced through the phases to the end
    assert any(re.search(r"[\d.]+ MiB / [\d.]+ MiB", s) for s in states[:-1]), states
    assert any(0 < x < 100 for x in pcts), states  # counted bytes show on the way


def test_quiet_and_not_a_terminal_show_no_bar(rig: Rig, factory: Factory, tmp_path: Path) -> None:
    bundle = v2_bundle(factory, tmp_path)
    argv = [*CORE_ARGV, "check", "-s", str(bundle), "-c", str(rig.config)]
    code, screen, _ = at_terminal([*argv, "--quiet"])
    assert code == 16, screen
    assert "\x1b[K" not in screen and "] 100.0 %" not in screen
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert p.returncode == 16, p.stderr
    records = [json.loads(x) for x in p.stderr.splitlines() if x.startswith("{")]
    last = [r for r in records if r.get("event") == "progress"][-1]
    assert last["phase"] == "done" and last["percent"] == 100.0, records
    assert "\x1b[K" not in p.stderr
