"""The device's update state: a versioned JSON document plus an append-only history.

`state.json` says what the device runs (`current`), what `install` left for `run` (`pending`) and
the outcome of the last command. It is replaced only through `fsutil.atomic_write`, so after a
crash it is either the old or the new document. A file that cannot be read as a document of a
known version is an error, never silently reset: resetting would forget a pending installation.

`history.jsonl` gets one JSON line per install/run outcome. Appends are fsynced; a line torn by
power loss (the last one, without its newline) is dropped on the next append and ignored on read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from usbupdater import fsutil, timefmt
from usbupdater.errors import StateError
from usbupdater.target import FieldError, TargetRecord, typed_field

STATE_FORMAT = "usbupdater-state"
STATE_VERSION = 1
MAX_STATE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class PendingInstall:
    """What `install` finished and `run` must complete."""

    target: TargetRecord
    previous: Optional[TargetRecord]
    reboot_required: bool  # a new rootfs was deployed
    txn: str  # identifies this installation (history entries carry it, so none is written twice)
    installed_at: str = ""
    rollback_of: Optional[str] = None  # set when this installation rolls back a failed target

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target.to_json(),
            "previous": self.previous.to_json() if self.previous else None,
            "reboot_required": self.reboot_required,
            "txn": self.txn,
            "installed_at": self.installed_at,
            "rollback_of": self.rollback_of,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PendingInstall:
        prev = d.get("previous")
        return cls(
            target=TargetRecord.from_json(typed_field(d, "target", dict)),
            previous=TargetRecord.from_json(prev) if isinstance(prev, dict) else None,
            reboot_required=typed_field(d, "reboot_required", bool),
            txn=typed_field(d, "txn", str),
            installed_at=timefmt.normalize(str(d.get("installed_at", ""))),
            rollback_of=d["rollback_of"] if isinstance(d.get("rollback_of"), str) else None,
        )


@dataclass(frozen=True)
class LastResult:
    command: str
    code: int
    message: str
    target: Optional[str] = None
    time: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "code": self.code,
            "message": self.message,
            "target": self.target,
            "time": self.time,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LastResult:
        target = d.get("target")
        return cls(
            command=typed_field(d, "command", str),
            code=typed_field(d, "code", int),
            message=typed_field(d, "message", str),
            target=target if isinstance(target, str) else None,
            time=timefmt.normalize(str(d.get("time", ""))),
        )


@dataclass(frozen=True)
class DeviceState:
    current: Optional[TargetRecord] = None
    pending: Optional[PendingInstall] = None
    last_result: Optional[LastResult] = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "current": self.current.to_json() if self.current else None,
            "pending": self.pending.to_json() if self.pending else None,
            "last_result": self.last_result.to_json() if self.last_result else None,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DeviceState:
        cur, pend, last = d.get("current"), d.get("pending"), d.get("last_result")
        return cls(
            current=TargetRecord.from_json(cur) if cur is not None else None,
            pending=PendingInstall.from_json(pend) if pend is not None else None,
            last_result=LastResult.from_json(last) if last is not None else None,
        )


class StateStore:
    """Reads and writes `state.json` and `history.jsonl` in one directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.state_path = self.dir / "state.json"
        self.history_path = self.dir / "history.jsonl"

    # --- state.json ---

    def load(self) -> DeviceState:
        """The current state; an empty one when the device never ran usbupdater."""
        try:
            with open(self.state_path, "rb") as fh:
                raw = fh.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return DeviceState()
        except OSError as exc:
            raise StateError(f"{self.state_path}: cannot read: {exc.strerror}") from exc
        hint = "it is never reset automatically; inspect it, then move it aside to start afresh"
        if len(raw) > MAX_STATE_BYTES:
            raise StateError(f"{self.state_path}: larger than {MAX_STATE_BYTES} bytes; {hint}")
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StateError(f"{self.state_path} is corrupt ({exc}); {hint}") from exc
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise StateError(f"{self.state_path} is not a usbupdater state document; {hint}")
        version = doc.get("version")
        if version != STATE_VERSION:
            raise StateError(
                f"{self.state_path} has version {version!r}; this usbupdater reads version "
                f"{STATE_VERSION} (was it written by a newer release?)"
            )
        try:
            return DeviceState.from_json(doc)
        except FieldError as exc:
            raise StateError(f"{self.state_path} is corrupt ({exc}); {hint}") from exc

    def save(self, state: DeviceState) -> None:
        """Replace the state document atomically and durably (the commit point of a step)."""
        data = json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n"
        fsutil.atomic_write_text(self.state_path, data, mode=0o600)

    # --- installing.json: an install that changed the device before its commit point ---

    @property
    def inflight_path(self) -> Path:
        return self.dir / "installing.json"

    def save_inflight(self, previous: Optional[TargetRecord]) -> None:
        """Remember, before `install` changes the device, what it ran until then.

        A never-updated device knows its target only by inferring it from the booted commit; an
        install killed after its deploy and then rebooted would infer the NEW target and answer
        "already installed". While this record exists (removed at the commit point and when an
        install is refused), the re-run takes the device's previous target from it instead.
        """
        doc = {"previous": previous.to_json() if previous else None}
        fsutil.makedirs_durable(self.dir)
        fsutil.atomic_write_text(self.inflight_path, json.dumps(doc) + "\n", mode=0o600)

    def load_inflight(self) -> tuple[bool, Optional[TargetRecord]]:
        """(a killed install left the record, the target the device ran before it)."""
        try:
            with open(self.inflight_path, "rb") as fh:
                doc = json.loads(fh.read(MAX_STATE_BYTES))
            prev = doc.get("previous") if isinstance(doc, dict) else None
            return True, TargetRecord.from_json(prev) if isinstance(prev, dict) else None
        except FileNotFoundError:
            return False, None
        except (OSError, ValueError, FieldError) as exc:
            raise StateError(f"{self.inflight_path} is unreadable ({exc}); remove it") from exc

    def clear_inflight(self) -> None:
        fsutil.remove_durable(self.inflight_path)

    # --- history.jsonl ---

    def history(self) -> list[dict[str, Any]]:
        """Every history entry, oldest first; a torn last line is ignored."""
        try:
            with open(self.history_path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline, else a torn line
        del torn
        entries: list[dict[str, Any]] = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise StateError(f"{self.history_path}: line {n} is corrupt ({exc})") from exc
            if not isinstance(entry, dict):
                raise StateError(f"{self.history_path}: line {n} is not a JSON object")
            entries.append(entry)
        return entries

    def append_history(self, entry: Mapping[str, Any]) -> bool:
        """Append one entry durably; an entry whose `id` is already recorded is skipped.

        Returns False when skipped, so re-running a killed step never duplicates history.
        """
        record = dict(entry)
        record.setdefault("time", timefmt.now())
        entry_id = record.get("id")
        if entry_id is not None and any(e.get("id") == entry_id for e in self.history()):
            return False
        line = json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"
        fsutil.makedirs_durable(self.dir)
        created = not self.history_path.exists()
        fd = os.open(
            self.history_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # A torn line from power loss: cut it off so the file stays line-aligned.
                tail_start = max(0, size - 65536)
                tail = os.pread(fd, size - tail_start, tail_start)
                cut = tail.rfind(b"\n")
                os.ftruncate(fd, tail_start + cut + 1 if cut >= 0 else tail_start)
                size = os.fstat(fd).st_size
            os.pwrite(fd, line, size)
            os.fsync(fd)  # commit point of the entry
        finally:
            os.close(fd)
        if created:
            fsutil.fsync_dir(self.dir)
        return True

    def drop_last_history(self, entry_id: str) -> bool:
        """Take back the newest entry when it is `entry_id` (an install undone before its commit
        point leaves no trace). The file is cut durably; an emptied file is removed."""
        try:
            fd = os.open(self.history_path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            size = os.fstat(fd).st_size
            tail_start = max(0, size - 65536)
            tail = os.pread(fd, size - tail_start, tail_start)
            cut = tail.rstrip(b"\n").rfind(b"\n") + 1  # start of the last line (0: the only one)
            try:
                last = json.loads(tail[cut:])
            except ValueError:
                return False
            if not isinstance(last, dict) or last.get("id") != entry_id:
                return False
            os.ftruncate(fd, tail_start + cut)
            os.fsync(fd)
            emptied = tail_start + cut == 0
        finally:
            os.close(fd)
        if emptied:
            os.unlink(self.history_path)
            fsutil.fsync_dir(self.dir)
        return True
