"""`[pacman] docker_prune`: after a confirmed update, drop engine images no target needs.

aktualizr-lite (src/composeappmanager.cc `finalizeInstall`/`install`: `if (cfg_.docker_prune)
app_engine_->prune(...)`; src/docker/dockerclient.cc `pruneImages`: `POST /images/prune` with
`dangling=false` and `label!=aktualizr-no-prune`) removes every image no container uses unless it
carries the label `aktualizr-no-prune`; the key is on unless it is "0" or "false"
(`ComposeAppManager::Config`). usbupdater does the same, more carefully:

- images of every app of the current target and of the rollback target (the one it replaced,
  which a later rollback restores from the engine as much as from the store) and of the current
  target's `[pacman] reset_apps` apps are kept, by config digest and by manifest digest (the ID
  an engine with the containerd image store reports);
- an image any container uses (running or stopped) is never touched, nor one labelled
  `aktualizr-no-prune`; nothing is forced, so the engine itself refuses to remove an image in
  use; containers and volumes are never pruned;
- bounded: at most MAX_IMAGES removals and BUDGET seconds per run, each engine call capped at
  CALL_TIMEOUT seconds; every removal is logged. A failure never fails the update.

When a kept app's content cannot be read from the store, nothing is pruned (its images could not
be told apart from unused ones).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional

import docker
import docker.errors

from usbupdater import log
from usbupdater.apps.model import VerifiedApp
from usbupdater.apps.store import AppStore
from usbupdater.config import Config, PacmanConfig
from usbupdater.errors import UpdaterError
from usbupdater.target import TargetRecord

logger = log.get_logger("prune-images")
NO_PRUNE_LABEL = "aktualizr-no-prune"
MAX_IMAGES = 100
BUDGET = 120.0
CALL_TIMEOUT = 60


def target_app_uris(target: TargetRecord, reset_apps: Optional[Iterable[str]]) -> dict[str, str]:
    """The apps a target runs plus its `[pacman] reset_apps` apps (aktualizr-lite
    `getRequiredApps`: "*" means all of the target's apps)."""
    apps = dict(target.apps)
    names = set(reset_apps or ())
    signed = target.custom.get("docker_compose_apps")
    if names and isinstance(signed, Mapping):
        for name, desc in signed.items():
            uri = desc.get("uri") if isinstance(desc, Mapping) else None
            if isinstance(uri, str) and ("*" in names or name in names):
                apps.setdefault(str(name), uri)
    return apps


def stored_apps_to_keep(
    store: AppStore, target: TargetRecord, pacman: PacmanConfig
) -> list[tuple[str, str]]:
    """(name, uri) the app store keeps after `target` was confirmed: its apps, plus its
    `reset_apps` apps the store has (aktualizr-lite src/composeappmanager.cc `handleRemovedApps`
    prunes the store down to `getRequiredApps`: compose_apps + reset_apps)."""
    uris = target_app_uris(target, pacman.reset_apps)
    return sorted(
        (n, u) for n, u in uris.items() if n in target.apps or store.has_app_version(n, u)
    )


def kept_image_ids(apps: Iterable[VerifiedApp]) -> set[str]:
    """Every ID an engine may report for the apps' images (config, manifest and index digests)."""
    out: set[str] = set()
    for app in apps:
        for img in app.images.values():
            out.add(img.config.digest)
            out.update(b.digest for b in img.blobs)  # layers are never IDs: harmless
    return out


def prune_images(
    client: docker.DockerClient,
    keep: set[str],
    *,
    max_images: int = MAX_IMAGES,
    budget: float = BUDGET,
    clock: Callable[[], float] = time.monotonic,
) -> list[str]:
    """Remove images not in `keep`, used by no container and not labelled NO_PRUNE_LABEL;
    return the IDs removed."""
    deadline = clock() + budget
    api: Any = client.api
    containers = api.containers(all=True)
    used = {str(c.get(k, "")) for c in containers for k in ("ImageID", "Image")}
    removed: list[str] = []
    for img in api.images():
        iid = str(img.get("Id", ""))
        labels = img.get("Labels") or {}
        if not iid or iid in keep or iid in used or NO_PRUNE_LABEL in labels:
            continue
        if len(removed) >= max_images or clock() >= deadline:
            logger.warning(
                "image pruning stopped early", removed=len(removed), limit=max_images,
                budget_s=budget,
            )  # fmt: skip
            break
        tags = [t for t in img.get("RepoTags") or () if t and t != "<none>:<none>"]
        try:
            for tag in tags:  # untagging the last name deletes the image
                api.remove_image(tag, force=False, noprune=False)
            try:
                api.inspect_image(iid)
            except docker.errors.ImageNotFound:
                pass
            else:
                api.remove_image(iid, force=False, noprune=False)
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:  # e.g. 409: in use (a container appeared)
            logger.warning("image not removed", image=iid, reason=str(exc.explanation or exc))
            continue
        logger.info("unused image removed", image=iid, tags=tags)
        removed.append(iid)
    return removed


def prune_after_update(
    cfg: Config, store: AppStore, current: TargetRecord, rollback: Optional[TargetRecord]
) -> list[str]:
    """Prune the engine after `current` was confirmed; never raises (logs instead)."""
    from usbupdater.apps import engine

    try:
        apps: list[VerifiedApp] = []
        for target in (current, rollback):
            if target is None:
                continue
            uris = target_app_uris(target, cfg.pacman.reset_apps)
            for name, uri in sorted(uris.items()):
                if name in target.apps or store.has_app_version(name, uri):
                    apps.append(store.load_app(name, uri))
        keep = kept_image_ids(apps)
        client = engine.connect(cfg.usbupdater.docker_host, timeout=CALL_TIMEOUT)
        try:
            removed = prune_images(client, keep)
        finally:
            client.close()
    except (UpdaterError, OSError, docker.errors.DockerException) as exc:
        reason = exc.reason if isinstance(exc, UpdaterError) else str(exc)
        logger.warning("image pruning skipped", reason=reason)
        return []
    logger.info("image pruning done", removed=len(removed), kept=len(keep))
    return removed
