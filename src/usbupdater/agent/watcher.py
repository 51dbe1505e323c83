"""Hearing about sticks: a pyudev monitor thread that only queues, coldplug, and a debouncer.

The monitor thread does nothing but copy each uevent's properties into the service's queue
(pyudev's own observer blocks on a slow callback, pyudev#194), so a stick is never missed while an
install runs. `Debouncer` is pure: a device is acted on only once its events have been quiet for
`settle_time`, so an add/remove storm from a bad connector collapses into its final state.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from usbupdater import log

PRESENT_ACTIONS = ("add", "change", "bind", "online", "move")


@dataclass(frozen=True)
class UEvent:
    action: str
    props: Mapping[str, str] = field(hash=False)
    source: str = "udev"  # "udev" or "coldplug"

    @property
    def key(self) -> str:
        return self.props.get("DEVPATH", "")

    @property
    def present(self) -> bool:
        """The device exists and (still) carries a filesystem after this event."""
        return self.action in PRESENT_ACTIONS and self.props.get("ID_FS_USAGE") == "filesystem"


class Debouncer:
    """Keeps the last event per device until it has been quiet for `settle` seconds."""

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self._last: dict[str, tuple[float, UEvent]] = {}

    def feed(self, ev: UEvent, now: float) -> None:
        if ev.key:
            self._last[ev.key] = (now + self.settle, ev)

    def next_deadline(self) -> Optional[float]:
        return min((d for d, _ in self._last.values()), default=None)

    def due(self, now: float) -> list[UEvent]:
        ready = sorted((k for k, (d, _) in self._last.items() if d <= now))
        return [self._last.pop(k)[1] for k in ready]

    def __contains__(self, key: str) -> bool:
        return key in self._last


def device_properties(dev: Any) -> dict[str, str]:
    """A plain copy of a pyudev Device's properties (safe to keep after the event)."""
    props = dev.properties
    return {str(k): str(props.get(k, "")) for k in props}


class UdevWatcher:
    """Block-device uevents from udev into `sink`, on a thread of its own."""

    def __init__(self, sink: Callable[[UEvent], None], on_error: Callable[[], None]) -> None:
        import pyudev

        self._log = log.get_logger("watcher")
        self._sink = sink
        self._on_error = on_error
        self.context = pyudev.Context()
        self.monitor = pyudev.Monitor.from_netlink(self.context)
        self.monitor.filter_by("block")
        try:  # room for a storm of events while the thread is descheduled
            self.monitor.set_receive_buffer_size(8 << 20)
        except Exception:  # pragma: no cover - needs CAP_NET_ADMIN; the default still works
            self._log.debug("receive buffer size not raised")
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._loop, name="udev-monitor", daemon=True)

    def start(self) -> None:
        """Start listening; call before `coldplug` so no device falls between the two."""
        self.monitor.start()
        self._thread.start()

    def coldplug(self) -> Iterator[UEvent]:
        """Block devices present now, as "add" events."""
        for dev in self.context.list_devices(subsystem="block"):
            if dev.is_initialized:
                yield UEvent("add", device_properties(dev), "coldplug")

    def stop(self) -> None:
        if self._thread.is_alive():
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _loop(self) -> None:
        fd = self.monitor.fileno()
        while True:
            try:
                ready, _, _ = select.select([fd, self._stop_r], [], [])  # blocks: no polling
                if self._stop_r in ready:
                    return
                while True:
                    dev = self.monitor.poll(timeout=0)
                    if dev is None:
                        break
                    self._sink(UEvent(str(dev.action), device_properties(dev)))
            except Exception:
                # e.g. ENOBUFS after a storm overflowed the socket: events were lost, so the
                # service re-enumerates instead of trusting what it saw.
                self._log.exception("udev monitor error; re-enumerating devices")
                self._on_error()
                if self._stop_r in select.select([self._stop_r], [], [], 0.2)[0]:
                    return
