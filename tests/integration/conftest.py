"""Fixtures for whole-program tests: a factory publishing targets, and a device configuration."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from usbupdater.sim.apps import AppSpec, ServiceSpec
from usbupdater.sim.factory import Factory, TargetSpec


@dataclass
class Device:
    """A device's configuration and state directories (no sysroot: check needs none)."""

    root: Path
    config: Path

    @property
    def state_dir(self) -> Path:
        return self.root / "sota" / "usbupdater"


def write_device_config(root: Path, factory: Factory, extra: str = "") -> Path:
    factory.write_device_roots(root / "usr-lib-sota-tuf")
    cfg = root / "sota.toml"
    cfg.write_text(
        "[provision]\n"
        f'primary_ecu_hardware_id = "{factory.hardware_id}"\n'
        "[storage]\n"
        f'path = "{root / "sota"}"\n'
        f'uptane_metadata_path = "{root / "usr-lib-sota-tuf"}"\n'
        "[pacman]\n"
        f'tags = "{factory.tag}"\n'
        "[usbupdater]\n"
        f'lock_path = "{root / "aklite.lock"}"\n' + extra
    )
    return cfg


@pytest.fixture(scope="session")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    """v1: app shellhttpd; v2: shellhttpd updated + app monitor; v3 for other hardware."""
    work = tmp_path_factory.mktemp("factory")
    f = Factory(work)
    f.publish(TargetSpec(1, apps=[AppSpec("shellhttpd", version_tag="1")]))
    f.publish(
        TargetSpec(
            2,
            apps=[
                AppSpec("shellhttpd", version_tag="2"),
                AppSpec("monitor", services={"main": ServiceSpec(cmd=("sleep", "9999"))}),
            ],
        )
    )
    f.publish(TargetSpec(3, name="other-board-lmp-3", hardware_ids=["other-board"]))
    yield f
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def device(tmp_path: Path, factory: Factory) -> Device:
    root = tmp_path / "device"
    root.mkdir()
    return Device(root, write_device_config(root, factory))
