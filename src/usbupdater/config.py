"""aktualizr-lite configuration snippets -> typed, frozen settings.

Semantics follow aktualizr-lite: `--config PATH` may repeat; each PATH is a `.toml` file or a
directory whose `*.toml` files are read in name order; later keys win, key by key. Without
`--config` the default locations are read (missing ones skipped). Unknown keys are ignored.
Values in these files are often quoted even when numeric or boolean (`ostree_update_block = "1"`),
so scalars are coerced here, once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from usbupdater.errors import ConfigError
from usbupdater.settings import UsbUpdaterSettings
from usbupdater.settings import parse as parse_usbupdater

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

DEFAULT_CONFIG_PATHS: tuple[Path, ...] = (
    Path("/usr/lib/sota/conf.d"),
    Path("/var/sota/sota.toml"),
    Path("/etc/sota/conf.d"),
)
HARDWARE_ID_HINT = "/usr/lib/sota/conf.d/40-hardware-id.toml"
ROLLBACK_MODES = ("none", "uboot_generic", "uboot_masked", "fiovb", "fioefi")
PACMAN_TYPES = ("ostree", "ostree+compose_apps")
# aktualizr-lite src/liteclient.cc (LiteClient::LiteClient): with `[pacman] type` unset ("none",
# aktualizr's PACKAGE_MANAGER_NONE) it is "ostree+compose_apps" when /usr/bin/dockerd and
# /usr/bin/docker exist, else "ostree". Each group here is one of those files; any path of a group
# will do, so Debian's /usr/sbin/dockerd counts too (on LmP both are in /usr/bin).
DOCKER_PROBES: tuple[tuple[Path, ...], ...] = (
    (Path("/usr/bin/dockerd"), Path("/usr/sbin/dockerd")),
    (Path("/usr/bin/docker"),),
)


@dataclass(frozen=True)
class ProvisionConfig:
    primary_ecu_hardware_id: str
    primary_ecu_serial: str = ""


@dataclass(frozen=True)
class StorageConfig:
    path: Path = Path("/var/sota")
    uptane_metadata_path: Path = Path("/usr/lib/sota/tuf")
    # aktualizr-lite's database; a relative `sqldb_path` is under `path` (libaktualizr's rule)
    sqldb_path: Path = Path("/var/sota/sql.db")


@dataclass(frozen=True)
class PacmanConfig:
    type: str = "ostree+compose_apps"
    sysroot: Path = Path("/")
    os: str = "lmp"
    tags: tuple[str, ...] = ()
    # None: the key is absent (all of the target's apps); (): the key is empty (no apps).
    compose_apps: Optional[tuple[str, ...]] = None
    reset_apps: Optional[tuple[str, ...]] = None
    compose_apps_root: Path = Path("/var/sota/compose-apps")
    reset_apps_root: Path = Path("/var/sota/reset-apps")
    docker_compose_bin: str = "/usr/bin/docker"
    ostree_update_block: bool = True
    # aktualizr-lite ComposeAppManager::Config: on unless "0" or "false" (apps/prune_images.py)
    docker_prune: bool = True

    @property
    def apps_enabled(self) -> bool:
        return self.type == "ostree+compose_apps"

    @property
    def compose_command(self) -> tuple[str, ...]:
        """`docker compose` when the bin is the docker CLI, else the v1 `docker-compose` binary."""
        if Path(self.docker_compose_bin).name == "docker":
            return (self.docker_compose_bin, "compose")
        return (self.docker_compose_bin,)


@dataclass(frozen=True)
class BootloaderConfig:
    rollback_mode: str = "none"
    reboot_command: str = "/sbin/reboot"
    reboot_sentinel_dir: Path = Path("/var/run/aktualizr-session")
    reboot_sentinel_name: str = "need_reboot"


@dataclass(frozen=True)
class ImportConfig:
    """aktualizr's `[import]`: where the device's credentials are (read for the device type)."""

    base_path: Path = Path("/var/sota/import")  # aktualizr ImportConfig::base_path
    # None: the key is absent (LmP's /var/sota/client.pem is assumed); "": no file (PKCS#11).
    tls_clientcert_path: Optional[str] = None


@dataclass(frozen=True)
class Config:
    provision: ProvisionConfig
    storage: StorageConfig = field(default_factory=StorageConfig)
    pacman: PacmanConfig = field(default_factory=PacmanConfig)
    bootloader: BootloaderConfig = field(default_factory=BootloaderConfig)
    import_: ImportConfig = field(default_factory=ImportConfig)
    usbupdater: UsbUpdaterSettings = field(default_factory=UsbUpdaterSettings)
    sources: tuple[Path, ...] = ()  # files read, in order
    # The merged tables as read, so a component can parse keys of its own (see `table`).
    tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)

    def table(self, name: str) -> Table:
        """Typed access to one merged table (e.g. the simulation's `[sim]`)."""
        return Table(name, self.tables.get(name, {}))

    @property
    def state_dir(self) -> Path:
        return self.usbupdater.state_dir or self.storage.path / "usbupdater"

    @property
    def current_target_file(self) -> Path:
        return self.storage.path / "current-target"


# --- reading -----------------------------------------------------------------------------------


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files to read, in order: a directory contributes its `*.toml` files in name order."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.suffix == ".toml" and f.is_file()))
        elif p.is_file():
            files.append(p)
    return files


def read_files(files: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """Merge TOML files table by table, key by key; later files win."""
    merged: dict[str, dict[str, Any]] = {}
    for f in files:
        try:
            with open(f, "rb") as fh:
                doc = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            # The message carries "(at line L, column C)".
            raise ConfigError(f"{f}: malformed configuration: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{f}: cannot read configuration: {exc.strerror}") from exc
        for table, values in doc.items():
            if isinstance(values, dict):
                merged.setdefault(table, {}).update(values)
    return merged


def load(paths: Optional[Iterable[str | os.PathLike[str]]] = None) -> Config:
    """Load configuration from `--config` paths (or the defaults) into a `Config`."""
    if paths:
        given = [Path(p) for p in paths]
        for p in given:
            if not p.exists():
                raise ConfigError(f"{p}: configuration path does not exist")
        files = expand_paths(given)
    else:
        files = expand_paths(DEFAULT_CONFIG_PATHS)
    return with_device_type(from_tables(read_files(files), tuple(files)))


def with_device_type(cfg: Config) -> Config:
    """`cfg` with `[usbupdater] device_type` resolved (from the device certificate when unset),
    logged once with its reason."""
    from usbupdater import devicetype
    from usbupdater.log import get_logger

    dt = devicetype.resolve(
        cfg.usbupdater.device_type, cfg.import_.base_path, cfg.import_.tls_clientcert_path
    )
    # Said at info when the certificate decided, as a warning when one is there but unusable;
    # the configured value and "no certificate" (today's behaviour) only at debug.
    level = {"certificate": "info", "unreadable": "warning"}.get(dt.source, "debug")
    getattr(get_logger("config"), level)(
        "device type", device_type=dt.value or "unknown", reason=dt.reason
    )
    uu = replace(cfg.usbupdater, device_type=dt.value, device_type_reason=dt.reason)
    return replace(cfg, usbupdater=uu)


# --- coercion ----------------------------------------------------------------------------------


class Table:
    """Typed access to one merged table, with errors that name the key."""

    def __init__(self, name: str, values: Mapping[str, Any]) -> None:
        self.name = name
        self.values = values

    def _where(self, key: str) -> str:
        return f"[{self.name}] {key}"

    def get_str(self, key: str, default: str) -> str:
        v = self.values.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise ConfigError(f"{self._where(key)}: expected a string, got {v!r}")
        return str(v)

    def get_path(self, key: str, default: Path) -> Path:
        return Path(self.get_str(key, str(default)))

    def get_opt_path(self, key: str) -> Optional[Path]:
        return Path(self.get_str(key, "")) if self.values.get(key) else None

    def get_bool(self, key: str, default: bool) -> bool:
        v = self.values.get(key, default)
        if isinstance(v, bool):
            return v
        if isinstance(v, int) and v in (0, 1):
            return bool(v)
        if isinstance(v, str) and v.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(v, str) and v.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{self._where(key)}: expected a boolean (0/1/true/false), got {v!r}")

    def get_float(self, key: str, default: float) -> float:
        v = self.values.get(key, default)
        try:
            if isinstance(v, bool):
                raise ValueError
            return float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{self._where(key)}: expected a number, got {v!r}") from None

    def get_list(self, key: str) -> Optional[tuple[str, ...]]:
        """A comma-separated string (or a TOML array); None when the key is absent."""
        if key not in self.values:
            return None
        v = self.values[key]
        items: list[Any] = v if isinstance(v, list) else str(v).split(",")
        return tuple(s for s in (str(i).strip() for i in items) if s)

    def get_choice(self, key: str, default: str, allowed: Iterable[str]) -> str:
        v = self.get_str(key, default)
        options = tuple(allowed)
        if v not in options:
            raise ConfigError(f"{self._where(key)}: {v!r} is not one of {', '.join(options)}")
        return v


def default_pacman_type(probes: Iterable[Iterable[Path]] = DOCKER_PROBES) -> str:
    """aktualizr-lite's deduction for an unset `[pacman] type` (see DOCKER_PROBES)."""
    found = all(any(p.exists() for p in group) for group in probes)
    return "ostree+compose_apps" if found else "ostree"


def _pacman_type(pm: Table) -> str:
    if str(pm.values.get("type", "none")).strip() == "none":
        return default_pacman_type()
    return pm.get_choice("type", PacmanConfig.type, PACMAN_TYPES)


def _docker_prune(pm: Table) -> bool:
    """aktualizr-lite: any value but "0"/"false" (any case) is on; absent is on."""
    if "docker_prune" not in pm.values:
        return True
    v = pm.values["docker_prune"]
    if isinstance(v, bool):
        return v
    return str(v).strip().lower() not in ("0", "false")


def from_tables(tables: Mapping[str, Mapping[str, Any]], sources: tuple[Path, ...] = ()) -> Config:
    """Build a `Config` from merged tables (the pure half of `load`)."""
    prov = Table("provision", tables.get("provision", {}))
    hwid = prov.get_str("primary_ecu_hardware_id", "").strip()
    if not hwid:
        where = ", ".join(str(s) for s in sources) or "no configuration file found"
        raise ConfigError(
            "[provision] primary_ecu_hardware_id is not set; it is usually set in "
            f"{HARDWARE_ID_HINT} (read: {where})"
        )
    st = Table("storage", tables.get("storage", {}))
    pm = Table("pacman", tables.get("pacman", {}))
    bl = Table("bootloader", tables.get("bootloader", {}))
    uu = Table("usbupdater", tables.get("usbupdater", {}))
    im = Table("import", tables.get("import", {}))
    storage_path = st.get_path("path", StorageConfig.path)
    return Config(
        provision=ProvisionConfig(
            primary_ecu_hardware_id=hwid,
            primary_ecu_serial=prov.get_str("primary_ecu_serial", ""),
        ),
        storage=StorageConfig(
            path=storage_path,
            uptane_metadata_path=st.get_path(
                "uptane_metadata_path", StorageConfig.uptane_metadata_path
            ),
            sqldb_path=storage_path / st.get_path("sqldb_path", Path("sql.db")),
        ),
        pacman=PacmanConfig(
            type=_pacman_type(pm),
            sysroot=pm.get_path("sysroot", PacmanConfig.sysroot),
            os=pm.get_str("os", PacmanConfig.os),
            tags=pm.get_list("tags") or (),
            compose_apps=pm.get_list("compose_apps"),
            reset_apps=pm.get_list("reset_apps"),
            compose_apps_root=pm.get_path("compose_apps_root", storage_path / "compose-apps"),
            reset_apps_root=pm.get_path("reset_apps_root", storage_path / "reset-apps"),
            docker_compose_bin=pm.get_str("docker_compose_bin", PacmanConfig.docker_compose_bin),
            ostree_update_block=pm.get_bool("ostree_update_block", True),
            docker_prune=_docker_prune(pm),
        ),
        bootloader=BootloaderConfig(
            rollback_mode=bl.get_choice(
                "rollback_mode", BootloaderConfig.rollback_mode, ROLLBACK_MODES
            ),
            reboot_command=bl.get_str("reboot_command", BootloaderConfig.reboot_command),
            reboot_sentinel_dir=bl.get_path(
                "reboot_sentinel_dir", BootloaderConfig.reboot_sentinel_dir
            ),
            reboot_sentinel_name=bl.get_str(
                "reboot_sentinel_name", BootloaderConfig.reboot_sentinel_name
            ),
        ),
        import_=ImportConfig(
            base_path=im.get_path("base_path", ImportConfig.base_path),
            tls_clientcert_path=(
                im.get_str("tls_clientcert_path", "")
                if "tls_clientcert_path" in im.values
                else None
            ),
        ),
        usbupdater=parse_usbupdater(uu, storage_path),
        sources=sources,
        tables={k: dict(v) for k, v in tables.items()},
    )
