"""What `check` prints: the check-in as a JSON object (`--json`) or as text for a person.

The fields are documented in the README (`check --json`); the CLI is their only user.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from usbupdater import timefmt
from usbupdater.checkin import CheckIn
from usbupdater.errors import UpdaterError
from usbupdater.selection import Action, Stage


def describe(result: CheckIn) -> dict[str, Any]:
    """A JSON-able account of every target and why it would or would not be installed."""
    sel = result.selection
    chosen = sel.selected.target.name if sel.selected else None
    targets: list[dict[str, Any]] = []
    for c in sel.candidates:
        t = c.target
        status = "selected" if t.name == chosen and sel.error is None else "installable"
        if t.name == chosen and sel.action is Action.ALREADY_INSTALLED:
            status = "installed"
        targets.append(
            {
                "name": t.name,
                "version": t.version,
                "commit": t.commit,
                "status": status,
                "reason": c.apps_note,
                "apps": {a: {"uri": u, "on": a in c.apps} for a, u in sorted(t.apps.items())},
            }
        )
    for r in sel.rejections:
        rt = r.target
        targets.append(
            {
                "name": r.name,
                "version": rt.version if rt else None,
                "commit": rt.commit if rt else None,
                "status": "not-for-device" if r.stage <= Stage.NOT_FOR_DEVICE else "rejected",
                "reason": r.reason,
                "apps": {a: {"uri": u, "on": False} for a, u in sorted(rt.apps.items())}
                if rt
                else {},
            }
        )
    targets.sort(key=lambda d: (d["version"] is None, -(d["version"] or 0), d["name"]))
    md = result.trusted
    bt = md.bundle_targets
    return {
        "code": int(result.code),
        "error": result.error.reason if result.error else None,
        "selected": chosen,
        "action": sel.action.value if sel.action else None,
        "device": {
            "hardware_id": result.device.hardware_id,
            "tags": list(result.device.tags),
            "current": result.device.current.name if result.device.current else None,
        },
        "metadata": {
            "root_version": md.root_version,
            "targets_version": md.targets_version,
            "expires": timefmt.text(md.expires),
            "from_device_cache": md.from_device_cache,
            "bundle": {"type": bt.type, "tag": bt.tag, "targets": list(bt.targets)} if bt else None,
        },
        "targets": targets,
    }


def format_text(doc: Mapping[str, Any]) -> str:
    """The account for a person at a terminal."""
    lines = []
    md = doc["metadata"]
    bundle = md["bundle"]
    origin = (
        f"bundle for tag {bundle['tag']} ({bundle['type']})"
        if bundle
        else "legacy bundle (no bundle-targets.json)"
    )
    lines.append(
        f"Bundle metadata: verified, {origin}; targets v{md['targets_version']}, "
        f"root v{md['root_version']}, expires {md['expires']}"
    )
    if md["from_device_cache"]:
        lines.append("  (the bundle's metadata is older than the device's: using the device's)")
    dev = doc["device"]
    lines.append(
        f"Device: {dev['hardware_id']}, tags {', '.join(dev['tags']) or '(none)'}, "
        f"running {dev['current'] or 'an unrecorded target'}"
    )
    lines.append("Found Targets:")
    shown = [t for t in doc["targets"] if t["status"] != "not-for-device"]
    for t in shown:
        mark = {"selected": "*", "installed": "="}.get(t["status"], " ")
        lines.append(f" {mark} {t['name']} (version {t['version']}): {t['status']}")
        if t["commit"]:
            lines.append(f"\tostree: {t['commit']}")
        for app, a in t["apps"].items():
            lines.append(f"\t\t({'on' if a['on'] else 'off'}) {app} -> {a['uri']}")
        lines.append(f"\t{t['reason']}")
    hidden = len(doc["targets"]) - len(shown)
    if hidden:
        lines.append(f"   ({hidden} other target(s) are not for this device; --json lists them)")
    if doc["error"]:
        lines.append(f"Result: {doc['error']}")
    elif doc["action"] == Action.ALREADY_INSTALLED.value:
        lines.append(f"Result: the device already runs {doc['selected']}")
    else:
        lines.append(f"Result: {doc['selected']} can be installed")
    return "\n".join(lines)


def failure(exc: UpdaterError) -> dict[str, Any]:
    """The JSON object of a check that stopped before there was a check-in (trust, I/O)."""
    return {
        "code": int(exc.code),
        "error": exc.reason,
        "selected": None,
        "action": None,
        "device": None,
        "metadata": None,
        "targets": [],
    }
