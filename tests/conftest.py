"""Shared fixtures for the whole suite."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def device_config(tmp_path: Path) -> Path:
    """A minimal configuration file whose state lives under tmp_path."""
    cfg = tmp_path / "sota.toml"
    cfg.write_text(
        "[provision]\n"
        'primary_ecu_hardware_id = "raspberrypi4-64"\n'
        "[storage]\n"
        f'path = "{tmp_path / "sota"}"\n'
        "[usbupdater]\n"
        f'lock_path = "{tmp_path / "aklite.lock"}"\n'
    )
    return cfg


@pytest.fixture(scope="session")
def dockerd() -> Iterator[object]:
    """One private engine for the whole test session (stopped and removed even on failure)."""
    assert shutil.which("dockerd") and shutil.which("docker-compose"), (
        "dockerd and docker-compose are needed: run `make test`, which installs them"
    )
    from usbupdater.sim.dockerd import PrivateDockerd

    with PrivateDockerd() as d:
        yield d
