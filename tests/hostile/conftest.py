"""The hostile-stick corpus: one factory, one device, one dockerd and one stick image per case,
made once per session; a tally printed at the end of the run.

The device is flashed with v1 and has trusted metadata at version 50 (a bundle holding only v1
was installed: exit 0, which keeps the metadata), so rollback cases have something to roll back
from. The good bundle holds v2 (a new rootfs and one app): it would install (100), so every
refusal is caused by the one thing a case broke.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.agent.conftest import udevd  # noqa: F401 - the session's udevd fixture
from tests.integration.rig import Rig
from usbupdater.sim.apps import AppSpec, ServiceSpec
from usbupdater.sim.device import remove_tree
from usbupdater.sim.dockerd import PrivateDockerd
from usbupdater.sim.factory import Factory, TargetSpec
from usbupdater.sim.sticks import Sticks

TRUSTED_VERSION = 50  # metadata version the device holds
GOOD_VERSION = 60  # metadata version of the good bundle (and of re-signed hostile ones)


@dataclass
class Corpus:
    """What every case is built from and run against."""

    work: Path
    factory: Factory
    dockerd: PrivateDockerd
    rig: Rig
    golden: Path  # the good bundle (v2)
    outside: Path  # a copy of the good bundle outside any stick: where symlinks point
    secret: str  # text of a file outside the stick that must never be shown
    secret_file: Path
    sticks: Sticks
    images: dict[str, Path] = field(default_factory=dict)  # case name -> stick image
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def v1(self) -> str:
        return f"{self.factory.hardware_id}-lmp-1"

    @property
    def v2(self) -> str:
        return f"{self.factory.hardware_id}-lmp-2"


RESULTS: list[dict[str, Any]] = []


def device(root: Path, f: Factory, dockerd: PrivateDockerd) -> Rig:
    """A device flashed with v1 that trusts metadata version 50 (kept from a v1-only bundle)."""
    remove_tree(root)
    # A CI device (as its certificate would say): bundles of another type are refused (15).
    commit = f.targets[f"{f.hardware_id}-lmp-1"].commit
    rig = Rig.create(root, f, dockerd, commit, extra='device_type = "ci"\n')
    seed = f.write_bundle(root / "seed", [f"{f.hardware_id}-lmp-1"], metadata_version=50)
    code = rig.install(seed)
    assert code == 0, rig.describe()
    remove_tree(seed)
    return rig


def renew_device(corpus: Corpus) -> None:
    """After a case changed the device (a product bug): start the next one from a clean one."""
    corpus.rig.cleanup_engine()
    client = corpus.rig.client()
    for image in client.images.list(all=True):
        client.images.remove(str(image.id), force=True)
    corpus.rig = device(corpus.rig.root, corpus.factory, corpus.dockerd)


@pytest.fixture(scope="session")
def corpus(
    tmp_path_factory: pytest.TempPathFactory,
    dockerd: PrivateDockerd,
    udevd: None,  # noqa: F811
) -> Iterator[Corpus]:
    work = tmp_path_factory.mktemp("hostile")
    f = Factory(work / "factory")
    f.publish(TargetSpec(1))
    svc = ServiceSpec(cmd=("sleep", "3600"), compose={"network_mode": "none"})
    f.publish(
        TargetSpec(
            2, apps=[AppSpec("web", services={"main": svc})], rootfs_files={"usr/share/v": b"2"}
        )
    )
    rig = device(work / "dev", f, dockerd)
    corpus: Optional[Corpus] = None
    sticks = Sticks(work / "sticks", prefix="HS" + secrets.token_hex(2).upper())
    sticks.workdir.mkdir()
    try:
        golden = f.write_bundle(
            work / "golden", [f"{f.hardware_id}-lmp-2"], metadata_version=GOOD_VERSION
        )
        outside = work / "outside"
        shutil.copytree(golden, outside, symlinks=True)
        secret = "HOSTILE-SECRET-" + secrets.token_hex(8)
        secret_file = work / "secret.txt"
        secret_file.write_text(secret + "\n" + secret + "\n")
        corpus = Corpus(work, f, dockerd, rig, golden, outside, secret, secret_file, sticks)
        yield corpus
    finally:
        sticks.cleanup()
        corpus_rig = corpus.rig if corpus is not None else rig
        corpus_rig.cleanup_engine()
        corpus_rig.device.destroy()
        # rm, not shutil.rmtree: that recurses, and a case's tree is 1500 directories deep.
        subprocess.run(["rm", "-rf", str(work)], check=False, timeout=120)


def record(entry: dict[str, Any]) -> None:
    RESULTS.append(entry)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line for the corpus, then one per case that did not end as expected."""
    hostile = [r for r in RESULTS if r["mode"] != "positive"]
    positive = [r for r in RESULTS if r["mode"] == "positive"]
    if hostile:
        tried = {r["case"] for r in hostile}
        refused = tried - {r["case"] for r in hostile if not r["as_expected"]}
        changed = sorted({r["case"] for r in hostile if not r["unchanged"]})
        tail = "device unchanged in all" if not changed else f"device CHANGED in {len(changed)}"
        watched = sum(r["mode"] == "watch" for r in hostile)
        terminalreporter.write_line(
            f"hostile sticks: {len(tried)} tried, {len(refused)} refused as expected, {tail} "
            f"(check and install for each, {watched} also through the service)"
        )
    for r in positive:
        verdict = "installed" if r["as_expected"] else f"NOT as expected: {r['problem']}"
        terminalreporter.write_line(f"hostile sticks: positive control {r['case']}: {verdict}")
    for r in sorted(hostile, key=lambda r: (r["case"], r["mode"])):
        if r["problem"]:
            terminalreporter.write_line(f"  {r['case']}[{r['mode']}]: {r['problem'][:300]}")
