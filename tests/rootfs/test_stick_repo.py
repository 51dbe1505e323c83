"""The stick's ostree_repo is walked before ostree opens it: nothing but directories and regular
files with plain names, an archive repo's config, bounded size and depth."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from ostree_helpers import SourceRepo

from usbupdater import stick_repo
from usbupdater.errors import ExitCode, VerificationError
from usbupdater.sim.device import init_archive_repo
from usbupdater.sim.factory import Factory, TargetSpec

pytestmark = pytest.mark.integration


@pytest.fixture
def repo(src_repo: SourceRepo, tmp_path: Path) -> Path:
    return src_repo.copy(tmp_path / "ostree_repo")


def refusal(repo: Path) -> VerificationError:
    with pytest.raises(VerificationError) as exc:
        stick_repo.check_repo(repo)
    assert exc.value.code == ExitCode.VERIFICATION_FAILED == 80
    return exc.value


def some_object(repo: Path, suffix: str) -> Path:
    return next(p for p in sorted((repo / "objects").rglob(f"*.{suffix}")))


def test_a_real_archive_repo_passes(repo: Path) -> None:
    seen = stick_repo.check_repo(repo)
    assert seen.entries > 20


def test_rootfs_symlinks_are_stored_as_filez_objects(tmp_path: Path) -> None:
    """An archive repo (what fioctl writes) holds a commit's symlinks as objects, not as links."""
    tree = tmp_path / "tree"
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/lib/os-release").write_text("ID=sim\n")
    os.symlink("/etc/shadow", tree / "usr/lib/shadow-link")
    os.symlink("usr/lib", tree / "lib")
    repo = tmp_path / "ostree_repo"
    init_archive_repo(repo)
    subprocess.run(
        ["ostree", "commit", f"--repo={repo}", "--branch=b", f"--tree=dir={tree}"],
        check=True,
        capture_output=True,
    )
    assert not [p for p in repo.rglob("*") if p.is_symlink()]
    stick_repo.check_repo(repo)


def test_factory_bundle_passes(tmp_path: Path) -> None:
    f = Factory(tmp_path / "factory")
    f.publish(TargetSpec(1, rootfs_files={"usr/share/a": b"a"}))
    bundle = f.write_bundle(tmp_path / "bundle")
    assert stick_repo.check_repo(bundle / "ostree_repo").entries > 10


def test_config_symlink_is_refused(repo: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("[core]\nmode=archive-z2\n")  # even a link to a valid config
    (repo / "config").unlink()
    os.symlink(secret, repo / "config")
    err = refusal(repo)
    assert str(err) == "bundle's OSTree repo refused: ostree_repo/config is a symbolic link"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("where", ["config", "refs/heads/lmp", "object", "summary"])
def test_fifo_is_refused_without_blocking(repo: Path, where: str) -> None:
    path = some_object(repo, "filez") if where == "object" else repo / where
    if path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    err = refusal(repo)
    rel = path.relative_to(repo)
    assert "config" in str(err) if where == "config" else f"ostree_repo/{rel} is a FIFO" in str(err)


def test_links_devices_sockets_anywhere_are_refused(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    obj = some_object(repo, "dirtree")
    obj.unlink()
    os.symlink("/etc/passwd", obj)
    assert "is a symbolic link" in str(refusal(repo))
    obj.unlink()
    os.mknod(obj, 0o600 | 0o020000, os.makedev(1, 3))  # a character device (/dev/null's)
    assert "is a character device" in str(refusal(repo))
    obj.unlink()
    with socket.socket(socket.AF_UNIX) as sock:
        monkeypatch.chdir(obj.parent)  # a socket path must be short
        sock.bind(obj.name)
        assert "is a socket" in str(refusal(repo))
    obj.unlink()
    os.symlink(tmp_path, repo / "objects" / "zz")  # a linked directory
    assert "ostree_repo/objects/zz is a symbolic link" in str(refusal(repo))


def test_repo_itself_must_be_a_directory(repo: Path, tmp_path: Path) -> None:
    link = tmp_path / "linked_repo"
    os.symlink(repo, link)
    assert str(refusal(link)).endswith("ostree_repo is a symbolic link")
    assert "missing" in str(refusal(tmp_path / "nothing"))


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ("[core]\nrepo_version=1\nmode=bare\n", "is not the configuration of an archive repo"),
        ("[core]\nmode=archive-z2\nparent=/ostree/repo\n", "names a parent repo"),
        ("[core]\nmode=archive-z2\nfsync=false\n   parent=/x\n", "names a parent repo"),
        ("[core]\nmode=archive-z2\nrepo_version=2\n", "is of an unknown repo version"),
        ("root:$6$abc:19000:0:99999:7:::\n", "is not an OSTree repo configuration"),
        ("[core]\nmode=archive-z2\n\xff\n", "is not an OSTree repo configuration"),
    ],
)
def test_config_must_be_an_archive_repo_without_parent(repo: Path, config: str, why: str) -> None:
    (repo / "config").write_bytes(config.encode("latin-1"))
    err = refusal(repo)
    assert str(err) == f"bundle's OSTree repo refused: ostree_repo/config {why}"
    assert "root:" not in str(err)


def test_config_size_is_bounded(repo: Path) -> None:
    (repo / "config").write_text("[core]\nmode=archive-z2\n" + "#" * (stick_repo.MAX_CONFIG))
    assert "more than" in str(refusal(repo))


def test_archive_mode_variants_pass(repo: Path) -> None:
    (repo / "config").write_text("# fioctl\n[core]\n  repo_version = 1\nmode=archive\n")
    stick_repo.check_repo(repo)


def test_bad_names_are_refused_and_shown_escaped(repo: Path) -> None:
    (repo / "refs/heads/bad\x1b[2Jname").write_text("x")
    err = str(refusal(repo))
    assert "\x1b" not in err and "\\x1b[2Jname is not a printable UTF-8 name" in err
    (repo / "refs/heads/bad\x1b[2Jname").unlink()
    os.close(os.open(os.fsencode(repo / "refs/heads") + b"/\xff", os.O_CREAT | os.O_WRONLY))
    assert "is not a printable UTF-8 name" in str(refusal(repo))


def test_entries_and_depth_are_bounded(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = repo / "refs/heads"
    for i in range(stick_repo.MAX_DEPTH):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    assert "nested more than 16 levels deep" in str(refusal(repo))
    subprocess.run(["rm", "-rf", str(repo / "refs/heads/d0")], check=True)
    stick_repo.check_repo(repo)
    monkeypatch.setattr(stick_repo, "MAX_ENTRIES", 10)
    assert "too big (more than 10 entries)" in str(refusal(repo))


def test_walk_of_20k_objects_is_cheap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "ostree_repo"
    init_archive_repo(repo)
    for j in range(256):
        (repo / "objects" / f"{j:02x}").mkdir(exist_ok=True)
    for i in range(20_000):
        (repo / "objects" / f"{i % 256:02x}" / f"{i:062x}.filez").write_bytes(b"")
    t0 = time.monotonic()
    seen = stick_repo.check_repo(repo)
    took = time.monotonic() - t0
    assert seen.entries >= 20_000 + 256
    with capsys.disabled():
        print(f"\nstick repo walk: {seen.entries} entries in {took * 1000:.0f} ms")
    assert took < 5.0
