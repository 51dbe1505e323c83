"""Real signed vectors (shared/vectors/README.md): each verifies or fails as documented."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from usbupdater.errors import ExpiredError, SecurityError, UpdaterError
from usbupdater.trust import TrustedMetadata, TrustSession
from usbupdater.trust.dialect import check_threshold, load

RSA_TIME = datetime.fromtimestamp(1662678442, timezone.utc)  # libtufnano TestRefreshOK
ED_TIME = datetime.fromtimestamp(1687356253, timezone.utc)  # libtufnano TestRefreshEllipticCurveOK


def run(
    tmp: Path,
    sources: list[Path],
    anchor: Path,
    now: datetime,
    *,
    anchor_version: int = 1,
) -> TrustedMetadata:
    """Lay `sources` (later ones overlaid on earlier) into a bundle tuf/ dir; trust `anchor`."""
    tuf, shipped = tmp / "tuf", tmp / "shipped"
    tuf.mkdir()
    shipped.mkdir()
    for src in sources:
        for f in src.iterdir():
            if f.name != "1.root.json":  # the chain starts at the anchor, as on a device
                shutil.copy(f, tuf / f.name)
    shutil.copy(anchor, shipped / f"{anchor_version}.root.json")
    return TrustSession(
        tuf,
        shipped_roots_dir=shipped,
        device_type="",
        device_tags=(),
        store_dir=tmp / "state",
        now=now,
    ).verify()


def test_rsa_passes(tmp_path: Path, vectors: Path) -> None:
    rsa = vectors / "libtufnano/rsa"
    result = run(tmp_path, [rsa], rsa / "1.root.json", RSA_TIME)
    assert (result.root_version, result.targets_version) == (2, 875)
    assert len(result.targets) == 10
    assert all(t["custom"]["targetFormat"] == "OSTREE" for t in result.targets.values())
    assert result.bundle_targets is None and not result.from_device_cache
    assert result.expires == datetime(2022, 9, 9, 18, 13, 1, tzinfo=timezone.utc)


def test_rsa_expired(tmp_path: Path, vectors: Path) -> None:
    rsa = vectors / "libtufnano/rsa"
    later = datetime(2022, 9, 16, 18, 0, 15, tzinfo=timezone.utc)
    with pytest.raises(ExpiredError, match="timestamp v875: expired"):
        run(tmp_path, [rsa], rsa / "1.root.json", later)


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        ("error_hash_snapshot", "snapshot v875: sha256 does not match"),
        ("error_hash_targets", "targets v875: sha256 does not match"),
        ("error_sig_root_2", "root v2: 0 valid signature.* root keys of root v1"),
        ("error_sig_root_2_self", "root v2: 0 valid signature"),
        # These two sets also change the parent's hash without re-signing the parent, so the
        # parent's (timestamp's) signature is the first thing that fails.
        ("error_sig_snapshot", "timestamp v875: 0 valid signature"),
        ("error_sig_targets", "timestamp v875: 0 valid signature"),
        ("error_sig_timestamp", "timestamp v875: 0 valid signature"),
        ("error_version_root_2", "2.root.json: holds root v1, expected v2"),
    ],
)
def test_rsa_error_sets(tmp_path: Path, vectors: Path, overlay: str, message: str) -> None:
    rsa = vectors / "libtufnano/rsa"
    with pytest.raises(SecurityError, match=message) as info:
        run(tmp_path, [rsa, vectors / "libtufnano" / overlay], rsa / "1.root.json", RSA_TIME)
    assert info.value.code == 11


def test_error_sig_snapshot_alone(tmp_path: Path, vectors: Path) -> None:
    """Only the badly signed snapshot of error_sig_snapshot: caught by the timestamp's hash."""
    rsa = vectors / "libtufnano/rsa"
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(vectors / "libtufnano/error_sig_snapshot/snapshot.json", only)
    (tmp_path / "t").mkdir()
    with pytest.raises(SecurityError, match="snapshot v875"):
        run(tmp_path / "t", [rsa, only], rsa / "1.root.json", RSA_TIME)


def test_ed25519_thirteen_root_chain(tmp_path: Path, vectors: Path) -> None:
    """13 roots rotating RSA<->ED25519; ts/snap files carry a trailing newline the meta omits."""
    ed = vectors / "libtufnano/ed25519"
    result = run(tmp_path, [ed], ed / "1.root.json", ED_TIME)
    assert (result.root_version, result.targets_version) == (13, 1038)
    assert result.targets == {}
    assert result.expires == datetime(2023, 7, 21, 2, 49, 21, tzinfo=timezone.utc)


def test_ed25519_trusting_a_middle_root(tmp_path: Path, vectors: Path) -> None:
    ed = vectors / "libtufnano/ed25519"
    result = run(tmp_path, [ed], ed / "7.root.json", ED_TIME, anchor_version=7)
    assert result.root_version == 13


def test_ed25519_expired_newest_root(tmp_path: Path, vectors: Path) -> None:
    ed = vectors / "libtufnano/ed25519"
    with pytest.raises(ExpiredError, match="root v13: expired at 2024-03-29T19:24:08Z"):
        run(tmp_path, [ed], ed / "1.root.json", datetime(2024, 4, 1, tzinfo=timezone.utc))


def test_aktualizr_nano(tmp_path: Path, vectors: Path) -> None:
    ed = vectors / "libtufnano/ed25519"
    now = datetime(2023, 4, 1, tzinfo=timezone.utc)
    result = run(
        tmp_path, [vectors / "aktualizr-nano"], ed / "13.root.json", now, anchor_version=13
    )
    assert result.targets_version == 168
    assert set(result.targets) == {"MIMXRT1060-EVK-v1001", "MIMXRT1060-EVK-v4000"}


def test_aktualizr_sample1(tmp_path: Path, vectors: Path) -> None:
    """uptane-generator output: lowercase keytype, pretty-printed, sha512 too, version-only meta."""
    s1 = vectors / "aktualizr/tests/tuf/sample1"
    src = tmp_path / "src"
    src.mkdir()
    for role in ("timestamp", "snapshot", "targets"):
        shutil.copy(s1 / f"{role}.json", src)
    (tmp_path / "t").mkdir()
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    result = run(tmp_path / "t", [src], s1 / "root.json", now)
    assert list(result.targets) == ["targets/file.txt"]


@pytest.mark.parametrize(
    "path",
    [
        "aktualizr/tests/tuf/rsassa-pss-sha256/root.json",  # keytype "rsa" and "RSA"
        "aktualizr/tests/tuf/root-with-extra-keys.json",  # method "rsassa-pss", extra role
        "aktualizr/tests/test_data/prov/metadata/repo/root.json",
    ],
)
def test_aktualizr_roots_self_signed(vectors: Path, path: str) -> None:
    root = load((vectors / path).read_bytes(), "root", path)
    check_threshold(root, root.model, "root", "itself")


def test_aktualizr_prov_repo_signatures(vectors: Path) -> None:
    """Pretty-printed RSA metadata: signatures only (its hash/version chain does not hold)."""
    repo = vectors / "aktualizr/tests/test_data/prov/metadata/repo"
    root = load((repo / "root.json").read_bytes(), "root", "root.json")
    for role in ("timestamp", "snapshot", "targets"):
        env = load((repo / f"{role}.json").read_bytes(), role, f"{role}.json")
        check_threshold(env, root.model, role, "root v1")


def test_prov_repo_chain_fails(tmp_path: Path, vectors: Path) -> None:
    repo = vectors / "aktualizr/tests/test_data/prov/metadata/repo"
    src = tmp_path / "src"
    src.mkdir()
    for role in ("timestamp", "snapshot", "targets"):
        shutil.copy(repo / f"{role}.json", src)
    (tmp_path / "t").mkdir()
    with pytest.raises(UpdaterError) as info:
        run(tmp_path / "t", [src], repo / "root.json", datetime(2018, 5, 1, tzinfo=timezone.utc))
    assert info.value.code == 11
