"""Helpers for the trust tests: fixed times, sample targets, a simulated device + bundle layout.

A module of its own (not conftest) so that test modules can import it by a unique name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from usbupdater.sim.signer import BundleInfo, Repo, ostree_target, write_files
from usbupdater.trust import TrustedMetadata, TrustSession

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
LATER = T0 + timedelta(days=365)
TARGETS = {
    "hw-lmp-42": ostree_target(
        "a" * 64, "42", ["hw"], ["main"], apps={"shell": "hub/f/shell@sha256:" + "b" * 64}
    ),
    "hw-lmp-43": ostree_target("c" * 64, "43", ["hw"], ["main"]),
}
BUNDLE = BundleInfo("ci", "main", ["hw-lmp-42", "hw-lmp-43"])


@dataclass
class Device:
    """A device (shipped roots + state dir) and a bundle's tuf/ directory, in a tmp dir."""

    root: Path
    repo: Repo
    device_type: str = "ci"
    tags: Sequence[str] = ("main",)
    now: datetime = T0
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def shipped(self) -> Path:
        return self.root / "usr/lib/sota/tuf" / ("prod" if self.device_type == "prod" else "ci")

    @property
    def store(self) -> Path:
        return self.root / "var/sota/usbupdater/tuf"

    @property
    def tuf(self) -> Path:
        return self.root / "stick/tuf"

    def write_bundle(
        self, targets: Mapping[str, Mapping[str, Any]] = TARGETS, **kwargs: Any
    ) -> dict[str, bytes]:
        """Write a fresh bundle (replacing any previous one); kwargs go to Repo.bundle_files."""
        kwargs.setdefault("bundle", BUNDLE)
        kwargs.setdefault("expires", LATER)
        self.files = self.repo.bundle_files(targets, **kwargs)
        self.rewrite()
        return self.files

    def rewrite(self) -> None:
        """Write `self.files` as the bundle's tuf/ (after a test changed them)."""
        if self.tuf.exists():
            for f in self.tuf.iterdir():
                f.unlink()
        write_files(self.tuf, self.files)

    def session(self, now: datetime | None = None) -> TrustSession:
        return TrustSession(
            self.tuf,
            shipped_roots_dir=self.shipped,
            device_type=self.device_type,
            device_tags=self.tags,
            store_dir=self.store,
            now=now or self.now,
        )

    def verify(self, now: datetime | None = None) -> TrustedMetadata:
        return self.session(now).verify()

    def accept(self, now: datetime | None = None) -> TrustedMetadata:
        s = self.session(now)
        result = s.verify()
        s.commit()
        return result


def tree_snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its content (to prove nothing changed)."""
    if not path.exists():
        return {}
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }
