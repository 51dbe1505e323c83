"""`safeio.read_upto`: short reads (a failing stick answers with the bytes before the bad spot)
are continued, so an I/O error surfaces as one and a file is never silently cut."""

from __future__ import annotations

import io

import pytest

from usbupdater import safeio


class _Dribble(io.RawIOBase):
    """Returns at most `step` bytes per read, then raises `error` at `fail_at` (if set)."""

    def __init__(self, data: bytes, step: int, fail_at: int = -1) -> None:
        self.data, self.step, self.fail_at, self.pos = data, step, fail_at, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        if self.pos == self.fail_at:
            raise OSError(5, "Input/output error")
        end = min(self.pos + self.step, len(self.data), len(b) + self.pos)
        if self.fail_at >= 0:
            end = min(end, self.fail_at)
        n = end - self.pos
        b[:n] = self.data[self.pos : end]
        self.pos = end
        return n


@pytest.mark.parametrize("step", [1, 3, 100, 1 << 20])
@pytest.mark.parametrize("size", [0, 1, 99, 100, 101])
def test_short_reads_are_continued_up_to_the_limit(step: int, size: int) -> None:
    data = bytes(range(256)) * 1 + b"x" * size
    data = data[:size]
    got = safeio.read_upto(_Dribble(data, step), 100)  # type: ignore[arg-type]
    assert got == data[:100]


def test_an_io_error_after_a_short_read_is_raised_not_swallowed() -> None:
    with pytest.raises(OSError) as exc:
        safeio.read_upto(_Dribble(b"y" * 500, 64, fail_at=128), 1000)  # type: ignore[arg-type]
    assert exc.value.errno == 5


def test_read_file_refuses_a_file_that_grew(tmp_path: pytest.TempPathFactory) -> None:
    import os
    from pathlib import Path

    root = Path(str(tmp_path))
    (root / "f").write_bytes(b"z" * 10)
    fd = safeio.open_root(root)
    try:
        assert safeio.read_file(fd, "f", 10) == b"z" * 10
        with pytest.raises(safeio.UnsafePathError):
            safeio.read_file(fd, "f", 9)
    finally:
        os.close(fd)
