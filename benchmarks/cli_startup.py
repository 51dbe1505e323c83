"""How fast `usbupdater --help` starts, and proof it imports no heavy dependency.

Run: .venv/bin/python benchmarks/cli_startup.py
Goal: no import of docker, tuf, securesystemslib or pyudev; start-up close to bare Python.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

HEAVY = ("docker", "tuf", "securesystemslib", "pyudev", "cryptography")
RUNS = 15


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=False, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    help_cmd = [sys.executable, "-m", "usbupdater", "--help"]
    bare_cmd = [sys.executable, "-c", "pass"]
    help_t = statistics.median(timed(help_cmd) for _ in range(RUNS))
    bare_t = statistics.median(timed(bare_cmd) for _ in range(RUNS))
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "usbupdater", "--help"],
        capture_output=True,
        text=True,
        check=False,
    ).stderr
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in trace.splitlines()}
    heavy = sorted(m for m in HEAVY if m in imported)
    print(f"usbupdater --help: {help_t * 1000:.0f} ms median of {RUNS}")
    print(f"python -c pass:    {bare_t * 1000:.0f} ms median of {RUNS}")
    print(f"heavy modules imported: {heavy or 'none'}")
    return 1 if heavy else 0


if __name__ == "__main__":
    sys.exit(main())
