"""Every external command runs through here: bounded in time, in memory and in lifetime.

Why one runner: a tool reading the stick can block (a FIFO), chatter without end or leave
children behind, and its stderr can carry text the stick chose (a symlinked file's first line).
So each child
- runs in its own session (`start_new_session`: its own process group), stdin from /dev/null;
- gets `PR_SET_PDEATHSIG=SIGKILL`: the kernel kills it when the thread that started it dies,
  also on SIGKILL of the parent. The signal follows the parent *thread*: a caller in a worker
  thread must keep that thread alive while the child runs (`run` does, it waits);
- is killed as a whole group (SIGTERM, a short grace, then SIGKILL) on timeout and on any
  exception in the parent (KeyboardInterrupt, SIGTERM turned into an exception);
- has at most `max_output` bytes of stdout and of stderr kept (the rest is read and dropped).

Failures raise `CommandError` (an `AdapterError`) whose `reason` is a fixed text: "<what>
failed (exit N)", "<what> timed out after S s", "<what>: command not found". The tool's stderr
never goes into it; a sanitised short tail (`detail`) is kept for debug logs.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import IO, Any, Optional, Union

from usbupdater import log
from usbupdater.errors import AdapterError

OUTPUT_LIMIT = 64 << 10  # bytes of stdout and of stderr kept by default
DETAIL_CHARS = 400  # length of the sanitised stderr tail kept for debug logs
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL of a group
DRAIN_AFTER_EXIT = 1.0  # seconds the pipes are still read once the child itself has exited
_PR_SET_PDEATHSIG = 1
_CHUNK = 65536

StrPath = Union[str, "os.PathLike[str]"]


def _load_prctl() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
        return None


_prctl = _load_prctl()


def _child_setup(parent: int) -> None:
    """Runs in the child between fork and exec: die with the parent, even if it already died."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(127)


class CommandError(AdapterError):
    """An external command failed; `reason` is fixed text, `detail` a sanitised stderr tail."""

    def __init__(
        self,
        reason: str,
        *,
        what: str,
        returncode: Optional[int] = None,
        timed_out: bool = False,
        not_found: bool = False,
        detail: str = "",
    ) -> None:
        super().__init__(reason)
        self.what = what
        self.returncode = returncode
        self.timed_out = timed_out
        self.not_found = not_found
        self.detail = detail


class Completed(subprocess.CompletedProcess[str]):
    """A finished command with its (bounded, UTF-8 with replacement) output."""

    def __init__(
        self,
        args: Sequence[str],
        returncode: int,
        stdout: str,
        stderr: str,
        *,
        stdout_truncated: bool = False,
        stderr_truncated: bool = False,
    ) -> None:
        super().__init__(list(args), returncode, stdout, stderr)
        self.stdout_truncated = stdout_truncated
        self.stderr_truncated = stderr_truncated

    @property
    def detail(self) -> str:
        """The sanitised tail of stderr (else stdout): for debug logs only."""
        return sanitize(self.stderr or self.stdout)


def sanitize(text: str, limit: int = DETAIL_CHARS) -> str:
    """The last `limit` characters of `text`, one line, control characters escaped."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = "..." + text[-limit:]
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def spawn(
    argv: Sequence[str],
    *,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[StrPath] = None,
    stdout: Any = subprocess.PIPE,
    stderr: Any = subprocess.PIPE,
    text: bool = False,
    what: str = "",
) -> subprocess.Popen[Any]:
    """Start a child under the rules above (own session, /dev/null stdin, parent-death kill).

    The caller owns it: wait for it inside `supervised(proc)` (or call `kill_group`), so an
    exception in the caller takes the whole group down.
    """
    what = what or (os.path.basename(argv[0]) if argv else "command")
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_ChildSetup(os.getpid()),  # only prctl and getppid run in the child
            close_fds=True,
            text=text,
            errors="replace" if text else None,
        )
    except FileNotFoundError:
        raise CommandError(f"{what}: command not found", what=what, not_found=True) from None
    except OSError as exc:
        raise CommandError(
            f"{what}: cannot be started ({os.strerror(exc.errno or 0)})", what=what
        ) from None


class _ChildSetup:
    """The preexec_fn, bound to the parent's pid."""

    def __init__(self, parent: int) -> None:
        self.parent = parent

    def __call__(self) -> None:
        _child_setup(self.parent)


def kill_group(proc: subprocess.Popen[Any], grace: float = KILL_GRACE) -> None:
    """SIGTERM the child's process group, wait up to `grace` s for the child, SIGKILL the group.

    The child is reaped only after the SIGKILL, so its pid (the group id) cannot have been
    reused by then; grandchildren that outlived it are still members and die too.
    """
    if proc.returncode is None:
        signal_group(proc.pid, signal.SIGTERM)
        wait_unreaped(proc.pid, grace)
        signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_unreaped(pid: int, timeout: Optional[float]) -> bool:
    """Wait up to `timeout` s (None: no limit) for the child to exit, leaving it a zombie so
    its pid keeps naming its group; True if it exited."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if _exited(pid):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (its pid keeps naming the group)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send `sig` to a process group; a group already gone is no error."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@contextmanager
def supervised(proc: subprocess.Popen[Any], grace: float = KILL_GRACE) -> Iterator[None]:
    """On any exception (KeyboardInterrupt included) kill the child's whole group, re-raise."""
    try:
        yield
    except BaseException:
        kill_group(proc, grace)
        raise


def run(
    argv: Sequence[str],
    what: str,
    timeout: float,
    *,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[StrPath] = None,
    check: bool = True,
    max_output: int = OUTPUT_LIMIT,
    max_stdout: Optional[int] = None,
    stop_on_overflow: bool = False,
) -> Completed:
    """Run `argv` to completion and return its exit code and bounded output.

    Raises CommandError for a missing binary, a timeout (the whole group killed) and, when
    `check`, a non-zero exit. `max_stdout` overrides `max_output` for stdout (a listing).
    With `stop_on_overflow`, output past a limit kills the group at once (a listing that would
    never end); the caller sees `stdout_truncated`/`stderr_truncated` (and a signal exit code).
    """
    logger = log.get_logger("proc")
    proc = spawn(argv, env=env, cwd=cwd, what=what)
    limits = (max_stdout if max_stdout is not None else max_output, max_output)
    with supervised(proc):
        out, err, truncated, expired = _collect(proc, timeout, limits, stop_on_overflow)
        kill_group(proc)  # the group: what a timed-out child or a finished one left behind
    if expired:
        detail = sanitize(err.decode("utf-8", "replace"))
        logger.debug("command timed out", what=what, timeout=timeout, stderr_tail=detail)
        raise CommandError(
            f"{what} timed out after {timeout:g} s", what=what, timed_out=True, detail=detail
        )
    code = proc.returncode
    done = Completed(
        argv,
        code,
        out.decode("utf-8", "replace"),
        err.decode("utf-8", "replace"),
        stdout_truncated=truncated[0],
        stderr_truncated=truncated[1],
    )
    if check and code != 0:
        logger.debug("command failed", what=what, code=code, stderr_tail=done.detail)
        raise CommandError(
            failed_reason(what, code), what=what, returncode=code, detail=done.detail
        )
    return done


def failed_reason(what: str, code: int) -> str:
    if code < 0:
        return f"{what} failed (killed by signal {-code})"
    return f"{what} failed (exit {code})"


def _collect(
    proc: subprocess.Popen[Any], timeout: float, limits: tuple[int, int], stop: bool = False
) -> tuple[bytes, bytes, tuple[bool, bool], bool]:
    """Read both pipes until EOF (bounded), the deadline, or a grace after the child exits.

    The child is left unreaped (a zombie), so `kill_group` can still address its group.
    """
    assert proc.stdout is not None and proc.stderr is not None
    pipes: list[IO[bytes]] = [proc.stdout, proc.stderr]
    bufs = [bytearray(), bytearray()]
    truncated = [False, False]
    deadline = time.monotonic() + timeout
    exited_at: Optional[float] = None
    sel = selectors.DefaultSelector()
    try:
        for i, pipe in enumerate(pipes):
            sel.register(pipe, selectors.EVENT_READ, i)
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                return bytes(bufs[0]), bytes(bufs[1]), (truncated[0], truncated[1]), True
            if exited_at is None and _exited(proc.pid):
                exited_at = now
            if exited_at is not None and now - exited_at > DRAIN_AFTER_EXIT:
                break  # a grandchild holds the pipes open: stop listening to it
            for key, _ in sel.select(min(0.2, deadline - now)):
                i = key.data
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                room = limits[i] - len(bufs[i])
                if len(chunk) > room:
                    truncated[i] = True
                    chunk = chunk[: max(room, 0)]
                bufs[i] += chunk
                if stop and truncated[i]:
                    return bytes(bufs[0]), bytes(bufs[1]), (truncated[0], truncated[1]), False
    finally:
        sel.close()
        for pipe in pipes:
            pipe.close()
    expired = not wait_unreaped(proc.pid, max(deadline - time.monotonic(), 0.0))
    return bytes(bufs[0]), bytes(bufs[1]), (truncated[0], truncated[1]), expired
