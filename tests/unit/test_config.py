from __future__ import annotations

from pathlib import Path

import pytest

from usbupdater import config
from usbupdater.errors import ConfigError


def lmp_tree(root: Path) -> list[Path]:
    """The three default locations of an LmP device, under root."""
    (root / "usr/lib/sota/conf.d").mkdir(parents=True)
    (root / "var/sota").mkdir(parents=True)
    (root / "etc/sota/conf.d").mkdir(parents=True)
    (root / "usr/lib/sota/conf.d/40-hardware-id.toml").write_text(
        '[provision]\nprimary_ecu_hardware_id = "intel-corei7-64"\n'
    )
    (root / "usr/lib/sota/conf.d/30-rollback.toml").write_text(
        '[bootloader]\nrollback_mode = "uboot_masked"\n'
    )
    # What lmp-device-register writes.
    (root / "var/sota/sota.toml").write_text(
        '[tls]\nserver = "https://ota-lite.foundries.io:8443"\n'
        '[provision]\nprimary_ecu_hardware_id = "intel-corei7-64"\n'
        "[uptane]\npolling_sec = 300\n"
        "[pacman]\n"
        'type = "ostree+compose_apps"\n'
        'sysroot = "/sysroot"\n'
        'tags = "main"\n'
        'ostree_update_block = "1"\n'
        'docker_compose_bin = "/usr/bin/docker"\n'
        "[storage]\n"
        'path = "/var/sota/"\n'
    )
    # fioctl config-updates drop-in overriding tags and the apps shortlist.
    (root / "etc/sota/conf.d/z-50-fioctl.toml").write_text(
        '[pacman]\ntags = "devel, qa"\ncompose_apps = "shellhttpd,nginx"\n'
    )
    return [root / "usr/lib/sota/conf.d", root / "var/sota/sota.toml", root / "etc/sota/conf.d"]


def test_lmp_like_tree_merges_in_order(tmp_path: Path) -> None:
    cfg = config.load(lmp_tree(tmp_path))
    assert cfg.provision.primary_ecu_hardware_id == "intel-corei7-64"
    assert cfg.pacman.tags == ("devel", "qa")  # /etc drop-in wins over sota.toml
    assert cfg.pacman.compose_apps == ("shellhttpd", "nginx")
    assert cfg.pacman.sysroot == Path("/sysroot")
    assert cfg.pacman.ostree_update_block is True
    assert cfg.pacman.compose_command == ("/usr/bin/docker", "compose")
    assert cfg.bootloader.rollback_mode == "uboot_masked"
    assert cfg.bootloader.reboot_command == "/sbin/reboot"
    assert cfg.storage.path == Path("/var/sota")
    assert cfg.state_dir == Path("/var/sota/usbupdater")
    assert cfg.current_target_file == Path("/var/sota/current-target")
    assert [p.name for p in cfg.sources] == [
        "30-rollback.toml",
        "40-hardware-id.toml",
        "sota.toml",
        "z-50-fioctl.toml",
    ]


def test_default_locations_are_used_without_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    paths = lmp_tree(tmp_path)
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATHS", tuple(paths))
    assert config.load().pacman.tags == ("devel", "qa")
    assert config.load([]).pacman.tags == ("devel", "qa")


def test_missing_default_locations_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    paths = lmp_tree(tmp_path)
    (tmp_path / "var/sota/sota.toml").unlink()
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATHS", tuple(paths))
    assert config.load().provision.primary_ecu_hardware_id == "intel-corei7-64"


def test_defaults_match_aktualizr_lite(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text('[provision]\nprimary_ecu_hardware_id = "hw"\n')
    cfg = config.load([f])
    assert cfg.storage.path == Path("/var/sota")
    assert cfg.storage.uptane_metadata_path == Path("/usr/lib/sota/tuf")
    assert cfg.pacman.type == "ostree+compose_apps"
    assert cfg.pacman.os == "lmp"
    assert cfg.pacman.tags == ()
    assert cfg.pacman.compose_apps is None
    assert cfg.pacman.compose_apps_root == Path("/var/sota/compose-apps")
    assert cfg.pacman.reset_apps_root == Path("/var/sota/reset-apps")
    assert cfg.bootloader.rollback_mode == "none"
    assert cfg.bootloader.reboot_sentinel_dir == Path("/var/run/aktualizr-session")
    assert cfg.usbupdater.lock_path == Path("/var/lock/aklite.lock")


def test_app_roots_follow_storage_path(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text('[provision]\nprimary_ecu_hardware_id = "hw"\n[storage]\npath = "/data/sota"\n')
    cfg = config.load([f])
    assert cfg.pacman.reset_apps_root == Path("/data/sota/reset-apps")
    assert cfg.state_dir == Path("/data/sota/usbupdater")


def test_empty_compose_apps_means_no_apps_absent_means_all(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text('[provision]\nprimary_ecu_hardware_id = "hw"\n[pacman]\ncompose_apps = ""\n')
    assert config.load([f]).pacman.compose_apps == ()


def test_docker_compose_v1_binary(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text(
        '[provision]\nprimary_ecu_hardware_id = "hw"\n'
        '[pacman]\ndocker_compose_bin = "/usr/bin/docker-compose"\n'
    )
    assert config.load([f]).pacman.compose_command == ("/usr/bin/docker-compose",)


def test_malformed_file_names_file_and_line(tmp_path: Path) -> None:
    good = tmp_path / "a.toml"
    good.write_text('[provision]\nprimary_ecu_hardware_id = "hw"\n')
    bad = tmp_path / "b.toml"
    bad.write_text('[pacman]\ntags = "x"\nthis is not toml\n')
    with pytest.raises(ConfigError) as exc:
        config.load([good, bad])
    assert str(bad) in exc.value.reason
    assert "line 3" in exc.value.reason


def test_missing_hardware_id_says_key_and_where(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text('[pacman]\ntags = "x"\n')
    with pytest.raises(ConfigError) as exc:
        config.load([f])
    assert "[provision] primary_ecu_hardware_id" in exc.value.reason
    assert "40-hardware-id.toml" in exc.value.reason


def test_nonexistent_config_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load([tmp_path / "nope.toml"])


def test_directory_reads_only_toml_in_name_order(tmp_path: Path) -> None:
    d = tmp_path / "conf.d"
    d.mkdir()
    (d / "10-a.toml").write_text('[provision]\nprimary_ecu_hardware_id = "first"\n')
    (d / "20-b.toml").write_text('[provision]\nprimary_ecu_hardware_id = "second"\n')
    (d / "30-c.toml.bak").write_text('[provision]\nprimary_ecu_hardware_id = "ignored"\n')
    assert config.load([d]).provision.primary_ecu_hardware_id == "second"


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ('[bootloader]\nrollback_mode = "grub"\n', "rollback_mode"),
        ('[pacman]\ntype = "rpm"\n', "[pacman] type"),
        ('[pacman]\nostree_update_block = "maybe"\n', "ostree_update_block"),
        ('[usbupdater]\napps_start_timeout = "soon"\n', "apps_start_timeout"),
        ('[usbupdater]\ndevice_type = "staging"\n', "device_type"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, snippet: str, message: str) -> None:
    f = tmp_path / "a.toml"
    f.write_text('[provision]\nprimary_ecu_hardware_id = "hw"\n' + snippet)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config.load([f])


def test_unknown_keys_and_tables_are_ignored(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text(
        '[provision]\nprimary_ecu_hardware_id = "hw"\nfoo = 1\n[uptane]\npolling_sec = 300\n'
        '[pacman]\nostree_update_block = 0\ntags = ["a", "b"]\n'
    )
    cfg = config.load([f])
    assert cfg.pacman.ostree_update_block is False
    assert cfg.pacman.tags == ("a", "b")


def test_one_usbupdater_model_for_core_and_agent(tmp_path: Path) -> None:
    """`[usbupdater]` is parsed once (`settings.parse`): the agent's settings are that model
    plus what it takes from other tables, so both sides always see the same values."""
    import dataclasses

    from usbupdater.agent.settings import AgentSettings

    f = tmp_path / "a.toml"
    f.write_text(
        '[provision]\nprimary_ecu_hardware_id = "hw"\n[storage]\npath = "/data/sota"\n'
        '[usbupdater]\nstatus_file = "/tmp/st.json"\nsettle_time = "2"\n'
        'bootloader_tool_dir = "/opt/fw"\nmatch_buses = ""\n'
    )
    cfg = config.load([f])
    u = cfg.usbupdater
    assert u.bootloader_tool_dir == Path("/opt/fw") and u.settle_time == 2.0
    assert u.agent_state_dir == Path("/data/sota/usbupdater/agent") and u.match_buses == ()
    agent = AgentSettings.from_config(cfg)
    for f_ in dataclasses.fields(u):
        assert getattr(agent, f_.name) == getattr(u, f_.name), f_.name
    f.write_text('[provision]\nprimary_ecu_hardware_id = "hw"\n[usbupdater]\nsettle_time = -1\n')
    with pytest.raises(ConfigError, match=r"\[usbupdater\] settle_time"):
        config.load([f])  # an agent key, refused when the configuration is read
