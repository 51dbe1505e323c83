"""A private Docker engine for tests and the demo: its own socket, data, and no host networking.

The machine's own dockerd (if any) is never touched: everything lives under one temporary
directory, the flags keep the engine off the host's network configuration (no docker0 bridge, no
iptables rules, no forwarding), and `stop` ends exactly the processes this object started (the
dockerd by PID, then the containerd it spawned, by the PID file under its exec-root), unmounts
whatever is left under the directory and removes it. `restart` keeps the data, which is how the
"restart the Docker engine" step (exit 101) is simulated.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Optional

from usbupdater.sim.sticks import mounts_under

NETWORK_FLAGS = (
    "--storage-driver=vfs",
    "--iptables=false",
    "--ip6tables=false",
    "--bridge=none",
    "--ip-forward=false",
)


class DockerdError(RuntimeError):
    """The private engine did not start (the message carries the end of its log)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0): reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


def _kill_and_wait(pid: int, timeout: float) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL and wait for the process to be gone."""
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


class PrivateDockerd:
    """One dockerd on a private unix socket; use as a context manager."""

    def __init__(
        self,
        base_dir: Optional[Path] = None,
        dockerd: str = "dockerd",
        start_timeout: float = 30.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self._own_dir = base_dir is None
        # Short paths: unix socket names are limited to 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="ud-dockerd-")) if base_dir is None else base_dir
        self.dockerd = dockerd
        self.start_timeout = start_timeout
        self.extra_args = extra_args
        self.data_root = self.dir / "data"
        self.exec_root = self.dir / "exec"
        self.socket = self.dir / "docker.sock"
        self.pidfile = self.dir / "dockerd.pid"
        self.log_path = self.dir / "dockerd.log"
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._log: Optional[IO[bytes]] = None

    @property
    def host(self) -> str:
        """The DOCKER_HOST value for clients (docker SDK, docker CLI, docker-compose)."""
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        """os.environ with DOCKER_HOST pointing at this engine (for CLI subprocesses)."""
        return {**os.environ, "DOCKER_HOST": self.host}

    def start(self) -> None:
        if self._proc is not None:
            raise DockerdError("dockerd already started")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the daemon
        cmd = [
            self.dockerd,
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            "-H",
            self.host,
            *NETWORK_FLAGS,
            *self.extra_args,
        ]
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            self._wait_ready()
        except BaseException:
            self._stop_processes()
            raise

    def _wait_ready(self) -> None:
        import docker  # late: the module is importable without the SDK for docs/tools

        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise DockerdError(
                    f"dockerd exited with {self._proc.returncode}: {self.log_tail()}"
                )
            if self.socket.exists():
                client = docker.DockerClient(base_url=self.host, timeout=5)
                try:
                    client.ping()
                    return
                except Exception:  # noqa: S110 - not ready yet: poll again
                    pass
                finally:
                    client.close()
            if time.monotonic() > deadline:
                raise DockerdError(
                    f"dockerd not ready after {self.start_timeout}s: {self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.splitlines()[-lines:])

    def _containerd_pid(self) -> Optional[int]:
        for p in (self.exec_root / "containerd" / "containerd.pid",):
            try:
                return int(p.read_text().strip())
            except (OSError, ValueError):
                continue
        return None

    def _stop_processes(self) -> None:
        containerd = self._containerd_pid()
        if self._proc is not None:
            _kill_and_wait(self._proc.pid, timeout=20)
            self._proc.wait()
            self._proc = None
        # dockerd stops its containerd on a clean exit; after a SIGKILL it may be left behind.
        if containerd is not None:
            _kill_and_wait(containerd, timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop the engine (containers stay defined, as after a reboot); keep its data."""
        self._stop_processes()
        for point in mounts_under(self.dir):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)

    def restart(self) -> None:
        """Stop and start again on the same data: the 'restart the Docker engine' step."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop, unmount what is left below the directory, and remove it (if we created it)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateDockerd:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.cleanup()
