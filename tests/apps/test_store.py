"""Device app store: copy with hashing, skip present blobs, refuse mismatches, prune."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from tests.apps.conftest import StickDir, content_of, image0
from usbupdater import progress
from usbupdater.apps.copying import CopyingSource
from usbupdater.apps.model import Blob
from usbupdater.apps.store import AppStore
from usbupdater.apps.verify import verify_apps
from usbupdater.errors import ContentMissingError, VerificationError
from usbupdater.sim import apps as sa


@pytest.fixture
def stick(tmp_path: Path) -> tuple[Path, dict[str, sa.WrittenApp]]:
    d = tmp_path / "stick" / "apps"
    w = sa.write_apps(d, [sa.AppSpec("a1"), sa.AppSpec("a2", services={"x": sa.ServiceSpec()})])
    return d, w


def test_copy_and_layout(tmp_path: Path, stick: tuple[Path, dict[str, sa.WrittenApp]]) -> None:
    src, w = stick
    apps = [content_of(src, x) for x in w.values()]
    store = AppStore(tmp_path / "store")
    store.add_apps(StickDir(src), apps)
    for app in apps:
        assert store.has_app(app)
        d = store.app_dir(app)
        assert (d / "uri").read_bytes() == app.uri.encode()
        assert (d / "manifest.json").read_bytes() == (
            src / "blobs/sha256" / app.manifest.hex
        ).read_bytes()
        assert (d / f"{app.bundle.hex}.tgz").is_file()
        assert store.load_app(app.name, app.uri) == app
    assert sorted(store.stored_apps()) == sorted((a.name, a.uri) for a in apps)
    assert not [p for p in store.blob_dir.iterdir() if p.name.startswith(".")]


def test_present_blobs_skipped(
    tmp_path: Path, stick: tuple[Path, dict[str, sa.WrittenApp]]
) -> None:
    src, w = stick
    app = content_of(src, w["a1"])
    store = AppStore(tmp_path / "store")
    store.add_apps(StickDir(src), [app])
    before = {p.name: p.stat().st_ino for p in store.blob_dir.iterdir()}
    assert all(store.has_blob(b) for b in app.blobs)  # nothing of the app is missing
    store.add_apps(StickDir(src), [app])
    assert {p.name: p.stat().st_ino for p in store.blob_dir.iterdir()} == before


def test_mismatch_while_copying(
    tmp_path: Path, stick: tuple[Path, dict[str, sa.WrittenApp]]
) -> None:
    src, w = stick
    app = content_of(src, w["a1"])
    layer = image0(app).layers[1]
    sa.corrupt_blob(src, layer.digest)
    store = AppStore(tmp_path / "store")
    with pytest.raises(VerificationError, match=layer.digest):
        store.add_apps(StickDir(src), [app])
    assert not store.has_blob(layer)
    assert not [p for p in store.blob_dir.iterdir() if p.name.startswith(".")]
    assert not store.has_app(app)


def test_missing_and_linked_blobs(
    tmp_path: Path, stick: tuple[Path, dict[str, sa.WrittenApp]]
) -> None:
    src, w = stick
    app = content_of(src, w["a1"])
    cfg = image0(app).config
    p = src / "blobs/sha256" / cfg.hex
    p.unlink()
    with pytest.raises(ContentMissingError):
        AppStore(tmp_path / "s1").add_apps(StickDir(src), [app])
    os.symlink("/etc/passwd", p)
    with pytest.raises(VerificationError, match="symbolic link"):
        AppStore(tmp_path / "s2").add_apps(StickDir(src), [app])


def test_read_verified_withholds_last_chunk(tmp_path: Path) -> None:
    store = AppStore(tmp_path)
    store.blob_dir.mkdir(parents=True)
    import hashlib

    data = b"x" * 100
    b = Blob("sha256:" + hashlib.sha256(data).hexdigest(), 100)
    store.blob_path(b).write_bytes(data)
    assert b"".join(store.read_verified(b, chunk=30)) == data
    store.blob_path(b).write_bytes(b"y" + data[1:])
    got = []
    with pytest.raises(VerificationError):
        for c in store.read_verified(b, chunk=30):
            got.append(c)
    assert sum(map(len, got)) == 90  # the last chunk never left
    store.blob_path(b).write_bytes(data + b"z")
    with pytest.raises(VerificationError):
        list(store.read_verified(b))


def test_prune(tmp_path: Path, stick: tuple[Path, dict[str, sa.WrittenApp]]) -> None:
    src, w = stick
    a1, a2 = (content_of(src, x) for x in w.values())
    store = AppStore(tmp_path / "store")
    store.add_apps(StickDir(src), [a1, a2])
    (store.blob_dir / ".tmp-leftover.1").write_bytes(b"x")
    removed = store.prune([(a2.name, a2.uri)])
    only_a1 = {b.digest for b in a1.blobs} - {b.digest for b in a2.blobs}
    assert set(removed) == only_a1
    assert store.has_app(a2) and not store.has_app(a1)
    assert not (store.root / "apps" / "a1").exists()
    assert {p.name for p in store.blob_dir.iterdir()} == {b.hex for b in a2.blobs}


class CountingSource:
    """The stick, counting the bytes read from it."""

    def __init__(self, apps_dir: Path) -> None:
        self.inner = StickDir(apps_dir)
        self.read = 0

    def open_blob(self, hexdigest: str, max_size: int) -> BinaryIO:
        fh = self.inner.open_blob(hexdigest, max_size)
        outer = self

        class Counting(io.RawIOBase):
            def readable(self) -> bool:
                return True

            def readinto(self, b: Any) -> int:
                n = fh.readinto(b)  # type: ignore[attr-defined]
                outer.read += n or 0
                return int(n or 0)

            def close(self) -> None:
                fh.close()
                super().close()

        return Counting()  # type: ignore[return-value]


def test_verify_copies_each_byte_once(
    tmp_path: Path, stick: tuple[Path, dict[str, sa.WrittenApp]]
) -> None:
    src, w = stick
    counting = CountingSource(src)
    store = AppStore(tmp_path / "store")
    uris = {n: x.uri for n, x in w.items()}
    verified = verify_apps(CopyingSource(counting, store), uris, sa.machine_arch())
    apps = list(verified.values())
    assert apps == [content_of(src, x) for x in w.values()]
    total = sum(b.size for b in {b.digest: b for a in apps for b in a.blobs}.values())
    assert counting.read == total  # every blob read once, while it was verified
    store.add_apps(counting, apps)
    assert counting.read == total  # nothing left to copy
    assert all(store.has_app(a) for a in apps)
    assert not [p for p in store.blob_dir.iterdir() if p.name.startswith(".")]
    # A second verification (e.g. another target sharing blobs) reads from the store.
    verify_apps(CopyingSource(counting, store), uris, sa.machine_arch())
    assert counting.read == total


def test_verify_through_store_refuses_tampered(
    tmp_path: Path, stick: tuple[Path, dict[str, sa.WrittenApp]]
) -> None:
    src, w = stick
    layer = w["a1"].images["main"].layer_digests[1]
    sa.corrupt_blob(src, layer)
    store = AppStore(tmp_path / "store")
    with pytest.raises(VerificationError):
        verify_apps(CopyingSource(StickDir(src), store), {"a1": w["a1"].uri}, sa.machine_arch())
    assert not (store.blob_dir / layer.split(":")[1]).exists()
    assert not [p for p in store.blob_dir.iterdir() if p.name.startswith(".")]


def test_progress_counts_the_bytes_read(
    tmp_path: Path, stick: tuple[Path, dict[str, sa.WrittenApp]]
) -> None:
    """Verifying through the copying tee counts each byte read from the stick once, and the
    expected total is the signed sizes of the app's blobs; a plain copy counts what it copies."""
    src, w = stick
    uris = {n: x.uri for n, x in w.items()}
    counting = CountingSource(src)
    store = AppStore(tmp_path / "store")
    with progress.metering(progress.Meter(sink=lambda p: None)) as meter:
        verified = verify_apps(CopyingSource(counting, store), uris, sa.machine_arch())
    assert counting.read > 0 and meter.done_bytes == counting.read
    signed = {b.digest: b.size for a in verified.values() for b in a.blobs}
    assert meter.total_bytes == sum(signed.values())
    # add_apps copies (and counts) only what is missing: here, nothing.
    with progress.metering(progress.Meter(sink=lambda p: None)) as meter:
        store.add_apps(counting, verified.values())
    assert meter.done_bytes == 0
    # A store without the blobs: the copy pass reads and counts every byte, once.
    counting2 = CountingSource(src)
    with progress.metering(progress.Meter(sink=lambda p: None)) as meter:
        AppStore(tmp_path / "s2").add_apps(counting2, verified.values())
    assert meter.done_bytes == counting2.read == meter.total_bytes == sum(signed.values())
