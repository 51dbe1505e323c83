"""Verify an app's content in the bundle against the digest in its signed target URI.

The chain: target URI `<host>/<factory>/<app>@sha256:<H>` -> app manifest (blob H) -> bundle tgz
(`layers[0]`) -> `docker-compose.yml` taken from that verified tgz (the loose copy on the stick
is never read) -> each service's pinned image -> per-arch manifest -> config -> layers, whose
decompressed bytes must hash to `config.rootfs.diff_ids[i]`, as dockerd checks on load.

Every blob is read once, in chunks, hashing as it streams (gzip layers are decompressed on the fly
by `streams.Gunzip` for their diff_id); blobs shared between images are verified once per run.
Sizes are bounded before reading. The bundle tgz (at most MAX_BUNDLE_TGZ) is read whole and its
digest checked before any tar header is parsed; its members then go through `members.scan_bundle`,
the same rule extraction applies, so `install` refuses what `run` would. Absent content raises
ContentMissingError (8); anything that does not match raises VerificationError (80); both name
the app, the blob and the reason.

The result, `VerifiedApp`, lists every verified blob with its media type and size, so the device
app store can copy them and the engine loader can build its docker-archive from them.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, BinaryIO, Optional

import yaml

from usbupdater.apps.members import COMPOSE_FILE, MAX_MEMBERS, MAX_TOTAL, MemberError, scan_bundle
from usbupdater.apps.model import (
    Blob,
    BlobSource,
    VerifiedApp,
    VerifiedImage,
    VerifiedLayer,
    VerifiedService,
)
from usbupdater.apps.platform import match_platform, platform_name
from usbupdater.apps.project import (
    MAX_COMPOSE_NODES,
    check_bundle_member,
    check_project_name,
    expanded_nodes,
)
from usbupdater.apps.streams import CHUNK, Gunzip, GzipError, HashingReader
from usbupdater.errors import ContentMissingError, VerificationError
from usbupdater.safeio import UnsafePathError, read_upto
from usbupdater.target import InvalidTargetError, parse_ref

MT_APP_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_APP_BUNDLE = "application/octet-stream"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({MT_OCI_INDEX, MT_DOCKER_LIST})
MANIFEST_TYPES = frozenset({MT_OCI_MANIFEST, MT_DOCKER_MANIFEST})
GZIP_LAYER_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.oci.image.layer.v1.tar+gzip",
    }
)
TAR_LAYER_TYPES = frozenset(
    {"application/vnd.docker.image.rootfs.diff.tar", "application/vnd.oci.image.layer.v1.tar"}
)
CONFIG_HASH_LABEL = "io.compose-spec.config-hash"

MAX_APP_MANIFEST = 50 << 10
MAX_IMAGE_MANIFEST = 100 << 10
MAX_IMAGE_CONFIG = 4 << 20
MAX_COMPOSE = 1 << 20
MAX_BUNDLE_TGZ = 8 << 20  # read whole, hashed, then parsed: compose file + a few small files
MAX_BUNDLE_UNPACKED = MAX_TOTAL  # sum of the bundle's file sizes (members.Limits)
MAX_BUNDLE_MEMBERS = MAX_MEMBERS
MAX_LAYER_UNPACKED = 64 << 30  # a layer's tar, as decompressed while hashing

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


class _Verifier:
    def __init__(self, source: BlobSource, arch: str, variant: Optional[str]) -> None:
        self.source = source
        self.arch = arch
        self.variant = variant
        self.layers_seen: dict[str, tuple[int, str]] = {}  # digest -> (size, diff_id) verified
        self.small_seen: dict[str, bytes] = {}  # manifests and configs verified this run
        self.app = ""

    # --- errors ----------------------------------------------------------------------------------

    def bad(self, what: str, reason: str) -> VerificationError:
        return VerificationError(f"app {self.app}: {what}: {reason}")

    def missing(self, what: str) -> ContentMissingError:
        return ContentMissingError(f"app {self.app}: {what} is missing from the bundle")

    def open(self, what: str, digest: str, max_size: int) -> BinaryIO:
        try:
            return self.source.open_blob(digest[len("sha256:") :], max_size)
        except FileNotFoundError:
            raise self.missing(what) from None
        except UnsafePathError as exc:
            raise self.bad(what, exc.reason) from None
        # Any other OSError (EIO from a stick pulled out) is no content mismatch: it propagates
        # and the caller reports an I/O error.

    def descriptor(self, what: str, desc: Any, max_size: int) -> tuple[str, int, str]:
        """(digest, size, mediaType) of an OCI descriptor, checked for shape."""
        if not isinstance(desc, Mapping):
            raise self.bad(what, "descriptor is not an object")
        digest, size, mt = desc.get("digest"), desc.get("size"), desc.get("mediaType", "")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise self.bad(what, f"digest {digest!r} is not sha256:<64 lowercase hex>")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= max_size:
            raise self.bad(f"{what} {digest}", f"size {size!r} is not in 0..{max_size}")
        if not isinstance(mt, str):
            raise self.bad(f"{what} {digest}", "mediaType is not a string")
        return digest, size, mt

    # --- reading ---------------------------------------------------------------------------------

    def read_small(
        self, what: str, digest: str, max_size: int, size: Optional[int] = None
    ) -> bytes:
        """A small blob (manifest, config), whole, checked against digest and size."""
        what = f"{what} {digest}"
        if digest in self.small_seen:
            data = self.small_seen[digest]
        else:
            with self.open(what, digest, max_size) as fh:
                data = read_upto(fh, max_size + 1)  # short reads continued: EIO is EIO
            if len(data) > max_size:
                raise self.bad(what, f"grew past {max_size} bytes")
            actual = "sha256:" + hashlib.sha256(data).hexdigest()
            if actual != digest:
                raise self.bad(what, f"content hashes to {actual}")
            self.small_seen[digest] = data
        if size is not None and len(data) != size:
            raise self.bad(what, f"is {len(data)} bytes, the manifest says {size}")
        return data

    def json_object(self, what: str, data: bytes) -> Mapping[str, Any]:
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise self.bad(what, f"is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise self.bad(what, "is not a JSON object")
        return obj

    def stream_layer(self, what: str, digest: str, size: int, gz: bool) -> str:
        """Hash a layer while reading it once; return the sha256 of its uncompressed tar."""
        blob_sha, count = hashlib.sha256(), 0
        gunzip = Gunzip(MAX_LAYER_UNPACKED) if gz else None
        diff_sha = hashlib.sha256()
        gz_error: Optional[str] = None
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        with self.open(what, digest, size) as fh:
            reader: Any = fh
            while True:
                n = reader.readinto(buf)
                if not n:
                    break
                count += n
                if count > size:
                    raise self.bad(what, f"grew past the {size} bytes the manifest says")
                blob_sha.update(view[:n])
                if gunzip is not None and gz_error is None:
                    try:
                        for piece in gunzip.feed(view[:n]):
                            diff_sha.update(piece)
                    except GzipError as exc:
                        gz_error = str(exc)  # reported after the digest; keep hashing
        if count != size:
            raise self.bad(what, f"is {count} bytes, the manifest says {size}")
        actual = "sha256:" + blob_sha.hexdigest()
        if actual != digest:
            raise self.bad(what, f"content hashes to {actual}")
        if gunzip is None:
            return actual
        if gz_error is None:
            try:
                for piece in gunzip.finish():
                    diff_sha.update(piece)
            except GzipError as exc:
                gz_error = str(exc)
        if gz_error:
            raise self.bad(what, gz_error)
        return "sha256:" + diff_sha.hexdigest()

    # --- the chain -------------------------------------------------------------------------------

    def verify_app(self, name: str, uri: str) -> VerifiedApp:
        self.app = name
        check_project_name(name)  # the app runs as compose project `name`
        try:
            ref = parse_ref(uri)
        except InvalidTargetError as exc:
            raise self.bad("uri", str(exc)) from None
        what = "app manifest"
        data = self.read_small(what, ref.digest, MAX_APP_MANIFEST)
        what = f"app manifest {ref.digest}"
        manifest = self.json_object(what, data)
        if manifest.get("mediaType") != MT_APP_MANIFEST:
            raise self.bad(
                what, f"mediaType {manifest.get('mediaType')!r} is not {MT_APP_MANIFEST}"
            )
        annotations = manifest.get("annotations")
        if not isinstance(annotations, Mapping) or annotations.get("compose-app") != "v1":
            raise self.bad(what, 'annotations["compose-app"] is not "v1"')
        layers = manifest.get("layers")
        if not isinstance(layers, list) or not layers:
            raise self.bad(what, "has no layers")
        digest, size, mt = self.descriptor(f"{what} layers[0]", layers[0], MAX_BUNDLE_TGZ)
        if mt != MT_APP_BUNDLE:
            raise self.bad(f"{what} layers[0]", f"mediaType {mt!r} is not {MT_APP_BUNDLE}")
        compose = self.read_bundle(digest, size)
        services = self.compose_services(digest, compose)
        images: dict[str, VerifiedImage] = {}
        for svc in services:
            if svc.image not in images:
                images[svc.image] = self.verify_image(svc.image)
        return VerifiedApp(
            name=name,
            uri=uri,
            manifest=Blob(ref.digest, len(data), MT_APP_MANIFEST),
            bundle=Blob(digest, size, MT_APP_BUNDLE),
            compose=compose,
            services=tuple(services),
            images=MappingProxyType(images),
        )

    def read_bundle(self, digest: str, size: int) -> bytes:
        """Read the bundle tgz once, whole (it is small), check its digest, and only then parse it
        (tar headers from a stick are never parsed before their hash matched), checking every
        member with the rule extraction applies; return its docker-compose.yml."""
        what = f"compose bundle {digest}"
        with self.open(what, digest, size) as fh:
            raw = HashingReader(fh)
            data = raw.read_upto(size)
        if raw.count != size:
            got = f"{raw.count}" if raw.count < size else f"more than {size}"
            raise self.bad(what, f"is {got} bytes, the app manifest says {size}")
        actual = "sha256:" + raw.sha.hexdigest()
        if actual != digest:
            raise self.bad(what, f"content hashes to {actual}")
        compose: Optional[bytes] = None
        try:
            for member, f in scan_bundle(io.BytesIO(data)):
                if member.name == COMPOSE_FILE and f is not None:
                    compose = f.read()
                check_bundle_member(self.app, member.name)  # not a second compose file
        except (MemberError, GzipError) as exc:
            raise self.bad(what, str(exc)) from None
        except (tarfile.TarError, EOFError) as exc:
            raise self.bad(what, f"is not a valid tar ({exc})") from None
        if compose is None:
            raise self.bad(what, f"has no {COMPOSE_FILE} at its top")
        return compose

    def compose_services(self, bundle_digest: str, compose: bytes) -> list[VerifiedService]:
        what = f"{COMPOSE_FILE} in {bundle_digest}"
        try:
            doc = yaml.load(compose, Loader=_YamlLoader)  # noqa: S506 - a safe loader
        except yaml.YAMLError as exc:
            raise self.bad(what, f"is not YAML: {' '.join(str(exc).split())}") from None
        if expanded_nodes(doc, MAX_COMPOSE_NODES) > MAX_COMPOSE_NODES:
            # YAML aliases are shared here, but compose expands them (a "billion laughs" file
            # is 1 KiB on the stick and gigabytes in docker-compose at `run`).
            raise self.bad(what, f"expands to more than {MAX_COMPOSE_NODES} YAML nodes")
        services = doc.get("services") if isinstance(doc, dict) else None
        if not isinstance(services, dict) or not services:
            raise self.bad(what, "has no services")
        out = []
        for name, body in services.items():
            image = body.get("image") if isinstance(body, dict) else None
            try:
                ref = parse_ref(image)  # type: ignore[arg-type]
            except InvalidTargetError:
                reason = f"service {name}: image {image!r} is not pinned by digest"
                raise self.bad(what, reason) from None
            out.append(VerifiedService(str(name), str(ref), _label(body, CONFIG_HASH_LABEL)))
        return out

    def verify_image(self, ref_s: str) -> VerifiedImage:
        ref = parse_ref(ref_s)
        what = f"image {ref_s}"
        data = self.read_small(what, ref.digest, MAX_IMAGE_MANIFEST)
        root_obj = self.json_object(what, data)
        root_mt = _media_type(root_obj)
        root = Blob(ref.digest, len(data), root_mt)
        if root_mt in INDEX_TYPES:
            child = self.pick_child(what, root_obj)
            c_digest, c_size, c_mt = child
            what = f"image {ref.locator}@{c_digest} ({self.arch})"
            m_data = self.read_small(what, c_digest, MAX_IMAGE_MANIFEST, c_size)
            m_obj = self.json_object(what, m_data)
            m_mt = _media_type(m_obj)
            if m_mt not in MANIFEST_TYPES:
                raise self.bad(what, f"mediaType {m_mt!r} is not an image manifest")
            manifest = Blob(c_digest, c_size, m_mt)
        elif root_mt in MANIFEST_TYPES:
            m_obj, manifest = root_obj, root
        else:
            reason = (
                "schema 1 manifests are not supported"
                if root_obj.get("schemaVersion") == 1
                else (f"mediaType {root_mt!r} is not an image manifest or index")
            )
            raise self.bad(what, reason)
        c_digest, c_size, c_mt = self.descriptor(
            f"{what} config", m_obj.get("config"), MAX_IMAGE_CONFIG
        )
        config_data = self.read_small(f"{what} config", c_digest, MAX_IMAGE_CONFIG, c_size)
        config = self.json_object(f"{what} config {c_digest}", config_data)
        layers = m_obj.get("layers")
        if not isinstance(layers, list) or not layers:
            raise self.bad(what, "has no layers")
        rootfs = config.get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, Mapping) else None
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
            raise self.bad(
                f"{what} config {c_digest}",
                f"rootfs.diff_ids does not list one entry per layer ({len(layers)})",
            )
        out = []
        for i, desc in enumerate(layers):
            l_digest, l_size, l_mt = self.descriptor(f"{what} layer {i}", desc, 1 << 62)
            lwhat = f"{what} layer {i} {l_digest}"
            if l_mt in GZIP_LAYER_TYPES:
                gz = True
            elif l_mt in TAR_LAYER_TYPES:
                gz = False
            else:
                raise self.bad(lwhat, f"unsupported mediaType {l_mt!r}")
            if l_digest not in self.layers_seen:
                diff = self.stream_layer(lwhat, l_digest, l_size, gz)
                self.layers_seen[l_digest] = (l_size, diff)
            size, diff_id = self.layers_seen[l_digest]
            if size != l_size:  # verified before, under another image's (right) size
                raise self.bad(lwhat, f"is {size} bytes, the manifest says {l_size}")
            if diff_ids[i] != diff_id:
                raise self.bad(lwhat, f"unpacks to {diff_id}, config says {diff_ids[i]!r}")
            out.append(VerifiedLayer(l_digest, l_size, l_mt, diff_id))
        return VerifiedImage(
            ref=ref_s,
            locator=ref.locator,
            root=root,
            manifest=manifest,
            config=Blob(c_digest, c_size, c_mt),
            layers=tuple(out),
        )

    def pick_child(self, what: str, index: Mapping[str, Any]) -> tuple[str, int, str]:
        """The one child for this device's platform (`match_platform`); none or several is an
        error. Several is refused as composectl refuses it ("the specified image index has more
        than one manifest", composeapp pkg/compose/image_loader.go): which one dockerd would
        run is not ours to guess."""
        children = index.get("manifests")
        if not isinstance(children, list):
            raise self.bad(what, "index has no manifests")
        found = []
        offered = []
        for i, child in enumerate(children):
            platform = child.get("platform") if isinstance(child, Mapping) else None
            if not isinstance(platform, Mapping):
                continue  # optional in OCI; a child without one is for no platform
            offered.append(platform_name(platform))
            if match_platform(platform, self.arch, self.variant):
                found.append(self.descriptor(f"{what} manifests[{i}]", child, MAX_IMAGE_MANIFEST))
        if len(found) != 1:
            want = platform_name(
                {"os": "linux", "architecture": self.arch, "variant": self.variant}
            )
            has = ", ".join(sorted(set(offered) - {"unknown/unknown"})) or "none"
            raise self.bad(
                what, f"{len(found)} manifests match {want}; exactly one must (index has: {has})"
            )
        return found[0]


def _media_type(obj: Mapping[str, Any]) -> str:
    """mediaType, or what an OCI document without one is (both fields are optional in OCI)."""
    mt = obj.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    if obj.get("schemaVersion") == 2 and "manifests" in obj:
        return MT_OCI_INDEX
    if obj.get("schemaVersion") == 2 and "layers" in obj:
        return MT_OCI_MANIFEST
    return ""


def _label(body: Mapping[str, Any], key: str) -> Optional[str]:
    labels = body.get("labels")
    if isinstance(labels, Mapping):
        v = labels.get(key)
        return str(v) if v is not None else None
    if isinstance(labels, list):
        for item in labels:
            k, _, v = str(item).partition("=")
            if k == key:
                return v
    return None


_YamlLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def verify_app(
    source: BlobSource, name: str, uri: str, arch: str, variant: Optional[str] = None
) -> VerifiedApp:
    """Verify one app's content; ContentMissingError (8) or VerificationError (80)."""
    return _Verifier(source, arch, variant).verify_app(name, uri)


def verify_apps(
    source: BlobSource, apps: Mapping[str, str], arch: str, variant: Optional[str] = None
) -> dict[str, VerifiedApp]:
    """Verify several apps (app -> uri), reading blobs they share only once."""
    v = _Verifier(source, arch, variant)
    return {name: v.verify_app(name, uri) for name, uri in sorted(apps.items())}
