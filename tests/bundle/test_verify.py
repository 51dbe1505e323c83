"""App content verification: the digest chain, and hostile bundles (each fails fast, 8 or 80)."""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc
from pathlib import Path
from typing import BinaryIO

import pytest

from usbupdater.apps.project import parse_compose
from usbupdater.apps.verify import verify_app, verify_apps
from usbupdater.bundle import Bundle
from usbupdater.errors import ContentMissingError, VerificationError
from usbupdater.sim.apps import blob_path, corrupt_blob, drop_blob, machine_arch

ARCH = machine_arch()


def _verify(root: Path, written, app: str = "shellhttpd"):
    with Bundle.open(root) as b:
        return verify_app(b, app, written[app].uri, ARCH)


def _fails(root: Path, written, code: type, *needles: str, app: str = "shellhttpd") -> str:
    start = time.monotonic()
    with pytest.raises(code) as info:
        _verify(root, written, app)
    assert time.monotonic() - start < 5
    reason = info.value.reason
    assert reason.startswith(f"app {app}:")
    for n in needles:
        assert n in reason, reason
    return reason


class CountingBundle(Bundle):
    opened: list[str]

    def open_blob(self, hexdigest: str, max_size: int) -> BinaryIO:
        self.opened.append(hexdigest)
        return super().open_blob(hexdigest, max_size)


def test_good_apps_verify_once_per_blob(bundle_copy) -> None:
    root, written = bundle_copy("loose-compose")  # the loose copy on the stick is not read
    with Bundle.open(root) as plain:
        b = CountingBundle(os.dup(plain._root), root)
    b.opened = []
    with b:
        result = verify_apps(b, {n: w.uri for n, w in written.items()}, ARCH)
    assert len(b.opened) == len(set(b.opened))  # shared busybox layer read once
    app = result["shellhttpd"]
    w = written["shellhttpd"]
    version, declared = parse_compose(w.compose)  # what was signed, parsed once into the record
    assert app.compose_version == version
    assert [(s.name, s.config_hash) for s in app.services] == [
        (s.name, s.config_hash) for s in declared
    ]
    assert app.manifest.digest == w.manifest_digest and app.bundle.digest == w.bundle_digest
    assert {s.name for s in app.services} == {"web", "side"}
    assert all(s.config_hash for s in app.services)
    for svc in app.services:
        img = app.images[svc.image]
        wi = w.images[svc.name]
        assert img.ref == wi.ref and img.config.digest == wi.config_digest
        assert tuple(layer.digest for layer in img.layers) == wi.layer_digests
        assert tuple(layer.diff_id for layer in img.layers) == wi.diff_ids
    listed = result["listed"].images[written["listed"].images["main"].ref]
    assert listed.root.digest != listed.manifest.digest  # manifest list -> per-arch child
    assert {b.digest for b in result["listed"].blobs} == set(written["listed"].blobs)
    for blob in app.blobs:
        data = blob_path(root / "apps", blob.digest).read_bytes()
        assert len(data) == blob.size and hashlib.sha256(data).hexdigest() == blob.hex


def test_missing_blob_is_8(bundle_copy) -> None:
    root, written = bundle_copy()
    layer = written["shellhttpd"].images["web"].layer_digests[1]
    drop_blob(root / "apps", layer)
    _fails(root, written, ContentMissingError, layer, "missing")


@pytest.mark.parametrize("which", ["manifest", "bundle", "image", "config", "layer0", "layer1"])
def test_one_flipped_byte_is_80(bundle_copy, which: str) -> None:
    root, written = bundle_copy()
    w = written["shellhttpd"]
    img = w.images["web"]
    digest = {
        "manifest": w.manifest_digest,
        "bundle": w.bundle_digest,
        "image": img.root_digest,
        "config": img.config_digest,
        "layer0": img.layer_digests[0],
        "layer1": img.layer_digests[1],
    }[which]
    corrupt_blob(
        root / "apps", digest, offset=len(blob_path(root / "apps", digest).read_bytes()) // 2
    )
    _fails(root, written, VerificationError, digest, "hashes to")


def test_symlink_to_shadow_in_place_of_blob(bundle_copy) -> None:
    root, written = bundle_copy()
    layer = written["shellhttpd"].images["web"].layer_digests[0]
    p = blob_path(root / "apps", layer)
    p.unlink()
    p.symlink_to("/etc/shadow")
    _fails(root, written, VerificationError, layer, "symbolic link")


def test_fifo_in_place_of_blob(bundle_copy) -> None:
    root, written = bundle_copy()
    config = written["shellhttpd"].images["web"].config_digest
    p = blob_path(root / "apps", config)
    p.unlink()
    os.mkfifo(p)
    _fails(root, written, VerificationError, config, "not a regular file")


def test_huge_sparse_manifest(bundle_copy) -> None:
    root, written = bundle_copy()
    h = written["shellhttpd"].manifest_digest
    with open(blob_path(root / "apps", h), "r+b") as fh:
        fh.truncate(10 << 30)
    _fails(root, written, VerificationError, h, "more than the 51200 allowed")


def test_blobs_dir_symlinked_out(bundle_copy, tmp_path: Path) -> None:
    root, written = bundle_copy()
    blobs = root / "apps" / "blobs"
    blobs.rename(tmp_path / "outside")
    blobs.symlink_to(tmp_path / "outside")
    _fails(root, written, VerificationError, "symbolic link")


@pytest.mark.parametrize(
    ("fault", "needles"),
    [
        ("layer-size", ("layer 0", "manifest says")),
        ("config-size", ("config", "the manifest says")),
        ("diff-id", ("layer 0", "config says")),
        ("bundle-size", ("compose bundle", "says")),
        ("app-manifest-media-type", ("mediaType",)),
        ("app-manifest-annotation", ("compose-app",)),
        ("tgz-dotdot", ("'../x'", "..")),
        ("tgz-absolute", ("'/etc/x'", "absolute")),
        ("tgz-many-members", ("more than 10000 members",)),
        ("no-compose", ("no docker-compose.yml",)),
        ("compose-unpinned", ("not pinned by digest",)),
    ],
)
def test_faulty_content_is_80(bundle_copy, fault: str, needles: tuple[str, ...]) -> None:
    root, written = bundle_copy(fault)
    _fails(root, written, VerificationError, *needles)


def test_tgz_bomb_bounded(bundle_copy) -> None:
    root, written = bundle_copy("tgz-bomb")
    tracemalloc.start()
    try:
        _fails(root, written, VerificationError, "'bomb'", "over the")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


def test_no_platform_match(bundle_copy) -> None:
    root, written = bundle_copy()
    with Bundle.open(root) as b, pytest.raises(VerificationError, match="0 manifests match"):
        verify_app(b, "listed", written["listed"].uri, "s390x")


def test_bad_uri_and_dotdot_app(bundle_copy) -> None:
    root, _ = bundle_copy()
    with Bundle.open(root) as b:
        with pytest.raises(VerificationError, match="not a <host>"):
            verify_app(b, "x", "hub.foundries.io/acme/../x@sha256:" + "0" * 64, ARCH)
        with pytest.raises(ContentMissingError, match="app manifest"):
            verify_app(b, "x", "hub.foundries.io/acme/x@sha256:" + "0" * 64, ARCH)


def test_tampered_tgz_refused_before_any_tar_parsing(bundle_copy, monkeypatch) -> None:
    """A bundle tgz whose digest does not match is refused (80) without tarfile ever running
    (tar headers from a stick are parsed only once their hash matched: CVE-2024-6232)."""
    import tarfile

    root, written = bundle_copy()
    digest = written["shellhttpd"].bundle_digest
    corrupt_blob(root / "apps", digest, offset=20)

    def no_tar(*a: object, **kw: object) -> None:
        raise AssertionError("tar parsed before the digest matched")

    monkeypatch.setattr(tarfile, "open", no_tar)
    monkeypatch.setattr(tarfile.TarFile, "__init__", no_tar)
    reason = _fails(root, written, VerificationError, digest, "hashes to")
    assert VerificationError(reason).code == 80


def test_bundle_tgz_bound(bundle_copy) -> None:
    """The bundle tgz is read whole before parsing, so its declared size is bounded (8 MiB)."""
    import json

    from usbupdater.apps.verify import MAX_BUNDLE_TGZ

    root, written = bundle_copy()
    w = written["shellhttpd"]
    p = blob_path(root / "apps", w.manifest_digest)
    doc = json.loads(p.read_bytes())
    doc["layers"][0]["size"] = MAX_BUNDLE_TGZ + 1
    data = json.dumps(doc).encode()
    new = "sha256:" + hashlib.sha256(data).hexdigest()
    blob_path(root / "apps", new).write_bytes(data)
    with Bundle.open(root) as b, pytest.raises(VerificationError, match=r"is not in 0\.\.8388608"):
        verify_app(b, "shellhttpd", w.uri.replace(w.manifest_digest, new), ARCH)
