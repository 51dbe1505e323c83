"""`usbupdater watch`: the long-running service that turns a plugged-in stick into an update.

Threads: the udev monitor only queues events; the dispatcher (main thread) debounces them, keeps
the set of sticks present and hands one at a time to a single worker thread; the worker mounts,
calls the updater and acts on its exit codes (policy.py). Everything that must survive a crash or
a reboot is in the journal before the step that may not return. At start the service first
finishes what the marker says is in flight, then looks at the sticks already present, then
listens.

Names from the stick and the core's reasons reach people only escaped (`textsafe`; the status
board escapes whatever it is given), and the stick is written to (the report, through a short
read-write mount) only when the core's exit code says the bundle's metadata verified.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional

from usbupdater import fsutil, log, proc
from usbupdater.agent import policy, report
from usbupdater.agent.backend import Outcome, Progress, Updater
from usbupdater.agent.choose import CoreChooser
from usbupdater.agent.filter import Stick, refusal
from usbupdater.agent.jobs import RESCAN, STOP, Item, Job, JobDone, natural
from usbupdater.agent.journal import JobRecord, Journal, boot_token
from usbupdater.agent.media import BundleOnStick, Media, MediaError, NoBundle, find_bundle
from usbupdater.agent.settings import AgentSettings
from usbupdater.agent.status import StatusBoard, sd_notify
from usbupdater.agent.watcher import Debouncer, UdevWatcher, UEvent
from usbupdater.textsafe import safe_text


class Service:
    def __init__(
        self,
        s: AgentSettings,
        *,
        watcher_factory: Optional[Callable[..., Any]] = None,
    ) -> None:
        self.s = s
        self._log = log.get_logger("agent")
        self.events: queue.Queue[Item] = queue.Queue()
        self.status = StatusBoard(s)
        self.media = Media(s)
        self.updater = Updater(s)
        self.chooser = CoreChooser(self.updater)  # a stick with several bundles: the core picks
        self.journal = Journal(s.agent_state_dir)
        self.debouncer = Debouncer(s.settle_time)
        self.present: dict[str, Stick] = {}  # sticks plugged in now (settled), by DEVPATH
        self.processed: set[str] = set()  # handled while plugged in: not again until removed
        self.removed_uuids: set[str] = set()  # unplugged in this run: a replug asks again
        self.job: Optional[Job] = None
        self.worker: Optional[threading.Thread] = None
        self.hold = False  # a reboot is under way
        self.stopping = False
        self.token = ""
        self._watcher_factory = watcher_factory or UdevWatcher
        self.watcher: Any = None

    # --- main loop ------------------------------------------------------------------------------

    def serve(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for d in {self.s.agent_state_dir, self.s.runtime_dir, self.s.status_file.parent}:
            fsutil.sweep_stale_temps(d)  # what a killed service left half-written
        self.token = boot_token(self.s.boot_token_file)
        self.status.set("starting", "starting")
        self.watcher = self._watcher_factory(self.events.put, lambda: self.events.put(RESCAN))
        self.watcher.start()
        try:
            self.resume()
            self.updater.dialect_now()  # `auto`: learn it now, from the binary booted
            for ev in self.watcher.coldplug():
                self.events.put(ev)
            sd_notify("READY=1")
            if self.status.doc.get("phase") == "starting":
                self.status.set("idle", "waiting for a USB stick")
            self._loop()
        finally:
            self.watcher.stop()
        return 0

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        self.events.put(STOP)

    def _loop(self) -> None:
        while True:
            deadline = self.debouncer.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item: Optional[Item] = self.events.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is STOP:
                self._log.info("stopping")
                self.stopping = True
                if self.worker is not None:
                    self.worker.join()
                return
            if item is RESCAN:
                self._rescan()
            elif isinstance(item, UEvent):
                self._on_event(item)
            elif isinstance(item, JobDone):
                if self.worker is not None:
                    self.worker.join()
                self.worker = None
                self.job = None
                self.hold = self.hold or item.hold
            for ev in self.debouncer.due(time.monotonic()):
                self._settled(ev)
            self._maybe_start()

    def _on_event(self, ev: UEvent) -> None:
        job = self.job
        if job is not None and ev.key == job.stick.key and not ev.present:
            self._stick_left(job)  # at once: the device node is gone, reads will fail
        self.debouncer.feed(ev, time.monotonic())

    def _stick_left(self, job: Job) -> None:
        if job.gone.is_set():
            return
        job.gone.set()
        self._log.warning("stick removed while in use", device=job.stick.devnode)
        if job.mountpoint is not None:
            self.media.lazy_unmount(job.mountpoint)

    def _settled(self, ev: UEvent) -> None:
        why = refusal(ev.props, self.s) if ev.present else "removed"
        if why is None:
            stick = Stick.from_properties(ev.props)
            if ev.key not in self.present:
                self._log.info("stick detected", source=ev.source, **stick.describe())
            self.present[ev.key] = stick
            return
        old = self.present.pop(ev.key, None)
        self.processed.discard(ev.key)
        if old is not None:
            self._log.info("stick gone", device=old.devnode)
            if old.fs_uuid:
                self.removed_uuids.add(old.fs_uuid)
            if self.worker is None and not self.hold:
                self.status.set("idle", "waiting for a USB stick", waiting=self._waiting())
        else:
            self._log.debug("device ignored", device=ev.props.get("DEVNAME"), reason=why)

    def _candidates(self) -> list[Stick]:
        """Sticks present and not yet handled, in a stable order (by device node)."""
        busy = self.job.stick.key if self.job else None
        return sorted(
            (st for k, st in self.present.items() if k not in self.processed and k != busy),
            key=lambda st: natural(st.devnode),
        )

    def _waiting(self) -> list[str]:
        return [st.devnode for st in self._candidates()]

    def _rescan(self) -> None:
        seen = set()
        for ev in self.watcher.coldplug():
            seen.add(ev.key)
            self.debouncer.feed(ev, time.monotonic())
        for key in list(self.present):
            if key not in seen:
                self.debouncer.feed(UEvent("remove", {"DEVPATH": key}), time.monotonic())

    def _maybe_start(self) -> None:
        candidates = self._candidates()
        if self.worker is not None or self.hold or self.stopping:
            waiting = [st.devnode for st in candidates]
            if waiting and self.worker is not None and self.status.doc.get("waiting") != waiting:
                self._log.info("sticks wait for the current one", waiting=waiting)
                self.status.doc["waiting"] = waiting
            return
        if not candidates:
            return
        job = Job(candidates[0])
        self.processed.add(job.stick.key)
        self.job = job
        self.worker = threading.Thread(target=self._work, args=(job,), name="worker")
        self.worker.start()

    def _work(self, job: Job) -> None:
        hold = False
        try:
            hold = self.handle(job)
        except Exception as exc:  # a bug must not kill the service; say it and stay up
            self._log.exception("unexpected error while handling a stick", error=safe_text(exc))
            self._unmount(job)
            self.status.set("safe-to-remove", f"internal error: {exc!r}", result=policy.FAILED)
        finally:
            self.events.put(JobDone(hold))

    # --- one stick --------------------------------------------------------------------------------

    def handle(self, job: Job) -> bool:
        """Mount, install, act on the codes; True when a reboot is under way."""
        stick = job.stick
        shown = dict(self.status.doc)  # how the last update ended, kept if nothing new happens
        self.status.reset(device=stick.devnode, stick=stick.describe(), waiting=self._waiting())
        self.status.set("mounting", f"reading {stick.devnode}")
        try:
            job.mountpoint = self.media.mount(stick)
        except MediaError as exc:
            self._log.error("cannot mount the stick", device=stick.devnode, error=str(exc))
            self.status.set("safe-to-remove", str(exc), result=policy.FAILED)
            return False
        try:
            bundle = find_bundle(job.mountpoint, stick.fs_uuid, self.chooser)
        except NoBundle as exc:
            self._log.info("stick ignored", device=stick.devnode, reason=safe_text(exc))
            self._unmount(job)
            self.status.set("idle", f"{stick.devnode}: {exc}; ignored", result=None)
            return False
        seen = self.journal.handled(bundle.identity)
        if seen is not None and stick.fs_uuid not in self.removed_uuids:
            self._log.info("bundle already handled", device=stick.devnode, **seen)
            self._unmount(job)
            if shown.get("phase") == "safe-to-remove":  # keep showing how that update ended
                self.status.doc = shown
                self.status.set("safe-to-remove", str(shown.get("message", "")))
                return False
            self.status.set(
                "idle",
                f"{stick.devnode}: this bundle was handled at {seen.get('time')} "
                f"({seen.get('result')}); unplug and plug it again to retry",
                result=None,
            )
            return False
        self.removed_uuids.discard(stick.fs_uuid)
        previous = self.journal.load()
        record = JobRecord(
            bundle=bundle.identity,
            stick=stick.describe(),
            bundle_path=str(bundle.path),
            targets_version=bundle.targets_version,
            boot_token=self.token,
        )
        if previous is not None:  # a job left in step "install": aktualizr-lite is ours still
            record.aklite_stopped = previous.aklite_stopped
            if previous.bundle == bundle.identity and previous.step == "install":
                record.attempts = previous.attempts + 1
                record.notes = previous.notes
        return self._install(job, record, bundle)

    def _install(self, job: Job, rec: JobRecord, bundle: BundleOnStick) -> bool:
        self._stop_aklite(rec, begin=True)
        rec.old_target = self.updater.current()
        self.journal.save(rec)  # step "install": an interrupted install is noticed at start
        self.status.set("installing", "verifying the bundle", target=None, result=None)
        out = self.updater.call(["install", "-s", str(bundle.path)], self._progress)
        self._record(rec, out)
        if job.gone.is_set():
            rec.notes.append("the stick was removed during the install")
        decision = policy.after_install(out.code, out.reason, out.dialect)
        return self._act(rec, decision, job)

    def _progress(self, p: Progress) -> None:
        self.status.progress(p.percent, p.message, p.phase)

    def _record(self, rec: JobRecord, out: Outcome) -> None:
        rec.outcomes.append(out.to_json())
        self._log.info(
            "updater result", command=out.command, code=out.code, reason=safe_text(out.reason)
        )

    def _act(self, rec: JobRecord, d: policy.Decision, job: Optional[Job]) -> bool:
        """Carry out decisions until the job is done or a reboot is under way."""
        while True:
            if d.step == "engine":
                rec.step = "engine"
                self.journal.save(rec)
                self.status.set("restarting-engine", d.message)
                err = self._command(self.s.engine_restart_command, "restart the Docker engine")
                if err:
                    rec.notes.append(err)
                d = policy.Decision("run", message="starting the apps")
            if d.step == "run":
                rec.step = "run"
                self.journal.save(rec)
                self.status.set("finishing", d.message or "starting the apps")
                out = self.updater.call(["run"], self._progress)
                self._record(rec, out)
                rolling_back = any(policy.rolls_back(o) for o in rec.outcomes[:-1])
                d = policy.after_run(
                    out.code, out.reason, self.s.confirm_boot_firmware, rolling_back, out.dialect
                )
                continue
            if d.step == "reboot":
                if rec.reboots >= self.s.max_reboots:
                    d = policy.Decision(
                        "done", policy.FAILED, f"gave up after {rec.reboots} reboots: {d.message}"
                    )
                    continue
                return self._reboot(rec, d, job)
            self._finish(rec, d, job)
            return False

    def _reboot(self, rec: JobRecord, d: policy.Decision, job: Optional[Job]) -> bool:
        rec.step = "reboot"
        rec.after_reboot = d.after_reboot
        rec.reboots += 1
        rec.boot_token = self.token
        self.journal.save(rec)  # durable before anything else: after the reboot we go on
        if d.after_reboot != "install":
            self.journal.mark_handled(rec.bundle, "in progress", None)
        self.status.set("rebooting", d.message, result=None)
        self._write_report(rec, "rebooting", d.message, job)
        if job is not None:
            self._unmount(job)
        os.sync()
        if self.stopping:  # the system is going down anyway; the marker finishes the job
            return True
        err = self._command(self.s.reboot_command, "reboot")
        if err:
            self._log.error("reboot failed", error=err)
            self.status.set("rebooting", f"{err}: reboot the device by hand to finish the update")
        return True

    def _finish(self, rec: JobRecord, d: policy.Decision, job: Optional[Job]) -> None:
        rec.new_target = self.updater.current()
        self.journal.mark_handled(rec.bundle, d.result, rec.new_target)
        self.journal.clear()
        self.status.set(
            "reporting",
            d.message,
            result=d.result,
            target=rec.new_target,
            code=rec.outcomes[-1]["code"] if rec.outcomes else None,
        )
        self._write_report(rec, d.result, d.message, job)
        if job is not None:
            self._unmount(job)
        if rec.aklite_stopped:  # the job is over: only now may aktualizr-lite run again
            err = self._command(self.s.aklite_start_command, "start aktualizr-lite")
            if err:
                self._log.warning("aktualizr-lite not restarted", error=err)
        final = f"{d.message}. It is safe to remove the stick."
        self._log.info("update finished", result=d.result, target=rec.new_target, message=d.message)
        self.status.set("safe-to-remove", final)

    # --- resume after a reboot or a crash -------------------------------------------------------

    def resume(self) -> None:
        rec = self.journal.load()
        if rec is None:
            return
        rebooted = rec.boot_token != self.token
        self._log.info("resuming", step=rec.step, after_reboot=rec.after_reboot, rebooted=rebooted)
        # Before anything else: the boot (or a restart after a failure) may have started
        # aktualizr-lite, and it must not act on a device half-way through an update.
        self._stop_aklite(rec, begin=False)
        self.status.reset(device=rec.stick.get("devnode"), stick=rec.stick)
        if rec.step == "install":
            # The service stopped while the updater installed (the updater went with it).
            note = "the service stopped during the install"
            rec.notes.append(note)
            if self._find_stick(rec.stick.get("fs_uuid", "")) is None:
                why = f"{note}, and the stick is gone"
                self._finish(rec, policy.Decision("done", policy.FAILED, why), None)
            elif rec.attempts >= 2:
                why = f"{note}, twice: giving up"
                self._finish(rec, policy.Decision("done", policy.FAILED, why), None)
            else:
                self.journal.save(rec)  # the stick, if still there, is installed again
                self.status.set("idle", f"{note}; trying again if the stick is still there")
            return
        if rec.step == "reboot" and not rebooted:
            d = policy.Decision(
                "reboot",
                message="the reboot did not happen; rebooting",
                after_reboot=rec.after_reboot,
            )
            rec.reboots -= 1  # the same reboot, asked again
            self.hold = self._reboot(rec, d, None)
            return
        if rec.step == "reboot" and rec.after_reboot == "install":
            # The stick, if still there, is installed now (the marker, back in step "install",
            # keeps what aktualizr-lite needs at the end); without it the job ends here.
            if self._find_stick(rec.stick.get("fs_uuid", "")) is None:
                why = "the boot firmware is confirmed; plug the stick in again to install"
                self._finish(rec, policy.Decision("done", policy.FAILED, why), None)
            else:
                rec.step, rec.attempts, rec.boot_token = "install", 0, self.token
                self.journal.save(rec)
            return
        if rec.step == "reboot" and rec.after_reboot == "none":
            d = policy.Decision("done", policy.UPDATED, "updated")
        else:  # after a reboot that asked for `run`, or a crash during engine/run steps
            d = policy.Decision("run", message="finishing the update after the reboot")
        rec.boot_token = self.token
        self.hold = self._act(rec, d, None)

    # --- helpers ---------------------------------------------------------------------------------

    def _write_report(self, rec: JobRecord, result: str, message: str, job: Optional[Job]) -> None:
        """Write the report to the stick if it is (still) plugged in; never fail the job."""
        if not self.s.write_report:
            return
        if not policy.report_allowed(rec.outcomes):  # the stick proved nothing: tell it nothing
            self._log.info("no report written: the bundle's metadata did not verify")
            return
        stick = job.stick if job is not None else self._find_stick(rec.stick.get("fs_uuid", ""))
        if stick is None or (job is not None and job.gone.is_set()):
            self._log.info("no report written: the stick is not there")
            return
        doc = report.build(rec, self.s, result, message)
        point: Optional[Path] = None
        try:
            if job is not None:
                self._unmount(job)
            point = self.media.mount(stick, rw=True)
            path = report.write(point, self.s, doc)
            self._log.info("report written", path=str(path))
        except (OSError, MediaError, report.UnsafeStick) as exc:
            self._log.warning("cannot write the report to the stick", error=str(exc))
        finally:
            if point is not None:
                self.media.unmount(point)

    def _find_stick(self, fs_uuid: str) -> Optional[Stick]:
        if not fs_uuid or self.watcher is None:
            return None
        for ev in self.watcher.coldplug():
            if ev.props.get("ID_FS_UUID") == fs_uuid and refusal(ev.props, self.s) is None:
                return Stick.from_properties(ev.props)
        return None

    def _unmount(self, job: Job) -> None:
        if job.mountpoint is not None:
            self.media.unmount(job.mountpoint)
            job.mountpoint = None

    def _stop_aklite(self, rec: JobRecord, *, begin: bool) -> None:
        """Stop aktualizr-lite if it runs. When the job `begin`s, the marker first records that
        it ran (it is started again when the job ends, after any reboot); a stop at resume
        changes nothing there (the boot started it, or our own restart after a failure)."""
        if not self.s.aklite_active_command:
            return
        if self._command(self.s.aklite_active_command, "check aktualizr-lite", quiet=True):
            return
        if begin:
            rec.aklite_stopped = True
            self.journal.save(rec)
        self._log.info("stopping aktualizr-lite", job_begins=begin)
        err = self._command(self.s.aklite_stop_command, "stop aktualizr-lite")
        if err:
            self._log.warning("cannot stop aktualizr-lite", error=err)

    def _command(self, argv: tuple[str, ...], what: str, *, quiet: bool = False) -> str:
        """Run a helper command; an empty string when it worked, else why not."""
        if not argv:
            return ""
        name = os.path.basename(argv[0])
        try:
            proc.run(list(argv), name, self.s.command_timeout)
        except proc.CommandError as exc:  # fixed text: the tool's own stderr is not repeated
            msg = f"cannot {what}: {exc.reason}"
            if not quiet:
                self._log.warning("command failed", command=list(argv), error=msg)
                self._log.debug("command output", command=name, tail=exc.detail)
            return msg
        return ""


def main(cfg: Any, config_paths: tuple[str, ...]) -> int:
    """Entry point of `usbupdater watch`."""
    s = AgentSettings.from_config(cfg, config_paths)
    return Service(s).serve()
