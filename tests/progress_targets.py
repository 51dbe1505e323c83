"""The two targets the progress tests install: v1 flashed, v2 a new rootfs and an app with one
large uncompressed layer, so counted reads show between 0 and 100 %."""

from __future__ import annotations

from pathlib import Path

from usbupdater.sim.apps import AppSpec, ServiceSpec
from usbupdater.sim.factory import Factory, TargetSpec

MIB = 1 << 20


def web(tag: str, data: tuple[int, ...] = ()) -> AppSpec:
    svc = ServiceSpec(cmd=("sleep", "3600"), compose={"network_mode": "none"}, data_layers=data)
    return AppSpec("web", services={"main": svc}, version_tag=tag, layer_compression="none")


def progress_factory(work: Path, layer_bytes: int, rootfs_bytes: int) -> Factory:
    f = Factory(work)
    f.publish(TargetSpec(1, apps=[web("1")]))
    f.publish(TargetSpec(2, apps=[web("2", (layer_bytes,))], rootfs_bytes=rootfs_bytes))
    return f
