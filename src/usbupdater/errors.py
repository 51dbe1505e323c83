"""Exit codes (spec section 4) and the exception carrying each failure class.

The numbers are aklite-offline's and aktualizr-lite's, so one script can drive either program.
Every failure raised inside usbupdater is an `UpdaterError` subclass: the CLI prints its one-line
`reason` and exits with its `code`; anything else is a bug and exits 1 with a traceback logged.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar, Optional


class ExitCode(IntEnum):
    """Every exit code the commands return, named after what the caller should do next.

    `meaning` is the short text people see for it (status file, report); what a caller does
    after each code of each command is the agent's table (agent/dialect.py)."""

    OK = 0  # install: nothing to do / run: updated and apps running
    ERROR = 1  # unexpected error or bad usage
    NO_TARGET = 6
    CONTENT_MISSING = 8
    TUF_SECURITY = 11  # signature, threshold, rollback, hash
    METADATA_EXPIRED = 12
    METADATA_MISSING = 14
    BUNDLE_METADATA_INVALID = 15  # bundle-targets.json signature, type, tag, expiry
    UPDATE_AVAILABLE = 16  # check
    TARGET_NOT_FOUND = 20  # --target names no installable target
    INSTALL_PENDING = 30  # install refused: call `run` first
    NOTHING_PENDING = 40  # run with nothing installed
    NO_SPACE = 60
    VERIFICATION_FAILED = 80
    BOOT_FIRMWARE = 90  # install: reboot first (boot firmware) / run: optional reboot confirms it
    ROLLED_BACK = 99  # run: failed, back on the previous version
    NEEDS_REBOOT = 100  # install: reboot then run / run: rolling back, reboot then run again
    RESTART_ENGINE = 101  # install (apps only): restart the Docker engine, then run
    DOWNGRADE_REFUSED = 102
    ROLLED_BACK_UNKNOWN_APPS = 110  # boot rollback, previous target's apps unknown
    NO_ROLLBACK_TARGET = 120

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]

    @classmethod
    def describe(cls, code: Optional[int]) -> str:
        """The meaning of a raw code; unknown codes and no code (the command did not finish)
        still get a text."""
        if code is None:
            return "the updater did not finish"
        try:
            return cls(code).meaning
        except ValueError:
            return f"exit code {code}"


_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "ok",
    ExitCode.ERROR: "unexpected error",
    ExitCode.NO_TARGET: "no target for this device in the bundle",
    ExitCode.CONTENT_MISSING: "target content missing from the bundle",
    ExitCode.TUF_SECURITY: "the bundle failed a security check (signature, threshold, rollback)",
    ExitCode.METADATA_EXPIRED: "the bundle's metadata has expired",
    ExitCode.METADATA_MISSING: "the bundle's metadata is missing",
    ExitCode.BUNDLE_METADATA_INVALID: (
        "the bundle's metadata is invalid (type, tag, signature or expiry)"
    ),
    ExitCode.UPDATE_AVAILABLE: "a newer target is installable",
    ExitCode.TARGET_NOT_FOUND: "the requested target is not in the bundle",
    ExitCode.INSTALL_PENDING: "an earlier installation is still pending",
    ExitCode.NOTHING_PENDING: "nothing was pending",
    ExitCode.NO_SPACE: "not enough space on the device",
    ExitCode.VERIFICATION_FAILED: "the bundle's content does not match its signed metadata",
    ExitCode.BOOT_FIRMWARE: "boot firmware update",
    ExitCode.ROLLED_BACK: "the update failed; the device is back on the previous version",
    ExitCode.NEEDS_REBOOT: "reboot needed",
    ExitCode.RESTART_ENGINE: "apps installed; the Docker engine needs a restart",
    ExitCode.DOWNGRADE_REFUSED: "downgrade refused",
    ExitCode.ROLLED_BACK_UNKNOWN_APPS: (
        "the new version failed to boot; rolled back, the previous apps are unknown"
    ),
    ExitCode.NO_ROLLBACK_TARGET: "the apps failed and no rollback target is known",
}


class UpdaterError(Exception):
    """A failure a person can act on: an exit code and a one-line reason."""

    code: ClassVar[ExitCode] = ExitCode.ERROR

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = " ".join(reason.split())  # always one line

    def __str__(self) -> str:
        return self.reason


class ConfigError(UpdaterError):
    """A configuration file is malformed or a required key is missing."""


class StateError(UpdaterError):
    """The device's state files are corrupt or of an unknown version."""


class LockBusyError(UpdaterError):
    """Another updater (aktualizr-lite or usbupdater) holds the aklite lock."""


class AdapterError(UpdaterError):
    """An external tool (ostree, bootloader tools, docker, mount) failed."""


class NoTargetError(UpdaterError):
    code = ExitCode.NO_TARGET


class ContentMissingError(UpdaterError):
    code = ExitCode.CONTENT_MISSING


class SecurityError(UpdaterError):
    code = ExitCode.TUF_SECURITY


class ExpiredError(UpdaterError):
    code = ExitCode.METADATA_EXPIRED


class MetadataMissingError(UpdaterError):
    code = ExitCode.METADATA_MISSING


class BundleMetadataError(UpdaterError):
    code = ExitCode.BUNDLE_METADATA_INVALID


class TargetNotFoundError(UpdaterError):
    code = ExitCode.TARGET_NOT_FOUND


class InstallPendingError(UpdaterError):
    code = ExitCode.INSTALL_PENDING


class NothingPendingError(UpdaterError):
    code = ExitCode.NOTHING_PENDING


class NoSpaceError(UpdaterError):
    code = ExitCode.NO_SPACE


class VerificationError(UpdaterError):
    code = ExitCode.VERIFICATION_FAILED


class DowngradeRefusedError(UpdaterError):
    code = ExitCode.DOWNGRADE_REFUSED
