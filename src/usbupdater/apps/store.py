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

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Optional, Union

from usbupdater import safeio
from usbupdater.apps.model import BlobSource
from usbupdater.errors import ContentMissingError, NoSpaceError, VerificationError
from usbupdater.fsutil import PathLike, atomic_write, fsync_dir, makedirs_durable

if TYPE_CHECKING:
    from usbupdater.apps.model import VerifiedApp

CHUNK = 1 << 20
RECORD = "usbupdater-app.json"
# Beside a RECORD that only caches "verified" for an app version someone else put here (a
# preloaded app): the version is not usbupdater's, so pruning leaves it and its blobs alone.
VERIFIED_ONLY = "usbupdater-verified-only"
# aktualizr-lite's `[pacman] storage_watermark`: apps may fill the store's filesystem up to this
# percentage of its size; the rest stays free (for logs, databases, the engine). Clamped 20..95.
DEFAULT_STORAGE_WATERMARK = 80
STORAGE_WATERMARK_RANGE = (20, 95)
HEX = re.compile(r"^[0-9a-f]{64}$")
TMP_PREFIX = ".tmp-"


def hex_of(digest: str) -> str:
    """The hex part of "sha256:<hex>", refusing anything else (names built from it are paths)."""
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or not HEX.match(hexpart):
        raise VerificationError(f"unsupported or malformed digest {digest!r}")
    return hexpart


@dataclass(frozen=True)
class Blob:
    """A content-addressed blob: "sha256:<hex>" and its exact size in bytes."""

    digest: str
    size: int

    @property
    def hex(self) -> str:
        return hex_of(self.digest)


@dataclass(frozen=True)
class ServiceImage:
    """One compose service's image as verified: what to load and how the compose file names it.

    `layers` are in `config.rootfs` order; `blobs` is every blob of the image tree (index,
    manifest, config, layers) so the store keeps the tree complete.
    """

    service: str
    ref: str  # the digest-pinned reference in the compose file: "<host>/<path>@sha256:<I>"
    config: Blob
    layers: tuple[Blob, ...]
    blobs: tuple[Blob, ...] = ()

    @property
    def repository(self) -> str:
        return self.ref.partition("@")[0]

    @property
    def root_hex(self) -> str:
        return hex_of(self.ref.partition("@")[2])

    @property
    def image_id(self) -> str:
        """Docker's image ID: the config's digest."""
        return self.config.digest


@dataclass(frozen=True)
class AppContent:
    """One verified app: its URI, manifest and bundle blobs, and each service's image."""

    name: str
    uri: str  # "<host>/<factory>/<app>@sha256:<H>"
    manifest: Blob
    bundle: Blob
    images: tuple[ServiceImage, ...] = field(default_factory=tuple)

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """Every blob the app needs, each once."""
        seen: dict[str, Blob] = {
            self.manifest.digest: self.manifest,
            self.bundle.digest: self.bundle,
        }
        for img in self.images:
            for b in (*img.blobs, img.config, *img.layers):
                seen.setdefault(b.digest, b)
        return tuple(seen.values())

    def to_json(self) -> dict[str, Any]:
        def blob(b: Blob) -> dict[str, Any]:
            return {"digest": b.digest, "size": b.size}

        return {
            "name": self.name,
            "uri": self.uri,
            "manifest": blob(self.manifest),
            "bundle": blob(self.bundle),
            "images": [
                {
                    "service": i.service,
                    "ref": i.ref,
                    "config": blob(i.config),
                    "layers": [blob(b) for b in i.layers],
                    "blobs": [blob(b) for b in i.blobs],
                }
                for i in self.images
            ],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> AppContent:
        def blob(d: Mapping[str, Any]) -> Blob:
            b = Blob(str(d["digest"]), int(d["size"]))
            hex_of(b.digest)
            return b

        return cls(
            name=str(doc["name"]),
            uri=str(doc["uri"]),
            manifest=blob(doc["manifest"]),
            bundle=blob(doc["bundle"]),
            images=tuple(
                ServiceImage(
                    service=str(i["service"]),
                    ref=str(i["ref"]),
                    config=blob(i["config"]),
                    layers=tuple(blob(b) for b in i["layers"]),
                    blobs=tuple(blob(b) for b in i.get("blobs", ())),
                )
                for i in doc["images"]
            ),
        )


class DirSource:
    """Blobs of an `apps/` directory on the stick, read with safeio (no links, bounded size)."""

    def __init__(self, apps_dir: PathLike) -> None:
        self.apps_dir = apps_dir

    def open_blob(self, hexdigest: str, max_size: int) -> BinaryIO:
        if not HEX.match(hexdigest):
            raise safeio.UnsafePathError(hexdigest, "is not a sha256 hex digest")
        fd = safeio.open_root(self.apps_dir)
        try:
            return safeio.open_file(fd, f"blobs/sha256/{hexdigest}", max_size)
        finally:
            os.close(fd)


def as_source(source: Union[BlobSource, PathLike]) -> BlobSource:
    """A BlobSource as is; a path as the `apps/` directory of a bundle."""
    if isinstance(source, (str, os.PathLike)):
        return DirSource(source)
    return source


def content_from_verified(v: VerifiedApp) -> AppContent:
    """The store's description of an app from apps.verify's result."""
    images = []
    for svc in v.services:
        img = v.images[svc.image]
        images.append(
            ServiceImage(
                service=svc.name,
                ref=img.ref,
                config=Blob(img.config.digest, img.config.size),
                layers=tuple(Blob(b.digest, b.size) for b in img.layers),
                blobs=tuple(Blob(b.digest, b.size) for b in img.blobs),
            )
        )
    return AppContent(
        name=v.name,
        uri=v.uri,
        manifest=Blob(v.manifest.digest, v.manifest.size),
        bundle=Blob(v.bundle.digest, v.bundle.size),
        images=tuple(images),
    )


def app_hex(uri: str) -> str:
    return hex_of(uri.rpartition("@")[2])


def _hash_mismatch(what: str, blob: Blob, got_digest: str, got_size: int) -> VerificationError:
    if got_size != blob.size:
        return VerificationError(f"{what} {blob.digest}: {got_size} bytes, expected {blob.size}")
    return VerificationError(f"{what} {blob.digest}: content hashes to {got_digest}")


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
            fh = open(self.blob_path(blob), "rb")  # noqa: SIM115 - closed in finally
        except FileNotFoundError:
            raise ContentMissingError(f"blob {blob.digest} is not in the app store") from None
        try:
            h, done = hashlib.sha256(), 0
            while True:
                data = fh.read(min(chunk, blob.size - done + 1))
                if not data:
                    break
                h.update(data)
                done += len(data)
                if done > blob.size:
                    raise _hash_mismatch("stored blob", blob, "", done)
                if done == blob.size and ("sha256:" + h.hexdigest() != blob.digest or fh.read(1)):
                    raise _hash_mismatch("stored blob", blob, "sha256:" + h.hexdigest(), done)
                yield data
            if done != blob.size:
                raise _hash_mismatch("stored blob", blob, "", done)
        finally:
            fh.close()

    def read_small(self, blob: Blob) -> bytes:
        return b"".join(self.read_verified(blob))

    def _copy_blob(self, source: BlobSource, blob: Blob) -> None:
        """Copy one blob from the stick through a temp file, hashing as it goes."""
        try:
            src: BinaryIO = source.open_blob(blob.hex, blob.size)
        except FileNotFoundError:
            raise ContentMissingError(f"blob {blob.digest} is missing from the bundle") from None
        except safeio.UnsafePathError as exc:
            raise VerificationError(f"bundle blob {blob.digest}: {exc.reason}") from None
        tmp = self.blob_dir / f"{TMP_PREFIX}{blob.hex}.{os.getpid()}"
        try:
            with src, open(tmp, "wb") as out:
                h, done = hashlib.sha256(), 0
                while True:
                    data = src.read(CHUNK)
                    if not data:
                        break
                    done += len(data)
                    if done > blob.size:
                        raise _hash_mismatch("bundle blob", blob, "", done)
                    h.update(data)
                    out.write(data)
                got = "sha256:" + h.hexdigest()
                if done != blob.size or got != blob.digest:
                    raise _hash_mismatch("bundle blob", blob, got, done)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.blob_path(blob))  # commit point: now "present"
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # --- apps -----------------------------------------------------------------------------------

    def app_dir(self, app: AppContent) -> Path:
        return self.root / "apps" / app.name / app_hex(app.uri)

    def has_app(self, app: AppContent) -> bool:
        """The record exists (written last) and every blob is present."""
        return (self.app_dir(app) / RECORD).is_file() and all(self.has_blob(b) for b in app.blobs)

    def add_apps(
        self,
        source: Union[BlobSource, PathLike],
        apps: Iterable[AppContent],
        created: Optional[list[Path]] = None,
    ) -> None:
        """Copy the verified apps from the stick (a BlobSource or its `apps/` dir) into the store.

        Blobs already present (e.g. copied by `CopyingSource` while they were verified) are
        skipped, so after verification through a CopyingSource this only writes the app
        directories.

        Refuses (NoSpaceError) before copying when the store's filesystem cannot hold what is
        missing; a content mismatch raises VerificationError and leaves no partial blob.
        `created` collects the app directories and files this call added (`remove_created`
        takes them back when the install is refused later).
        """
        apps = list(apps)
        makedirs_durable(self.blob_dir)
        missing = {b.digest: b.size for app in apps for b in app.blobs if not self.has_blob(b)}
        self.check_space(missing.values(), f"{len(missing)} new blob(s)")
        src = as_source(source)
        for app in apps:
            copied = False
            for b in app.blobs:
                if not self.has_blob(b):
                    self._copy_blob(src, b)
                    copied = True
            if copied:
                fsync_dir(self.blob_dir)
            self._write_app_dir(app, created if created is not None else [])

    def _write_app_dir(self, app: AppContent, created: list[Path]) -> None:
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

    def load_app(self, name: str, uri: str) -> AppContent:
        """The stored description of an app version (for `run` and rollback, without the stick)."""
        safeio.check_component(name)
        path = self.root / "apps" / name / app_hex(uri) / RECORD
        try:
            doc = json.loads(path.read_bytes())
            app = AppContent.from_json(doc)
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
