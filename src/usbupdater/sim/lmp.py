"""An "LmP factory image" device: what LmP's build and factory flashing leave, not what usbupdater
would write. Each piece follows the public sources it names (upstream repository + path):

- Config snippets in `/usr/lib/sota/conf.d`: `40-hardware-id.toml` (uptane/meta-updater
  `recipes-sota/aktualizr/aktualizr-hwid.bb`), `30-rollback.toml` (meta-updater
  `aktualizr-uboot-env-rollback.bb` installing foundriesio/aktualizr `config/sota-uboot-env.toml`;
  foundriesio/meta-lmp `recipes-sota/aktualizr/aktualizr-fiovb-env-rollback/sota-fiovb-env.toml`
  and `.../aktualizr-fioefi-env-rollback/sota-fioefi-env.toml`). LmP sets `SOTA_CLIENT_PROV = ""`
  (meta-lmp `conf/distro/lmp.conf`), so no `20-sota-device-cred.toml`.
- `/var/sota/sota.toml`, `client.pem`, `pkey.pem`, `root.crt` as registration writes them:
  foundriesio/factory-registration-ref `registration_ref/sota_toml.py` (tables and keys) with the
  overrides of foundriesio/lmp-device-register `src/main.cpp` (`put_compose_app_info`: pacman
  type, compose_apps_root, reset_apps_root, `reset_apps = ""` when the image is preloaded; tags).
- The client certificate's subject: CN=<uuid>, OU=<factory>, businessCategory=production only
  for production devices (lmp-device-register `src/openssl.cpp`; factory-registration-ref
  `registration_ref/crypto.py` for the P-256 key, key usages and serial).
- Preloaded apps: meta-lmp `classes/lmp.bbclass` `preload_apps` fills
  `/var/sota/reset-apps` (OCI_STORE_PATH) and `/var/sota/import/installed_versions`
  (TARGET_JSON_FILE); the store is composectl's (foundriesio/composeapp
  `pkg/compose/v1/app_store.go`: `blobs/sha256/<hex>`, `apps/<app>/<H>/{uri, manifest.json,
  <B>.tgz, docker-compose.yml, images/<host>/<path>/<hex>/index.json}`, `MakeAkliteHappy` making
  manifest.json and the tgz hard links to their blobs). `installed_versions` is the format
  aktualizr imports (foundriesio/aktualizr `src/libaktualizr/storage/invstorage.cc`
  `fsReadInstalledVersions`: `{name: {target..., "is_current": true}}`).
- Installed apps: composectl `pkg/compose/install.go` `InstallCompose` untars the bundle into
  `compose_apps_root/<app>`; the first boot starts each with `docker compose up -d` in that
  directory (meta-lmp `recipes-support/compose-apps-early-start/.../compose-apps-early-start`).
- Boot variables after the first boot (meta-lmp `recipes-bsp/u-boot/u-boot-ostree-scr-fit/
  boot-header.cmd.in`, "Make sure initial environment is valid"): bootcount, rollback,
  rollback_protection, upgrade_available, bootupgrade_available, bootupgrade_primary_updated,
  debug = 0, bootfirmware_version from the deployment's `usr/lib/firmware/version.txt`
  (`bootcmd_bootenv`); bootlimit=3 (meta-lmp-bsp `u-boot-fio/*/lmp.cfg`
  CONFIG_BOOTCOUNT_BOOTLIMIT=3).

Every absolute path lives under `root`. The one addition is `etc/sota/conf.d/
z-90-usbupdater-sim.toml`, which redirects the paths a simulation must (sysroot, TUF roots, boot
record, file-backed bootloader, lock, docker host, compose binary). Stock dockerd cannot register
the digest references Foundries' patched engine gets from composectl, so `start_apps` loads each
image under a tag and passes compose an override kept outside the app directory
(`sim/preload/<app>.yml`): the app directory holds only what composectl writes.
"""

from __future__ import annotations

import datetime
import json
import shlex
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from usbupdater.sim.apps import WrittenApp
from usbupdater.sim.device import SimDevice
from usbupdater.sim.factory import Factory, PublishedTarget
from usbupdater.sim.lmp_apps import (
    install_compose,
    installed_versions,
    preload_store,
    run_preloaded_apps,
)
from usbupdater.sim.setup import CORE_ARGV

GATEWAY = "https://ota-lite.foundries.io:8443"  # factory-registration-ref settings' default
OSTREE_SERVER = "https://ostree.foundries.io:8443"
BOOTLIMIT = 3
_ROLLBACK_SNIPPETS = {
    "uboot_masked": '[bootloader]\nrollback_mode = "uboot_masked"\n',
    "fiovb": '[bootloader]\nrollback_mode = "fiovb"\n',
    "fioefi": '[bootloader]\nrollback_mode = "fioefi"\n',
}


@dataclass(frozen=True)
class LmpPaths:
    """Where an LmP device keeps things, under `root` (`/` on a real device)."""

    root: Path

    @property
    def conf_d(self) -> Path:
        return self.root / "usr/lib/sota/conf.d"

    @property
    def tuf(self) -> Path:
        return self.root / "usr/lib/sota/tuf"  # meta-lmp lmp.bbclass SOTA_TUF_ROOT_DIR

    @property
    def var_sota(self) -> Path:
        return self.root / "var/sota"

    @property
    def sota_toml(self) -> Path:
        return self.var_sota / "sota.toml"

    @property
    def etc_conf_d(self) -> Path:
        return self.root / "etc/sota/conf.d"

    @property
    def compose_apps_root(self) -> Path:
        return self.var_sota / "compose-apps"

    @property
    def reset_apps_root(self) -> Path:
        return self.var_sota / "reset-apps"

    @property
    def import_dir(self) -> Path:
        return self.var_sota / "import"

    @property
    def client_cert(self) -> Path:
        return self.var_sota / "client.pem"

    @property
    def device_dir(self) -> Path:
        return self.root / "device"  # the SimDevice: sysroot, boot environment, /run

    @property
    def sim_snippet(self) -> Path:
        return self.etc_conf_d / "z-90-usbupdater-sim.toml"

    @property
    def config_paths(self) -> tuple[Path, Path, Path]:
        """aktualizr-lite's default configuration locations, in order (src/api.cc CONFIG_DIRS)."""
        return (self.conf_d, self.sota_toml, self.etc_conf_d)


@dataclass(frozen=True)
class LmpDevice:
    paths: LmpPaths
    device: SimDevice
    target: PublishedTarget
    uuid: str
    device_type: str
    preloaded: Mapping[str, WrittenApp]  # app -> what reset-apps holds for it
    docker_host: str

    @property
    def root(self) -> Path:
        return self.paths.root

    def config_args(self) -> list[str]:
        """`-c PATH` for each configuration location, for `usbupdater ... <these>`."""
        return [a for p in self.paths.config_paths for a in ("-c", str(p))]


# --- configuration -----------------------------------------------------------------------------


def _q(value: object) -> str:
    return json.dumps(str(value))  # a TOML basic string (JSON escapes are valid TOML escapes)


def sota_toml_text(
    sota_dir: Path, hardware_id: str, tags: str, *, reset_apps: bool, compose_apps: str = ""
) -> str:
    """`/var/sota/sota.toml` as registration writes it (factory-registration-ref `sota_toml.py`
    tables, lmp-device-register `put_compose_app_info` overrides)."""
    d = str(sota_dir)
    pacman = [
        ("type", _q("ostree+compose_apps")),
        ("ostree_server", _q(f"{OSTREE_SERVER}/ostree")),
        ("compose_apps_root", _q(f"{d}/compose-apps")),
    ]
    if compose_apps:
        pacman.append(("compose_apps", _q(compose_apps)))
    pacman.append(("reset_apps_root", _q(f"{d}/reset-apps")))
    if reset_apps:
        pacman.append(("reset_apps", '""'))  # "Device is preloaded with Restorable Apps"
    if tags:
        pacman.append(("tags", _q(tags)))
    tables: list[tuple[str, list[tuple[str, str]]]] = [
        (
            "tls",
            [
                ("server", _q(GATEWAY)),
                ("ca_source", _q("file")),
                ("pkey_source", _q("file")),
                ("cert_source", _q("file")),
            ],
        ),
        ("provision", [("server", _q(GATEWAY)), ("primary_ecu_hardware_id", _q(hardware_id))]),
        ("uptane", [("repo_server", _q(f"{GATEWAY}/repo")), ("key_source", _q("file"))]),
        ("pacman", pacman),
        ("storage", [("type", _q("sqlite")), ("path", _q(f"{d}/"))]),
        (
            "import",
            [
                ("tls_cacert_path", _q(f"{d}/root.crt")),
                ("tls_pkey_path", _q(f"{d}/pkey.pem")),
                ("tls_clientcert_path", _q(f"{d}/client.pem")),
            ],
        ),
    ]
    lines: list[str] = []
    for name, keys in tables:
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {v}" for k, v in keys)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def sim_snippet_text(
    paths: LmpPaths,
    dev: SimDevice,
    *,
    docker_host: str,
    compose_bin: str,
    apps_start_timeout: float,
    reboot_command: str,
    extra: str = "",
) -> str:
    """The only file that is not LmP's: absolute paths redirected under the simulation root."""
    return (
        "# usbupdater simulation: paths of an LmP device redirected under the test root\n"
        "[storage]\n"
        f"uptane_metadata_path = {_q(paths.tuf)}\n"
        "[import]\n"
        f"base_path = {_q(paths.import_dir)}\n"
        "[pacman]\n"
        f"sysroot = {_q(dev.sysroot)}\n"
        f"os = {_q(dev.osname)}\n"
        f"docker_compose_bin = {_q(compose_bin)}\n"
        "[bootloader]\n"
        f"reboot_command = {_q(reboot_command)}\n"
        f"reboot_sentinel_dir = {_q(dev.sentinel_dir)}\n"
        "[sim]\n"
        f"boot_record = {_q(dev.record_file)}\n"
        f"bootloader_env_file = {_q(dev.env_file)}\n"
        "[usbupdater]\n"
        f"lock_path = {_q(paths.root / 'run/lock/aklite.lock')}\n"
        f"updater_command = {_q(shlex.join(CORE_ARGV))}\n"
        f"docker_host = {_q(docker_host)}\n"
        f"apps_start_timeout = {apps_start_timeout}\n"
        f"status_file = {_q(dev.run_dir / 'usbupdater/status.json')}\n" + extra
    )


def _write(path: Path, data: Union[str, bytes], mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)


# --- credentials -------------------------------------------------------------------------------


def write_credentials(
    sota_dir: Path, device_uuid: str, factory_name: str, production: bool
) -> Path:
    """pkey.pem, client.pem (signed by a stand-in factory CA) and root.crt in `sota_dir`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "Factory-CA"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, factory_name),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=7300))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())  # `openssl ecparam -name prime256v1`
    attrs = [
        x509.NameAttribute(NameOID.COMMON_NAME, device_uuid),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, factory_name),
    ]
    if production:
        attrs.append(x509.NameAttribute(NameOID.BUSINESS_CATEGORY, "production"))
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(int(device_uuid.replace("-", ""), 16))
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=7300))
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write(
        sota_dir / "pkey.pem",
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        0o600,
    )
    _write(sota_dir / "client.pem", cert.public_bytes(pem))
    _write(sota_dir / "root.crt", ca_cert.public_bytes(pem))
    return sota_dir / "client.pem"


# --- the device --------------------------------------------------------------------------------


def _deployed_firmware_version(dev: SimDevice) -> Optional[str]:
    """`bootfirmware_version` from the booted deployment's version.txt (u-boot bootcmd_bootenv)."""
    deployment = str(dev.boot_record()["deployment"])
    f = dev.sysroot / "ostree/deploy" / dev.osname / "deploy" / deployment
    try:
        text = (f / "usr/lib/firmware/version.txt").read_text()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "bootfirmware_version":
            return value.strip()
    return None


def create_lmp_device(
    root: Path,
    factory: Factory,
    flashed_target: str,
    *,
    docker_host: str = "",
    hardware_id: Optional[str] = None,
    tags: Optional[str] = None,
    device_type: str = "ci",
    preload_apps: Union[bool, Sequence[str]] = True,
    start_apps: bool = False,
    boot_firmware_version: Optional[int] = None,
    rollback_mode: str = "uboot_masked",
    device_uuid: Optional[str] = None,
    compose_apps: str = "",
    compose_bin: str = "/usr/bin/docker-compose",
    apps_start_timeout: float = 60,
    reboot_command: str = "/bin/true",
    extra: str = "",
) -> LmpDevice:
    """A device flashed by LmP's factory with `flashed_target` and booted once, under `root`.

    `device_type` "prod" gives the certificate businessCategory=production. `preload_apps`: True
    for every app of the target, a list for a shortlist (APP_SHORTLIST), False for none.
    `start_apps` runs them on the engine at `docker_host` as the first boot would.
    `boot_firmware_version`: the bootloader's `bootfirmware_version` (default: the value in the
    flashed rootfs's `usr/lib/firmware/version.txt`, unset without one). `extra` is TOML appended
    to the simulation snippet.
    """
    if device_type not in ("ci", "prod"):
        raise ValueError(f"device_type must be ci or prod, not {device_type!r}")
    target = factory.targets[flashed_target]
    paths = LmpPaths(Path(root))
    hwid = hardware_id or factory.hardware_id
    device_uuid = device_uuid or str(uuidlib.uuid4())

    dev = SimDevice.create(paths.device_dir, factory.treehub, target.commit, mode=rollback_mode)
    env = dev.bootloader.read_all()
    env.update(
        {
            "bootlimit": str(BOOTLIMIT),
            "rollback_protection": "0",
            "bootupgrade_primary_updated": "0",
            "debug": "0",
        }
    )
    fw = str(boot_firmware_version) if boot_firmware_version is not None else None
    fw = fw or _deployed_firmware_version(dev)
    if fw is not None:
        env["bootfirmware_version"] = fw
    dev.bootloader.write_all(env)

    # Roots 1 and 2 are the same for CI and production (aktualizr-lite src/liteclient.cc).
    for kind in ("ci", "prod"):
        factory.repo.write_device_roots(paths.tuf / kind)

    if rollback_mode in _ROLLBACK_SNIPPETS:
        _write(paths.conf_d / "30-rollback.toml", _ROLLBACK_SNIPPETS[rollback_mode])
    _write(
        paths.conf_d / "40-hardware-id.toml", f"[provision]\nprimary_ecu_hardware_id = {_q(hwid)}\n"
    )

    names: list[str] = []
    if preload_apps is True:
        names = [a.name for a in target.spec.apps]
    elif preload_apps:
        names = list(preload_apps)
    preloaded: dict[str, WrittenApp] = {}
    if names:
        preloaded = preload_store(paths.reset_apps_root, factory, target, names)
        for app in preloaded.values():
            install_compose(paths.reset_apps_root, paths.compose_apps_root, app)
    _write(paths.import_dir / "installed_versions", installed_versions(target))

    _write(
        paths.sota_toml,
        sota_toml_text(
            paths.var_sota,
            hwid,
            factory.tag if tags is None else tags,
            reset_apps=bool(preloaded),
            compose_apps=compose_apps,
        ),
    )
    write_credentials(paths.var_sota, device_uuid, factory.factory_name, device_type == "prod")
    _write(
        paths.sim_snippet,
        sim_snippet_text(
            paths,
            dev,
            docker_host=docker_host,
            compose_bin=compose_bin,
            apps_start_timeout=apps_start_timeout,
            reboot_command=reboot_command,
            extra=extra,
        ),
    )
    if start_apps and preloaded:
        run_preloaded_apps(paths, preloaded, docker_host, compose_bin)
    return LmpDevice(paths, dev, target, device_uuid, device_type, preloaded, docker_host)
