"""The device's wheel: built from this checkout as `python -m build --wheel` would (the PEP 517
backend in a copy of the tree), it holds the program but not the simulation kit."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BUILD = "import sys; from setuptools import build_meta as b; print(b.build_wheel(sys.argv[1]))"


def builder() -> str:
    """An interpreter with setuptools and wheel (the backend's requirements, no isolation)."""
    for python in (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run([python, "-c", "import setuptools, wheel"], capture_output=True)
        if probe.returncode == 0:
            return python
    raise AssertionError("no Python with setuptools and wheel to build the wheel with")


def test_wheel_ships_the_program_without_the_simulation_kit(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(
        ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    out = tmp_path / "dist"
    p = subprocess.run(
        [builder(), "-c", BUILD, str(out)], cwd=tree, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-2000:]
    (wheel,) = out.glob("usbupdater-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("cli.py", "core.py", "settings.py", "agent/service.py", "trust/session.py"):
        assert f"usbupdater/{module}" in names
    assert "usbupdater/py.typed" in names
    assert [n for n in names if n.startswith("usbupdater/sim")] == []
    # ... while the checkout still has it (tests, the demo, benchmarks use it).
    assert (ROOT / "src/usbupdater/sim/core.py").is_file()
