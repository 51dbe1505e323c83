"""The updater core: `install` and `run`, aklite-offline's contract, returning exit codes.

`install` checks in (trust, selection, app content), then changes the device: app blobs into
the store (copied while they are verified, so the stick is read once), the rootfs pulled and
deployed when the commit differs, the bootloader armed, and finally the pending record written.
`run` completes it after the reboot (or the engine restart): it checks which rootfs booted,
starts the apps, and confirms the target or rolls back.

Crash safety: every step can be killed and re-run. Before its commit point a step leaves
nothing the next run would misread (blobs are content-addressed, deploying the commit that is
already the newest deployment is a no-op); the commit point of each step is one atomic write of
`state.json`, marked `COMMIT POINT` below, and history entries carry the installation's id so a
re-run never writes one twice.

Refusals: an install that fails before its commit point takes back everything it changed
(`install_change.Undo`). `run`'s steps after the reboot are in `run_steps`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from usbupdater import decisions, fsutil, log, progress, timefmt
from usbupdater.booted import BootedCommitSource, ProcCmdlineBootedCommit
from usbupdater.bootloader import (
    Bootloader,
    RebootSentinel,
    make_bootloader,
)
from usbupdater.config import Config
from usbupdater.errors import (
    AdapterError,
    ConfigError,
    ExitCode,
    InstallPendingError,
    NoSpaceError,
    NothingPendingError,
    UpdaterError,
)
from usbupdater.lock import AkliteLock
from usbupdater.rootfs import OstreeSysroot
from usbupdater.state import DeviceState, LastResult, PendingInstall, StateStore
from usbupdater.target import TargetRecord

if TYPE_CHECKING:
    from usbupdater.apps.runner import AppsContext
    from usbupdater.apps.store import AppStore
    from usbupdater.checkin import CheckIn

logger = log.get_logger("core")


@dataclass
class Outcome:
    """What a command did: the exit code and a one-line message for people."""

    code: ExitCode
    message: str
    target: Optional[str] = None


def storage_watermark(cfg: Config) -> int:
    """`[pacman] storage_watermark` (aktualizr-lite's key: 80, clamped to 20..95 by AppStore)."""
    from usbupdater.apps.store import DEFAULT_STORAGE_WATERMARK

    text = cfg.table("pacman").get_str("storage_watermark", str(DEFAULT_STORAGE_WATERMARK))
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(
            f"[pacman] storage_watermark: expected a percentage, got {text!r}"
        ) from None


class Device:
    """The adapters of one device, built from configuration.

    `booted_source` and `bootloader` replace the real ones (the kernel command line, the
    `[bootloader] rollback_mode` tools): the simulation kit (`usbupdater.sim.core`) injects its
    recorded boot and file-backed boot variables here.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        booted_source: Optional[BootedCommitSource] = None,
        bootloader: Optional[Bootloader] = None,
    ) -> None:
        self.cfg = cfg
        self.state = StateStore(cfg.state_dir)
        source = booted_source or ProcCmdlineBootedCommit(cfg.pacman.sysroot)
        self.rootfs = OstreeSysroot(cfg.pacman.sysroot, cfg.pacman.os, booted_source=source)
        self.sentinel = RebootSentinel.from_config(cfg.bootloader)
        if bootloader is not None:
            self.__dict__["bootloader"] = bootloader  # the cached_property's slot

    @cached_property
    def bootloader(self) -> Bootloader:
        return make_bootloader(
            self.cfg.bootloader.rollback_mode, tool_dir=self.cfg.usbupdater.bootloader_tool_dir
        )

    @cached_property
    def app_store(self) -> AppStore:
        # Preloaded (LmP factory) apps count as present once they verify from the store.
        from usbupdater.apps.preload import DeviceAppStore

        return DeviceAppStore(
            self.cfg.pacman.reset_apps_root, storage_watermark(self.cfg), repair=True
        )

    @cached_property
    def apps(self) -> AppsContext:
        """The engine context; created only when apps are started (docker is imported then)."""
        from usbupdater.apps.runner import AppsContext

        ctx = AppsContext.from_config(self.cfg)
        ctx.store = self.app_store
        return ctx

    def booted_commit(self) -> Optional[str]:
        return self.rootfs.booted_commit()

    def lock(self) -> AkliteLock:
        return AkliteLock(self.cfg.usbupdater.lock_path)

    def sweep(self) -> None:
        """Remove temporaries a killed step left in the state directories (under the lock)."""
        for d in (self.state.dir, self.state.dir / "tuf"):
            fsutil.sweep_stale_temps(d)


# --- shared helpers ----------------------------------------------------------------------------


def finish(dev: Device, state: DeviceState, command: str, outcome: Outcome) -> Outcome:
    """Record the outcome as the last result (the state's commit point of a finished step)."""
    result = LastResult(command, int(outcome.code), outcome.message, outcome.target, timefmt.now())
    dev.state.save(replace(state, last_result=result))  # COMMIT POINT
    progress.done(outcome.message, outcome.code in progress.COMPLETE_CODES)
    return outcome


def end_run(
    dev: Device,
    state: DeviceState,
    outcome: Outcome,
    current: Optional[TargetRecord] = None,
    pending: Optional[PendingInstall] = None,
) -> Outcome:
    """Finish `run` with this current target and pending record (COMMIT POINT)."""
    return finish(dev, DeviceState(current, pending, state.last_result), "run", outcome)


def add_history(
    dev: Device,
    entry_id: str,
    command: str,
    target: Optional[TargetRecord],
    code: ExitCode,
    outcome: str,
    message: str,
) -> None:
    dev.state.append_history(
        {
            "id": entry_id,
            "command": command,
            "target": target.name if target else None,
            "version": target.version if target else None,
            "commit": target.commit if target else None,
            "code": int(code),
            "outcome": outcome,
            "message": message,
        }
    )


def transaction_id(
    target: TargetRecord, previous: Optional[TargetRecord], targets_version: int
) -> str:
    """The same installation gets the same id, so a re-run after a kill is recognised."""
    key = [
        target.name,
        target.commit,
        sorted(target.apps.items()),
        previous.name if previous else None,
        targets_version,
    ]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]


def shell_quote(value: str) -> str:
    """`value` as a double-quoted POSIX shell word that `. current-target` cannot execute.

    Inside double quotes only `\\`, `"`, `$` and a backtick are special: each gets a backslash.
    Control characters (a newline would split the line for line-oriented readers) and lone
    surrogates (not encodable) become `?`: the file keeps one `KEY="value"` per line.
    """
    out = []
    for ch in value:
        code = ord(ch)
        if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0 or 0xD800 <= code < 0xE000:
            out.append("?")
        elif ch in '\\"$`':
            out.append("\\" + ch)
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def write_current_target(path: Path, target: TargetRecord) -> None:
    """`/var/sota/current-target` in aktualizr-lite's `KEY="value"` format, shell-safe: the
    values come from signed metadata, but scripts source this file, so they are quoted."""
    lines = [f"TARGET_NAME={shell_quote(target.name)}"]
    lines.append(f"CUSTOM_VERSION={shell_quote(str(target.version))}")
    for key, var in (
        ("lmp-manifest-sha", "LMP_MANIFEST_SHA"),
        ("meta-subscriber-overrides-sha", "META_SUBSCRIBER_OVERRIDES_SHA"),
        ("containers-sha", "CONTAINERS_SHA"),
    ):
        value = target.custom.get(key)
        if isinstance(value, str) and value:
            lines.append(f"{var}={shell_quote(value)}")
    tags = target.custom.get("tags")
    tag_list = [str(t) for t in tags] if isinstance(tags, list) else []
    lines.append(f"TAG={shell_quote(','.join(tag_list))}")
    fsutil.atomic_write_text(path, "\n".join(lines) + "\n")


# --- check -------------------------------------------------------------------------------------


def check(cfg: Config, src: Path, *, device: Optional[Device] = None) -> CheckIn:
    """What `install` would do with this bundle, decided the same way; changes nothing.

    No lock and no write: the trust session is never committed, preloaded apps are verified
    without recording the verdict. Trust failures raise (11/12/14/15); `CheckIn.code` is the
    exit code (0 already on the best target, 16 one is installable, else the refusal).
    """
    from usbupdater.bundle import Bundle
    from usbupdater.checkin import verify_content
    from usbupdater.stick_bundles import device_view, resolve, select_in_view

    view = device_view(cfg, device or Device(cfg))
    src = resolve(cfg, src, view)  # a stick with several bundles: the one for this device
    with Bundle.open(src) as bundle:
        chosen = select_in_view(cfg, bundle, view)
        # the apps' sizes are learnt as they are read: an upper bound in the total now
        progress.reserve(bundle.blob_bytes(), progress.APPS)
        return verify_content(chosen, bundle)


# --- install -----------------------------------------------------------------------------------


def install(
    cfg: Config,
    src: Path,
    *,
    target_name: Optional[str] = None,
    force: bool = False,
    now: Optional[datetime] = None,
    device: Optional[Device] = None,
) -> Outcome:
    """aklite-offline `install`: 0 / 90 / 100 / 101, or raise the failure (device unchanged)."""
    dev = device or Device(cfg)
    with dev.lock():
        dev.sweep()
        state = dev.state.load()
        if state.pending is not None:
            raise InstallPendingError(
                f"an installation of {state.pending.target.name} is pending; "
                "call `usbupdater run` first (after a reboot when one was asked for)"
            )
        try:
            return _install_locked(dev, state, src, target_name, force, now)
        except OSError as exc:
            # A stick pulled out mid-read fails with EIO; the install cleaned up before the
            # state's commit point, so the device is as it was: say that in one line.
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(
                    "not enough space on the device (a write failed: no space left); nothing "
                    "was installed"
                ) from exc
            where = f" ({exc.filename})" if exc.filename else ""
            raise AdapterError(
                f"install stopped by an I/O error: {exc.strerror or exc}{where}; was the stick "
                "removed? Nothing was installed"
            ) from exc


def _install_locked(
    dev: Device,
    state: DeviceState,
    src: Path,
    target_name: Optional[str],
    force: bool,
    now: Optional[datetime],
) -> Outcome:
    from usbupdater.bundle import Bundle
    from usbupdater.checkin import device_facts, failed_targets, select, trust
    from usbupdater.install_change import change_device
    from usbupdater.selection import Action

    cfg = dev.cfg
    booted = booted_or_none(dev)
    facts = device_facts(cfg, state, failed_targets(dev.state.history()))
    # An install killed after it changed the device left what the device ran before: a
    # never-updated device must not infer its "initial" target from the new deployment.
    killed_midway, ran_before = dev.state.load_inflight()
    if killed_midway and state.current is None and ran_before is not None:
        facts = replace(facts, current=ran_before)
    progress.announce("verifying", f"verifying the bundle in {src}")
    with Bundle.open(src) as bundle:
        ci = select(
            trust(cfg, bundle, now),
            bundle,
            facts,
            target_name=target_name,
            force=force,
            booted=booted,
            app_installed=dev.app_store.has_app_version if cfg.pacman.apps_enabled else None,
        )
        cand, action = ci.selection.require()  # 6, 8, 20, 102
        t = cand.target
        if action is Action.ALREADY_INSTALLED:
            ci.session.commit()  # newer metadata is worth keeping: it raises the rollback floor
            return Outcome(ExitCode.OK, f"{t.name} is already installed", t.name)
        current = state.current or (ran_before if killed_midway else None) or ci.initial
        rootfs_changed = t.commit != (booted or (current.commit if current else None))
        bl = dev.bootloader
        fw_pending = rootfs_changed and bl.supports_boot_firmware and bl.boot_fw_update_pending()
        # ... unless a killed run of this install armed it: its deployment boots next, unbooted.
        fw_pending = fw_pending and dev.rootfs.pending_commit() != t.commit
        if decisions.boot_firmware_blocks(
            rootfs_changed, bl.supports_boot_firmware, cfg.pacman.ostree_update_block, fw_pending
        ):
            return Outcome(
                ExitCode.BOOT_FIRMWARE,
                "a boot firmware update waits for its confirming reboot: reboot, then install "
                "again",
                t.name,
            )
        dev.state.save_inflight(current)
        try:
            undo = change_device(dev, ci, bundle, rootfs_changed)
        except BaseException:
            with contextlib.suppress(OSError):  # refused: taken back, nothing to remember
                dev.state.clear_inflight()
            raise
    target = TargetRecord(t.name, t.version, t.commit, dict(cand.apps), dict(t.custom))
    txn = transaction_id(target, current, ci.trusted.targets_version)
    pending = PendingInstall(target, current, rootfs_changed, txn, timefmt.now())
    code = decisions.install_code(rootfs_changed)
    message = (
        f"installed {t.name}: reboot, then call `usbupdater run`"
        if rootfs_changed
        else f"installed {t.name} (apps only): restart the Docker engine, then call "
        "`usbupdater run`"
    )
    outcome = Outcome(code, message, t.name)
    try:
        ci.session.commit()  # newer verified metadata (kept even if the install is undone)
        # History first (its id makes a re-run after a kill write it once), then the state.
        add_history(dev, f"{txn}/install", "install", target, code, "installed", message)
        new_state = replace(state, pending=pending)
        done = finish(dev, new_state, "install", outcome)  # COMMIT POINT of install
    except (UpdaterError, OSError) as exc:
        # Nothing records the installation: take the deployment, boot variables, sentinel and
        # app store changes back, so the device does not boot a target nobody expects.
        refused = undo.refused("recording the installation", exc)
        with contextlib.suppress(UpdaterError, OSError):  # the state dir may be what failed
            dev.state.drop_last_history(f"{txn}/install")  # no trace of an undone install
            dev.state.clear_inflight()
        raise refused from exc
    with contextlib.suppress(OSError):  # the pending record now says it all
        dev.state.clear_inflight()
    tell_aklite(dev, target, "pending")  # after the commit point: see aklite_record
    return done


def tell_aklite(
    dev: Device, target: TargetRecord, mode: str, failed: Optional[TargetRecord] = None
) -> None:
    """Record an outcome in aktualizr-lite's database (ordering: `usbupdater.aklite_record`)."""
    from usbupdater.aklite_record import Mode, record

    record(dev.cfg, target, Mode(mode), failed)


def booted_or_none(dev: Device, *, quiet: bool = False) -> Optional[str]:
    """The booted commit, or None (logged) when the sysroot cannot tell."""
    try:
        return dev.booted_commit()
    except AdapterError as exc:
        (logger.debug if quiet else logger.warning)(
            "cannot tell the booted commit", reason=exc.reason
        )
        return None


# --- run ---------------------------------------------------------------------------------------


def run(cfg: Config, *, device: Optional[Device] = None) -> Outcome:
    """aklite-offline `run`: complete the pending installation; 0/90/99/100/110/120 or raise."""
    dev = device or Device(cfg)
    with dev.lock():
        dev.sweep()
        state = dev.state.load()
        if state.pending is None:
            raise NothingPendingError(
                "nothing to finish: no installation is pending (call `usbupdater install` first)"
            )
        from usbupdater.run_steps import run_locked

        return run_locked(dev, state, state.pending)
