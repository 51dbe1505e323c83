"""The "LmP factory image" device: layout and contents as LmP leaves them, config as
usbupdater reads it, preloaded apps running under a real dockerd (upstream paths: sim/lmp.py)."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from usbupdater import config
from usbupdater.sim.apps import AppSpec, ServiceSpec, blob_path
from usbupdater.sim.factory import Factory, TargetSpec
from usbupdater.sim.lmp import LmpDevice, create_lmp_device

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FLASHED = "intel-corei7-64-lmp-1"
APPS = ("monitor", "shellhttpd")


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    work = tmp_path_factory.mktemp("lmp-factory")
    f = Factory(work)
    f.publish(
        TargetSpec(
            1,
            apps=[
                AppSpec("shellhttpd"),
                AppSpec("monitor", services={"main": ServiceSpec(cmd=("sleep", "9999"))}),
            ],
            boot_firmware_version=7,
        )
    )
    yield f
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def lmp(
    factory: Factory, dockerd: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LmpDevice]:
    root = tmp_path_factory.mktemp("lmp-prod")
    dev = create_lmp_device(
        root, factory, FLASHED, docker_host=dockerd.host, device_type="prod", start_apps=True
    )
    yield dev
    client = docker.DockerClient(base_url=dockerd.host)
    for c in client.containers.list(all=True):
        if c.labels.get("com.docker.compose.project") in APPS:
            c.remove(force=True)
    client.close()
    dev.device.destroy()


def _toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def test_config_snippets_are_lmps(lmp: LmpDevice, factory: Factory) -> None:
    conf_d = lmp.root / "usr/lib/sota/conf.d"
    # meta-updater aktualizr-hwid.bb; aktualizr config/sota-uboot-env.toml as 30-rollback.toml
    assert (conf_d / "40-hardware-id.toml").read_text() == (
        '[provision]\nprimary_ecu_hardware_id = "intel-corei7-64"\n'
    )
    assert (conf_d / "30-rollback.toml").read_text() == (
        '[bootloader]\nrollback_mode = "uboot_masked"\n'
    )
    assert sorted(p.name for p in conf_d.iterdir()) == ["30-rollback.toml", "40-hardware-id.toml"]
    # registration's sota.toml: factory-registration-ref sota_toml.py + lmp-device-register
    sota = lmp.root / "var/sota"
    doc = _toml(sota / "sota.toml")
    assert list(doc) == ["tls", "provision", "uptane", "pacman", "storage", "import"]
    assert doc["tls"] == {
        "server": "https://ota-lite.foundries.io:8443",
        "ca_source": "file",
        "pkey_source": "file",
        "cert_source": "file",
    }
    assert doc["provision"]["primary_ecu_hardware_id"] == "intel-corei7-64"
    assert doc["pacman"] == {
        "type": "ostree+compose_apps",
        "ostree_server": "https://ostree.foundries.io:8443/ostree",
        "compose_apps_root": f"{sota}/compose-apps",
        "reset_apps_root": f"{sota}/reset-apps",
        "reset_apps": "",
        "tags": "main",
    }
    assert doc["storage"] == {"type": "sqlite", "path": f"{sota}/"}
    assert doc["import"] == {
        "tls_cacert_path": f"{sota}/root.crt",
        "tls_pkey_path": f"{sota}/pkey.pem",
        "tls_clientcert_path": f"{sota}/client.pem",
    }
    assert (sota / "pkey.pem").stat().st_mode & 0o077 == 0
    for kind in ("ci", "prod"):
        assert (lmp.root / f"usr/lib/sota/tuf/{kind}/1.root.json").is_file()


def test_client_certificate_subject(lmp: LmpDevice, factory: Factory) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    cert = x509.load_pem_x509_certificate((lmp.root / "var/sota/client.pem").read_bytes())
    subject = {a.oid: a.value for a in cert.subject}
    assert subject == {
        NameOID.COMMON_NAME: lmp.uuid,
        NameOID.ORGANIZATIONAL_UNIT_NAME: factory.factory_name,
        NameOID.BUSINESS_CATEGORY: "production",
    }
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_boot_variables_and_firmware_version(lmp: LmpDevice, factory: Factory) -> None:
    assert lmp.device.bootloader.read_all() == {
        "bootcount": "0",
        "bootlimit": "3",
        "upgrade_available": "0",
        "rollback": "0",
        "rollback_protection": "0",
        "bootupgrade_available": "0",
        "bootupgrade_primary_updated": "0",
        "debug": "0",
        "bootfirmware_version": "7",  # read from the flashed deployment, as boot.cmd does
    }
    commit = factory.targets[FLASHED].commit
    assert lmp.device.booted_commit() == commit
    deploy = lmp.device.sysroot / "ostree/deploy/lmp/deploy"
    (d,) = [p for p in deploy.iterdir() if p.is_dir()]
    assert (d / "usr/lib/firmware/version.txt").read_text() == "bootfirmware_version=7\n"


def test_preloaded_store_is_composectls_layout(lmp: LmpDevice, factory: Factory) -> None:
    store = lmp.root / "var/sota/reset-apps"
    target = factory.targets[FLASHED]
    assert sorted(p.name for p in (store / "apps").iterdir()) == list(APPS)
    for name in APPS:
        w = lmp.preloaded[name]
        (app_dir,) = list((store / "apps" / name).iterdir())
        assert app_dir.name == w.manifest_digest.split(":")[1]
        assert (app_dir / "uri").read_text() == target.apps[name].uri
        manifest = app_dir / "manifest.json"
        tgz = app_dir / f"{w.bundle_digest.split(':')[1]}.tgz"
        # composectl MakeAkliteHappy: hard links to the blobs
        assert manifest.stat().st_ino == blob_path(store, w.manifest_digest).stat().st_ino
        assert tgz.stat().st_ino == blob_path(store, w.bundle_digest).stat().st_ino
        for img in w.images.values():
            locator = img.ref.partition("@")[0]
            index = app_dir / "images" / locator / img.root_digest.split(":")[1] / "index.json"
            assert json.loads(index.read_text())["manifests"][0]["digest"] == img.manifest_digest
        for digest in w.blobs:
            assert blob_path(store, digest).is_file()
    assert not list(store.rglob("usbupdater-app.json"))
    assert not list(store.rglob("oci-layout"))
    # unpacked as composectl InstallCompose does
    for name in APPS:
        assert (lmp.root / "var/sota/compose-apps" / name / "docker-compose.yml").read_bytes() == (
            lmp.preloaded[name].compose
        )
    versions = json.loads((lmp.root / "var/sota/import/installed_versions").read_text())
    assert list(versions) == [FLASHED]
    assert versions[FLASHED]["is_current"] is True
    assert versions[FLASHED]["hashes"] == target.entry["hashes"]


def test_config_loads_with_aktualizr_lite_defaults(lmp: LmpDevice) -> None:
    cfg = config.load(lmp.paths.config_paths)
    sota = lmp.root / "var/sota"
    assert cfg.provision.primary_ecu_hardware_id == "intel-corei7-64"
    assert cfg.pacman.type == "ostree+compose_apps"
    assert cfg.pacman.tags == ("main",)
    assert cfg.pacman.compose_apps is None  # every app of the target
    assert cfg.pacman.reset_apps == ()
    assert cfg.pacman.compose_apps_root == sota / "compose-apps"
    assert cfg.pacman.reset_apps_root == sota / "reset-apps"
    assert cfg.pacman.sysroot == lmp.device.sysroot
    assert cfg.storage.path == sota
    assert cfg.storage.uptane_metadata_path == lmp.root / "usr/lib/sota/tuf"
    assert cfg.state_dir == sota / "usbupdater"
    assert cfg.bootloader.rollback_mode == "uboot_masked"
    assert cfg.import_.tls_clientcert_path == str(sota / "client.pem")
    assert cfg.usbupdater.device_type == "prod"
    assert "businessCategory=production" in cfg.usbupdater.device_type_reason
    sim = cfg.table("sim")
    assert sim.get_str("bootloader_env_file", "") == str(lmp.device.env_file)


def test_preloaded_apps_run_as_compose_projects(lmp: LmpDevice, dockerd: Any) -> None:
    client = docker.DockerClient(base_url=dockerd.host)
    try:
        running = {
            c.labels.get("com.docker.compose.project"): c
            for c in client.containers.list()
            if c.labels.get("com.docker.compose.project") in APPS
        }
        assert sorted(running) == list(APPS)
        for name, c in running.items():
            img = lmp.preloaded[name].images["main"]
            assert c.image.id == img.config_digest  # the verified image, by config digest
            assert c.labels["com.docker.compose.service"] == "main"
            assert c.labels["com.docker.compose.project.working_dir"] == str(
                lmp.root / "var/sota/compose-apps" / name
            )
    finally:
        client.close()


def test_ci_device_without_preload(factory: Factory, tmp_path: Path) -> None:
    dev = create_lmp_device(tmp_path, factory, FLASHED, preload_apps=False, device_type="ci")
    try:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        cert = x509.load_pem_x509_certificate((tmp_path / "var/sota/client.pem").read_bytes())
        assert not cert.subject.get_attributes_for_oid(NameOID.BUSINESS_CATEGORY)
        assert not (tmp_path / "var/sota/reset-apps").exists()
        assert "reset_apps" not in _toml(tmp_path / "var/sota/sota.toml")["pacman"]
        cfg = config.load(dev.paths.config_paths)
        assert cfg.usbupdater.device_type == "ci"
        assert cfg.pacman.reset_apps is None
    finally:
        dev.device.destroy()
