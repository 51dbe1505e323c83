"""The progress channel: the meter's numbers, its rate limit, the sink, the terminal bar."""

from __future__ import annotations

import io
import threading

from usbupdater import progress
from usbupdater.cli_progress import Bar, format_line, human_bytes, human_duration
from usbupdater.progress import Meter, Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def meter(total: int = 0) -> tuple[Meter, list[Progress], Clock]:
    seen: list[Progress] = []
    clock = Clock()
    return Meter(total, sink=seen.append, clock=clock), seen, clock


def test_percent_is_capped_and_none_without_a_total() -> None:
    assert Progress("p", "m").percent is None
    assert Progress("p", "m", 5, None).percent is None
    assert Progress("p", "m", 1, 3).percent == 33.3
    assert Progress("p", "m", 9, 3).percent == 100.0


def test_records_are_rate_limited_by_the_clock() -> None:
    m, seen, clock = meter(1000)
    m.phase("copying", "copying")
    m.add(100)  # within the interval of the phase record: held back
    assert [p.done_bytes for p in seen] == [0]
    clock.now += progress.EMIT_INTERVAL
    m.add(100)
    m.add(100)  # same instant: held back
    assert [p.done_bytes for p in seen] == [0, 200]
    clock.now += progress.EMIT_INTERVAL + 0.01
    m.add(1)
    assert [p.done_bytes for p in seen] == [0, 200, 301]


def test_done_is_monotonic_and_total_only_grows() -> None:
    m, seen, clock = meter(100)
    m.phase("a", "a")
    for n in (30, -5, 0, 50, 40):  # negative and zero counts are ignored
        clock.now += 1
        m.add(n)
    m.add_total(-10)  # never less work
    assert m.total_bytes == 120  # more read than expected: the total follows
    m.add_total(80)
    clock.now += 1
    m.add(10)
    dones = [p.done_bytes or 0 for p in seen]
    totals = [p.total_bytes or 0 for p in seen]
    pcts = [p.percent or 0.0 for p in seen]
    assert dones == sorted(dones) and totals == sorted(totals)
    assert seen[-1].done_bytes == 130 and seen[-1].total_bytes == 200
    assert all(0 <= x <= 100 for x in pcts)


def test_finish_is_100_percent_and_says_done() -> None:
    m, seen, _ = meter(1000)
    m.phase("copying", "copying")
    m.add(10)
    m.finish("done", "installed")
    assert m.finished
    assert seen[-1] == Progress("done", "installed", 10, 10)
    assert seen[-1].percent == 100.0


def test_finish_with_nothing_counted_is_still_100() -> None:
    m, seen, _ = meter()
    m.finish()
    assert seen[-1].percent == 100.0


def test_done_reports_complete_work_only() -> None:
    seen: list[Progress] = []
    progress.set_sink(seen.append)
    try:
        progress.done("nothing to see", complete=False)
        progress.done("finished", complete=True)
        m = Meter()
        with progress.metering(m):
            progress.expect(50)
            progress.count(20)
            progress.done("failed", complete=False)
        assert not m.finished and seen[-1].percent == 40.0 and seen[-1].phase == "done"
        with progress.metering(m):
            progress.done("ok", complete=True)
        assert m.finished and seen[-1] == Progress("done", "ok", 20, 20)
    finally:
        progress.set_sink(None)
    assert seen[0].percent is None and seen[1].percent == 100.0


def test_count_without_a_meter_is_a_no_op() -> None:
    progress.count(10)
    progress.expect(10)
    assert progress.active() is None


def test_threads_add_up_exactly() -> None:
    m, seen, _ = meter(8 * 10_000)
    m.phase("x", "x")

    def work() -> None:
        for _ in range(10_000):
            m.add(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.done_bytes == 80_000
    m.finish()
    assert seen[-1].percent == 100.0


def test_bar_line_shows_bytes_rate_and_eta() -> None:
    line = format_line(Progress("copying", "the rootfs", 50 * 2**20, 100 * 2**20), 2**20, 200)
    assert line.startswith("copying  [" + "#" * 12 + "." * 12 + "]")
    assert " 50.0 %" in line and "50.0 MiB / 100.0 MiB" in line
    assert "1.0 MiB/s" in line and "ETA 0:50" in line and line.endswith("the rootfs")
    assert len(format_line(Progress("p", "x" * 500, 1, 2), None, 60)) == 59
    assert "\x1b" not in format_line(Progress("p", "evil\x1b[2Jname"), None, 80)
    assert human_bytes(512) == "512 B" and human_bytes(3 * 2**30) == "3.0 GiB"
    assert human_duration(3725) == "1:02:05"


def test_bar_keeps_one_line_per_phase_and_puts_logs_above() -> None:
    out = io.StringIO()
    clock = Clock()
    bar = Bar(out, clock=clock)
    bar(Progress("verifying", "v", 0, 100))
    clock.now += 1
    bar(Progress("verifying", "v", 50, 100))
    bar.log_line("a log line")
    bar(Progress("done", "ok", 100, 100))
    text = out.getvalue()
    assert text.count("\n") == 3  # the log line, the end of the verifying line, done
    assert text.index("a log line") < text.rindex("verifying")  # the bar is redrawn below it
    assert text.endswith("ok\n") and "100.0 %" in text
    assert "50 B/s" in text


def test_reserved_work_keeps_the_percent_from_falling_when_it_is_announced() -> None:
    seen: list[Progress] = []
    m = Meter(sink=seen.append, clock=lambda: 0.0, interval=0.0)
    m.reserve(100, progress.APPS)  # the apps, sized roughly before the rootfs pull
    m.add_total(100)  # the rootfs
    m.add(100)
    before = m._record().percent
    m.add_total(60, progress.APPS)  # the apps announce their real size: taken from the reservation
    assert m.total_bytes == 200 and m._record().percent == before == 50.0
    m.add_total(50, progress.APPS)  # more than was reserved: only the excess grows the total
    assert m.total_bytes == 210
    m.add(110)
    m.finish()
    assert seen[-1].percent == 100.0
