"""`usbupdater check` on an LmP device whose type comes from its client certificate:
a production certificate accepts prod bundles and refuses ci ones (15), a ci one the opposite."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from usbupdater.sim.factory import Factory, TargetSpec
from usbupdater.sim.lmp import LmpDevice, create_lmp_device
from usbupdater.sim.setup import CORE_ARGV

pytestmark = pytest.mark.integration

FLASHED = "intel-corei7-64-lmp-1"


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    work = tmp_path_factory.mktemp("dt-factory")
    f = Factory(work)
    f.publish(TargetSpec(1))
    f.publish(TargetSpec(2))
    yield f
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def bundles(factory: Factory, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dt-bundles")
    return {t: factory.write_bundle(d / t, bundle_type=t) for t in ("prod", "ci")}


def _device(root: Path, factory: Factory, device_type: str, extra: str = "") -> LmpDevice:
    return create_lmp_device(
        root, factory, FLASHED, device_type=device_type, preload_apps=False, extra=extra
    )


def check(dev: LmpDevice, bundle: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *CORE_ARGV,
            "check",
            "-s",
            str(bundle),
            *dev.config_args(),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("device_type", ["prod", "ci"])
def test_certificate_decides_which_bundles_are_accepted(
    device_type: str, factory: Factory, bundles: dict[str, Path], tmp_path: Path
) -> None:
    dev = _device(tmp_path, factory, device_type)
    other = "ci" if device_type == "prod" else "prod"
    try:
        ok = check(dev, bundles[device_type])
        assert ok.returncode == 16, ok.stderr  # intel-corei7-64-lmp-2 can be installed
        assert "intel-corei7-64-lmp-2" in ok.stdout
        assert "device type" in ok.stderr and "client.pem" in ok.stderr
        if device_type == "prod":
            assert "businessCategory=production" in ok.stderr
        refused = check(dev, bundles[other])
        assert refused.returncode == 15, refused.stderr
        assert other in refused.stderr and device_type in refused.stderr
    finally:
        dev.device.destroy()


def test_configured_device_type_overrides_the_certificate(
    factory: Factory, bundles: dict[str, Path], tmp_path: Path
) -> None:
    dev = _device(tmp_path, factory, "prod", extra='device_type = "ci"\n')
    try:
        assert check(dev, bundles["ci"]).returncode == 16
        assert check(dev, bundles["prod"]).returncode == 15
    finally:
        dev.device.destroy()


def test_no_certificate_keeps_todays_behaviour(
    factory: Factory, bundles: dict[str, Path], tmp_path: Path
) -> None:
    dev = _device(tmp_path, factory, "prod")
    (tmp_path / "var/sota/client.pem").unlink()
    try:
        for kind in ("ci", "prod"):  # type unknown: no bundle type check
            p = check(dev, bundles[kind], "--log-level", "1")
            assert p.returncode == 16, p.stderr
        assert "no such file" in p.stderr  # said at debug only: nothing changed
    finally:
        dev.device.destroy()
