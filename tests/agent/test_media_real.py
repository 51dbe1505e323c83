"""Mounting a real ext4 stick on a loop device through `Media`: a read-only mount must not write
one byte to the stick, even when its journal is dirty (issue 13, item 8: `noload`).

The dirty journal is made the way a yanked stick gets one: mounted read-write, written, and then
shut down (`EXT4_IOC_SHUTDOWN` with log flush) so the committed transactions stay in the journal
and `needs_recovery` stays set. A control mount without `noload` proves the image is dirty: the
kernel replays the journal and the image changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from usbupdater.agent.filter import Stick
from usbupdater.agent.media import Media, find_bundle
from usbupdater.agent.settings import AgentSettings
from usbupdater.sim.sticks import mounts_under, sh

pytestmark = pytest.mark.integration

EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_LOGFLUSH = 1


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def dirty_ext4(tmp: Path) -> Path:
    img = tmp / "dirty.img"
    sh("mkfs.ext4", "-q", "-F", "-L", "DIRTY", str(img), "16M")
    mnt = tmp / "fill"
    mnt.mkdir()
    dev = sh("losetup", "-f", "--show", str(img)).stdout.strip()
    try:
        sh("mount", "-o", "rw", dev, str(mnt))
        try:
            (mnt / "tuf").mkdir()
            (mnt / "tuf" / "targets.json").write_text('{"signed": {}}')
            os.sync()
            fd = os.open(mnt, os.O_RDONLY)
            try:
                fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_LOGFLUSH))
            finally:
                os.close(fd)
            with contextlib.suppress(OSError):  # the filesystem is shut down: this write fails
                (mnt / "late").write_text("x")
        finally:
            sh("umount", str(mnt))
    finally:
        sh("losetup", "-d", dev, check=False)
    features = sh("dumpe2fs", "-h", str(img), check=False).stdout
    assert "needs_recovery" in features, features
    return img


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[list[str]]:
    attached: list[str] = []
    try:
        yield attached
    finally:
        for point in mounts_under(tmp_path):
            sh("umount", "-l", point, check=False)
        for dev in attached:
            sh("losetup", "-d", dev, check=False)


def attach(loop: list[str], img: Path) -> Stick:
    dev = sh("losetup", "-f", "--show", str(img)).stdout.strip()
    loop.append(dev)
    return Stick(key=dev, devnode=dev, fs_type="ext4", fs_uuid="u")


def test_read_only_mount_leaves_a_dirty_ext4_stick_byte_identical(
    tmp_path: Path, loop: list[str]
) -> None:
    img = dirty_ext4(tmp_path)
    before = sha256(img)
    media = Media(AgentSettings(media_dir=tmp_path / "media", command_timeout=30))
    stick = attach(loop, img)
    point = media.mount(stick)
    try:
        assert find_bundle(point, "u").targets_version is None  # the bundle is readable
    finally:
        assert media.unmount(point)
    sh("losetup", "-d", loop.pop())
    assert sha256(img) == before, "the read-only mount wrote to the stick"
    # Control: the same mount without noload replays the journal and changes the image.
    stick = attach(loop, img)
    argv = ["mount", "-t", "ext4", "-o", "ro,nosuid,nodev,noexec", stick.devnode]
    ctl = tmp_path / "control"
    ctl.mkdir()
    subprocess.run([*argv, str(ctl)], check=True, capture_output=True, timeout=30)
    sh("umount", str(ctl))
    sh("losetup", "-d", loop.pop())
    assert sha256(img) != before, "the control mount did not replay: the journal was not dirty"
