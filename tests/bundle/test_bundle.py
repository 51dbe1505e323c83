"""Reading the stick: presence of commits and apps, hostile layouts, selection end to end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from usbupdater.bundle import Bundle
from usbupdater.errors import ContentMissingError, MetadataMissingError
from usbupdater.safeio import UnsafePathError
from usbupdater.selection import Action, DeviceFacts, select_target

from .conftest import COMMIT


def test_presence(bundle_copy) -> None:
    root, written = bundle_copy()
    (root / "apps" / "apps" / "._shellhttpd").write_bytes(b"sidecar")
    (root / "apps" / "apps" / "shellhttpd" / "README").write_bytes(b"stray")
    with Bundle.open(root) as b:
        assert b.commit_problem(COMMIT) is None
        assert b.commit_problem("cd" * 32) is not None
        assert "not in ostree_repo" in (b.commit_problem("cd" * 32) or "")
        assert set(b.apps_present()) == {w.uri for w in written.values()}
        for w in written.values():
            assert b.app_problem(w.name, w.uri) is None
        other = written["listed"].uri.replace("listed@", "other@")
        assert "not in the bundle" in (b.app_problem("other", other) or "")
        assert b.problems == {}


def test_no_bundle_is_14(tmp_path: Path) -> None:
    with pytest.raises(MetadataMissingError):
        Bundle.open(tmp_path / "nothing")
    (tmp_path / "link").symlink_to(tmp_path)
    with pytest.raises(MetadataMissingError, match="symbolic link"):
        Bundle.open(tmp_path / "link")


def test_symlinked_apps_dir(bundle_copy, tmp_path: Path) -> None:
    root, written = bundle_copy()
    real = tmp_path / "elsewhere"
    (root / "apps").rename(real)
    (root / "apps").symlink_to(real)
    w = written["shellhttpd"]
    with Bundle.open(root) as b:
        assert b.apps_present() == {}
        assert "symbolic link" in (b.app_problem(w.name, w.uri) or "")
        with pytest.raises(UnsafePathError, match="symbolic link"):
            b.open_blob(w.manifest_digest.split(":")[1], 1 << 20)


def test_symlinked_commit_object_and_dirs(bundle_copy) -> None:
    root, _ = bundle_copy()
    obj = root / "ostree_repo" / "objects" / COMMIT[:2] / f"{COMMIT[2:]}.commit"
    obj.unlink()
    obj.symlink_to("/etc/hostname")
    with Bundle.open(root) as b:
        assert "symbolic link" in (b.commit_problem(COMMIT) or "")
    obj.unlink()
    os.mkfifo(obj)
    with Bundle.open(root) as b:
        assert "not a regular file" in (b.commit_problem(COMMIT) or "")


def test_uri_problems(bundle_copy) -> None:
    root, written = bundle_copy()
    w = written["shellhttpd"]
    h = w.manifest_digest.split(":")[1]
    uri_file = root / "apps" / "apps" / "shellhttpd" / h / "uri"
    # The uri names another digest than its directory: not a presence marker.
    uri_file.write_text(w.uri[:-4] + "0000")
    with Bundle.open(root) as b:
        assert b.app_problem(w.name, w.uri) is not None
        assert "names" in (b.app_problem(w.name, w.uri) or "")
    uri_file.unlink()
    uri_file.symlink_to("/etc/shadow")
    with Bundle.open(root) as b:
        assert "symbolic link" in (b.app_problem(w.name, w.uri) or "")
    uri_file.unlink()
    with Bundle.open(root) as b:
        assert "not in the bundle" in (b.app_problem(w.name, w.uri) or "")


def test_blob_names_checked(bundle_copy) -> None:
    root, _ = bundle_copy()
    with Bundle.open(root) as b:
        for bad in ("../../tuf/targets.json", "/etc/passwd", "AB" * 32, "a" * 63, "a\0"):
            with pytest.raises(UnsafePathError):
                b.open_blob(bad, 100)


def _entry(uris: dict[str, str], commit: str = COMMIT, version: int = 1) -> dict:
    return {
        "hashes": {"sha256": commit},
        "length": 0,
        "custom": {
            "targetFormat": "OSTREE",
            "version": str(version),
            "hardwareIds": ["hw"],
            "tags": ["main"],
            "docker_compose_apps": {a: {"uri": u} for a, u in uris.items()},
        },
    }


def test_selection_against_real_bundle(bundle_copy) -> None:
    root, written = bundle_copy("no-uri")  # shellhttpd has no uri file: not present
    uris = {n: w.uri for n, w in written.items()}
    targets = {"t1": _entry({"listed": uris["listed"]}), "t2": _entry(uris, version=2)}
    dev = DeviceFacts("hw", ("main",))
    with Bundle.open(root) as b:
        sel = select_target(targets, None, dev, b)
        cand, action = sel.require()
        assert cand.target.name == "t1" and action is Action.INSTALL
        assert "app shellhttpd" in sel.rejections[0].reason
        only = select_target({"t2": targets["t2"]}, None, dev, b)
        with pytest.raises(ContentMissingError, match="shellhttpd"):
            only.require()
        # Shortlisting the present app makes t2 installable.
        short = DeviceFacts("hw", ("main",), compose_apps=("listed",))
        assert select_target(targets, None, short, b).require()[0].target.name == "t2"
