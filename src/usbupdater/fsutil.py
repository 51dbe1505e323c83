"""Durable file primitives every state write goes through.

`atomic_write` is the only way usbupdater replaces a file on the device: write a temporary file in
the same directory, fsync it, rename it over the target (the commit point: readers see the old or
the new content, never a mix), then fsync the directory so the rename survives power loss.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]
_MAX_SCAN = 10_000


def fsync_dir(path: PathLike) -> None:
    """Make a directory's entries (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: PathLike, mode: int = 0o755) -> None:
    """Create a directory and its parents, fsyncing each parent that gained an entry."""
    p = Path(path)
    missing = []
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=mode)
        except FileExistsError:
            continue
        fsync_dir(d.parent)


def atomic_write(path: PathLike, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically and durably."""
    target = Path(path)
    makedirs_durable(target.parent)
    tmp = target.with_name(f".{target.name}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, target)  # commit point
    fsync_dir(target.parent)


def sweep_stale_temps(directory: PathLike, prefix: str = ".") -> int:
    """Remove `<prefix>....tmp.<pid>` temporaries of dead writers in `directory`; how many.

    The core's commands and the service call it on their own directories when they start (not
    on every write), so a step killed inside an atomic write leaves no temporary behind once
    anything runs again.
    """
    d = Path(directory)
    names = []
    try:
        with os.scandir(d) as it:
            for n, entry in enumerate(it):
                if n >= _MAX_SCAN:  # bounded work whatever the directory holds
                    break
                if entry.name.startswith(prefix) and ".tmp." in entry.name:
                    names.append(entry.name)
    except OSError:
        return 0
    removed = 0
    for name in names:
        suffix = name.rsplit(".tmp.", 1)[1]
        if not suffix.isdigit() or int(suffix) == os.getpid() or _alive(int(suffix)):
            continue
        with contextlib.suppress(OSError):
            (d / name).unlink()
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, not ours to signal
    return True


def atomic_write_text(path: PathLike, text: str, mode: int = 0o644) -> None:
    atomic_write(path, text.encode("utf-8"), mode)


def remove_durable(path: PathLike) -> None:
    """Unlink a file (if present) and make the removal durable."""
    p = Path(path)
    try:
        p.unlink()
    except FileNotFoundError:
        return
    fsync_dir(p.parent)
