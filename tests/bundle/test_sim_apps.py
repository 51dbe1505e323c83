"""The simulated app store: fioctl's layout, real images, deterministic digests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import yaml

from usbupdater.sim.apps import (
    MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST,
    AppSpec,
    ServiceSpec,
    blob_path,
    corrupt_blob,
    drop_blob,
    machine_arch,
    write_app_store,
    write_apps,
)

APPS = [
    AppSpec("web", {"httpd": ServiceSpec(cmd=("httpd", "-f"), healthcheck=("true",))}),
    AppSpec("multi", {"a": ServiceSpec(), "b": ServiceSpec(env={"X": "1"})}, manifest_list=True),
]


def _json(path: Path) -> dict:
    return json.loads(path.read_bytes())


def test_layout_and_digests(tmp_path: Path) -> None:
    written = write_apps(tmp_path, APPS)
    for app in written.values():
        h = app.manifest_digest.split(":")[1]
        d = tmp_path / "apps" / app.name / h
        assert (d / "uri").read_bytes() == app.uri.encode()
        assert app.uri == f"hub.foundries.io/acme/{app.name}@{app.manifest_digest}"
        assert (d / "manifest.json").read_bytes() == blob_path(tmp_path, h).read_bytes()
        b = app.bundle_digest.split(":")[1]
        assert (d / f"{b}.tgz").read_bytes() == blob_path(tmp_path, b).read_bytes()
        assert (d / "docker-compose.yml").read_bytes() == app.compose
        for img in app.images.values():
            loc, _, root = img.ref.partition("@")
            idir = d / "images" / loc / root.split(":")[1]
            assert _json(idir / "oci-layout") == {"imageLayoutVersion": "1.0.0"}
            assert _json(idir / "index.json")["manifests"][0]["digest"] == img.manifest_digest
        for digest in app.blobs:
            data = blob_path(tmp_path, digest).read_bytes()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == digest


def test_images_are_runnable_shape(tmp_path: Path) -> None:
    written = write_apps(tmp_path, APPS)
    img = written["web"].images["httpd"]
    manifest = _json(blob_path(tmp_path, img.manifest_digest))
    assert manifest["mediaType"] == MT_DOCKER_MANIFEST
    config = _json(blob_path(tmp_path, img.config_digest))
    assert config["architecture"] == machine_arch()
    assert config["config"]["Cmd"] == ["httpd", "-f"]
    assert config["config"]["Healthcheck"]["Test"] == ["CMD", "true"]
    assert tuple(config["rootfs"]["diff_ids"]) == img.diff_ids
    layer = blob_path(tmp_path, img.layer_digests[0]).read_bytes()
    tar = gzip.decompress(layer)
    assert "sha256:" + hashlib.sha256(tar).hexdigest() == img.diff_ids[0]
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        names = {m.name: m for m in tf.getmembers()}
    assert names["bin/busybox"].isreg()
    assert names["bin/sh"].issym() and names["bin/sh"].linkname == "busybox"
    assert {"bin/httpd", "bin/sleep", "bin/echo"} <= set(names)
    # Compose pins every image and carries the config-hash label and init.
    compose = yaml.safe_load(written["web"].compose)
    svc = compose["services"]["httpd"]
    assert svc["image"] == img.ref and "@sha256:" in img.ref
    assert svc["init"] is True and "io.compose-spec.config-hash" in svc["labels"]


def test_manifest_list_and_shared_busybox_layer(tmp_path: Path) -> None:
    written = write_apps(tmp_path, APPS)
    a, b = written["multi"].images["a"], written["multi"].images["b"]
    root = _json(blob_path(tmp_path, a.root_digest))
    assert root["mediaType"] == MT_DOCKER_LIST
    assert root["manifests"][0]["platform"]["architecture"] == machine_arch()
    assert (
        a.layer_digests[0] == b.layer_digests[0] == written["web"].images["httpd"].layer_digests[0]
    )
    assert a.layer_digests[1] != b.layer_digests[1]


def test_deterministic(tmp_path: Path) -> None:
    one = write_app_store(tmp_path / "1", APPS)
    two = write_app_store(tmp_path / "2", APPS)
    assert one == two
    other = write_app_store(tmp_path / "3", [AppSpec("web", version_tag="2")])
    assert other["web"] != one["web"]


def test_data_layers_plain_tar(tmp_path: Path) -> None:
    spec = AppSpec("big", {"s": ServiceSpec(data_layers=(3 << 20,))}, layer_compression="none")
    img = write_apps(tmp_path, [spec])["big"].images["s"]
    # Plain tar layers: the blob digest is the diff_id.
    assert img.layer_digests == img.diff_ids
    assert blob_path(tmp_path, img.layer_digests[2]).stat().st_size > 3 << 20


def test_fault_helpers(tmp_path: Path) -> None:
    app = write_apps(tmp_path, [AppSpec("web", faults=frozenset({"no-uri", "diff-id"}))])["web"]
    h = app.manifest_digest.split(":")[1]
    assert not (tmp_path / "apps/web" / h / "uri").exists()
    cfg = _json(blob_path(tmp_path, app.images["main"].config_digest))
    assert cfg["rootfs"]["diff_ids"][0] != app.images["main"].layer_digests[0]
    layer = app.images["main"].layer_digests[1]
    before = blob_path(tmp_path, layer).read_bytes()
    corrupt_blob(tmp_path, layer)
    after = blob_path(tmp_path, layer).read_bytes()
    assert len(before) == len(after) and before != after
    drop_blob(tmp_path, layer)
    assert not blob_path(tmp_path, layer).exists()
