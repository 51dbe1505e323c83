"""Hostile files: oversize, deep nesting, bad UTF-8, links, and fuzzed JSON never crash verify."""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trust_helpers import Device

from usbupdater.errors import SecurityError, UpdaterError
from usbupdater.trust.dialect import MAX_DEPTH, parse_json

ROLE_FILES = [
    "timestamp.json",
    "snapshot.json",
    "targets.json",
    "bundle-targets.json",
    "3.root.json",
]


def _replace(device: Device, name: str, data: bytes) -> None:
    device.files[name] = data
    device.rewrite()


def _prepare(device: Device) -> None:
    device.repo.rotate_root()  # so that 3.root.json exists
    device.write_bundle()


def _expect(device: Device, codes: tuple[int, ...] = (11,)) -> UpdaterError:
    with pytest.raises(UpdaterError) as info:
        device.verify()
    assert info.value.code in codes, info.value.reason
    return info.value


@pytest.mark.parametrize("name", ["targets.json", "timestamp.json"])
def test_twenty_megabyte_file_refused_before_reading(device: Device, name: str) -> None:
    _prepare(device)
    big = device.tuf / name
    with open(big, "wb") as fh:  # sparse: 20 MB on the stick, nothing to read
        fh.truncate(20 * 1024 * 1024)
    tracemalloc.start()
    start = time.monotonic()
    err = _expect(device)
    elapsed = time.monotonic() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "more than the" in err.reason and name in err.reason
    assert elapsed < 2 and peak < 4 * 1024 * 1024


def test_twenty_megabyte_json_document(device: Device) -> None:
    _prepare(device)
    blob = json.dumps({"signed": {"x": "a" * (20 * 1024 * 1024)}, "signatures": []}).encode()
    _replace(device, "targets.json", blob)
    assert "more than the" in _expect(device).reason


@pytest.mark.parametrize("name", ROLE_FILES)
def test_deeply_nested_json(device: Device, name: str) -> None:
    _prepare(device)
    _replace(device, name, b"[" * 500_000 + b"]" * 500_000)
    start = time.monotonic()
    err = _expect(device, (11, 15))
    assert time.monotonic() - start < 2
    if name in ("snapshot.json", "targets.json"):  # its parent declares its length: not parsed
        assert "declares" in err.reason
    else:
        assert "nested" in err.reason


def test_nesting_just_over_the_limit(device: Device) -> None:
    _prepare(device)
    doc: Any = {"x": 1}
    for _ in range(MAX_DEPTH):
        doc = {"n": doc}
    _replace(device, "timestamp.json", json.dumps({"signed": doc, "signatures": []}).encode())
    assert "nested deeper" in _expect(device).reason


@pytest.mark.parametrize("name", ROLE_FILES)
def test_invalid_utf8(device: Device, name: str) -> None:
    _prepare(device)
    _replace(device, name, device.files[name].replace(b'"version"', b'"versi\xff\xfen"', 1))
    assert "not valid UTF-8" in _expect(device, (11, 15)).reason


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"null",
        b"[]",
        b'{"signed": {}, "signatures": []}',
        b'{"signed": {"_type": "Timestamp"}, "signatures": {}}',
        b'{"signed": NaN, "signatures": []}',
        b'{"signed": {}, "signed": {}, "signatures": []}',
        b'{"signatures": [], "signed": {"version": 1' + b"0" * 5000 + b"}}",
        b'\xef\xbb\xbf{"signed": {}, "signatures": []}',
        b'{"signed": {"s": "\\ud800"}, "signatures": []}',
    ],
)
def test_malformed_timestamp(device: Device, data: bytes) -> None:
    _prepare(device)
    _replace(device, "timestamp.json", data)
    assert "timestamp.json" in _expect(device).reason


def test_symlinked_role_file_is_refused(device: Device, tmp_path: Any) -> None:
    _prepare(device)
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes(device.files["timestamp.json"])
    os.unlink(device.tuf / "timestamp.json")
    os.symlink(outside, device.tuf / "timestamp.json")
    assert "symbolic link" in _expect(device).reason


def test_directory_in_place_of_a_file(device: Device) -> None:
    _prepare(device)
    os.unlink(device.tuf / "snapshot.json")
    os.mkdir(device.tuf / "snapshot.json")
    _expect(device)


def test_parse_json_bounds() -> None:
    assert parse_json(b'{"a": [1, {"b": null}]}', "x") == {"a": [1, {"b": None}]}
    with pytest.raises(SecurityError, match="duplicate key"):
        parse_json(b'{"a": 1, "a": 2}', "x")


# --- property-based fuzzing -----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)

_FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _fuzz_doc(signed: Any, template: dict[str, Any]) -> dict[str, Any]:
    """A document shaped like `template` with parts replaced by fuzz."""
    doc = json.loads(json.dumps(template))
    if isinstance(signed, dict):
        doc["signed"].update(signed)
    else:
        doc["signed"] = signed
    return doc


@pytest.mark.parametrize("name", ROLE_FILES)
@_FUZZ
@given(data=st.data())
def test_fuzzed_json_never_crashes(device: Device, name: str, data: st.DataObject) -> None:
    if not device.files:
        _prepare(device)
    template = json.loads(device.files[name])
    choice = data.draw(st.sampled_from(["whole", "signed", "field", "bytes"]))
    if choice == "whole":
        blob = json.dumps(data.draw(json_values)).encode()
    elif choice == "signed":
        blob = json.dumps(_fuzz_doc(data.draw(json_values), template)).encode()
    elif choice == "field":
        key = data.draw(st.sampled_from([*sorted(template["signed"]), "signatures"]))
        doc = json.loads(json.dumps(template))
        if key == "signatures":
            doc["signatures"] = data.draw(json_values)
        else:
            doc["signed"][key] = data.draw(json_values)
        blob = json.dumps(doc).encode()
    else:
        raw = bytearray(device.files[name])
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        blob = bytes(raw)
    (device.tuf / name).write_bytes(blob)
    try:
        device.verify()
    except UpdaterError as exc:
        assert exc.code in (11, 12, 14, 15)
        assert "\n" not in exc.reason
    finally:
        (device.tuf / name).write_bytes(device.files[name])
