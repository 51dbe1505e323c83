"""One stick's job, run by the worker thread as the state machine of policy.py, and what the
dispatcher's queue carries (udev events, a finished job, STOP/RESCAN).

Each state's handler does the I/O (mount, call the core, run a hook, write the marker, the
status, the report) and gathers the facts; `policy.transition` picks the next state. Everything
that must survive a crash or a reboot is in the journal before the step that may not return.

Names from the stick and the core's reasons reach people only escaped (`textsafe`; the status
board escapes whatever it is given), and the stick is written to (the report, through a short
read-write mount) only when the core's exit code says the bundle's metadata verified.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from usbupdater import log, proc
from usbupdater.agent import policy, report
from usbupdater.agent.backend import Outcome, Progress, Updater
from usbupdater.agent.choose import CoreChooser
from usbupdater.agent.filter import Stick
from usbupdater.agent.journal import JobRecord, Journal
from usbupdater.agent.media import BundleOnStick, Media, MediaError, NoBundle, find_bundle
from usbupdater.agent.policy import Decision, Facts, State
from usbupdater.agent.settings import AgentSettings
from usbupdater.agent.status import StatusBoard
from usbupdater.agent.watcher import UEvent
from usbupdater.textsafe import safe_text


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


STOP = _Signal("STOP")
RESCAN = _Signal("RESCAN")


@dataclass(frozen=True)
class JobDone:
    hold: bool  # a reboot was requested: take no other stick in this boot


Item = Union[UEvent, JobDone, _Signal]


def natural(name: str) -> tuple[Any, ...]:
    """Sort key putting /dev/sdb2 before /dev/sdb10 (the order people expect)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


@dataclass
class Job:
    """One stick handed to the worker, with what the dispatcher knew when it did; the
    dispatcher may later tell it the stick left (`gone`)."""

    stick: Stick
    replugged: bool = False  # unplugged in this run of the service: a handled bundle goes again
    waiting: list[str] = field(default_factory=list)  # other sticks waiting their turn
    mountpoint: Optional[Path] = None
    gone: threading.Event = field(default_factory=threading.Event)


class JobRunner:
    """The machine that runs one stick (worker thread) or resumes the marker's job (at start,
    before the dispatcher takes any stick)."""

    def __init__(
        self,
        s: AgentSettings,
        status: StatusBoard,
        find_stick: Callable[[str], Optional[Stick]],
        stopping: threading.Event,
    ) -> None:
        self.s = s
        self.status = status
        self.media = Media(s)
        self.updater = Updater(s)
        self.chooser = CoreChooser(self.updater)  # a stick with several bundles: the core picks
        self.journal = Journal(s.agent_state_dir)
        self.find_stick = find_stick
        self.stopping = stopping
        self.token = ""
        self._log = log.get_logger("agent")

    # --- one stick --------------------------------------------------------------------------------

    def run(self, job: Job) -> bool:
        """MOUNTING, then the machine until DONE; True when a reboot is under way."""
        stick = job.stick
        shown = self.status.snapshot()  # how the last update ended, kept if nothing new happens
        self.status.reset(device=stick.devnode, stick=stick.describe(), waiting=job.waiting)
        self.status.set(State.MOUNTING.value, f"reading {stick.devnode}")
        bundle: Optional[BundleOnStick] = None
        seen: Optional[dict[str, Any]] = None
        why = ""
        try:
            job.mountpoint = self.media.mount(stick)
            bundle = find_bundle(job.mountpoint, stick.fs_uuid, self.chooser)
            seen = self.journal.handled(bundle.identity)
            found = policy.BUNDLE
        except MediaError as exc:
            self._log.error("cannot mount the stick", device=stick.devnode, error=str(exc))
            found, why = policy.MOUNT_FAILED, str(exc)
        except NoBundle as exc:
            self._log.info("stick ignored", device=stick.devnode, reason=safe_text(exc))
            found, why = policy.NO_BUNDLE, f"{stick.devnode}: {exc}; ignored"
        d = policy.transition(
            State.MOUNTING, Facts(found=found, handled=seen is not None, replugged=job.replugged)
        )
        if d.state is State.INSTALLING and bundle is not None:
            return self._drive(self._new_record(stick, bundle), d, job)
        self._unmount(job)
        if d.result == policy.FAILED:
            self.status.set("safe-to-remove", why, result=policy.FAILED)
        elif seen is None:
            self.status.set("idle", why, result=None)
        else:
            self._log.info("bundle already handled", device=stick.devnode, **seen)
            if shown.get("phase") == "safe-to-remove":  # keep showing how that update ended
                self.status.restore(shown)
                self.status.set("safe-to-remove", str(shown.get("message", "")))
            else:
                self.status.set(
                    "idle",
                    f"{stick.devnode}: this bundle was handled at {seen.get('time')} "
                    f"({seen.get('result')}); unplug and plug it again to retry",
                    result=None,
                )
        return False

    def _new_record(self, stick: Stick, bundle: BundleOnStick) -> JobRecord:
        previous = self.journal.load()
        rec = JobRecord(
            bundle=bundle.identity,
            stick=stick.describe(),
            bundle_path=str(bundle.path),
            targets_version=bundle.targets_version,
            boot_token=self.token,
        )
        if previous is not None:  # a job left in step "install": aktualizr-lite is ours still
            rec.aklite_stopped = previous.aklite_stopped
            if policy.retrying(previous.bundle, previous.step, bundle.identity):
                rec.attempts = previous.attempts + 1
                rec.notes = previous.notes
        return rec

    def _drive(self, rec: JobRecord, d: Decision, job: Optional[Job]) -> bool:
        """Carry out decisions until the job is done or a reboot is under way."""
        while True:
            if d.state is State.REBOOTING:
                return self._rebooting(rec, d, job)
            if d.state is State.REPORTING:
                self._reporting(rec, d, job)
                return False
            state = d.state
            if state is State.INSTALLING:
                assert job is not None  # only a stick's job installs; resume waits for the stick
                facts = self._installing(rec, job)
            elif state is State.RESTARTING_ENGINE:
                facts = self._restarting_engine(rec, d)
            elif state is State.FINISHING:
                facts = self._finishing(rec, d)
            else:  # DONE (MOUNTING is run()'s, before the record exists)
                return False
            d = policy.transition(state, facts)

    def _enter(self, rec: JobRecord, state: State) -> None:
        rec.step = policy.JOURNAL_STEP[state]
        self.journal.save(rec)  # an interrupted step is noticed at start

    def _installing(self, rec: JobRecord, job: Job) -> Facts:
        self._stop_aklite(rec, begin=True)
        rec.old_target = self.updater.current()
        self._enter(rec, State.INSTALLING)
        self.status.set(State.INSTALLING.value, "verifying the bundle", target=None, result=None)
        out = self.updater.call(["install", "-s", rec.bundle_path], self._progress)
        self._record(rec, out)
        if job.gone.is_set():
            rec.notes.append("the stick was removed during the install")
        return self._facts(rec, out)

    def _restarting_engine(self, rec: JobRecord, d: Decision) -> Facts:
        self._enter(rec, State.RESTARTING_ENGINE)
        self.status.set(State.RESTARTING_ENGINE.value, d.message)
        if self.s.engine_restart_command:
            try:
                proc.run(
                    self.s.engine_restart_command,
                    "the Docker engine restart",
                    self.s.command_timeout,
                )
            except proc.CommandError as exc:
                self._log.warning("command failed", error=exc.reason)
                rec.notes.append(exc.reason)
        return Facts(reboots=rec.reboots, max_reboots=self.s.max_reboots)

    def _finishing(self, rec: JobRecord, d: Decision) -> Facts:
        self._enter(rec, State.FINISHING)
        self.status.set(State.FINISHING.value, d.message or "starting the apps")
        out = self.updater.call(["run"], self._progress)
        self._record(rec, out)
        return self._facts(rec, out)

    def _facts(self, rec: JobRecord, out: Outcome) -> Facts:
        return Facts(
            code=out.code,
            reason=out.reason,
            dialect=out.dialect,
            confirm_boot_firmware=self.s.confirm_boot_firmware,
            rolling_back=policy.rolling_back(rec.outcomes[:-1]),
            reboots=rec.reboots,
            max_reboots=self.s.max_reboots,
        )

    def _rebooting(self, rec: JobRecord, d: Decision, job: Optional[Job]) -> bool:
        rec.after_reboot = d.after_reboot
        rec.reboots += 1
        rec.boot_token = self.token
        self._enter(rec, State.REBOOTING)  # durable before anything else: after the boot we go on
        if d.after_reboot != "install":
            self.journal.mark_handled(rec.bundle, "in progress", None)
        self.status.set(State.REBOOTING.value, d.message, result=None)
        self._write_report(rec, "rebooting", d.message, job)
        if job is not None:
            self._unmount(job)
        os.sync()
        if self.stopping.is_set():  # the system is going down anyway; the marker finishes it
            return True
        if self.s.reboot_command:
            try:
                proc.run(self.s.reboot_command, "reboot", self.s.command_timeout)
            except proc.CommandError as exc:
                self._log.error("reboot failed", error=exc.reason)
                why = f"{exc.reason}: reboot the device by hand to finish the update"
                self.status.set(State.REBOOTING.value, why)
        return True

    def _reporting(self, rec: JobRecord, d: Decision, job: Optional[Job]) -> None:
        rec.new_target = self.updater.current()
        self.journal.mark_handled(rec.bundle, d.result, rec.new_target)
        self.journal.clear()
        self.status.set(
            State.REPORTING.value,
            d.message,
            result=d.result,
            target=rec.new_target,
            code=rec.outcomes[-1]["code"] if rec.outcomes else None,
        )
        self._write_report(rec, d.result, d.message, job)
        if job is not None:
            self._unmount(job)
        if rec.aklite_stopped and self.s.aklite_start_command:  # only now may it run again
            try:
                proc.run(
                    self.s.aklite_start_command, "aktualizr-lite start", self.s.command_timeout
                )
            except proc.CommandError as exc:
                self._log.warning("aktualizr-lite not restarted", error=exc.reason)
        self._log.info("update finished", result=d.result, target=rec.new_target, message=d.message)
        self.status.set("safe-to-remove", f"{d.message}. It is safe to remove the stick.")

    def _progress(self, p: Progress) -> None:
        self.status.progress(p.percent, p.message, p.phase, p.done_bytes, p.total_bytes)

    def _record(self, rec: JobRecord, out: Outcome) -> None:
        rec.outcomes.append(out.to_json())
        self._log.info(
            "updater result", command=out.command, code=out.code, reason=safe_text(out.reason)
        )

    # --- resume after a reboot or a crash -------------------------------------------------------

    def resume(self) -> bool:
        """Go on with the job the marker shows in flight; True when a reboot is under way."""
        rec = self.journal.load()
        if rec is None:
            return False
        rebooted = rec.boot_token != self.token
        self._log.info("resuming", step=rec.step, after_reboot=rec.after_reboot, rebooted=rebooted)
        # Before anything else: the boot (or a restart after a failure) may have started
        # aktualizr-lite, and it must not act on a device half-way through an update.
        self._stop_aklite(rec, begin=False)
        self.status.reset(device=rec.stick.get("devnode"), stick=rec.stick)
        present = self.find_stick(rec.stick.get("fs_uuid", "")) is not None
        d = policy.resume(rec.step, rec.after_reboot, rebooted, present, rec.attempts)
        if rec.step == policy.JOURNAL_STEP[State.INSTALLING]:
            rec.notes.append(policy.INTERRUPTED)
        if d.state is State.INSTALLING:  # the stick, if still there, is installed when seen
            if rec.step != policy.JOURNAL_STEP[State.INSTALLING]:
                rec.attempts = 0  # a new install after the boot firmware's reboot
            rec.step, rec.boot_token = policy.JOURNAL_STEP[State.INSTALLING], self.token
            self.journal.save(rec)
            if d.message:
                self.status.set("idle", d.message)
            return False
        if d.state is State.REBOOTING:
            rec.reboots -= 1  # the same reboot, asked again
        rec.boot_token = self.token
        return self._drive(rec, d, None)

    # --- helpers ---------------------------------------------------------------------------------

    def _write_report(self, rec: JobRecord, result: str, message: str, job: Optional[Job]) -> None:
        """Write the report to the stick if it is (still) plugged in; never fail the job."""
        if not self.s.write_report:
            return
        if not policy.report_allowed(rec.outcomes):  # the stick proved nothing: tell it nothing
            self._log.info("no report written: the bundle's metadata did not verify")
            return
        stick = job.stick if job is not None else self.find_stick(rec.stick.get("fs_uuid", ""))
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
        try:  # any failure (inactive, missing tool, timeout) counts as "not running"
            proc.run(self.s.aklite_active_command, "aktualizr-lite check", self.s.command_timeout)
        except proc.CommandError:
            return
        if begin:
            rec.aklite_stopped = True
            self.journal.save(rec)
        self._log.info("stopping aktualizr-lite", job_begins=begin)
        if self.s.aklite_stop_command:
            try:
                proc.run(self.s.aklite_stop_command, "aktualizr-lite stop", self.s.command_timeout)
            except proc.CommandError as exc:
                self._log.warning("cannot stop aktualizr-lite", error=exc.reason)
