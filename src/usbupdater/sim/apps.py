"""Compose Apps for tests and the demo: runnable busybox images in a fioctl app store.

Images are built by hand, without a daemon: a gzip (or plain) tar layer holding the static
`/bin/busybox` of Debian's `busybox-static` plus applet links, a config whose `rootfs.diff_ids`
hash the uncompressed layers, and a Docker v2s2 manifest (optionally under a manifest list). An
app is a compose bundle (gzip tar, `docker-compose.yml` at the top, every `image:` pinned by
digest) described by an OCI app manifest. `write_apps` lays all of it out exactly as
`fioctl targets offline-update` does (spec section 1, apps-format.md section 1).

Everything is deterministic (the tars, layers and blob store are in `sim.layers`), so the same
specs give the same digests. `AppSpec.faults` and the `drop_blob`/`corrupt_blob` helpers break
single pieces for tests.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from usbupdater.hostinfo import machine_arch
from usbupdater.sim.layers import (
    CHUNK,
    BlobStore,
    data_layer_tar,
    gzip_bytes,
    hex_of,
    sha256_digest,
    tar_bytes,
    tar_member,
    tarinfo,
)

# Re-exported: tests and the other simulation modules take them from here.
from usbupdater.sim.layers import blob_path as blob_path
from usbupdater.sim.layers import busybox_layer as busybox_layer
from usbupdater.sim.layers import canonical_json as canonical_json
from usbupdater.sim.layers import corrupt_blob as corrupt_blob
from usbupdater.sim.layers import drop_blob as drop_blob

MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
MT_APP_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_APP_BUNDLE = "application/octet-stream"

FAULTS = frozenset(
    {
        "app-manifest-media-type",  # app manifest mediaType is not the OCI manifest type
        "app-manifest-annotation",  # app manifest lacks annotations["compose-app"] == "v1"
        "bundle-size",  # app manifest declares the wrong size for the bundle tgz
        "layer-size",  # first image manifest declares the wrong size for its first layer
        "config-size",  # first image manifest declares the wrong size for its config
        "diff-id",  # first image config carries a wrong rootfs.diff_ids[0]
        "no-uri",  # the uri file (the app's presence marker) is not written
        "loose-compose",  # the loose docker-compose.yml differs from the one in the tgz
        "tgz-dotdot",  # the bundle tgz holds a member named "../x"
        "tgz-absolute",  # the bundle tgz holds a member named "/etc/x"
        "tgz-bomb",  # the bundle tgz holds a 300 MiB member of zeros (about 300 KiB packed)
        "tgz-many-members",  # the bundle tgz holds 20000 empty members
        "no-compose",  # the bundle tgz has no docker-compose.yml
        "compose-unpinned",  # the first service's image is a tag, not a digest
    }
)
BOMB_SIZE = 300 << 20


@dataclass(frozen=True)
class ServiceSpec:
    """One compose service and the image built for it."""

    cmd: tuple[str, ...] = ("sleep", "3600")
    healthcheck: Optional[tuple[str, ...]] = None  # CMD arguments, e.g. ("true",)
    env: Mapping[str, str] = field(default_factory=dict)
    image: str = ""  # repository under <host>/<factory>/; default "<app>-<service>"
    data_layers: tuple[int, ...] = ()  # sizes of extra layers of seeded random bytes
    compose: Mapping[str, Any] = field(default_factory=dict)  # extra compose keys (ports, ...)


@dataclass(frozen=True)
class AppSpec:
    """One Compose App: services, a version tag that changes its digests, and fault switches."""

    name: str
    services: Mapping[str, ServiceSpec] = field(default_factory=lambda: {"main": ServiceSpec()})
    version_tag: str = "1"
    manifest_list: bool = False  # image roots are Docker manifest lists (this arch + another)
    layer_compression: str = "gzip"  # "gzip" or "none" (plain tar layers: digest == diff_id)
    gzip_level: int = 6
    # > 0: every gzip layer is a concatenation of gzip members of this many uncompressed bytes
    # each (as pigz-style or concatenated gzip writes them); 0: one member per layer
    gzip_member: int = 0
    files: Mapping[str, bytes] = field(default_factory=dict)  # extra files in the bundle tgz
    # raw tar members appended to the bundle tgz as given (hostile archives for tests)
    bundle_members: tuple[tuple[tarfile.TarInfo, bytes], ...] = ()
    faults: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.faults) - FAULTS
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        if self.layer_compression not in ("gzip", "none"):
            raise ValueError(f"layer_compression must be gzip or none: {self.layer_compression}")


@dataclass(frozen=True)
class WrittenImage:
    """What was written for one service's image; digests are "sha256:<hex>"."""

    service: str
    ref: str  # the pinned reference in the compose file
    root_digest: str  # manifest list or manifest the ref names
    manifest_digest: str  # the per-arch manifest
    config_digest: str
    layer_digests: tuple[str, ...]
    diff_ids: tuple[str, ...]

    @property
    def blobs(self) -> tuple[str, ...]:
        roots = (self.root_digest,) if self.root_digest != self.manifest_digest else ()
        return (*roots, self.manifest_digest, self.config_digest, *self.layer_digests)


@dataclass(frozen=True)
class WrittenApp:
    """What was written for one app (for tests that need to break or check a piece)."""

    name: str
    uri: str
    manifest_digest: str
    bundle_digest: str
    compose: bytes
    images: Mapping[str, WrittenImage]  # by service

    @property
    def blobs(self) -> tuple[str, ...]:
        out = [self.manifest_digest, self.bundle_digest]
        for img in self.images.values():
            out.extend(d for d in img.blobs if d not in out)
        return tuple(out)


# --- images, bundles, apps ---------------------------------------------------------------------


def _other_arch(arch: str) -> str:
    return "arm64" if arch != "arm64" else "amd64"


def _build_image(
    store: BlobStore,
    app: AppSpec,
    svc_name: str,
    svc: ServiceSpec,
    arch: str,
    locator: str,
    faulty: bool,
) -> tuple[WrittenImage, int]:
    """Write one image's blobs; return it with the size of its per-arch manifest."""
    layer_mt = MT_DOCKER_LAYER_GZIP if app.layer_compression == "gzip" else MT_DOCKER_LAYER_TAR
    bb_blob, bb_diff = busybox_layer(app.layer_compression, app.gzip_level, app.gzip_member)
    bb_digest, bb_size = store.put(bb_blob)
    layers = [(bb_digest, bb_size, bb_diff)]
    # A small layer that makes each app/service/version's image distinct.
    marker = f"{app.name}/{svc_name} {app.version_tag}\n".encode()
    tar = tar_bytes(
        [
            (tarinfo("etc", mode=0o755, kind=tarfile.DIRTYPE), b""),
            (tarinfo("etc/sim-image", len(marker)), marker),
        ]
    )
    blob = (
        gzip_bytes(tar, app.gzip_level, app.gzip_member) if app.layer_compression == "gzip" else tar
    )
    d, s = store.put(blob)
    layers.append((d, s, sha256_digest(tar)))
    for i, size in enumerate(svc.data_layers):
        seed = f"{app.name}/{svc_name}/{app.version_tag}/{i}/{size}"
        chunks = data_layer_tar(f"{svc_name}-{i}.bin", seed, size)
        layers.append(
            store.put_layer(chunks, app.layer_compression, app.gzip_level, app.gzip_member)
        )

    diff_ids = [diff for _, _, diff in layers]
    if faulty and "diff-id" in app.faults:
        diff_ids[0] = sha256_digest(b"not the layer")
    cfg: dict[str, Any] = {
        "Cmd": list(svc.cmd),
        "Env": ["PATH=/bin", *(f"{k}={v}" for k, v in sorted(svc.env.items()))],
        "Labels": {"io.usbupdater.sim": f"{app.name}/{svc_name}"},
    }
    if svc.healthcheck:
        cfg["Healthcheck"] = {
            "Test": ["CMD", *svc.healthcheck],
            "Interval": 1_000_000_000,
            "Timeout": 2_000_000_000,
            "StartPeriod": 0,
            "Retries": 3,
        }
    config = canonical_json(
        {
            "architecture": arch,
            "os": "linux",
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    )
    config_digest, config_size = store.put(config)
    if faulty and "config-size" in app.faults:
        config_size += 1
    sizes = [s for _, s, _ in layers]
    if faulty and "layer-size" in app.faults:
        sizes[0] += 1
    layer_descs = [
        {"mediaType": layer_mt, "size": s, "digest": d} for (d, _, _), s in zip(layers, sizes)
    ]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MT_DOCKER_MANIFEST,
            "config": {"mediaType": MT_DOCKER_CONFIG, "size": config_size, "digest": config_digest},
            "layers": layer_descs,
        },
        indent=3,
    ).encode()
    manifest_digest, manifest_size = store.put(manifest)
    root_digest = manifest_digest
    if app.manifest_list:
        other = sha256_digest(f"{locator} for {_other_arch(arch)}".encode())  # not in the store
        mlist = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MT_DOCKER_LIST,
                "manifests": [
                    {
                        "mediaType": MT_DOCKER_MANIFEST,
                        "size": manifest_size,
                        "digest": manifest_digest,
                        "platform": {"architecture": arch, "os": "linux"},
                    },
                    {
                        "mediaType": MT_DOCKER_MANIFEST,
                        "size": 1234,
                        "digest": other,
                        "platform": {"architecture": _other_arch(arch), "os": "linux"},
                    },
                ],
            },
            indent=3,
        ).encode()
        root_digest, _ = store.put(mlist)
    img = WrittenImage(
        service=svc_name,
        ref=f"{locator}@{root_digest}",
        root_digest=root_digest,
        manifest_digest=manifest_digest,
        config_digest=config_digest,
        layer_digests=tuple(d for d, _, _ in layers),
        diff_ids=tuple(diff_ids),
    )
    return img, manifest_size


def _yaml(doc: Any) -> bytes:
    return yaml.safe_dump(doc, sort_keys=True, indent=4, default_flow_style=False).encode()


def _compose(app: AppSpec, images: Mapping[str, WrittenImage]) -> bytes:
    services: dict[str, Any] = {}
    for name, svc in app.services.items():
        body: dict[str, Any] = {"image": images[name].ref, "init": True, **svc.compose}
        if "compose-unpinned" in app.faults and not services:
            body["image"] = images[name].ref.split("@")[0] + ":latest"
        body["labels"] = {"io.compose-spec.config-hash": hashlib.sha256(_yaml(body)).hexdigest()}
        services[name] = body
    return _yaml({"services": services, "version": "3.8"})


def _bundle_tgz(app: AppSpec, compose: bytes) -> bytes:
    """gzip(tar) with docker-compose.yml at the top; built by streaming so bombs stay cheap."""
    members: list[tuple[tarfile.TarInfo, bytes]] = []
    if "no-compose" not in app.faults:
        members.append((tarinfo("docker-compose.yml", len(compose)), compose))
    for name, data in sorted(app.files.items()):
        members.append((tarinfo(name, len(data)), data))
    if "tgz-dotdot" in app.faults:
        members.append((tarinfo("../x", 2), b"x\n"))
    if "tgz-absolute" in app.faults:
        members.append((tarinfo("/etc/x", 2), b"x\n"))
    if "tgz-many-members" in app.faults:
        members.extend((tarinfo(f"m/{i}", 0), b"") for i in range(20000))
    members.extend(app.bundle_members)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [comp.compress(b"".join(tar_member(ti, data) for ti, data in members))]
    if "tgz-bomb" in app.faults:
        out.append(comp.compress(tarinfo("bomb", BOMB_SIZE).tobuf(tarfile.GNU_FORMAT)))
        zeros = bytes(CHUNK)
        for _ in range(BOMB_SIZE // CHUNK):
            out.append(comp.compress(zeros))
    out.append(comp.compress(bytes(1024)))
    out.append(comp.flush())
    return b"".join(out)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_apps(
    apps_dir: Path,
    apps: Iterable[AppSpec],
    host: str = "hub.foundries.io",
    factory: str = "acme",
    arch: Optional[str] = None,
) -> dict[str, WrittenApp]:
    """Write apps into an app store in fioctl's layout; return what was written, by app."""
    apps_dir = Path(apps_dir)
    arch = arch or machine_arch()
    store = BlobStore(apps_dir)
    written: dict[str, WrittenApp] = {}
    for app in apps:
        images: dict[str, WrittenImage] = {}
        per_arch: dict[str, int] = {}
        for i, (svc_name, svc) in enumerate(app.services.items()):
            locator = f"{host}/{factory}/{svc.image or f'{app.name}-{svc_name}'}"
            img, size = _build_image(store, app, svc_name, svc, arch, locator, i == 0)
            images[svc_name] = img
            per_arch[svc_name] = size
        compose = _compose(app, images)
        tgz = _bundle_tgz(app, compose)
        bundle_digest, bundle_size = store.put(tgz)
        if "bundle-size" in app.faults:
            bundle_size += 1
        app_manifest: dict[str, Any] = {
            "annotations": {"compose-app": "v1"},
            "layers": [{"digest": bundle_digest, "mediaType": MT_APP_BUNDLE, "size": bundle_size}],
            "mediaType": MT_APP_MANIFEST,
            "schemaVersion": 2,
        }
        if "app-manifest-media-type" in app.faults:
            app_manifest["mediaType"] = MT_DOCKER_MANIFEST
        if "app-manifest-annotation" in app.faults:
            app_manifest["annotations"] = {}
        manifest = canonical_json(app_manifest)
        manifest_digest, _ = store.put(manifest)
        h = hex_of(manifest_digest)
        uri = f"{host}/{factory}/{app.name}@{manifest_digest}"
        app_dir = apps_dir / "apps" / app.name / h
        if "no-uri" not in app.faults:
            _write(app_dir / "uri", uri.encode())
        _write(app_dir / "manifest.json", manifest)
        _write(app_dir / f"{hex_of(bundle_digest)}.tgz", tgz)
        loose = compose + (b"# not the signed file\n" if "loose-compose" in app.faults else b"")
        _write(app_dir / "docker-compose.yml", loose)
        for svc_name, img in images.items():
            size = per_arch[svc_name]
            locator = img.ref.partition("@")[0]
            img_dir = app_dir / "images" / locator / hex_of(img.root_digest)
            _write(img_dir / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            index = {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": MT_DOCKER_MANIFEST,
                        "digest": img.manifest_digest,
                        "size": size,
                        "platform": {"architecture": arch, "os": "linux"},
                    }
                ],
            }
            _write(img_dir / "index.json", canonical_json(index))
        written[app.name] = WrittenApp(
            name=app.name,
            uri=uri,
            manifest_digest=manifest_digest,
            bundle_digest=bundle_digest,
            compose=compose,
            images=images,
        )
    return written


def write_app_store(
    apps_dir: Path,
    apps: Iterable[AppSpec],
    host: str = "hub.foundries.io",
    factory: str = "acme",
    arch: Optional[str] = None,
) -> dict[str, str]:
    """Write apps into an app store; return each app's URI (for a target's docker_compose_apps)."""
    return {n: w.uri for n, w in write_apps(apps_dir, apps, host, factory, arch).items()}
