"""Verify an app's content in the bundle against the digest in its signed target URI.

The chain: target URI `<host>/<factory>/<app>@sha256:<H>` -> app manifest (blob H) -> bundle tgz
(`layers[0]`) -> `docker-compose.yml` taken from that verified tgz (the loose copy on the stick
is never read) -> each service's pinned image -> per-arch manifest -> config -> layers, whose
decompressed bytes must hash to `config.rootfs.diff_ids[i]`, as dockerd checks on load.

Every blob is read once, in chunks, hashing and counting (`progress.count`) as it streams through
`streams.HashingReader` (gzip layers are decompressed on the fly by `streams.Gunzip` for their
diff_id); blobs shared between images are verified once per run. An app's layers are read last,
after every manifest and config, so their signed sizes are announced first (`progress.expect`).
Sizes are bounded before reading. The bundle tgz (at most MAX_BUNDLE_TGZ) is read whole and its
digest checked before any tar header is parsed; its members then go through `members.scan_bundle`,
the same rule extraction applies, so `install` refuses what `run` would. Absent content raises
ContentMissingError (8); anything that does not match raises VerificationError (80); both name
the app, the blob and the reason.

The result, `VerifiedApp` (apps.model), is also the store's record of the app.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Optional

from usbupdater import progress
from usbupdater.apps.members import COMPOSE_FILE, MemberError, scan_bundle
from usbupdater.apps.model import (
    Blob,
    BlobSource,
    VerifiedApp,
    VerifiedImage,
    VerifiedLayer,
    VerifiedService,
    is_digest,
)
from usbupdater.apps.platform import (
    GZIP_LAYER_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    TAR_LAYER_TYPES,
    match_platform,
    media_type,
    platform_name,
)
from usbupdater.apps.project import (
    ComposeError,
    check_bundle_member,
    check_project_name,
    parse_compose,
)
from usbupdater.apps.streams import Gunzip, GzipError, HashingReader
from usbupdater.errors import ContentMissingError, VerificationError
from usbupdater.safeio import UnsafePathError
from usbupdater.target import InvalidTargetError, parse_ref

MT_APP_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_APP_BUNDLE = "application/octet-stream"

MAX_APP_MANIFEST = 50 << 10
MAX_IMAGE_MANIFEST = 100 << 10
MAX_IMAGE_CONFIG = 4 << 20
MAX_BUNDLE_TGZ = 8 << 20  # read whole, hashed, then parsed: compose file + a few small files
MAX_LAYER_UNPACKED = 64 << 30  # a layer's tar, as decompressed while hashing


@dataclass(frozen=True)
class _Layer:
    """A layer an image manifest lists, checked for shape, not yet read."""

    what: str
    digest: str
    size: int
    media_type: str
    diff_id: Any  # what the config says (checked against what the layer unpacks to)


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

    def open(self, what: str, digest: str, max_size: int) -> HashingReader:
        """The blob, hashed and counted (`progress.count`) as it is read."""
        try:
            return HashingReader(
                self.source.open_blob(digest[len("sha256:") :], max_size), metered=True
            )
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
        if not isinstance(digest, str) or not is_digest(digest):
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
            if size is not None:
                progress.expect(size, progress.APPS)
            with self.open(what, digest, max_size) as r:
                data = r.read_upto(max_size)  # short reads continued: EIO is EIO
            if len(data) > max_size:
                raise self.bad(what, f"grew past {max_size} bytes")
            actual = r.digest
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
        gunzip = Gunzip(MAX_LAYER_UNPACKED) if gz else None
        diff_sha = hashlib.sha256()
        gz_error: Optional[str] = None

        def unpack(chunk: memoryview) -> None:
            nonlocal gz_error
            if gunzip is not None and gz_error is None:
                try:
                    for piece in gunzip.feed(chunk):
                        diff_sha.update(piece)
                except GzipError as exc:
                    gz_error = str(exc)  # reported after the digest; keep hashing

        with self.open(what, digest, size) as r:
            r.read_blob(size, unpack)
        if r.count > size:
            raise self.bad(what, f"grew past the {size} bytes the manifest says")
        if r.count != size:
            raise self.bad(what, f"is {r.count} bytes, the manifest says {size}")
        if r.digest != digest:
            raise self.bad(what, f"content hashes to {r.digest}")
        if gunzip is None:
            return r.digest
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
        progress.expect(size, progress.APPS)
        compose = self.read_bundle(digest, size)
        version, services = self.compose_services(digest, compose)
        trees: dict[str, tuple[VerifiedImage, list[_Layer]]] = {}
        for svc in services:
            if svc.image not in trees:
                trees[svc.image] = self.image_tree(svc.image)
        # The bulk of the app (its layers, each read once per run): its signed sizes, up front.
        unread = {ly.digest: ly.size for _, layers in trees.values() for ly in layers}
        progress.expect(
            sum(n for d, n in unread.items() if d not in self.layers_seen), progress.APPS
        )
        images = {pinned: self.read_layers(*tree) for pinned, tree in trees.items()}
        return VerifiedApp(
            name=name,
            uri=uri,
            manifest=Blob(ref.digest, len(data), MT_APP_MANIFEST),
            bundle=Blob(digest, size, MT_APP_BUNDLE),
            services=tuple(services),
            images=MappingProxyType(images),
            compose_version=version,
        )

    def read_bundle(self, digest: str, size: int) -> bytes:
        """Read the bundle tgz once, whole (it is small), check its digest, and only then parse it
        (tar headers from a stick are never parsed before their hash matched), checking every
        member with the rule extraction applies; return its docker-compose.yml."""
        what = f"compose bundle {digest}"
        with self.open(what, digest, size) as raw:
            data = raw.read_upto(size)
        if raw.count != size:
            got = f"{raw.count}" if raw.count < size else f"more than {size}"
            raise self.bad(what, f"is {got} bytes, the app manifest says {size}")
        if raw.digest != digest:
            raise self.bad(what, f"content hashes to {raw.digest}")
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

    def compose_services(
        self, bundle_digest: str, compose: bytes
    ) -> tuple[str, list[VerifiedService]]:
        """The compose file's version and services, each image pinned by digest."""
        what = f"{COMPOSE_FILE} in {bundle_digest}"
        try:
            version, services = parse_compose(compose)
        except ComposeError as exc:
            raise self.bad(what, str(exc)) from None
        out = []
        for svc in services:
            try:
                ref = parse_ref(svc.image)
            except (InvalidTargetError, TypeError, AttributeError):
                reason = f"service {svc.name}: image {svc.image!r} is not pinned by digest"
                raise self.bad(what, reason) from None
            out.append(VerifiedService(svc.name, str(ref), svc.config_hash))
        return version, out

    def image_tree(self, ref_s: str) -> tuple[VerifiedImage, list[_Layer]]:
        """An image's manifests and config, verified (no layers yet); its layers, checked for
        shape only."""
        ref = parse_ref(ref_s)
        what = f"image {ref_s}"
        data = self.read_small(what, ref.digest, MAX_IMAGE_MANIFEST)
        root_obj = self.json_object(what, data)
        root_mt = media_type(root_obj)
        root = Blob(ref.digest, len(data), root_mt)
        if root_mt in INDEX_TYPES:
            child = self.pick_child(what, root_obj)
            c_digest, c_size, c_mt = child
            what = f"image {ref.locator}@{c_digest} ({self.arch})"
            m_data = self.read_small(what, c_digest, MAX_IMAGE_MANIFEST, c_size)
            m_obj = self.json_object(what, m_data)
            m_mt = media_type(m_obj)
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
            if l_mt not in GZIP_LAYER_TYPES and l_mt not in TAR_LAYER_TYPES:
                raise self.bad(lwhat, f"unsupported mediaType {l_mt!r}")
            out.append(_Layer(lwhat, l_digest, l_size, l_mt, diff_ids[i]))
        return VerifiedImage(ref_s, root, manifest, Blob(c_digest, c_size, c_mt), ()), out

    def read_layers(self, image: VerifiedImage, layers: list[_Layer]) -> VerifiedImage:
        """Read each layer once per run: its digest, and what it unpacks to (its diff_id)."""
        out = []
        for ly in layers:
            if ly.digest not in self.layers_seen:
                diff = self.stream_layer(
                    ly.what, ly.digest, ly.size, ly.media_type in GZIP_LAYER_TYPES
                )
                self.layers_seen[ly.digest] = (ly.size, diff)
            size, diff_id = self.layers_seen[ly.digest]
            if size != ly.size:  # verified before, under another image's (right) size
                raise self.bad(ly.what, f"is {size} bytes, the manifest says {ly.size}")
            if ly.diff_id != diff_id:
                raise self.bad(ly.what, f"unpacks to {diff_id}, config says {ly.diff_id!r}")
            out.append(VerifiedLayer(ly.digest, ly.size, ly.media_type, diff_id))
        return dataclasses.replace(image, layers=tuple(out))

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
