"""Acceptance: what people and journald see of a real install through the `watch` service.

The service's stderr is a file that plays systemd's journal stream (`JOURNAL_STREAM` names its
device and inode), so every line must carry its syslog priority as journald would record it
(`journalctl -p err` shows the failures). `status.json` `percent` is sampled while the real core
installs, and the notify hook records the numbers it is given."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.agent.conftest import recorded, write_script
from tests.agent.test_acceptance import bench  # noqa: F401 (a fixture; uses `factory` below)
from tests.progress_targets import MIB, progress_factory
from usbupdater import log
from usbupdater.sim.factory import Factory
from usbupdater.sim.signer import edit

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    """v1 flashed; v2 a new rootfs and an app large enough for the counted reads to show."""
    work = tmp_path_factory.mktemp("progress-factory")
    yield progress_factory(work, 32 * MIB, 32 * MIB)
    shutil.rmtree(work, ignore_errors=True)


def journal_stream(b: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the agent's log file its journal stream (the service inherits the variable)."""
    b.agent.log.touch()
    st = os.stat(b.agent.log)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")


def journal(b: Any) -> list[tuple[Optional[int], str]]:
    return [log.split_priority(x) for x in b.agent.log.read_text(errors="replace").splitlines()]


def with_hook(b: Any, tmp_path: Path) -> Path:
    """A notify hook recording phase, percent, bytes and the status file's percent."""
    out = tmp_path / "hook.log"
    hook = write_script(
        tmp_path / "hook.sh",
        'pct=$(grep \'"percent"\' "$USBUPDATER_STATUS_FILE" | tr -dc "0-9.")\n'
        f'echo "$USBUPDATER_PHASE|$USBUPDATER_PERCENT|$USBUPDATER_DONE_BYTES|'
        f'$USBUPDATER_TOTAL_BYTES|$pct" >> {out}\n',
    )
    cfg = tmp_path / "hook.toml"
    cfg.write_text(f'[usbupdater]\nnotify_command = "{hook}"\n')
    b.agent.cfgs.append(cfg)  # later files win
    return out


class Sampler(threading.Thread):
    """Reads status.json as often as it can while the install runs."""

    def __init__(self, b: Any) -> None:
        super().__init__(daemon=True)
        self.b = b
        self.stop = threading.Event()
        self.samples: list[tuple[str, Optional[float]]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            st = self.b.agent.status()
            if st:
                self.samples.append((str(st.get("phase")), st.get("percent")))
            self.stop.wait(0.005)


def test_percent_rises_to_100_and_the_hook_gets_the_same_numbers(
    bench: Any,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b = bench()
    hook_log = with_hook(b, tmp_path)
    journal_stream(b, monkeypatch)
    b.agent.start()
    b.agent.wait_status(lambda s: s.get("phase") == "idle", 30, "idle")
    sampler = Sampler(b)
    sampler.start()
    try:
        b.sticks.attach(b.image(b.stick(2)))
        b.wait_reboot_request()
    finally:
        sampler.stop.set()
        sampler.join()
    polled = [p for phase, p in sampler.samples if phase == "installing" and p is not None]
    assert polled == sorted(polled), polled  # never goes down
    calls = [ln.split("|") for ln in hook_log.read_text().splitlines()]
    during = [c for c in calls if c[0] == "installing" and c[1]]
    pcts = [float(c[1]) for c in during]
    assert pcts and pcts[-1] == 100.0, calls  # the install ends at 100 %
    assert pcts == sorted(pcts), calls
    assert all(float(c[4]) == float(c[1]) for c in during), calls  # the file says the same
    counted = [c for c in during if c[3] and int(c[3]) > 1]
    assert counted, calls  # the core counts the bytes it reads (rootfs pull, app blobs)
    assert any(0 < float(c[1]) < 100 for c in counted), calls  # the way up shows
    assert all(int(c[2]) <= int(c[3]) for c in counted), calls
    assert all(p is not None for p, _ in journal(b) if _), "a line without its priority"


def test_failures_reach_the_journal_as_errors(
    bench: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b = bench()
    bundle = b.stick(2)
    targets = bundle / "tuf" / "targets.json"
    targets.write_bytes(
        edit(targets.read_bytes(), lambda s: s.update(expires="2099-01-01T00:00:00Z"))
    )
    journal_stream(b, monkeypatch)
    b.agent.start()
    b.sticks.attach(b.image(bundle))
    st = b.wait_done()
    assert st["result"] == "failed", st
    b.agent.stop()
    lines = [(p, text) for p, text in journal(b) if text.strip()]
    assert lines and all(p is not None for p, _ in lines), lines[:5]
    for p, text in lines:  # a JSON record's priority is its level's
        if text.startswith("{"):
            assert p == log.priority(json.loads(text)["level"]), text
    errors = [text for p, text in lines if p is not None and p <= 3]  # journalctl -p err
    assert any(re.match(r"usbupdater: .*targets", t) for t in errors), errors
    infos = [text for p, text in lines if p == 6]
    assert any('"calling the updater"' in t for t in infos)
    assert "reboot" not in recorded(b.tmp)
