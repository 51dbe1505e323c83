from __future__ import annotations

from pathlib import Path

from usbupdater.checkin import INITIAL_TARGET, failed_targets, initial_target
from usbupdater.core import transaction_id, write_current_target
from usbupdater.selection import DeviceFacts
from usbupdater.target import TargetRecord

HW = "intel-corei7-64"
C1, C2 = "1" * 64, "2" * 64
U1, U2, U3 = (f"hub.foundries.io/acme/web@sha256:{d * 64}" for d in "abc")


def entry(commit: str, version: int, apps: dict[str, str]) -> dict[str, object]:
    return {
        "hashes": {"sha256": commit},
        "length": 0,
        "custom": {
            "targetFormat": "OSTREE",
            "version": str(version),
            "hardwareIds": [HW],
            "tags": ["main"],
            "docker_compose_apps": {a: {"uri": u} for a, u in apps.items()},
        },
    }


TARGETS = {
    "lmp-1": entry(C1, 1, {"web": U1}),
    "lmp-2": entry(C1, 2, {"web": U2}),  # an apps-only update on the same rootfs
    "lmp-3": entry(C2, 3, {"web": U3}),
}
DEVICE = DeviceFacts(HW, ("main",))


def test_initial_target_is_the_signed_target_whose_apps_are_installed() -> None:
    t = initial_target(TARGETS, DEVICE, C1, lambda a, u: u == U2)
    assert (t.name, t.version, dict(t.apps)) == ("lmp-2", 2, {"web": U2})


def test_initial_target_without_apps_is_the_first_built_from_the_commit() -> None:
    t = initial_target(TARGETS, DEVICE, C1, lambda a, u: False)
    assert (t.name, dict(t.apps)) == ("lmp-1", {})


def test_unknown_commit_gives_an_initial_target_with_unknown_apps() -> None:
    t = initial_target(TARGETS, DEVICE, "9" * 64)
    assert t.name == INITIAL_TARGET and t.version == 0
    assert t.custom["usbupdater-apps-unknown"] is True


def test_failed_targets_follow_the_last_outcome() -> None:
    history = [
        {"target": "a", "outcome": "failed"},
        {"target": "b", "outcome": "failed"},
        {"target": "b", "outcome": "updated"},  # forced later, and it worked
        {"target": None, "outcome": "failed"},
    ]
    assert failed_targets(history) == frozenset({"a"})


def test_transaction_id_is_stable_for_the_same_installation() -> None:
    t = TargetRecord("lmp-2", 2, C1, {"web": U2})
    prev = TargetRecord("lmp-1", 1, C1)
    assert transaction_id(t, prev, 7) == transaction_id(t, prev, 7)
    assert transaction_id(t, prev, 7) != transaction_id(t, None, 7)
    assert transaction_id(t, prev, 7) != transaction_id(t, prev, 8)


def test_current_target_file_has_aktualizr_lites_format(tmp_path: Path) -> None:
    t = TargetRecord(
        "lmp-277",
        277,
        C1,
        {},
        {"lmp-manifest-sha": "afc7", "containers-sha": "8214", "tags": ["main", "qa"]},
    )
    write_current_target(tmp_path / "current-target", t)
    assert (tmp_path / "current-target").read_text() == (
        'TARGET_NAME="lmp-277"\nCUSTOM_VERSION="277"\nLMP_MANIFEST_SHA="afc7"\n'
        'CONTAINERS_SHA="8214"\nTAG="main,qa"\n'
    )
