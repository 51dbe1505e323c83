"""Our pull + deploy of a 200 MB commit against `ostree pull-local` + `ostree admin deploy` by hand.

Run standalone: `.venv/bin/python benchmarks/rootfs_pull_deploy.py [--mib N] [--rounds R]`.
Each round installs the same commit into two fresh sysroots (ours, then by hand, order
alternating per round); the best time of each side is compared. Goal: ratio <= 1.05. The
payload is random so its size is real after compression.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from usbupdater.rootfs import OstreeSysroot
from usbupdater.sim.device import SimDevice, make_commit, remove_tree


def by_hand(sysroot: Path, src: Path, commit: str) -> None:
    repo = sysroot / "ostree" / "repo"
    subprocess.run(
        ["ostree", "pull-local", "--untrusted", f"--repo={repo}", str(src), commit],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["ostree", "admin", "deploy", f"--sysroot={sysroot}", "--os=lmp", commit],
        check=True,
        capture_output=True,
    )


def ours(sysroot: Path, src: Path, commit: str) -> None:
    OstreeSysroot(sysroot, "lmp").install(src, commit)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-rootfs-", dir=args.dir))
    try:
        src = work / "ostree_repo"
        t0 = time.perf_counter()
        v1 = make_commit(src, "lmp", "1")
        v2 = make_commit(src, "lmp", "2", extra_bytes=args.mib << 20)
        print(
            f"source commit of {args.mib} MiB random data made in {time.perf_counter() - t0:.1f} s"
        )
        times: dict[str, list[float]] = {"usbupdater": [], "ostree by hand": []}
        for r in range(args.rounds):
            order = [("usbupdater", ours), ("ostree by hand", by_hand)]
            if r % 2:
                order.reverse()
            for name, fn in order:
                dev = SimDevice.create(work / f"dev-{r}-{name[:4]}", src, v1)
                subprocess.run(["sync"], check=True)
                start = time.perf_counter()
                fn(dev.sysroot, src, v2)
                times[name].append(time.perf_counter() - start)
                remove_tree(dev.root)
        for name, ts in times.items():
            print(
                f"{name:15s} " + "  ".join(f"{t:6.2f} s" for t in ts) + f"   best {min(ts):.2f} s"
            )
        ratio = min(times["usbupdater"]) / min(times["ostree by hand"])
        print(f"ratio usbupdater / by hand (best of {args.rounds}): {ratio:.3f} (goal <= 1.05)")
        return 0
    finally:
        remove_tree(work)


if __name__ == "__main__":
    sys.exit(main())
