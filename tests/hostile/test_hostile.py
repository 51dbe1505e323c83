"""Hostile and malformed sticks through `check`, `install` and the `watch` service.

Every case is a real ext4 stick image on a loop device, made once per session from a copy of the
good bundle broken in one way (tests/hostile/cases.py). Each run must end within a per-case
timeout far below the service's, with the expected exit code and exactly one `usbupdater:` line
free of control characters and of the secret a symlink points to, a peak RSS below 150 MB, no
process left behind, and the device (state dir, deployments, sysroot objects, bootloader
variables, app store, images, containers) byte-identical to before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.agent.conftest import Agent, agent_settings_toml
from tests.hostile.cases import ALL, METADATA_CODES, POSITIVE, Case
from tests.hostile.conftest import Corpus, device, record, renew_device
from tests.integration.rig import Rig
from usbupdater.sim.setup import CORE_ARGV
from usbupdater.sim.sticks import mounts_under, sh

pytestmark = pytest.mark.integration

CASE_TIMEOUT = 15.0  # seconds per CLI run; the service's own updater timeout is an hour
WATCH_TIMEOUT = 20.0  # seconds from plugging a stick in to the end of its job
MAX_RSS_KB = 150 * 1024
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


# --- the device and the processes --------------------------------------------------------------


def device_snapshot(rig: Rig) -> dict[str, Any]:
    """rig.snapshot() plus the sysroot repo's object names (a refused pull leaves none)."""
    snap = rig.snapshot()
    objects = rig.device.sysroot / "ostree" / "repo" / "objects"
    snap["objects"] = hashlib.sha256(
        "\n".join(
            sorted(str(p.relative_to(objects)) for p in objects.rglob("*") if not p.is_dir())
        ).encode()
    ).hexdigest()
    return snap


def _proc_stat(pid: int) -> Optional[tuple[int, int]]:
    """(ppid, pgrp) of a live process, None if it is gone or a zombie (it holds nothing)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[2])


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def leftovers(needles: list[str], group: Optional[int] = None) -> list[str]:
    """Processes whose command line names one of `needles`, or that are in process `group`."""
    me = os.getpid()
    found = []
    for pid in pids():
        if pid == me:
            continue
        st = _proc_stat(pid)
        if st is None:
            continue
        cmd = _cmdline(pid)
        if (group is not None and st[1] == group) or any(n in cmd for n in needles):
            found.append(f"{pid}: {cmd[:120]}")
    return found


def my_children() -> set[int]:
    me = os.getpid()
    return {p for p in pids() if (_proc_stat(p) or (0, 0))[0] == me}


def changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    """What differs between two device snapshots, briefly."""
    out = [k for k in before if k != "files" and before[k] != after.get(k)]
    fb, fa = before["files"], after["files"]
    out += [f"+{p}" for p in fa if p not in fb][:5]
    out += [f"-{p}" for p in fb if p not in fa][:5]
    out += [f"~{p}" for p in fb if p in fa and fb[p] != fa[p]][:5]
    return ", ".join(out)


def _codes(codes: tuple[int, ...]) -> str:
    return " or ".join(map(str, codes))


@dataclass
class Run:
    code: Optional[int]  # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float
    rss_kb: int
    left: list[str]


def run_cli(rig: Rig, args: list[str], needles: list[str], workdir: Path) -> Run:
    """Run the real CLI under `/usr/bin/time` (its peak RSS, not inherited from this big test
    process) in its own process group; kill the group at the timeout."""
    out, err, rss = workdir / "stdout", workdir / "stderr", workdir / "rss"
    rss.unlink(missing_ok=True)
    argv = ["/usr/bin/time", "-f", "%M", "-o", str(rss), *CORE_ARGV]
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            [*argv, *args, "-c", str(rig.config)],
            stdin=subprocess.DEVNULL,
            stdout=o,
            stderr=e,
            start_new_session=True,
        )
    t0 = time.monotonic()
    code: Optional[int] = None
    try:
        code = proc.wait(CASE_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    seconds = time.monotonic() - t0
    time.sleep(0.05)
    left = leftovers(needles, group=proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever the group left: not to disturb the next
    kb = [ln for ln in (rss.read_text().splitlines() if rss.exists() else []) if ln.isdigit()]
    return Run(
        code,
        out.read_text(errors="replace"),
        err.read_text(errors="replace"),
        seconds,
        int(kb[-1]) if kb else 0,
        left,
    )


def reason_problems(run: Run, secret: str, cmd: str) -> list[str]:
    """The reason: one `usbupdater:` line (`check` may instead give it in its report on
    stdout), no control characters, no secret."""
    problems = []
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("usbupdater:")]
    in_report = cmd == "check" and not lines and "Result:" in run.stdout
    if len(lines) != 1 and not in_report:
        problems.append(f"{len(lines)} `usbupdater:` lines in stderr")
    if CONTROL.search(run.stderr) or CONTROL.search(run.stdout):
        problems.append("control characters in the output")
    if secret in run.stderr or secret in run.stdout:
        problems.append("the secret outside the stick was shown")
    return problems


# --- sticks ------------------------------------------------------------------------------------


def stick_image(corpus: Corpus, case: Case) -> Path:
    """The case's stick image, made once per session."""
    if case.name not in corpus.images:
        b = corpus.work / "bundles" / case.name
        shutil.copytree(corpus.golden, b, symlinks=True)
        case.make(corpus, b)
        corpus.images[case.name] = corpus.sticks.image(b, size_mb=case.size_mb)
        sh("rm", "-rf", str(b))  # not shutil.rmtree: it recurses, and some trees are deep
    return corpus.images[case.name]


@contextlib.contextmanager
def mounted(corpus: Corpus, img: Path) -> Iterator[Path]:
    dev = corpus.sticks.attach(img)
    point = corpus.work / "mnt" / img.stem
    point.mkdir(parents=True, exist_ok=True)
    try:
        sh("mount", "-t", "ext4", "-o", "ro,nosuid,nodev,noexec,noload", dev, str(point))
        yield point
    finally:
        for p in mounts_under(point.parent):
            sh("umount", "-l", p, check=False)
        corpus.sticks.detach(img)


# --- check and install -------------------------------------------------------------------------


def cli_case(corpus: Corpus, rig: Rig, case: Case, *, positive: bool = False) -> list[str]:
    img = stick_image(corpus, case)
    problems: list[str] = []
    before = device_snapshot(rig)
    children = my_children()
    work = corpus.work / "runs" / case.name
    work.mkdir(parents=True, exist_ok=True)
    codes = {}
    with mounted(corpus, img) as point:
        needles = [str(point), str(rig.device.sysroot)]
        for cmd, expected in (("check", case.check_codes), ("install", case.install_codes)):
            run = run_cli(rig, [cmd, "-s", str(point)], needles, work)
            codes[cmd] = run.code
            where = f"{cmd}: "
            if run.code is None:
                problems.append(f"{where}still running after {CASE_TIMEOUT:.0f} s (killed)")
            elif run.code not in expected:
                problems.append(f"{where}exit {run.code}, expected {_codes(expected)}")
            if run.code not in (None, 0, 16, 100, 101):
                problems += [where + p for p in reason_problems(run, corpus.secret, cmd)]
            elif corpus.secret in run.stdout + run.stderr:
                problems.append(f"{where}the secret outside the stick was shown")
            if run.rss_kb > MAX_RSS_KB:
                problems.append(f"{where}peak RSS {run.rss_kb // 1024} MB")
            if run.left:
                problems.append(f"{where}processes left behind: {run.left}")
            if run.code not in (None, *expected):
                tail = run.stderr.strip().splitlines()[-1:] or [""]
                problems.append(f"{where}said {tail[0][:200]!r}")
    new_children = my_children() - children
    if new_children:
        problems.append(f"new child processes: {sorted(new_children)}")
    after = device_snapshot(rig)
    unchanged = after == before
    if not positive and not unchanged:
        problems.append(f"device changed: {changes(before, after)}")
        renew_device(corpus)
    record(
        {
            "case": case.name,
            "mode": "positive" if positive else "cli",
            "as_expected": not problems,
            "unchanged": unchanged or positive,
            "problem": "; ".join(problems),
        }
    )
    return problems


@pytest.mark.parametrize("case", ALL, ids=[c.name for c in ALL])
def test_check_and_install(corpus: Corpus, case: Case) -> None:
    problems = cli_case(corpus, corpus.rig, case)
    assert not problems, f"{case.name}: " + "; ".join(problems)


def test_corpus_size() -> None:
    assert len(ALL) >= 60
    assert len({c.name for c in ALL}) == len(ALL)


def test_positive_control_multi_member_layer_installs(
    corpus: Corpus, tmp_path: Path, dockerd: Any
) -> None:
    """A valid layer of two gzip members, the first ending exactly on a 1 MiB boundary."""
    rig = device(tmp_path / "dev", corpus.factory, dockerd)
    try:
        problems = cli_case(corpus, rig, POSITIVE, positive=True)
        assert not problems, "; ".join(problems)
        assert rig.state().pending is not None
    finally:
        rig.cleanup_engine()
        rig.device.destroy()


# --- the service -------------------------------------------------------------------------------

WATCHED = list(ALL)  # every stick also through the service (about 1.3 s each)


@pytest.fixture(scope="module")
def agent_config(corpus: Corpus) -> tuple[Path, Path, Path]:
    """(config, status file, updater RSS log) of the service; one per session."""
    root = corpus.work / "agent"
    root.mkdir()
    runtime = root / "run"
    rss_log = root / "updater-rss.log"
    cfg = root / "agent.toml"
    cfg.write_text(
        "[usbupdater]\n"
        f'agent_state_dir = "{root / "state"}"\n'
        f'updater_command = "/usr/bin/time -a -o {rss_log} -f %M {shlex.join(CORE_ARGV)}"\n'
        "updater_timeout = 600\n" + agent_settings_toml(root, corpus.sticks, runtime)
    )
    return cfg, runtime / "status.json", rss_log


def _vm_hwm_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def reports_on(img: Path, tmp: Path) -> list[dict[str, Any]]:
    out = sh("debugfs", "-R", "ls -l /usbupdater-reports", str(img), check=False).stdout
    docs = []
    for name in sorted(out.split()):
        if name.endswith(".json"):
            dump = tmp / f"report-{name}"
            sh("debugfs", "-R", f"dump /usbupdater-reports/{name} {dump}", str(img))
            docs.append(json.loads(dump.read_text()))
    return docs


@pytest.mark.parametrize("case", WATCHED, ids=[c.name for c in WATCHED])
def test_watch(
    corpus: Corpus, agent_config: tuple[Path, Path, Path], case: Case, tmp_path: Path
) -> None:
    """The stick is plugged in, then the service starts and finds it (coldplug): one service
    per stick, so a hang in one case cannot hold the next."""
    cfg, status, rss_log = agent_config
    img = stick_image(corpus, case)
    rig = corpus.rig
    before = device_snapshot(rig)
    label = sh("e2label", str(img)).stdout.strip()
    problems: list[str] = []
    rss_lines = len(rss_log.read_text().splitlines()) if rss_log.exists() else 0
    for d in ("state", "run"):  # a fresh service: nothing resumed from the previous case
        shutil.rmtree(corpus.work / "agent" / d, ignore_errors=True)
    dev = corpus.sticks.attach(img)
    sh("udevadm", "settle", "--timeout=10", check=False)
    agent = Agent([rig.config, cfg], status, tmp_path / "agent.log")
    agent.start()
    t0 = time.monotonic()

    def ended(s: dict[str, Any]) -> bool:
        if (s.get("stick") or {}).get("label") != label:
            return False
        if s.get("phase") == "safe-to-remove":
            return True
        return s.get("phase") == "idle" and "ignored" in str(s.get("message", ""))

    st: dict[str, Any] = {}
    hwm = 0
    try:
        st = agent.wait_status(ended, WATCH_TIMEOUT, f"{case.name} to end")
    except AssertionError as exc:
        problems.append(f"watch: no end within {WATCH_TIMEOUT:.0f} s: {str(exc)[:300]}")
    finally:
        seconds = time.monotonic() - t0
        hwm = _vm_hwm_kb(agent.proc.pid) if agent.proc else 0
        alive = agent.proc is not None and agent.proc.poll() is None
        agent.stop(timeout=5)  # SIGTERM, then SIGKILL to its whole process group
        for p in mounts_under(corpus.work / "agent" / "media"):
            sh("umount", "-l", p, check=False)
        corpus.sticks.detach(img)
    if not alive:
        problems.append("watch: the service died")
    ignored = st.get("phase") == "idle"
    if st:
        if ignored and (case.ignored or case.install in METADATA_CODES):
            pass  # no readable tuf/targets.json: not taken for a bundle, nothing done
        elif st.get("result") != "failed" or st.get("code") not in case.install_codes:
            problems.append(
                f"watch: result {st.get('result')} code {st.get('code')}, expected failed "
                f"{_codes(case.install_codes)}"
            )
        if CONTROL.search(json.dumps(st, ensure_ascii=False)):
            problems.append("watch: control characters in the status")
    log = agent.log.read_text(errors="replace") if agent.log.exists() else ""
    if corpus.secret in json.dumps(st) or corpus.secret in log:
        problems.append("watch: the secret reached the status or the log")
    if hwm > MAX_RSS_KB:
        problems.append(f"watch: service peak RSS {hwm // 1024} MB")
    if rss_log.exists():
        for line in rss_log.read_text().splitlines()[rss_lines:]:
            if line.strip().isdigit() and int(line) > MAX_RSS_KB:
                problems.append(f"watch: updater peak RSS {int(line) // 1024} MB")
    left = leftovers([str(corpus.work / "agent" / "media"), dev, str(rig.device.sysroot)])
    if left:
        problems.append(f"watch: processes left behind: {left}")
    reports = reports_on(img, tmp_path)
    verified = st.get("code") not in (None, *METADATA_CODES) and not ignored
    if st and verified and not reports:
        problems.append("watch: no report written though the metadata verified")
    if st and not verified and reports:
        problems.append("watch: a report was written for metadata that did not verify")
    for doc in reports:
        text = json.dumps(doc, ensure_ascii=False)
        if corpus.secret in text or CONTROL.search(text):
            problems.append("watch: the report holds the secret or control characters")
    after = device_snapshot(rig)
    unchanged = after == before
    if not unchanged:
        problems.append(f"device changed: {changes(before, after)}")
        renew_device(corpus)
    record(
        {
            "case": case.name,
            "mode": "watch",
            "as_expected": not problems,
            "unchanged": unchanged,
            "problem": "; ".join(problems) + (f" ({seconds:.1f} s)" if problems else ""),
        }
    )
    assert not problems, f"{case.name}: " + "; ".join(problems)
