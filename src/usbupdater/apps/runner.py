"""Start a target's apps from the device store: load, extract, stop the removed, up, wait.

Order matters for "refuse before anything starts": every image is loaded (and so every blob
digest-checked) and every bundle extracted before any project is stopped or started. Apps the
new set does not have are then brought down and their directories removed, each app is brought
up, and one shared deadline bounds the wait for all services to be started (health.decide).
Rollback is the same call with the previous target's apps, read from the store alone.

What is left alone (aktualizr-lite `src/composeappmanager.cc` `getAppsToUpdate`: an app whose URI
did not change and that runs is not touched):
- an app whose project already runs exactly its verified images (same check as the wait, in its
  `compose_apps_root/<app>` directory): not re-extracted, not `up`-ed, its containers keep their
  IDs (LmP's preloaded apps, started by the first boot, survive a rollback to the factory target);
- a project no target involved lists (`known`): usbupdater never takes down what it cannot
  explain (a project started by hand), nor an app in `keep` (`[pacman] reset_apps`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Optional

import docker

from usbupdater import hexdigest
from usbupdater.apps import engine
from usbupdater.apps.compose import (
    LEGACY_OVERRIDE_FILE,
    OVERRIDE_FILE,
    Compose,
    expectations,
    extract_bundle,
    write_override,
)
from usbupdater.apps.health import FAILED, ServiceExpectation, decide
from usbupdater.apps.members import COMPOSE_FILE
from usbupdater.apps.model import VerifiedApp
from usbupdater.apps.store import AppStore
from usbupdater.config import Config
from usbupdater.errors import AdapterError, ContentMissingError


class AppStartError(AdapterError):
    """An app did not start: names the app, the service, why, and its last log lines."""

    def __init__(self, app: str, service: str, why: str, logs: Sequence[str] = ()) -> None:
        tail = f"; last log lines: {' | '.join(logs)}" if logs else ""
        super().__init__(f"app {app}: service {service} {why}{tail}")
        self.app, self.service, self.why, self.logs = app, service, why, list(logs)


@dataclass
class AppsContext:
    """Everything the runner needs: the store, where projects live, the engine, the timeout."""

    store: AppStore
    compose_root: Path
    compose_command: tuple[str, ...]
    client: docker.DockerClient
    compose_env: Optional[Mapping[str, str]] = None  # e.g. DOCKER_HOST for the compose CLI
    start_timeout: float = 120.0
    poll_interval: float = 0.5
    log_lines: int = 10
    sleep: Callable[[float], None] = field(default=time.sleep)
    clock: Callable[[], float] = field(default=time.monotonic)

    @classmethod
    def from_config(cls, cfg: Config) -> AppsContext:
        import os

        host = cfg.usbupdater.docker_host
        env = {**os.environ, "DOCKER_HOST": host} if host else None
        return cls(
            store=AppStore(cfg.pacman.reset_apps_root),
            compose_root=cfg.pacman.compose_apps_root,
            compose_command=cfg.pacman.compose_command,
            client=engine.connect(host),
            compose_env=env,
            start_timeout=cfg.usbupdater.apps_start_timeout,
        )

    def compose(self, app: str) -> Compose:
        return Compose(self.compose_command, self.compose_root / app, self.compose_env)


def installed_projects(ctx: AppsContext) -> list[str]:
    """Apps with a project directory under compose_apps_root."""
    if not ctx.compose_root.is_dir():
        return []
    return sorted(
        p.name
        for p in ctx.compose_root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / COMPOSE_FILE).is_file()
    )


def remove_app(ctx: AppsContext, name: str) -> None:
    """Stop and remove an app's containers, then its project directory."""
    proj = ctx.compose_root / name
    if (proj / COMPOSE_FILE).is_file():
        ctx.compose(name).down()
    for c in engine.project_containers(ctx.client, name):  # left without a project dir
        workdir = (
            (c.get("Config") or {})
            .get("Labels", {})
            .get("com.docker.compose.project.working_dir", "")
        )
        if Path(workdir).parent == ctx.compose_root:
            ctx.client.api.remove_container(c["Id"], force=True)
    shutil.rmtree(proj, ignore_errors=True)


def already_running(ctx: AppsContext, app: VerifiedApp) -> bool:
    """Whether the app's project, in its compose_apps_root directory, runs every service on its
    verified image (and healthy where it has a healthcheck) right now."""
    containers = engine.project_containers(ctx.client, app.name)
    workdir = str(ctx.compose_root / app.name)
    for c in containers:
        labels = (c.get("Config") or {}).get("Labels") or {}
        if labels.get("com.docker.compose.project.working_dir") != workdir:
            return False
    legacy = ctx.compose_root / app.name / LEGACY_OVERRIDE_FILE
    if not containers or legacy.exists() or legacy.is_symlink():
        return False  # a project an older usbupdater left is started again: override renewed
    exp = expectations(app)
    return decide(exp, containers).ok


def started_here(ctx: AppsContext, name: str) -> bool:
    """Whether usbupdater started this project: the override there is one it generated (a
    person's own `docker-compose.override.yml` does not count), or an older version's."""
    project = ctx.compose_root / name
    legacy = project / LEGACY_OVERRIDE_FILE
    return is_generated_override(project / OVERRIDE_FILE) or (
        legacy.is_file() and not legacy.is_symlink()
    )


_TAG = re.compile(rf"^[^\s:@]+(:\d+)?(/[^\s:@]+)*:sha256-{hexdigest.PATTERN}$")


def is_generated_override(path: Path) -> bool:
    """An override as `write_override` writes it: JSON naming only services' images by the
    local tags usbupdater gives verified images (bounded read, no link followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(1 << 20)
        doc = json.loads(data)
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict) or not set(doc) <= {"version", "services"}:
        return False
    services = doc.get("services")
    return isinstance(services, dict) and all(
        isinstance(body, dict)
        and set(body) == {"image"}
        and isinstance(body["image"], str)
        and bool(_TAG.match(body["image"]))
        for body in services.values()
    )


def run_apps(
    ctx: AppsContext,
    apps: Sequence[VerifiedApp],
    *,
    known: Optional[Collection[str]] = None,
    keep: Collection[str] = (),
) -> None:
    """Make exactly `apps` run: raises VerificationError/ContentMissingError before anything
    changes, AdapterError (AppStartError) when an app does not start.

    Projects taken down: those under compose_apps_root that are in `known` (the apps of the
    targets involved: the one started and the one it replaces) or that usbupdater started
    (`started_here`), but not in `apps` or `keep`.
    `known=None` takes down every other project under compose_apps_root (a caller that owns the
    whole directory, e.g. tests of this module).
    """
    for app in apps:
        for b in app.blobs:
            if not ctx.store.has_blob(b):
                raise ContentMissingError(
                    f"app {app.name}: blob {b.digest} is not in the app store"
                )
    running = [a for a in apps if already_running(ctx, a)]
    todo = [a for a in apps if a not in running]
    engine.load_images(ctx.client, ctx.store, [i for a in todo for i in a.images.values()])
    expected: dict[str, list[ServiceExpectation]] = {}
    for app in running:
        expected[app.name] = expectations(app)
    for app in todo:
        proj = ctx.compose_root / app.name
        extract_bundle(ctx.store, app, proj)
        expected[app.name] = expectations(app, partial(engine.image_ids, ctx.store))
        write_override(app, proj)
    wanted = {a.name for a in apps} | set(keep)
    for name in installed_projects(ctx):
        if name not in wanted and (known is None or name in known or started_here(ctx, name)):
            remove_app(ctx, name)
    for app in todo:
        ctx.compose(app.name).up()
    wait_started(ctx, expected)


def wait_started(ctx: AppsContext, expected: Mapping[str, Sequence[ServiceExpectation]]) -> None:
    """Poll until every service of every app is started; fail fast on a dead container."""
    deadline = ctx.clock() + ctx.start_timeout
    pending = dict(expected)
    while True:
        for app, exp in list(pending.items()):
            containers: list[dict[str, Any]] = engine.project_containers(ctx.client, app)
            verdict = decide(exp, containers)
            bad = verdict.failed
            if bad is not None:
                raise _failure(ctx, app, bad.service, bad.reason, bad.container_id)
            if verdict.ok:
                del pending[app]
        if not pending:
            return
        if ctx.clock() >= deadline:
            app, exp = next(iter(pending.items()))
            verdict = decide(exp, engine.project_containers(ctx.client, app))
            status = verdict.failed or verdict.waiting
            assert status is not None
            why = f"not started within {ctx.start_timeout:g}s: {status.reason}"
            raise _failure(ctx, app, status.service, why, status.container_id)
        ctx.sleep(ctx.poll_interval)


def _failure(
    ctx: AppsContext, app: str, service: str, why: str, cid: Optional[str]
) -> AppStartError:
    logs = engine.container_logs(ctx.client, cid, ctx.log_lines) if cid else []
    return AppStartError(app, service, why, logs)


def restore_apps(
    ctx: AppsContext, apps: Mapping[str, str], *, known: Optional[Collection[str]] = None
) -> None:
    """Bring back a previous set of apps ({name: uri}) from the store alone (rollback)."""
    contents = [ctx.store.load_app(name, uri) for name, uri in sorted(apps.items())]
    run_apps(ctx, contents, known=known)


__all__ = ["FAILED", "AppStartError", "AppsContext", "remove_app", "restore_apps", "run_apps"]
