"""A file's length and hash, as its verified parent declares them, are checked before parsing.

An unauthenticated 16 MiB targets.json must cost a read and a hash, never a JSON parse (which
took 8 s and 466 MB before), and the refusal must say why in one line (exit 11).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from trust_helpers import TARGETS, Device

from usbupdater.errors import SecurityError
from usbupdater.sim.signer import edit, meta_entry
from usbupdater.trust.dialect import MAX_TARGETS_SIZE

MiB = 1024 * 1024


def _big_targets(device: Device, size: int) -> None:
    """A correctly signed bundle whose targets.json is about `size` bytes, then one byte of its
    padding changed: same length, wrong hash."""
    pad = size - 4096
    targets = {**TARGETS, "hw-lmp-42": {**TARGETS["hw-lmp-42"]}}
    targets["hw-lmp-42"]["custom"] = {**targets["hw-lmp-42"]["custom"], "x-pad": "a" * pad}
    files = device.write_bundle(targets)
    data = files["targets.json"]
    assert len(data) > pad
    middle = data.index(b"a" * 1000) + 500
    device.files["targets.json"] = data[:middle] + b"b" + data[middle + 1 :]
    device.rewrite()


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of every text json.loads parses from now on."""
    sizes: list[int] = []
    real = json.loads

    def spy(text: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(text))
        return real(text, *args, **kwargs)

    monkeypatch.setattr(json, "loads", spy)
    return sizes


def test_mismatching_big_targets_is_not_parsed(device: Device, parsed: list[int]) -> None:
    _big_targets(device, MAX_TARGETS_SIZE - 64 * 1024)
    parsed.clear()
    start = time.monotonic()
    with pytest.raises(SecurityError) as info:
        device.verify()
    assert time.monotonic() - start < 2
    assert info.value.code == 11
    assert "targets v1: sha256 does not match" in info.value.reason
    assert "not parsed" in info.value.reason
    assert parsed and max(parsed) < MiB  # roots, timestamp, snapshot: never targets.json


def test_targets_longer_than_declared_is_not_read_whole(device: Device, parsed: list[int]) -> None:
    device.write_bundle()
    device.files["targets.json"] += b" " * (4 * MiB)
    device.rewrite()
    parsed.clear()
    with pytest.raises(SecurityError) as info:
        device.verify()
    assert "snapshot v1 declares" in info.value.reason
    assert max(parsed) < MiB


def test_trailing_whitespace_is_tolerated(device: Device) -> None:
    """Real vectors (libtufnano ed25519) carry a newline the declared length does not count."""
    device.write_bundle()
    device.files["targets.json"] += b"\n"
    device.rewrite()
    assert set(device.verify().targets) == set(TARGETS)


def test_small_pretty_printed_file_still_checked_in_canonical_form(device: Device) -> None:
    """aktualizr-lite hashes the canonical form; a small re-indented file still verifies."""
    files = device.write_bundle()
    pretty = json.dumps(json.loads(files["targets.json"]), indent=2).encode()
    assert pretty != files["targets.json"]
    device.files["targets.json"] = pretty
    device.rewrite()
    assert set(device.verify().targets) == set(TARGETS)


def test_snapshot_hash_checked_before_parsing(device: Device, parsed: list[int]) -> None:
    files = device.write_bundle()
    big = edit(files["snapshot.json"], lambda s: s.update({"x-pad": "a" * (900 * 1024)}))
    device.files["snapshot.json"] = big

    def declare(signed: dict[str, Any]) -> None:  # timestamp declares a different file
        signed["meta"]["snapshot.json"] = meta_entry(big.replace(b"aaaa", b"aaab", 1), 1)

    device.files["timestamp.json"] = device.repo.sign_role(
        "timestamp", json.loads(edit(files["timestamp.json"], declare))["signed"]
    )
    device.rewrite()
    parsed.clear()
    with pytest.raises(SecurityError) as info:
        device.verify()
    assert "snapshot v1: sha256 does not match" in info.value.reason
    assert "not parsed" in info.value.reason
    assert max(parsed) < 64 * 1024  # the roots and the timestamp only


def _config(device: Device) -> Path:
    cfg = device.root / "sota.toml"
    cfg.write_text(
        "[provision]\n"
        'primary_ecu_hardware_id = "hw"\n'
        "[storage]\n"
        f'path = "{device.root / "var/sota"}"\n'
        f'uptane_metadata_path = "{device.root / "usr/lib/sota/tuf"}"\n'
        "[pacman]\n"
        'tags = "main"\n'
        "[usbupdater]\n"
        f'lock_path = "{device.root / "aklite.lock"}"\n'
    )
    return cfg


def test_cli_check_refuses_big_tampered_targets_fast_and_small(device: Device) -> None:
    """The real CLI in a subprocess: exit 11 in well under 2 s with a peak RSS below 100 MB."""
    _big_targets(device, MAX_TARGETS_SIZE - 64 * 1024)
    cmd = [sys.executable, "-m", "usbupdater", "check", "-c", str(_config(device))]
    cmd += ["-s", str(device.tuf.parent)]
    # GNU time forks python from its own small process: the peak RSS it reports is python's
    # (a child forked from pytest would inherit pytest's high-water mark).
    peak_file = device.root / "peak-kib"
    cmd = ["/usr/bin/time", "-f", "%M", "-o", str(peak_file), *cmd]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 11, proc.stderr
    assert "does not match" in proc.stderr and "not parsed" in proc.stderr
    peak_kib = int(peak_file.read_text().split()[-1])
    assert peak_kib < 100 * 1024, peak_kib
    assert elapsed < 3, elapsed  # Python start-up included (about 0.5 s)
