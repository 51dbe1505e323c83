"""The one streaming gunzip: member boundaries, chunkings, refusals, bounded memory.

Each test has a hard timeout: the old inflaters looped forever on a member that ended exactly on
the 1 MiB output cap with input behind it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import subprocess
import tarfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usbupdater.apps.streams import CHUNK, Gunzip, GunzipReader, GzipError, GzipTooBig

MiB = 1 << 20
pytestmark = pytest.mark.timeout(60)


def data_of(n: int, seed: int = 0) -> bytes:
    """n bytes that compress well but not to nothing: a random head, then zeros."""
    head = random.Random(seed).randbytes(min(n, 300))
    return head + bytes(n - len(head))


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def push(blob: bytes, chunk: int, limit: int = 1 << 40) -> bytes:
    g = Gunzip(limit)
    out = []
    for i in range(0, len(blob), chunk):
        for piece in g.feed(blob[i : i + chunk]):
            assert 0 < len(piece) <= CHUNK
            out.append(piece)
    out.extend(g.finish())
    return b"".join(out)


def pull(blob: bytes, chunk: int, limit: int = 1 << 40) -> bytes:
    reader = GunzipReader(io.BytesIO(blob), limit, chunk)
    return io.BufferedReader(reader, CHUNK).read()


BOTH = pytest.mark.parametrize("inflate", [push, pull], ids=["push", "pull"])


@pytest.mark.timeout(10)
@BOTH
def test_two_members_of_2mib_finish(inflate) -> None:
    """The reproduction: 2 MiB + 2 MiB members hung both old inflaters."""
    a, b = data_of(2 * MiB, 1), data_of(2 * MiB, 2)
    assert inflate(gz(a) + gz(b), MiB) == a + b


BOUNDARIES = [0, 1, MiB - 1, MiB, MiB + 1, 2 * MiB, 4 * MiB]


@BOTH
@pytest.mark.parametrize("first", BOUNDARIES)
@pytest.mark.parametrize("chunk", [1, 7, MiB, 0], ids=["1", "7", "1MiB", "blob"])
def test_member_boundaries(inflate, first: int, chunk: int) -> None:
    a, b = data_of(first, 3), data_of(MiB + 5, 4)
    blob = gz(a) + gz(b) + gz(b"")
    assert inflate(blob, chunk or len(blob)) == a + b


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(
        st.one_of(st.integers(0, 3 * MiB), st.sampled_from(BOUNDARIES)), min_size=1, max_size=5
    ),
    chunk=st.one_of(st.integers(1, 4096), st.sampled_from([MiB, 3 * MiB])),
    style=st.sampled_from([push, pull]),
)
def test_random_members(sizes: list[int], chunk: int, style) -> None:
    parts = [data_of(n, i) for i, n in enumerate(sizes)]
    blob = b"".join(gz(p) for p in parts)
    assert style(blob, max(chunk, len(blob) // 2000)) == b"".join(parts)


@BOTH
def test_empty_members_only(inflate) -> None:
    assert inflate(gz(b"") * 5, 7) == b""


@BOTH
def test_many_small_members_pigz_like(inflate) -> None:
    rnd = random.Random(5)
    parts = [rnd.randbytes(rnd.randint(0, 3000)) for _ in range(2000)]
    blob = b"".join(gz(p) for p in parts)
    assert inflate(blob, 4096) == b"".join(parts)


def test_gzip_cli_concatenation(tmp_path: Path) -> None:
    a, b = data_of(MiB, 6), data_of(3 * MiB, 7)
    (tmp_path / "a").write_bytes(a)
    (tmp_path / "b").write_bytes(b)
    blob = b"".join(
        subprocess.run(
            ["gzip", "-c", str(tmp_path / n)], capture_output=True, check=True, timeout=30
        ).stdout
        for n in ("a", "b")
    )
    assert push(blob, 7919) == pull(blob, MiB) == a + b


@BOTH
@pytest.mark.parametrize(
    ("blob", "needle"),
    [
        (b"", "is empty"),
        (b"\x1f", "is not gzip"),
        (b"PK\x03\x04 a zip, not gzip", "is not gzip"),
        (gz(b"x" * 100)[:-1], "ends early"),
        (gz(b"x" * 100)[:15], "ends early"),
        (gz(data_of(2 * MiB)) + gz(data_of(MiB))[:-8], "ends early"),
        (gz(b"x") + b"\0" * 512, "after gzip member 1"),
        (gz(b"x") + gz(b"y") + b"garbage", "after gzip member 2"),
        (gz(b"x") + b"\x1f", "after gzip member 1"),
        (gz(b"x") + b"\x1f\x8bjunk-header-and-more-bytes", "not valid gzip"),
    ],
    ids=[
        "empty",
        "one-byte",
        "zip",
        "cut-trailer",
        "cut-header",
        "cut-second",
        "zeros-after",
        "garbage-after",
        "half-magic-after",
        "bad-second",
    ],
)
def test_refused(inflate, blob: bytes, needle: str) -> None:
    """Garbage after the last member is refused as dockerd (Go's gzip reader) refuses it."""
    for chunk in (1, 7, len(blob) or 1):
        with pytest.raises(GzipError, match=needle):
            inflate(blob, chunk)


@BOTH
def test_output_limit(inflate) -> None:
    blob = gz(bytes(3 * MiB)) + gz(bytes(MiB))
    assert len(inflate(blob, MiB, 4 * MiB)) == 4 * MiB
    with pytest.raises(GzipTooBig, match=f"more than {4 * MiB - 1} bytes"):
        inflate(blob, MiB, 4 * MiB - 1)


def test_memory_bounded() -> None:
    """256 MiB of output in 3 members through 1 MiB chunks: peak stays a few MiB."""
    blob = gz(bytes(100 * MiB)) + gz(bytes(MiB)) + gz(bytes(155 * MiB))
    tracemalloc.start()
    try:
        g, sha = Gunzip(1 << 40), hashlib.sha256()
        for i in range(0, len(blob), MiB):
            for piece in g.feed(blob[i : i + MiB]):
                sha.update(piece)
        for piece in g.finish():
            sha.update(piece)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert g.total == 256 * MiB and g.members == 3
    assert peak < 8 * MiB, peak


def test_reader_feeds_tarfile_stream() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, size in (("a", 2 * MiB), ("b", 1)):
            ti = tarfile.TarInfo(name)
            ti.size = size
            tf.addfile(ti, io.BytesIO(os.urandom(size)))
    raw = buf.getvalue()
    blob = gz(raw[: 2 * MiB]) + gz(raw[2 * MiB :])
    src = io.BufferedReader(GunzipReader(io.BytesIO(blob), 1 << 30), CHUNK)
    with tarfile.open(fileobj=src, mode="r|") as tf:
        assert [m.name for m in tf] == ["a", "b"]


def test_hashing_reader_counts_hashes_copies_once() -> None:
    """A metered reader counts each byte it passes once; copy and hash see the same bytes."""
    from usbupdater import progress
    from usbupdater.apps.streams import HashingReader

    data = data_of(3 * CHUNK + 17, seed=5)
    out = io.BytesIO()
    closed: list[bool] = []
    meter = progress.Meter(sink=lambda p: None)
    with progress.metering(meter):
        r = HashingReader(
            io.BytesIO(data), metered=True, copy_to=out, on_close=lambda x: closed.append(x.eof)
        )
        with r:
            r.read_blob(len(data))
    assert meter.done_bytes == r.count == len(data)
    assert out.getvalue() == data
    assert r.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert closed == [True]
    # a blob longer than signed: reading stops one byte past, nothing beyond is counted
    r2 = HashingReader(io.BytesIO(data))
    r2.read_blob(100)
    assert r2.count == 101


def test_verified_chunks_withhold_the_last_chunk() -> None:
    from usbupdater.apps.streams import verified_chunks
    from usbupdater.errors import VerificationError

    data = data_of(1000, seed=6)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert b"".join(verified_chunks(io.BytesIO(data), digest, len(data), 300)) == data
    got: list[bytes] = []
    with pytest.raises(VerificationError, match="content hashes to"):
        for c in verified_chunks(io.BytesIO(b"y" + data[1:]), digest, len(data), 300):
            got.append(c)
    assert sum(map(len, got)) == 900
    with pytest.raises(VerificationError, match="1001 bytes, expected 1000"):
        list(verified_chunks(io.BytesIO(data + b"z"), digest, len(data), 300))
