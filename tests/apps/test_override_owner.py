"""Which compose projects usbupdater started: only an override it generated counts (a person's
own `docker-compose.override.yml` in an app directory must not make their project ours)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from usbupdater.apps.runner import is_generated_override

TAG = "hub.foundries.io/factory/web:sha256-" + "a" * 64


def write(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_generated_override_is_recognised(tmp_path: Path) -> None:
    doc = {"version": "3.8", "services": {"web": {"image": TAG}}}
    assert is_generated_override(write(tmp_path / "o.yml", doc))
    port = {"services": {"a": {"image": "localhost:5000/x/y:sha256-" + "0" * 64}}}
    assert is_generated_override(write(tmp_path / "p.yml", port))


def test_hand_written_overrides_are_not(tmp_path: Path) -> None:
    cases = [
        {"services": {"web": {"image": "nginx:latest"}}},
        {"services": {"web": {"image": TAG, "ports": ["80:80"]}}},
        {"services": {"web": {"image": TAG}}, "volumes": {"v": {}}},
        ["not", "an", "object"],
    ]
    for i, doc in enumerate(cases):
        assert not is_generated_override(write(tmp_path / f"{i}.yml", doc)), doc
    (tmp_path / "yaml.yml").write_text("services:\n  web:\n    image: nginx\n")
    assert not is_generated_override(tmp_path / "yaml.yml")
    assert not is_generated_override(tmp_path / "missing.yml")


def test_a_link_is_not_followed(tmp_path: Path) -> None:
    real = write(tmp_path / "real.yml", {"services": {"web": {"image": TAG}}})
    os.symlink(real, tmp_path / "link.yml")
    assert not is_generated_override(tmp_path / "link.yml")
