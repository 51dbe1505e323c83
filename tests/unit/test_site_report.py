"""`usbupdater report`: reports parsed as untrusted input, one row per device, totals, exit code."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usbupdater import cli, site_report
from usbupdater.site_report import Row, parse, summarise


def report(
    serial: str = "S1",
    hwid: str = "hw-a",
    result: str = "updated",
    finished: str = "2026-12-04T10:00:00Z",
    **extra: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "usbupdater_report": 1,
        "result": result,
        "message": f"{result} message",
        "device": {"hardware_id": hwid, "serial": serial},
        "old_target": "lmp-1",
        "new_target": "lmp-2" if result == "updated" else "lmp-1",
        "reboots": 1,
        "finished": finished,
    }
    doc.update(extra)
    return doc


def raw(doc: Any) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "ok"),
    [
        (raw(report()), True),
        (raw(report(result="rebooting")), True),
        (b"", False),
        (b"not json", False),
        (b"\xff\xfe{}", False),
        (raw([1, 2]), False),
        (raw({**report(), "usbupdater_report": 2}), False),
        (raw(report(result="owned")), False),
        (raw(report(finished="yesterday")), False),
        (raw(report(reboots=-1)), False),
        (raw(report(reboots=True)), False),
        (raw(report(reboots=10**9)), False),
        (raw({**report(), "device": "x"}), False),
        (raw({**report(), "device": {"hardware_id": 5, "serial": "S"}}), False),
        (raw(report(message=["x"])), False),
        (b"[" * 100_000, False),  # deeper than the parser's recursion
    ],
)
def test_parse_accepts_only_reports(data: bytes, ok: bool) -> None:
    assert (parse(data) is not None) is ok


def test_parse_escapes_and_bounds_every_string() -> None:
    row = parse(raw(report(serial="S\x1b[2J\u202e", message="m" * 10_000)))
    assert row is not None
    assert "\x1b" not in row.serial and "\u202e" not in row.serial
    assert len(row.message) <= site_report.MAX_FIELD


def rows(*docs: Optional[dict[str, Any]]) -> list[Optional[Row]]:
    return [parse(raw(d)) if d is not None else None for d in docs]


@pytest.mark.parametrize(
    ("docs", "expect", "ok"),
    [
        ([], [], False),  # nothing on the stick is no success
        ([report()], [("S1", "updated")], True),
        ([report(result="up-to-date")], [("S1", "up-to-date")], True),
        ([report(result="rolled-back")], [("S1", "rolled-back")], False),
        ([report(result="failed")], [("S1", "failed")], False),
        ([report(result="rebooting")], [("S1", "rebooting")], False),
        # the later report of a device wins, whatever the file order
        (
            [report(finished="2026-12-04T11:00:00Z"), report(result="failed")],
            [("S1", "updated")],
            True,
        ),
        (
            [report(result="rebooting"), report(finished="2026-12-04T11:00:00Z")],
            [("S1", "updated")],
            True,
        ),
        # newest device first; same serial on another hardware id is another device
        (
            [
                report("S1", finished="2026-12-04T09:00:00Z"),
                report("S2", result="rolled-back", finished="2026-12-04T12:00:00Z"),
                report("S1", hwid="hw-b", result="up-to-date"),
            ],
            [("S2", "rolled-back"), ("S1", "up-to-date"), ("S1", "updated")],
            False,
        ),
        ([report(), None, None], [("S1", "updated")], True),
    ],
)
def test_summarise(docs: list[Any], expect: list[tuple[str, str]], ok: bool) -> None:
    s = summarise(rows(*docs))
    assert [(r.serial, r.result) for r in s.rows] == expect
    assert s.ok is ok
    assert s.skipped == sum(d is None for d in docs)
    assert sum(s.totals.values()) == len(s.rows)


def test_totals_and_report_counts() -> None:
    s = summarise(
        rows(
            report("A", result="failed", finished="2026-12-04T09:00:00Z"),
            report("A"),
            report("B", result="up-to-date"),
            report("C", result="rolled-back"),
            report("D", result="failed"),
            report("E", result="rebooting"),
        )
    )
    assert s.totals == {
        "updated": 1,
        "up-to-date": 1,
        "rolled-back": 1,
        "failed": 1,
        "unfinished": 1,
    }
    assert {r.serial: r.reports for r in s.rows}["A"] == 2
    line = site_report.totals_line(s)
    assert "1 updated, 1 up to date, 1 rolled back, 1 failed, 1 unfinished" in line


def test_csv_cells_never_start_a_formula() -> None:
    s = summarise(rows(report(serial="=HYPERLINK(1)", message="+cmd", old_target="-1")))
    got = list(csv.reader(io.StringIO(site_report.format_csv(s))))
    assert got[0] == list(site_report.COLUMNS)
    assert got[1][0] == "'=HYPERLINK(1)" and got[1][2] == "'-1" and got[1][7] == "'+cmd"


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        JSONISH.map(raw),
        st.dictionaries(st.sampled_from(sorted(report())), JSONISH).map(
            lambda d: raw({**report(), **d})
        ),
    )
)
def test_fuzz_parse_never_raises_and_output_is_clean(data: bytes) -> None:
    row = parse(data)
    s = summarise([row])
    for text in (site_report.format_text(s), site_report.format_csv(s)):
        assert all(ch.isprintable() or ch == "\n" for ch in text)
    json.dumps(site_report.to_json(s))
    if row is not None:
        assert row.result in site_report.RESULTS


def write(d: Path, name: str, doc: Any) -> None:
    (d / name).write_bytes(doc if isinstance(doc, bytes) else raw(doc))


def test_reads_a_stick_untrusted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / site_report.REPORT_DIR
    d.mkdir()
    write(d, "1-a.json", report("A"))
    write(d, "2-b.json", report("B", result="rolled-back"))
    write(d, "2-b.txt", b"the human twin, ignored")
    write(d, "3-big.json", b" " * (site_report.MAX_REPORT + 1))
    write(d, "4-bad.json", b"{")
    (tmp_path / "outside.json").write_bytes(raw(report("X")))
    os.symlink(tmp_path / "outside.json", d / "5-link.json")
    os.mkfifo(d / "6-fifo.json")
    (d / "7-dir.json").mkdir()
    code = cli.main(["report", "-s", str(tmp_path), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    # the same end time: ordered by hardware id, then serial, newest (highest) first
    assert [(r["serial"], r["result"]) for r in doc["devices"]] == [
        ("B", "rolled-back"),
        ("A", "updated"),
    ]
    assert doc["skipped"] == 5 and doc["reports"] == 2 and doc["ok"] is False
    assert doc["totals"]["rolled-back"] == 1


def test_exit_zero_when_all_ok_and_the_folder_may_be_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "a.json", report("A"))
    write(tmp_path, "b.json", report("B", result="up-to-date"))
    assert cli.main(["report", "-s", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 device(s): 1 updated, 1 up to date, 0 rolled back, 0 failed" in out
    assert cli.main(["report", "-s", str(tmp_path), "--csv"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_bounded_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(site_report, "MAX_FILES", 3)
    for i in range(5):
        write(tmp_path, f"{i}.json", report(f"S{i}"))
    assert len(site_report.read_dir(tmp_path)) == 3


def test_missing_stick_fails(tmp_path: Path) -> None:
    assert cli.main(["report", "-s", str(tmp_path / "nope")]) == 1
