"""One time format for what usbupdater writes; older `+00:00` state still reads."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from usbupdater import timefmt
from usbupdater.state import DeviceState, LastResult, PendingInstall, StateStore
from usbupdater.target import TargetRecord

T = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_one_format() -> None:
    assert timefmt.text(T) == "2026-01-02T03:04:05Z"
    assert timefmt.stamp(T.timestamp()) == "2026-01-02T03:04:05Z"
    assert timefmt.text(T.astimezone(timezone(timedelta(hours=2)))) == "2026-01-02T03:04:05Z"
    assert timefmt.parse(timefmt.now()) <= datetime.now(timezone.utc)


@pytest.mark.parametrize(
    "value",
    [
        "2026-01-02T03:04:05Z",
        "2026-01-02T03:04:05+00:00",
        "2026-01-02T05:04:05+02:00",
        "2026-01-02T03:04:05.5Z",
        "2026-01-02T03:04:05.123456789+00:00",
    ],
)
def test_parse_reads_both_forms(value: str) -> None:
    assert timefmt.parse(value).replace(microsecond=0) == T
    assert timefmt.normalize(value) == "2026-01-02T03:04:05Z"


@pytest.mark.parametrize("value", ["", "yesterday", "2026-01-02T03:04:05"])
def test_normalize_keeps_what_is_no_time(value: str) -> None:
    with pytest.raises(ValueError):
        timefmt.parse(value)
    assert timefmt.normalize(value) == value


def test_state_written_with_offsets_reads_in_the_one_format(tmp_path: Path) -> None:
    """Releases before this one wrote `+00:00`: such a file still loads, in the one format."""
    old = "2026-01-02T03:04:05+00:00"
    target = TargetRecord("t", 1, "a" * 64, {}, {})
    store = StateStore(tmp_path)
    store.save(
        DeviceState(
            pending=PendingInstall(target, None, True, "x", old),
            last_result=LastResult("install", 100, "m", "t", old),
        )
    )
    assert old in (tmp_path / "state.json").read_text()  # as an older release wrote it
    st = store.load()
    assert st.pending is not None and st.pending.installed_at == "2026-01-02T03:04:05Z"
    assert st.last_result is not None and st.last_result.time == "2026-01-02T03:04:05Z"
