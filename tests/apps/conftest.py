"""Fixtures for the apps tests: one private dockerd per session, apps built by sim.apps."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

from usbupdater import safeio
from usbupdater.apps.model import (
    Blob,
    VerifiedApp,
    VerifiedImage,
    VerifiedLayer,
    VerifiedService,
)
from usbupdater.apps.platform import media_type
from usbupdater.apps.project import parse_compose
from usbupdater.apps.verify import MT_APP_BUNDLE, MT_APP_MANIFEST
from usbupdater.hexdigest import is_sha256_hex
from usbupdater.sim.apps import WrittenApp, blob_path


class StickDir:
    """A BlobSource over a sim-written `apps/` directory, as `Bundle.open_blob` reads it."""

    def __init__(self, apps_dir: Path) -> None:
        self.apps_dir = apps_dir

    def open_blob(self, hexdigest: str, max_size: int) -> BinaryIO:
        if not is_sha256_hex(hexdigest):
            raise safeio.UnsafePathError(hexdigest, "is not a sha256 hex digest")
        fd = safeio.open_root(self.apps_dir)
        try:
            return safeio.open_file(fd, f"blobs/sha256/{hexdigest}", max_size)
        finally:
            os.close(fd)


def content_of(apps_dir: Path, w: WrittenApp) -> VerifiedApp:
    """The record verification yields for a sim-written app, built without verifying it (so a
    test can store an app whose bundle `run` must refuse): sizes from the files, media types
    from the manifests, services from the compose file."""

    def blob(d: str, mt: str = "") -> Blob:
        return Blob(d, blob_path(apps_dir, d).stat().st_size, mt)

    def doc(d: str) -> Any:
        return json.loads(blob_path(apps_dir, d).read_bytes())

    version, services = parse_compose(w.compose)
    images = {}
    for i in w.images.values():
        man = doc(i.manifest_digest)
        layers = tuple(
            VerifiedLayer(**vars(blob(d, desc["mediaType"])), diff_id=diff)
            for d, desc, diff in zip(i.layer_digests, man["layers"], i.diff_ids)
        )
        images[i.ref] = VerifiedImage(
            ref=i.ref,
            root=blob(i.root_digest, media_type(doc(i.root_digest))),
            manifest=blob(i.manifest_digest, media_type(man)),
            config=blob(i.config_digest, man["config"]["mediaType"]),
            layers=layers,
        )
    return VerifiedApp(
        name=w.name,
        uri=w.uri,
        manifest=blob(w.manifest_digest, MT_APP_MANIFEST),
        bundle=blob(w.bundle_digest, MT_APP_BUNDLE),
        services=tuple(VerifiedService(s.name, str(s.image), s.config_hash) for s in services),
        images=MappingProxyType(images),
        compose_version=version,
    )


def image0(app: VerifiedApp) -> VerifiedImage:
    """The app's first image (sim apps have one service unless told otherwise)."""
    return next(iter(app.images.values()))
