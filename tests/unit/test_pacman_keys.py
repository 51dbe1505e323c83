"""aktualizr-lite's `[pacman]` keys that change behaviour (issue 14 item 7): `type` deduced as
aktualizr-lite does, `docker_prune` parsed as it does, `reset_apps` apps kept; and the store
reader that recognises preloaded apps refuses links and oversize blobs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from usbupdater import config
from usbupdater.apps.preload import StoreBlobSource
from usbupdater.apps.prune_images import target_app_uris
from usbupdater.apps.store import AppStore
from usbupdater.safeio import UnsafePathError
from usbupdater.target import TargetRecord

HW = {"provision": {"primary_ecu_hardware_id": "hw"}}


def _cfg(**pacman: Any) -> config.Config:
    return config.from_tables({**HW, "pacman": pacman})


def test_type_unset_or_none_is_deduced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "default_pacman_type", lambda: "ostree")
    assert _cfg().pacman.type == "ostree"
    assert _cfg(type="none").pacman.type == "ostree"
    assert _cfg(type="ostree+compose_apps").pacman.type == "ostree+compose_apps"
    with pytest.raises(config.ConfigError, match="type"):
        _cfg(type="debian")


def test_type_deduction_needs_dockerd_and_docker(tmp_path: Path) -> None:
    dockerd, docker = tmp_path / "dockerd", tmp_path / "docker"
    probes = ((tmp_path / "nope", dockerd), (docker,))
    assert config.default_pacman_type(probes) == "ostree"
    dockerd.touch()
    assert config.default_pacman_type(probes) == "ostree"  # the client is missing
    docker.touch()
    assert config.default_pacman_type(probes) == "ostree+compose_apps"


@pytest.mark.parametrize(
    ("value", "on"),
    [(None, True), ("1", True), ("yes", True), ("0", False), ("false", False),
     ("FALSE", False), (False, False), (True, True), ("", True)],
)  # fmt: skip
def test_docker_prune_like_aktualizr_lite(value: Any, on: bool) -> None:
    cfg = _cfg() if value is None else _cfg(docker_prune=value)
    assert cfg.pacman.docker_prune is on


def test_reset_apps_are_kept_with_the_running_ones() -> None:
    custom = {
        "docker_compose_apps": {
            "a": {"uri": "h/f/a@sha256:" + "a" * 64},
            "b": {"uri": "h/f/b@sha256:" + "b" * 64},
            "c": {"uri": "h/f/c@sha256:" + "c" * 64},
        }
    }
    t = TargetRecord("t", 1, "0" * 64, {"a": "h/f/a@sha256:" + "a" * 64}, custom)
    assert set(target_app_uris(t, None)) == {"a"}
    assert set(target_app_uris(t, ())) == {"a"}
    assert set(target_app_uris(t, ("b", "zz"))) == {"a", "b"}
    assert set(target_app_uris(t, ("*",))) == {"a", "b", "c"}


def test_store_blob_source_refuses_links_and_oversize(tmp_path: Path) -> None:
    store = AppStore(tmp_path / "store")
    store.blob_dir.mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.write_bytes(b"x" * 10)
    link_hex, big_hex, ok_hex = "1" * 64, "2" * 64, "3" * 64
    os.symlink(outside, store.blob_dir / link_hex)
    (store.blob_dir / big_hex).write_bytes(b"y" * 100)
    (store.blob_dir / ok_hex).write_bytes(b"z" * 10)
    src = StoreBlobSource(store)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        src.open_blob(link_hex, 100)
    with pytest.raises(UnsafePathError, match="more than"):
        src.open_blob(big_hex, 50)
    with pytest.raises(UnsafePathError):
        src.open_blob("../secret", 50)
    with pytest.raises(FileNotFoundError):
        src.open_blob("4" * 64, 50)
    with src.open_blob(ok_hex, 10) as fh:
        assert fh.read() == b"z" * 10
    # read to its end, it does not hash to its name: listed as corrupt (for `repair`)
    assert src.corrupt == {link_hex, big_hex, ok_hex}
