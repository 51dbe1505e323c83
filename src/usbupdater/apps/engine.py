"""The Docker engine through the docker SDK: load images from the app store, inspect containers.

Images go in with `POST /images/load` fed by a docker-archive (`docker save` format) that is
built on the fly from the store: `manifest.json`, the config as `<hex>.json`, and each layer blob
as it is stored (Docker 20.10 accepts gzip-compressed layer files in a docker-archive and checks
each decompressed layer against `config.rootfs.diff_ids` itself). The archive is a generator of
chunks, so memory stays constant whatever the image size, and every blob is digest-checked as it
streams (`AppStore.read_verified`): a corrupted blob aborts the upload before its last chunk.

Stock dockerd registers only tags, so each image gets the local tag `local_tag(image)`; the
compose override (compose.py) points each service at it. An image whose ID (= config digest) is
already in the engine is not sent again, only re-tagged.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable, Iterator
from typing import Any, Optional

import docker
import docker.errors

from usbupdater.apps.store import AppStore, ServiceImage
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


def local_tag(image: ServiceImage) -> str:
    """The tag a digest-pinned reference is given locally: "<host>/<path>:sha256-<root hex>".

    The full hex (not composectl's 7 characters) so two versions can never share a tag.
    """
    return f"{image.repository}:sha256-{image.root_hex}"


def short_tag(image: ServiceImage) -> str:
    """composectl's tag "<host>/<path>:<hex7>", added too so its tools find the image."""
    return f"{image.repository}:{image.root_hex[:7]}"


def _header(name: str, size: int) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = size, 0o644, 0
    return ti.tobuf(tarfile.GNU_FORMAT)


def archive_chunks(store: AppStore, images: Iterable[ServiceImage]) -> Iterator[bytes]:
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


def has_image(client: docker.DockerClient, image_id: str) -> bool:
    try:
        client.api.inspect_image(image_id)  # type: ignore[no-untyped-call]
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.APIError as exc:
        raise AdapterError(f"docker: cannot inspect image {image_id}: {exc.explanation}") from None
    return True


def load_images(
    client: docker.DockerClient, store: AppStore, images: Iterable[ServiceImage]
) -> int:
    """Make every image present in the engine under its local tags; return how many were sent.

    Images already present (same ID) are only tagged. The rest go in one streamed archive;
    afterwards every image must exist with the expected ID, or the load is an error.
    """
    todo: dict[str, ServiceImage] = {}
    present: list[ServiceImage] = []
    for img in images:
        if img.config.digest in todo:
            continue
        if has_image(client, img.image_id):
            present.append(img)
        else:
            todo[img.config.digest] = img
    for img in present:
        _tag(client, img)
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
            if not has_image(client, img.image_id):
                raise AdapterError(f"docker load did not create image {img.image_id} ({img.ref})")
            _tag(client, img)
    return len(todo)


def _tag(client: docker.DockerClient, img: ServiceImage) -> None:
    for tag in (local_tag(img), short_tag(img)):
        repo, _, name = tag.rpartition(":")
        try:
            client.api.tag(img.image_id, repo, name, force=True)
        except docker.errors.APIError as exc:
            raise AdapterError(
                f"docker: cannot tag {img.image_id} as {tag}: {exc.explanation}"
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


def project_names(client: docker.DockerClient) -> set[str]:
    """Compose projects that have containers in the engine."""
    try:
        listed = client.api.containers(all=True, filters={"label": "com.docker.compose.project"})
    except docker.errors.APIError as exc:
        raise AdapterError(f"docker: cannot list containers: {exc.explanation}") from None
    return {str((c.get("Labels") or {})["com.docker.compose.project"]) for c in listed}
