"""What pulling a commit from the stick costs, known without reading the stick twice.

Why not `ostree ls -R -C` (what we did before): it loads the header of every file object, a
whole pass of small reads over the stick before `pull-local` reads it all again. Here only the
commit and its dirtree objects are read (small; `pull-local` reads the same pages right after,
from the page cache), each checked against its checksum, and every file object is `fstatat`ed
(`O_NOFOLLOW`, no data read). The sizes are those of the compressed `.filez` objects, so the
estimate is a lower bound of what the bare sysroot repo takes: a clearly short device is refused
before anything is written, and while the pull runs `PullWatch` stops it before the filesystem
falls under the reserve (ostree's own `min-free-space-*` is the last guard).

Bounds against a hostile stick: each metadata object at most `MAX_META` bytes and checksummed
(so no cycle), each object visited once (work bounded by the objects on the stick, themselves
bounded by `stick_repo.MAX_ENTRIES`), nothing followed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from usbupdater import progress, safeio
from usbupdater.errors import ContentMissingError, VerificationError

MAX_META = 32 << 20  # one commit or dirtree object (an LmP dirtree: a few KiB)
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Closure:
    """A commit's objects as the stick holds them, and which of them the device lacks."""

    new_objects: int  # objects (file and metadata) not yet in the sysroot repo
    new_bytes: int  # their sizes on the stick (compressed file objects)
    new_blocks_bytes: int  # the same, each rounded up to `block` plus one block of metadata
    stick_bytes: int  # every object of the commit on the stick (what a full pull reads)


def _osize(n: int) -> int:
    """GVariant framing offset size for a container of `n` bytes."""
    return 0 if n == 0 else 1 if n <= 0xFF else 2 if n <= 0xFFFF else 4 if n <= 0xFFFFFFFF else 8


def _int(data: bytes, at: int, k: int) -> int:
    return int.from_bytes(data[at : at + k], "little")


def _array(data: bytes) -> Iterator[bytes]:
    """The elements of a GVariant array of variable-size elements (alignment 1)."""
    n = len(data)
    if n == 0:
        return
    k = _osize(n)
    table = _int(data, n - k, k)
    if table > n - k or (n - table) % k:
        raise ValueError("bad array framing")
    start = 0
    for i in range(table, n, k):
        end = _int(data, i, k)
        if end < start or end > table:
            raise ValueError("bad array offset")
        yield data[start:end]
        start = end


def _checksums(element: bytes, count: int) -> list[bytes]:
    """The `count` trailing `ay` checksums of a `(say)`/`(sayay)` element."""
    m = len(element)
    k = _osize(m)
    ends = [_int(element, m - (i + 1) * k, k) for i in range(count)]  # s end, then ay ends
    bounds = [*ends, m - count * k]
    out = [element[bounds[i] : bounds[i + 1]] for i in range(count)]
    if any(len(c) != 32 for c in out):
        raise ValueError("bad checksum in dirtree")
    return out


def parse_dirtree(data: bytes) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """`(a(say)a(sayay))`: file checksums, (tree, meta) checksums of subdirectories."""
    n = len(data)
    k = _osize(n)
    if n < k:
        raise ValueError("short dirtree")
    split = _int(data, n - k, k)
    if split > n - k:
        raise ValueError("bad dirtree framing")
    files = [_checksums(e, 1)[0] for e in _array(data[:split])]
    dirs = [(c[0], c[1]) for c in (_checksums(e, 2) for e in _array(data[split : n - k]))]
    return files, dirs


def parse_commit_root(data: bytes) -> tuple[bytes, bytes]:
    """`(a{sv}aya(say)sstayay)`: the root dirtree and dirmeta checksums."""
    n = len(data)
    k = _osize(n)
    if n < 6 * k + 72:
        raise ValueError("short commit")
    body_end = _int(data, n - 5 * k, k)
    tree_end = _int(data, n - 6 * k, k)
    tree_start = -(-body_end // 8) * 8 + 8  # the timestamp `t`, 8-aligned, follows the body
    tree, meta = data[tree_start:tree_end], data[tree_end : n - 6 * k]
    if len(tree) != 32 or len(meta) != 32:
        raise ValueError("bad commit framing")
    return tree, meta


def object_path(csum: str, kind: str) -> str:
    return f"objects/{csum[:2]}/{csum[2:]}.{kind}"


class _Stick:
    """Objects of the stick's archive repo, opened by `dirfd` with nothing followed."""

    def __init__(self, root: int, commit: str) -> None:
        self.root = root
        self.commit = commit

    def size(self, rel: str, csum: str) -> Optional[int]:
        parent, _, name = rel.rpartition("/")
        try:
            with safeio.opened_dir(self.root, parent) as fd:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except safeio.UnsafePathError as exc:
            raise VerificationError(f"bundle's OSTree repo refused: {exc.reason}") from None
        if not stat.S_ISREG(st.st_mode):
            raise VerificationError(f"bundle's OSTree repo refused: object {csum} is not a file")
        return st.st_size

    def need(self, rel: str, csum: str) -> int:
        size = self.size(rel, csum)
        if size is None:
            raise ContentMissingError(
                f"commit {self.commit[:12]}: bundle content missing (object {csum})"
            )
        return size

    def metadata(self, csum: str, kind: str) -> bytes:
        rel = object_path(csum, kind)
        try:
            data = safeio.read_file(self.root, rel, MAX_META)
        except FileNotFoundError:
            raise ContentMissingError(
                f"commit {self.commit[:12]}: bundle content missing (object {csum})"
            ) from None
        except safeio.UnsafePathError as exc:
            raise VerificationError(f"bundle's OSTree repo refused: {exc.reason}") from None
        if hashlib.sha256(data).hexdigest() != csum:
            raise VerificationError(
                f"commit {self.commit[:12]}: bundle content failed verification (object {csum})"
            )
        return data


def walk_commit(src_repo: Path, commit: str) -> Iterator[tuple[str, str, int]]:
    """(checksum, kind, size on the stick) of every object of the commit, each once.

    Reads the commit and dirtree objects (checked against their checksums), stats the rest.
    """
    root = safeio.open_root(src_repo)
    try:
        stick = _Stick(root, commit)
        data = stick.metadata(commit, "commit")
        yield commit, "commit", len(data)
        meta_size = stick.size(object_path(commit, "commitmeta"), commit)
        if meta_size is not None:
            yield commit, "commitmeta", meta_size
        try:
            tree, meta = parse_commit_root(data)
        except ValueError:
            raise VerificationError(f"commit {commit[:12]}: not a commit object") from None
        seen: set[bytes] = set()
        trees = [(tree, meta)]
        while trees:
            tree, meta = trees.pop()
            if meta not in seen:
                seen.add(meta)
                m = meta.hex()
                yield m, "dirmeta", stick.need(object_path(m, "dirmeta"), m)
            if tree in seen:
                continue
            seen.add(tree)
            t = tree.hex()
            data = stick.metadata(t, "dirtree")
            yield t, "dirtree", len(data)
            try:
                files, dirs = parse_dirtree(data)
            except ValueError:
                raise VerificationError(
                    f"commit {commit[:12]}: bundle content failed verification (object {t})"
                ) from None
            for f in files:
                if f not in seen:
                    seen.add(f)
                    c = f.hex()
                    yield c, "filez", stick.need(object_path(c, "filez"), c)
            trees.extend(dirs)
    finally:
        os.close(root)


_DEVICE_KIND = {"filez": "file", "commitmeta": "commitmeta"}


def closure(src_repo: Path, commit: str, dest_repo: Path, block: int) -> Closure:
    """Walk the commit on the stick; count what the device's repo does not have yet."""
    new = new_bytes = blocks = total = 0
    for csum, kind, size in walk_commit(src_repo, commit):
        total += size
        rel = object_path(csum, _DEVICE_KIND.get(kind, kind))
        try:
            os.lstat(dest_repo / rel)  # a bare repo stores symbolic links as links
            continue
        except FileNotFoundError:
            pass
        new += 1
        new_bytes += size
        blocks += -(-size // block) * block + block
    return Closure(new, new_bytes, blocks, total)


class PullWatch:
    """While `ostree pull-local` runs: count its reads into the progress meter and stop it
    before the sysroot repo's filesystem falls under `floor_bytes` free."""

    def __init__(
        self,
        repo: Path,
        free_space: Callable[[Path], int],
        floor_bytes: int,
        meter: Optional[progress.Meter],
    ) -> None:
        self.repo = repo
        self.free_space = free_space
        self.floor_bytes = floor_bytes
        self.meter = meter
        self.stopped_for_space = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pull-watch", daemon=True)
        self._pid: Optional[int] = None
        self._read = 0

    def __enter__(self) -> PullWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(POLL_SECONDS):
            if self._pid is None:
                self._pid = _child_named(b"ostree")
            if self._pid is not None:
                self._count(self._pid)
            try:
                short = self.free_space(self.repo) < self.floor_bytes
            except OSError:
                short = False
            if short and self._pid is not None and not self.stopped_for_space:
                self.stopped_for_space = True
                with contextlib.suppress(OSError):  # its own group (usbupdater.proc)
                    os.killpg(self._pid, signal.SIGTERM)

    def _count(self, pid: int) -> None:
        try:
            with open(f"/proc/{pid}/io", "rb") as fh:
                text = fh.read()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith(b"rchar:"):
                now = int(line.split()[1])
                if self.meter is not None and now > self._read:
                    self.meter.add(now - self._read)
                self._read = max(self._read, now)


def _child_named(comm: bytes) -> Optional[int]:
    """A child of this process whose command name is `comm` (the pull; /proc, no listing of
    anything else)."""
    me = os.getpid()
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                line = fh.read()
        except OSError:
            continue
        head, _, rest = line.rpartition(b")")
        name = head.partition(b"(")[2]
        fields = rest.split()
        if name == comm and len(fields) > 1 and int(fields[1]) == me:
            return pid
    return None
