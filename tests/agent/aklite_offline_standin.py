"""A stand-in for Foundries' `aklite-offline` of one LmP release: its usage texts, its output and
its exit-code habits, with the codes of `install`/`run` taken from a plan file.

Usage: aklite_offline_standin.py PLAN [aklite-offline arguments...]. PLAN (JSON): "era" (mp-91,
mp-92, mp-93, mp-94 or mp-95: which release it behaves like), "install"/"run"/"check" (exit codes
consumed one per call, the last one repeats), "current" (the target `current` prints) and
"current_after" ({command: target}: what `current` prints after that command succeeded), "events"
(a file each call appends "updater COMMAND CODE" to). What it mimics, from aktualizr-lite's
`apps/aklite-offline/main.cpp`, `cmds.h` and `cmds.cpp` at those tags: no `--version` (an
unknown command: the usage, exit 1), the usage text of its release, `current` printing the target
and returning 1, v1's `check` returning 1. It changes nothing on the device.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COMMANDS = ("check", "install", "run", "current")
DESCRIPTIONS = {
    "check": "Update the device TUF metadata by fetching and validating the offline bundle's "
    "metadata. The list of available targets is printed",
    "install": "Install the selected target. If no target name is specified, the highest "
    "version in the bundle will be used",
    "run": "Finalize the installation of a target, starting the updated apps",
    "current": "Show information about the currently running target",
}
COMMON = (
    "  -h [ --help ]             print usage\n"
    "  --log-level arg (=2)      set log level 0-5 (trace, debug, info, warning, \n"
    "                            error, fatal)\n"
    "  -c [ --config ] arg       Configuration file or directory\n"
)


def lmp(era: str) -> int:
    return int(era.split("-", 1)[1])


def options(era: str, cmd: str) -> str:
    text = COMMON
    if cmd in ("check", "install"):
        text += "  -s [ --src-dir ] arg      Directory that contains an update\n"
    if cmd == "install":
        text += "  -f [ --force ]            Force downgrade\n"
        if lmp(era) >= 94:
            text += "  -t [ --target ] arg (=)   Target name\n"
    return text


def usage(era: str) -> str:
    if lmp(era) >= 95:
        lines = "".join(f"\n  {c:<12} {DESCRIPTIONS[c]}" for c in COMMANDS)
        return f"Usage:\n  aklite-offline <cmd> [flags]\n\nSupported commands: {lines}\n\n"
    return "Usage:\n\t aklite-offline <cmd> [options]\nSupported commands: " + "".join(
        f"{c} " for c in COMMANDS
    )


def cmd_usage(era: str, cmd: str) -> str:
    if lmp(era) >= 95:
        return (
            f"{DESCRIPTIONS[cmd]}\n\nUsage:\n  aklite-offline {cmd} [flags]\n\nFlags: \n"
            f"{options(era, cmd)}\n\n"
        )
    return f"aklite-offline {cmd} [options]\n{options(era, cmd)}"


def main() -> int:
    plan_path = Path(sys.argv[1])
    args = sys.argv[2:]
    plan = json.loads(plan_path.read_text())
    era = str(plan.get("era", "mp-95"))
    if not args:
        print("Missing command\n", file=sys.stderr)
        print(usage(era))
        return 1
    cmd = args[0]
    if cmd not in COMMANDS:
        if lmp(era) < 95:
            print(f"Unsuported command: {cmd}", file=sys.stderr)
        elif cmd != "--help":
            print(f"Unsupported command: {cmd}", file=sys.stderr)
        print(usage(era))
        return 1
    if "--help" in args or "-h" in args:
        print(cmd_usage(era, cmd))
        return 0
    counts = plan.setdefault("counts", {})
    counts[cmd] = counts.get(cmd, 0) + 1
    code = 1
    if cmd == "current":
        print(f"Target: {plan.get('current', 'unknown')}")
        print("Ostree hash: " + "ab" * 32)
        print("Apps:")
        print("\ton : web -> hub.foundries.io/f/web@sha256:" + "cd" * 32)
    elif cmd == "check" and lmp(era) <= 92:
        print("\nFound Targets: ")  # v1: the list, and 1 whatever happened
    else:
        codes = plan.get(cmd, [0])
        code = int(codes[min(counts[cmd] - 1, len(codes) - 1)])
        if code == 1:
            print("Failed to run the command; err: scripted failure", file=sys.stderr)
        after = plan.get("current_after", {}).get(cmd)
        if after and code != 1:
            plan["current"] = after
    plan_path.write_text(json.dumps(plan))
    if plan.get("events"):
        with open(plan["events"], "a", encoding="utf-8") as fh:
            fh.write(f"updater {cmd} {code}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
