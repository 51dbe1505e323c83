"""`usbupdater watch`: the long-running service that turns a plugged-in stick into an update.

This module is the dispatcher. Threads: the udev monitor only queues events; the dispatcher (main
thread) debounces them, keeps the set of sticks present and hands one at a time to a single
worker thread, which runs the job's state machine (jobs.py, decisions in policy.py) and posts
`JobDone` back. The worker owns the job's state; the dispatcher tells it only that its stick
left. At start the service first finishes what the marker says is in flight, then looks at the
sticks already present, then listens.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from types import FrameType
from typing import Any, Callable, Optional

from usbupdater import fsutil, log
from usbupdater.agent import policy
from usbupdater.agent.filter import Stick, refusal
from usbupdater.agent.jobs import RESCAN, STOP, Item, Job, JobDone, JobRunner, natural
from usbupdater.agent.journal import boot_token
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
        self.stopping = threading.Event()
        self.runner = JobRunner(s, self.status, self._find_stick, self.stopping)
        self.debouncer = Debouncer(s.settle_time)
        self.present: dict[str, Stick] = {}  # sticks plugged in now (settled), by DEVPATH
        self.processed: set[str] = set()  # handled while plugged in: not again until removed
        self.removed_uuids: set[str] = set()  # unplugged in this run: a replug asks again
        self.job: Optional[Job] = None
        self.worker: Optional[threading.Thread] = None
        self.hold = False  # a reboot is under way
        self._watcher_factory = watcher_factory or UdevWatcher
        self.watcher: Any = None

    # --- main loop ------------------------------------------------------------------------------

    def serve(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for d in {self.s.agent_state_dir, self.s.runtime_dir, self.s.status_file.parent}:
            fsutil.sweep_stale_temps(d)  # what a killed service left half-written
        self.runner.token = boot_token(self.s.boot_token_file)
        self.status.set("starting", "starting")
        self.watcher = self._watcher_factory(self.events.put, lambda: self.events.put(RESCAN))
        self.watcher.start()
        try:
            self.hold = self.runner.resume()
            self.runner.updater.dialect_now()  # `auto`: learn it now, from the binary booted
            for ev in self.watcher.coldplug():
                self.events.put(ev)
            sd_notify("READY=1")
            if self.status.snapshot().get("phase") == "starting":
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
                self.stopping.set()
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
        point = job.mountpoint
        if point is not None:
            self.runner.media.lazy_unmount(point)

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
        if self.worker is not None or self.hold or self.stopping.is_set():
            waiting = [st.devnode for st in candidates]
            if waiting and self.worker is not None and self.status.get("waiting") != waiting:
                self._log.info("sticks wait for the current one", waiting=waiting)
                self.status.remember(waiting=waiting)
            return
        if not candidates:
            return
        stick = candidates[0]
        replugged = stick.fs_uuid in self.removed_uuids
        self.removed_uuids.discard(stick.fs_uuid)  # this plug-in's retry is now being taken
        job = Job(stick, replugged=replugged, waiting=[st.devnode for st in candidates[1:]])
        self.processed.add(stick.key)
        self.job = job
        self.worker = threading.Thread(target=self._work, args=(job,), name="worker")
        self.worker.start()

    def _work(self, job: Job) -> None:
        hold = False
        try:
            hold = self.runner.run(job)
        except Exception as exc:  # a bug must not kill the service; say it and stay up
            self._log.exception("unexpected error while handling a stick", error=safe_text(exc))
            point = job.mountpoint
            if point is not None:
                self.runner.media.unmount(point)
            self.status.set("safe-to-remove", f"internal error: {exc!r}", result=policy.FAILED)
        finally:
            self.events.put(JobDone(hold))

    def _find_stick(self, fs_uuid: str) -> Optional[Stick]:
        """The stick with this filesystem UUID if it is plugged in (and acceptable) now."""
        if not fs_uuid or self.watcher is None:
            return None
        for ev in self.watcher.coldplug():
            if ev.props.get("ID_FS_UUID") == fs_uuid and refusal(ev.props, self.s) is None:
                return Stick.from_properties(ev.props)
        return None


def main(cfg: Any, config_paths: tuple[str, ...]) -> int:
    """Entry point of `usbupdater watch`."""
    s = AgentSettings.from_config(cfg, config_paths)
    return Service(s).serve()
