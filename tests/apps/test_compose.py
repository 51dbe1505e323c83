"""Bundle extraction safety, the image override, compose arguments, the docker-archive stream."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.apps.conftest import content_of
from usbupdater.apps.compose import (
    OVERRIDE_FILE,
    Compose,
    Limits,
    expectations,
    extract_bundle,
    write_override,
)
from usbupdater.apps.engine import archive_chunks, local_tag
from usbupdater.apps.store import AppContent, AppStore
from usbupdater.errors import VerificationError
from usbupdater.sim import apps as sa


def stored(tmp_path: Path, spec: sa.AppSpec) -> tuple[AppStore, AppContent]:
    src = tmp_path / "stick"
    w = sa.write_apps(src, [spec])[spec.name]
    app = content_of(src, w)
    store = AppStore(tmp_path / "store")
    store.add_apps(src, [app])
    return store, app


def test_extract_and_override(tmp_path: Path) -> None:
    spec = sa.AppSpec("a1", files={"conf/x.txt": b"hi"})
    store, app = stored(tmp_path, spec)
    dest = tmp_path / "compose" / "a1"
    compose = extract_bundle(store, app, dest)
    assert (dest / "docker-compose.yml").read_bytes() == compose
    assert (dest / "conf/x.txt").read_bytes() == b"hi"
    write_override(app, compose, dest)
    over = yaml.safe_load((dest / OVERRIDE_FILE).read_text())
    assert over == {"version": "3.8", "services": {"main": {"image": local_tag(app.images[0])}}}
    (exp,) = expectations(app, compose)
    assert exp.service == "main" and exp.image_id == app.images[0].config.digest
    assert exp.config_hash and len(exp.config_hash) == 64
    # extracting again replaces the directory
    (dest / "stray").write_text("x")
    extract_bundle(store, app, dest)
    assert not (dest / "stray").exists()
    assert [p.name for p in dest.parent.iterdir()] == ["a1"]


@pytest.mark.parametrize("fault", ["tgz-dotdot", "tgz-absolute", "no-compose", "tgz-many-members"])
def test_unsafe_bundles_refused(tmp_path: Path, fault: str) -> None:
    store, app = stored(tmp_path, sa.AppSpec("a1", faults=frozenset({fault})))
    dest = tmp_path / "compose" / "a1"
    with pytest.raises(VerificationError):
        extract_bundle(store, app, dest, Limits(members=1000))
    assert not dest.exists() and not list(dest.parent.iterdir())


def test_bomb_refused_by_limits(tmp_path: Path) -> None:
    store, app = stored(tmp_path, sa.AppSpec("a1", faults=frozenset({"tgz-bomb"})))
    with pytest.raises(VerificationError, match="over the 1048576 allowed"):
        extract_bundle(store, app, tmp_path / "c" / "a1", Limits(member=1 << 20))
    with pytest.raises(VerificationError, match="unpacks to more than 1048576"):
        extract_bundle(store, app, tmp_path / "c" / "a1", Limits(member=1 << 30, total=1 << 20))


def test_corrupt_tgz_refused_and_old_kept(tmp_path: Path) -> None:
    store, app = stored(tmp_path, sa.AppSpec("a1"))
    dest = tmp_path / "compose" / "a1"
    extract_bundle(store, app, dest)
    sa.corrupt_blob(store.root, app.bundle.digest)
    with pytest.raises(VerificationError):
        extract_bundle(store, app, dest)
    assert (dest / "docker-compose.yml").is_file()


def test_compose_arguments(tmp_path: Path) -> None:
    d = tmp_path / "a1"
    d.mkdir()
    (d / "docker-compose.yml").write_text("services: {}\n")
    (d / OVERRIDE_FILE).write_text("{}\n")
    files = ["-f", f"{d}/docker-compose.yml", "-f", f"{d}/{OVERRIDE_FILE}"]
    common = ["--project-name", "a1", "--project-directory", str(d), *files]
    v1 = Compose(("docker-compose",), d).args("up", "-d")
    assert v1 == ["docker-compose", *common, "up", "-d"]
    v2 = Compose(("/usr/bin/docker", "compose"), d).args("down")
    assert v2 == ["/usr/bin/docker", "compose", *common, "down"]


def test_archive_stream(tmp_path: Path) -> None:
    spec = sa.AppSpec("a1", services={"s1": sa.ServiceSpec(), "s2": sa.ServiceSpec()})
    store, app = stored(tmp_path, spec)
    data = b"".join(archive_chunks(store, app.images))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert names[0] == "manifest.json"
    assert len(names) == len(set(names))  # the shared busybox layer goes once
    assert [m["RepoTags"][0] for m in manifest] == [local_tag(i) for i in app.images]
    for m in manifest:
        assert m["Config"] in names and all(x in names for x in m["Layers"])
