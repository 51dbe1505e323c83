"""What `install` changes on the device, and how each change is taken back (`Undo`).

Until the install's COMMIT POINT (the write of `state.json` with the pending record, in
`core`), every change is registered in an `Undo`: new blobs and app directories, the pulled
objects, the new deployment (so the previous default boots next), the boot variables
`update_notify` wrote and the reboot sentinel. A refusal runs it newest first and says what
failed and that nothing was installed, or what remains if undoing failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from usbupdater import log, progress
from usbupdater.bootloader import (
    ARMED_VARIABLES,
    FIRMWARE_VERSION_FILE,
    FIRMWARE_VERSION_FILE_MAX,
    plan_boot_firmware,
)
from usbupdater.core import (
    Device,
)
from usbupdater.errors import (
    AdapterError,
    UpdaterError,
)

if TYPE_CHECKING:
    from usbupdater.checkin import CheckIn

logger = log.get_logger("core")


class Undo:
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


def change_device(dev: Device, ci: CheckIn, bundle: Any, rootfs_changed: bool) -> Undo:
    """Store the apps and deploy the rootfs; on any failure, take back what was added.

    The commit is pulled first, then the app blobs are verified and copied: one stream from the
    stick at a time (benchmarks/stick_limit.py measured both orders on an ext4 stick at 30 MB/s:
    overlapping them was slower). Returns the undo steps: the caller runs them if its own steps
    up to the COMMIT POINT fail.
    """
    from usbupdater.apps.copying import CopyingSource
    from usbupdater.checkin import verify_content

    assert ci.selection.selected is not None
    t = ci.selection.selected.target
    undo = Undo()
    copying = CopyingSource(bundle, dev.app_store) if ci.selection.selected.apps else None
    if copying is not None:
        undo.add("new blobs in the app store", copying.discard_created)
    step = "verifying the content"
    try:
        if copying is not None:  # the apps' sizes are learnt as they are read: reserve them now
            progress.reserve(bundle.blob_bytes(), progress.APPS)
        if rootfs_changed and not dev.rootfs.has_commit(t.commit):
            progress.announce(
                "copying-rootfs", f"copying root filesystem {t.commit[:12]} from the stick"
            )
            dirs = dev.rootfs.object_dirs()
            undo.add(  # before the pull: a failed or killed pull leaves objects too
                "the new commit's objects in the sysroot repo",
                lambda: dev.rootfs.prune(keep_dirs=dirs),
            )
            dev.rootfs.pull(bundle.ostree_repo, t.commit)  # 60, 8, 80 or an ostree failure
        if copying is not None:
            progress.announce("verifying-apps", f"verifying and storing the apps of {t.name}")
            ci = verify_content(ci, copying)
            if ci.content_error is not None:
                raise ci.content_error  # 8 or 80
        if copying is not None:
            progress.announce(
                "copying-apps", f"recording {len(ci.apps)} app(s) in the device store"
            )
            created: list[Path] = []
            undo.add("new app directories", lambda: dev.app_store.remove_created(created))
            dev.app_store.add_apps(copying, ci.apps.values(), created)
        if rootfs_changed:
            # Rollback protection refuses before the deploy (which drops the rollback
            # deployment): aktualizr-lite's verifyBootloaderUpdate reads the repo's commit.
            plan_boot_firmware(
                dev.bootloader,
                lambda: dev.rootfs.read_commit_file(
                    t.commit, FIRMWARE_VERSION_FILE, FIRMWARE_VERSION_FILE_MAX
                ),
            )
            progress.announce("deploying", f"deploying {t.name}")
            step = "deploying the new root filesystem"
            undo.deployed = True
            undo.add(
                f"deployment {t.commit[:12]} as the next boot",
                lambda: _remove_new_deployment(dev, t.commit),
            )
            deployment = dev.rootfs.deploy(t.commit)  # a no-op when a killed run deployed it
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
    return undo
