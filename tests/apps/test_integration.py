"""Apps on a real private dockerd with docker-compose v1 and sim.apps' busybox images.

Every service uses `network_mode: none`: the engine runs with `--bridge=none`, and nothing here
needs (or may use) a network.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apps.conftest import StickDir, image0
from usbupdater.apps import engine
from usbupdater.apps.copying import CopyingSource
from usbupdater.apps.model import VerifiedApp
from usbupdater.apps.runner import AppsContext, AppStartError, restore_apps, run_apps
from usbupdater.apps.store import AppStore
from usbupdater.apps.streams import Gunzip
from usbupdater.apps.verify import verify_apps
from usbupdater.errors import VerificationError
from usbupdater.sim import apps as sa
from usbupdater.sim.dockerd import PrivateDockerd

pytestmark = pytest.mark.integration
NONET = {"network_mode": "none"}


def svc(**kw: Any) -> sa.ServiceSpec:
    kw["compose"] = {**NONET, **kw.get("compose", {})}
    return sa.ServiceSpec(**kw)


class Device:
    """A stick + device store + compose root + the session's engine."""

    def __init__(self, root: Path, dockerd: PrivateDockerd) -> None:
        self.root, self.dockerd = root, dockerd
        self.store = AppStore(root / "reset-apps")
        self.ctx = AppsContext(
            store=self.store,
            compose_root=root / "compose-apps",
            compose_command=("docker-compose",),
            client=engine.connect(dockerd.host),
            compose_env=dockerd.env(),
            start_timeout=20,
            poll_interval=0.2,
        )
        self.n = 0

    def install(self, *specs: sa.AppSpec) -> list[VerifiedApp]:
        """Write a fresh stick with these apps and copy them into the store (install)."""
        self.n += 1
        stick = self.root / f"stick{self.n}" / "apps"
        uris = {w.name: w.uri for w in sa.write_apps(stick, specs).values()}
        source = CopyingSource(StickDir(stick), self.store)
        verified = verify_apps(source, uris, sa.machine_arch())
        apps = [verified[s.name] for s in specs]
        self.store.add_apps(source, apps)
        return apps

    def ids(self, app: str) -> dict[str, str]:
        return {
            c["Config"]["Labels"]["com.docker.compose.service"]: c["Id"]
            for c in engine.project_containers(self.ctx.client, app)
        }

    def running(self, app: str) -> dict[str, str]:
        """service -> image ID of running containers."""
        return {
            c["Config"]["Labels"]["com.docker.compose.service"]: c["Image"]
            for c in engine.project_containers(self.ctx.client, app)
            if c["State"]["Status"] == "running"
        }


@pytest.fixture
def device(tmp_path: Path, dockerd: PrivateDockerd) -> Iterator[Device]:
    dev = Device(tmp_path, dockerd)
    yield dev
    api = dev.ctx.client.api
    for c in api.containers(all=True):
        api.remove_container(c["Id"], force=True)
    dev.ctx.client.close()


def test_install_update_remove(device: Device) -> None:
    a1v1, a2v1 = device.install(
        sa.AppSpec("a1", services={"main": svc()}),
        sa.AppSpec("a2", services={"web": svc(healthcheck=("true",)), "db": svc()}),
    )
    run_apps(device.ctx, [a1v1, a2v1])
    assert device.running("a1") == {"main": image0(a1v1).image_id}
    assert set(device.running("a2")) == {"web", "db"}
    a1_ids = device.ids("a1")

    (a2v2,) = device.install(sa.AppSpec("a2", version_tag="2", services={"web": svc()}))
    run_apps(device.ctx, [a1v1, a2v2])
    assert device.ids("a1") == a1_ids  # untouched
    assert device.running("a2") == {"web": image0(a2v2).image_id}  # db removed as orphan

    run_apps(device.ctx, [a2v2])
    assert device.ids("a1") == {}
    assert not (device.ctx.compose_root / "a1").exists()
    device.store.prune([(a2v2.name, a2v2.uri)])
    assert device.store.stored_apps() == [(a2v2.name, a2v2.uri)]


def test_service_exits(device: Device) -> None:
    bad = svc(cmd=("sh", "-c", "echo boom-from-svc; exit 3"))
    (app,) = device.install(sa.AppSpec("ex", services={"ok": svc(), "bad": bad}))
    with pytest.raises(AppStartError) as ei:
        run_apps(device.ctx, [app])
    assert ei.value.service == "bad" and "code 3" in ei.value.reason
    assert any("boom-from-svc" in line for line in ei.value.logs)


def test_restart_loop(device: Device) -> None:
    loop = svc(cmd=("sh", "-c", "exit 1"), compose={"restart": "always"})
    (app,) = device.install(sa.AppSpec("loop", services={"loop": loop}))
    with pytest.raises(AppStartError, match="service loop"):
        run_apps(device.ctx, [app])


def test_failing_healthcheck_times_out(device: Device) -> None:
    (app,) = device.install(sa.AppSpec("sick", services={"web": svc(healthcheck=("false",))}))
    device.ctx.start_timeout = 4
    with pytest.raises(AppStartError, match="not started within 4s") as ei:
        run_apps(device.ctx, [app])
    assert ei.value.service == "web" and "health is" in ei.value.why


def test_corrupt_blob_refused_before_anything_starts(device: Device) -> None:
    (v1,) = device.install(sa.AppSpec("c", services={"main": svc()}))
    run_apps(device.ctx, [v1])
    before = device.ids("c")
    (v2,) = device.install(sa.AppSpec("c", version_tag="2", services={"main": svc()}))
    marker_layer = image0(v2).layers[1]
    sa.corrupt_blob(device.store.root, marker_layer.digest)
    with pytest.raises(VerificationError, match=marker_layer.digest):
        run_apps(device.ctx, [v2])
    assert device.ids("c") == before
    assert device.running("c") == {"main": image0(v1).image_id}
    assert not engine.has_image(device.ctx.client, image0(v2).image_id)


def test_restore_after_failed_update(device: Device) -> None:
    (v1,) = device.install(sa.AppSpec("r", services={"main": svc()}))
    run_apps(device.ctx, [v1])
    bad = svc(cmd=("sh", "-c", "exit 2"))
    (v2,) = device.install(sa.AppSpec("r", version_tag="2", services={"main": bad}))
    with pytest.raises(AppStartError):
        run_apps(device.ctx, [v2])
    for p in device.root.glob("stick*"):  # rollback must not need the stick
        p.rename(p.with_name("gone-" + p.name))
    restore_apps(device.ctx, {"r": v1.uri})
    assert device.running("r") == {"main": image0(v1).image_id}


def test_engine_restart_between_steps(device: Device) -> None:
    (app,) = device.install(sa.AppSpec("eng", services={"main": svc()}))
    device.dockerd.restart()  # the 101 path: install, restart the engine, then run
    run_apps(device.ctx, [app])
    device.dockerd.restart()  # containers stop with the engine; run starts them again
    run_apps(device.ctx, [app])
    assert device.running("eng") == {"main": image0(app).image_id}


def test_image_already_present_not_sent(device: Device) -> None:
    (app,) = device.install(sa.AppSpec("again", services={"main": svc()}))
    assert engine.load_images(device.ctx.client, device.store, app.images.values()) == 1
    assert engine.load_images(device.ctx.client, device.store, app.images.values()) == 0
    cfg = device.store.read_small(image0(app).config)
    assert image0(app).image_id == "sha256:" + hashlib.sha256(cfg).hexdigest()


@pytest.mark.timeout(120)
def test_multi_member_gzip_layers_verify_and_load(device: Device) -> None:
    """Layers made of concatenated gzip members ending exactly on N MiB of output (which hung
    the old inflaters) verify through verify_apps, load into dockerd, and run."""
    spec = sa.AppSpec("mm", services={"main": svc(data_layers=(4 << 20,))}, gzip_member=1 << 20)
    (app,) = device.install(spec)
    members = []
    for layer in image0(app).layers:
        gz = Gunzip(1 << 40)
        for chunk in device.store.read_verified(layer):
            for _ in gz.feed(chunk):
                pass
        list(gz.finish())
        members.append(gz.members)
    assert members[0] >= 2 and members[-1] == 5  # busybox; 4 MiB + tar headers of data
    run_apps(device.ctx, [app])
    assert device.running("mm") == {"main": image0(app).image_id}
