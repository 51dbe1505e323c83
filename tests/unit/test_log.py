from __future__ import annotations

import io
import json

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
