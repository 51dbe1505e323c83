"""Bundle extraction safety, the image override, compose arguments, the docker-archive stream."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import BinaryIO

import pytest
import yaml

from tests.apps.conftest import StickDir, content_of, image0
from usbupdater.apps.compose import (
    OVERRIDE_FILE,
    Compose,
    expectations,
    extract_bundle,
    write_override,
)
from usbupdater.apps.engine import archive_chunks, local_tag
from usbupdater.apps.members import Limits
from usbupdater.apps.model import VerifiedApp
from usbupdater.apps.store import AppStore
from usbupdater.apps.verify import verify_app
from usbupdater.errors import ExitCode, VerificationError
from usbupdater.sim import apps as sa


def stored(tmp_path: Path, spec: sa.AppSpec) -> tuple[AppStore, VerifiedApp]:
    src = tmp_path / "stick"
    w = sa.write_apps(src, [spec])[spec.name]
    app = content_of(src, w)
    store = AppStore(tmp_path / "store")
    store.add_apps(StickDir(src), [app])
    return store, app


def w_compose(tmp_path: Path) -> bytes:
    """The compose file sim wrote into the stick's only app bundle."""
    bundle = next((tmp_path / "stick" / "apps").glob("*/*/*.tgz"))
    with tarfile.open(bundle) as tar:
        f = tar.extractfile("docker-compose.yml") or tar.extractfile("./docker-compose.yml")
        assert f is not None
        return f.read()


def test_extract_and_override(tmp_path: Path) -> None:
    spec = sa.AppSpec("a1", files={"conf/x.txt": b"hi"})
    store, app = stored(tmp_path, spec)
    dest = tmp_path / "compose" / "a1"
    extract_bundle(store, app, dest)
    assert (dest / "docker-compose.yml").read_bytes() == w_compose(tmp_path)
    assert (dest / "conf/x.txt").read_bytes() == b"hi"
    write_override(app, dest)
    over = yaml.safe_load((dest / OVERRIDE_FILE).read_text())
    assert over == {"version": "3.8", "services": {"main": {"image": local_tag(image0(app))}}}
    (exp,) = expectations(app)
    assert exp.service == "main" and exp.image_id == image0(app).config.digest
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


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mtime = kind, link, 0
    data = b"x\n" if kind == tarfile.REGTYPE else b""
    ti.size = len(data)
    return ti, data


class _Dir:
    """Blobs straight from a written app store (what `install` reads through safeio)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def open_blob(self, hexdigest: str, max_size: int) -> BinaryIO:
        return open(sa.blob_path(self.root, hexdigest), "rb", buffering=0)


SYM = tarfile.SYMTYPE
HOSTILE_BUNDLES = {
    "symlink-chain": (
        [
            _member("d", SYM, "."),
            _member("d/e", SYM, ".."),
            _member("e/f", SYM, ".."),
            _member("e/f/x"),
        ],
        "under the symbolic link",
    ),
    "hard-link": ([_member("h", tarfile.LNKTYPE, "docker-compose.yml")], "hard link"),
    "duplicate-compose": ([_member("./docker-compose.yml")], "more than once"),
    "fifo": ([_member("p", tarfile.FIFOTYPE)], "device or FIFO"),
    "absolute-link": ([_member("l", SYM, "/etc/shadow")], "absolute link"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_BUNDLES))
def test_install_refuses_what_run_refuses(tmp_path: Path, case: str) -> None:
    """One rule: the bundle `install` refuses (80) is the one extraction at `run` refuses."""
    members, needle = HOSTILE_BUNDLES[case]
    spec = sa.AppSpec("a1", bundle_members=tuple(members))
    store, app = stored(tmp_path, spec)
    with pytest.raises(VerificationError, match=needle) as info:
        verify_app(_Dir(tmp_path / "stick"), "a1", app.uri, sa.machine_arch())
    assert info.value.code == ExitCode.VERIFICATION_FAILED == 80
    dest = tmp_path / "compose" / "a1"
    with pytest.raises(VerificationError, match=needle):
        extract_bundle(store, app, dest)
    assert not dest.exists() and not list(dest.parent.iterdir())
    assert not (tmp_path / "compose" / "x").exists() and not (tmp_path / "x").exists()


def test_dot_slash_bundle_accepted_by_both(tmp_path: Path) -> None:
    members = (
        _member("./", tarfile.DIRTYPE),
        _member("./conf/./a"),
        _member("./ln", SYM, "conf/a"),
    )
    store, app = stored(tmp_path, sa.AppSpec("a1", bundle_members=members))
    verified = verify_app(_Dir(tmp_path / "stick"), "a1", app.uri, sa.machine_arch())
    dest = tmp_path / "compose" / "a1"
    extract_bundle(store, app, dest)
    assert verified == app
    assert (dest / "docker-compose.yml").read_bytes() == w_compose(tmp_path)
    assert (dest / "ln").read_bytes() == b"x\n" and (dest / "ln").is_symlink()


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
    data = b"".join(archive_chunks(store, app.images.values()))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert names[0] == "manifest.json"
    assert len(names) == len(set(names))  # the shared busybox layer goes once
    assert [m["RepoTags"][0] for m in manifest] == [local_tag(i) for i in app.images.values()]
    for m in manifest:
        assert m["Config"] in names and all(x in names for x in m["Layers"])
