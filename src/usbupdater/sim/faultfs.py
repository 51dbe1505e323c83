"""A faulty USB stick for tests: a read-only FUSE pass-through over a bundle directory.

A dying stick fails inside the kernel's VFS, not in Python: reads return EIO from some byte on,
block for as long as the device takes, or start failing with ENOTCONN/EIO once it is pulled.
`FaultStick` mounts a directory through FUSE (fusepy over libfuse2) in a separate process, so
the updater under test sees these faults through ordinary system calls, ostree included.

Faults are chosen per file (path relative to the bundle), at a byte offset:
- `eio_at=(rel, n)`: a read ending past byte n returns the bytes before n, the next one EIO;
- `stall=(rel, n, seconds)`: a read that covers byte n blocks for `seconds`, then completes.
  A signal to the reader (a kill) interrupts it with EINTR, as when the host gives up on a hung
  device; `FaultStick.release()` ends every stall early (a test's sync point). With
  `stall_interruptible=False` the reader sits in the kernel (state D, unkillable)
  until the stall ends or the stick is pulled (`vanish()`), as on a hung USB device;
- `vanish_at=(rel, n)`: a read covering byte n detaches the mount (lazily) and ends the daemon,
  as a pulled stick does: that read and every later call on the stick fail.

Files are served with `direct_io` (no page cache, no readahead), so the fault hits the byte
asked for and a short read reaches the reader unchanged. Symlinks are served as symlinks
(lstat, readlink; nothing on the stick is followed by the daemon) and sizes are the real ones.
Every fault that fired is appended to an events file (`FaultStick.events()`), so a test can
tell that its fault was reached. Run as `python -m usbupdater.sim.faultfs SOURCE MOUNTPOINT`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Optional

from usbupdater.sim.sticks import mounts_under

FileFault = tuple[str, int]
StallFault = tuple[str, int, float]

_FUSE_TYPES = ("fuse", "fuse.faultfs")


def is_mounted(mountpoint: Path) -> bool:
    """True while `mountpoint` is a FUSE mount point (stale ones included)."""
    want = str(mountpoint)
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            sep = fields.index("-")
            point = fields[4].encode().decode("unicode_escape")
            if point == want and fields[sep + 1] in _FUSE_TYPES:
                return True
    return False


def lazy_unmount(mountpoint: Path) -> None:
    """Detach a FUSE mount even when its daemon is dead or blocked (never waits on it)."""
    for argv in (["fusermount", "-u", "-z", str(mountpoint)], ["umount", "-l", str(mountpoint)]):
        if not is_mounted(mountpoint):
            return
        subprocess.run(argv, capture_output=True, timeout=10, check=False)


class FaultStick:
    """The FUSE daemon as a context manager: mounted on enter, gone on exit (even on failure)."""

    def __init__(
        self,
        source: Path,
        mountpoint: Path,
        *,
        eio_at: Optional[FileFault] = None,
        stall: Optional[StallFault] = None,
        vanish_at: Optional[FileFault] = None,
        stall_interruptible: bool = True,
        start_timeout: float = 10.0,
    ) -> None:
        self.source = Path(source).resolve()
        self.mountpoint = Path(mountpoint).absolute()
        self.events_file = self.mountpoint.parent / f".{self.mountpoint.name}.events"
        self.log_file = self.mountpoint.parent / f".{self.mountpoint.name}.log"
        self.release_file = self.mountpoint.parent / f".{self.mountpoint.name}.release"
        self.argv = [sys.executable, "-m", "usbupdater.sim.faultfs", str(self.source)]
        self.argv += [str(self.mountpoint), "--events", str(self.events_file)]
        self.argv += ["--release", str(self.release_file)]
        if eio_at is not None:
            self.argv += ["--eio-at", f"{eio_at[1]}:{eio_at[0]}"]
        if stall is not None:
            self.argv += ["--stall", f"{stall[1]}:{stall[2]}:{stall[0]}"]
            if stall_interruptible:
                self.argv.append("--interruptible")
        if vanish_at is not None:
            self.argv += ["--vanish-at", f"{vanish_at[1]}:{vanish_at[0]}"]
        self.start_timeout = start_timeout
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def path(self) -> Path:
        return self.mountpoint

    def __enter__(self) -> FaultStick:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.events_file.write_text("")
        self.release_file.unlink(missing_ok=True)
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + self.start_timeout
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                log_text = self.log_file.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"faultfs did not mount {self.mountpoint}: {log_text}")
            time.sleep(0.02)
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def events(self) -> list[str]:
        """The faults that fired so far, one line each: `<kind> <offset> <relpath>`."""
        try:
            return self.events_file.read_text().splitlines()
        except FileNotFoundError:
            return []

    def wait_for(self, kind: str, timeout: float = 30) -> bool:
        """Wait until a fault of `kind` (eio, stall, vanish) fired; False on timeout."""
        deadline = time.monotonic() + timeout
        while not any(e.split()[0] == kind for e in self.events()):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def release(self) -> None:
        """End the stalls now: the stalled read completes and later ones pass."""
        self.release_file.write_text("")

    def vanish(self) -> None:
        """Pull the stick now: the daemon dies, the mount is detached."""
        self._kill()
        lazy_unmount(self.mountpoint)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def close(self) -> None:
        """Unmount and end the daemon, whatever state it is in (stalled, dead, mid-read)."""
        lazy_unmount(self.mountpoint)
        self._kill()
        for point in mounts_under(self.mountpoint):  # pragma: no cover - nothing mounts below
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=10, check=False)


# --- the daemon --------------------------------------------------------------------------------


def _parse_fault(text: str, parts: int) -> tuple[Any, ...]:
    """`OFFSET:REL` or `OFFSET:SECONDS:REL` (the path last, so it may hold colons)."""
    fields = text.split(":", parts - 1)
    if len(fields) != parts:
        raise argparse.ArgumentTypeError(f"bad fault {text!r}")
    rel = fields[-1].strip("/")
    if parts == 2:
        return (rel, int(fields[0]))
    return (rel, int(fields[0]), float(fields[1]))


def _make_ops(
    source: Path,
    mountpoint: Path,
    events: Path,
    release: Path,
    eio_at: Optional[FileFault],
    stall: Optional[StallFault],
    vanish_at: Optional[FileFault],
    interruptible: bool,
) -> Any:
    from fuse import FuseOSError, Operations  # type: ignore[import-untyped]  # test-only dependency
    from fuse import _libfuse as libfuse

    lock = threading.Lock()

    def record(kind: str, offset: int, rel: str) -> None:
        with lock, open(events, "a", encoding="utf-8") as fh:
            fh.write(f"{kind} {offset} {rel}\n")
            fh.flush()

    def vanish(offset: int, rel: str) -> None:
        record("vanish", offset, rel)
        # Detach first (new lookups fail), then die: every open file and in-flight request
        # of the stick fails from here on, as with a pulled device.
        subprocess.Popen(
            ["fusermount", "-u", "-z", str(mountpoint)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.05)
        os._exit(0)

    def hold(seconds: float, offset: int, rel: str) -> None:
        record("stall", offset, rel)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not release.exists():
            # With `-o intr` libfuse marks a request the kernel asked to interrupt.
            if interruptible and libfuse.fuse_interrupted():
                record("interrupted", offset, rel)
                raise FuseOSError(errno.EINTR)
            time.sleep(0.02)

    class FaultOps(Operations):  # type: ignore[misc]
        def _real(self, path: str) -> str:
            return os.path.join(str(source), path.lstrip("/"))

        def getattr(self, path: str, fh: Optional[int] = None) -> dict[str, Any]:
            try:
                st = os.lstat(self._real(path))
            except OSError as exc:
                raise FuseOSError(exc.errno) from None
            keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size")
            attrs: dict[str, Any] = {k: getattr(st, k) for k in keys}
            attrs.update(st_atime=st.st_atime, st_mtime=st.st_mtime, st_ctime=st.st_ctime)
            return attrs

        def readdir(self, path: str, fh: int) -> list[str]:
            try:
                return [".", "..", *os.listdir(self._real(path))]
            except OSError as exc:
                raise FuseOSError(exc.errno) from None

        def readlink(self, path: str) -> str:
            try:
                return os.readlink(self._real(path))
            except OSError as exc:
                raise FuseOSError(exc.errno) from None

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(str(source))
            keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files")
            return {k: getattr(sv, k) for k in keys} | {"f_ffree": sv.f_ffree, "f_namemax": 255}

        def access(self, path: str, amode: int) -> int:
            if amode & os.W_OK:
                raise FuseOSError(errno.EROFS)
            return 0

        def open(self, path: str, flags: int) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
                raise FuseOSError(errno.EROFS)
            try:
                return os.open(self._real(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError as exc:
                raise FuseOSError(exc.errno) from None

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            rel = path.strip("/")
            end = offset + size
            if (
                stall is not None
                and rel == stall[0]
                and offset <= stall[1] < end
                and not release.exists()
            ):
                hold(stall[2], offset, rel)
            if vanish_at is not None and rel == vanish_at[0] and end > vanish_at[1]:
                if offset >= vanish_at[1]:
                    vanish(offset, rel)
                end = vanish_at[1]
            if eio_at is not None and rel == eio_at[0] and end > eio_at[1]:
                if offset >= eio_at[1]:
                    record("eio", offset, rel)
                    raise FuseOSError(errno.EIO)
                end = eio_at[1]
            return os.pread(fh, end - offset, offset)

        def release(self, path: str, fh: int) -> int:
            os.close(fh)
            return 0

    return FaultOps()


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="faultfs", description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("mountpoint", type=Path)
    ap.add_argument("--events", type=Path, required=True)
    ap.add_argument("--release", type=Path, required=True)
    ap.add_argument("--eio-at", type=lambda s: _parse_fault(s, 2))
    ap.add_argument("--stall", type=lambda s: _parse_fault(s, 3))
    ap.add_argument("--vanish-at", type=lambda s: _parse_fault(s, 2))
    ap.add_argument("--interruptible", action="store_true")
    args = ap.parse_args(argv)
    from fuse import FUSE

    ops = _make_ops(
        args.source.resolve(),
        args.mountpoint.absolute(),
        args.events,
        args.release,
        args.eio_at,
        args.stall,
        args.vanish_at,
        args.interruptible,
    )
    FUSE(
        ops,
        str(args.mountpoint),
        foreground=True,
        nothreads=False,
        ro=True,
        direct_io=True,
        intr=args.interruptible,
        fsname="faultfs",
        subtype="faultfs",
    )


if __name__ == "__main__":
    main()
