"""Benchmark: our streamed image load vs `docker load` of an equivalent archive, and our memory.

Builds an app whose image holds about 500 MB of random layer data (gzip level 1, as a registry
would serve it), copies it into a device app store, starts a private dockerd (sim.dockerd), then
in the same run: writes the equivalent docker-archive to a file (warming the page cache for
both), times `docker load -i` of it, removes the image, and times `engine.load_images` from the
store in a child process (whose ru_maxrss is our peak RSS). Everything is removed at the end.

    .venv/bin/python benchmarks/load_images.py [--mb 500] [--level 1] [--keep DIR]

Goals: ratio (ours / docker load) <= 1.2, peak RSS < 100 MB. Not part of the pytest suite.
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

from usbupdater.apps import engine
from usbupdater.apps.copying import CopyingSource
from usbupdater.apps.store import AppStore
from usbupdater.apps.verify import verify_apps
from usbupdater.bundle import Bundle
from usbupdater.sim.apps import AppSpec, ServiceSpec, machine_arch, write_apps
from usbupdater.sim.dockerd import PrivateDockerd

CHILD = """
import json, sys
from usbupdater.apps import engine
from usbupdater.apps.model import VerifiedApp
from usbupdater.apps.store import AppStore
store, host, record = sys.argv[1:4]
app = VerifiedApp.from_json(json.load(open(record)))
client = engine.connect(host)
assert engine.load_images(client, AppStore(store), app.images.values()) == len(app.images)
"""


def run_child(argv: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"child failed: {argv}")
    return wall, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=500)
    ap.add_argument("--level", type=int, default=1, help="gzip level of the layers")
    ap.add_argument("--keep", type=Path, help="work in DIR and keep it")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="ud-bench-"))
    try:
        t = time.perf_counter()
        stick = work / "stick" / "apps"
        spec = AppSpec(
            "big",
            services={"main": ServiceSpec(data_layers=(args.mb << 20,))},
            gzip_level=args.level,
        )
        uri = write_apps(stick, [spec])["big"].uri
        store = AppStore(work / "store")
        with Bundle.open(stick.parent) as bundle:
            source = CopyingSource(bundle, store)
            app = verify_apps(source, {"big": uri}, machine_arch())["big"]
            store.add_apps(source, [app])
        (image,) = app.images.values()
        size = sum(b.size for b in image.layers) + image.config.size
        print(
            f"built and stored the app: {size / 1e6:.0f} MB of image blobs "
            f"({time.perf_counter() - t:.1f}s)"
        )
        record = store.app_dir(app) / "usbupdater-app.json"
        image_id = image.image_id
        with PrivateDockerd(base_dir=work / "d") as d:
            client = engine.connect(d.host)
            archive = work / "image.tar"
            with open(archive, "wb") as fh:
                for chunk in engine.archive_chunks(store, app.images.values()):
                    fh.write(chunk)
            t = time.perf_counter()
            subprocess.run(
                ["docker", "-H", d.host, "load", "-q", "-i", str(archive)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            docker_s = time.perf_counter() - t
            client.api.remove_image(image_id, force=True)
            ours_s, rss = run_child(
                [sys.executable, "-c", CHILD, str(store.root), d.host, str(record)]
            )
            assert engine.has_image(client, image_id)
            client.close()
        print(f"docker load -i archive : {docker_s:7.2f} s")
        print(f"engine.load_images     : {ours_s:7.2f} s (child process, incl. interpreter start)")
        print(f"ratio ours/docker      : {ours_s / docker_s:7.2f}   (goal <= 1.2)")
        print(f"our peak RSS           : {rss / 1e6:7.1f} MB (goal < 100 MB)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
