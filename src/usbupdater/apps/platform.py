"""Image formats: the manifest and layer media types verified, and which child of a
multi-arch image index runs on this device, as composectl decides it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

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


def media_type(obj: Mapping[str, Any]) -> str:
    """mediaType, or what an OCI document without one is (both fields are optional in OCI)."""
    mt = obj.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    if obj.get("schemaVersion") == 2 and "manifests" in obj:
        return MT_OCI_INDEX
    if obj.get("schemaVersion") == 2 and "layers" in obj:
        return MT_OCI_MANIFEST
    return ""


# composectl matches index children with containerd's `platforms.OnlyStrict(DefaultSpec())`
# (composeapp pkg/compose/image.go LoadImageTree; pkg/compose/v1/config.go NewDefaultConfig): both
# sides are normalised (containerd/platforms database.go normalizeArch) and then compared exactly,
# with no fallback to older variants. `normalize_platform` is that normalisation for the names an
# index holds; an attestation manifest (`"platform": {"architecture": "unknown", "os":
# "unknown"}`, as buildx writes them) never matches, and is not an error.


def normalize_platform(arch: str, variant: Optional[str]) -> tuple[str, str]:
    """(architecture, variant) as containerd normalises them before comparing.

    arm64 "v8"/"8" is the same as no variant; arm with no variant is v7 and "6" is "v6";
    amd64 "v1" is no variant; aliases (aarch64, x86_64, armhf, armel, i386) are renamed.
    """
    a, v = arch.lower(), (variant or "").lower()
    if a in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if v == "v1" else v
    if a in ("aarch64", "arm64"):
        return "arm64", "" if v in ("8", "v8") else v
    if a == "armhf":
        return "arm", "v7"
    if a == "armel":
        return "arm", "v6"
    if a == "arm":
        if v in ("", "7"):
            return "arm", "v7"
        if v in ("5", "6", "8"):
            return "arm", "v" + v
        return "arm", v
    if a == "i386":
        return "386", ""
    return a, v


def match_platform(platform: Mapping[str, Any], arch: str, variant: Optional[str]) -> bool:
    """Does an index child's platform run on a linux device of `arch`/`variant`?"""
    os_, c_arch, c_variant = (platform.get(k) for k in ("os", "architecture", "variant"))
    if os_ != "linux" or not isinstance(c_arch, str):
        return False
    if c_variant is not None and not isinstance(c_variant, str):
        return False
    return normalize_platform(c_arch, c_variant) == normalize_platform(arch, variant)


def platform_name(platform: Mapping[str, Any]) -> str:
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(str(p) for p in parts if p)
