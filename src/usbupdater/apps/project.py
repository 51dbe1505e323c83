"""Compose project names: an app's name is its project's name, so it must be a valid one.

compose-spec (04-version-and-name.md, "name" top-level element): a project name holds only
lower-case letters, decimal digits, dashes and underscores, and starts with a letter or digit.
`docker compose` (v2, LmP's default) refuses any other `--project-name`; v1 silently rewrote it.

Not mapped: composectl and aktualizr-lite pass no project name (they run `docker compose up -d
--remove-orphans` in `compose_apps_root/<app>`, composeapp pkg/compose/start.go), so compose
derives one from the directory by lower-casing it and dropping other characters. Two apps
("App", "app") could then share one project, and the project label would no longer name the
app that usbupdater looks containers up by; a clear refusal is safer than that mapping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import yaml

from usbupdater.apps.members import COMPOSE_FILE
from usbupdater.errors import VerificationError

CONFIG_HASH_LABEL = "io.compose-spec.config-hash"  # compose's hash of a service's config
SERVICE_LABEL = "com.docker.compose.service"

PROJECT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


class InvalidAppNameError(VerificationError):
    """A signed app name that cannot be a compose project name.

    80 (not 15): the bundle's metadata verified and is not what is wrong; the signed app cannot
    be installed as signed, like any other app whose content does not make a runnable project,
    and it is refused by the same verification `check` and `install` both run, naming the app.
    """


def check_project_name(app: str) -> None:
    """Raise InvalidAppNameError unless `app` is a valid compose project name."""
    if not PROJECT_NAME.fullmatch(app):
        raise InvalidAppNameError(
            f"app {app!r}: not a valid compose project name (lower-case letters, digits, '-' and"
            " '_', starting with a letter or digit), so `docker compose` cannot run it"
        )


# The files `docker compose` (v2) reads by itself in a project directory: the first of the
# compose names there, then the first override name (compose-go cli/options.go,
# DefaultFileNames / DefaultOverrideFileNames); v1 reads docker-compose.yml (or .yaml) and
# docker-compose.override.yml. usbupdater runs docker-compose.yml plus the override it writes,
# `docker-compose.override.yml`; a bundle that brings any other of these names would make a
# hand-run `docker compose up -d` run something else (or lose its own override), so it is refused.

OVERRIDE_FILE = "docker-compose.override.yml"
DISCOVERED_NAMES = frozenset(
    {
        "compose.yaml",
        "compose.yml",
        "docker-compose.yaml",
        "compose.override.yml",
        "compose.override.yaml",
        OVERRIDE_FILE,
        "docker-compose.override.yaml",
    }
)


def check_bundle_member(app: str, name: str) -> None:
    """Raise VerificationError when a bundle's top-level file would change what compose runs."""
    if name in DISCOVERED_NAMES:
        raise VerificationError(
            f"app {app}: bundle has {name}, which compose would read besides {COMPOSE_FILE} and"
            f" the {OVERRIDE_FILE} usbupdater writes (bundles hold one compose file)"
        )


MAX_COMPOSE_NODES = 100_000  # a real compose file has a few hundred


def expanded_nodes(doc: Any, limit: int) -> int:
    """How many nodes `doc` has once every alias is expanded (counting stops past `limit`).

    Sizes are memoised per shared object, so a structure of exponential expanded size is
    measured in time linear in its distinct nodes.
    """
    sizes: dict[int, int] = {}

    def size(node: Any, depth: int) -> int:
        if depth > 200:  # deeper than any compose file; also keeps recursion bounded
            return limit + 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        total = 1
        children: Any = ()
        if isinstance(node, dict):
            children = [*node.keys(), *node.values()]
        elif isinstance(node, list):
            children = node
        for child in children:
            total += size(child, depth + 1)
            if total > limit:
                break
        if isinstance(node, (dict, list)):
            sizes[key] = total
        return total

    return size(doc, 0)


class ComposeError(ValueError):
    """The compose file cannot be used; str() is the reason."""


@dataclass(frozen=True)
class ComposeService:
    """A service as the compose file declares it (its image not yet checked to be pinned)."""

    name: str
    image: Any  # the `image:` value as written
    config_hash: Optional[str]  # the CONFIG_HASH_LABEL label's value


_YamlLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_compose(data: bytes) -> tuple[str, list[ComposeService]]:
    """(`version` or "", services) of a compose file; the one YAML loader of compose files, run
    once at verification (the result is kept in the app's record). Raises ComposeError."""
    try:
        doc = yaml.load(data, Loader=_YamlLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise ComposeError(f"is not YAML: {' '.join(str(exc).split())}") from None
    if expanded_nodes(doc, MAX_COMPOSE_NODES) > MAX_COMPOSE_NODES:
        # YAML aliases are shared here, but compose expands them (a "billion laughs" file
        # is 1 KiB on the stick and gigabytes in docker-compose at `run`).
        raise ComposeError(f"expands to more than {MAX_COMPOSE_NODES} YAML nodes")
    services = doc.get("services") if isinstance(doc, dict) else None
    if not isinstance(services, dict) or not services:
        raise ComposeError("has no services")
    out = []
    for name, body in services.items():
        body = body if isinstance(body, Mapping) else {}
        out.append(ComposeService(str(name), body.get("image"), _label(body, CONFIG_HASH_LABEL)))
    version = doc.get("version")
    return ("" if version is None else str(version)), out


def _label(body: Mapping[str, Any], key: str) -> Optional[str]:
    labels = body.get("labels")
    if isinstance(labels, Mapping):
        v = labels.get(key)
        return str(v) if v is not None else None
    if isinstance(labels, list):
        for item in labels:
            k, _, v = str(item).partition("=")
            if k == key:
                return v
    return None
