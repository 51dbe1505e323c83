"""A simulated device wired to a private dockerd, driven through the real `usbupdater` CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import docker

from usbupdater.sim.device import SimDevice
from usbupdater.sim.dockerd import PrivateDockerd
from usbupdater.sim.factory import Factory
from usbupdater.sim.setup import CORE_ARGV, create_device
from usbupdater.state import DeviceState, StateStore


@dataclass
class Rig:
    root: Path
    device: SimDevice
    config: Path
    dockerd: PrivateDockerd
    killed: list[int] = field(default_factory=list)  # pids of CLI runs a test killed

    @classmethod
    def create(
        cls,
        root: Path,
        factory: Factory,
        dockerd: PrivateDockerd,
        flashed_commit: str,
        *,
        pacman_type: str = "ostree+compose_apps",
        extra: str = "",
    ) -> Rig:
        dev, cfg = create_device(
            root,
            factory,
            flashed_commit,
            docker_host=dockerd.host,
            pacman_type=pacman_type,
            apps_start_timeout=20,
            extra=extra,
        )
        return cls(root, dev, cfg, dockerd)

    # --- driving the CLI ---

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CORE_ARGV, *args, "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=300,
        )

    def install(self, bundle: Path, *extra: str) -> int:
        p = self.cli("install", "-s", str(bundle), *extra)
        self.last = p
        return p.returncode

    def run(self) -> int:
        p = self.cli("run")
        self.last = p
        return p.returncode

    def reboot(self) -> str:
        return str(self.device.reboot()["commit"])

    # --- looking at the device ---

    @property
    def state_dir(self) -> Path:
        return self.root / "sota" / "usbupdater"

    def state(self) -> DeviceState:
        return StateStore(self.state_dir).load()

    def history(self) -> list[dict[str, Any]]:
        return StateStore(self.state_dir).history()

    def booted(self) -> Optional[str]:
        return self.device.booted_commit()

    def env(self) -> dict[str, str]:
        return self.device.bootloader.read_all()

    def deployments(self) -> list[str]:
        return [d.commit for d in self.device.rootfs().deployments()]

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.dockerd.host)

    def running(self) -> dict[str, str]:
        """Running app containers: compose project/service -> image id."""
        out = {}
        for c in self.client().containers.list():
            labels = c.labels
            project = labels.get("com.docker.compose.project")
            key = f"{project}/{labels.get('com.docker.compose.service')}"
            out[key] = c.image.id
        return out

    def snapshot(self) -> dict[str, Any]:
        """Everything a refused install must leave untouched."""
        files = {}
        for base in (self.root / "sota", self.device.root / "bootenv.json"):
            paths = [base] if base.is_file() else sorted(base.rglob("*")) if base.exists() else []
            for p in paths:
                if p.is_file():
                    files[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        client = self.client()
        return {
            "files": files,
            "deployments": self.deployments(),
            "images": sorted(i.id for i in client.images.list(all=True)),
            "containers": sorted(c.id for c in client.containers.list(all=True)),
        }

    def current_target_file(self) -> dict[str, str]:
        text = (self.root / "sota" / "current-target").read_text()
        return dict(line.split("=", 1) for line in text.splitlines() if line)

    def cleanup_engine(self) -> None:
        client = self.client()
        for c in client.containers.list(all=True):
            c.remove(force=True)
        client.close()

    def describe(self) -> str:
        return json.dumps(
            {
                "code": self.last.returncode,
                "out": self.last.stdout,
                "err": self.last.stderr[-3000:],
            },
            indent=1,
        )
