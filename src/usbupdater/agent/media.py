"""Mounting a stick in a private directory and finding the one bundle on it.

The stick is untrusted: it is mounted read-only with `nosuid,nodev,noexec` (FAT and exFAT get
fixed ownership and no execute bits), under a directory only root can reach, and the bundle is
looked for through `safeio` (no symlink followed). Mount and unmount are argv templates, because
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
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from usbupdater import log, proc, safeio
from usbupdater.agent.filter import Stick
from usbupdater.agent.settings import AgentSettings

FAT_TYPES = ("vfat", "msdos", "exfat")
MAX_TARGETS_JSON = 64 << 20
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

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """Exit code and bounded output; a timeout or a missing tool is a MediaError."""
        try:
            return proc.run(argv, os.path.basename(argv[0]), self.s.command_timeout, check=False)
        except proc.CommandError as exc:
            raise MediaError(exc.reason) from exc

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
        proc = self._run(argv)
        seconds = round(time.monotonic() - t0, 4)
        if proc.returncode != 0:
            _rmdir(point)
            why = (proc.stderr or proc.stdout).strip().splitlines()
            raise MediaError(
                f"cannot mount {stick.devnode} ({stick.fs_type}): "
                f"{why[-1] if why else f'{argv[0]} exited {proc.returncode}'}"
            )
        self._log.info(
            "mounted", device=stick.devnode, mountpoint=str(point), rw=rw, seconds=seconds
        )
        return point

    def unmount(self, point: Path) -> bool:
        """Unmount; a busy mount is detached lazily. False when even that failed."""
        ok = True
        if is_mounted(point):
            proc = self._run(fill(self.s.umount_command, mountpoint=str(point)))
            if proc.returncode != 0 and is_mounted(point):
                self._log.warning("mount busy: detaching lazily", mountpoint=str(point))
                ok = self.lazy_unmount(point)
        _rmdir(point)
        return ok

    def lazy_unmount(self, point: Path) -> bool:
        """Detach now (files still open stay readable until closed, or fail if the device left)."""
        if not is_mounted(point):
            return True
        proc = self._run(fill(self.s.lazy_umount_command, mountpoint=str(point)))
        if proc.returncode != 0 and is_mounted(point):
            self._log.error("cannot unmount", mountpoint=str(point), error=proc.stderr.strip())
            return False
        return True


def _rmdir(point: Path) -> None:
    with contextlib.suppress(OSError):
        point.rmdir()


class NoBundle(Exception):
    """The stick holds no bundle, or more than one (the message says which)."""


def _digest(dirfd: int, rel: str) -> tuple[str, bytes]:
    data = safeio.read_file(dirfd, rel, MAX_TARGETS_JSON)
    return hashlib.sha256(data).hexdigest(), data


def find_bundle(root: Path, fs_uuid: str = "") -> BundleOnStick:
    """The one bundle at the stick's top level or in exactly one top-level directory."""
    try:
        rootfd = safeio.open_root(root)
    except (OSError, safeio.UnsafePathError) as exc:
        raise NoBundle(f"cannot read the stick: {exc}") from exc
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
            if len(found) > 1:
                raise NoBundle(f"several bundles on the stick ({', '.join(found)}): keep one")
            sub = found[0]
        rel = f"{sub}/" if sub else ""
        digest, data = _digest(rootfd, rel + MARKER)
        extra = hashlib.sha256(data)
        if safeio.exists(rootfd, rel + "tuf/bundle-targets.json"):
            extra.update(_digest(rootfd, rel + "tuf/bundle-targets.json")[1])
    except (OSError, safeio.UnsafePathError) as exc:
        raise NoBundle(f"cannot read the bundle: {exc}") from exc
    finally:
        os.close(rootfd)
    version: Optional[int] = None
    try:
        signed = json.loads(data).get("signed", {})
        version = int(signed["version"]) if isinstance(signed, dict) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        pass  # the updater judges the metadata; here it only names the bundle
    identity = f"{fs_uuid or '-'}:{sub or '.'}:{extra.hexdigest()[:32]}"
    return BundleOnStick(root / sub if sub else root, identity, digest, version)
