"""USB sticks for tests and the demo: filesystem images attached to loop devices.

A loop device is not a USB device, so the agent is configured to match these by label
(`ID_FS_LABEL=<prefix>*`). Images are filled without mounting (`mkfs.ext4 -d`), FAT ones
through fusefat (the kernel here has no vfat). Everything attached is detached by `cleanup`.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import Optional


def sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def mounts_under(root: Path) -> list[str]:
    """Mount points below `root`, deepest first (for unmounting)."""
    prefix = str(root).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix):
                found.append(point)
    return sorted(found, key=len, reverse=True)


class Sticks:
    """Images labelled `<prefix><n>` in `workdir`, attached to loop devices on demand."""

    def __init__(self, workdir: Path, prefix: Optional[str] = None) -> None:
        self.workdir = workdir
        self.prefix = prefix or "UU" + secrets.token_hex(3).upper()
        self.attached: dict[Path, str] = {}
        self._n = 0

    def _next(self) -> tuple[Path, str]:
        self._n += 1
        return self.workdir / f"stick{self._n}.img", f"{self.prefix}{self._n}"

    def image(self, content: Optional[Path] = None, size_mb: int = 96) -> Path:
        """An ext4 image holding a copy of `content` (a directory), made without mounting."""
        img, label = self._next()
        argv = ["mkfs.ext4", "-q", "-F", "-L", label, "-E", "root_owner=0:0"]
        if content is not None:
            argv += ["-d", str(content)]
        sh(*argv, str(img), f"{size_mb}M")
        return img

    def fat_image(self, content: Path, size_mb: int = 32) -> Path:
        """A FAT image filled through fusefat."""
        img, label = self._next()
        sh("truncate", "-s", f"{size_mb}M", str(img))
        sh("mkfs.vfat", "-n", label, str(img))
        mnt = self.workdir / f"fill-{label}"
        mnt.mkdir()
        sh("fusefat", "-o", "rw+", str(img), str(mnt))
        try:
            sh("cp", "-r", f"{content}/.", str(mnt))
        finally:
            sh("umount", str(mnt))
        return img

    def attach(self, img: Path) -> str:
        dev = sh("losetup", "-f", "--show", str(img)).stdout.strip()
        self.attached[img] = dev
        return dev

    def detach(self, img: Path) -> None:
        dev = self.attached.pop(img, None)
        if dev:
            sh("losetup", "-d", dev, check=False)

    def cleanup(self) -> None:
        for point in mounts_under(self.workdir):
            sh("umount", "-l", point, check=False)
        for img in list(self.attached):
            self.detach(img)
