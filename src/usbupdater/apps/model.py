"""What verification yields and the app store records: an app's verified blobs, its images and
services, and where blobs are read from (`BlobSource`: the bundle on the stick, or the store).

One set of types for both: `verify` builds a `VerifiedApp`, the store writes it as its record
(`to_json`) and `run`/rollback read it back (`from_json`), so the service expectations parsed
from the compose file at verification (image, config-hash label) are never parsed again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, BinaryIO, Optional, Protocol

from usbupdater.errors import VerificationError
from usbupdater.hexdigest import is_sha256_hex

RECORD_FORMAT = 2  # the record's layout; 1 (per-service images, no services) is not read


class BlobSource(Protocol):
    """Where blobs come from: the bundle (`Bundle.open_blob`) or a device store."""

    def open_blob(self, hexdigest: str, max_size: int) -> BinaryIO:
        """FileNotFoundError when absent; UnsafePathError when not a safe regular file."""
        ...


def hex_of(digest: str) -> str:
    """The hex part of "sha256:<hex>", refusing anything else (names built from it are paths)."""
    if not is_digest(digest):
        raise VerificationError(f"unsupported or malformed digest {digest!r}")
    return digest[len("sha256:") :]


def is_digest(value: object) -> bool:
    """Whether `value` is "sha256:" and 64 lowercase hex digits, nothing else."""
    return isinstance(value, str) and value.startswith("sha256:") and is_sha256_hex(value[7:])


@dataclass(frozen=True)
class Blob:
    """A verified blob: its digest ("sha256:<hex>"), size and media type."""

    digest: str
    size: int
    media_type: str = ""

    @property
    def hex(self) -> str:
        return hex_of(self.digest)


@dataclass(frozen=True)
class VerifiedLayer(Blob):
    diff_id: str = ""  # sha256 of the uncompressed tar, as in config.rootfs.diff_ids


@dataclass(frozen=True)
class VerifiedImage:
    ref: str  # as pinned in the compose file: <host>/<path>@sha256:<root>
    root: Blob  # what the ref names: a manifest list/index or the manifest itself
    manifest: Blob  # the manifest for this device's platform
    config: Blob  # its digest is the image ID dockerd will report
    layers: tuple[VerifiedLayer, ...]  # in config.rootfs order

    @property
    def repository(self) -> str:
        """<host>/<path>: the ref without its digest."""
        return self.ref.partition("@")[0]

    @property
    def root_hex(self) -> str:
        return self.root.hex

    @property
    def image_id(self) -> str:
        """Docker's image ID on the classic store: the config's digest."""
        return self.config.digest

    @property
    def blobs(self) -> tuple[Blob, ...]:
        head = (self.root,) if self.root.digest != self.manifest.digest else ()
        return (*head, self.manifest, self.config, *self.layers)


@dataclass(frozen=True)
class VerifiedService:
    name: str
    image: str  # pinned ref, a key of VerifiedApp.images
    config_hash: Optional[str]  # label io.compose-spec.config-hash; None: not checked


@dataclass(frozen=True)
class VerifiedApp:
    name: str
    uri: str  # "<host>/<factory>/<app>@sha256:<H>"
    manifest: Blob  # the app manifest (blob H)
    bundle: Blob  # the compose bundle tgz (layers[0])
    services: tuple[VerifiedService, ...] = ()
    images: Mapping[str, VerifiedImage] = field(default_factory=dict)  # by ref
    compose_version: str = ""  # the compose file's `version` ("" when it has none)

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

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "name": self.name,
            "uri": self.uri,
            "manifest": _blob_json(self.manifest),
            "bundle": _blob_json(self.bundle),
            "compose_version": self.compose_version,
            "services": [
                {"name": s.name, "image": s.image, "config_hash": s.config_hash}
                for s in self.services
            ],
            "images": [
                {
                    "ref": i.ref,
                    "root": _blob_json(i.root),
                    "manifest": _blob_json(i.manifest),
                    "config": _blob_json(i.config),
                    "layers": [{**_blob_json(b), "diff_id": b.diff_id} for b in i.layers],
                }
                for i in self.images.values()
            ],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> VerifiedApp:
        """The record `to_json` wrote; KeyError/TypeError/ValueError/VerificationError if not."""
        if doc.get("format") != RECORD_FORMAT:
            raise ValueError(f"record format {doc.get('format')!r} is not {RECORD_FORMAT}")
        images = {
            str(i["ref"]): VerifiedImage(
                ref=str(i["ref"]),
                root=_blob(i["root"]),
                manifest=_blob(i["manifest"]),
                config=_blob(i["config"]),
                layers=tuple(
                    VerifiedLayer(**vars(_blob(b)), diff_id=str(b["diff_id"])) for b in i["layers"]
                ),
            )
            for i in doc["images"]
        }
        services = tuple(
            VerifiedService(
                str(s["name"]),
                str(s["image"]),
                None if s["config_hash"] is None else str(s["config_hash"]),
            )
            for s in doc["services"]
        )
        for s in services:
            if s.image not in images:
                raise ValueError(f"service {s.name}: image {s.image!r} is not recorded")
        return cls(
            name=str(doc["name"]),
            uri=str(doc["uri"]),
            manifest=_blob(doc["manifest"]),
            bundle=_blob(doc["bundle"]),
            services=services,
            images=MappingProxyType(images),
            compose_version=str(doc["compose_version"]),
        )


def _blob_json(b: Blob) -> dict[str, Any]:
    return {"digest": b.digest, "size": b.size, "media_type": b.media_type}


def _blob(d: Mapping[str, Any]) -> Blob:
    b = Blob(str(d["digest"]), int(d["size"]), str(d["media_type"]))
    hex_of(b.digest)
    return b
