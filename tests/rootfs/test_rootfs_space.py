"""The commit walk behind the space estimate, against real ostree repos (no `ostree ls`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from ostree_helpers import SourceRepo

from usbupdater import progress
from usbupdater.errors import ContentMissingError, NoSpaceError, VerificationError
from usbupdater.ostree_cli import parse_ls
from usbupdater.rootfs import OstreeSysroot
from usbupdater.rootfs_space import (
    PullWatch,
    closure,
    object_path,
    parse_commit_root,
    parse_dirtree,
    walk_commit,
)
from usbupdater.sim.device import SimDevice, make_commit

pytestmark = pytest.mark.integration


def ls_objects(repo: Path, commit: str) -> set[str]:
    out = subprocess.run(
        ["ostree", "ls", f"--repo={repo}", "-R", "-C", commit],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(parse_ls(out))


def test_walk_finds_exactly_the_file_objects_ostree_lists(tmp_path: Path) -> None:
    files = {f"usr/d{i % 5}/s{i % 3}/f{i}": os.urandom(i * 41 % 3000) for i in range(200)}
    files["usr/same-a"] = files["usr/same-b"] = b"dup"  # one object, listed once
    commit = make_commit(tmp_path / "repo", "b", "1", files, 300 << 10)
    walked = list(walk_commit(tmp_path / "repo", commit))
    assert {c for c, kind, _ in walked if kind == "filez"} == ls_objects(tmp_path / "repo", commit)
    assert len(walked) == len({(c, k) for c, k, _ in walked})  # each object once
    for csum, kind, size in walked:
        assert (tmp_path / "repo" / object_path(csum, kind)).stat().st_size == size


def test_parsers_refuse_garbage() -> None:
    for bad in (b"", b"\x01", os.urandom(7), b"\xff" * 40):
        with pytest.raises(ValueError):
            parse_commit_root(bad)
    with pytest.raises(ValueError):
        parse_dirtree(b"\x00abc\xff\x09")
    assert parse_dirtree(b"\x00") == ([], [])  # an empty directory: two empty arrays


def test_closure_counts_only_what_the_device_lacks(device: SimDevice, src_repo: SourceRepo) -> None:
    repo = device.sysroot / "ostree" / "repo"
    mine = closure(src_repo.path, src_repo.v1, repo, 4096)
    assert mine.new_objects == 0 and mine.new_bytes == 0 and mine.stick_bytes > 0
    new = closure(src_repo.path, src_repo.v3, repo, 4096)
    assert new.new_bytes >= 32 << 10  # the random extra file, incompressible
    assert new.new_blocks_bytes >= new.new_bytes + 4096 * new.new_objects
    assert new.stick_bytes > new.new_bytes  # v1's objects are on the stick too


def test_symlinked_or_missing_object_is_refused(tmp_path: Path, src_repo: SourceRepo) -> None:
    repo = src_repo.copy(tmp_path / "repo")
    victim = next(c for c, k, _ in walk_commit(repo, src_repo.v3) if k == "filez")
    path = repo / object_path(victim, "filez")
    path.unlink()
    with pytest.raises(ContentMissingError, match=victim):
        list(walk_commit(repo, src_repo.v3))
    path.symlink_to("/etc/shadow")
    with pytest.raises(VerificationError, match="not a file"):
        list(walk_commit(repo, src_repo.v3))
    tree = next(c for c, k, _ in walk_commit(repo, src_repo.v1) if k == "dirtree")
    (repo / object_path(tree, "dirtree")).write_bytes(b"\x00")  # checksum no longer matches
    with pytest.raises(VerificationError, match=tree):
        list(walk_commit(repo, src_repo.v1))


def test_pull_expects_its_reads_and_the_watch_counts_them(
    device: SimDevice, src_repo: SourceRepo
) -> None:
    seen: list[progress.Progress] = []
    meter = progress.Meter(sink=seen.append, interval=0)
    with progress.metering(meter):
        device.rootfs().pull(src_repo.path, src_repo.v3)
    assert meter.total_bytes >= 32 << 10  # expected before the pull: the new objects' sizes
    watch = PullWatch(Path("/"), lambda _p: 1 << 40, 0, meter)
    before = meter.done_bytes
    Path("/proc/self/stat").read_bytes()
    watch._count(os.getpid())  # what /proc/<pid>/io says the process read
    assert meter.done_bytes > before


def test_watch_stops_a_pull_that_would_eat_the_reserve(
    device: SimDevice, src_repo: SourceRepo, tmp_path: Path
) -> None:
    slow = tmp_path / "bin" / "ostree"  # named ostree: the watch finds it by name
    slow.parent.mkdir()
    slow.write_text(f'#!/bin/sh\nsleep 3\nexec {shutil.which("ostree")} "$@"\n')
    slow.chmod(0o755)
    calls = [0]

    def shrinking(_p: Path) -> int:  # enough for the estimate, then the disk fills up
        calls[0] += 1
        return 1 << 40 if calls[0] == 1 else 0

    repo = device.sysroot / "ostree" / "repo"
    objects = sorted(p.name for p in (repo / "objects").rglob("*"))
    rootfs = OstreeSysroot(device.sysroot, free_space=shrinking, ostree_bin=str(slow))
    t0 = time.monotonic()
    with pytest.raises(NoSpaceError, match="ostree pull-local stopped") as exc:
        rootfs.pull(src_repo.path, src_repo.v3)
    assert exc.value.code == 60
    assert time.monotonic() - t0 < 2.5  # stopped, not waited for
    assert not rootfs.has_commit(src_repo.v3)
    assert sorted(p.name for p in (repo / "objects").rglob("*")) == objects
