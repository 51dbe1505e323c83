"""`current-target` is sourced by shell scripts: stick-chosen (signed) values must not run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from usbupdater.core import write_current_target
from usbupdater.target import TargetRecord

C1 = "1" * 64

NASTY = [
    "lmp-$(touch {marker})",
    "lmp-`touch {marker}`",
    'lmp-"; touch {marker}; x="',
    'lmp-\\"; touch {marker} #',
    "lmp-${{IFS}}$HOME'$(touch {marker})'",
    "lmp-\n touch {marker}\n",
    "lmp-\r\x1b[2Jtouch {marker}\x00\x7f\x85",
    "lmp-\ud800-é-中",
]


def _source(path: Path, var: str) -> str:
    p = subprocess.run(
        ["sh", "-c", f'. "$1"; printf %s "${var}"', "sh", str(path)],
        capture_output=True,
        timeout=10,
        check=True,
    )
    return p.stdout.decode("utf-8")


@pytest.mark.parametrize("template", NASTY)
def test_sourcing_never_executes_and_values_round_trip(tmp_path: Path, template: str) -> None:
    marker = tmp_path / "ran"
    value = template.format(marker=marker)
    custom = {
        "lmp-manifest-sha": value,
        "containers-sha": "`touch " + str(marker) + "`",
        "tags": [value, "main"],
    }
    path = tmp_path / "current-target"
    write_current_target(path, TargetRecord(value, 7, C1, {}, custom))
    assert len(path.read_text().splitlines()) == 5  # one KEY="value" per line
    expected = "".join(
        "?" if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) < 0xE000 else c
        for c in value
    )
    assert _source(path, "TARGET_NAME") == expected
    assert _source(path, "LMP_MANIFEST_SHA") == expected
    assert _source(path, "CONTAINERS_SHA") == f"`touch {marker}`"
    assert _source(path, "TAG") == f"{expected},main"
    assert _source(path, "CUSTOM_VERSION") == "7"
    assert not marker.exists()


def test_plain_values_keep_aktualizr_lites_format(tmp_path: Path) -> None:
    path = tmp_path / "current-target"
    write_current_target(path, TargetRecord("lmp-2", 2, C1, {}, {"tags": ["main"]}))
    assert path.read_text() == 'TARGET_NAME="lmp-2"\nCUSTOM_VERSION="2"\nTAG="main"\n'
