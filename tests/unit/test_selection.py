"""Target selection rules (spec section 3, scenarios of section 7 that need no install)."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from usbupdater.errors import (
    ContentMissingError,
    DowngradeRefusedError,
    NoTargetError,
    TargetNotFoundError,
)
from usbupdater.selection import (
    Action,
    DeviceFacts,
    Stage,
    required_apps,
    select_target,
)
from usbupdater.target import InvalidTargetError, TargetRecord, parse_target

HW = "raspberrypi4-64"


def commit(n: int) -> str:
    return f"{n:064x}"


def uri(app: str, n: int = 1) -> str:
    return f"hub.foundries.io/acme/{app}@sha256:{n:064x}"


def entry(
    version: int,
    apps: tuple[str, ...] = ("a", "b"),
    hw: str = HW,
    tags: tuple[str, ...] = ("main",),
    fetched: Any = None,
    fmt: str = "OSTREE",
    app_rev: int = 1,
) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "targetFormat": fmt,
        "version": str(version),
        "hardwareIds": [hw],
        "tags": list(tags),
        "docker_compose_apps": {a: {"uri": uri(a, app_rev)} for a in apps},
    }
    if fetched is not None:
        custom["fetched-apps"] = fetched
    return {"hashes": {"sha256": commit(version)}, "length": 0, "custom": custom}


class Content:
    """A bundle's content as sets: commits and app URIs present."""

    def __init__(self, commits: set[str], uris: set[str]) -> None:
        self.commits, self.uris = commits, uris

    def commit_problem(self, c: str) -> Optional[str]:
        return None if c in self.commits else f"commit {c} is not in ostree_repo"

    def app_problem(self, name: str, u: str) -> Optional[str]:
        return None if u in self.uris else f"app {name} ({u}) is not in the bundle"


def full(*versions: int, apps: tuple[str, ...] = ("a", "b"), rev: int = 1) -> Content:
    return Content({commit(v) for v in versions}, {uri(a, rev) for a in apps})


DEV = DeviceFacts(hardware_id=HW, tags=("main",))
TARGETS = {"lmp-1": entry(1), "lmp-2": entry(2), "lmp-3": entry(3)}


def test_highest_version_wins_among_several() -> None:
    sel = select_target(TARGETS, None, DEV, full(1, 2, 3))
    cand, action = sel.require()
    assert cand.target.name == "lmp-3" and action is Action.INSTALL
    assert [c.target.name for c in sel.candidates] == ["lmp-3", "lmp-2", "lmp-1"]
    assert dict(cand.apps) == {"a": uri("a"), "b": uri("b")}


def test_versions_compare_as_integers() -> None:
    targets = {"t9": entry(9), "t10": entry(10)}
    assert select_target(targets, None, DEV, full(9, 10)).require()[0].target.name == "t10"


def test_latest_incomplete_older_complete_wins() -> None:
    sel = select_target(TARGETS, None, DEV, full(1, 2))
    assert sel.require()[0].target.name == "lmp-2"
    (rej,) = sel.rejections
    assert rej.name == "lmp-3" and rej.stage is Stage.CONTENT
    assert "not in ostree_repo" in rej.reason


def test_missing_app_rejects_target() -> None:
    sel = select_target({"t": entry(1)}, None, DEV, full(1, apps=("a",)))
    assert isinstance(sel.error, ContentMissingError)
    assert "app b" in sel.error.reason
    with pytest.raises(ContentMissingError):
        sel.require()


def test_foreign_hardware_id_gives_6() -> None:
    sel = select_target({"t": entry(1, hw="other")}, None, DEV, full(1))
    assert isinstance(sel.error, NoTargetError)
    assert "hardware id" in sel.error.reason and sel.rejections[0].stage is Stage.NOT_FOR_DEVICE


def test_foreign_tag_gives_6_and_untagged_device_takes_any() -> None:
    targets = {"t": entry(1, tags=("devel",))}
    sel = select_target(targets, None, DEV, full(1))
    assert isinstance(sel.error, NoTargetError) and "tags devel" in sel.rejections[0].reason
    untagged = DeviceFacts(hardware_id=HW)
    assert select_target(targets, None, untagged, full(1)).error is None


def test_not_ostree_format_rejected() -> None:
    sel = select_target({"t": entry(1, fmt="BINARY")}, None, DEV, full(1))
    assert isinstance(sel.error, NoTargetError) and "BINARY" in sel.rejections[0].reason


def test_bundle_targets_list_restricts_candidates() -> None:
    sel = select_target(TARGETS, ["lmp-2"], DEV, full(1, 2, 3))
    assert sel.require()[0].target.name == "lmp-2"
    assert {r.name for r in sel.rejections} == {"lmp-1", "lmp-3"}
    assert all("bundle-targets" in r.reason for r in sel.rejections)


def test_content_error_beats_device_error() -> None:
    targets = {"other": entry(5, hw="x"), "t": entry(1)}
    sel = select_target(targets, None, DEV, full())
    assert isinstance(sel.error, ContentMissingError) and "t:" in sel.error.reason


def test_invalid_targets_are_rejected_not_raised() -> None:
    bad = {
        "no-custom": {"hashes": {"sha256": commit(1)}},
        "bad-hash": {**entry(1), "hashes": {"sha256": "zz"}},
        "bad-version": {**entry(1), "custom": {**entry(1)["custom"], "version": "x1"}},
        "bad-apps": {**entry(1), "custom": {**entry(1)["custom"], "docker_compose_apps": []}},
        "bad-uri": entry(1)
        | {"custom": {**entry(1)["custom"], "docker_compose_apps": {"a": {"uri": "x"}}}},
        "dotdot-app": {
            **entry(1),
            "custom": {**entry(1)["custom"], "docker_compose_apps": {"..": {"uri": uri("a")}}},
        },
        "not-a-dict": [],
        "good": entry(2),
    }
    sel = select_target(bad, None, DEV, full(1, 2))
    assert sel.require()[0].target.name == "good"
    reasons = {r.name: r.reason for r in sel.rejections}
    assert set(reasons) == set(bad) - {"good"}
    assert all(r.startswith("invalid metadata") for r in reasons.values())


def test_target_option() -> None:
    sel = select_target(TARGETS, None, DEV, full(1, 2, 3), target_name="lmp-1")
    assert sel.require()[0].target.name == "lmp-1"
    sel = select_target(TARGETS, None, DEV, full(1, 2, 3), target_name="nope")
    assert isinstance(sel.error, TargetNotFoundError)
    sel = select_target(TARGETS, None, DEV, full(1, 2), target_name="lmp-3")
    assert isinstance(sel.error, TargetNotFoundError) and "ostree_repo" in sel.error.reason


def test_downgrade_refused_unless_forced() -> None:
    dev = DeviceFacts(HW, ("main",), current=TargetRecord("lmp-5", 5, commit(5)))
    sel = select_target(TARGETS, None, dev, full(1, 2, 3))
    assert isinstance(sel.error, DowngradeRefusedError) and sel.selected is not None
    assert sel.error.code == 102
    forced = select_target(TARGETS, None, dev, full(1, 2, 3), force=True)
    assert forced.require() == (forced.candidates[0], Action.INSTALL)


def test_already_installed_same_name_commit_apps() -> None:
    cur = TargetRecord("lmp-3", 3, commit(3), {"a": uri("a"), "b": uri("b")})
    dev = DeviceFacts(HW, ("main",), current=cur)
    assert select_target(TARGETS, None, dev, full(1, 2, 3)).require()[1] is Action.ALREADY_INSTALLED
    # Different apps on the device (e.g. shortlist changed): an apps sync is an install.
    cur2 = TargetRecord("lmp-3", 3, commit(3), {"a": uri("a")})
    dev2 = DeviceFacts(HW, ("main",), current=cur2)
    assert select_target(TARGETS, None, dev2, full(1, 2, 3)).require()[1] is Action.INSTALL
    # Same name, other commit: install.
    cur3 = TargetRecord("lmp-3", 3, commit(9), dict(cur.apps))
    dev3 = DeviceFacts(HW, ("main",), current=cur3)
    assert select_target(TARGETS, None, dev3, full(1, 2, 3)).require()[1] is Action.INSTALL


def test_failed_target_skipped_unless_forced() -> None:
    dev = DeviceFacts(HW, ("main",), failed_targets=frozenset({"lmp-3"}))
    sel = select_target(TARGETS, None, dev, full(1, 2, 3))
    assert sel.require()[0].target.name == "lmp-2"
    assert any(r.stage is Stage.FAILED and "--force" in r.reason for r in sel.rejections)
    forced = select_target(TARGETS, None, dev, full(1, 2, 3), force=True)
    assert forced.require()[0].target.name == "lmp-3"
    only = select_target({"lmp-3": entry(3)}, None, dev, full(3))
    assert isinstance(only.error, NoTargetError) and "failed before" in only.error.reason


# --- required apps -----------------------------------------------------------------------------


def _apps(
    fetched: Any = None, device: DeviceFacts = DEV, apps: tuple[str, ...] = ("a", "b", "c")
) -> set[str]:
    t = parse_target("t", entry(1, apps=apps, fetched=fetched))
    return set(required_apps(t, device)[0])


def test_required_apps_rules() -> None:
    assert _apps() == {"a", "b", "c"}
    assert _apps({"uri": "https://ci/x.apps.tar", "shortlist": ""}) == {"a", "b", "c"}
    assert _apps({"uri": "https://ci/x.apps.tar", "shortlist": "a, c"}) == {"a", "c"}
    assert _apps({"uri": "https://ci/x.apps.tar", "shortlist": ["b"]}) == {"b"}
    assert (
        _apps({"uri": "https://ci/x.apps.tar", "shortlist": "x,y"}) == set()
    )  # empty intersection
    assert _apps({"uri": None, "shortlist": "a"}) == set()  # apps off in the bundle
    assert _apps({"uri": ""}) == set()
    assert _apps("not an object") == {"a", "b", "c"}  # aktualizr-lite: counts as absent
    assert _apps(device=DeviceFacts(HW, compose_apps=("b", "z"))) == {"b"}
    assert _apps(device=DeviceFacts(HW, compose_apps=())) == set()
    assert _apps(device=DeviceFacts(HW, apps_enabled=False)) == set()
    both = DeviceFacts(HW, compose_apps=("a", "b"))
    assert _apps({"uri": "u", "shortlist": "b,c"}, device=both) == {"b"}
    # [pacman] reset_apps are required whatever compose_apps says (aktualizr-lite
    # getRequiredApps), but only as far as the bundle's shortlist carries them.
    reset = DeviceFacts(HW, compose_apps=("a",), reset_apps=("c",))
    assert _apps(device=reset) == {"a", "c"}
    assert _apps(device=DeviceFacts(HW, compose_apps=(), reset_apps=("*",))) == {"a", "b", "c"}
    assert _apps({"uri": "u", "shortlist": "a"}, device=reset) == {"a"}


def test_shortlist_excludes_missing_app() -> None:
    # ShortlistedApps: app "b" is missing from the bundle, but the device only runs "a".
    dev = DeviceFacts(HW, ("main",), compose_apps=("a",))
    sel = select_target({"t": entry(1)}, None, dev, full(1, apps=("a",)))
    assert dict(sel.require()[0].apps) == {"a": uri("a")}
    # fetched-apps shortlist does the same for CI-made bundles.
    t = {"t": entry(1, fetched={"uri": "https://ci/t.apps.tar", "shortlist": "a"})}
    assert set(select_target(t, None, DEV, full(1, apps=("a",))).require()[0].apps) == {"a"}


def test_ostree_only_device_and_apps_off_need_no_app_content() -> None:
    dev = DeviceFacts(HW, ("main",), apps_enabled=False)
    sel = select_target({"t": entry(1)}, None, dev, full(1, apps=()))
    assert dict(sel.require()[0].apps) == {}
    off = {"t": entry(1, fetched={"uri": None})}
    sel = select_target(off, None, DEV, full(1, apps=()))
    assert dict(sel.require()[0].apps) == {} and "turned off" in sel.require()[0].apps_note


def test_parse_target_fields() -> None:
    t = parse_target("t", entry(7, fetched={"uri": "u", "shortlist": "a b"}))
    assert t.version == 7 and t.commit == commit(7) and t.hardware_ids == (HW,)
    assert t.fetched_apps is not None and t.fetched_apps.shortlist == ("a", "b")
    assert t.custom["targetFormat"] == "OSTREE"
    with pytest.raises(InvalidTargetError):
        parse_target("t", {"hashes": {"sha256": commit(1)}, "custom": {"version": True}})
