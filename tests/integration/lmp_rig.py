"""Driving the "LmP factory image" simulated device (sim/lmp.py) through the real CLI, with the
configuration locations LmP has (`dev.config_args()`), against a given private dockerd."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from usbupdater.sim.dockerd import PrivateDockerd
from usbupdater.sim.lmp import LmpDevice
from usbupdater.sim.setup import CORE_ARGV
from usbupdater.state import DeviceState, StateStore

PROJECT = "com.docker.compose.project"


@dataclass
class LmpRig:
    lmp: LmpDevice
    dockerd: PrivateDockerd
    last: Any = field(default=None, init=False)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [*CORE_ARGV, *args, *self.lmp.config_args()],
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.last = p
        return p

    def install(self, bundle: Path, *extra: str) -> int:
        return self.cli("install", "-s", str(bundle), *extra).returncode

    def run(self) -> int:
        return self.cli("run").returncode

    def check(self, bundle: Path) -> int:
        return self.cli("check", "-s", str(bundle)).returncode

    def reboot(self) -> str:
        return str(self.lmp.device.reboot()["commit"])

    # --- looking at the device ---

    @property
    def store(self) -> Path:
        return self.lmp.paths.reset_apps_root

    @property
    def compose_root(self) -> Path:
        return self.lmp.paths.compose_apps_root

    def state(self) -> DeviceState:
        return StateStore(self.lmp.paths.var_sota / "usbupdater").load()

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.dockerd.host)

    def containers(self) -> dict[str, tuple[str, str]]:
        """Running containers: "<project>/<service>" -> (container id, image id)."""
        client = self.client()
        try:
            out = {}
            for c in client.api.containers():
                labels = c.get("Labels") or {}
                key = f"{labels.get(PROJECT)}/{labels.get('com.docker.compose.service')}"
                out[key] = (str(c["Id"]), str(c["ImageID"]))
            return out
        finally:
            client.close()

    def image_ids(self) -> set[str]:
        client = self.client()
        try:
            return {str(i["Id"]) for i in client.api.images()}
        finally:
            client.close()

    def describe(self) -> str:
        p = self.last
        return json.dumps(
            {"code": p.returncode, "out": p.stdout, "err": p.stderr[-4000:]}, indent=1
        )

    def cleanup(self) -> None:
        client = self.client()
        try:
            for c in client.api.containers(all=True):
                client.api.remove_container(c["Id"], force=True)
        finally:
            client.close()
        self.lmp.device.destroy()
