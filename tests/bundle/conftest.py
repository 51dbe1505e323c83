"""Bundles built once per session with the simulation kit; tests copy and break them."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from usbupdater.sim.apps import AppSpec, ServiceSpec, WrittenApp, write_apps

GOOD_APPS = [
    AppSpec(
        "shellhttpd",
        {
            "web": ServiceSpec(cmd=("httpd", "-f", "-p", "8080"), healthcheck=("true",)),
            "side": ServiceSpec(),
        },
        files={"etc/conf.txt": b"hello\n"},
    ),
    AppSpec("listed", manifest_list=True),
]
COMMIT = "ab" * 32


def _fake_commit(root: Path, commit: str = COMMIT) -> None:
    """The commit object's presence is all the bundle checks (ostree verifies its content)."""
    obj = root / "ostree_repo" / "objects" / commit[:2] / f"{commit[2:]}.commit"
    obj.parent.mkdir(parents=True, exist_ok=True)
    obj.write_bytes(b"commit")


@pytest.fixture(scope="session")
def built(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str], tuple[Path, dict[str, WrittenApp]]]:
    """Build a named bundle variant once; returns (template dir, written apps)."""
    cache: dict[str, tuple[Path, dict[str, WrittenApp]]] = {}

    def get(fault: str) -> tuple[Path, dict[str, WrittenApp]]:
        if fault not in cache:
            root = tmp_path_factory.mktemp(f"bundle-{fault or 'good'}")
            faults = frozenset({fault}) if fault else frozenset()
            apps = [
                AppSpec(
                    a.name,
                    a.services,
                    manifest_list=a.manifest_list,
                    files=a.files,
                    faults=faults if i == 0 else frozenset(),
                )
                for i, a in enumerate(GOOD_APPS)
            ]
            cache[fault] = (root, write_apps(root / "apps", apps))
            _fake_commit(root)
            (root / "tuf").mkdir()
            (root / "tuf" / "targets.json").write_text("{}")
        return cache[fault]

    return get


@pytest.fixture
def bundle_copy(
    built: Callable[[str], tuple[Path, dict[str, WrittenApp]]], tmp_path: Path
) -> Callable[..., tuple[Path, dict[str, WrittenApp]]]:
    """A private copy of a built variant that a test may break further."""

    def make(fault: str = "") -> tuple[Path, dict[str, WrittenApp]]:
        src, written = built(fault)
        dst = tmp_path / "bundle"
        shutil.copytree(src, dst, symlinks=True)
        return dst, written

    return make
