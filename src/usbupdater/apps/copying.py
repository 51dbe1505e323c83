"""Filling the device's app store while verification reads the stick: each blob is read once,
hashed by the verifier and written to a temp file in the same pass, and renamed into place only
when what was read hashes to its digest (`CopyingSource`)."""

from __future__ import annotations

import errno
import hashlib
import io
import itertools
import os
from typing import Any, BinaryIO, Union

from usbupdater import safeio
from usbupdater.apps.model import BlobSource
from usbupdater.apps.store import CHUNK, HEX, TMP_PREFIX, AppStore, as_source
from usbupdater.errors import NoSpaceError
from usbupdater.fsutil import PathLike, fsync_dir, makedirs_durable

_counter = itertools.count()


class _TeeReader(io.RawIOBase):
    """Reads a stick blob for the verifier and writes the same bytes to a store temp file; on
    close the temp file becomes the blob only if what was read hashes to the blob's digest."""

    def __init__(self, src: BinaryIO, store: AppStore, hexdigest: str, created: list[str]) -> None:
        self._src, self._store, self._hex = src, store, hexdigest
        self._created = created
        self._tmp = store.blob_dir / f"{TMP_PREFIX}{hexdigest}.{os.getpid()}.{next(_counter)}"
        self._out = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()
        self._sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._src.readinto(b)  # type: ignore[attr-defined]
        if n:
            view = memoryview(b)[:n]
            self._sha.update(view)
            try:
                self._out.write(view)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise NoSpaceError(f"app store {self._store.root}: no space left") from None
                raise
        return int(n or 0)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._src.close()
            complete = self._sha.hexdigest() == self._hex
            if complete:
                self._out.flush()
                os.fsync(self._out.fileno())
            self._out.close()
            if complete:
                os.replace(self._tmp, self._store.blob_dir / self._hex)
                self._created.append(self._hex)
            else:
                self._tmp.unlink(missing_ok=True)
        finally:
            self._tmp.unlink(missing_ok=True)
            super().close()


class CopyingSource:
    """A BlobSource for verification that fills the store as a side effect.

    Every blob the verifier reads from the stick is written to a store temp file in the same
    pass (each byte of the stick read once) and committed when its bytes hash right; blobs the
    store already has are served from the store instead (the verifier still checks them).
    """

    def __init__(self, source: Union[BlobSource, PathLike], store: AppStore) -> None:
        self.source = as_source(source)
        self.store = store
        self.created: list[str] = []  # hex digests this source added to the store
        makedirs_durable(store.blob_dir)

    def discard_created(self) -> None:
        """Remove the blobs this source added (an install that is refused changes nothing)."""
        for hexdigest in self.created:
            (self.store.blob_dir / hexdigest).unlink(missing_ok=True)
        if self.created:
            fsync_dir(self.store.blob_dir)
        self.created.clear()

    def open_blob(self, hexdigest: str, max_size: int) -> BinaryIO:
        if not HEX.match(hexdigest):
            raise safeio.UnsafePathError(hexdigest, "is not a sha256 hex digest")
        path = self.store.blob_dir / hexdigest
        if path.is_file() and not path.is_symlink() and path.stat().st_size <= max_size:
            return open(path, "rb", buffering=0)
        # Before the first byte of this blob is written: `max_size` is its declared (signed)
        # size for layers and bundles, a small cap for manifests and configs.
        self.store.check_space([max_size], f"blob sha256:{hexdigest[:12]} ({max_size} bytes)")
        src = self.source.open_blob(hexdigest, max_size)
        return io.BufferedReader(_TeeReader(src, self.store, hexdigest, self.created), CHUNK)
