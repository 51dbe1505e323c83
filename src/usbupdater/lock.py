"""The aklite lock: one updater at a time, shared with aktualizr-lite.

aktualizr-lite and aklite-offline take `flock(LOCK_EX|LOCK_NB)` on `/var/lock/aklite.lock`;
taking the same lock keeps usbupdater from ever running beside them. aktualizr-lite unlinks the
file when it exits, so after locking we check that the path still names the inode we locked and
retry otherwise; we never unlink it ourselves (that is what makes such races possible).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Optional

from usbupdater.errors import LockBusyError


class AkliteLock:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o444)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockBusyError(
                    f"another updater holds {self.path} (aktualizr-lite, aklite-offline or "
                    "usbupdater); stop it, or wait for it to finish, then retry"
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return
            os.close(fd)  # the file was unlinked under us: lock the new one
        raise LockBusyError(f"{self.path} keeps being replaced; another updater is running")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> AkliteLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.release()
