"""Mounting a stick in a private directory and finding the bundle on it.

A stick with several bundles (one per top-level directory) needs a chooser (agent/choose.py asks
the core which one is for this device); without one it is refused as before.

The stick is untrusted: it is mounted read-only with `nosuid,nodev,noexec` (FAT and exFAT get
fixed ownership and no execute bits; ext3/ext4 get `noload`, so a dirty journal is not replayed
and a read-only mount never writes to the stick), under a directory only root can reach, and the
bundle is looked for through `safeio` (no symlink followed).

Identifying a bundle happens before anything is verified, so it reads only bounded amounts and
parses nothing large: `targets.json` (up to 64 MiB) and `bundle-targets.json` are hashed in
64 KiB chunks, never parsed; the version shown to people comes from `snapshot.json`'s entry for
`targets.json`, parsed only when the file is at most 64 KiB. The service's memory stays flat
whatever the stick holds. Mount and unmount are argv templates, because
this kernel may lack vfat (tests use `fusefat`) and integrators may prefer their own helpers.
A busy mount point (the updater still holds a file of a stick that was pulled) is detached lazily
so the agent never blocks on a dead device.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from usbupdater import log, proc, safeio
from usbupdater.agent.filter import Stick
from usbupdater.agent.settings import AgentSettings
from usbupdater.textsafe import safe_text

FAT_TYPES = ("vfat", "msdos", "exfat")
# Journalled ext types: `noload` keeps a read-only mount from replaying the journal. ext2 has no
# journal, and its driver refuses the option.
JOURNAL_TYPES = ("ext3", "ext4")
MAX_TARGETS_JSON = 64 << 20  # hashed in chunks, never parsed here: only the hash time grows
MAX_BUNDLE_TARGETS_JSON = 1 << 20
MAX_SNAPSHOT_JSON = 64 << 10  # parsed for the version alone: a real one is under 2 KiB
HASH_CHUNK = 64 << 10
MARKER = "tuf/targets.json"


class MediaError(Exception):
    """Mounting or unmounting failed; the message says what to do."""


@dataclass(frozen=True)
class BundleOnStick:
    """A bundle found on a mounted stick and the identity used to never handle it twice."""

    path: Path  # the bundle directory (the mount point or one subdirectory of it)
    identity: str  # filesystem UUID + sub-directory + sha256 of targets.json (+ bundle-targets)
    targets_sha256: str
    targets_version: Optional[int]


def mount_options(s: AgentSettings, fs_type: str, *, rw: bool = False) -> str:
    base = s.report_mount_options if rw else s.mount_options
    opts = [o for o in base.split(",") if o]
    if fs_type in FAT_TYPES:
        opts += [o for o in s.fat_mount_options.split(",") if o]
    elif fs_type in JOURNAL_TYPES and not rw and "noload" not in opts:
        opts.append("noload")
    return ",".join(opts)


def fill(template: tuple[str, ...], **values: str) -> list[str]:
    """Replace `{name}` placeholders token by token (no shell, no re-splitting)."""
    return [re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), t) for t in template]


def mountpoint_name(devnode: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", devnode.strip("/").replace("dev/", "", 1)) or "stick"


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == target:
                return True
    return False


class Media:
    """Mount, remount read-write for the report, and unmount sticks under `media_dir`."""

    def __init__(self, s: AgentSettings) -> None:
        self.s = s
        self._log = log.get_logger("media")

    def mount(self, stick: Stick, *, rw: bool = False) -> Path:
        base = self.s.media_dir
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(base, 0o700)
        point = base / mountpoint_name(stick.devnode)
        if is_mounted(point):
            self.unmount(point)
        point.mkdir(exist_ok=True, mode=0o700)
        argv = fill(
            self.s.mount_command,
            type=self.s.mount_type or stick.fs_type,
            options=mount_options(self.s, stick.fs_type, rw=rw),
            device=stick.devnode,
            mountpoint=str(point),
        )
        t0 = time.monotonic()
        try:
            done = proc.run(argv, os.path.basename(argv[0]), self.s.command_timeout, check=False)
        except proc.CommandError as exc:  # timed out or missing: fixed text
            _rmdir(point)
            raise MediaError(exc.reason) from exc
        seconds = round(time.monotonic() - t0, 4)
        if done.returncode != 0:
            _rmdir(point)
            why = (done.stderr or done.stdout).strip().splitlines()
            raise MediaError(
                f"cannot mount {safe_text(stick.devnode, 100)} ({safe_text(stick.fs_type, 20)}): "
                + safe_text(why[-1] if why else f"{argv[0]} exited {done.returncode}", 200)
            )
        self._log.info(
            "mounted", device=stick.devnode, mountpoint=str(point), rw=rw, seconds=seconds
        )
        return point

    def unmount(self, point: Path) -> bool:
        """Unmount; a busy mount is detached lazily. False when even that failed."""
        ok = True
        if is_mounted(point):
            failed = self._umount(self.s.umount_command, point) is not None
            if failed and is_mounted(point):
                self._log.warning("mount busy: detaching lazily", mountpoint=str(point))
                ok = self.lazy_unmount(point)
        _rmdir(point)
        return ok

    def lazy_unmount(self, point: Path) -> bool:
        """Detach now (files still open stay readable until closed, or fail if the device left)."""
        if not is_mounted(point):
            return True
        err = self._umount(self.s.lazy_umount_command, point)
        if err is not None and is_mounted(point):
            self._log.error("cannot unmount", mountpoint=str(point), error=err)
            return False
        return True

    def _umount(self, template: tuple[str, ...], point: Path) -> Optional[str]:
        """Run an unmount template; None when it worked, else why not (fixed text)."""
        argv = fill(template, mountpoint=str(point))
        try:
            proc.run(argv, os.path.basename(argv[0]), self.s.command_timeout)
        except proc.CommandError as exc:
            return exc.reason
        return None


def _rmdir(point: Path) -> None:
    with contextlib.suppress(OSError):
        point.rmdir()


class NoBundle(Exception):
    """The stick holds no bundle, or more than one (the message says which)."""


def _hash_into(dirfd: int, rel: str, max_size: int, *hashes: Any) -> None:
    """Feed a file of at most `max_size` bytes to `hashes` chunk by chunk (bounded memory)."""
    total = 0
    with safeio.open_file(dirfd, rel, max_size) as fh:
        while chunk := fh.read(HASH_CHUNK):
            total += len(chunk)
            if total > max_size:
                raise safeio.UnsafePathError(rel, f"grew past the {max_size} bytes allowed")
            for h in hashes:
                h.update(chunk)


def targets_version(dirfd: int, rel: str) -> Optional[int]:
    """The version snapshot.json gives targets.json, read from a small file; None when absent,
    too large or malformed (the updater judges the metadata; here it only names the bundle)."""
    try:
        data = safeio.read_file(dirfd, rel + "tuf/snapshot.json", MAX_SNAPSHOT_JSON)
        entry = json.loads(data)["signed"]["meta"]["targets.json"]
        version = entry["version"]
    except (OSError, safeio.UnsafePathError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


Chooser = Callable[[Path, list[str]], str]  # (mount point, bundle directories) -> the one to use


def find_bundle(root: Path, fs_uuid: str = "", choose: Optional[Chooser] = None) -> BundleOnStick:
    """The one bundle at the stick's top level or in exactly one top-level directory; with
    several, the one `choose` names (it raises NoBundle when none is for this device)."""
    try:
        rootfd = safeio.open_root(root)
    except (OSError, safeio.UnsafePathError) as exc:
        raise NoBundle(f"cannot read the stick: {safe_text(exc, 300)}") from exc
    try:
        if safeio.exists(rootfd, MARKER):
            sub = ""
        else:
            found = []
            for name in safeio.list_dir(rootfd, ""):
                if name.startswith("."):
                    continue
                try:
                    if safeio.exists(rootfd, f"{name}/{MARKER}"):
                        found.append(name)
                except (OSError, safeio.UnsafePathError):
                    continue  # a file, a link or unreadable: not a bundle
            if not found:
                raise NoBundle("no update bundle (tuf/targets.json) on the stick")
            if len(found) == 1:
                sub = found[0]
            elif choose is None:
                names = safe_text(", ".join(found), 300)
                raise NoBundle(f"several bundles on the stick ({names}): keep one")
            else:
                sub = choose(root, found)
            if sub not in found:  # never a path the stick did not list as a bundle
                raise NoBundle(f"the bundle chosen ({safe_text(sub, 80)}) is not on the stick")
        rel = f"{sub}/" if sub else ""
        targets = hashlib.sha256()
        identity = hashlib.sha256()  # sha256(targets.json + bundle-targets.json), as before
        _hash_into(rootfd, rel + MARKER, MAX_TARGETS_JSON, targets, identity)
        if safeio.exists(rootfd, rel + "tuf/bundle-targets.json"):
            _hash_into(rootfd, rel + "tuf/bundle-targets.json", MAX_BUNDLE_TARGETS_JSON, identity)
        version = targets_version(rootfd, rel)
    except (OSError, safeio.UnsafePathError) as exc:
        raise NoBundle(f"cannot read the bundle: {safe_text(exc, 300)}") from exc
    finally:
        os.close(rootfd)
    ident = f"{fs_uuid or '-'}:{sub or '.'}:{identity.hexdigest()[:32]}"
    return BundleOnStick(root / sub if sub else root, ident, targets.hexdigest(), version)
