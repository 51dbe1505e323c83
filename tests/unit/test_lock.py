from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from usbupdater.errors import LockBusyError
from usbupdater.lock import AkliteLock

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o444)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
sys.stdin.read()
"""


def test_busy_lock_names_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "lock" / "aklite.lock"
    path.parent.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockBusyError) as exc, AkliteLock(path):
            pass
        assert str(path) in exc.value.reason
    finally:
        holder.communicate("")
    with AkliteLock(path):  # released when the holder exited
        pass


def test_lock_is_exclusive_within_a_process_and_reusable(tmp_path: Path) -> None:
    path = tmp_path / "aklite.lock"
    with AkliteLock(path), pytest.raises(LockBusyError):
        AkliteLock(path).acquire()
    with AkliteLock(path):
        pass
    assert path.exists()  # never unlinked by us
