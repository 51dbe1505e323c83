"""Platform matching: machine name -> (architecture, variant), and index children as composectl
picks them (containerd's normalisation, strict: no fallback to an older ARM variant)."""

from __future__ import annotations

import hashlib
from typing import Any, Optional

import pytest

from usbupdater.apps.platform import match_platform, normalize_platform
from usbupdater.apps.verify import _Verifier
from usbupdater.errors import VerificationError
from usbupdater.hostinfo import docker_platform

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.mark.parametrize(
    ("machine", "bits", "want"),
    [
        ("x86_64", 64, ("amd64", None)),
        ("aarch64", 64, ("arm64", "v8")),
        ("arm64", 64, ("arm64", "v8")),
        ("aarch64", 32, ("arm", "v7")),  # 32-bit userland on a 64-bit kernel
        ("armv8l", 32, ("arm", "v7")),
        ("armv7l", 32, ("arm", "v7")),
        ("armv6l", 32, ("arm", "v6")),
        ("armv5tejl", 32, ("arm", "v5")),
        ("i686", 32, ("386", None)),
        ("riscv64", 64, ("riscv64", None)),
        ("  ARMV7L\n", 32, ("arm", "v7")),
    ],
)
def test_docker_platform(machine: str, bits: int, want: tuple[str, Optional[str]]) -> None:
    assert docker_platform(machine, bits) == want


@pytest.mark.parametrize(
    ("arch", "variant", "want"),
    [
        ("arm64", "v8", ("arm64", "")),
        ("arm64", "8", ("arm64", "")),
        ("arm64", None, ("arm64", "")),
        ("aarch64", None, ("arm64", "")),
        ("arm", None, ("arm", "v7")),
        ("arm", "7", ("arm", "v7")),
        ("arm", "6", ("arm", "v6")),
        ("arm", "v5", ("arm", "v5")),
        ("armhf", None, ("arm", "v7")),
        ("armel", None, ("arm", "v6")),
        ("amd64", "v1", ("amd64", "")),
        ("x86_64", None, ("amd64", "")),
        ("amd64", "v3", ("amd64", "v3")),
    ],
)
def test_normalize_platform(arch: str, variant: Optional[str], want: tuple[str, str]) -> None:
    assert normalize_platform(arch, variant) == want


def _d(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def child(name: str, platform: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "mediaType": MT_MANIFEST,
        "digest": _d(name),
        "size": 1234,
        "platform": platform,
        **extra,
    }


def attestation(of: str) -> dict[str, Any]:
    """An attestation manifest as buildx writes it into an index."""
    return child(
        f"att-{of}",
        {"architecture": "unknown", "os": "unknown"},
        annotations={
            "vnd.docker.reference.digest": _d(of),
            "vnd.docker.reference.type": "attestation-manifest",
        },
    )


def index(*children: dict[str, Any]) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": list(children)}


# A multi-arch image as buildx pushes it (busybox-like): every child with its attestation.
BUILDX = index(
    child("amd64", {"architecture": "amd64", "os": "linux"}),
    child("arm-v5", {"architecture": "arm", "os": "linux", "variant": "v5"}),
    child("arm-v6", {"architecture": "arm", "os": "linux", "variant": "v6"}),
    child("arm-v7", {"architecture": "arm", "os": "linux", "variant": "v7"}),
    child("arm64-v8", {"architecture": "arm64", "os": "linux", "variant": "v8"}),
    attestation("amd64"),
    attestation("arm-v5"),
    attestation("arm-v6"),
    attestation("arm-v7"),
    attestation("arm64-v8"),
)
# Docker manifest list of an older image: arm64 with no variant, arm without one (= v7).
OLD_LIST = index(
    child("old-amd64", {"architecture": "amd64", "os": "linux"}),
    child("old-arm64", {"architecture": "arm64", "os": "linux"}),
    child("old-arm", {"architecture": "arm", "os": "linux"}),
    child("old-arm-v6", {"architecture": "arm", "os": "linux", "variant": "v6"}),
    child("win", {"architecture": "amd64", "os": "windows", "os.version": "10.0.17763.1"}),
)


def pick(idx: dict[str, Any], machine: str, bits: int = 64) -> str:
    arch, variant = docker_platform(machine, bits)
    digest, _, _ = _Verifier(None, arch, variant).pick_child("image x", idx)  # type: ignore[arg-type]
    return digest


@pytest.mark.parametrize(
    ("idx", "machine", "bits", "want"),
    [
        (BUILDX, "x86_64", 64, "amd64"),
        (BUILDX, "aarch64", 64, "arm64-v8"),
        (BUILDX, "armv7l", 32, "arm-v7"),
        (BUILDX, "armv6l", 32, "arm-v6"),
        (BUILDX, "armv5tejl", 32, "arm-v5"),
        (BUILDX, "aarch64", 32, "arm-v7"),
        (OLD_LIST, "x86_64", 64, "old-amd64"),  # the windows child is not linux
        (OLD_LIST, "aarch64", 64, "old-arm64"),  # no variant is v8
        (OLD_LIST, "armv7l", 32, "old-arm"),  # arm without a variant is v7 (containerd)
        (OLD_LIST, "armv6l", 32, "old-arm-v6"),
    ],
)
def test_pick_child(idx: dict[str, Any], machine: str, bits: int, want: str) -> None:
    assert pick(idx, machine, bits) == _d(want)


def test_attestations_are_ignored_not_invalid() -> None:
    only_att = index(attestation("amd64"), child("amd64", {"architecture": "amd64", "os": "linux"}))
    assert pick(only_att, "x86_64") == _d("amd64")
    assert not match_platform({"architecture": "unknown", "os": "unknown"}, "unknown", None)


def test_no_older_variant_fallback() -> None:
    """composectl matches strictly: an arm/v7 device does not take an arm/v6 image, nor the
    reverse; the error says what the index offers (attestations left out)."""
    v6_only = index(
        child("arm-v6", {"architecture": "arm", "os": "linux", "variant": "v6"}),
        attestation("arm-v6"),
    )
    with pytest.raises(
        VerificationError, match=r"0 manifests match linux/arm/v7.*has: linux/arm/v6\)"
    ):
        pick(v6_only, "armv7l", 32)
    with pytest.raises(VerificationError, match="0 manifests match linux/arm/v6"):
        pick(
            index(child("arm-v7", {"architecture": "arm", "os": "linux", "variant": "v7"})),
            "armv6l",
            32,
        )


def test_several_matches_refused_as_composectl() -> None:
    """arm64 and arm64/v8 are the same platform: which one dockerd would run is ambiguous."""
    both = index(
        child("a", {"architecture": "arm64", "os": "linux"}),
        child("b", {"architecture": "arm64", "os": "linux", "variant": "v8"}),
    )
    with pytest.raises(VerificationError, match="2 manifests match linux/arm64/v8; exactly one"):
        pick(both, "aarch64")
    arm = index(
        child("a", {"architecture": "arm", "os": "linux"}),
        child("b", {"architecture": "arm", "os": "linux", "variant": "v7"}),
    )
    with pytest.raises(VerificationError, match="2 manifests match linux/arm/v7"):
        pick(arm, "armv7l", 32)


def test_child_without_platform_is_skipped_and_bad_match_descriptor_refused() -> None:
    idx = index(
        {"mediaType": MT_MANIFEST, "digest": _d("np"), "size": 1},
        child("amd64", {"architecture": "amd64", "os": "linux"}),
    )
    assert pick(idx, "x86_64") == _d("amd64")
    bad = index({**child("amd64", {"architecture": "amd64", "os": "linux"}), "digest": "sha256:xx"})
    with pytest.raises(VerificationError, match="is not sha256"):
        pick(bad, "x86_64")
    assert not match_platform({"architecture": "arm", "os": "linux", "variant": 7}, "arm", "v7")


def test_verify_app_for_arm_v7_device(tmp_path: Any) -> None:
    """A whole app whose image index has linux/arm (no variant) and another architecture:
    an armv7l device verifies it, an armv6l device refuses it with 80."""
    from tests.apps.conftest import StickDir
    from usbupdater.apps.verify import verify_apps
    from usbupdater.errors import ExitCode
    from usbupdater.sim import apps as sa

    spec = sa.AppSpec("armapp", manifest_list=True)
    uris = {n: w.uri for n, w in sa.write_apps(tmp_path, [spec], arch="arm").items()}
    arch, variant = docker_platform("armv7l", 32)
    got = verify_apps(StickDir(tmp_path), uris, arch, variant)
    assert got["armapp"].images  # the arm child was picked and verified down to its layers
    arch, variant = docker_platform("armv6l", 32)
    with pytest.raises(VerificationError, match="0 manifests match linux/arm/v6") as exc:
        verify_apps(StickDir(tmp_path), uris, arch, variant)
    assert exc.value.code == ExitCode.VERIFICATION_FAILED
