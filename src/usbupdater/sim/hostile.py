"""Builders for hostile sticks: special files, validly signed but hostile apps, re-signed metadata.

A hostile stick is a good bundle with one piece broken the way an attacker (or a dying stick)
would break it. The filesystem helpers replace one path by a symlink, FIFO, device node, socket,
directory, deep tree or sparse file; `write_app` lays out one Compose App from parts a test
chooses (layers, config, manifest, platforms, compose file, bundle tgz), so content can be hostile
and still hash to what the metadata pins; `sign_bundle` re-signs `tuf/` for edited target
entries with the factory's keys. Nothing here reads the product's code: it only writes files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from usbupdater.hostinfo import machine_arch
from usbupdater.sim.apps import (
    MT_APP_BUNDLE,
    MT_APP_MANIFEST,
    MT_DOCKER_CONFIG,
    MT_DOCKER_LAYER_GZIP,
    MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST,
    busybox_layer,
    canonical_json,
)
from usbupdater.sim.factory import HUB, Factory
from usbupdater.sim.signer import BundleInfo

Member = tuple[tarfile.TarInfo, bytes]


# --- filesystem tricks -------------------------------------------------------------------------


def remove(path: Path) -> None:
    """Remove a file, link, special file or tree (nothing if absent)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def symlink(path: Path, to: str | Path) -> None:
    remove(path)
    os.symlink(str(to), path)


def fifo(path: Path) -> None:
    remove(path)
    os.mkfifo(path)


def chardev(path: Path, major: int = 1, minor: int = 5) -> None:
    """A character device node (default 1:5, /dev/zero: an endless read if ever opened)."""
    remove(path)
    os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(major, minor))


def socket_node(path: Path) -> None:
    remove(path)
    os.mknod(path, stat.S_IFSOCK | 0o644)


def directory(path: Path, depth: int = 1) -> None:
    """Replace `path` by a directory, nested `depth` levels deep (`d/d/d...`)."""
    remove(path)
    path.mkdir()
    fd = os.open(path, os.O_DIRECTORY)
    try:
        for _ in range(depth - 1):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)


def sparse(path: Path, size: int) -> None:
    """A file of `size` bytes that takes no space (all hole)."""
    remove(path)
    with open(path, "wb") as fh:
        fh.truncate(size)


def many_files(directory_: Path, count: int, prefix: str = "junk") -> None:
    """`count` empty files in `directory_` (a huge listing)."""
    directory_.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (directory_ / f"{prefix}{i:06d}").touch()


def rename_bytes(path: Path, new_name: bytes) -> Path:
    """Rename the last component of `path` to raw bytes (control characters, invalid UTF-8)."""
    parent = os.fsencode(path.parent)
    dst = os.path.join(parent, new_name)
    os.rename(os.fsencode(path), dst)
    return Path(os.fsdecode(dst))


# --- gzip and tar pieces -----------------------------------------------------------------------


def tarinfo(
    name: str,
    size: int = 0,
    *,
    kind: bytes = tarfile.REGTYPE,
    linkname: str = "",
    mode: int = 0o644,
) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.type, ti.linkname, ti.mode, ti.mtime = size, kind, linkname, mode, 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        ti.devmajor, ti.devminor = 1, 5
    return ti


def tar(members: Iterable[Member]) -> bytes:
    """A GNU tar of `members`, assembled by hand (nothing is checked: any member goes)."""
    out = []
    for ti, data in members:
        out.append(ti.tobuf(tarfile.GNU_FORMAT) + data + bytes(-len(data) % 512))
    return b"".join(out) + bytes(1024)


def gz(data: bytes, level: int = 6) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


def gz_members(data: bytes, cuts: Sequence[int]) -> bytes:
    """`data` as several concatenated gzip members, split at the byte offsets `cuts`."""
    bounds = [0, *cuts, len(data)]
    return b"".join(gz(data[a:b]) for a, b in zip(bounds, bounds[1:]))


def gzip_bomb(size: int) -> tuple[bytes, str]:
    """(gzip blob, diff_id) of a tar holding one file of `size` zero bytes: tiny, huge inside."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    diff = hashlib.sha256()
    out = []

    def feed(chunk: bytes) -> None:
        diff.update(chunk)
        out.append(comp.compress(chunk))

    feed(tarinfo("zeros", size).tobuf(tarfile.GNU_FORMAT))
    zeros = bytes(1 << 20)
    left = size
    while left:
        n = min(left, len(zeros))
        feed(zeros[:n])
        left -= n
    feed(bytes(-size % 512) + bytes(1024))
    out.append(comp.flush())
    return b"".join(out), "sha256:" + diff.hexdigest()


def layer_of(members: Iterable[Member]) -> tuple[bytes, str]:
    """(gzip layer blob, diff_id) of a tar of `members`."""
    t = tar(members)
    return gz(t), digest(t)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pax_header_bomb(records: int = 100_000) -> bytes:
    """A tar whose pax header is `1 1 1 ...` without any `=`: quadratic for a backtracking
    header parser (CVE-2024-6232); a few hundred bytes once gzipped."""
    payload = b"1 " * records
    ti = tarinfo("././@PaxHeader", len(payload), kind=tarfile.XHDTYPE)
    return ti.tobuf(tarfile.USTAR_FORMAT) + payload + bytes(-len(payload) % 512) + bytes(1024)


def yaml_bomb(image: str, levels: int = 12, fanout: int = 10) -> bytes:
    """A docker-compose.yml running `image` whose command is nested aliases ("billion laughs"):
    a few hundred bytes, 10**11 strings once expanded."""
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels):
        refs = ", ".join(f"*a{i - 1}" for _ in range(fanout))
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append("services:")
    lines.append("  main:")
    lines.append(f"    image: {image}")
    lines.append(f"    command: *a{levels - 1}")
    return ("\n".join(lines) + "\n").encode()


# --- a Compose App from chosen parts -----------------------------------------------------------


@dataclass
class AppParts:
    """How to build one app; every hook receives the honest value and returns what to write."""

    name: str = "web"
    layers: Optional[list[tuple[bytes, str]]] = None  # (blob, diff_id); default: busybox
    config: Callable[[dict[str, Any]], dict[str, Any]] = lambda c: c
    manifest: Callable[[dict[str, Any]], dict[str, Any]] = lambda m: m
    platforms: Optional[list[str]] = None  # wrap in a manifest list with these architectures
    compose: Callable[[bytes, str], bytes] = lambda c, ref: c  # (honest compose, image ref)
    members: Callable[[bytes], list[Member]] = lambda c: [
        (tarinfo("docker-compose.yml", len(c)), c)
    ]
    tgz: Callable[[bytes], bytes] = lambda t: t  # the honest tgz -> what is stored
    app_manifest: Callable[[dict[str, Any]], dict[str, Any]] = lambda m: m
    skip_store: set[str] = field(default_factory=set)  # blob kinds not written: "layer", ...


@dataclass(frozen=True)
class BuiltApp:
    uri: str
    app_dir: Path
    blobs: Mapping[str, str]  # kind ("layer0", "config", "manifest", "root", "tgz", "app") -> hex


def _put(store: Path, data: bytes) -> str:
    d = hashlib.sha256(data).hexdigest()
    store.mkdir(parents=True, exist_ok=True)
    (store / d).write_bytes(data)
    return d


def write_app(apps_dir: Path, parts: AppParts, *, factory: str = "acme") -> BuiltApp:
    """Write one app into an app store in fioctl's layout; return its URI and blob names."""
    arch = machine_arch()
    store = apps_dir / "blobs" / "sha256"
    blobs: dict[str, str] = {}
    layers = parts.layers if parts.layers is not None else [busybox_layer("gzip", 6)]
    descs = []
    for i, (blob, _diff) in enumerate(layers):
        h = _put(store, blob)
        blobs[f"layer{i}"] = h
        descs.append(
            {"mediaType": MT_DOCKER_LAYER_GZIP, "size": len(blob), "digest": "sha256:" + h}
        )
    config = canonical_json(
        parts.config(
            {
                "architecture": arch,
                "os": "linux",
                "config": {"Cmd": ["sleep", "3600"], "Env": ["PATH=/bin"]},
                "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
            }
        )
    )
    blobs["config"] = _put(store, config)
    manifest = json.dumps(
        parts.manifest(
            {
                "schemaVersion": 2,
                "mediaType": MT_DOCKER_MANIFEST,
                "config": {
                    "mediaType": MT_DOCKER_CONFIG,
                    "size": len(config),
                    "digest": "sha256:" + blobs["config"],
                },
                "layers": descs,
            }
        ),
        indent=3,
    ).encode()
    blobs["manifest"] = _put(store, manifest)
    root = blobs["manifest"]
    if parts.platforms is not None:
        mlist = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MT_DOCKER_LIST,
                "manifests": [
                    {
                        "mediaType": MT_DOCKER_MANIFEST,
                        "size": len(manifest),
                        "digest": "sha256:" + blobs["manifest"],
                        "platform": {"architecture": a, "os": "linux"},
                    }
                    for a in parts.platforms
                ],
            },
            indent=3,
        ).encode()
        root = _put(store, mlist)
    blobs["root"] = root
    locator = f"{HUB}/{factory}/{parts.name}-main"
    ref = f"{locator}@sha256:{root}"
    honest = yaml.safe_dump(
        {
            "services": {"main": {"image": ref, "init": True, "network_mode": "none"}},
            "version": "3.8",
        },
        sort_keys=True,
    ).encode()
    compose = parts.compose(honest, ref)
    honest_tgz = gz(tar(parts.members(compose)))
    tgz = parts.tgz(honest_tgz)
    blobs["tgz"] = _put(store, tgz)
    app_manifest = canonical_json(
        parts.app_manifest(
            {
                "annotations": {"compose-app": "v1"},
                "layers": [
                    {
                        "digest": "sha256:" + blobs["tgz"],
                        "mediaType": MT_APP_BUNDLE,
                        "size": len(tgz),
                    }
                ],
                "mediaType": MT_APP_MANIFEST,
                "schemaVersion": 2,
            }
        )
    )
    blobs["app"] = _put(store, app_manifest)
    h = blobs["app"]
    uri = f"{HUB}/{factory}/{parts.name}@sha256:{h}"
    app_dir = apps_dir / "apps" / parts.name / h
    img_dir = app_dir / "images" / locator / root
    img_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "uri").write_bytes(uri.encode())
    (app_dir / "manifest.json").write_bytes(app_manifest)
    (app_dir / f"{blobs['tgz']}.tgz").write_bytes(tgz)
    (app_dir / "docker-compose.yml").write_bytes(compose)
    (img_dir / "oci-layout").write_bytes(b'{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MT_DOCKER_MANIFEST,
                "digest": "sha256:" + blobs["manifest"],
                "size": len(manifest),
                "platform": {"architecture": arch, "os": "linux"},
            }
        ],
    }
    (img_dir / "index.json").write_bytes(canonical_json(index))
    for kind in parts.skip_store:
        (store / blobs[kind]).unlink()
    return BuiltApp(uri, app_dir, blobs)


# --- metadata ----------------------------------------------------------------------------------


def sign_bundle(
    factory: Factory,
    bundle: Path,
    entries: Mapping[str, Mapping[str, Any]],
    names: Sequence[str],
    *,
    version: int,
    **kwargs: Any,
) -> dict[str, bytes]:
    """Rewrite `<bundle>/tuf` signed by the factory's keys: `entries` replace the published
    target entries of the same name (or add new ones); the bundle lists `names`."""
    targets = {n: dict(t.entry) for n, t in factory.targets.items()}
    targets.update({n: dict(e) for n, e in entries.items()})
    tuf = bundle / "tuf"
    remove(tuf)
    kwargs.setdefault("bundle", BundleInfo("ci", factory.tag, list(names)))
    return factory.repo.write_bundle_tuf(tuf, targets, version=version, **kwargs)


def with_apps(entry: Mapping[str, Any], apps: Mapping[str, str]) -> dict[str, Any]:
    """A copy of a target entry whose `docker_compose_apps` are `apps` (name -> uri)."""
    out = json.loads(json.dumps(entry))
    out["custom"]["docker_compose_apps"] = {a: {"uri": u} for a, u in apps.items()}
    return dict(out)
