"""The stick's `ostree_repo/`, checked before any `ostree` command opens it.

ostree follows symlinks and opens files without O_NONBLOCK: a `config` linked to /etc/shadow
puts that file's first line in ostree's error, a FIFO as a ref or an object blocks it for good.
So before a repo path is handed to ostree, the whole tree is walked with `openat`/`fstatat`
(`O_NOFOLLOW`, nothing followed, no file data read) and refused unless every entry is a plain
directory or a regular file with a safe name, on the repo's own filesystem. A real
`fioctl targets offline-update` repo passes: it is an archive repo, whose symlinks are stored as
`.filez` objects, not as links.

Bounds (a hostile stick gets bounded time and memory): at most `MAX_ENTRIES` entries, `MAX_DEPTH`
levels, directories streamed (never listed whole), `config` at most `MAX_CONFIG` bytes. `config`
must look like an archive repo's (`[core] mode=archive-z2` or `archive`) and must not name a
`parent` repo (ostree would open that path too).

What stays open: the walk and ostree's reads are separate, so a stick that changes its content
between the two (a FUSE or faulty device) is not covered here; ostree's `pull-local --untrusted`
still re-checksums every object it copies.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from usbupdater import safeio
from usbupdater.errors import VerificationError
from usbupdater.proc import sanitize
from usbupdater.safeio import UnsafePathError

MAX_ENTRIES = 1_000_000  # files and directories under ostree_repo/ (an LmP rootfs: ~100k)
MAX_DEPTH = 16  # objects/xx/file is 3 deep; refs/remotes/<remote>/<branch/with/slashes>
MAX_CONFIG = 64 << 10
ARCHIVE_MODES = ("archive-z2", "archive")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


@dataclass(frozen=True)
class RepoCheck:
    """What the walk saw: entries (files and directories) and how long it took."""

    entries: int
    seconds: float


def refused(rel: str, why: str) -> VerificationError:
    """Exit 80 naming the (escaped, shortened) path relative to the stick."""
    shown = sanitize(f"ostree_repo/{rel}" if rel else "ostree_repo", 160)
    return VerificationError(f"bundle's OSTree repo refused: {shown} {why}")


def check_repo(repo: Path) -> RepoCheck:
    """Walk `repo` (the stick's ostree_repo/) and refuse what ostree must not open."""
    t0 = time.monotonic()
    try:
        root = safeio.open_root(repo)
    except UnsafePathError as exc:
        raise refused("", exc.reason) from None
    except FileNotFoundError:
        raise refused("", "is missing") from None
    except OSError as exc:
        raise refused("", f"is unreadable ({os.strerror(exc.errno or 0)})") from None
    try:
        _check_config(root)
        walk = _Walk(os.fstat(root).st_dev)
        walk.directory(root, "", 0)
    finally:
        os.close(root)
    return RepoCheck(walk.count, time.monotonic() - t0)


class _Walk:
    def __init__(self, dev: int) -> None:
        self.dev = dev
        self.count = 0

    def directory(self, fd: int, rel: str, depth: int) -> None:
        try:
            with os.scandir(fd) as entries:  # streamed: a huge directory costs no memory
                for entry in entries:
                    self.entry(fd, entry.name, f"{rel}/{entry.name}" if rel else entry.name, depth)
        except OSError as exc:
            raise refused(rel, f"is unreadable ({os.strerror(exc.errno or 0)})") from None

    def entry(self, dirfd: int, name: str, rel: str, depth: int) -> None:
        self.count += 1
        if self.count > MAX_ENTRIES:
            raise refused("", f"is too big (more than {MAX_ENTRIES} entries)")
        try:
            safeio.check_component(name, rel)
        except UnsafePathError:
            raise refused(rel, "is not a safe name") from None
        if not name.isprintable() or name != name.encode("utf-8", "replace").decode():
            raise refused(rel, "is not a printable UTF-8 name")
        # fstatat, not the directory entry's type: a crafted filesystem can make them disagree
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        if st.st_dev != self.dev:
            raise refused(rel, "is on another filesystem")
        if stat.S_ISREG(st.st_mode):
            return
        if not stat.S_ISDIR(st.st_mode):
            kind = next((what for test, what in _KINDS if test(st.st_mode)), "not a file")
            raise refused(rel, f"is {kind}")
        if depth + 1 >= MAX_DEPTH:
            raise refused(rel, f"is nested more than {MAX_DEPTH} levels deep")
        try:
            sub = os.open(name, _DIR_FLAGS, dir_fd=dirfd)
        except OSError as exc:  # replaced by a link or a file since the fstatat
            why = f"is not openable as a directory ({os.strerror(exc.errno or 0)})"
            raise refused(rel, why) from None
        try:
            now = os.fstat(sub)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                raise refused(rel, "is changing while it is read")
            self.directory(sub, rel, depth + 1)
        finally:
            os.close(sub)


def _check_config(root: int) -> None:
    """`config` is a small regular file describing an archive repo with no parent repo."""
    try:
        data = safeio.read_file(root, "config", MAX_CONFIG)
    except UnsafePathError as exc:
        raise refused("config", exc.reason) from None
    except FileNotFoundError:
        raise refused("config", "is missing") from None
    except OSError as exc:
        raise refused("config", f"is unreadable ({os.strerror(exc.errno or 0)})") from None
    try:
        groups = parse_keyfile(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise refused("config", "is not an OSTree repo configuration") from None
    core = groups.get("core", {})
    if core.get("mode") not in ARCHIVE_MODES:
        raise refused("config", "is not the configuration of an archive repo")
    if core.get("repo_version", "1") != "1":
        raise refused("config", "is of an unknown repo version")
    if any(key.split("[", 1)[0] == "parent" for key in core):
        raise refused("config", "names a parent repo")


def parse_keyfile(text: str) -> dict[str, dict[str, str]]:
    """GLib key-file syntax as ostree reads it: leading blanks dropped, later keys win.

    Any line that is neither blank, a comment, a `[group]` nor `key=value` is an error, so we
    never read a file differently from ostree.
    """
    groups: dict[str, dict[str, str]] = {}
    current: Optional[dict[str, str]] = None
    for raw in text.split("\n"):
        line = raw.lstrip(" \t\r\f\v").rstrip("\r")
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ValueError("bad group line")
            current = groups.setdefault(line[1:-1], {})
            continue
        key, eq, value = line.partition("=")
        if not eq or current is None or not key.strip():
            raise ValueError("bad key line")
        current[key.strip()] = value.strip()
    return groups
