"""The apps of the simulated LmP device (`sim.lmp`): the preloaded app store, the installed
compose projects and their first start, as LmP's build and first boot leave them.

Sources: meta-lmp `classes/lmp.bbclass` `preload_apps` (the store in composectl's layout,
foundriesio/composeapp `pkg/compose/v1/app_store.go`, and `installed_versions`), composectl
`pkg/compose/install.go` `InstallCompose`, meta-lmp `compose-apps-early-start`. Stock dockerd
cannot register the digest references Foundries' patched engine gets from composectl, so
`run_preloaded_apps` loads each image under a tag and passes compose an override kept outside
the app directory (`sim/preload/<app>.yml`).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usbupdater.sim.apps import WrittenApp, WrittenImage, blob_path, write_apps
from usbupdater.sim.factory import HUB, Factory, PublishedTarget

if TYPE_CHECKING:
    from usbupdater.sim.lmp import LmpPaths

COMPOSE_TIMEOUT = 120.0
LOAD_TIMEOUT = 120.0


class LmpSimError(RuntimeError):
    """Building or starting the simulated LmP device failed."""


# --- preloaded apps ----------------------------------------------------------------------------


def _relink(link: Path, blob: Path) -> None:
    """composectl MakeAkliteHappy: the app dir's file is a hard link to the blob."""
    tmp = link.with_name(link.name + ".tmp")
    os.link(blob, tmp)
    tmp.replace(link)


def preload_store(
    store: Path, factory: Factory, target: PublishedTarget, names: Iterable[str]
) -> dict[str, WrittenApp]:
    """Write the target's apps `names` into `store` in composectl's layout."""
    wanted = set(names)
    specs = [a for a in target.spec.apps if a.name in wanted]
    written = write_apps(store, specs, host=HUB, factory=factory.factory_name)
    for name, app in written.items():
        if app.uri != target.apps[name].uri:
            raise LmpSimError(f"{name}: preloaded {app.uri}, target says {target.apps[name].uri}")
        app_dir = store / "apps" / name / app.manifest_digest.split(":")[1]
        _relink(app_dir / "manifest.json", blob_path(store, app.manifest_digest))
        bundle_hex = app.bundle_digest.split(":")[1]
        _relink(app_dir / f"{bundle_hex}.tgz", blob_path(store, app.bundle_digest))
        for layout in (app_dir / "images").rglob("oci-layout"):
            layout.unlink()  # composectl pull writes index.json only
    return written


def install_compose(store: Path, compose_root: Path, app: WrittenApp) -> Path:
    """composectl InstallCompose: untar the app bundle into `compose_root/<app>`."""
    dest = compose_root / app.name
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(blob_path(store, app.bundle_digest), "r:gz") as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, filter="data")
        else:  # pragma: no cover - Pythons without PEP 706; the factory's tgz is trusted
            tf.extractall(dest)  # noqa: S202
    return dest


def installed_versions(target: PublishedTarget) -> bytes:
    """`/var/sota/import/installed_versions`: the flashed target, current."""
    return json.dumps({target.name: {**target.entry, "is_current": True}}, indent=2).encode()


# --- starting apps (the first boot) ------------------------------------------------------------


def _image_archive(store: Path, img: WrittenImage, tag: str, out: Path) -> None:
    """A docker-archive (`docker save` format) of one image, its blobs read from the store."""
    manifest = json.loads(blob_path(store, img.manifest_digest).read_bytes())
    cfg_hex = manifest["config"]["digest"].split(":")[1]
    layers = [ld["digest"].split(":")[1] for ld in manifest["layers"]]
    index = [
        {
            "Config": f"{cfg_hex}.json",
            "RepoTags": [tag],
            "Layers": [f"{h}/layer.tar" for h in layers],
        }
    ]
    with tarfile.open(out, "w") as tf:
        tf.add(blob_path(store, cfg_hex), arcname=f"{cfg_hex}.json")
        for h in layers:  # gzip layer files as stored: Docker 20.10 accepts them
            tf.add(blob_path(store, h), arcname=f"{h}/layer.tar")
        data = json.dumps(index).encode()
        ti = tarfile.TarInfo("manifest.json")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))


def preload_tag(img: WrittenImage) -> str:
    """The tag standing in for the digest reference a patched engine would register."""
    locator = img.ref.partition("@")[0]
    return f"{locator}:lmp-preload-{img.root_digest.split(':')[1][:12]}"


def _run(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float) -> str:
    """Run a command in its own process group; kill the group on timeout or interruption."""
    with subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if proc.returncode != 0:
        tail = " | ".join(err.strip().splitlines()[-3:])
        raise LmpSimError(f"{argv[0]} {argv[-2:]} exited {proc.returncode}: {tail}")
    return out


def run_preloaded_apps(
    paths: LmpPaths, apps: Mapping[str, WrittenApp], docker_host: str, compose_bin: str
) -> None:
    """What the first boot does: load each app's images, then `up -d` in its directory."""
    env = {**os.environ, "DOCKER_HOST": docker_host} if docker_host else dict(os.environ)
    store = paths.reset_apps_root
    overrides = paths.root / "sim" / "preload"
    overrides.mkdir(parents=True, exist_ok=True)
    for name, app in sorted(apps.items()):
        services: dict[str, Any] = {}
        for svc, img in app.images.items():
            tag = preload_tag(img)
            with tempfile.TemporaryDirectory(dir=overrides) as tmp:
                archive = Path(tmp) / "image.tar"
                _image_archive(store, img, tag, archive)
                _run(["docker", "load", "-i", str(archive)], cwd=Path(tmp), env=env,
                     timeout=LOAD_TIMEOUT)  # fmt: skip
            services[svc] = {"image": tag}
        app_dir = paths.compose_apps_root / name
        compose = app_dir / "docker-compose.yml"
        version = _compose_version(compose)
        doc: dict[str, Any] = {"services": services}
        if version:
            doc["version"] = version  # compose v1 merges only files of one version
        override = overrides / f"{name}.yml"
        override.write_text(json.dumps(doc, indent=2) + "\n")
        cmd = [compose_bin] if Path(compose_bin).name != "docker" else [compose_bin, "compose"]
        _run(
            [*cmd, "--project-name", name, "--project-directory", str(app_dir),
             "-f", str(compose), "-f", str(override), "up", "-d"],
            cwd=app_dir, env=env, timeout=COMPOSE_TIMEOUT,
        )  # fmt: skip


def _compose_version(compose: Path) -> str:
    import yaml

    doc = yaml.safe_load(compose.read_bytes())
    v = doc.get("version") if isinstance(doc, dict) else None
    return str(v) if v is not None else ""
