from __future__ import annotations

import io
import json
import os
from typing import Any

from usbupdater import log


def test_json_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    log.configure(2, stream=out)
    log.get_logger("core").info("installing", target="t-2")
    log.get_logger("core").debug("hidden at level 2")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["event"] == "installing" and rec["target"] == "t-2"
    assert rec["level"] == "info" and rec["component"] == "core" and "timestamp" in rec


def test_console_lines_are_plain_text() -> None:
    out = io.StringIO()
    log.configure(0, stream=out, json_lines=False)
    log.get_logger("core").debug("checking", step=1)
    text = out.getvalue()
    assert "checking" in text and "step=1" in text
    assert "\x1b[" not in text  # no colour codes


def test_levels_follow_aklite_offline() -> None:
    out = io.StringIO()
    log.configure(4, stream=out)
    logger = log.get_logger("x")
    logger.warning("w")
    logger.error("e")
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["e"]


def test_journal_lines_carry_the_syslog_priority() -> None:
    out = io.StringIO()
    log.configure(1, stream=out, journal=True)
    try:
        logger = log.get_logger("x")
        logger.debug("d")
        logger.info("i")
        logger.warning("w")
        logger.error("e")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("x")
        assert log.journal()
    finally:
        log.configure()
    lines = out.getvalue().splitlines()
    prios = [log.split_priority(line)[0] for line in lines if line.startswith("<")]
    assert prios == [7, 6, 4, 3, 3]
    assert json.loads(log.split_priority(lines[3])[1])["event"] == "e"  # still JSON after it


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path: Any, monkeypatch: Any) -> None:
    with open(tmp_path / "journal", "w") as fh:
        st = os.fstat(fh.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert log.is_journal_stream(fh)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not log.is_journal_stream(fh)
    assert not log.is_journal_stream(io.StringIO())
    assert log.split_priority("<3>{}") == (3, "{}") and log.split_priority("<9>x") == (None, "<9>x")
