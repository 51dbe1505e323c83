"""The faulty stick itself: a real FUSE mount whose faults reach readers through the kernel."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from usbupdater.sim.faultfs import FaultStick, is_mounted
from usbupdater.sim.sticks import mounts_under

pytestmark = pytest.mark.integration

SIZE = 300_000
N = 100_001


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Path]:
    src = tmp_path / "bundle"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(os.urandom(SIZE))
    (src / "d" / "other").write_bytes(b"fine\n")
    (src / "out").symlink_to("/etc/hostname")
    (src / "rel").symlink_to("d/f")
    yield src
    assert not mounts_under(tmp_path), "a test left a mount behind"


def read_all(path: Path, chunk: int = 65536) -> tuple[bytes, OSError | None]:
    got = bytearray()
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            b = os.read(fd, chunk)
            if not b:
                return bytes(got), None
            got += b
    except OSError as exc:
        return bytes(got), exc
    finally:
        os.close(fd)


def test_pass_through_keeps_symlinks_sizes_and_bytes(source: Path, tmp_path: Path) -> None:
    with FaultStick(source, tmp_path / "mnt") as stick:
        m = stick.path
        assert sorted(os.listdir(m)) == ["d", "out", "rel"]
        assert os.path.islink(m / "out") and os.readlink(m / "out") == "/etc/hostname"
        assert os.readlink(m / "rel") == "d/f"
        assert os.stat(m / "d" / "f").st_size == SIZE
        assert (m / "d" / "f").read_bytes() == (source / "d" / "f").read_bytes()
        with pytest.raises(OSError) as err:
            os.open(m / "out", os.O_RDONLY | os.O_NOFOLLOW)
        assert err.value.errno == errno.ELOOP
        with pytest.raises(OSError):
            (m / "d" / "new").write_bytes(b"x")
        assert stick.events() == []
    assert not is_mounted(tmp_path / "mnt")


def test_eio_at_byte_n(source: Path, tmp_path: Path) -> None:
    with FaultStick(source, tmp_path / "mnt", eio_at=("d/f", N)) as stick:
        got, exc = read_all(stick.path / "d" / "f")
        assert exc is not None and exc.errno == errno.EIO
        assert got == (source / "d" / "f").read_bytes()[:N]  # every byte before N, none after
        assert (stick.path / "d" / "other").read_bytes() == b"fine\n"  # other files still work
        assert stick.events() == [f"eio {N} d/f"]
    assert not is_mounted(tmp_path / "mnt")


def test_vanish_mid_read(source: Path, tmp_path: Path) -> None:
    with FaultStick(source, tmp_path / "mnt", vanish_at=("d/f", N)) as stick:
        m = stick.path
        fd = os.open(m / "d" / "f", os.O_RDONLY)
        try:
            got, exc = bytearray(), None
            try:
                while b := os.read(fd, 65536):
                    got += b
            except OSError as e:
                exc = e
            assert len(got) == N and exc is not None
            assert exc.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, errno.ENODEV)
            with pytest.raises(OSError):
                os.read(fd, 10)  # the open file stays dead
        finally:
            with pytest.raises(OSError):
                os.close(fd)  # even the flush on close fails
        deadline = time.monotonic() + 5
        while stick.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not stick.alive() and not is_mounted(m)
        assert not (m / "d" / "other").exists()  # the stick is gone
        assert stick.events() == [f"vanish {N} d/f"]


def test_stall_blocks_then_completes(source: Path, tmp_path: Path) -> None:
    with FaultStick(source, tmp_path / "mnt", stall=("d/f", N, 1.0)) as stick:
        t0 = time.monotonic()
        data = (stick.path / "d" / "f").read_bytes()
        took = time.monotonic() - t0
    assert data == (source / "d" / "f").read_bytes()
    assert 1.0 <= took < 5
    assert stick.events() and stick.events()[0].startswith("stall ")


def start_stalled_reader(stick: FaultStick) -> subprocess.Popen[bytes]:
    reader = subprocess.Popen(
        [sys.executable, "-c", f"open({str(stick.path / 'd' / 'f')!r}, 'rb').read()"]
    )
    deadline = time.monotonic() + 10
    while not stick.events() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stick.events(), "the reader never reached the stall"
    with pytest.raises(subprocess.TimeoutExpired):
        reader.wait(timeout=0.5)  # blocked in the kernel
    return reader


def test_stalled_reader_dies_on_kill(source: Path, tmp_path: Path) -> None:
    with FaultStick(source, tmp_path / "mnt", stall=("d/f", N, 3600)) as stick:
        reader = start_stalled_reader(stick)
        reader.kill()
        assert reader.wait(timeout=5) == -9
        assert stick.events()[-1] == f"interrupted {stick.events()[0].split()[1]} d/f"
    assert not is_mounted(tmp_path / "mnt") and not stick.alive()


def test_hung_stick_holds_a_killed_reader_until_pulled(source: Path, tmp_path: Path) -> None:
    """The limit a hung device sets: SIGKILL takes effect only once the stick answers or goes."""
    stall = ("d/f", N, 3600.0)
    with FaultStick(source, tmp_path / "mnt", stall=stall, stall_interruptible=False) as stick:
        reader = start_stalled_reader(stick)
        reader.kill()
        with pytest.raises(subprocess.TimeoutExpired):
            reader.wait(timeout=1)  # in the kernel, state D
        stick.vanish()
        assert reader.wait(timeout=5) == -9
    assert not is_mounted(tmp_path / "mnt") and not stick.alive()


def test_cleanup_on_exception_and_after_vanish(source: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), FaultStick(source, tmp_path / "mnt") as stick:
        raise RuntimeError("test failed")
    assert not is_mounted(tmp_path / "mnt") and not stick.alive()
    with FaultStick(source, tmp_path / "mnt2") as stick:
        stick.vanish()
        assert not is_mounted(stick.path)
    assert not stick.alive()


def test_release_ends_a_stall(source: Path, tmp_path: Path) -> None:
    with FaultStick(source, tmp_path / "mnt", stall=("d/f", N, 3600)) as stick:
        reader = start_stalled_reader(stick)
        stick.release()
        assert reader.wait(timeout=5) == 0
        assert stick.wait_for("stall", timeout=0)
