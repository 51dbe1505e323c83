"""Exit codes of each updater core the service can drive, as one pure table.

The service drives its core only through the command line, so `[usbupdater] updater_dialect`
says whose exit codes it reads: ours (`usbupdater`), Foundries' original offline client
(`aklite-v1`, LmP v87..v92) or aklite-offline on aktualizr-lite's CLI API (`aklite-v2`, LmP v93
and later). `interpret(dialect, command, code)` turns a code into a normalised action (what to do
next) and a short meaning for people (for our own codes, `ExitCode.meaning`); policy.py
decides from the action only.

Sources (github:foundriesio/aktualizr-lite, read for facts, nothing copied):
- v1: `apps/aklite-offline/cmds.cpp` at tag mp-92 (commit 1d99244) over `src/offline/client.cc`
  (removed in 20e6c88): install 0/90/100/101/102 (101 "restart docker" became 10 in cef4337,
  shipped in mp-92), run 0/90/99/100/110/120, `check` and `current` always return 1.
- v2: `apps/aklite-offline/cmds.cpp` at c885c28 over `src/cli/cli.cc` and
  `include/aktualizr-lite/cli/cli.h` (`aklite::cli::StatusCode`): install 0 (75 "already
  installed" is remapped to 0), 10 apps need `run`, 90, 100, 102, 110/130 install-time rollback,
  check-in failures 4..15, 20, 30, 50/60/70, 80; run 0, 5 (boot firmware: reboot to confirm),
  40, 99 (raw 110), 100 (raw 120), 120 (raw 130); check 0/3 none, 16/17/18 an update;
  `current` prints the target and returns 1 (its `ret_code` is never set).
- The help texts `detect` reads: `apps/aklite-offline/main.cpp` and `cmds.h` at mp-92..mp-95.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from usbupdater.errors import ExitCode

# The dialects' names are the values of `[usbupdater] updater_dialect` (usbupdater.settings).
from usbupdater.settings import AKLITE as AKLITE
from usbupdater.settings import AKLITE_V1 as AKLITE_V1
from usbupdater.settings import AKLITE_V2 as AKLITE_V2
from usbupdater.settings import AUTO as AUTO
from usbupdater.settings import DIALECTS as DIALECTS
from usbupdater.settings import SETTING_VALUES as SETTING_VALUES
from usbupdater.settings import USBUPDATER as USBUPDATER

# Normalised actions. install:
UP_TO_DATE = "up-to-date"  # nothing installed: the device already runs the target
REBOOT_RUN = "reboot-then-run"
REBOOT_INSTALL = "reboot-then-install"  # confirm a boot firmware update first
ENGINE_RUN = "engine-then-run"  # apps only: restart the Docker engine, then `run`
RUN = "run"  # an earlier installation is pending: finish it first
# run:
UPDATED = "updated"
UPDATED_BOOT_FW = "updated-boot-firmware"  # updated; a reboot confirms the boot firmware
REBOOT_ROLLBACK = "reboot-to-roll-back"  # the apps failed: previous version deployed
ROLLED_BACK = "rolled-back"
NOTHING_PENDING = "nothing-pending"
# check:
UPDATE_AVAILABLE = "update-available"
NO_UPDATE = "no-update"
LISTED = "listed"  # only the output says (v1's check always returns 1)
# current:
READ_OUTPUT = "read-output"  # the target is in the output, whatever the code
# any command:
FAIL = "fail"


@dataclass(frozen=True)
class Meaning:
    """`verified`: an `install` code that comes only after the bundle's metadata verified."""

    action: str
    text: str
    verified: bool = False


def _m(action: str, text: str, verified: bool = False) -> Meaning:
    return Meaning(action, text, verified)


def _u(code: ExitCode, action: str, verified: bool = False) -> tuple[int, Meaning]:
    """A row of usbupdater's own tables: the text is the exit code's meaning (errors.py)."""
    return int(code), Meaning(action, code.meaning, verified)


_USB_INSTALL = dict(
    [
        _u(ExitCode.OK, UP_TO_DATE, True),
        _u(ExitCode.ERROR, FAIL),
        _u(ExitCode.NO_TARGET, FAIL, True),
        _u(ExitCode.CONTENT_MISSING, FAIL, True),
        _u(ExitCode.TUF_SECURITY, FAIL),
        _u(ExitCode.METADATA_EXPIRED, FAIL),
        _u(ExitCode.METADATA_MISSING, FAIL),
        _u(ExitCode.BUNDLE_METADATA_INVALID, FAIL),
        _u(ExitCode.TARGET_NOT_FOUND, FAIL, True),
        _u(ExitCode.INSTALL_PENDING, RUN, True),
        _u(ExitCode.NOTHING_PENDING, FAIL, True),
        _u(ExitCode.NO_SPACE, FAIL, True),
        _u(ExitCode.VERIFICATION_FAILED, FAIL, True),
        _u(ExitCode.BOOT_FIRMWARE, REBOOT_INSTALL, True),
        _u(ExitCode.ROLLED_BACK, FAIL, True),
        _u(ExitCode.NEEDS_REBOOT, REBOOT_RUN, True),
        _u(ExitCode.RESTART_ENGINE, ENGINE_RUN, True),
        _u(ExitCode.DOWNGRADE_REFUSED, FAIL, True),
        _u(ExitCode.ROLLED_BACK_UNKNOWN_APPS, FAIL, True),
        _u(ExitCode.NO_ROLLBACK_TARGET, FAIL, True),
    ]
)
_USB_RUN = dict(
    [
        _u(ExitCode.OK, UPDATED),
        _u(ExitCode.ERROR, FAIL),
        _u(ExitCode.INSTALL_PENDING, FAIL),
        _u(ExitCode.NOTHING_PENDING, NOTHING_PENDING),
        _u(ExitCode.BOOT_FIRMWARE, UPDATED_BOOT_FW),
        _u(ExitCode.ROLLED_BACK, ROLLED_BACK),
        _u(ExitCode.NEEDS_REBOOT, REBOOT_ROLLBACK),
        _u(ExitCode.ROLLED_BACK_UNKNOWN_APPS, ROLLED_BACK),
        _u(ExitCode.NO_ROLLBACK_TARGET, FAIL),
    ]
)
_USB_CHECK = dict(
    [
        (int(ExitCode.OK), _m(NO_UPDATE, "already on the best target")),
        _u(ExitCode.UPDATE_AVAILABLE, UPDATE_AVAILABLE),
    ]
)
_USB_CURRENT = dict([_u(ExitCode.OK, READ_OUTPUT)])

_V1_INSTALL = {
    0: _m(UP_TO_DATE, "the target is already installed", True),
    1: _m(FAIL, "error (aklite-offline v1 says 1 for every failure)"),
    10: _m(ENGINE_RUN, "apps installed; `run` starts them", True),  # mp-92
    90: _m(REBOOT_INSTALL, "a boot firmware update must be confirmed by a reboot first", True),
    100: _m(REBOOT_RUN, "reboot needed", True),
    101: _m(ENGINE_RUN, "apps installed; the Docker engine needs a restart", True),
    102: _m(FAIL, "downgrade refused", True),
}
_V1_RUN = {
    0: _m(UPDATED, "ok (or nothing was pending)"),
    1: _m(FAIL, "error"),
    90: _m(UPDATED_BOOT_FW, "updated; a reboot confirms the boot firmware"),
    99: _m(ROLLED_BACK, "the update failed; the device is back on the previous version"),
    100: _m(REBOOT_ROLLBACK, "the apps failed; reboot to complete the rollback"),
    110: _m(ROLLED_BACK, "rolled back to an unknown target; its apps are undefined"),
    120: _m(FAIL, "the apps failed and the rollback target is unknown or failed too"),
}
_V1_CHECK = {1: _m(LISTED, "v1 `check` always returns 1; its output lists the targets")}
_AKLITE_CURRENT = {
    0: _m(READ_OUTPUT, "ok"),
    1: _m(READ_OUTPUT, "aklite-offline `current` always returns 1"),
}

_V2_INSTALL = {
    0: _m(UP_TO_DATE, "ok, or the target is already installed", True),
    1: _m(FAIL, "unexpected error"),
    4: _m(FAIL, "the bundle's metadata could not be checked"),
    6: _m(FAIL, "no target for this device in the bundle", True),
    8: _m(FAIL, "target content missing from the bundle", True),
    10: _m(ENGINE_RUN, "apps installed; `run` starts them", True),
    11: _m(FAIL, "the bundle failed a security check"),
    12: _m(FAIL, "the bundle's metadata has expired"),
    13: _m(FAIL, "the bundle's metadata could not be read"),
    14: _m(FAIL, "the bundle's metadata is missing"),
    15: _m(FAIL, "the bundle's metadata is invalid (bundle-targets.json)"),
    20: _m(FAIL, "the requested target is not in the bundle", True),
    21: _m(FAIL, "no rollback target", True),
    # Returned before the bundle is read (cli.cc pullAndInstall): proves nothing about it.
    30: _m(RUN, "an earlier installation is still pending"),
    50: _m(FAIL, "copying the target from the bundle failed", True),
    60: _m(FAIL, "not enough space on the device", True),
    70: _m(FAIL, "the copied content failed verification", True),
    75: _m(UP_TO_DATE, "the target is already installed", True),
    80: _m(FAIL, "the target's content could not be pulled or verified", True),
    90: _m(REBOOT_INSTALL, "a boot firmware update must be confirmed by a reboot first", True),
    100: _m(REBOOT_RUN, "reboot needed", True),
    102: _m(FAIL, "downgrade refused", True),
    110: _m(FAIL, "the installation failed; the previous version was restored", True),
    130: _m(FAIL, "the installation failed and restoring the previous version failed", True),
}
_V2_RUN = {
    0: _m(UPDATED, "ok"),
    1: _m(FAIL, "unexpected error"),
    5: _m(UPDATED_BOOT_FW, "updated; a reboot confirms the boot firmware"),
    40: _m(NOTHING_PENDING, "nothing was pending"),
    99: _m(ROLLED_BACK, "the update failed; the device is back on the previous version"),
    100: _m(REBOOT_ROLLBACK, "the apps failed; reboot to complete the rollback"),
    110: _m(ROLLED_BACK, "the update failed; the device is back on the previous version"),
    120: _m(FAIL, "the rollback failed; the device is in an undefined state"),
    130: _m(FAIL, "the rollback failed; the device is in an undefined state"),
}
_V2_CHECK = {
    0: _m(NO_UPDATE, "no update"),
    3: _m(NO_UPDATE, "no update (metadata unchanged)"),
    16: _m(UPDATE_AVAILABLE, "a newer target"),
    17: _m(UPDATE_AVAILABLE, "the apps need syncing"),
    18: _m(UPDATE_AVAILABLE, "a rollback target"),
}


def _union(a: dict[int, Meaning], b: dict[int, Meaning]) -> dict[int, Meaning]:
    """v1's and v2's codes never ask for different actions (tested), so one table serves both;
    `b`'s text wins, a code counts as verified only when both say so."""
    out = dict(a)
    for code, m in b.items():
        old = out.get(code)
        out[code] = m if old is None else Meaning(m.action, m.text, m.verified and old.verified)
    return out


TABLE: dict[tuple[str, str], dict[int, Meaning]] = {
    (USBUPDATER, "install"): _USB_INSTALL,
    (USBUPDATER, "run"): _USB_RUN,
    (USBUPDATER, "check"): _USB_CHECK,
    (USBUPDATER, "current"): _USB_CURRENT,
    (AKLITE_V1, "install"): _V1_INSTALL,
    (AKLITE_V1, "run"): _V1_RUN,
    (AKLITE_V1, "check"): _V1_CHECK,
    (AKLITE_V1, "current"): _AKLITE_CURRENT,
    (AKLITE_V2, "install"): _V2_INSTALL,
    (AKLITE_V2, "run"): _V2_RUN,
    (AKLITE_V2, "check"): _V2_CHECK,
    (AKLITE_V2, "current"): _AKLITE_CURRENT,
    (AKLITE, "install"): _union(_V1_INSTALL, _V2_INSTALL),
    (AKLITE, "run"): _union(_V1_RUN, _V2_RUN),
    (AKLITE, "check"): _union(_V1_CHECK, _V2_CHECK),
    (AKLITE, "current"): _AKLITE_CURRENT,
}


def interpret(dialect: str, command: str, code: Optional[int]) -> Meaning:
    """What `code` of `command` means in `dialect`; unknown codes and no code are failures."""
    if code is None:
        return Meaning(FAIL, "the updater did not finish")
    found = TABLE.get((dialect, command), {}).get(code)
    return found if found is not None else Meaning(FAIL, f"exit code {code}")


# --- auto: which dialect a binary speaks ---------------------------------------------------------

_OWN = re.compile(r"^usbupdater\b", re.MULTILINE)
_VERSION = re.compile(
    r"(?:aklite-offline|aktualizr)[^\n]*?\b(?:mp-|v|version\s*:?\s*)(\d+)", re.IGNORECASE
)
FIRST_V2_LMP = 93  # mp-93 (2024-02): aklite-offline on the CLI API (run 5, 40)


def detect(version_text: str, help_text: str, install_help: str) -> tuple[str, str]:
    """The dialect of a core from what `--version`, `--help` and `install --help` printed
    (stdout and stderr together), and why. aklite-offline has no `--version` (it prints its usage
    and returns 1), so its usage text decides: the `[flags]` usage (mp-95+), the corrected
    "Unsupported command" (mp-95+) or an `install --target` flag (mp-94+) mean v2. The older
    usage is the same from mp-87 to mp-93, v1 and v2 alike: then `aklite`, both tables."""
    if _OWN.search(version_text):
        return USBUPDATER, "--version names usbupdater"
    m = _VERSION.search(version_text)
    if m:
        n = int(m.group(1))
        return (AKLITE_V2 if n >= FIRST_V2_LMP else AKLITE_V1), f"--version says {n}"
    every = "\n".join((version_text, help_text, install_help))
    if "aklite-offline" not in every:
        return USBUPDATER, "neither usbupdater nor aklite-offline: assuming usbupdater's codes"
    if re.search(r"aklite-offline <cmd> \[flags\]", every) or "Unsupported command" in every:
        return AKLITE_V2, "the usage text of LmP v95 and later"
    if re.search(r"--target\b", install_help):
        return AKLITE_V2, "install --target (LmP v94 and later)"
    return AKLITE, "the usage text of LmP v87..v93 (v1 and v2 codes both understood)"
