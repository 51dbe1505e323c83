"""Fixtures for the trust tests: the shared vectors and a simulated device."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from trust_helpers import LATER, Device

from usbupdater.sim.signer import Repo


def _shared_dir() -> Path | None:
    """`$USBUPDATER_SHARED`, else `shared/` beside the checkout, else /work/shared."""
    checkout = Path(__file__).resolve().parents[2]
    candidates = [os.environ.get("USBUPDATER_SHARED"), checkout / ".." / "shared", "/work/shared"]
    for c in candidates:
        if c and (Path(c) / "vectors").is_dir():
            return Path(c).resolve()
    return None


@pytest.fixture(scope="session")
def vectors() -> Path:
    shared = _shared_dir()
    if shared is None:
        pytest.fail("shared/vectors not found (set USBUPDATER_SHARED)")
    return shared / "vectors"


@pytest.fixture
def device(tmp_path: Path) -> Device:
    repo = Repo.generate(expires=LATER)
    dev = Device(tmp_path, repo)
    repo.write_device_roots(dev.shipped)
    return dev
