from __future__ import annotations

import inspect

from usbupdater import errors
from usbupdater.errors import ExitCode

SPEC_CODES = {0, 1, 6, 8, 11, 12, 14, 15, 16, 20, 30, 40, 60, 80, 90, 99, 100, 101, 102, 110, 120}


def test_every_spec_code_has_a_name() -> None:
    assert {int(c) for c in ExitCode} == SPEC_CODES


def test_each_failure_class_carries_its_code() -> None:
    expected = {
        errors.NoTargetError: 6,
        errors.ContentMissingError: 8,
        errors.SecurityError: 11,
        errors.ExpiredError: 12,
        errors.MetadataMissingError: 14,
        errors.BundleMetadataError: 15,
        errors.TargetNotFoundError: 20,
        errors.InstallPendingError: 30,
        errors.NothingPendingError: 40,
        errors.NoSpaceError: 60,
        errors.VerificationError: 80,
        errors.DowngradeRefusedError: 102,
        errors.ConfigError: 1,
        errors.StateError: 1,
        errors.LockBusyError: 1,
    }
    for cls, code in expected.items():
        assert int(cls("x").code) == code, cls
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)]
    assert all(
        c in expected
        for c in classes
        if issubclass(c, errors.UpdaterError)
        and c not in (errors.UpdaterError, errors.AdapterError)
    )


def test_reason_is_one_line() -> None:
    e = errors.VerificationError("blob sha256:ab\nmismatch   here")
    assert e.reason == "blob sha256:ab mismatch here"
    assert str(e) == e.reason
