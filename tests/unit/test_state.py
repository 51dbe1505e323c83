from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from usbupdater.errors import StateError
from usbupdater.state import DeviceState, LastResult, PendingInstall, StateStore
from usbupdater.target import TargetRecord

V1 = TargetRecord("intel-corei7-64-lmp-1", 1, "a" * 64, {"app1": "hub/f/app1@sha256:" + "1" * 64})
V2 = TargetRecord("intel-corei7-64-lmp-2", 2, "b" * 64, {}, {"lmp-manifest-sha": "c0ffee"})


def test_missing_state_is_empty(tmp_path: Path) -> None:
    assert StateStore(tmp_path / "s").load() == DeviceState()


def test_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s")
    state = DeviceState(
        current=V1,
        pending=PendingInstall(V2, V1, True, "txn-1", "2026-01-01T00:00:00Z"),
        last_result=LastResult("install", 100, "reboot then run", V2.name, "t"),
    )
    store.save(state)
    assert store.load() == state
    assert not [p for p in store.dir.iterdir() if p.name.startswith(".")]  # no temp left


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "corrupt"),
        (b'{"format": "usbupdater-state", "version": 1, "curr', "corrupt"),
        (b"\xff\xfe", "corrupt"),
        (b"[]", "not a usbupdater state"),
        (b'{"format": "usbupdater-state", "version": 9}', "version 9"),
        (b'{"format": "usbupdater-state", "version": 1, "current": {"name": 3}}', "corrupt"),
    ],
)
def test_bad_state_is_a_clear_error_never_a_reset(tmp_path: Path, content: bytes, message: str):
    store = StateStore(tmp_path)
    store.state_path.write_bytes(content)
    with pytest.raises(StateError, match=message):
        store.load()
    assert store.state_path.read_bytes() == content  # untouched


def test_truncated_file_gives_the_documented_error(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(DeviceState(current=V1))
    full = store.state_path.read_bytes()
    store.state_path.write_bytes(full[: len(full) // 2])
    with pytest.raises(StateError) as exc:
        store.load()
    assert "corrupt" in exc.value.reason and "never reset" in exc.value.reason


WRITER = """
import sys
from usbupdater.state import DeviceState, StateStore, TargetRecord
store = StateStore(sys.argv[1])
i = int(sys.argv[2])
print("ready", flush=True)
while True:
    i += 1
    apps = {f"app{n}": "x" * 200 for n in range(i % 50)}  # documents of varying size
    store.save(DeviceState(current=TargetRecord(f"t-{i}", i, "c" * 64, apps)))
"""


def test_killed_writer_leaves_old_or_new_document(tmp_path: Path) -> None:
    """SIGKILL a writer at many points: the file is always a whole, valid document."""
    store = StateStore(tmp_path / "state")
    store.save(DeviceState(current=TargetRecord("t-0", 0, "c" * 64)))
    last = 0
    for round_ in range(25):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(store.dir), str(last)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(0.002 * (round_ % 7))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        state = store.load()  # raises if the document were torn
        assert state.current is not None
        assert state.current.version >= last  # never goes back
        assert state.current.name == f"t-{state.current.version}"
        last = state.current.version
    assert last > 0


def test_history_append_and_read(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.history() == []
    assert store.append_history({"id": "txn-1/install", "command": "install", "code": 100})
    assert store.append_history({"id": "txn-1/run", "command": "run", "code": 0})
    assert not store.append_history({"id": "txn-1/run", "command": "run", "code": 0})
    entries = store.history()
    assert [e["command"] for e in entries] == ["install", "run"]
    assert all("time" in e for e in entries)


def test_torn_history_line_is_ignored_then_cut(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.append_history({"id": "a", "code": 0})
    with open(store.history_path, "ab") as fh:
        fh.write(b'{"id": "b", "co')  # power lost mid-line
    assert [e["id"] for e in store.history()] == ["a"]
    store.append_history({"id": "c", "code": 0})
    assert [e["id"] for e in store.history()] == ["a", "c"]
    assert store.history_path.read_bytes().count(b"\n") == 2


def test_corrupt_history_line_in_the_middle_is_an_error(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.history_path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(StateError, match="line 2"):
        store.history()


def test_state_file_is_readable_json(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(DeviceState(current=V2))
    doc = json.loads(store.state_path.read_text())
    assert doc["format"] == "usbupdater-state" and doc["version"] == 1
    assert doc["current"]["custom"] == {"lmp-manifest-sha": "c0ffee"}
