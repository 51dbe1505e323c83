"""The device's app store (`[pacman] reset_apps_root`): verified blobs the stick is not needed for.

Layout is the bundle's (`blobs/sha256/<hex>`, `apps/<app>/<H>/{uri,manifest.json,<B>.tgz}`) plus
`apps/<app>/<H>/usbupdater-app.json`, the verified description of the app (which blobs, which
images for which services), so `run` and a rollback can load and start the app without the stick
and without parsing anything again. The record is written last: an app directory without it is
an unfinished copy and is not taken as present.

Blobs come from the stick through `apps.copying` (hashed while copied, renamed into place only
when they match) and are read back through `read_verified`, which withholds the last chunk of a
blob whose digest does not match. Pruning is `apps.store_prune`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Optional

from usbupdater import progress, safeio
from usbupdater.apps.model import Blob, BlobSource, VerifiedApp, hex_of
from usbupdater.apps.streams import CHUNK, HashingReader, mismatch, verified_chunks
from usbupdater.errors import ContentMissingError, NoSpaceError, VerificationError
from usbupdater.fsutil import PathLike, atomic_write, fsync_dir, makedirs_durable

RECORD = "usbupdater-app.json"
# Beside a RECORD that only caches "verified" for an app version someone else put here (a
# preloaded app): the version is not usbupdater's, so pruning leaves it and its blobs alone.
VERIFIED_ONLY = "usbupdater-verified-only"
# aktualizr-lite's `[pacman] storage_watermark`: apps may fill the store's filesystem up to this
# percentage of its size; the rest stays free (for logs, databases, the engine). Clamped 20..95.
DEFAULT_STORAGE_WATERMARK = 80
STORAGE_WATERMARK_RANGE = (20, 95)
TMP_PREFIX = ".tmp-"


def app_hex(uri: str) -> str:
    return hex_of(uri.rpartition("@")[2])


class AppStore:
    """`reset_apps_root`: content-addressed blobs plus one directory per stored app version.

    Space: before a blob is copied, its declared (signed) size rounded up to whole blocks, plus
    one block for its inode and directory entry, must fit in the filesystem's free space minus
    the reserve `storage_watermark` leaves ((100 - watermark) % of the filesystem's size), so a
    bundle too big for /var is refused (60) before /var fills up.
    """

    def __init__(self, root: PathLike, storage_watermark: int = DEFAULT_STORAGE_WATERMARK) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs" / "sha256"
        low, high = STORAGE_WATERMARK_RANGE
        self.storage_watermark = min(max(storage_watermark, low), high)

    # --- space ----------------------------------------------------------------------------------

    def space(self) -> tuple[int, int, int]:
        """(free bytes, bytes to keep free, block size) of the store's filesystem."""
        st = os.statvfs(self.blob_dir if self.blob_dir.is_dir() else self.root)
        block = st.f_frsize or 4096
        reserve = st.f_blocks * block * (100 - self.storage_watermark) // 100
        return st.f_bavail * block, reserve, block

    @staticmethod
    def cost(size: int, block: int) -> int:
        """Bytes a file of `size` takes: whole blocks plus one for its inode/entry."""
        return -(-size // block) * block + block

    def check_space(self, sizes: Iterable[int], what: str) -> None:
        """NoSpaceError (60) with the numbers unless files of `sizes` fit above the reserve."""
        free, reserve, block = self.space()
        need = sum(self.cost(n, block) for n in sizes)
        if need > free - reserve:
            raise NoSpaceError(
                f"not enough space in the app store {self.root}: {what} needs {need} bytes, "
                f"{free} are free and "
                f"{reserve} of them stay free ([pacman] storage_watermark = "
                f"{self.storage_watermark}%): {max(0, need - (free - reserve))} bytes short"
            )

    # --- blobs ----------------------------------------------------------------------------------

    def blob_path(self, blob: Blob) -> Path:
        return self.blob_dir / blob.hex

    def has_blob(self, blob: Blob) -> bool:
        """Present means the final name exists with the right size (temp files never have it)."""
        try:
            st = os.stat(self.blob_path(blob), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return st.st_size == blob.size

    def read_verified(self, blob: Blob, chunk: int = CHUNK) -> Iterator[bytes]:
        """Yield a stored blob's bytes; raise VerificationError instead of its last chunk if the
        size or digest is wrong, so a consumer never sees a complete corrupted blob."""
        try:
            fh = open(self.blob_path(blob), "rb", buffering=0)  # noqa: SIM115 - the reader closes
        except FileNotFoundError:
            raise ContentMissingError(f"blob {blob.digest} is not in the app store") from None
        return verified_chunks(fh, blob.digest, blob.size, chunk)

    def read_small(self, blob: Blob) -> bytes:
        return b"".join(self.read_verified(blob))

    def _copy_blob(self, source: BlobSource, blob: Blob) -> None:
        """Copy one blob from the stick through a temp file, hashing (and counting) as it goes."""
        try:
            src: BinaryIO = source.open_blob(blob.hex, blob.size)
        except FileNotFoundError:
            raise ContentMissingError(f"blob {blob.digest} is missing from the bundle") from None
        except safeio.UnsafePathError as exc:
            raise VerificationError(f"bundle blob {blob.digest}: {exc.reason}") from None
        tmp = self.blob_dir / f"{TMP_PREFIX}{blob.hex}.{os.getpid()}"
        try:
            with open(tmp, "wb") as out:
                what = f"app store {self.root}"
                with HashingReader(src, metered=True, copy_to=out, copy_what=what) as r:
                    r.read_blob(blob.size)
                if r.count != blob.size or r.digest != blob.digest:
                    raise mismatch("bundle blob", blob.digest, blob.size, r.digest, r.count)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.blob_path(blob))  # commit point: now "present"
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # --- apps -----------------------------------------------------------------------------------

    def app_dir(self, app: VerifiedApp) -> Path:
        return self.root / "apps" / app.name / app_hex(app.uri)

    def has_app(self, app: VerifiedApp) -> bool:
        """The record exists (written last) and every blob is present."""
        return (self.app_dir(app) / RECORD).is_file() and all(self.has_blob(b) for b in app.blobs)

    def add_apps(
        self,
        source: BlobSource,
        apps: Iterable[VerifiedApp],
        created: Optional[list[Path]] = None,
    ) -> None:
        """Copy the verified apps from the stick (a BlobSource: the bundle) into the store.

        Blobs already present (e.g. copied by `CopyingSource` while they were verified) are
        skipped, so after verification through a CopyingSource this only writes the app
        directories.

        Refuses (NoSpaceError) before copying when the store's filesystem cannot hold what is
        missing; a content mismatch raises VerificationError and leaves no partial blob.
        `created` collects the app directories and files this call added (`remove_created`
        takes them back when the install is refused later). The bytes copied are counted
        (`progress.count`) against the missing blobs' signed sizes.
        """
        apps = list(apps)
        makedirs_durable(self.blob_dir)
        missing = {b.digest: b.size for app in apps for b in app.blobs if not self.has_blob(b)}
        self.check_space(missing.values(), f"{len(missing)} new blob(s)")
        progress.expect(
            sum(missing.values()), progress.APPS
        )  # the signed sizes of what is read below
        for app in apps:
            copied = False
            for b in app.blobs:
                if not self.has_blob(b):
                    self._copy_blob(source, b)
                    copied = True
            if copied:
                fsync_dir(self.blob_dir)
            self._write_app_dir(app, created if created is not None else [])

    def _write_app_dir(self, app: VerifiedApp, created: list[Path]) -> None:
        d = self.app_dir(app)
        top = next((p for p in (self.root / "apps", d.parent, d) if not p.exists()), None)
        if top is not None:
            created.append(top)
        else:  # the directory was there (an earlier copy): note each file added to it
            names = ("uri", "manifest.json", f"{app.bundle.hex}.tgz", RECORD)
            created.extend(d / n for n in names if not (d / n).exists())
        makedirs_durable(d)
        atomic_write(d / "uri", app.uri.encode())
        for name, blob in (("manifest.json", app.manifest), (f"{app.bundle.hex}.tgz", app.bundle)):
            target = d / name
            if not target.exists():
                tmp = d / f"{TMP_PREFIX}{name}"
                tmp.unlink(missing_ok=True)
                os.link(self.blob_path(blob), tmp)  # same bytes, no extra space
                os.replace(tmp, target)
        atomic_write(d / RECORD, json.dumps(app.to_json(), indent=1, sort_keys=True).encode())

    def remove_created(self, created: list[Path]) -> None:
        """Remove what `add_apps` reported as created (newest first), durably."""
        for path in reversed(created):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            fsync_dir(path.parent)
        created.clear()

    def load_app(self, name: str, uri: str) -> VerifiedApp:
        """The stored description of an app version (for `run` and rollback, without the stick)."""
        safeio.check_component(name)
        path = self.root / "apps" / name / app_hex(uri) / RECORD
        try:
            doc = json.loads(path.read_bytes())
            app = VerifiedApp.from_json(doc)
        except FileNotFoundError:
            raise ContentMissingError(f"app {name} ({uri}) is not in the app store") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise VerificationError(f"app store record {path} is unreadable: {exc}") from None
        if app.name != name or app.uri != uri:
            raise VerificationError(f"app store record {path} describes {app.name} {app.uri}")
        for b in app.blobs:
            if not self.has_blob(b):
                raise ContentMissingError(f"app {name}: blob {b.digest} is not in the app store")
        return app

    def has_app_version(self, name: str, uri: str) -> bool:
        """Whether `load_app(name, uri)` would succeed (recorded and every blob present)."""
        try:
            self.load_app(name, uri)
        except (ContentMissingError, VerificationError):
            return False
        return True

    def stored_apps(self) -> list[tuple[str, str]]:
        """(name, uri) of every complete app version in the store."""
        found = []
        apps_dir = self.root / "apps"
        if not apps_dir.is_dir():
            return []
        for name_dir in sorted(apps_dir.iterdir()):
            for ver in sorted(name_dir.iterdir()) if name_dir.is_dir() else ():
                uri_file = ver / "uri"
                if (ver / RECORD).is_file() and uri_file.is_file():
                    found.append((name_dir.name, uri_file.read_text()))
        return found

    def prune(self, keep: Iterable[tuple[str, str]], keep_names: Iterable[str] = ()) -> list[str]:
        """Remove what usbupdater added and no kept app needs (`store_prune.prune_store`)."""
        from usbupdater.apps.store_prune import prune_store

        return prune_store(self, keep, keep_names)
