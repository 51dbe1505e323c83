"""Runs umockdev_cases.py under `umockdev-wrapper` (umockdev needs its preload from the start)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_umockdev_cases() -> None:
    if shutil.which("umockdev-wrapper") is None:
        pytest.fail("umockdev-wrapper not installed")
    try:
        import gi

        gi.require_version("UMockdev", "1.0")
    except (ImportError, ValueError):
        pytest.fail("PyGObject or the UMockdev typelib missing")
    p = subprocess.run(
        [
            "umockdev-wrapper",
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/agent/umockdev_cases.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    assert "2 passed" in p.stdout, p.stdout[-3000:]
