"""The newcomer's story, end to end: the same program `make demo` runs, checked line by line."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def loop_devices() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    before = loop_devices()
    p = subprocess.run(
        [sys.executable, "-m", "usbupdater.sim.demo", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loop_devices() == before  # every loop device it attached is gone
    return p


def test_demo_updates_the_device_from_a_stick() -> None:
    p = demo()
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    assert "Its app answers: 'Hello from v1'" in out
    assert "status: installing" in out and "status: rebooting" in out
    assert "The device runs root filesystem" in out and "(v2)" in out
    assert "The app answers: 'Hello from v2'" in out
    assert "usbupdater report: UPDATED" in out
    assert "SAFE TO REMOVE" in out
    assert "Demo finished" in out


def test_demo_rollback_goes_back_by_itself() -> None:
    p = demo("--rollback")
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    assert "health is unhealthy" in out
    assert "Result: rolled-back" in out
    assert "The app answers: 'Hello from v1'" in out
    assert "reboots itself again" in out
