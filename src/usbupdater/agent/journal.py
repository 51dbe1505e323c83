"""What the agent must remember across crashes and reboots: the job marker and handled bundles.

The marker says an update is in flight and what comes next (`run` after the reboot, ...); it is
written durably (fsutil.atomic_write) before every step that may not return, so a power cut at
any point resumes at the right place. `handled.json` remembers each bundle identity with its
result, so a stick left plugged in across reboots installs once. A boot token in the runtime dir
(a tmpfs) tells whether the machine rebooted since the marker was written.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from usbupdater import log, timefmt
from usbupdater.fsutil import atomic_write, remove_durable

MARKER_VERSION = 1
HANDLED_KEEP = 200


@dataclass
class JobRecord:
    """One stick's update, from mount to the final report (persisted as the marker)."""

    bundle: str  # BundleOnStick.identity
    stick: dict[str, str]
    bundle_path: str = ""
    targets_version: Optional[int] = None
    step: str = "install"  # install | reboot | engine | run
    after_reboot: str = "none"
    reboots: int = 0
    attempts: int = 1
    boot_token: str = ""
    # aktualizr-lite ran when the job began and we stopped it: it is started again when the job
    # ends (after any reboots), and only then. Saved before the stop, so no crash loses it.
    aklite_stopped: bool = False
    old_target: Optional[str] = None
    new_target: Optional[str] = None
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> JobRecord:
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class Journal:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        self.marker_path = self.dir / "marker.json"
        self.handled_path = self.dir / "handled.json"
        self._log = log.get_logger("journal")

    # --- marker ---

    def save(self, job: JobRecord) -> None:
        doc = {"version": MARKER_VERSION, "job": asdict(job)}
        atomic_write(self.marker_path, json.dumps(doc, indent=1).encode(), mode=0o600)

    def load(self) -> Optional[JobRecord]:
        try:
            doc = json.loads(self.marker_path.read_text(encoding="utf-8"))
            return JobRecord.from_json(doc["job"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Never guess from a damaged marker: keep it for a person, carry on without it.
            self._log.error(
                "unreadable marker; ignoring it", path=str(self.marker_path), error=str(exc)
            )
            with contextlib.suppress(OSError):
                self.marker_path.replace(self.marker_path.with_suffix(".damaged"))
            return None

    def clear(self) -> None:
        remove_durable(self.marker_path)

    # --- handled bundles ---

    def _handled(self) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(self.handled_path.read_text(encoding="utf-8"))
            bundles = doc.get("bundles", {})
            return bundles if isinstance(bundles, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:
            self._log.error("unreadable handled list; starting a new one", error=str(exc))
            return {}

    def handled(self, identity: str) -> Optional[dict[str, Any]]:
        return self._handled().get(identity)

    def mark_handled(self, identity: str, result: str, target: Optional[str]) -> None:
        bundles = self._handled()
        bundles.pop(identity, None)
        bundles[identity] = {
            "result": result,
            "target": target,
            "time": timefmt.stamp(),
        }
        keep = dict(list(bundles.items())[-HANDLED_KEEP:])
        doc = {"version": 1, "bundles": keep}
        atomic_write(self.handled_path, json.dumps(doc, indent=1).encode(), mode=0o600)


def boot_token(path: Path) -> str:
    """This boot's token: read it, or make one when the tmpfs was wiped (a new boot)."""
    try:
        token = path.read_text(encoding="ascii").strip()
        if token:
            return token
    except (OSError, UnicodeDecodeError):
        pass
    token = secrets.token_hex(8)
    atomic_write(path, token.encode() + b"\n")
    return token
