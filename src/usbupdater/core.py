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
(`_Undo`): new blobs and app directories, the pulled objects, the new deployment (so the
previous default boots next), the boot variables `update_notify` wrote and the reboot sentinel.
Its message says what failed and that nothing was installed, or what remains if undoing failed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from usbupdater import decisions, fsutil, log
from usbupdater.booted import BootedCommitSource, ProcCmdlineBootedCommit, RecordedBootedCommit
from usbupdater.bootloader import (
    ARMED_VARIABLES,
    FIRMWARE_VERSION_FILE,
    FIRMWARE_VERSION_FILE_MAX,
    Bootloader,
    RebootSentinel,
    make_bootloader,
    plan_boot_firmware,
)
from usbupdater.config import Config
from usbupdater.decisions import AppsFailurePlan, Situation
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
from usbupdater.state import DeviceState, LastResult, PendingInstall, StateStore, TargetRecord
from usbupdater.state import utcnow as _utcnow

if TYPE_CHECKING:
    from usbupdater.apps.runner import AppsContext
    from usbupdater.apps.store import AppStore
    from usbupdater.checkin import CheckIn

logger = log.get_logger("core")


def progress(phase: str, message: str, percent: Optional[int] = None, **kw: Any) -> None:
    """A progress record the automation (and a person reading the log) can follow."""
    logger.info("progress", phase=phase, percent=percent, message=message, **kw)


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
    """The adapters of one device, built from configuration (the simulation plugs in here)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.state = StateStore(cfg.state_dir)
        uu = cfg.table("usbupdater")
        record = uu.get_opt_path("boot_record")
        source: BootedCommitSource = (
            RecordedBootedCommit(record) if record else ProcCmdlineBootedCommit(cfg.pacman.sysroot)
        )
        self.rootfs = OstreeSysroot(cfg.pacman.sysroot, cfg.pacman.os, booted_source=source)
        self._env_file = uu.get_opt_path("bootloader_env_file")
        self._tool_dir = uu.get_opt_path("bootloader_tool_dir")
        self.sentinel = RebootSentinel.from_config(cfg.bootloader)

    @cached_property
    def bootloader(self) -> Bootloader:
        return make_bootloader(
            self.cfg.bootloader.rollback_mode, tool_dir=self._tool_dir, env_file=self._env_file
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


def _finish(dev: Device, state: DeviceState, command: str, outcome: Outcome) -> Outcome:
    """Record the outcome as the last result (the state's commit point of a finished step)."""
    result = LastResult(command, int(outcome.code), outcome.message, outcome.target, _utcnow())
    dev.state.save(replace(state, last_result=result))  # COMMIT POINT
    progress(
        "done",
        outcome.message,
        100 if outcome.code == ExitCode.OK else None,
        code=int(outcome.code),
    )
    return outcome


def _end(
    dev: Device,
    state: DeviceState,
    outcome: Outcome,
    current: Optional[TargetRecord] = None,
    pending: Optional[PendingInstall] = None,
) -> Outcome:
    """Finish `run` with this current target and pending record (COMMIT POINT)."""
    return _finish(dev, DeviceState(current, pending, state.last_result), "run", outcome)


def _history(
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
            "sha256": target.sha256 if target else None,
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
        target.sha256,
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
    from usbupdater.checkin import as_current, device_facts, failed_targets, select
    from usbupdater.selection import Action

    cfg = dev.cfg
    booted = booted_or_none(dev)
    facts = device_facts(cfg, state, failed_targets(dev.state.history()))
    # An install killed after it changed the device left what the device ran before: a
    # never-updated device must not infer its "initial" target from the new deployment.
    killed_midway, ran_before = dev.state.load_inflight()
    if killed_midway and state.current is None and ran_before is not None:
        facts = replace(facts, current=as_current(ran_before))
    progress("verifying", f"verifying the bundle in {src}")
    with Bundle.open(src) as bundle:
        ci = select(
            cfg,
            bundle,
            facts,
            target_name=target_name,
            force=force,
            now=now,
            booted=booted,
            app_installed=dev.app_store.has_app_version if cfg.pacman.apps_enabled else None,
        )
        cand, action = ci.selection.require()  # 6, 8, 20, 102
        t = cand.target
        if action is Action.ALREADY_INSTALLED:
            ci.session.commit()  # newer metadata is worth keeping: it raises the rollback floor
            return Outcome(ExitCode.OK, f"{t.name} is already installed", t.name)
        current = state.current or (ran_before if killed_midway else None) or ci.initial
        rootfs_changed = t.sha256 != (booted or (current.sha256 if current else None))
        bl = dev.bootloader
        fw_pending = rootfs_changed and bl.supports_boot_firmware and bl.boot_fw_update_pending()
        # ... unless a killed run of this install armed it: its deployment boots next, unbooted.
        fw_pending = fw_pending and dev.rootfs.pending_commit() != t.sha256
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
            undo = _change_device(dev, ci, bundle, rootfs_changed)
        except BaseException:
            with contextlib.suppress(OSError):  # refused: taken back, nothing to remember
                dev.state.clear_inflight()
            raise
    target = TargetRecord(t.name, t.version, t.sha256, dict(cand.apps), dict(t.custom))
    txn = transaction_id(target, current, ci.trusted.targets_version)
    pending = PendingInstall(target, current, rootfs_changed, txn, _utcnow())
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
        _history(dev, f"{txn}/install", "install", target, code, "installed", message)
        new_state = replace(state, pending=pending)
        done = _finish(dev, new_state, "install", outcome)  # COMMIT POINT of install
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
    _tell_aklite(dev, target, "pending")  # after the commit point: see aklite_record
    return done


def _tell_aklite(
    dev: Device, target: TargetRecord, mode: str, failed: Optional[TargetRecord] = None
) -> None:
    """Record an outcome in aktualizr-lite's database (ordering: `usbupdater.aklite_record`)."""
    from usbupdater.aklite_record import Mode, record

    record(dev.cfg, target, Mode(mode), failed)


class _Undo:
    """What an install changed on the device so far, and how to take each change back.

    Until the install's COMMIT POINT (the write of `state.json` with the pending record) every
    change is registered here; a failure runs the undo steps newest first, so a refused install
    leaves the device as it found it: no new blob, app directory, deployment, boot variable or
    reboot sentinel. Returns what could not be undone, for an honest message.
    """

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], None]]] = []
        self.deployed = False  # a new deployment was (or may have been) made

    def add(self, remains: str, step: Callable[[], None]) -> None:
        """`remains`: what stays on the device when `step` fails."""
        self._steps.append((remains, step))

    def run(self) -> list[str]:
        left = []
        for remains, step in reversed(self._steps):
            try:
                step()
            except (UpdaterError, OSError) as exc:
                logger.error("undoing a refused install failed", remains=remains, reason=str(exc))
                left.append(remains)
        self._steps.clear()
        return left

    def refused(self, what: str, exc: BaseException) -> UpdaterError:
        """Undo everything, then the error to raise: `exc`'s class and code, a message saying
        what failed and what the device looks like now."""
        left = self.run()
        reason = exc.reason if isinstance(exc, UpdaterError) else _os_reason(exc)
        if self.deployed and not left:
            tail = "the new deployment was removed, nothing was installed"
        elif left:
            tail = "undoing it failed, left on the device: " + "; ".join(left)
        else:
            tail = "nothing was installed"
        cls = type(exc) if isinstance(exc, UpdaterError) else AdapterError
        return cls(f"{what} failed: {reason}; {tail}")


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return type(exc).__name__


def _remove_new_deployment(dev: Device, commit: str) -> None:
    """Drop the deployment of `commit` if it is the next boot and not the booted one, so the
    previous default boots next (a killed earlier run may have made it: no pending record
    wants it either)."""
    deps = dev.rootfs.deployments()
    top = deps[0] if deps else None
    if top is not None and top.commit == commit and not top.booted:
        dev.rootfs.undeploy(top.index)
    after = dev.rootfs.deployments()
    if after and after[0].commit == commit and not after[0].booted:
        raise AdapterError(f"deployment {commit[:12]} is still the next boot")


def _change_device(dev: Device, ci: CheckIn, bundle: Any, rootfs_changed: bool) -> _Undo:
    """Store the apps and deploy the rootfs; on any failure, take back what was added.

    The commit is pulled by ostree (its own process) while the app blobs are verified and
    copied, so the two biggest reads of the stick overlap on a multi-core device. Returns the
    undo steps: the caller runs them if its own steps up to the COMMIT POINT fail.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from usbupdater.apps.store import CopyingSource, content_from_verified
    from usbupdater.checkin import verify_content

    assert ci.selection.selected is not None
    t = ci.selection.selected.target
    undo = _Undo()
    copying = CopyingSource(bundle, dev.app_store) if ci.selection.selected.apps else None
    if copying is not None:
        undo.add("new blobs in the app store", copying.discard_created)
    pull: Optional[Future[None]] = None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ostree-pull")
    step = "verifying the content"
    try:
        if rootfs_changed and not dev.rootfs.has_commit(t.sha256):
            progress("copying-rootfs", f"copying root filesystem {t.sha256[:12]} from the stick")
            dirs = dev.rootfs.object_dirs()
            pull = pool.submit(dev.rootfs.pull, bundle.ostree_repo, t.sha256)
            undo.add(
                "the new commit's objects in the sysroot repo",
                lambda: dev.rootfs.prune(keep_dirs=dirs),
            )
        if copying is not None:
            progress("verifying-apps", f"verifying and storing the apps of {t.name}")
            ci = verify_content(ci, copying)
            if ci.content_error is not None:
                raise ci.content_error  # 8 or 80
        if pull is not None:
            pull.result()  # 60, 8, 80 or an ostree failure
        if copying is not None:
            progress("copying-apps", f"recording {len(ci.apps)} app(s) in the device store")
            created: list[Path] = []
            undo.add("new app directories", lambda: dev.app_store.remove_created(created))
            contents = [content_from_verified(v) for v in ci.apps.values()]
            dev.app_store.add_apps(copying, contents, created)
        if rootfs_changed:
            # Rollback protection refuses before the deploy (which drops the rollback
            # deployment): aktualizr-lite's verifyBootloaderUpdate reads the repo's commit.
            plan_boot_firmware(
                dev.bootloader,
                lambda: dev.rootfs.read_commit_file(
                    t.sha256, FIRMWARE_VERSION_FILE, FIRMWARE_VERSION_FILE_MAX
                ),
            )
            progress("deploying", f"deploying {t.name}")
            step = "deploying the new root filesystem"
            undo.deployed = True
            undo.add(
                f"deployment {t.sha256[:12]} as the next boot",
                lambda: _remove_new_deployment(dev, t.sha256),
            )
            deployment = dev.rootfs.deploy(t.sha256)  # a no-op when a killed run deployed it
            step = "arming the boot firmware update"  # from the deployment, as installNotify
            firmware = plan_boot_firmware(
                dev.bootloader,
                lambda: dev.rootfs.read_deployment_file(
                    deployment, FIRMWARE_VERSION_FILE, FIRMWARE_VERSION_FILE_MAX
                ),
            )
            step = "arming the bootloader"
            saved = dev.bootloader.read_vars((*ARMED_VARIABLES, *firmware.sets))
            undo.add(
                f"boot variables changed ({', '.join(saved)})",
                lambda: dev.bootloader.restore(saved),
            )
            dev.bootloader.update_notify()  # bootcount=0, upgrade_available=1, rollback=0
            firmware.apply(dev.bootloader)  # bootupgrade_available=1 for new boot firmware
            step = "setting the reboot sentinel"
            if not dev.sentinel.is_set():
                undo.add(f"the reboot sentinel {dev.sentinel.path}", dev.sentinel.clear)
            dev.sentinel.set()
    except BaseException as exc:
        pool.shutdown(wait=True)
        if not isinstance(exc, (UpdaterError, OSError)):
            undo.run()
            raise
        if undo.deployed:
            raise undo.refused(step, exc) from exc
        left = undo.run()
        if left:
            reason = exc.reason if isinstance(exc, UpdaterError) else _os_reason(exc)
            cls = type(exc) if isinstance(exc, UpdaterError) else AdapterError
            raise cls(
                f"{reason}; undoing the install failed, left on the device: " + "; ".join(left)
            ) from exc
        raise  # the caller's message for an I/O error (the stick pulled out) stands
    finally:
        pool.shutdown(wait=True)
    return undo


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
        return _run_locked(dev, state, state.pending)


def _run_locked(dev: Device, state: DeviceState, p: PendingInstall) -> Outcome:
    booted = booted_or_none(dev)
    rebooted = dev.sentinel.rebooted_since_set()
    situation = decisions.run_situation(p, rebooted, booted)
    logger.info(
        "run", pending=p.target.name, booted=booted, rebooted=rebooted, situation=situation.value
    )
    if situation is Situation.NOT_REBOOTED:
        return Outcome(
            ExitCode.NEEDS_REBOOT,
            f"{p.target.name} is installed but the device has not rebooted yet: reboot, then "
            "call `usbupdater run` again",
            p.target.name,
        )
    if situation is Situation.BOOT_ROLLED_BACK:
        return _after_boot_rollback(dev, state, p, booted)
    return _start_target(dev, state, p, booted)


def _start_apps(dev: Device, apps: Mapping[str, str], other: Optional[TargetRecord] = None) -> None:
    """Run exactly `apps`; only apps of `other` (the target being replaced) may be taken down,
    never a `[pacman] reset_apps` app nor a project no target lists (started by hand)."""
    if not dev.cfg.pacman.apps_enabled:
        return
    from usbupdater.apps.runner import run_apps

    contents = [dev.app_store.load_app(n, u) for n, u in sorted(apps.items())]
    known = set(apps) | set(other.apps if other is not None else ())
    run_apps(dev.apps, contents, known=known, keep=dev.cfg.pacman.reset_apps or ())


def _start_target(
    dev: Device, state: DeviceState, p: PendingInstall, booted: Optional[str]
) -> Outcome:
    t = p.target
    progress("starting-apps", f"starting the apps of {t.name}")
    try:
        _start_apps(dev, t.apps, p.previous)
    except UpdaterError as exc:
        return _after_apps_failure(dev, state, p, booted, exc)
    # Success: the target becomes current.
    bl = dev.bootloader
    bl.set_boot_ok()  # bootcount=0, upgrade_available=0
    dev.sentinel.clear()
    fw = bl.supports_boot_firmware and bl.boot_fw_update_pending()
    code = decisions.run_success_code(fw)
    verb = "rolled back to" if p.rollback_of else "updated to"
    message = f"{verb} {t.name}" + ("; an optional reboot confirms the boot firmware" if fw else "")
    write_current_target(dev.cfg.current_target_file, t)
    outcome = Outcome(code, message, t.name)
    outcome_name = "rolled-back" if p.rollback_of else "updated"
    _history(dev, f"{p.txn}/run", "run", t, code, outcome_name, message)
    _tell_aklite(dev, t, "current")  # before the commit point: a re-run records it again
    _end(dev, state, outcome, current=t)  # COMMIT POINT of run: the target is current
    _prune_images(dev, t, p.previous)
    _after_success_cleanup(dev, t, p.previous)
    return outcome


def _after_success_cleanup(
    dev: Device, target: TargetRecord, previous: Optional[TargetRecord]
) -> None:
    """Prune what usbupdater added and no target needs any more: the current target's and the
    rollback target's apps and `[pacman] reset_apps` stay. Failures never undo the update."""
    from usbupdater.trust import advance_time_floor, store_dir

    try:
        advance_time_floor(store_dir(dev.cfg), datetime.now(timezone.utc))
        if dev.cfg.pacman.apps_enabled:
            from usbupdater.apps.prune_images import stored_apps_to_keep

            # The current and rollback targets' apps stay, and `[pacman] reset_apps` apps
            # (aktualizr-lite handleRemovedApps keeps them too).
            keep = {
                *stored_apps_to_keep(dev.app_store, target, dev.cfg.pacman),
                *(previous.apps.items() if previous else ()),
            }
            dev.app_store.prune(sorted(keep), dev.cfg.pacman.reset_apps or ())
    except (UpdaterError, OSError) as exc:
        logger.warning("clean-up after the update failed", reason=str(exc))


def _prune_images(dev: Device, current: TargetRecord, rollback: Optional[TargetRecord]) -> None:
    """`[pacman] docker_prune`: drop engine images no app of these targets uses (never fails
    the update; see apps/prune_images.py)."""
    if not (dev.cfg.pacman.apps_enabled and dev.cfg.pacman.docker_prune):
        return
    from usbupdater.apps.prune_images import prune_after_update

    prune_after_update(dev.cfg, dev.app_store, current, rollback)


def _failed(dev: Device, p: PendingInstall, code: ExitCode, message: str) -> None:
    """Remember that the pending target failed (it is not installed again unless forced)."""
    failed = p.target if not p.rollback_of else None
    if failed is not None:
        _history(dev, f"{p.txn}/run", "run", failed, code, "failed", message)


def _after_boot_rollback(
    dev: Device, state: DeviceState, p: PendingInstall, booted: Optional[str]
) -> Outcome:
    """The bootloader did not boot the new rootfs: make the old one the default again."""
    prev = p.previous
    progress("rolling-back", f"{p.target.name} did not boot; back on the previous version")
    if booted is not None:
        dev.rootfs.rollback_to(booted)  # drops the failed deployment; no reboot needed
    dev.bootloader.set_boot_ok()
    dev.sentinel.clear()
    restored = False
    if decisions.apps_known(prev):
        assert prev is not None
        try:
            _start_apps(dev, prev.apps, p.target)
            restored = True
        except UpdaterError as exc:
            logger.error("restoring the previous apps failed", reason=exc.reason)
    code = decisions.boot_rollback_code(prev, restored)
    what = prev.name if prev else "the previous version"
    message = {
        ExitCode.ROLLED_BACK: f"{p.target.name} failed to boot; rolled back to {what}",
        ExitCode.ROLLED_BACK_UNKNOWN_APPS: f"{p.target.name} failed to boot; rolled back to "
        f"{what}, whose apps are unknown",
        ExitCode.NO_ROLLBACK_TARGET: f"{p.target.name} failed to boot; rolled back to {what} but "
        "its apps did not start",
    }[code]
    current = prev if prev is not None and booted == prev.sha256 else state.current
    _failed(dev, p, code, message)
    if not p.rollback_of:  # a failed rollback target was recorded failing already
        back = prev is not None and current is prev
        _tell_aklite(dev, *((prev, "rollback", p.target) if back else (p.target, "failed")))
    outcome = Outcome(code, message, p.target.name)
    return _end(dev, state, outcome, current=current)


def _after_apps_failure(
    dev: Device, state: DeviceState, p: PendingInstall, booted: Optional[str], exc: UpdaterError
) -> Outcome:
    """The new target's apps did not start: go back to the last good target."""
    prev = p.previous
    logger.error("apps failed to start", target=p.target.name, reason=exc.reason)
    if p.rollback_of:  # the rollback target's own apps failed: nothing left to try
        outcome = Outcome(
            ExitCode.NO_ROLLBACK_TARGET,
            f"rolling back to {p.target.name} failed too: {exc.reason}",
            p.target.name,
        )
        return _end(dev, state, outcome)
    # An initial target whose apps are unknown is no rollback target (aktualizr-lite: 120).
    plan = decisions.apps_failure_plan(prev if decisions.apps_known(prev) else None, booted)
    why = f"apps of {p.target.name} failed: {exc.reason}"
    _failed(dev, p, ExitCode.NEEDS_REBOOT, why)
    if plan is AppsFailurePlan.NO_TARGET:
        _tell_aklite(dev, p.target, "failed")
        outcome = Outcome(
            ExitCode.NO_ROLLBACK_TARGET, f"{why}; no rollback target is known", p.target.name
        )
        return _end(dev, state, outcome)
    assert prev is not None
    if plan is AppsFailurePlan.REDEPLOY:
        progress("rolling-back", f"{why}; redeploying {prev.name}")
        dev.rootfs.rollback_to(prev.sha256)
        dev.bootloader.update_notify()
        dev.sentinel.set()
        txn = f"{p.txn}-rollback"  # stable: a re-run after a kill is the same rollback
        rollback = PendingInstall(prev, None, True, txn, _utcnow(), rollback_of=p.target.name)
        _tell_aklite(dev, prev, "pending", p.target)
        outcome = Outcome(
            ExitCode.NEEDS_REBOOT,
            f"{why}; rolling back to {prev.name}: reboot, then call `usbupdater run` again",
            p.target.name,
        )
        return _end(dev, state, outcome, pending=rollback)
    progress("rolling-back", f"{why}; restarting the apps of {prev.name}")
    try:
        _start_apps(dev, prev.apps, p.target)
    except UpdaterError as exc2:
        _tell_aklite(dev, p.target, "failed")
        outcome = Outcome(
            ExitCode.NO_ROLLBACK_TARGET,
            f"{why}; restoring {prev.name} failed too: {exc2.reason}",
            p.target.name,
        )
        return _end(dev, state, outcome)
    dev.bootloader.set_boot_ok()
    write_current_target(dev.cfg.current_target_file, prev)
    _tell_aklite(dev, prev, "rollback", p.target)
    outcome = Outcome(ExitCode.ROLLED_BACK, f"{why}; rolled back to {prev.name}", p.target.name)
    return _end(dev, state, outcome, current=prev)
