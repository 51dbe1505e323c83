"""The session's source repo (a unique module name: `conftest` clashes across test folders)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SourceRepo:
    path: Path
    v1: str
    v2: str
    v3: str
    v3_only_object: str  # a content object only v3 has

    def copy(self, dest: Path) -> Path:
        """A private copy (hard links would share corruption with the session repo)."""
        subprocess.run(["cp", "-a", str(self.path), str(dest)], check=True)
        return dest
