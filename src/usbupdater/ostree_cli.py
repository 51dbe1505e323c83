"""The `ostree` CLI as usbupdater calls it: one runner with a timeout per subcommand, the parsers
of its output, and the mapping of its failures to fixed messages and exit codes.

ostree's stderr is never quoted: a failure becomes a fixed message plus, when one can be picked
out, a validated object checksum (the sanitised tail goes to the debug log only).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from usbupdater import log, proc
from usbupdater.errors import (
    AdapterError,
    ContentMissingError,
    NoSpaceError,
    UpdaterError,
    VerificationError,
)
from usbupdater.hexdigest import PATTERN as HEX
from usbupdater.hexdigest import is_sha256_hex

# "* lmp 0a64...ab.1 (pending)" -- a deployment line of `ostree admin status`.
_STATUS_LINE = re.compile(rf"^(?P<mark>[* ]) (?P<os>\S+) (?P<commit>{HEX})\.(?P<serial>\d+)")
# "-00644 0 0 100000 <checksum> /usr/big" -- one entry of `ostree ls -R -C`.
_LS_LINE = re.compile(
    rf"^(?P<type>[-dl])(?P<mode>[0-7]+)\s+\d+\s+\d+\s+(?P<size>\d+)\s+(?P<csum>{HEX})\s"
)
# "-00644 0 0     23 /usr/lib/firmware/version.txt" -- `ostree ls -d` (a link ends " -> target").
LS_ENTRY = re.compile(r"^(?P<type>[-dl])[0-7]+\s+\d+\s+\d+\s+(?P<size>\d+)\s(?P<path>/\S*)")
_DEPLOY_DIR = re.compile(rf"^(?P<commit>{HEX})\.(?P<serial>\d+)$")

# Seconds per ostree subcommand. pull-local and ls read the stick (a slow one: a few MB/s);
# deploy and cleanup write the sysroot. The agent's own `updater_timeout` (3600) caps the whole
# install above these, so the core reports its own reason first.
PULL_TIMEOUT = 3000.0
_TIMEOUTS = {
    "pull-local": PULL_TIMEOUT,
    "ls": 600.0,
    "admin deploy": 900.0,
    "admin cleanup": 900.0,
    "admin undeploy": 600.0,
    "admin status": 60.0,
}
DEFAULT_TIMEOUT = 600.0
logger = log.get_logger("rootfs")


def is_commit(value: str) -> bool:
    return is_sha256_hex(value)


@dataclass(frozen=True)
class Deployment:
    """One deployment as `ostree admin status` lists it; index 0 is what boots next."""

    index: int
    osname: str
    commit: str
    serial: int
    booted: bool = False

    @property
    def dirname(self) -> str:
        return f"{self.commit}.{self.serial}"


def run_ostree(
    args: Sequence[str],
    *,
    ostree_bin: str = "ostree",
    check: bool = True,
    timeout: Optional[float] = None,
    max_stdout: Optional[int] = None,
    stop_on_overflow: bool = False,
) -> proc.Completed:
    """Run ostree; a missing binary, a timeout or (check) a failure is an AdapterError with a
    fixed reason ("ostree admin status failed (exit 1)"), never ostree's own words."""
    what = ostree_what(args)
    limit = timeout if timeout is not None else _TIMEOUTS.get(what[7:], DEFAULT_TIMEOUT)
    return proc.run(
        [ostree_bin, *args],
        what,
        limit,
        check=check,
        max_stdout=max_stdout,
        stop_on_overflow=stop_on_overflow,
    )


def ostree_what(args: Sequence[str]) -> str:
    """ "ostree pull-local", "ostree admin deploy": the subcommand, options left out."""
    words = [a for a in args[:2] if not a.startswith("-")]
    if words[:1] != ["admin"]:
        words = words[:1]
    return " ".join(["ostree", *words])


def parse_status(text: str) -> list[Deployment]:
    """Deployments from `ostree admin status` output, in order; unknown lines are ignored."""
    found: list[Deployment] = []
    for line in text.splitlines():
        m = _STATUS_LINE.match(line)
        if m:
            found.append(
                Deployment(
                    index=len(found),
                    osname=m["os"],
                    commit=m["commit"],
                    serial=int(m["serial"]),
                    booted=m["mark"] == "*",
                )
            )
    return found


def parse_ls(text: str) -> dict[str, tuple[str, int]]:
    """Content objects of `ostree ls -R -C`: checksum -> (type, size); directories excluded.

    (The install no longer lists a whole commit, `rootfs_space` walks it; tests compare.)"""
    objects: dict[str, tuple[str, int]] = {}
    for line in text.splitlines():
        m = _LS_LINE.match(line)
        if m and m["type"] != "d":
            objects[m["csum"]] = (m["type"], int(m["size"]))
    return objects


def parse_deploy_dir(name: str) -> Optional[tuple[str, int]]:
    """`<commit>.<serial>` -> (commit, serial), else None."""
    m = _DEPLOY_DIR.match(name)
    return (m["commit"], int(m["serial"])) if m else None


def check_commit(commit: str) -> None:
    if not is_commit(commit):
        raise AdapterError(f"not an OSTree commit checksum: {commit!r}")


def is_enospc(err: str) -> bool:
    low = err.lower()
    return "no space left on device" in low or "min-free-space" in low


# ostree's words for content trouble; only the checksums next to them are ever shown.
_UNREADABLE = ("input/output error",)
# "Writing content object: Unexpected EOF ..." and zlib's errors: a .filez that does not inflate
_CORRUPT = (
    "corrupted",
    "checksum expected",
    "invalid checksum",
    "checksum mismatch",
    "writing content object",
    "unexpected eof",
    "decompress",
    "file header",  # "File header size is zero": a .filez that is no file object (a sparse one)
)
_MISSING = ("couldn't find", "no such metadata object", "not found", "no such file")
_CHECKSUM = re.compile(rf"(?<![0-9a-f])({HEX})(?![0-9a-f])")


def content_error(done: proc.Completed, commit: str) -> UpdaterError:
    """Map ostree's failure reading bundle content to a fixed message and exit code.

    Its stderr is matched, never quoted: a person sees "bundle content failed verification
    (object <checksum>)" with a checksum that matched a 64-hex pattern, or "<ostree
    subcommand> failed (exit N)". The sanitised tail goes to the debug log.
    """
    err = done.stderr
    low = err.lower()
    what = ostree_what(done.args[1:])
    logger.debug("ostree failed", what=what, code=done.returncode, tail=done.detail)
    found = [c for c in _CHECKSUM.findall(low) if c != commit]
    if is_enospc(err):
        return NoSpaceError(
            f"{what}: not enough space in the sysroot repo for commit {commit[:12]}"
        )
    if any(m in low for m in _UNREADABLE):
        return AdapterError(f"{what}: cannot read the bundle (I/O error)")
    if any(m in low for m in _CORRUPT):
        obj = f" (object {found[0]})" if found else ""
        return VerificationError(f"commit {commit[:12]}: bundle content failed verification{obj}")
    if any(m in low for m in _MISSING):
        missing = found[0] if found else commit
        return ContentMissingError(
            f"commit {commit[:12]}: bundle content missing (object {missing})"
        )
    return AdapterError(proc.failed_reason(what, done.returncode))


def parse_size(text: str) -> int:
    m = re.match(r"^\s*(\d+)\s*([KMGT]?)B?\s*$", text, re.IGNORECASE)
    if not m:
        return 0
    exponent: int = " KMGT".index((m[2] or " ").upper())
    return int(m[1]) * (1 << (10 * exponent))
