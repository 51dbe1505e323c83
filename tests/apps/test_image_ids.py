""" "Does the container run the verified image?" on both image stores, from engine responses
shaped like the real ones:

- Docker 20.10 (classic store, graphdriver overlay2): container `Image` and image `Id` are the
  config digest.
- Docker 29 with the containerd image store (moby daemon/containerd/image_inspect.go: `ID:
  target.Digest`, `Descriptor: &target`): image `Id` is the digest of the manifest or index the
  image was created from, container `Image` the same, and the container also reports
  `ImageManifestDescriptor` (API 1.48+) for the platform manifest it runs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from usbupdater.apps import engine
from usbupdater.apps.compose import expectations
from usbupdater.apps.health import FAILED, OK, WAITING, ServiceExpectation, decide, runs_image
from usbupdater.apps.model import Blob, VerifiedApp, VerifiedImage, VerifiedLayer, VerifiedService
from usbupdater.apps.store import AppStore


def _d(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


CONFIG = Blob(_d("config"), 1469)
LAYER = VerifiedLayer(_d("layer0"), 2152262)
MANIFEST = Blob(_d("manifest"), 527)  # the verified per-platform manifest
INDEX = Blob(_d("index"), 9218)  # the verified index the compose file pins
REF = f"hub.foundries.io/acme/shellhttpd@{INDEX.digest}"
IMG = VerifiedImage(REF, INDEX, MANIFEST, CONFIG, (LAYER,))
# What containerd's importer writes for our docker-archive entry (gzip layer), byte for byte as
# Go's encoding/json marshals it (core/images/archive/importer.go).
IMPORTED = (
    '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
    '"config":{"mediaType":"application/vnd.docker.container.image.v1+json",'
    f'"digest":"{CONFIG.digest}","size":1469}},'
    '"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip",'
    f'"digest":"{LAYER.digest}","size":2152262}}]}}'
)
IMPORTED_ID = "sha256:" + hashlib.sha256(IMPORTED.encode()).hexdigest()
LABELS = {
    "com.docker.compose.project": "shellhttpd",
    "com.docker.compose.service": "httpd",
    "io.compose-spec.config-hash": "f" * 64,
}
STATE = {
    "Status": "running",
    "Running": True,
    "Paused": False,
    "Restarting": False,
    "OOMKilled": False,
    "Dead": False,
    "Pid": 964,
    "ExitCode": 0,
    "Error": "",
    "StartedAt": "2025-10-03T14:43:28.066923535Z",
    "FinishedAt": "0001-01-01T00:00:00Z",
}


def container_20_10(image: str) -> dict[str, Any]:
    """`GET /containers/{id}/json` of Docker 20.10 (classic store)."""
    return {
        "Id": "43fd15ec25af688a8c47cc0cff213fc768aed268096fd7a50643167ddca3c099",
        "Created": "2025-10-03T14:43:27.156548604Z",
        "Path": "/bin/sh",
        "Args": ["-c", "httpd -f"],
        "State": STATE,
        "Image": image,
        "Name": "/shellhttpd_httpd_1",
        "RestartCount": 0,
        "Driver": "overlay2",
        "Platform": "linux",
        "GraphDriver": {
            "Data": {"MergedDir": "/var/lib/docker/overlay2/x/merged"},
            "Name": "overlay2",
        },
        "Config": {"Image": f"{REF.partition('@')[0]}:sha256-{INDEX.digest[7:]}", "Labels": LABELS},
    }


def container_29(image: str, manifest: str) -> dict[str, Any]:
    """`GET /containers/{id}/json` of Docker 29 with the containerd image store."""
    return {
        "Id": "43fd15ec25af688a8c47cc0cff213fc768aed268096fd7a50643167ddca3c099",
        "Created": "2025-10-03T14:43:27.156548604Z",
        "Path": "/bin/sh",
        "Args": ["-c", "httpd -f"],
        "State": STATE,
        "Image": image,
        "Name": "/shellhttpd-httpd-1",
        "RestartCount": 0,
        "Driver": "overlayfs",
        "Platform": "linux",
        "Storage": {"RootFS": {"Snapshot": {"Name": "overlayfs"}}},
        "Config": {"Image": f"{REF.partition('@')[0]}:sha256-{INDEX.digest[7:]}", "Labels": LABELS},
        "ImageManifestDescriptor": {
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "digest": manifest,
            "size": 527,
            "platform": {"architecture": "amd64", "os": "linux"},
        },
    }


def container_27_containerd(image: str) -> dict[str, Any]:
    """Docker 24-27 on the containerd store: no ImageManifestDescriptor yet (API < 1.48)."""
    c = container_29(image, "")
    del c["ImageManifestDescriptor"]
    return c


def image_20_10(image_id: str) -> dict[str, Any]:
    """`GET /images/{name}/json` of Docker 20.10."""
    return {
        "Id": image_id,
        "RepoTags": [f"hub.foundries.io/acme/shellhttpd:sha256-{INDEX.digest[7:]}"],
        "RepoDigests": [],
        "Parent": "",
        "Architecture": "amd64",
        "Os": "linux",
        "Size": 4261574,
        "GraphDriver": {"Data": {}, "Name": "overlay2"},
        "RootFS": {"Type": "layers", "Layers": [_d("diff0")]},
    }


def image_29(image_id: str, desc_mt: str) -> dict[str, Any]:
    """`GET /images/{name}/json` of Docker 29, containerd store."""
    return {
        "Id": image_id,
        "RepoTags": [f"hub.foundries.io/acme/shellhttpd:sha256-{INDEX.digest[7:]}"],
        "RepoDigests": [f"hub.foundries.io/acme/shellhttpd@{image_id}"],
        "Descriptor": {"mediaType": desc_mt, "digest": image_id, "size": 527},
        "Architecture": "amd64",
        "Os": "linux",
        "Size": 2153731,
        "GraphDriver": {"Data": None, "Name": "overlayfs"},
        "RootFS": {"Type": "layers", "Layers": [_d("diff0")]},
    }


def exp(**kw: Any) -> ServiceExpectation:
    ids = frozenset((INDEX.digest, MANIFEST.digest, IMPORTED_ID))
    return ServiceExpectation("httpd", CONFIG.digest, "f" * 64, ids, **kw)


@pytest.mark.parametrize(
    ("container", "ok"),
    [
        (container_20_10(CONFIG.digest), True),
        (container_20_10(_d("other config")), False),
        # loaded by usbupdater from a docker-archive: the manifest containerd wrote
        (container_29(IMPORTED_ID, IMPORTED_ID), True),
        # pulled/preloaded by composectl: the index, running the verified platform manifest
        (container_29(INDEX.digest, MANIFEST.digest), True),
        # the verified index, but another of its manifests (another platform) runs: refused
        (container_29(INDEX.digest, _d("arm64 manifest")), False),
        (container_29(_d("other index"), _d("other manifest")), False),
        (container_27_containerd(INDEX.digest), True),
        (container_27_containerd(IMPORTED_ID), True),
        (container_27_containerd(_d("other")), False),
    ],
)
def test_runs_image(container: dict[str, Any], ok: bool) -> None:
    assert runs_image(exp(), container) is ok
    verdict = decide([exp()], [container])
    assert verdict.services[0].state == (OK if ok else WAITING)
    if not ok:
        assert "expected" in verdict.services[0].reason


def test_only_config_digest_expected_by_default() -> None:
    """Without other IDs (an expectation made by hand), the containerd shapes do not pass."""
    plain = ServiceExpectation("httpd", CONFIG.digest, None)
    assert runs_image(plain, container_20_10(CONFIG.digest))
    assert not runs_image(plain, container_29(IMPORTED_ID, IMPORTED_ID))


def test_exited_still_fails_fast_on_containerd_shape() -> None:
    c = container_29(IMPORTED_ID, IMPORTED_ID)
    c["State"] = {**STATE, "Status": "exited", "Running": False, "ExitCode": 3}
    assert decide([exp()], [c]).services[0].state == FAILED


def test_import_manifest_digest_matches_containerd_bytes() -> None:
    assert engine.import_manifest_digest(CONFIG, [(LAYER, True)]) == IMPORTED_ID
    tar_id = engine.import_manifest_digest(CONFIG, [(LAYER, False)])
    assert tar_id != IMPORTED_ID


def _store_with(tmp_path: Path, layer: bytes) -> tuple[AppStore, VerifiedImage]:
    store = AppStore(tmp_path / "store")
    blob = VerifiedLayer("sha256:" + hashlib.sha256(layer).hexdigest(), len(layer))
    p = store.blob_path(blob)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(layer)
    return store, VerifiedImage(REF, INDEX, MANIFEST, CONFIG, (blob,))


def test_image_ids(tmp_path: Path) -> None:
    store, img = _store_with(tmp_path, b"\x1f\x8b\x08\x00" + b"\x00" * 20)
    ids = engine.image_ids(store, img)
    assert ids[0] == CONFIG.digest  # the classic store's ID is tried first
    assert ids[1:3] == (INDEX.digest, MANIFEST.digest)
    assert ids[3] == engine.import_manifest_digest(CONFIG, [(img.layers[0], True)])
    store2, img2 = _store_with(tmp_path / "b", b"plain tar bytes")
    assert engine.image_ids(store2, img2)[3] == engine.import_manifest_digest(
        CONFIG, [(img2.layers[0], False)]
    )
    # a layer missing from the store: no imported-manifest ID, nothing guessed
    missing = VerifiedImage(REF, INDEX, MANIFEST, CONFIG, (LAYER,))
    assert engine.image_ids(store, missing) == (CONFIG.digest, INDEX.digest, MANIFEST.digest)
    assert engine.image_ids(None, img) == (CONFIG.digest, INDEX.digest, MANIFEST.digest)


def test_expectations_carry_ids(tmp_path: Path) -> None:
    store, img = _store_with(tmp_path, b"\x1f\x8b\x08\x00")
    svc = VerifiedService("httpd", REF, None)
    app = VerifiedApp("shellhttpd", "u", CONFIG, CONFIG, (svc,), {REF: img})
    (e,) = expectations(app, lambda i: engine.image_ids(store, i))
    assert e.image_id == CONFIG.digest
    assert e.image_ids == frozenset(engine.image_ids(store, img))
    (d,) = expectations(app)  # default: config, manifest, index
    assert d.image_ids == frozenset((CONFIG.digest, INDEX.digest, MANIFEST.digest))


class FakeAPI:
    """`client.api.inspect_image` answering from recorded response shapes."""

    def __init__(self, images: dict[str, dict[str, Any]]) -> None:
        self.images = images
        self.asked: list[str] = []

    def inspect_image(self, name: str) -> dict[str, Any]:
        self.asked.append(name)
        if name not in self.images:
            raise docker.errors.ImageNotFound(f"No such image: {name}")
        return self.images[name]


class FakeClient:
    def __init__(self, images: dict[str, dict[str, Any]]) -> None:
        self.api = FakeAPI(images)


IDS = (CONFIG.digest, INDEX.digest, MANIFEST.digest, IMPORTED_ID)


@pytest.mark.parametrize(
    ("images", "found"),
    [
        ({CONFIG.digest: image_20_10(CONFIG.digest)}, CONFIG.digest),
        (
            {IMPORTED_ID: image_29(IMPORTED_ID, engine.MT_DOCKER_MANIFEST)},
            IMPORTED_ID,
        ),
        (
            {INDEX.digest: image_29(INDEX.digest, "application/vnd.oci.image.index.v1+json")},
            INDEX.digest,
        ),
        ({}, None),
        # an engine answering a lookup with another image (Id differs) is not a match
        ({CONFIG.digest: image_20_10(_d("something else"))}, None),
    ],
)
def test_find_image(images: dict[str, dict[str, Any]], found: Any) -> None:
    client = FakeClient(images)
    assert engine.find_image(client, IDS) == found  # type: ignore[arg-type]
    assert client.api.asked[0] == CONFIG.digest
