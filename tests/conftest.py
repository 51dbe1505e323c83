"""Shared fixtures for the whole suite."""

from __future__ import annotations

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
