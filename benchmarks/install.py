"""A whole `usbupdater install` against the raw floor of the same work, in the same run.

The bundle holds a new target with a 200 MiB rootfs change and 300 MiB of new image layers. Ours:
the real CLI installs it on a fresh simulated device (trust, selection, verification of every
app blob while it is copied into the store, ostree pull-local --untrusted + deploy). The floor,
on another fresh device: `ostree pull-local` + `ostree admin deploy` by hand, plus copying the
same blobs and `sha256sum` over the copies. Rounds alternate the order; the best of each side is
compared. Goal: ratio <= 1.15; peak RSS of the install process is reported.

Run: .venv/bin/python benchmarks/install.py [--rootfs-mib 200] [--layers-mib 300] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from usbupdater.sim.apps import AppSpec, ServiceSpec
from usbupdater.sim.device import SimDevice, remove_tree
from usbupdater.sim.factory import Factory, TargetSpec
from usbupdater.sim.setup import CORE_ARGV, create_device


def fresh_device(work: Path, name: str, factory: Factory, flashed: str) -> tuple[SimDevice, Path]:
    return create_device(work / name, factory, flashed)


def ours(cfg: Path, bundle: Path) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of one `usbupdater install`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*CORE_ARGV, "install", "-s", str(bundle), "-c", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 100:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"install exited {code}: {err[-2000:]}")
    return elapsed, usage.ru_maxrss


def floor(dev: SimDevice, bundle: Path, commit: str, store: Path) -> float:
    t0 = time.perf_counter()
    repo = dev.sysroot / "ostree" / "repo"
    subprocess.run(
        [
            "ostree",
            "pull-local",
            "--untrusted",
            f"--repo={repo}",
            str(bundle / "ostree_repo"),
            commit,
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["ostree", "admin", "deploy", f"--sysroot={dev.sysroot}", "--os=lmp", commit],
        check=True,
        capture_output=True,
    )
    store.mkdir(parents=True)
    blobs = sorted((bundle / "apps" / "blobs" / "sha256").iterdir())
    for b in blobs:
        shutil.copyfile(b, store / b.name)
    subprocess.run(
        ["sha256sum", *(str(store / b.name) for b in blobs)], check=True, capture_output=True
    )
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rootfs-mib", type=int, default=200)
    ap.add_argument("--layers-mib", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-install-"))
    try:
        t0 = time.perf_counter()
        factory = Factory(work / "factory")
        v1 = factory.publish(TargetSpec(1))
        layers = tuple([50 << 20] * (args.layers_mib // 50))
        app = AppSpec(
            "big",
            services={"main": ServiceSpec(data_layers=layers)},
            layer_compression="gzip",
            gzip_level=1,
        )
        v2 = factory.publish(TargetSpec(2, apps=[app], rootfs_bytes=args.rootfs_mib << 20))
        bundle = factory.write_bundle(work / "bundle", [v2.name])
        size = sum(p.stat().st_size for p in (bundle / "apps" / "blobs").rglob("*") if p.is_file())
        print(
            f"bundle made in {time.perf_counter() - t0:.1f} s: {size >> 20} MiB of app blobs, "
            f"{args.rootfs_mib} MiB of random rootfs data"
        )
        best = {"usbupdater install": float("inf"), "raw floor": float("inf")}
        peak = 0
        for r in range(args.rounds):
            sides = ["usbupdater install", "raw floor"]
            if r % 2:
                sides.reverse()
            for side in sides:
                dev, cfg = fresh_device(work, f"{side.split()[0]}-{r}", factory, v1.commit)
                subprocess.run(["sync"], check=True)
                if side == "raw floor":
                    t = floor(dev, bundle, v2.commit, work / f"store-{r}")
                else:
                    t, rss = ours(cfg, bundle)
                    peak = max(peak, rss)
                best[side] = min(best[side], t)
                print(f"round {r + 1}: {side:20s} {t:6.2f} s")
                dev.destroy()
        ratio = best["usbupdater install"] / best["raw floor"]
        print(
            f"best: usbupdater {best['usbupdater install']:.2f} s, "
            f"floor {best['raw floor']:.2f} s, ratio {ratio:.2f} (goal <= 1.15)"
        )
        print(f"peak RSS of install: {peak / 1024:.1f} MiB")
        print(
            f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)"
        )
        return 0
    finally:
        remove_tree(work)


if __name__ == "__main__":
    sys.exit(main())
