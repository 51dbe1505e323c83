"""Every reader of app content: gunzip, hashing (and copying, and counting) readers, the
digest-checked read of a stored blob. One place, so each byte is hashed, bounded and counted by
the same code whether it comes from the stick or the device's store.

Gunzip, for every reader of gzip on a stick (layers, compose bundles):

`Gunzip` is push style (feed it chunks, take bounded pieces of output); `GunzipReader` is the
pull-style file object on top of it (for `tarfile.open(mode="r|")`). Both handle multi-member
streams (pigz, concatenated gzip) the way Go's `compress/gzip` (hence dockerd) does: a member ends
when zlib reports `eof`; whatever follows, in `unused_data`, must be another gzip member. At
`eof` zlib may still show a stale `unconsumed_tail` when the member ended exactly where the
output cap was reached, so `eof` and `unused_data` are looked at first and the tail is ignored
(looping on the tail hung both old inflaters). Calling `decompress` on an ended stream is never
done.

Refused, each with its own `GzipError` reason: input that does not start as gzip, data after a
member that is not another member (trailing garbage: dockerd fails on it too), a stream that ends
inside a member (truncated), corrupt deflate data, and output beyond the caller's limit. Memory is
bounded: at most one input chunk plus one output piece (`piece`, 1 MiB) at a time, whatever the
stream's size or member count.
"""

from __future__ import annotations

import errno
import hashlib
import io
import zlib
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, NoReturn, Optional, Union

from usbupdater import progress, safeio
from usbupdater.errors import NoSpaceError, VerificationError

CHUNK = 1 << 20
_MAGIC = b"\x1f\x8b"
_SLICE = 16 << 10  # input handed to zlib per call
Bytes = Union[bytes, bytearray, memoryview]


class GzipError(ValueError):
    """The stream is not (valid, complete, bounded) gzip; str() is a reason for messages."""


class GzipTooBig(GzipError):
    """The stream unpacks to more than the caller's limit."""


class Gunzip:
    """Push-style multi-member gunzip; every call returns output in pieces of <= `piece` bytes.

    Consume each iterator that `feed`/`finish` return fully before the next call.
    """

    def __init__(self, limit: int, piece: int = CHUNK) -> None:
        self.limit = limit
        self.piece = piece
        self.total = 0  # bytes of output so far
        self.members = 0  # gzip members that ended
        self._d: Optional[Any] = None  # zlib decompressobj of the member being read
        self._head = b""  # the first bytes of a member not yet handed to zlib (magic check)

    def feed(self, data: Bytes) -> Iterator[bytes]:
        """Decompress `data`, yielding output pieces."""
        view = memoryview(data).cast("B")
        for start in range(0, len(view), _SLICE):
            yield from self._feed(view[start : start + _SLICE])

    def _feed(self, buf: Bytes) -> Iterator[bytes]:
        # zlib copies the input left over after a member into unused_data: small slices keep
        # that copy small when a stream holds many tiny members.
        while buf:
            d = self._d
            if d is None:
                buf = self._start_member(buf)
                continue
            try:
                out = d.decompress(buf, self.piece)
            except zlib.error as exc:
                raise GzipError(f"is not valid gzip ({exc})") from None
            if out:
                yield self._count(out)
            if d.eof:  # member ended: the rest of this input is in unused_data (tail is stale)
                self._d = None
                self.members += 1
                buf = d.unused_data
            else:
                tail = d.unconsumed_tail
                if not out and len(tail) >= len(buf):
                    raise GzipError("is not valid gzip (no progress)")  # never spin
                buf = tail

    def finish(self) -> Iterator[bytes]:
        """Take the output zlib still holds; raise if the stream is incomplete or empty."""
        d = self._d
        if d is not None:
            while not d.eof:
                try:
                    out = d.decompress(b"", self.piece)
                except zlib.error as exc:
                    raise GzipError(f"is not valid gzip ({exc})") from None
                if not out:
                    break
                yield self._count(out)
            if not d.eof:
                raise GzipError("gzip stream ends early (truncated)")
            if d.unused_data:
                self._bad_start(d.unused_data)
            self._d = None
            self.members += 1
        if self._head:
            self._bad_start(self._head)
        if not self.members:
            raise GzipError("is empty, not gzip")

    def _start_member(self, buf: Bytes) -> Bytes:
        """Check the magic of the member that starts in `buf`; return what zlib has not seen."""
        need = len(_MAGIC) - len(self._head)
        self._head += bytes(buf[:need])
        if len(self._head) < len(_MAGIC):
            return b""
        if self._head != _MAGIC:
            self._bad_start(self._head)
        self._d = zlib.decompressobj(31)
        self._d.decompress(self._head)  # the magic alone yields no output
        self._head = b""
        return buf[need:]

    def _bad_start(self, data: Bytes) -> NoReturn:
        if self.members:
            raise GzipError(f"has data after gzip member {self.members} that is not gzip")
        raise GzipError("is not gzip")

    def _count(self, out: bytes) -> bytes:
        self.total += len(out)
        if self.total > self.limit:
            raise GzipTooBig(f"unpacks to more than {self.limit} bytes")
        return out


class GunzipReader(io.RawIOBase):
    """A readable file of the decompressed bytes of `raw` (anything with `read(n)`)."""

    def __init__(self, raw: Any, limit: int, chunk: int = CHUNK) -> None:
        self.raw = raw
        self.chunk = chunk
        self.gz = Gunzip(limit)
        self._it: Optional[Iterator[bytes]] = None
        self._eof = False
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if not self._out:
            self._out = memoryview(self._next_piece())
        n = min(len(b), len(self._out))
        b[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _next_piece(self) -> bytes:
        while True:
            if self._it is not None:
                piece = next(self._it, None)
                if piece is not None:
                    return piece
                self._it = None
            if self._eof:
                return b""
            data = self.raw.read(self.chunk)
            if data:
                self._it = self.gz.feed(data)
            else:
                self._it = self.gz.finish()
                self._eof = True


class HashingReader(io.RawIOBase):
    """Reads a raw file (anything with `readinto`), hashing and counting every byte that passes.

    `metered`: the bytes are reported to `progress.count` (the verifier's reads: each byte of a
    blob is counted once, however many readers it passes through). `copy_to`: every byte is also
    written there (a store temp file; ENOSPC becomes NoSpaceError naming `copy_what`).
    `on_close(self)` runs after the raw file is closed (commit or discard a copy, note a blob
    whose whole content hashed wrong). `eof` is set once a read returned nothing.
    """

    def __init__(
        self,
        fh: Any,
        *,
        metered: bool = False,
        copy_to: Optional[BinaryIO] = None,
        copy_what: str = "",
        on_close: Optional[Callable[[HashingReader], None]] = None,
    ) -> None:
        self.fh: Any = fh
        self.sha = hashlib.sha256()
        self.count = 0
        self.eof = False
        self._metered = metered
        self._copy_to = copy_to
        self._copy_what = copy_what
        self._on_close = on_close

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = int(self.fh.readinto(b) or 0)
        if not n:
            if len(b):
                self.eof = True
            return 0
        view = memoryview(b)[:n]
        self.sha.update(view)
        self.count += n
        if self._copy_to is not None:
            try:
                self._copy_to.write(view)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise NoSpaceError(f"{self._copy_what}: no space left") from None
                raise
        if self._metered:
            progress.count(n)
        return n

    def read_upto(self, limit: int) -> bytes:
        """Everything left, but at most `limit` + 1 bytes (so the caller sees it is too long);
        short reads are continued (`safeio.read_upto`), so EIO surfaces as EIO."""
        return safeio.read_upto(self, limit + 1)  # type: ignore[arg-type]

    def read_blob(self, size: int, consume: Optional[Callable[[memoryview], None]] = None) -> None:
        """Read to the end in chunks (each handed to `consume`), but stop once more than `size`
        bytes came: the caller compares `count` and `digest` with what was signed."""
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while self.count <= size:
            n = self.readinto(view[: min(CHUNK, size + 1 - self.count)])
            if not n:
                return
            if consume is not None and self.count <= size:
                consume(view[:n])

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.fh.close()
        finally:
            try:
                if self._on_close is not None:
                    self._on_close(self)
            finally:
                super().close()


def mismatch(
    what: str, digest: str, size: int, got_digest: str, got_size: int
) -> VerificationError:
    """The error for a blob whose size or content is not the one signed."""
    if got_size != size:
        return VerificationError(f"{what} {digest}: {got_size} bytes, expected {size}")
    return VerificationError(f"{what} {digest}: content hashes to {got_digest}")


def verified_chunks(
    fh: Any, digest: str, size: int, chunk: int = CHUNK, what: str = "stored blob"
) -> Iterator[bytes]:
    """Yield a blob's bytes, raising VerificationError instead of its last chunk when the size or
    digest is wrong, so a consumer never sees a complete corrupted blob. Closes `fh`."""
    with HashingReader(fh) as r:
        while True:
            data = r.read(min(chunk, size - r.count + 1))
            if not data:
                break
            if r.count > size:
                raise mismatch(what, digest, size, "", r.count)
            if r.count == size and (r.digest != digest or r.read(1)):
                raise mismatch(what, digest, size, r.digest, r.count)
            yield data
        if r.count != size:
            raise mismatch(what, digest, size, "", r.count)


class ChunkReader(io.RawIOBase):
    """A readable file over an iterator of chunks (`verified_chunks`: it raises at the end on a
    mismatch, so a consumer reading to the end sees the error)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf = nxt
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n
