"""Bundle factory: complete `fioctl targets offline-update` bundles from a short description.

A `Factory` plays Foundries' backend for one factory: it publishes targets (a real OSTree commit
made with the `ostree` CLI in an archive-mode "treehub" repo, Compose Apps with runnable busybox
images) and writes bundles in the exact fioctl layout::

    <dst>/tuf/          3.root.json.. timestamp.json snapshot.json targets.json bundle-targets.json
    <dst>/ostree_repo/  archive repo with the commits of the bundle's targets
    <dst>/apps/         app store (blobs + apps/<app>/<H>/...)

targets.json lists every target the factory published (as the real one does); bundle-targets.json
lists the bundle's. Each bundle's metadata carries a higher version than the previous one, as a
device that persisted older metadata expects. Keyword switches leave pieces out for tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from usbupdater.ostree_cli import run_ostree
from usbupdater.sim.apps import AppSpec, WrittenApp, write_apps
from usbupdater.sim.device import init_archive_repo, make_commit
from usbupdater.sim.signer import BundleInfo, Repo, ostree_target

DEFAULT_HWID = "intel-corei7-64"
DEFAULT_TAG = "main"
HUB = "hub.foundries.io"


@dataclass(frozen=True)
class TargetSpec:
    """One target to publish. Defaults come from the factory (hardware id, tag)."""

    version: int
    apps: Sequence[AppSpec] = ()
    name: str = ""  # default "<hardware id>-lmp-<version>"
    hardware_ids: Sequence[str] = ()
    tags: Sequence[str] = ()
    rootfs_files: Optional[Mapping[str, bytes]] = None  # extra files in the commit
    rootfs_bytes: int = 0  # random bytes in the commit (a big rootfs change)
    same_rootfs_as: Optional[str] = None  # reuse that target's commit (an apps-only update)
    custom: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"fetched-apps": {...}}
    # LmP's lmp-boot-firmware package: `bootfirmware_version=N` in usr/lib/firmware/version.txt
    # (and usr/lib/ostree-boot/version.txt), meta-lmp recipes-bsp/lmp-boot-firmware.
    boot_firmware_version: Optional[int] = None

    def files(self) -> dict[str, bytes]:
        """Every extra file of the commit: `rootfs_files` plus the boot firmware version."""
        out = dict(self.rootfs_files or {})
        if self.boot_firmware_version is not None:
            line = f"bootfirmware_version={self.boot_firmware_version}\n".encode()
            out.setdefault("usr/lib/firmware/version.txt", line)
            out.setdefault("usr/lib/ostree-boot/version.txt", line)
        return out


@dataclass(frozen=True)
class PublishedTarget:
    name: str
    version: int
    commit: str
    spec: TargetSpec
    apps: Mapping[str, WrittenApp]  # app name -> what the app store holds for it
    entry: Mapping[str, Any]  # the targets.json entry

    @property
    def uris(self) -> dict[str, str]:
        return {a: w.uri for a, w in self.apps.items()}


class Factory:
    """A factory's signing keys, treehub and published targets, under `workdir`."""

    def __init__(
        self,
        workdir: Path,
        *,
        hardware_id: str = DEFAULT_HWID,
        tag: str = DEFAULT_TAG,
        device_type: str = "ci",
        repo: Optional[Repo] = None,
        factory_name: str = "acme",
    ) -> None:
        self.workdir = Path(workdir)
        self.hardware_id = hardware_id
        self.tag = tag
        self.device_type = device_type
        self.repo = repo or Repo.generate()
        self.factory_name = factory_name
        self.treehub = self.workdir / "treehub"
        self.targets: dict[str, PublishedTarget] = {}
        self.meta_version = 0
        init_archive_repo(self.treehub)

    # --- publishing ---

    def publish(self, spec: TargetSpec) -> PublishedTarget:
        """Make the target's commit and apps and add it to the factory's targets."""
        name = spec.name or f"{self.hardware_id}-lmp-{spec.version}"
        if spec.same_rootfs_as is not None:
            commit = self.targets[spec.same_rootfs_as].commit
        else:
            commit = make_commit(
                self.treehub,
                f"{self.hardware_id}-lmp",
                str(spec.version),
                spec.files(),
                spec.rootfs_bytes,
            )
        # Writing the apps once tells their URIs; the writer is deterministic, so the store a
        # bundle gets later holds the very same digests.
        apps = self._write_apps(self.workdir / "published" / name, spec.apps)
        entry = ostree_target(
            commit,
            str(spec.version),
            list(spec.hardware_ids) or [self.hardware_id],
            list(spec.tags) or [self.tag],
            {a: w.uri for a, w in apps.items()} if spec.apps else None,
            **dict(spec.custom),
        )
        published = PublishedTarget(name, spec.version, commit, spec, apps, entry)
        self.targets[name] = published
        return published

    def _write_apps(self, apps_dir: Path, apps: Sequence[AppSpec]) -> dict[str, WrittenApp]:
        if not apps:
            return {}
        return write_apps(apps_dir, apps, host=HUB, factory=self.factory_name)

    # --- the device side ---

    def write_device_roots(self, uptane_metadata_path: Path) -> Path:
        """Roots 1 and 2 as an LmP image ships them, under `<path>/<ci|prod>/`."""
        d = Path(uptane_metadata_path) / ("prod" if self.device_type == "prod" else "ci")
        self.repo.write_device_roots(d)
        return d

    # --- bundles ---

    def write_bundle(
        self,
        dst: Path,
        names: Optional[Sequence[str]] = None,
        *,
        tag: Optional[str] = None,
        bundle_type: Optional[str] = None,
        bundle_targets: bool = True,
        ostree: bool = True,
        apps: bool = True,
        expires: Optional[datetime] = None,
        metadata_version: Optional[int] = None,
    ) -> Path:
        """Write a bundle for `names` (default: the newest published target) into `dst`."""
        dst = Path(dst)
        if names is None:
            names = [max(self.targets.values(), key=lambda t: t.version).name]
        chosen = [self.targets[n] for n in names]
        if metadata_version is None:
            self.meta_version += 1
            metadata_version = self.meta_version
        info = BundleInfo(
            bundle_type or ("prod" if self.device_type == "prod" else "ci"),
            tag or self.tag,
            [t.name for t in chosen],
        )
        self.repo.write_bundle_tuf(
            dst / "tuf",
            {n: t.entry for n, t in self.targets.items()},
            version=metadata_version,
            expires=expires,
            bundle=info if bundle_targets else None,
        )
        if ostree:
            repo = dst / "ostree_repo"
            init_archive_repo(repo)
            commits = sorted({t.commit for t in chosen})
            run_ostree(["pull-local", f"--repo={repo}", str(self.treehub), *commits])
        if apps:
            specs = [a for t in chosen for a in t.spec.apps]
            if specs:
                write_apps(dst / "apps", specs, host=HUB, factory=self.factory_name)
        return dst
