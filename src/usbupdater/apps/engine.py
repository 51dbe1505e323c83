"""The Docker engine through the docker SDK: load images from the app store, inspect containers.

Images go in with `POST /images/load` fed by a docker-archive (`docker save` format) that is
built on the fly from the store: `manifest.json`, the config as `<hex>.json`, and each layer blob
as it is stored (Docker 20.10 accepts gzip-compressed layer files in a docker-archive and checks
each decompressed layer against `config.rootfs.diff_ids` itself). The archive is a generator of
chunks, so memory stays constant whatever the image size, and every blob is digest-checked as it
streams (`AppStore.read_verified`): a corrupted blob aborts the upload before its last chunk.

Stock dockerd registers only tags, so each image gets the local tag `local_tag(image)`; the
compose override (compose.py) points each service at it. An image already in the engine is not
sent again, only re-tagged.

Image IDs depend on the engine's image store (`image_ids`): the classic store names an image by
its config digest; the containerd image store (Docker 24+ opt-in, default on fresh 29.x) by the
digest of the manifest or index it was created from. An image pulled by composectl there is
named by its index (or manifest) digest, both verified; one loaded from a docker-archive, as here,
by the manifest containerd's importer writes for it, whose digest `import_manifest_digest`
computes from the verified config and layers. The image is present when the engine knows one of
these IDs, and only then.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Optional

import docker
import docker.errors

from usbupdater.apps.model import Blob, VerifiedImage
from usbupdater.apps.store import AppStore
from usbupdater.errors import AdapterError, VerificationError

LOAD_TIMEOUT = 3600.0  # seconds without a byte from the engine (the SDK's default is 60)
_BLOCK = 512


def connect(docker_host: str = "", timeout: float = LOAD_TIMEOUT) -> docker.DockerClient:
    """A client for `docker_host` (empty: $DOCKER_HOST or the default socket)."""
    try:
        if docker_host:
            return docker.DockerClient(base_url=docker_host, timeout=int(timeout))
        return docker.from_env(timeout=int(timeout))
    except docker.errors.DockerException as exc:
        raise AdapterError(f"cannot reach the Docker engine: {exc}") from None


def local_tag(image: VerifiedImage) -> str:
    """The tag a digest-pinned reference is given locally: "<host>/<path>:sha256-<root hex>".

    The full hex (not composectl's 7 characters) so two versions can never share a tag.
    """
    return f"{image.repository}:sha256-{image.root_hex}"


def short_tag(image: VerifiedImage) -> str:
    """composectl's tag "<host>/<path>:<hex7>", added too so its tools find the image."""
    return f"{image.repository}:{image.root_hex[:7]}"


def _header(name: str, size: int) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = size, 0o644, 0
    return ti.tobuf(tarfile.GNU_FORMAT)


def archive_chunks(store: AppStore, images: Iterable[VerifiedImage]) -> Iterator[bytes]:
    """A docker-archive of `images`, as a stream of chunks (each blob read once, verified)."""
    images = list(images)
    manifest: list[dict[str, Any]] = []
    for img in images:
        manifest.append(
            {
                "Config": f"{img.config.hex}.json",
                "RepoTags": [local_tag(img), short_tag(img)],
                "Layers": [f"{b.hex}.tar" for b in img.layers],
            }
        )
    data = json.dumps(manifest).encode()
    yield _header("manifest.json", len(data)) + data + bytes(-len(data) % _BLOCK)
    sent: set[str] = set()
    for img in images:
        members = [(f"{img.config.hex}.json", img.config)] + [
            (f"{b.hex}.tar", b) for b in img.layers
        ]
        for name, blob in members:
            if name in sent:
                continue
            sent.add(name)
            yield _header(name, blob.size)
            yield from store.read_verified(blob)
            pad = -blob.size % _BLOCK
            if pad:
                yield bytes(pad)
    yield bytes(2 * _BLOCK)


# containerd's importer (core/images/archive/importer.go, ImportIndex) turns each docker-archive
# entry into a Docker schema 2 manifest: config typed as a Docker config, each layer typed by its
# first bytes (gzip magic: tar.gzip, else tar), marshalled by Go's encoding/json (compact, struct
# field order); moby's LoadImage (daemon/containerd/image_exporter.go) names the image by it.
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
_GZIP_MAGIC = b"\x1f\x8b\x08"


def import_manifest_digest(config: Blob, layers: Sequence[tuple[Blob, bool]]) -> str:
    """The digest of the manifest containerd's importer writes for a docker-archive entry.

    `layers` are (blob, gzip-compressed) in order. The image ID on the containerd store.
    """

    def desc(mt: str, b: Blob) -> dict[str, object]:
        return {"mediaType": mt, "digest": b.digest, "size": b.size}

    doc = {
        "schemaVersion": 2,
        "mediaType": MT_DOCKER_MANIFEST,
        "config": desc(MT_DOCKER_CONFIG, config),
        "layers": [desc(MT_DOCKER_LAYER_GZIP if gz else MT_DOCKER_LAYER, b) for b, gz in layers],
    }
    data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _is_gzip(store: AppStore, blob: Blob) -> Optional[bool]:
    """Whether a stored layer starts with the gzip magic; None when it cannot be read."""
    try:
        fd = os.open(store.blob_path(blob), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, len(_GZIP_MAGIC)) == _GZIP_MAGIC
    except OSError:
        return None
    finally:
        os.close(fd)


def image_ids(store: Optional[AppStore], img: VerifiedImage) -> tuple[str, ...]:
    """Every ID an engine may give this verified image, the classic store's first.

    The config digest, the digests of the verified manifest and index (the image tree minus
    config and layers), and, when the store can say how its layers are compressed, the digest
    of the manifest containerd writes when the image is loaded from a docker-archive.
    """
    out = [img.config.digest]
    skip = {img.config.digest, *(b.digest for b in img.layers)}
    out += [b.digest for b in img.blobs if b.digest not in skip]
    if store is not None:
        kinds = [_is_gzip(store, b) for b in img.layers]
        if all(k is not None for k in kinds):
            out.append(
                import_manifest_digest(
                    img.config, [(b, bool(k)) for b, k in zip(img.layers, kinds)]
                )
            )
    return tuple(dict.fromkeys(out))


def find_image(client: docker.DockerClient, ids: Iterable[str]) -> Optional[str]:
    """The first of `ids` the engine has an image by (its `Id` is that digest), or None."""
    for image_id in ids:
        try:
            info = client.api.inspect_image(image_id)  # type: ignore[no-untyped-call]
        except docker.errors.ImageNotFound:
            continue
        except docker.errors.APIError as exc:
            raise AdapterError(
                f"docker: cannot inspect image {image_id}: {exc.explanation}"
            ) from None
        if isinstance(info, dict) and info.get("Id") == image_id:
            return image_id
    return None


def has_image(client: docker.DockerClient, image_id: str) -> bool:
    try:
        client.api.inspect_image(image_id)  # type: ignore[no-untyped-call]
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.APIError as exc:
        raise AdapterError(f"docker: cannot inspect image {image_id}: {exc.explanation}") from None
    return True


def load_images(
    client: docker.DockerClient, store: AppStore, images: Iterable[VerifiedImage]
) -> int:
    """Make every image present in the engine under its local tags; return how many were sent.

    Images already present (by one of `image_ids`) are only tagged. The rest go in one streamed
    archive; afterwards every image must exist under one of its IDs, or the load is an error.
    """
    todo: dict[str, VerifiedImage] = {}
    present: list[tuple[str, VerifiedImage]] = []
    for img in images:
        if img.config.digest in todo:
            continue
        found = find_image(client, image_ids(store, img))
        if found is not None:
            present.append((found, img))
        else:
            todo[img.config.digest] = img
    for found, img in present:
        _tag(client, found, img)
    if todo:
        try:
            stream = client.api.load_image(  # type: ignore[no-untyped-call]
                archive_chunks(store, todo.values())
            )
            for msg in stream:
                if isinstance(msg, dict) and msg.get("error"):
                    raise AdapterError(f"docker load failed: {msg['error']}")
        except VerificationError:
            raise
        except docker.errors.APIError as exc:
            raise AdapterError(f"docker load failed: {exc.explanation or exc}") from None
        except OSError as exc:
            # requests wraps errors raised by the body generator; surface a verification error
            cause: Optional[BaseException] = exc
            while cause is not None:
                if isinstance(cause, VerificationError):
                    raise cause from None
                cause = cause.__cause__ or cause.__context__
            raise AdapterError(f"docker load failed: {exc}") from None
        for img in todo.values():
            found = find_image(client, image_ids(store, img))
            if found is None:
                raise AdapterError(
                    f"docker load did not create image {img.image_id} ({img.ref}) under any of"
                    " its IDs (config, manifest or index digest)"
                )
            _tag(client, found, img)
    return len(todo)


def _tag(client: docker.DockerClient, image_id: str, img: VerifiedImage) -> None:
    for tag in (local_tag(img), short_tag(img)):
        repo, _, name = tag.rpartition(":")
        try:
            client.api.tag(image_id, repo, name, force=True)
        except docker.errors.APIError as exc:
            raise AdapterError(
                f"docker: cannot tag {image_id} as {tag}: {exc.explanation}"
            ) from None


def project_containers(client: docker.DockerClient, project: str) -> list[dict[str, Any]]:
    """Full inspect data of every container of a compose project (one-off runs excluded)."""
    try:
        listed = client.api.containers(
            all=True, filters={"label": f"com.docker.compose.project={project}"}
        )
        out = []
        for c in listed:
            labels = c.get("Labels") or {}
            if labels.get("com.docker.compose.oneoff", "False") == "True":
                continue
            try:
                out.append(client.api.inspect_container(c["Id"]))
            except docker.errors.NotFound:
                continue  # removed meanwhile
        return out
    except docker.errors.APIError as exc:
        raise AdapterError(
            f"docker: cannot list containers of {project}: {exc.explanation}"
        ) from None


def container_logs(client: docker.DockerClient, container_id: str, lines: int = 20) -> list[str]:
    """The last `lines` lines a container wrote (stdout and stderr), for failure reports."""
    try:
        raw = client.api.logs(container_id, stdout=True, stderr=True, tail=lines)
    except docker.errors.APIError:
        return []
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return text.splitlines()[-lines:]
