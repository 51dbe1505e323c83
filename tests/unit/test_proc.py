"""The one subprocess runner: timeouts kill the whole group, output is bounded, children die
with their parent, and a tool's stderr never reaches the reason people see."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from usbupdater import proc
from usbupdater.errors import AdapterError


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_dead(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return not alive(pid)


def test_output_and_exit_code() -> None:
    done = proc.run(["sh", "-c", "echo out; echo err >&2"], "sh", 5)
    assert (done.returncode, done.stdout, done.stderr) == (0, "out\n", "err\n")
    done = proc.run(["sh", "-c", "exit 4"], "sh", 5, check=False)
    assert done.returncode == 4


def test_nonzero_exit_reason_is_fixed_text_without_stderr() -> None:
    secret = "SECRET-7f3a9c root:$6$hash:19000:0:99999:7:::"
    with pytest.raises(AdapterError) as exc:
        proc.run(["sh", "-c", f"echo '{secret}' >&2; printf '\\033[2J' >&2; exit 3"], "tool", 5)
    err = exc.value
    assert err.reason == "tool failed (exit 3)"
    assert "SECRET" not in str(err)
    assert isinstance(err, proc.CommandError) and err.returncode == 3
    # the tail for debug logs is kept, one line, with control characters escaped
    assert "SECRET-7f3a9c" in err.detail and "\033" not in err.detail and "\\x1b" in err.detail


def test_missing_binary() -> None:
    with pytest.raises(AdapterError) as exc:
        proc.run(["/nonexistent/usbupdater-no-such-tool"], "frobnicate", 5)
    assert exc.value.reason == "frobnicate: command not found"
    assert isinstance(exc.value, proc.CommandError) and exc.value.not_found


def test_output_is_bounded() -> None:
    t0 = time.monotonic()
    done = proc.run(
        ["sh", "-c", "head -c 50000000 /dev/zero; head -c 50000000 /dev/zero >&2"],
        "chatty",
        30,
        max_output=1000,
    )
    assert len(done.stdout) == 1000 and len(done.stderr) == 1000
    assert done.stdout_truncated and done.stderr_truncated
    assert time.monotonic() - t0 < 20
    wide = proc.run(["sh", "-c", "head -c 300000 /dev/zero"], "w", 10, max_stdout=1 << 20)
    assert len(wide.stdout) == 300000 and not wide.stdout_truncated


def test_timeout_kills_whole_group_including_grandchild(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    script = f"sleep 1000 & echo $! > {pidfile}; wait"
    t0 = time.monotonic()
    with pytest.raises(AdapterError) as exc:
        proc.run(["sh", "-c", script], "waiter", 1)
    assert exc.value.reason == "waiter timed out after 1 s"
    assert isinstance(exc.value, proc.CommandError) and exc.value.timed_out
    assert time.monotonic() - t0 < 1 + proc.KILL_GRACE + 1
    assert wait_dead(int(pidfile.read_text()), 1.0)


def test_group_survivor_of_sigterm_is_killed(tmp_path: Path) -> None:
    """A child that ignores SIGTERM still goes: SIGKILL follows the grace."""
    pidfile = tmp_path / "pid"
    script = f"trap '' TERM; sleep 1000 & echo $! > {pidfile}; while :; do sleep 0.1; done"
    with pytest.raises(AdapterError, match="timed out"):
        proc.run(["sh", "-c", script], "stubborn", 0.5)
    assert wait_dead(int(pidfile.read_text()), 1.0)


def test_leftover_background_child_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    done = proc.run(["sh", "-c", f"sleep 1000 & echo $! > {pidfile}"], "bg", 10)
    assert done.returncode == 0
    assert wait_dead(int(pidfile.read_text()), 1.0)


def test_exception_in_parent_kills_group(tmp_path: Path) -> None:
    child = proc.spawn(["sh", "-c", "sleep 1000 & wait"], what="sh")
    with pytest.raises(KeyboardInterrupt), proc.supervised(child):
        raise KeyboardInterrupt
    assert child.returncode is not None
    assert wait_dead(child.pid, 1.0)


def test_child_has_own_session_and_devnull_stdin() -> None:
    done = proc.run(["sh", "-c", "ps -o sid= -o pgid= -p $$; readlink /proc/self/fd/0"], "sh", 5)
    sid, pgid, stdin = done.stdout.split()
    assert sid == pgid and int(sid) != os.getsid(0)
    assert stdin == "/dev/null"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("in_thread", [False, True])
def test_child_dies_when_parent_is_sigkilled(tmp_path: Path, in_thread: bool) -> None:
    """PR_SET_PDEATHSIG: `sleep` dies within a second of its Python parent's SIGKILL."""
    pidfile = tmp_path / "pid"
    code = textwrap.dedent(
        f"""
        import threading, sys
        from usbupdater import proc
        def go():
            proc.run(["sh", "-c", "echo $$ > {pidfile}; exec sleep 1000"], "sleep", 600)
        if {in_thread}:
            t = threading.Thread(target=go)
            t.start()
            t.join()
        else:
            go()
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ))
    try:
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline, "child never started"
            time.sleep(0.02)
        sleep_pid = int(pidfile.read_text())
        time.sleep(0.1)  # let sh exec sleep
        assert alive(sleep_pid)
        with open(f"/proc/{sleep_pid}/cmdline", "rb") as fh:
            assert fh.read().split(b"\0")[0] == b"sleep"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert wait_dead(sleep_pid, 1.0)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_sanitize() -> None:
    assert proc.sanitize("a\x1b[31mb\nc\x00") == "a\\x1b[31mb c\\x00"
    assert proc.sanitize("x" * 1000, 10) == "..." + "x" * 10


def test_updater_timeout_kills_its_whole_group(tmp_path: Path) -> None:
    """The agent's long-running updater child: its group goes at the deadline, grandchild too."""
    from usbupdater.agent.backend import Updater
    from usbupdater.agent.settings import AgentSettings

    pidfile = tmp_path / "pid"
    script = tmp_path / "updater.sh"
    script.write_text(f"#!/bin/sh\necho started >&2\nsleep 1000 &\necho $! > {pidfile}\nwait\n")
    script.chmod(0o755)
    echo = (tmp_path / "echo.log").open("w")
    u = Updater(AgentSettings(updater_command=(str(script),)), echo=echo)
    t0 = time.monotonic()
    out = u.call(["install"], timeout=0.5)
    echo.close()
    assert out.code is None and "did not finish within" in out.reason
    assert time.monotonic() - t0 < 0.5 + proc.KILL_GRACE + 1
    assert wait_dead(int(pidfile.read_text()), 1.0)


def test_updater_long_stderr_lines_and_stdout_are_bounded(tmp_path: Path) -> None:
    from usbupdater.agent import backend
    from usbupdater.agent.settings import AgentSettings

    script = tmp_path / "updater.sh"
    script.write_text(
        "#!/bin/sh\nhead -c 5000000 /dev/zero | tr '\\0' x >&2\necho >&2\n"
        "head -c 5000000 /dev/zero | tr '\\0' y\necho 'usbupdater: done' >&2\nexit 3\n"
    )
    script.chmod(0o755)
    echo = (tmp_path / "echo.log").open("w")
    out = backend.Updater(AgentSettings(updater_command=(str(script),)), echo=echo).call(["run"])
    echo.close()
    assert out.code == 3 and out.reason == "done"
    assert len(out.stdout) == backend.MAX_STDOUT
    assert all(len(line) <= 500 for line in out.tail)


def test_stop_on_overflow_ends_an_endless_listing() -> None:
    t0 = time.monotonic()
    done = proc.run(
        ["sh", "-c", "yes listing"],
        "lister",
        60,
        check=False,
        max_stdout=100_000,
        stop_on_overflow=True,
    )
    assert done.stdout_truncated and len(done.stdout) == 100_000
    assert done.returncode != 0
    assert time.monotonic() - t0 < 5
