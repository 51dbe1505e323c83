"""Fixtures for the apps tests: one private dockerd per session, apps built by sim.apps."""

from __future__ import annotations

from pathlib import Path

from usbupdater.apps.store import AppContent, Blob, ServiceImage
from usbupdater.sim.apps import WrittenApp, blob_path


def content_of(apps_dir: Path, w: WrittenApp) -> AppContent:
    """An AppContent for a sim-written app (what verification yields), sizes from the files."""

    def blob(d: str) -> Blob:
        return Blob(d, blob_path(apps_dir, d).stat().st_size)

    return AppContent(
        name=w.name,
        uri=w.uri,
        manifest=blob(w.manifest_digest),
        bundle=blob(w.bundle_digest),
        images=tuple(
            ServiceImage(
                service=i.service,
                ref=i.ref,
                config=blob(i.config_digest),
                layers=tuple(blob(d) for d in i.layer_digests),
                blobs=tuple(blob(d) for d in i.blobs),
            )
            for i in w.images.values()
        ),
    )
