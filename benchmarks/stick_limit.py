"""`usbupdater install` from a slow stick, against the floor of reading what it needs once.

The bundle sits on a filesystem image on a loop device (direct I/O to its backing file) whose
reads are throttled to `--mbps` MB/s with the block-I/O cgroup (v1 `blkio.throttle.
read_bps_device` or v2 `io.max`, whichever this machine has); the page cache is dropped before
every run. The target: a rootfs commit of `--files` files sized like a root filesystem (most
under 4 KiB, a few large) plus `--layers-mib` MiB of app layers. Ours: the real CLI on a fresh
simulated device (pull, then apps), and the other order for comparison (pull || apps). The
floor: `tar -c` of exactly the files install needs (the commit's objects, the bundle's apps/ and
tuf/) from the same throttled stick into a pipe. Reported per side: wall time, bytes read from
the loop device (`/sys/block/<loop>/stat`), peak RSS of each program (sampled). Goals: install
bytes <= 1.05 x floor, wall <= 1.10 x floor, RSS < 80 MB. The FAT row: a smaller rootfs (fusefat
writes ~7 ms a file) on a FAT image served by fusefat (this kernel has no vfat), the daemon's
reads throttled the same way.

Run: .venv/bin/python benchmarks/stick_limit.py [--files 20000] [--layers-mib 300] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from usbupdater.rootfs_space import object_path, walk_commit
from usbupdater.sim.apps import AppSpec, ServiceSpec
from usbupdater.sim.device import remove_tree
from usbupdater.sim.factory import Factory, TargetSpec
from usbupdater.sim.setup import create_device
from usbupdater.sim.sticks import Sticks, sh

GOAL_BYTES, GOAL_WALL, GOAL_RSS_MB = 1.05, 1.10, 80
# The other order, for comparison: the rootfs pull in a thread while the apps are read (what
# install_change did before this benchmark), joined before the commit is first used.
OVERLAPPED = """
import runpy, sys, threading
from usbupdater import rootfs
real_pull, state = rootfs.OstreeSysroot.pull, {}
def pull(self, *args, **kwargs):
    def run():
        try:
            real_pull(self, *args, **kwargs)
        except BaseException as exc:
            state["err"] = exc
    state["t"] = threading.Thread(target=run)
    state["t"].start()
def joined(real):
    def call(self, *args, **kwargs):
        if "t" in state:
            state.pop("t").join()
        if "err" in state:
            raise state.pop("err")
        return real(self, *args, **kwargs)
    return call
rootfs.OstreeSysroot.pull = pull
rootfs.OstreeSysroot.read_commit_file = joined(rootfs.OstreeSysroot.read_commit_file)
rootfs.OstreeSysroot.deploy = joined(rootfs.OstreeSysroot.deploy)
sys.argv = ["usbupdater", *sys.argv[1:]]
runpy.run_module("usbupdater.sim.core", run_name="__main__")
"""


def rootfs_files(n: int, seed: int = 18) -> dict[str, bytes]:
    """`n` files sized like an LmP rootfs: 75 % under 4 KiB, 22 % up to 32 KiB, 3 % up to
    256 KiB, three of 8 MiB; half of each file random, half text (compresses ~2x, as a rootfs)."""
    rng = random.Random(seed)
    text = b"".join(f"line {i} of some configuration or script\n".encode() for i in range(8000))
    out: dict[str, bytes] = {}
    for i in range(n):
        r = rng.random()
        size = (
            rng.randint(64, 4095)
            if r < 0.75
            else rng.randint(4096, 32 << 10)
            if r < 0.97
            else rng.randint(32 << 10, 256 << 10)
        )
        if i < 3:
            size = 8 << 20
        half = size // 2
        body = rng.randbytes(half) + (text * (1 + size // len(text)))[: size - half]
        out[f"usr/lib/d{i % 97}/s{i % 13}/f{i}.so"] = body
    return out


# --- the throttle --------------------------------------------------------------------------


class Throttle:
    """A cgroup whose members read the loop device at most `bps` bytes a second."""

    def __init__(self, bps: int) -> None:
        self.bps = bps
        v1 = Path("/sys/fs/cgroup/blkio")
        name = f"usbupdater-bench-{os.getpid()}"
        if (v1 / "blkio.throttle.read_bps_device").exists():
            self.kind = "cgroup v1 blkio.throttle.read_bps_device"
            self.path = v1 / name
        else:
            v2 = Path("/sys/fs/cgroup")
            if "io" not in (v2 / "cgroup.controllers").read_text().split():
                raise SystemExit("no block-I/O cgroup controller (v1 blkio or v2 io)")
            subtree = v2 / "cgroup.subtree_control"
            if "io" not in subtree.read_text().split():
                subtree.write_text("+io")
            self.kind = "cgroup v2 io.max"
            self.path = v2 / name
        self.path.mkdir()

    def limit(self, dev_no: str) -> None:
        """Reads of the device `major:minor` by members: at most `bps` bytes a second."""
        if self.kind.startswith("cgroup v1"):
            (self.path / "blkio.throttle.read_bps_device").write_text(f"{dev_no} {self.bps}\n")
        else:
            (self.path / "io.max").write_text(f"{dev_no} rbps={self.bps}\n")

    def enter(self) -> None:
        """preexec_fn: the child (and what it forks) joins the cgroup."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


class Stick:
    """An image on a loop device (direct I/O), mounted; reads counted from its block stats."""

    def __init__(self, img: Path, mnt: Path, fat: bool) -> None:
        self.loop = sh("losetup", "--direct-io=on", "-f", "--show", str(img)).stdout.strip()
        self.name = Path(self.loop).name
        st = os.stat(self.loop)
        self.dev_no = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        self.mnt = mnt
        self.fat = fat
        mnt.mkdir(exist_ok=True)

    def mount(self, throttle: Throttle) -> None:
        if self.fat:  # the FUSE daemon reads the device: it is the one throttled
            subprocess.run(
                ["fusefat", "-o", "ro", self.loop, str(self.mnt)],
                check=True,
                stdout=subprocess.DEVNULL,  # its chatter; the daemon keeps no pipe of ours
                preexec_fn=throttle.enter,
            )
        else:
            sh("mount", "-o", "ro", self.loop, str(self.mnt))

    def umount(self) -> None:
        sh("umount", str(self.mnt), check=False)

    def sectors_read(self) -> int:
        return int(Path(f"/sys/block/{self.name}/stat").read_text().split()[2])

    def drop_caches(self) -> None:
        sh("sync")
        sh("blockdev", "--flushbufs", self.loop, check=False)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")

    def detach(self) -> None:
        """Unmount and detach; fusefat may hold the device a moment after its unmount."""
        self.umount()
        for _ in range(50):
            sh("losetup", "-d", self.loop, check=False)
            if not Path(f"/sys/block/{self.name}/loop/backing_file").exists():
                return
            time.sleep(0.2)


def fat_image(work: Path, content: Path, size_mb: int) -> Path:
    """A FAT image filled through fusefat (big writes; small files still cost ~7 ms each)."""
    img, mnt = work / "fat.img", work / "fill-fat"
    sh("truncate", "-s", f"{size_mb}M", str(img))
    sh("mkfs.vfat", "-n", "BENCHFAT", str(img))
    mnt.mkdir()
    sh("fusefat", "-o", "rw+,big_writes", str(img), str(mnt))
    try:
        sh("cp", "-r", f"{content}/.", str(mnt), timeout=1800)
    finally:
        sh("umount", str(mnt))
    return img


def measured_speed(stick: Stick, throttle: Throttle) -> float:
    """MB/s of a 60 MB direct read of the loop device inside the cgroup (the throttle works)."""
    stick.drop_caches()
    t0 = time.perf_counter()
    subprocess.run(
        ["dd", f"if={stick.loop}", "of=/dev/null", "bs=1M", "count=60", "iflag=direct"],
        check=True,
        capture_output=True,
        preexec_fn=throttle.enter,
    )
    return 60 * (1 << 20) / (time.perf_counter() - t0) / 1e6


# --- one run of each side ------------------------------------------------------------------


def timed(
    argv: list[str], throttle: Throttle, shell: bool = False
) -> tuple[float, bytes, dict[str, int]]:
    """Wall seconds, stderr and the peak RSS (KiB, `VmHWM`) of each program of a command run
    inside the throttle, sampled every 50 ms (wait4's `ru_maxrss` would only give the largest)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=throttle.enter,
        shell=shell,
    )
    peaks: dict[str, int] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            for pid in (throttle.path / "cgroup.procs").read_text().split():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                name = fields.get("Name", "?").strip()
                hwm = int(fields.get("VmHWM", "0 kB").split()[0])
                peaks[name] = max(peaks.get(name, 0), hwm)

    sampler = threading.Thread(target=sample)
    sampler.start()
    assert p.stderr is not None
    err = p.stderr.read()
    _, status, _ = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 100):
        raise SystemExit(f"{argv[:4]} exited {code}: {err.decode(errors='replace')[-2000:]}")
    return wall, err, peaks


def needed_files(stick_root: Path, commit: str) -> list[str]:
    """What install reads: the commit's objects, apps/ and tuf/ (paths relative to the stick)."""
    repo = stick_root / "ostree_repo"
    out = [f"ostree_repo/{object_path(c, k)}" for c, k, _ in walk_commit(repo, commit)]
    for top in ("apps", "tuf"):
        out += [str(p.relative_to(stick_root)) for p in (stick_root / top).rglob("*")]
    return [p for p in out if (stick_root / p).is_file()]


@contextmanager
def mounted(stick: Stick, throttle: Throttle) -> Iterator[None]:
    stick.mount(throttle)
    try:
        yield
    finally:
        stick.umount()


def run_side(
    side: str,
    stick: Stick,
    throttle: Throttle,
    work: Path,
    factory: Factory,
    v1: str,
    listing: Path,
    tag: str,
) -> tuple[float, int, int]:
    """(wall, bytes read from the loop device, peak RSS KiB) of one side, caches dropped."""
    dev = None
    if side.startswith("install"):
        dev, cfg = create_device(work / f"dev-{tag}-{side}", factory, v1)
        how = ["-c", OVERLAPPED] if side == "install-ovl" else ["-m", "usbupdater.sim.core"]
        argv = [sys.executable, *how, "install", "-s", str(stick.mnt), "-c", str(cfg)]
        shell = False
    else:
        argv = [f"tar -cf - -C {stick.mnt} -T {listing} | cat >/dev/null"]
        shell = True
    with mounted(stick, throttle):
        stick.drop_caches()
        before = stick.sectors_read()
        t0 = time.time()
        wall, err, peaks = timed(argv, throttle, shell=shell)
        read = (stick.sectors_read() - before) * 512
    # the usbupdater process itself (python); its children (ostree) are shown beside it
    rss = max((v for k, v in peaks.items() if k.startswith("python")), default=0)
    if dev is not None:
        shown = ", ".join(f"{k} {v >> 10} MiB" for k, v in sorted(peaks.items()))
        print(f"    phases: {phases(err, t0)}; peak RSS: {shown}")
        dev.destroy()
    return wall, read, rss


def phases(log: bytes, t0: float) -> str:
    """When each progress phase of the install began (seconds from its start)."""
    out = []
    last = ""
    for line in log.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        phase = rec.get("phase") if rec.get("event") == "progress" else None
        if phase and phase != last:
            last = phase
            at = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()
            out.append(f"{phase} {at - t0:.1f}")
    return ", ".join(out)


def bench(
    label: str,
    stick: Stick,
    throttle: Throttle,
    work: Path,
    factory: Factory,
    v1: str,
    commit: str,
    rounds: int,
) -> dict[str, object]:
    with mounted(stick, throttle):
        listing = work / f"needed-{label}.txt"
        listing.write_text("\n".join(needed_files(stick.mnt, commit)) + "\n")
    best: dict[str, tuple[float, int, int]] = {}
    for r in range(rounds):
        sides = ["install", "floor", "install-ovl"]
        if r % 2:
            sides.reverse()
        for side in sides:
            wall, read, rss = run_side(
                side, stick, throttle, work, factory, v1, listing, f"{label}-{r}"
            )
            print(f"  {label} round {r + 1} {side:8s} {wall:7.2f} s {read / 1e6:8.1f} MB read")
            old = best.get(side)
            best[side] = (
                min(wall, old[0]) if old else wall,
                min(read, old[1]) if old else read,
                max(rss, old[2]) if old else rss,
            )
    return {"label": label, **{k: v for k, v in best.items()}}


ORDERS = {"install": "pull, then apps", "install-ovl": "pull || apps"}


def row(res: dict[str, object], side: str) -> str:
    ins = res[side]
    flo = res["floor"]
    assert isinstance(ins, tuple) and isinstance(flo, tuple)
    rb, rw, rss = ins[1] / flo[1], ins[0] / flo[0], ins[2] / 1024
    ok = rb <= GOAL_BYTES and rw <= GOAL_WALL and rss < GOAL_RSS_MB
    return (
        f"| {res['label']}, {ORDERS[side]} | {ins[0]:.1f} s | {flo[0]:.1f} s | {rw:.2f} | "
        f"{ins[1] / 1e6:.1f} MB | {flo[1] / 1e6:.1f} MB | {rb:.2f} | {rss:.1f} MB | "
        f"{'yes' if ok else 'NO'} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--layers-mib", type=int, default=300)
    ap.add_argument("--mbps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-fat", action="store_true")
    ap.add_argument("--fat-files", type=int, default=2000, help="fusefat: ~7 ms a file written")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-stick-", dir="/var/tmp"))
    sticks = Sticks(work)
    opened: list[Stick] = []
    throttle = Throttle(args.mbps * 1_000_000)
    try:
        t0 = time.perf_counter()
        factory = Factory(work / "factory")
        v1 = factory.publish(TargetSpec(1)).commit
        layers = tuple([50 << 20] * (args.layers_mib // 50))
        app = AppSpec(
            "big",
            services={"main": ServiceSpec(data_layers=layers)},
            layer_compression="gzip",
            gzip_level=1,
        )
        kinds = [("ext4", False, args.files)]
        if not args.no_fat:
            kinds.append(("FAT", True, args.fat_files))
        results = []
        for n, (label, fat, nfiles) in enumerate(kinds):
            files = rootfs_files(nfiles, seed=n)
            raw = sum(len(b) for b in files.values())
            target = factory.publish(TargetSpec(2 + n, apps=[app], rootfs_files=files))
            del files
            bundle = factory.write_bundle(work / f"bundle-{label}", [target.name])
            size = int(sh("du", "-sm", str(bundle)).stdout.split()[0])
            img = fat_image(work, bundle, size * 2 + 64) if fat else sticks.image(bundle, size * 2)
            stick = Stick(img, work / f"mnt-{label}", fat)
            throttle.limit(stick.dev_no)
            opened.append(stick)
            speed = measured_speed(stick, throttle)
            print(
                f"{label}: {nfiles} rootfs files ({raw >> 20} MiB raw), {args.layers_mib} MiB of "
                f"layers, {size} MiB bundle, made in {time.perf_counter() - t0:.0f} s; "
                f"{stick.loop} throttled by {throttle.kind} to {args.mbps} MB/s, "
                f"measured {speed:.1f} MB/s"
            )
            t0 = time.perf_counter()
            results.append(
                bench(label, stick, throttle, work, factory, v1, target.commit, args.rounds)
            )
            t0 = time.perf_counter()
        print(
            f"\nstick read at {args.mbps} MB/s; best of {args.rounds} alternating runs per side;"
            f" goals: bytes <= {GOAL_BYTES} x floor, wall <= {GOAL_WALL} x floor, "
            f"RSS < {GOAL_RSS_MB} MB"
        )
        print(
            "| fs | install | floor | wall x | install read | floor read | bytes x | RSS | goals |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for res in results:
            for side in ORDERS:
                print(row(res, side))
        return 0
    finally:
        for stick in opened:
            stick.detach()
        throttle.remove()
        sticks.cleanup()
        remove_tree(work)


if __name__ == "__main__":
    sys.exit(main())
