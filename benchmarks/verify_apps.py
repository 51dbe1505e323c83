"""Benchmark: app content verification vs `sha256sum` over the same blobs, and its peak memory.

Builds a bundle whose images hold about 500 MB of random (incompressible) layer data, then, in
the same run and with the page cache warm for both, times `sha256sum` over every blob and
`verify_apps` in a child process (whose ru_maxrss is its peak RSS). Layers are plain tar by
default (`application/vnd.docker.image.rootfs.diff.tar`: digest == diff_id, one hash per
byte); `--gzip` stores them gzip level 1 instead, which adds inflating and a second hash.

    .venv/bin/python benchmarks/verify_apps.py [--mb 500] [--gzip] [--runs 3] [--keep DIR]

Goal: ratio <= 1.15 and peak RSS < 80 MB. Not part of the pytest suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from usbupdater.sim.apps import AppSpec, ServiceSpec, machine_arch, write_apps

CHILD = """
import sys
from usbupdater.bundle import Bundle
from usbupdater.apps.verify import verify_apps
root, arch = sys.argv[1], sys.argv[2]
apps = dict(a.split("=", 1) for a in sys.argv[3:])
with Bundle.open(root) as b:
    verify_apps(b, apps, arch)
"""


def run_child(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{argv[0]} failed with {proc.returncode}")
    return elapsed, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=500, help="MB of random layer data")
    ap.add_argument("--gzip", action="store_true", help="gzip level-1 layers")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="build here and keep it")
    args = ap.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="usbupdater-bench-"))
    try:
        per_layer = 50 << 20
        n = max(1, (args.mb << 20) // per_layer)
        services = {
            f"s{i}": ServiceSpec(data_layers=(per_layer,) * (n // 2 + (i < n % 2)))
            for i in range(2)
        }
        spec = AppSpec(
            "bench",
            services,
            layer_compression="gzip" if args.gzip else "none",
            gzip_level=1,
        )
        t = time.perf_counter()
        written = write_apps(root / "apps", [spec])
        print(f"built {n} layers of {per_layer >> 20} MiB in {time.perf_counter() - t:.1f} s")
        blobs = sorted(str(p) for p in (root / "apps" / "blobs" / "sha256").iterdir())
        total = sum(os.path.getsize(b) for b in blobs)
        apps = [f"{w.name}={w.uri}" for w in written.values()]
        verify = [sys.executable, "-c", CHILD, str(root), machine_arch(), *apps]
        sha = ["sha256sum", *blobs]
        subprocess.run(sha, check=True, stdout=subprocess.DEVNULL)  # warm the page cache
        results = []
        for _ in range(args.runs):
            sha_s, _ = run_child(sha)
            ver_s, rss = run_child(verify)
            results.append((ver_s / sha_s, sha_s, ver_s, rss))
        results.sort()
        ratio, sha_s, ver_s, rss = results[len(results) // 2]
        peak = max(r[3] for r in results)
        media = "gzip level 1" if args.gzip else "plain tar"
        print(f"blobs: {len(blobs)} files, {total / 1e6:.0f} MB ({media} layers)")
        print(
            f"sha256sum: {sha_s:.2f} s   verify_apps: {ver_s:.2f} s   ratio (median): {ratio:.2f}"
        )
        print(f"verify_apps peak RSS: {peak / 2**20:.1f} MiB (max of {args.runs} runs)")
    finally:
        if not args.keep:
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
