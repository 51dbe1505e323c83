"""A stand-in for the updater core in plumbing tests: exit codes and progress from a plan file.

Usage: scripted_updater.py PLAN SUBCOMMAND [ARGS...]. PLAN (JSON) maps a subcommand to a list of
exit codes consumed one per call (the last one repeats), plus optional "sleep" seconds per call,
"current" (the target `current` prints) and "fail_reason". Every call is appended to PLAN.calls
(one JSON line: argv and time) so tests can count installs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    plan_path = Path(sys.argv[1])
    args = sys.argv[2:]
    cmd = args[0] if args else ""
    calls = plan_path.with_suffix(".calls")
    with open(calls, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"argv": args, "time": time.time(), "pid": os.getpid()}) + "\n")
    plan = json.loads(plan_path.read_text())
    if cmd == "current":
        print(f"Target: {plan.get('current', 'none')}")
        return 0
    codes = plan.get(cmd, [0])
    n = sum(1 for line in calls.read_text().splitlines() if json.loads(line)["argv"][:1] == [cmd])
    code = codes[min(n - 1, len(codes) - 1)]
    steps = 5
    for i in range(steps + 1):
        rec = {
            "event": "progress",
            "phase": cmd,
            "percent": 100 * i / steps,
            "message": f"step {i}",
        }
        print(json.dumps(rec), file=sys.stderr, flush=True)
        time.sleep(float(plan.get("sleep", 0)) / steps)
    if code not in (0, 90, 100, 101):
        print(
            json.dumps({"event": "failed", "level": "error", "error": "scripted"}), file=sys.stderr
        )
        print(f"usbupdater: {plan.get('fail_reason', 'scripted failure')}", file=sys.stderr)
    after = plan.get("current_after", {}).get(cmd)
    if after and code in (0, 100, 101):
        plan["current"] = after
        plan_path.write_text(json.dumps(plan))
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
