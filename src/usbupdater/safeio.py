"""Reading untrusted trees (the USB stick) without following links out of them.

Every path is walked one component at a time with `openat`-style calls and `O_NOFOLLOW`, so a
symlink anywhere on the way is refused rather than followed; the final object must be a regular
file (or directory) and is size-checked with `fstat` before a byte is read. Device nodes and FIFOs
are refused without blocking (`O_NONBLOCK` on open). Names must be plain: no `..`, no absolute
paths, no NUL, no empty components.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_NAME = 255


class UnsafePathError(Exception):
    """A path in an untrusted tree is not what it must be (link, device, FIFO, bad name, size)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def check_component(name: str, path: str = "") -> None:
    """Refuse names that could escape or confuse: '', '.', '..', '/', NUL, over-long."""
    if name in ("", ".", "..") or "/" in name or "\0" in name or len(name) > MAX_NAME:
        raise UnsafePathError(path or name, f"unsafe name {name!r}")


def split_relpath(relpath: str) -> list[str]:
    """Split a relative path into checked components."""
    if relpath.startswith("/"):
        raise UnsafePathError(relpath, "absolute path")
    parts = relpath.split("/")
    for part in parts:
        check_component(part, relpath)
    return parts


def open_root(path: str | os.PathLike[str]) -> int:
    """Open the root of an untrusted tree; the root itself must be a real directory."""
    try:
        return os.open(path, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (40, 20):  # ELOOP, ENOTDIR: a link or not a directory
            what = "is a symbolic link" if os.path.islink(path) else "is not a directory"
            raise UnsafePathError(str(path), what) from exc
        raise


def _open_component(dirfd: int, name: str, flags: int, shown: str) -> int:
    try:
        return os.open(name, flags, dir_fd=dirfd)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: O_NOFOLLOW met a symlink
            raise UnsafePathError(shown, "is a symbolic link") from exc
        if exc.errno == 20:  # ENOTDIR: also what O_DIRECTORY|O_NOFOLLOW gives for a symlink
            what = "is not a directory"
            try:
                if stat.S_ISLNK(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode):
                    what = "is a symbolic link"
            except OSError:
                pass
            raise UnsafePathError(shown, what) from exc
        raise


def open_dir(dirfd: int, relpath: str) -> int:
    """Open a subdirectory (every component a real directory); caller closes the fd."""
    fd = os.dup(dirfd)
    if relpath in ("", "."):
        return fd
    try:
        for part in split_relpath(relpath):
            nfd = _open_component(fd, part, _DIR_FLAGS, relpath)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def opened_dir(dirfd: int, relpath: str) -> Iterator[int]:
    fd = open_dir(dirfd, relpath)
    try:
        yield fd
    finally:
        os.close(fd)


def open_file(dirfd: int, relpath: str, max_size: int) -> BinaryIO:
    """Open a regular file no larger than `max_size` bytes for reading."""
    parent, _, name = relpath.rpartition("/")
    check_component(name, relpath)
    with opened_dir(dirfd, parent) as pfd:
        # Look before opening: a device node on a `nodev` mount fails to open with EACCES (no
        # statement about the bundle), and one on another mount must not be opened at all.
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            raise
        except OSError:
            st = None  # let the open say what is wrong
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise UnsafePathError(relpath, "is a symbolic link")
        if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            raise UnsafePathError(relpath, "is not a regular file")
        fd = _open_component(pfd, name, _FILE_FLAGS, relpath)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(relpath, "is not a regular file")
        if st.st_size > max_size:
            raise UnsafePathError(
                relpath, f"is {st.st_size} bytes, more than the {max_size} allowed"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def read_upto(fh: BinaryIO, limit: int) -> bytes:
    """Read until EOF or `limit` bytes. Files here are unbuffered: one read() is one read(2),
    which a failing device answers with the bytes before the bad spot; looping makes the I/O
    error surface as one instead of as a short file that then "fails to parse" or "mismatches"."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = fh.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def read_file(dirfd: int, relpath: str, max_size: int) -> bytes:
    """Read a whole small file, refusing it if it grew past `max_size` while being read."""
    with open_file(dirfd, relpath, max_size) as fh:
        data = read_upto(fh, max_size + 1)
    if len(data) > max_size:
        raise UnsafePathError(relpath, f"grew past the {max_size} bytes allowed")
    return data


def exists(dirfd: int, relpath: str) -> bool:
    """True when `relpath` names something (without following a final symlink)."""
    parent, _, name = relpath.rpartition("/")
    check_component(name, relpath)
    try:
        with opened_dir(dirfd, parent) as pfd:
            os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def is_ignored(name: str) -> bool:
    """Stray files sticks collect: macOS sidecars and metadata, Windows' volume folder."""
    return name.startswith("._") or name in (
        ".DS_Store",
        ".Trashes",
        ".fseventsd",
        ".Spotlight-V100",
        "System Volume Information",
    )


def list_dir(dirfd: int, relpath: str) -> list[str]:
    """Names in a directory, sorted, without stray files; each name is checked."""
    with opened_dir(dirfd, relpath) as fd:
        names = sorted(n for n in os.listdir(fd) if not is_ignored(n))
    for n in names:
        check_component(n, f"{relpath}/{n}")
    return names
