"""Compose v2 and hand-run compose.

- The `docker compose` (v2) command line, against a stand-in `docker` that records its argv
  (Debian has no v2): global options before the subcommand, every option one v2 knows.
- Project names: a signed app name that is not a valid compose project name is refused (80).
- `docker-compose.override.yml`: `docker-compose up -d` typed by hand in the app's directory (no
  -f) starts the verified image offline, on the real private dockerd with docker-compose v1.
- Projects left by an older usbupdater with `.usbupdater-images.yml` still go down and come up.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apps.conftest import StickDir, image0
from tests.apps.test_integration import Device, svc
from usbupdater.apps.compose import LEGACY_OVERRIDE_FILE, OVERRIDE_FILE, Compose
from usbupdater.apps.project import InvalidAppNameError, check_project_name
from usbupdater.apps.runner import remove_app, run_apps
from usbupdater.apps.verify import verify_apps
from usbupdater.errors import ExitCode, VerificationError
from usbupdater.sim import apps as sa
from usbupdater.sim.dockerd import PrivateDockerd

# `docker compose` v2 options usbupdater may use (docs.docker.com/reference/cli/docker/compose/):
# global ones, which must come before the subcommand, and each subcommand's own.
V2_GLOBAL_WITH_VALUE = {"--project-name", "-p", "--project-directory", "--file", "-f"}
V2_SUB_FLAGS = {
    "up": {"-d", "--detach", "--remove-orphans", "--no-build", "--wait"},
    "down": {"--remove-orphans"},
}


def v2_errors(argv: list[str]) -> list[str]:
    """What `docker compose` v2 would reject in argv[1:] ("compose" first)."""
    errs = []
    if argv[:1] != ["compose"]:
        return ["not a `docker compose` command"]
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] not in V2_GLOBAL_WITH_VALUE or i + 1 >= len(argv):
            errs.append(f"unknown global option {argv[i]}")
        i += 2
    if i >= len(argv) or argv[i] not in V2_SUB_FLAGS:
        return [*errs, "no known subcommand"]
    sub = argv[i]
    errs += [f"{sub}: unknown option {a}" for a in argv[i + 1 :] if a not in V2_SUB_FLAGS[sub]]
    opts = dict(zip(argv[1:i:2], argv[2:i:2]))
    name = opts.get("--project-name", opts.get("-p", ""))
    try:
        check_project_name(name)
    except InvalidAppNameError:
        errs.append(f"invalid project name {name!r}")
    return errs


@pytest.fixture
def standin(tmp_path: Path) -> tuple[Path, Path]:
    """A `docker` executable that appends its argv (JSON) to a log and succeeds."""
    log = tmp_path / "argv.log"
    exe = tmp_path / "bin" / "docker"
    exe.parent.mkdir()
    exe.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe, log


def test_v2_command_line(tmp_path: Path, standin: tuple[Path, Path]) -> None:
    exe, log = standin
    d = tmp_path / "compose-apps" / "shellhttpd"
    d.mkdir(parents=True)
    (d / "docker-compose.yml").write_text("services: {}\n")
    (d / OVERRIDE_FILE).write_text("{}\n")
    c = Compose((str(exe), "compose"), d)
    c.up()
    c.down()
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    files = ["-f", f"{d}/docker-compose.yml", "-f", f"{d}/{OVERRIDE_FILE}"]
    head = ["compose", "--project-name", "shellhttpd", "--project-directory", str(d), *files]
    assert calls == [
        [*head, "up", "-d", "--remove-orphans", "--no-build"],
        [*head, "down", "--remove-orphans"],
    ]
    for argv in calls:
        assert v2_errors(argv) == []


def test_v2_checker_rejects() -> None:
    """The checker above can fail: options after the subcommand, bad names, v1-only flags."""
    assert v2_errors(["compose", "up", "--project-name", "x"])
    assert v2_errors(["compose", "--project-name", "MyApp", "up", "-d"])
    assert v2_errors(["compose", "--verbose", "--project-name", "x", "up"])
    assert v2_errors(["compose", "--project-name", "x", "up", "--no-color-x"])


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("shellhttpd", True),
        ("app-1_b", True),
        ("0app", True),
        ("MyApp", False),
        ("my.app", False),
        ("_app", False),
        ("-app", False),
        ("", False),
        ("app\n", False),
    ],
)
def test_project_names(name: str, ok: bool) -> None:
    if ok:
        check_project_name(name)
    else:
        with pytest.raises(InvalidAppNameError, match="not a valid compose project name"):
            check_project_name(name)


@pytest.mark.parametrize("name", ["MyApp", "my.app"])
def test_invalid_signed_app_name_refused_80(tmp_path: Path, name: str) -> None:
    uris = {n: w.uri for n, w in sa.write_apps(tmp_path, [sa.AppSpec(name)]).items()}
    with pytest.raises(InvalidAppNameError) as ei:
        verify_apps(StickDir(tmp_path), uris, sa.machine_arch())
    assert ei.value.code == ExitCode.VERIFICATION_FAILED
    assert repr(name) in ei.value.reason


@pytest.mark.parametrize("extra", [OVERRIDE_FILE, "compose.yaml", "compose.override.yml"])
def test_bundle_with_another_compose_file_refused(tmp_path: Path, extra: str) -> None:
    spec = sa.AppSpec("app", files={extra: b"services: {}\n"})
    uris = {n: w.uri for n, w in sa.write_apps(tmp_path, [spec]).items()}
    with pytest.raises(VerificationError, match=f"bundle has {extra}") as ei:
        verify_apps(StickDir(tmp_path), uris, sa.machine_arch())
    assert ei.value.code == ExitCode.VERIFICATION_FAILED


def test_legacy_override_used_until_replaced(tmp_path: Path) -> None:
    d = tmp_path / "app"
    d.mkdir()
    (d / "docker-compose.yml").write_text("services: {}\n")
    (d / LEGACY_OVERRIDE_FILE).write_text("{}\n")
    args = Compose(("docker", "compose"), d).args("down")
    assert args[-3:-1] == ["-f", f"{d}/{LEGACY_OVERRIDE_FILE}"]
    (d / OVERRIDE_FILE).write_text("{}\n")
    args = Compose(("docker", "compose"), d).args("down")
    assert f"{d}/{OVERRIDE_FILE}" in args and f"{d}/{LEGACY_OVERRIDE_FILE}" not in args


# --- real docker-compose v1 and the private dockerd --------------------------------------------


@pytest.fixture
def dev(tmp_path: Path, dockerd: PrivateDockerd) -> Iterator[Device]:
    d = Device(tmp_path, dockerd)
    yield d
    api = d.ctx.client.api
    for c in api.containers(all=True):
        api.remove_container(c["Id"], force=True)
    d.ctx.client.close()


def _by_hand(device: Device, app: str, *sub: str) -> None:
    """`docker-compose <sub>` typed in compose_apps_root/<app>: no -f, no -p."""
    env = {k: v for k, v in device.dockerd.env().items() if not k.startswith("COMPOSE_")}
    subprocess.run(
        ["docker-compose", *sub],
        cwd=device.ctx.compose_root / app,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.mark.integration
def test_hand_run_compose_uses_override(dev: Device) -> None:
    device = dev
    (app,) = device.install(sa.AppSpec("handrun", services={"main": svc(), "side": svc()}))
    run_apps(device.ctx, [app])
    proj = device.ctx.compose_root / "handrun"
    assert (proj / OVERRIDE_FILE).is_file() and not (proj / LEGACY_OVERRIDE_FILE).exists()
    want = {s.name: app.images[s.image].image_id for s in app.services}
    before = device.ids("handrun")
    _by_hand(device, "handrun", "up", "-d")  # nothing changed: the same containers
    assert device.ids("handrun") == before
    _by_hand(device, "handrun", "down")
    assert device.ids("handrun") == {}
    _by_hand(device, "handrun", "up", "-d")  # offline: only the override's local tags resolve
    assert device.running("handrun") == want
    assert device.ids("handrun") != before


@pytest.mark.integration
def test_project_of_older_usbupdater_comes_up(dev: Device) -> None:
    """A project started by an older usbupdater (override `.usbupdater-images.yml`): `down`
    still finds its images' tags, and the next run writes the new override only."""
    device = dev
    (v1,) = device.install(sa.AppSpec("old", services={"main": svc()}))
    run_apps(device.ctx, [v1])
    proj = device.ctx.compose_root / "old"
    os.replace(proj / OVERRIDE_FILE, proj / LEGACY_OVERRIDE_FILE)  # as the old version left it
    run_apps(device.ctx, [v1])  # e.g. `run` or a rollback after the upgrade
    assert (proj / OVERRIDE_FILE).is_file() and not (proj / LEGACY_OVERRIDE_FILE).exists()
    assert device.running("old") == {"main": image0(v1).image_id}
    os.replace(proj / OVERRIDE_FILE, proj / LEGACY_OVERRIDE_FILE)
    remove_app(device.ctx, "old")  # `compose down` with the legacy override
    assert device.ids("old") == {} and not proj.exists()
