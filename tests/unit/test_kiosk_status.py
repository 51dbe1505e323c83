"""contrib/kiosk-status: the notify hook example draws what the service's variables say."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

HOOK = Path(__file__).resolve().parents[2] / "contrib" / "kiosk-status" / "kiosk-status"


def draw(tmp_path: Path, argv_phase: str, message: str, **env: str) -> tuple[int, str]:
    screen = tmp_path / "tty"
    screen.write_text("")
    full = {k: v for k, v in os.environ.items() if not k.startswith("USBUPDATER_")}
    full.update({f"USBUPDATER_{k.upper()}": v for k, v in env.items()}, KIOSK_TTY=str(screen))
    p = subprocess.run([str(HOOK), argv_phase, message], env=full, timeout=10, capture_output=True)
    return p.returncode, screen.read_text()


def test_progress_shows_a_bar_and_the_bytes(tmp_path: Path) -> None:
    code, text = draw(
        tmp_path,
        "installing",
        "copying root filesystem",
        phase="installing",
        percent="42.0",
        done_bytes=str(42 << 20),
        total_bytes=str(100 << 20),
    )
    assert code == 0
    assert "do not remove the stick" in text
    assert "[" + "#" * 16 + "." * 24 + "]" in text and "42.0 %" in text
    assert "42.0 MiB of 100.0 MiB" in text and "copying root filesystem" in text


def test_the_end_says_how_it_ended(tmp_path: Path) -> None:
    code, text = draw(
        tmp_path, "safe-to-remove", "done", result="failed", code="80", safe_to_remove="1"
    )
    assert code == 0 and "FAILED (code 80) - remove the stick" in text and "%" not in text


def test_no_screen_is_no_failure(tmp_path: Path) -> None:
    p = subprocess.run(
        [str(HOOK), "idle", ""],
        env={"PATH": os.environ["PATH"], "KIOSK_TTY": str(tmp_path / "none" / "tty")},
        timeout=10,
        capture_output=True,
    )
    assert p.returncode == 0 and not p.stderr
