"""Filling the device's app store while verification reads the stick: each blob is read once,
hashed by the verifier and written to a temp file in the same pass, and renamed into place only
when what was read hashes to its digest (`CopyingSource`)."""

from __future__ import annotations

import io
import itertools
import os
from pathlib import Path
from typing import BinaryIO

from usbupdater import safeio
from usbupdater.apps.model import BlobSource
from usbupdater.apps.store import TMP_PREFIX, AppStore
from usbupdater.apps.streams import CHUNK, HashingReader
from usbupdater.fsutil import fsync_dir, makedirs_durable
from usbupdater.hexdigest import is_sha256_hex

_counter = itertools.count()


class CopyingSource:
    """A BlobSource for verification that fills the store as a side effect.

    Every blob the verifier reads from the stick is written to a store temp file in the same
    pass (each byte of the stick read once: the verifier counts it, this tee only copies) and
    committed when its bytes hash right; blobs the store already has are served from the store
    instead (the verifier still checks them).
    """

    def __init__(self, source: BlobSource, store: AppStore) -> None:
        self.source = source
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
        if not is_sha256_hex(hexdigest):
            raise safeio.UnsafePathError(hexdigest, "is not a sha256 hex digest")
        path = self.store.blob_dir / hexdigest
        if path.is_file() and not path.is_symlink() and path.stat().st_size <= max_size:
            return open(path, "rb", buffering=0)
        # Before the first byte of this blob is written: `max_size` is its declared (signed)
        # size for layers and bundles, a small cap for manifests and configs.
        self.store.check_space([max_size], f"blob sha256:{hexdigest[:12]} ({max_size} bytes)")
        src = self.source.open_blob(hexdigest, max_size)
        tmp = self.store.blob_dir / f"{TMP_PREFIX}{hexdigest}.{os.getpid()}.{next(_counter)}"
        out = open(tmp, "wb")  # noqa: SIM115 - closed by _commit, when the tee is closed
        try:
            tee = HashingReader(
                src,
                copy_to=out,
                copy_what=f"app store {self.store.root}",
                on_close=lambda r: self._commit(r, out, tmp, hexdigest),
            )
        except BaseException:
            out.close()
            tmp.unlink(missing_ok=True)
            raise
        return io.BufferedReader(tee, CHUNK)

    def _commit(self, tee: HashingReader, out: BinaryIO, tmp: Path, hexdigest: str) -> None:
        """The temp file becomes the blob only if what was read hashes to the blob's digest."""
        try:
            complete = tee.sha.hexdigest() == hexdigest
            if complete:
                out.flush()
                os.fsync(out.fileno())
            out.close()
            if complete:
                os.replace(tmp, self.store.blob_dir / hexdigest)
                self.created.append(hexdigest)
        finally:
            out.close()
            tmp.unlink(missing_ok=True)
