"""Layers and blobs of the simulated app images: deterministic tars and gzip members, the
busybox rootfs layer, seeded random data layers, and a content-addressed blob store
(`<apps>/blobs/sha256/<hex>`) with helpers that drop or corrupt one blob for tests.

Everything is deterministic (fixed mtimes, owners, gzip headers, seeded random data), so the
same input gives the same digests; the busybox layer is built once per process and reused.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
APPLETS = (
    "sh", "httpd", "sleep", "echo", "cat", "ls", "wget", "true", "false", "env", "test",
    "mkdir", "rm", "touch", "ps", "kill", "nc", "date", "hostname", "id",
)  # fmt: skip
CHUNK = 1 << 20
EPOCH = 0  # every mtime in tars and gzip headers


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hex_of(digest: str) -> str:
    return digest.split(":", 1)[1]


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def blob_path(apps_dir: Path, digest: str) -> Path:
    """Where a blob ("sha256:<hex>" or "<hex>") lives in an app store."""
    return Path(apps_dir) / "blobs" / "sha256" / digest.split(":")[-1]


def drop_blob(apps_dir: Path, digest: str) -> None:
    blob_path(apps_dir, digest).unlink()


def corrupt_blob(apps_dir: Path, digest: str, offset: int = -1) -> None:
    """Flip one bit of one byte (default: the last) in a blob, keeping its size."""
    p = blob_path(apps_dir, digest)
    data = bytearray(p.read_bytes())
    data[offset] ^= 0x01
    p.write_bytes(bytes(data))


# --- tar building ------------------------------------------------------------------------------


def tarinfo(
    name: str, size: int = 0, mode: int = 0o644, kind: bytes = tarfile.REGTYPE
) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.type, ti.mtime = size, mode, kind, EPOCH
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def tar_member(ti: tarfile.TarInfo, data: bytes = b"") -> bytes:
    """One tar member (header, data, padding): tars are assembled by hand so they can stream."""
    return ti.tobuf(tarfile.GNU_FORMAT) + data + bytes(-len(data) % 512)


def tar_bytes(members: Iterable[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    return b"".join(tar_member(ti, data) for ti, data in members) + bytes(1024)


def gzip_bytes(data: bytes, level: int = 6, member: int = 0) -> bytes:
    if member <= 0 or len(data) <= member:
        return gzip.compress(data, compresslevel=level, mtime=EPOCH)
    return b"".join(gzip_bytes(data[i : i + member], level) for i in range(0, len(data), member))


class MemberCompressor:
    """gzip compressobj that starts a new member every `member` uncompressed bytes (0: never)."""

    def __init__(self, level: int, member: int) -> None:
        self.level, self.member, self.left = level, member, member
        self.comp = zlib.compressobj(level, zlib.DEFLATED, 31)

    def compress(self, data: bytes) -> bytes:
        if self.member <= 0:
            return self.comp.compress(data)
        out = []
        while data:
            if not self.left:
                out.append(self.comp.flush())
                self.comp = zlib.compressobj(self.level, zlib.DEFLATED, 31)
                self.left = self.member
            take = data[: self.left]
            out.append(self.comp.compress(take))
            self.left -= len(take)
            data = data[len(take) :]
        return b"".join(out)

    def flush(self) -> bytes:
        return self.comp.flush()


_BUSYBOX_CACHE: dict[tuple[str, str, int, int], tuple[bytes, str]] = {}


def busybox_layer(compression: str = "gzip", level: int = 6, member: int = 0) -> tuple[bytes, str]:
    """(layer blob, diff_id) of the busybox rootfs layer; built once per content and reused."""
    data = BUSYBOX.read_bytes()
    key = (hashlib.sha256(data).hexdigest(), compression, level, member)
    if key not in _BUSYBOX_CACHE:
        members: list[tuple[tarfile.TarInfo, bytes]] = [
            (tarinfo(d, mode=0o755, kind=tarfile.DIRTYPE), b"") for d in ("bin", "etc", "tmp")
        ]
        members.append((tarinfo("bin/busybox", len(data), 0o755), data))
        for applet in APPLETS:
            ti = tarinfo(f"bin/{applet}", mode=0o777, kind=tarfile.SYMTYPE)
            ti.linkname = "busybox"
            members.append((ti, b""))
        passwd = b"root:x:0:0:root:/:/bin/sh\n"
        members.append((tarinfo("etc/passwd", len(passwd)), passwd))
        tar = tar_bytes(members)
        blob = gzip_bytes(tar, level, member) if compression == "gzip" else tar
        _BUSYBOX_CACHE[key] = (blob, sha256_digest(tar))
    return _BUSYBOX_CACHE[key]


def random_chunks(seed: str, size: int) -> Iterator[bytes]:
    rnd = random.Random(seed)  # noqa: S311 - test data, reproducible on purpose
    left = size
    while left:
        n = min(left, CHUNK)
        yield rnd.randbytes(n)
        left -= n


def data_layer_tar(name: str, seed: str, size: int) -> Iterator[bytes]:
    """A tar holding `data/` and one file of seeded random bytes, streamed in chunks."""
    yield tarinfo("data", mode=0o755, kind=tarfile.DIRTYPE).tobuf(tarfile.GNU_FORMAT)
    yield tarinfo(f"data/{name}", size).tobuf(tarfile.GNU_FORMAT)
    yield from random_chunks(seed, size)
    yield bytes(-size % 512) + bytes(1024)


# --- blob store --------------------------------------------------------------------------------


class BlobStore:
    """Content-addressed writes into `<apps>/blobs/sha256/`."""

    def __init__(self, apps_dir: Path) -> None:
        self.dir = apps_dir / "blobs" / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes) -> tuple[str, int]:
        digest = sha256_digest(data)
        path = self.dir / hex_of(digest)
        if not path.exists():
            tmp = path.with_name(f".tmp-{hex_of(digest)}")
            tmp.write_bytes(data)
            tmp.replace(path)
        return digest, len(data)

    def put_layer(
        self, chunks: Iterable[bytes], compression: str, level: int, member: int = 0
    ) -> tuple[str, int, str]:
        """Stream a layer to disk: (blob digest, blob size, diff_id), never all in memory."""
        tmp = self.dir / f".tmp-layer-{os.getpid()}"
        diff, blob, size = hashlib.sha256(), hashlib.sha256(), 0
        comp = MemberCompressor(level, member) if compression == "gzip" else None
        with open(tmp, "wb") as fh:
            for chunk in chunks:
                diff.update(chunk)
                out = comp.compress(chunk) if comp else chunk
                blob.update(out)
                fh.write(out)
                size += len(out)
            if comp:
                out = comp.flush()
                blob.update(out)
                fh.write(out)
                size += len(out)
        digest = "sha256:" + blob.hexdigest()
        tmp.replace(self.dir / hex_of(digest))
        return digest, size, "sha256:" + diff.hexdigest()
