"""Compose projects: safe extraction of the verified bundle, the image override, up and down.

Digest-pinned `image:` references cannot resolve on stock dockerd (it registers tags only, and
writing its `repositories.json` needs an engine restart). The signed `docker-compose.yml` is
therefore extracted unchanged, and a generated `docker-compose.override.yml` beside it maps each
service to the local tag its verified image was loaded under (engine.local_tag). Nothing else in
the service changes, so the config-hash label and everything the user wrote stay as signed.

The override's name is the one `docker-compose` (v1) and `docker compose` (v2) merge by
themselves, so `docker compose up -d` typed in `compose_apps_root/<app>` (what composectl runs,
composeapp pkg/compose/start.go) starts the same containers offline. usbupdater itself still
names both files with `-f`: what it runs then cannot depend on other files in the directory, and
it is exactly what compose discovers on its own (verification refuses bundles that bring another
compose or override file, apps.project). Projects written by earlier usbupdater versions used
`.usbupdater-images.yml`: it is used while it is the only override, and removed when the new
override is written.

Extraction reads the tgz from the store through its digest check and writes into a temporary
directory, swapped in only once the whole archive matched. Members follow the one rule of
`apps.members` (checked at verification too, so what installed also extracts); they are created
with an openat-style walk that never follows a link.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Optional

from usbupdater import proc
from usbupdater.apps.engine import image_ids, local_tag
from usbupdater.apps.health import ServiceExpectation
from usbupdater.apps.members import (
    COMPOSE_FILE,
    DEFAULT_LIMITS,
    Limits,
    MemberError,
    scan_bundle,
    write_member,
)
from usbupdater.apps.model import VerifiedApp, VerifiedImage
from usbupdater.apps.project import OVERRIDE_FILE as OVERRIDE_FILE
from usbupdater.apps.store import AppStore
from usbupdater.apps.streams import ChunkReader, GzipError
from usbupdater.errors import VerificationError
from usbupdater.fsutil import fsync_dir

# the override's name before docker-compose.override.yml
LEGACY_OVERRIDE_FILE = ".usbupdater-images.yml"
COMPOSE_TIMEOUT = 600.0


def extract_bundle(
    store: AppStore, app: VerifiedApp, dest: Path, limits: Limits = DEFAULT_LIMITS
) -> None:
    """Extract the app's verified bundle into `dest` (replacing it).

    Members go through `members.scan_bundle` (the rule `install` verified) and are created by
    `members.write_member` below an fd of the temporary directory, never through a link.
    """
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{dest.name}.new"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o755)
    try:
        root_fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            raw = ChunkReader(store.read_verified(app.bundle))
            for m, data in scan_bundle(raw, limits):
                write_member(root_fd, m, data)
            os.fsync(root_fd)
        except (MemberError, GzipError) as exc:
            raise VerificationError(f"app {app.name}: bundle {exc}") from None
        except (tarfile.TarError, EOFError, OSError) as exc:
            if isinstance(exc.__context__, VerificationError):
                raise exc.__context__ from None
            raise VerificationError(f"app {app.name}: bundle is not a valid tgz: {exc}") from None
        finally:
            os.close(root_fd)
        compose_path = tmp / COMPOSE_FILE
        if compose_path.is_symlink() or not compose_path.is_file():
            raise VerificationError(f"app {app.name}: bundle has no {COMPOSE_FILE}")
        old = parent / f".{dest.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        fsync_dir(parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def expectations(
    app: VerifiedApp, ids: Optional[Callable[[VerifiedImage], Iterable[str]]] = None
) -> list[ServiceExpectation]:
    """What each service must run, from the app's record (its compose file was parsed once, at
    verification).

    `ids` gives the IDs an engine may report for an image (engine.image_ids); by default the
    config, manifest and index digests.
    """
    ids_of = ids if ids is not None else partial(image_ids, None)
    out = []
    for s in app.services:
        img = app.images[s.image]
        out.append(ServiceExpectation(s.name, img.image_id, s.config_hash, frozenset(ids_of(img))))
    return out


def write_override(app: VerifiedApp, project_dir: Path) -> Path:
    """Write the override mapping each service to its image's local tag (JSON is YAML)."""
    doc: dict[str, Any] = {}
    if app.compose_version:
        doc["version"] = app.compose_version  # compose v1 refuses files of different versions
    doc["services"] = {s.name: {"image": local_tag(app.images[s.image])} for s in app.services}
    path = project_dir / OVERRIDE_FILE
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    legacy = project_dir / LEGACY_OVERRIDE_FILE
    if legacy.is_file() or legacy.is_symlink():
        legacy.unlink()  # an older usbupdater's override: the new one replaces it
    return path


class Compose:
    """`docker compose` / `docker-compose` for one project directory (project name = app)."""

    def __init__(
        self,
        command: Sequence[str],
        project_dir: Path,
        env: Optional[Mapping[str, str]] = None,
        timeout: float = COMPOSE_TIMEOUT,
    ) -> None:
        self.command = tuple(command)
        self.project_dir = project_dir
        self.project = project_dir.name
        self.env = dict(env) if env is not None else None
        self.timeout = timeout

    def args(self, *sub: str) -> list[str]:
        """The command line: global options (valid for v1 and v2) before the subcommand."""
        files = ["-f", str(self.project_dir / COMPOSE_FILE)]
        for name in (OVERRIDE_FILE, LEGACY_OVERRIDE_FILE):
            if (self.project_dir / name).exists():
                files += ["-f", str(self.project_dir / name)]
                break
        return [
            *self.command,
            "--project-name",
            self.project,
            "--project-directory",
            str(self.project_dir),
            *files,
            *sub,
        ]

    def run(self, *sub: str) -> str:
        """stdout of one compose call; a failure is "<compose> <sub> <app> failed (exit N)"
        (its stderr only in the debug log), a timeout kills compose's whole process group."""
        what = f"{' '.join(self.command)} {sub[0]} {self.project}"
        done = proc.run(self.args(*sub), what, self.timeout, env=self.env, cwd=self.project_dir)
        return done.stdout

    def up(self) -> None:
        self.run("up", "-d", "--remove-orphans", "--no-build")

    def down(self) -> None:
        self.run("down", "--remove-orphans")
