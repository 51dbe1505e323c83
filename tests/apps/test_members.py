"""The one tar member rule: what verification refuses, extraction refuses, and nothing escapes.

Archives are real gzip tars; "verification" is `scan_bundle` (what `verify.read_bundle` runs) and
"extraction" is `scan_bundle` + `write_member` into a directory (what `extract_bundle` runs).
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usbupdater.apps.members import Limits, MemberError, scan_bundle, write_member
from usbupdater.apps.streams import GzipError

pytestmark = pytest.mark.timeout(120)
ERRORS = (MemberError, GzipError, tarfile.TarError, EOFError)
DEFAULT = Limits()
Spec = tuple[str, str, str]  # (name, kind, link target or data)


def tinfo(
    name: str, kind: str = "file", extra: str = "", mode: int = 0o644
) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.mode, ti.mtime = mode, 0
    data = b""
    if kind == "file":
        data = (extra or name).encode()
        ti.size = len(data)
    else:
        ti.type = {
            "dir": tarfile.DIRTYPE,
            "symlink": tarfile.SYMTYPE,
            "hardlink": tarfile.LNKTYPE,
            "fifo": tarfile.FIFOTYPE,
            "chr": tarfile.CHRTYPE,
            "blk": tarfile.BLKTYPE,
        }[kind]
        ti.linkname = extra
    return ti, data


def tgz(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    raw = b"".join(
        ti.tobuf(tarfile.GNU_FORMAT) + data + bytes(-len(data) % 512) for ti, data in members
    )
    return gzip.compress(raw + bytes(1024), mtime=0)


def build(specs: list[Spec]) -> bytes:
    return tgz([tinfo(n, k, x) for n, k, x in specs])


def verify(blob: bytes, limits: Limits = DEFAULT) -> Optional[str]:
    """None if verification accepts, else its reason."""
    try:
        for _, f in scan_bundle(io.BytesIO(blob), limits):
            if f is not None:
                f.read()
    except ERRORS as exc:
        return str(exc)
    return None


def extract(blob: bytes, dest: Path, limits: Limits = DEFAULT) -> Optional[str]:
    """None if extraction succeeds, else its reason."""
    dest.mkdir()
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for m, f in scan_bundle(io.BytesIO(blob), limits):
            write_member(fd, m, f)
    except (*ERRORS, OSError) as exc:
        return str(exc)
    finally:
        os.close(fd)
    return None


def tree(root: Path) -> set[str]:
    out = set()
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


def both_refuse(tmp_path: Path, blob: bytes, needle: str, limits: Limits = DEFAULT) -> None:
    reason = verify(blob, limits)
    assert reason is not None and needle in reason, reason
    outer = tmp_path / "o1" / "o2"
    outer.mkdir(parents=True)
    assert extract(blob, outer / "dest", limits) == reason
    assert tree(tmp_path) <= {"o1", "o1/o2", "o1/o2/dest"} | {
        f"o1/o2/dest/{p}" for p in tree(outer / "dest")
    }
    assert not (tmp_path / "x").exists() and not (tmp_path / "o1" / "x").exists()


HOSTILE = {
    "symlink-chain": (
        [
            ("d", "symlink", "."),
            ("d/e", "symlink", ".."),
            ("e/f", "symlink", ".."),
            ("e/f/x", "file", ""),
        ],
        "under the symbolic link 'd'",
    ),
    "chain-by-resolution": (
        [("d", "symlink", "."), ("e", "symlink", "d/.."), ("x", "file", "")],
        "links out",
    ),
    "later-link-changes-earlier": (
        [("a", "symlink", "b/../x"), ("b", "symlink", "."), ("x", "file", "")],
        "after another link resolved through it",
    ),
    "absolute-link": ([("l", "symlink", "/etc/shadow")], "absolute link"),
    "link-out": ([("a/l", "symlink", "../../x")], "links out"),
    "link-to-parent": ([("l", "symlink", "..")], "links out"),
    "dotdot-name": ([("../x", "file", "")], "climbs out"),
    "dotdot-inside": ([("a/../../x", "file", "")], "climbs out"),
    "absolute-name": ([("/etc/x", "file", "")], "absolute path"),
    "duplicate": ([("a", "file", "1"), ("a", "file", "2")], "more than once"),
    "duplicate-dot-slash": ([("a", "file", "1"), ("./a", "file", "2")], "more than once"),
    "file-then-dir": ([("a", "file", ""), ("a", "dir", "")], "more than once"),
    "hard-link": ([("a", "file", ""), ("h", "hardlink", "a")], "hard link"),
    "hard-link-out": ([("h", "hardlink", "/etc/shadow")], "hard link"),
    "fifo": ([("p", "fifo", "")], "device or FIFO"),
    "char-device": ([("c", "chr", "")], "device or FIFO"),
    "block-device": ([("b", "blk", "")], "device or FIFO"),
    "under-file": ([("a", "file", ""), ("a/b", "file", "")], "under the regular file"),
    "under-link": ([("l", "symlink", "sub"), ("l/x", "file", "")], "under the symbolic link"),
    "long-component": ([("a" * 256, "file", "")], "too long"),
    "too-deep": ([("/".join("d" * 33), "file", "")], "too deep"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_refused_by_both(tmp_path: Path, case: str) -> None:
    specs, needle = HOSTILE[case]
    both_refuse(tmp_path, build(specs), needle)


def test_bounds(tmp_path: Path) -> None:
    members = [("docker-compose.yml", "file", "x" * 100), ("a", "file", "y" * 50)]
    blob = build(members)
    assert verify(blob, Limits(member=100, total=150)) is None
    both_refuse(tmp_path / "1", blob, "over the 99 allowed", Limits(member=99))
    both_refuse(tmp_path / "2", blob, "more than 99 bytes", Limits(compose=99))
    both_refuse(tmp_path / "3", blob, "unpacks to more than 149", Limits(total=149))
    both_refuse(tmp_path / "4", blob, "more than 1 members", Limits(members=1))
    padded = tgz([tinfo("a", "file", "z")]) + gzip.compress(bytes(1 << 20), mtime=0)
    both_refuse(tmp_path / "5", padded, "unpacks to more than", Limits(total=0, members=10))


def test_dot_slash_and_modes_accepted_by_both(tmp_path: Path) -> None:
    blob = tgz(
        [
            tinfo("./", "dir"),
            tinfo("./docker-compose.yml", "file", "services: {}\n"),
            tinfo("./conf/", "dir", mode=0o7777),
            tinfo("./conf/run.sh", "file", "#!/bin/sh\n", mode=0o6777),
            tinfo("./conf/data", "file", "d", mode=0o666),
            tinfo("./conf/secret", "file", "s", mode=0o400),
            tinfo("./conf/link", "symlink", "../docker-compose.yml"),
            tinfo("./top", "symlink", "."),
            tinfo("./conf/./x/./y", "file", "deep"),
        ]
    )
    assert verify(blob) is None
    dest = tmp_path / "dest"
    assert extract(blob, dest) is None
    assert (dest / "conf" / "x" / "y").read_bytes() == b"deep"
    assert (dest / "conf" / "link").read_bytes() == b"services: {}\n"
    modes = {
        n: stat.S_IMODE((dest / "conf" / n).lstat().st_mode) for n in ("run.sh", "data", "secret")
    }
    assert modes == {"run.sh": 0o755, "data": 0o644, "secret": 0o600}
    assert stat.S_IMODE((dest / "conf").stat().st_mode) == 0o755


def test_extraction_never_follows_a_planted_link(tmp_path: Path) -> None:
    """Even if the directory held a link (it never does), write_member does not pass through it."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "outside").mkdir()
    (dest / "a").symlink_to(tmp_path / "outside")
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for m, f in scan_bundle(io.BytesIO(build([("a/x", "file", "")]))):
            with pytest.raises(OSError):
                write_member(fd, m, f)
    finally:
        os.close(fd)
    assert not list((tmp_path / "outside").iterdir())


NAMES = ["a", "b", "c", "a/b", "a/b/c", "b/c", "./a", "a/./c", "d", "d/e", "e/f", "e/f/x", ".."]
TARGETS = [".", "..", "a", "b", "a/b", "../a", "b/..", "a/../..", "d/..", "c/d/../..", "/etc", "e"]
KINDS = ["file", "file", "dir", "symlink", "symlink", "hardlink", "fifo"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(NAMES), st.sampled_from(KINDS), st.sampled_from(TARGETS)),
        max_size=8,
    )
)
def test_verification_accepts_iff_extraction_succeeds(specs: list[Spec]) -> None:
    blob = build([(n, k, t if k in ("symlink", "hardlink") else "") for n, k, t in specs])
    accepted = verify(blob) is None
    tmp = Path(tempfile.mkdtemp(prefix="h1-members-"))
    try:
        base = tmp / "o1" / "o2"
        base.mkdir(parents=True)
        reason = extract(blob, base / "dest")
        assert accepted == (reason is None), reason
        dest = (base / "dest").resolve()
        inside = {f"o1/o2/dest/{p}" for p in tree(dest)}
        assert tree(tmp) == {"o1", "o1/o2", "o1/o2/dest"} | inside
        if accepted:
            for p in dest.rglob("*"):
                if p.is_symlink():
                    real = Path(os.path.realpath(p))
                    assert real == dest or dest in real.parents, (p, real)
    finally:
        shutil.rmtree(tmp)
