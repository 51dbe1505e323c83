"""The simulated device's boot adapters: its recorded boot and its file-backed boot variables.

Nothing boots in the simulation, so `SimDevice.reboot()` records which deployment "booted" in a
JSON file and keeps the bootloader's variables in another. These two classes read them; the
simulation's core (`usbupdater.sim.core`) injects them into `core.Device`. Production code never
imports them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from usbupdater.bootloader import Bootloader
from usbupdater.errors import AdapterError
from usbupdater.fsutil import atomic_write
from usbupdater.ostree_cli import is_commit


class RecordedBootedCommit:
    """The booted commit as the simulated bootloader recorded it (JSON with a "commit" key)."""

    def __init__(self, record: Path) -> None:
        self.record = Path(record)

    def booted_commit(self) -> Optional[str]:
        # The simulation replaces the record atomically: a reader never sees a partial file.
        try:
            data = json.loads(self.record.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise AdapterError(f"{self.record}: cannot read boot record: {exc}") from None
        commit = data.get("commit") if isinstance(data, dict) else None
        if commit is None or (isinstance(commit, str) and is_commit(commit)):
            return commit
        raise AdapterError(f"{self.record}: invalid boot record (commit {commit!r})")


class FileBootloader(Bootloader):
    """Variables in one JSON file: the simulated device's environment (and the demo's)."""

    def __init__(self, path: Path, mode: str = "uboot_masked") -> None:
        self.path = Path(path)
        self.mode = mode

    def read_all(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise AdapterError(f"{self.path}: cannot read boot environment: {exc}") from None
        if not isinstance(data, dict):
            raise AdapterError(f"{self.path}: boot environment is not a JSON object")
        return {str(k): str(v) for k, v in data.items()}

    def write_all(self, values: dict[str, str]) -> None:
        atomic_write(self.path, json.dumps(values, indent=1, sort_keys=True).encode())

    def get(self, name: str) -> Optional[str]:
        return self.read_all().get(name)

    def set(self, name: str, value: str) -> None:
        values = self.read_all()
        values[name] = str(value)
        self.write_all(values)

    def unset(self, name: str) -> None:
        values = self.read_all()
        if values.pop(name, None) is not None:
            self.write_all(values)
