"""What verification yields: the verified blobs of an app, its images and services, and where
blobs are read from (`BlobSource`: the bundle on the stick, or the device's store)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, Optional, Protocol


class BlobSource(Protocol):
    """Where blobs come from: the bundle (`Bundle.open_blob`) or a device store."""

    def open_blob(self, hexdigest: str, max_size: int) -> BinaryIO:
        """FileNotFoundError when absent; UnsafePathError when not a safe regular file."""
        ...


@dataclass(frozen=True)
class Blob:
    """A verified blob: its digest ("sha256:<hex>"), size and media type."""

    digest: str
    size: int
    media_type: str

    @property
    def hex(self) -> str:
        return self.digest[len("sha256:") :]


@dataclass(frozen=True)
class VerifiedLayer(Blob):
    diff_id: str = ""  # sha256 of the uncompressed tar, as in config.rootfs.diff_ids


@dataclass(frozen=True)
class VerifiedImage:
    ref: str  # as pinned in the compose file: <host>/<path>@sha256:<root>
    locator: str  # <host>/<path>
    root: Blob  # what the ref names: a manifest list/index or the manifest itself
    manifest: Blob  # the manifest for this device's platform
    config: Blob  # its digest is the image ID dockerd will report
    layers: tuple[VerifiedLayer, ...]

    @property
    def blobs(self) -> tuple[Blob, ...]:
        head = (self.root,) if self.root.digest != self.manifest.digest else ()
        return (*head, self.manifest, self.config, *self.layers)


@dataclass(frozen=True)
class VerifiedService:
    name: str
    image: str  # pinned ref, a key of VerifiedApp.images
    config_hash: Optional[str]  # label io.compose-spec.config-hash


@dataclass(frozen=True)
class VerifiedApp:
    name: str
    uri: str
    manifest: Blob  # the app manifest (blob H)
    bundle: Blob  # the compose bundle tgz (layers[0])
    compose: bytes = field(repr=False)  # docker-compose.yml from the verified tgz
    services: tuple[VerifiedService, ...] = ()
    images: Mapping[str, VerifiedImage] = field(default_factory=dict)

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """Every blob the app needs, each once, app manifest and bundle first."""
        out: dict[str, Blob] = {
            self.manifest.digest: self.manifest,
            self.bundle.digest: self.bundle,
        }
        for img in self.images.values():
            for b in img.blobs:
                out.setdefault(b.digest, b)
        return tuple(out.values())
