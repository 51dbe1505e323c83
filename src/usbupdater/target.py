"""A target from verified `targets.json`, parsed defensively into a typed value.

Signed metadata is trusted for authenticity, not for shape: a Factory can publish odd custom
fields, and a target we cannot understand must become a rejected candidate with a reason, never
an exception that stops the whole selection. `parse_target` therefore raises only
`InvalidTargetError`, which selection turns into a rejection.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Optional

from usbupdater import hexdigest
from usbupdater.safeio import MAX_NAME

# <host>/<path>@sha256:<hex>; host may carry a port, path has one or more components.
_IMAGE_REF = re.compile(
    r"(?P<host>[A-Za-z0-9.-]+(?::[0-9]+)?)/(?P<path>[a-z0-9._-]+(?:/[a-z0-9._-]+)*)"
    rf"@sha256:(?P<hex>{hexdigest.PATTERN})"
)
_APP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class InvalidTargetError(ValueError):
    """A target (or an app URI) whose fields cannot be used; the message is the reason."""


@dataclass(frozen=True)
class DigestRef:
    """A digest-pinned reference `<host>/<path>@sha256:<hex>` (app URI or compose image)."""

    host: str
    path: str
    hex: str

    @property
    def locator(self) -> str:
        return f"{self.host}/{self.path}"

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def digest(self) -> str:
        return f"sha256:{self.hex}"

    def __str__(self) -> str:
        return f"{self.locator}@{self.digest}"


def parse_ref(ref: str) -> DigestRef:
    """Parse a digest-pinned reference; raise InvalidTargetError when it is not one."""
    m = _IMAGE_REF.fullmatch(ref) if isinstance(ref, str) else None
    if not m or any(p in (".", "..") for p in m["path"].split("/")):
        raise InvalidTargetError(f"{ref!r} is not a <host>/<path>@sha256:<64 hex> reference")
    return DigestRef(m["host"], m["path"], m["hex"])


def check_app_name(name: str) -> None:
    """App names become directory names on the device: plain, bounded, no dots first."""
    if not isinstance(name, str) or not _APP_NAME.fullmatch(name) or len(name) > MAX_NAME:
        raise InvalidTargetError(f"app name {name!r} is not a plain name")


@dataclass(frozen=True)
class FetchedApps:
    """`custom["fetched-apps"]`: which apps CI put in the bundle (aktualizr-lite's rules)."""

    uri: Optional[str]  # None or "": apps were turned off for this offline bundle
    shortlist: tuple[str, ...]  # empty: all of the target's apps


@dataclass(frozen=True)
class Target:
    name: str
    commit: str  # the OSTree commit
    version: int
    hardware_ids: tuple[str, ...]
    tags: tuple[str, ...]
    target_format: str
    apps: Mapping[str, str] = field(default_factory=dict)  # app -> uri
    fetched_apps: Optional[FetchedApps] = None  # None: the field is absent
    custom: Mapping[str, Any] = field(default_factory=dict, repr=False)  # as signed


def _str_list(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidTargetError(f"custom.{what} is not a list of strings")
    return tuple(value)


def _fetched_apps(value: Any) -> Optional[FetchedApps]:
    """aktualizr-lite's reading: a non-object counts as absent; a non-string uri as off."""
    if not isinstance(value, Mapping):
        return None
    uri = value.get("uri")
    uri = uri if isinstance(uri, str) and uri else None
    raw = value.get("shortlist")
    if isinstance(raw, str):
        items = re.split(r"[, ]+", raw)
    elif isinstance(raw, list):
        items = [s for s in raw if isinstance(s, str)]
    else:
        items = []
    return FetchedApps(uri, tuple(s.strip() for s in items if s.strip()))


def parse_target(name: str, entry: Any) -> Target:
    """Build a Target from a verified targets.json entry; InvalidTargetError says what is wrong."""
    if not isinstance(entry, Mapping):
        raise InvalidTargetError("entry is not an object")
    hashes = entry.get("hashes")
    sha = hashes.get("sha256") if isinstance(hashes, Mapping) else None
    if not isinstance(sha, str) or not hexdigest.is_sha256_hex(sha):
        raise InvalidTargetError("hashes.sha256 is not an OSTree commit (64 lowercase hex)")
    custom = entry.get("custom")
    if not isinstance(custom, Mapping):
        raise InvalidTargetError("custom is missing")
    raw_version = custom.get("version")
    try:
        if isinstance(raw_version, bool) or not isinstance(raw_version, (str, int)):
            raise ValueError
        version = int(raw_version)
    except ValueError:
        raise InvalidTargetError(f"custom.version {raw_version!r} is not an integer") from None
    target_format = custom.get("targetFormat")
    apps: dict[str, str] = {}
    raw_apps = custom.get("docker_compose_apps")
    if raw_apps is not None:
        if not isinstance(raw_apps, Mapping):
            raise InvalidTargetError("custom.docker_compose_apps is not an object")
        for app, spec in raw_apps.items():
            check_app_name(app)
            uri = spec.get("uri") if isinstance(spec, Mapping) else None
            if not isinstance(uri, str):
                raise InvalidTargetError(f"app {app}: no uri")
            try:
                parse_ref(uri)
            except InvalidTargetError as exc:
                raise InvalidTargetError(f"app {app}: {exc}") from None
            apps[app] = uri
    return Target(
        name=name,
        commit=sha,
        version=version,
        hardware_ids=_str_list(custom.get("hardwareIds"), "hardwareIds"),
        tags=_str_list(custom.get("tags"), "tags"),
        target_format=target_format if isinstance(target_format, str) else "",
        apps=MappingProxyType(apps),
        fetched_apps=_fetched_apps(custom.get("fetched-apps")),
        custom=MappingProxyType(dict(custom)),
    )


@dataclass(frozen=True)
class TargetRecord:
    """A target as the device knows it (what it runs, ran, or is installing): enough to roll
    back to it without the stick. Selection reads the current one from it too."""

    name: str
    version: int
    commit: str  # the OSTree commit
    apps: Mapping[str, str] = field(default_factory=dict)  # app name -> uri (apps it runs here)
    custom: Mapping[str, Any] = field(default_factory=dict)  # the target's custom metadata

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "commit": self.commit,
            "apps": dict(self.apps),
            "custom": dict(self.custom),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TargetRecord:
        return cls(
            name=typed_field(d, "name", str),
            version=typed_field(d, "version", int),
            # "sha256": the key before the commit had one name (state written by 0.1)
            commit=typed_field(d, "commit" if "commit" in d else "sha256", str),
            apps=typed_field(d, "apps", dict),
            custom=typed_field(d, "custom", dict),
        )


class FieldError(Exception):
    """A stored record's field is missing or of the wrong type (state.json, history)."""


def typed_field(d: Mapping[str, Any], key: str, kind: type) -> Any:
    if not isinstance(d, Mapping):
        raise FieldError(f"expected an object holding {key!r}")
    v = d.get(key)
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise FieldError(f"field {key!r} should be a {kind.__name__}, found {v!r}")
    return v
