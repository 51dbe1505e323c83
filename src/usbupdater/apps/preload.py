"""Apps the device already has, whoever stored them: LmP's preloaded apps count too.

LmP's build (meta-lmp `classes/lmp.bbclass` `preload_apps`, composectl's store layout, foundriesio/
composeapp `pkg/compose/v1/app_store.go`) fills `[pacman] reset_apps_root` with the factory
target's apps in the bundle's layout (`blobs/sha256/<hex>`, `apps/<app>/<H>/{uri, manifest.json,
<B>.tgz, images/...}`) but without usbupdater's record `usbupdater-app.json`. aktualizr-lite treats
those apps as the device's (its `isFetched`/`verify` check the store whoever wrote it:
aktualizr-lite `src/composeappmanager.cc` `getAppsToUpdate`, `verifyTarget`). So here an app version
is present when its content *in the store* verifies against the target's signed digest chain
(`verify.verify_app`, the same check `install` applies to a stick), read through `StoreBlobSource`:
no link followed, every size bounded by its signed one.

The verdict is expensive (every layer is hashed), so a success is cached by writing the store's
record, exactly the record `install` writes after verifying the same blobs from a stick. That is
sound because the record only says "these blobs, verified once against this URI": every later
read of a blob (`AppStore.read_verified`, used to load images and extract bundles) checks its
digest again, so a blob that rots after the record was written is refused at load time, as for any
app usbupdater installed itself. Failures are not cached across processes (they are the rare case
and must be re-checked once the content is repaired); within one process every verdict is
memoised.

A store blob whose bytes do not hash to its name is corrupt: with `repair` (install, never `check`)
it is removed, so the install copies a good one from the stick instead of failing on the store's.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Optional, Union

from usbupdater import fsutil, log, safeio
from usbupdater.apps.model import VerifiedApp
from usbupdater.apps.store import RECORD, VERIFIED_ONLY, AppStore, app_hex
from usbupdater.apps.streams import HashingReader
from usbupdater.apps.verify import verify_app
from usbupdater.errors import ContentMissingError, VerificationError
from usbupdater.fsutil import PathLike, fsync_dir
from usbupdater.hexdigest import is_sha256_hex
from usbupdater.hostinfo import machine_platform

logger = log.get_logger("preload")
MAX_URI = 4096


class StoreBlobSource:
    """A `BlobSource` over `<store>/blobs/sha256/<hex>`: regular files only, no link followed,
    each opened only if no larger than the size the signed metadata allows. Blobs found larger
    than allowed, or read to their end with the wrong digest, are listed in `corrupt`."""

    def __init__(self, store: AppStore) -> None:
        self.store = store
        self.corrupt: set[str] = set()

    def open_blob(self, hexdigest: str, max_size: int) -> BinaryIO:
        if not is_sha256_hex(hexdigest):
            raise safeio.UnsafePathError(hexdigest, "is not a sha256 hex digest")
        fd = safeio.open_root(self.store.blob_dir)  # FileNotFoundError: no store at all
        try:
            fh = safeio.open_file(fd, hexdigest, max_size)
        except safeio.UnsafePathError:
            self.corrupt.add(hexdigest)
            raise
        finally:
            os.close(fd)
        checked = HashingReader(fh, on_close=lambda r: self._checked(r, hexdigest))
        return checked  # type: ignore[return-value]

    def _checked(self, blob: HashingReader, hexdigest: str) -> None:
        """A blob read to its end whose bytes do not hash to its name is corrupt."""
        if blob.eof and blob.sha.hexdigest() != hexdigest:
            self.corrupt.add(hexdigest)


class DeviceAppStore(AppStore):
    """The app store as the device sees it: usbupdater's records plus preloaded apps.

    `persist`: cache a successful verification as the store's record (install and run; `check`
    passes False and changes nothing). `repair`: remove store blobs found corrupt.
    """

    def __init__(
        self,
        root: PathLike,
        storage_watermark: Optional[int] = None,
        *,
        persist: bool = True,
        repair: bool = False,
        arch: Optional[str] = None,
    ) -> None:
        if storage_watermark is None:
            super().__init__(root)
        else:
            super().__init__(root, storage_watermark)
        self.persist = persist
        self.repair = repair
        platform_arch, variant = machine_platform()
        self.arch = arch or platform_arch
        self.variant = None if arch else variant  # an explicit arch (tests) means no variant
        self._verdicts: dict[tuple[str, str], Union[VerifiedApp, Exception]] = {}

    def load_app(self, name: str, uri: str) -> VerifiedApp:
        try:
            return super().load_app(name, uri)
        except ContentMissingError:
            safeio.check_component(name)
            if (self.root / "apps" / name / app_hex(uri) / RECORD).is_file():
                raise  # recorded by usbupdater but a blob is gone: not a preload question
        return self.recognise(name, uri)

    def recognise(self, name: str, uri: str) -> VerifiedApp:
        """Verify an unrecorded app version from the store's own blobs; cache the verdict."""
        key = (name, uri)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verify(name, uri)
            self._verdicts[key] = verdict
        if isinstance(verdict, Exception):
            raise verdict
        return verdict

    def _verify(self, name: str, uri: str) -> Union[VerifiedApp, Exception]:
        app_dir = self.root / "apps" / name / app_hex(uri)
        try:
            fd = safeio.open_root(app_dir)
            try:
                stored_uri = safeio.read_file(fd, "uri", MAX_URI).decode("utf-8", "replace")
            finally:
                os.close(fd)
        except (FileNotFoundError, safeio.UnsafePathError):
            return ContentMissingError(f"app {name} ({uri}) is not in the app store")
        if stored_uri.strip() != uri:
            return ContentMissingError(f"app {name}: the store's copy names another version")
        source = StoreBlobSource(self)
        try:
            verified = verify_app(source, name, uri, self.arch, self.variant)
        except (ContentMissingError, VerificationError) as exc:
            self._bad_blobs(name, source.corrupt)
            logger.warning("stored app is not usable", app=name, uri=uri, reason=exc.reason)
            return exc
        if self.persist:
            # Marked first: a kill before the record leaves a version that is still foreign.
            fsutil.atomic_write(app_dir / VERIFIED_ONLY, b"")
            self._write_app_dir(verified, [])
        logger.info("preloaded app recognised", app=name, uri=uri, recorded=self.persist)
        return verified

    def _bad_blobs(self, name: str, corrupt: set[str]) -> None:
        for hexdigest in sorted(corrupt):
            logger.warning("corrupt blob in the app store", app=name, blob=f"sha256:{hexdigest}")
            if self.repair:
                try:
                    (self.blob_dir / hexdigest).unlink(missing_ok=True)
                except OSError as exc:  # e.g. a directory in its place: left for a person
                    logger.warning("cannot remove a corrupt blob", reason=str(exc))
        if self.repair and corrupt:
            fsync_dir(self.blob_dir)
