"""Bootloader backends against stand-in tools that keep variables as files (as aktualizr-lite's
own tests do), the file-backed backend, and the reboot sentinel."""

from __future__ import annotations

from pathlib import Path

import pytest

from usbupdater.bootloader import (
    BOOT_VARIABLES,
    NoBootloader,
    RebootSentinel,
    ToolBootloader,
    make_bootloader,
)
from usbupdater.config import BootloaderConfig
from usbupdater.errors import AdapterError, ConfigError
from usbupdater.sim.boot import FileBootloader

# fw_printenv -n VAR / fiovb_printenv VAR / fioefi_printenv VAR, and NAME_setenv VAR VALUE.
PRINTENV = """#!/bin/sh
[ "$1" = "-n" ] && shift
[ -f {envdir}/.broken ] && {{ echo "Cannot read environment, using default" >&2; exit 2; }}
if [ -f "{envdir}/$1" ]; then cat "{envdir}/$1"; echo; exit 0; fi
echo "{unset}" >&2
exit 1
"""
SETENV = """#!/bin/sh
[ -f {envdir}/.broken ] && {{ echo "Cannot write environment" >&2; exit 3; }}
printf '%s' "$2" > "{envdir}/$1"
"""
TOOLS = {
    "uboot_generic": ("fw_printenv", "fw_setenv", '## Error: \\"$1\\" not defined'),
    "uboot_masked": ("fw_printenv", "fw_setenv", '## Error: \\"$1\\" not defined'),
    "fiovb": ("fiovb_printenv", "fiovb_setenv", "Failed to read: TEE_ERROR_ITEM_NOT_FOUND"),
    "fioefi": ("fioefi_printenv", "fioefi_setenv", "Variable not found"),
}


def make_tools(tmp_path: Path, mode: str) -> tuple[Path, Path]:
    printenv, setenv, unset = TOOLS[mode]
    bindir = tmp_path / "bin"
    envdir = tmp_path / "env"
    bindir.mkdir()
    envdir.mkdir()
    for name, text in ((printenv, PRINTENV), (setenv, SETENV)):
        script = bindir / name
        script.write_text(text.format(envdir=envdir, unset=unset))
        script.chmod(0o755)
    return bindir, envdir


def env_of(envdir: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in envdir.iterdir() if not p.name.startswith(".")}


@pytest.mark.parametrize("mode", sorted(TOOLS))
def test_tool_backend_operations(tmp_path: Path, mode: str) -> None:
    bindir, envdir = make_tools(tmp_path, mode)
    bl = make_bootloader(mode, tool_dir=bindir)
    assert isinstance(bl, ToolBootloader)
    for var in BOOT_VARIABLES:
        assert bl.get(var) is None  # unset is not an error
    bl.update_notify()
    assert env_of(envdir) == {"bootcount": "0", "upgrade_available": "1", "rollback": "0"}
    assert bl.get("upgrade_available") == "1"
    bl.set("bootcount", "2")
    assert bl.get_int("bootcount") == 2
    bl.set_boot_ok()
    assert env_of(envdir)["bootcount"] == "0"
    assert env_of(envdir)["upgrade_available"] == "0"
    assert env_of(envdir)["rollback"] == "0"

    assert bl.boot_fw_update_pending() is False
    (envdir / "bootupgrade_available").write_text("1")
    assert bl.boot_fw_update_pending() is (mode != "uboot_generic")
    (envdir / "bootupgrade_available").write_text("0")
    assert bl.boot_fw_update_pending() is False


def test_tools_found_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir, envdir = make_tools(tmp_path, "fiovb")
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    bl = make_bootloader("fiovb")
    bl.update_notify()
    assert env_of(envdir)["upgrade_available"] == "1"


@pytest.mark.parametrize("mode", sorted(TOOLS))
def test_missing_tool_is_named(tmp_path: Path, mode: str) -> None:
    bl = make_bootloader(mode, tool_dir=tmp_path)
    with pytest.raises(AdapterError, match=TOOLS[mode][0]):
        bl.get("bootcount")
    with pytest.raises(AdapterError, match=TOOLS[mode][1]):
        bl.update_notify()


def test_missing_tool_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AdapterError, match="fioefi_printenv: command not found"):
        make_bootloader("fioefi").boot_fw_update_pending()


def test_unreadable_environment_reads_as_unset_and_a_write_fails_plainly(tmp_path: Path) -> None:
    """aktualizr-lite's BootloaderLite: a variable the tool cannot read counts as 0 whatever the
    tool says; a failed write is an error, but the tool's own words are not the message."""
    bindir, envdir = make_tools(tmp_path, "uboot_masked")
    (envdir / ".broken").write_text("")
    bl = make_bootloader("uboot_masked", tool_dir=bindir)
    assert bl.get("bootupgrade_available") is None
    assert bl.boot_fw_update_pending() is False
    with pytest.raises(AdapterError, match=r"^fw_setenv bootcount 0 failed \(exit \d+\)$"):
        bl.update_notify()


def test_non_numeric_value(tmp_path: Path) -> None:
    bindir, envdir = make_tools(tmp_path, "fiovb")
    (envdir / "bootupgrade_available").write_text("yes")
    with pytest.raises(AdapterError, match="not a number"):
        make_bootloader("fiovb", tool_dir=bindir).boot_fw_update_pending()


def test_none_backend() -> None:
    bl = make_bootloader("none")
    assert isinstance(bl, NoBootloader)
    bl.update_notify()
    bl.set_boot_ok()
    assert bl.get("bootcount") is None
    assert bl.boot_fw_update_pending() is False


def test_unknown_mode() -> None:
    with pytest.raises(ConfigError):
        make_bootloader("grub")


def test_file_backend(tmp_path: Path) -> None:
    path = tmp_path / "env" / "bootenv.json"
    bl = FileBootloader(path, mode="fiovb")
    assert bl.get("rollback") is None
    bl.update_notify()
    assert FileBootloader(path).read_all() == {
        "bootcount": "0",
        "upgrade_available": "1",
        "rollback": "0",
    }
    bl.set("bootupgrade_available", "1")
    assert bl.boot_fw_update_pending()
    assert not FileBootloader(path, mode="uboot_generic").boot_fw_update_pending()
    path.write_text("[1, 2]")
    with pytest.raises(AdapterError, match="not a JSON object"):
        bl.get("rollback")
    path.write_text("{")
    with pytest.raises(AdapterError, match="cannot read"):
        bl.get("rollback")


def test_reboot_sentinel(tmp_path: Path) -> None:
    run = tmp_path / "run" / "aktualizr-session"
    cfg = BootloaderConfig(reboot_sentinel_dir=run, reboot_sentinel_name="need_reboot")
    s = RebootSentinel.from_config(cfg)
    assert s.path == run / "need_reboot"
    assert not s.is_set()
    s.set()
    assert s.is_set() and not s.rebooted_since_set()
    s.set()  # idempotent
    (run / "need_reboot").unlink()  # what a reboot does to the tmpfs
    assert s.rebooted_since_set()
    s.set()
    s.clear()
    s.clear()
    assert not s.is_set()
