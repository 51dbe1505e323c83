"""The one rule for the members of a compose bundle tgz, used at verification and extraction.

`install` verifies the bundle with `scan_bundle` and `run` extracts it with the same function and
the same `MemberPolicy`, so a bundle that installs also extracts (a bundle refused at `run` would
reboot into a rollback). The rule is the stdlib's `tarfile.data_filter` (Python 3.12), written out
here because older Pythons lack it, made stricter where a compose bundle needs nothing more:

- names: `./` parts and trailing `/` are dropped once (`./a/b` is `a/b`; `./` is the top
  directory); absolute names, `..` parts, NUL, a component over 255 bytes, a name over 4096
  bytes or deeper than 32 levels are refused; a name may appear only once;
- types: regular files, directories and symbolic links only; hard links, devices, FIFOs, sparse
  and unknown types are refused;
- paths: no member lies under a symbolic link or a regular file of the archive, so extraction
  never passes through a link;
- symbolic links: relative, and their target, resolved against the links declared before them
  (chains followed, at most 40 hops), stays inside the app directory; a path that a link's
  resolution went through may not become a link later (that would change the earlier answer);
- modes as `data_filter` sets them: files lose setuid/setgid/sticky and group/other write, keep
  execute only if the owner has it, and are owner read-write; directories are 0755; owners are
  never applied;
- bounds (`Limits`): member count, each file's size, `docker-compose.yml`'s size, the sum of all
  file sizes, and the unpacked tar stream.

`write_member` creates a checked member below a directory fd without following any link: every
directory is opened with `O_NOFOLLOW | O_DIRECTORY` relative to its parent, files are created
with `O_EXCL | O_NOFOLLOW`, links with `symlink(..., dir_fd=)` and never opened.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Optional

from usbupdater.apps.streams import CHUNK, GunzipReader

COMPOSE_FILE = "docker-compose.yml"
MAX_MEMBERS = 10_000
MAX_TOTAL = 256 << 20  # compose bundles hold a compose file and a few small files
MAX_MEMBER = MAX_TOTAL
MAX_COMPOSE = 1 << 20  # composectl's limit
MAX_NAME = 4096
MAX_COMPONENT = 255
MAX_DEPTH = 32
MAX_HOPS = 40  # the kernel's limit on symbolic links followed in one lookup
_RESOLVE_BUDGET = 1_000_000  # components walked resolving all links of one archive
_HEADER_ALLOWANCE = 8 << 10  # tar headers, long-name records and padding per member

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class MemberError(ValueError):
    """A member breaks the rule; str() names it and says why."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what a bundle may unpack to."""

    member: int = MAX_MEMBER
    compose: int = MAX_COMPOSE
    total: int = MAX_TOTAL
    members: int = MAX_MEMBERS

    @property
    def stream(self) -> int:
        """Bound on the decompressed tar stream: the files plus headers and padding."""
        return self.total + (self.members + 1) * _HEADER_ALLOWANCE


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Member:
    """A checked member: normalised name ("" is the top directory) and what to create."""

    name: str
    kind: str  # "file", "dir" or "symlink"
    size: int = 0
    mode: int = 0o755
    target: str = ""  # of a symlink


def _label(raw: str) -> str:
    return repr(raw if len(raw) <= 200 else raw[:200] + "...")


def file_mode(mode: int) -> int:
    """A regular file's mode as `data_filter` leaves it."""
    mode &= 0o755
    if not mode & 0o100:
        mode &= ~0o111
    return mode | 0o600


class MemberPolicy:
    """Checks the members of one archive in order (it remembers names, links and totals)."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.count = 0
        self.total = 0
        self._kinds: dict[str, str] = {"": "implicit"}  # path -> file/dir/symlink/implicit
        self._links: dict[str, str] = {}  # symlink path -> target
        self._through: set[str] = set()  # paths some link's resolution went through
        self._budget = _RESOLVE_BUDGET

    def check(self, ti: tarfile.TarInfo) -> Member:
        self.count += 1
        if self.count > self.limits.members:
            raise MemberError(f"holds more than {self.limits.members} members")
        label = f"member {_label(ti.name)}"
        name = self._normalise(ti.name, label)
        parts = name.split("/") if name else []
        if ti.isdir():
            kind = "dir"
        elif ti.issym():
            kind = "symlink"
        elif ti.islnk():
            raise MemberError(f"{label} is a hard link (not allowed)")
        elif ti.ischr() or ti.isblk() or ti.isfifo():
            raise MemberError(f"{label} is a device or FIFO")
        elif ti.isreg() and not ti.issparse():
            kind = "file"
        else:
            raise MemberError(f"{label} has type {ti.type!r}, which is not allowed")
        if not name and kind != "dir":
            raise MemberError(f"{label} has an empty name")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            seen = self._kinds.setdefault(parent, "implicit")
            if seen == "symlink":
                raise MemberError(f"{label} lies under the symbolic link {parent!r}")
            if seen == "file":
                raise MemberError(f"{label} lies under the regular file {parent!r}")
        before = self._kinds.get(name)
        if before is not None and not (before == "implicit" and kind == "dir"):
            raise MemberError(f"{label} appears more than once")
        self._kinds[name] = kind
        if kind == "dir":
            return Member(name, kind)
        if kind == "symlink":
            return Member(name, kind, target=self._check_link(name, parts, ti.linkname, label))
        size = ti.size
        if size > self.limits.member:
            raise MemberError(f"{label} is {size} bytes, over the {self.limits.member} allowed")
        if name == COMPOSE_FILE and size > self.limits.compose:
            raise MemberError(f"{label} is more than {self.limits.compose} bytes")
        self.total += size
        if self.total > self.limits.total:
            raise MemberError(f"unpacks to more than {self.limits.total} bytes")
        return Member(name, kind, size, file_mode(ti.mode))

    @staticmethod
    def _normalise(raw: str, label: str) -> str:
        if "\0" in raw:
            raise MemberError(f"{label} has a NUL in its name")
        if raw.startswith("/"):
            raise MemberError(f"{label} has an absolute path")
        parts = [p for p in raw.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise MemberError(f"{label} climbs out with '..'")
        name = "/".join(parts)
        if (
            len(parts) > MAX_DEPTH
            or len(os.fsencode(name)) > MAX_NAME
            or any(len(os.fsencode(p)) > MAX_COMPONENT for p in parts)
        ):
            raise MemberError(f"{label} has a name too long or too deep")
        return name

    def _check_link(self, name: str, parts: list[str], target: str, label: str) -> str:
        if not target or "\0" in target or len(os.fsencode(target)) >= MAX_NAME:
            raise MemberError(f"{label} has an empty, too long or NUL-bearing link target")
        if target.startswith("/"):
            raise MemberError(f"{label} is an absolute link ({_label(target)})")
        if name in self._through:
            raise MemberError(f"{label} becomes a link after another link resolved through it")
        self._resolve(parts[:-1], target, label, [0])
        self._links[name] = target
        return target

    def _resolve(self, base: list[str], target: str, label: str, hops: list[int]) -> list[str]:
        """Where `target`, relative to directory `base`, leads given the links declared so far."""
        out = list(base)
        for comp in target.split("/"):
            self._budget -= 1
            if self._budget < 0:
                raise MemberError(f"{label}: the archive's links are too many or too long")
            if comp in ("", "."):
                continue
            if comp == "..":
                if not out:
                    raise MemberError(f"{label} links out of the app directory")
                out.pop()
                continue
            out.append(comp)
            path = "/".join(out)
            self._through.add(path)
            link = self._links.get(path)
            if link is not None:
                hops[0] += 1
                if hops[0] > MAX_HOPS:
                    raise MemberError(f"{label} starts a chain of more than {MAX_HOPS} links")
                out = self._resolve(out[:-1], link, label, hops)
        return out


def scan_bundle(
    raw: Any, limits: Limits = DEFAULT_LIMITS
) -> Iterator[tuple[Member, Optional[IO[bytes]]]]:
    """Each member of the tgz read from `raw` (anything with `read(n)`), checked in order.

    Regular files come with a file object to read before the next member. After the tar's end the
    rest of the gzip stream is read too, so a truncated or trailing-garbage stream is refused.
    Raises MemberError, streams.GzipError, tarfile.TarError or EOFError.
    """
    gz = io.BufferedReader(GunzipReader(raw, limits.stream), CHUNK)
    policy = MemberPolicy(limits)
    with tarfile.open(fileobj=gz, mode="r|") as tf:
        for ti in tf:
            m = policy.check(ti)
            yield m, tf.extractfile(ti) if m.kind == "file" else None
    while gz.read(CHUNK):
        pass


def _open_dir(parent_fd: int, name: str) -> int:
    """Open (creating it 0755 if absent) directory `name` under `parent_fd`, never via a link."""
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    except FileExistsError:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    os.fchmod(fd, 0o755)  # whatever the umask
    return fd


def write_member(root_fd: int, m: Member, data: Optional[IO[bytes]]) -> None:
    """Create checked member `m` below directory `root_fd`; `data` is a file's content."""
    if not m.name:
        return  # the top directory itself
    parts = m.name.split("/")
    opened: list[int] = []
    try:
        dir_fd = root_fd
        for comp in parts[:-1]:
            dir_fd = _open_dir(dir_fd, comp)
            opened.append(dir_fd)
        last = parts[-1]
        if m.kind == "dir":
            opened.append(_open_dir(dir_fd, last))
        elif m.kind == "symlink":
            os.symlink(m.target, last, dir_fd=dir_fd)
        else:
            fd = os.open(last, _FILE_FLAGS, 0o600, dir_fd=dir_fd)
            with os.fdopen(fd, "wb") as out:
                if data is not None:
                    shutil.copyfileobj(data, out, CHUNK)
                os.fchmod(out.fileno(), m.mode)
    finally:
        for fd in opened:
            os.close(fd)
