"""Shared fixtures: one source repo with v1..v3 per session, a fresh simulated device per test."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from ostree_helpers import SourceRepo

from usbupdater.sim.device import SimDevice, make_commit, remove_tree

if shutil.which("ostree") is None:  # pragma: no cover - the CI image has it
    pytest.fail("ostree CLI not installed (make test installs it)", pytrace=False)


@pytest.fixture(scope="session")
def src_repo(tmp_path_factory: pytest.TempPathFactory) -> SourceRepo:
    repo = tmp_path_factory.mktemp("src") / "ostree_repo"
    v1 = make_commit(repo, "lmp", "1")
    v2 = make_commit(repo, "lmp", "2", {"usr/share/app/v2.txt": b"two\n"})
    v3_data = b"v3 payload " * 6000
    v3 = make_commit(repo, "lmp", "3", {"usr/share/app/v3.bin": v3_data}, extra_bytes=32 << 10)
    out = subprocess.run(
        ["ostree", "ls", f"--repo={repo}", "-C", v3, "/usr/share/app/v3.bin"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return SourceRepo(repo, v1, v2, v3, out[4])


@pytest.fixture
def device(tmp_path: Path, src_repo: SourceRepo) -> Iterator[SimDevice]:
    try:  # removed even when create() fails half-way (deployments are immutable)
        yield SimDevice.create(tmp_path / "device", src_repo.path, src_repo.v1)
    finally:
        remove_tree(tmp_path / "device")
