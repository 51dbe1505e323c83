"""Report privacy and output hygiene (issue 13, item 8) and bounded bundle identification
(item 3): the pure parts, plus the real tools where one exists (`systemd-id128`, a real
NOTIFY_SOCKET datagram socket, a child process's peak RSS)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from usbupdater.agent import dialect, policy, report
from usbupdater.agent.journal import JobRecord
from usbupdater.agent.media import (
    MAX_SNAPSHOT_JSON,
    MAX_TARGETS_JSON,
    NoBundle,
    find_bundle,
    mount_options,
)
from usbupdater.agent.settings import SERIAL_APP_ID, AgentSettings, machine_pseudonym, pseudonym
from usbupdater.agent.status import StatusBoard
from usbupdater.errors import ExitCode
from usbupdater.textsafe import safe_text

NASTY = "a\x1b[2J\r\nb\udcff\udcfe\u202egnp.exe\x7f\x85\u2028z"
BAD = ("\x1b", "\r", "\n", "\x7f", "\x85", "\u202e", "\u2028")


def printable(text: str) -> bool:
    return all(unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Cn", "Zl", "Zp") for c in text)


# --- safe_text ---


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain name-1.2_x", "plain name-1.2_x"),
        ("Grüße ünïcödé 更新", "Grüße ünïcödé 更新"),
        ("\x1b[2J", "\\x1b[2J"),
        ("a\r\nb", "a\\x0d\\x0ab"),
        ("tab\there", "tab\\x09here"),
        ("del\x7f c1\x9b", "del\\x7f c1\\x9b"),
        ("bad\udcff", "bad\\xff"),  # a non-UTF-8 byte as os.fsdecode gives it
        ("\u202eexe.txt", "\\u202eexe.txt"),
        ("\u2066iso\u2069", "\\u2066iso\\u2069"),
        ("zw\u200bsp\ufeff", "zw\\u200bsp\\ufeff"),
        ("back\\slash", "back\\slash"),
        ("lone\ud800", "lone\\ud800"),
    ],
)
def test_safe_text_table(raw: str, shown: str) -> None:
    assert safe_text(raw) == shown


def test_safe_text_truncates_without_cutting_an_escape() -> None:
    assert safe_text("x" * 10, 5) == "xx..."
    assert safe_text("x" * 5, 5) == "xxxxx"
    assert safe_text("\n" * 5, 8) == "\\x0a..."
    assert safe_text(ValueError("boom\n"), 50) == "boom\\x0a"


@given(st.text(alphabet=st.characters(), max_size=300), st.integers(3, 120))
def test_safe_text_always_one_bounded_encodable_line(raw: str, limit: int) -> None:
    out = safe_text(raw, limit)
    assert len(out) <= limit
    assert printable(out)
    out.encode("utf-8")  # never a surrogate left
    assert safe_text(out, limit) == out  # idempotent: outputs may escape twice
    if printable(raw) and len(raw) <= limit:
        assert out == raw


# --- which outcomes prove the metadata verified (spec section 4) ---

VERIFIED = (0, 6, 8, 20, 30, 40, 60, 80, 90, 99, 100, 101, 102, 110, 120)
NOT_VERIFIED = (None, 1, 11, 12, 14, 15, 2, 3, 42, 127, 255, -9)


@pytest.mark.parametrize("code", VERIFIED)
def test_codes_after_verification(code: int) -> None:
    assert policy.metadata_verified(code)


@pytest.mark.parametrize("code", NOT_VERIFIED)
def test_codes_before_verification_or_unknown(code: int | None) -> None:
    assert not policy.metadata_verified(code)


def test_every_documented_code_is_classified() -> None:
    """Every install code of ours is in the table, so it is read as verified or not on purpose,
    and its text is the exit code's meaning."""
    table = dialect.TABLE[(dialect.USBUPDATER, "install")]
    assert set(table) == set(ExitCode) - {ExitCode.UPDATE_AVAILABLE}  # a `check` code only
    assert {c for c in table if table[c].verified} == set(VERIFIED)
    for code, m in table.items():
        assert m.text == ExitCode(code).meaning


@pytest.mark.parametrize(
    ("outcomes", "allowed"),
    [
        ([], False),
        ([{"command": "install", "code": 11}], False),
        ([{"command": "install", "code": None}], False),  # did not run or finish
        ([{"command": "install", "code": 15}, {"command": "run", "code": 0}], False),
        ([{"command": "install", "code": 80}], True),  # verified, then the content failed
        ([{"command": "install", "code": 100}, {"command": "run", "code": 99}], True),
        ([{"command": "install", "code": 1}, {"command": "install", "code": 0}], True),
        ([{"command": "run", "code": 0}], False),  # `run` never reads the stick
    ],
)
def test_report_allowed(outcomes: list[dict[str, object]], allowed: bool) -> None:
    assert policy.report_allowed(outcomes) is allowed


# --- the serial in reports ---


def test_pseudonym_is_systemds_app_specific_id() -> None:
    mid = Path("/etc/machine-id").read_text().strip()
    if shutil.which("systemd-id128") is None:
        pytest.fail("systemd-id128 missing")
    out = subprocess.run(
        ["systemd-id128", "machine-id", f"--app-specific={SERIAL_APP_ID.hex()}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    shown = machine_pseudonym()
    assert shown == pseudonym(mid) == out[:16]
    assert mid not in shown and shown not in mid
    assert len(shown) == 16 and int(shown, 16) >= 0


def test_pseudonym_stable_and_distinct(tmp_path: Path) -> None:
    a, b = "3d1219c7c4c5404aaa1f6d2a48adfda4", "3d1219c7c4c5404aaa1f6d2a48adfda5"
    assert pseudonym(a) == pseudonym(a + "\n") != pseudonym(b)
    assert pseudonym("not hex") != "not hex" and len(pseudonym("not hex")) == 16
    f = tmp_path / "machine-id"
    f.write_text(a + "\n")
    assert machine_pseudonym((str(tmp_path / "missing"), str(f))) == pseudonym(a)
    assert machine_pseudonym((str(tmp_path / "missing"),)) == ""


def test_settings_serial_never_the_machine_id(tmp_path: Path) -> None:
    from usbupdater import config

    mid = Path("/etc/machine-id").read_text().strip()
    for serial, want in (('primary_ecu_serial = "SN9"\n', "SN9"), ("", machine_pseudonym())):
        f = tmp_path / "c.toml"
        f.write_text(
            f'[provision]\nprimary_ecu_hardware_id = "hw"\n{serial}'
            f'[storage]\npath = "{tmp_path / "sota"}"\n'
        )
        s = AgentSettings.from_config(config.load([f]))
        assert s.device_serial == want and mid not in s.device_serial


# --- mount options ---


def test_mount_options_noload_for_journalled_ext_only() -> None:
    s = AgentSettings()
    for fs in ("ext4", "ext3"):
        assert mount_options(s, fs) == "ro,nosuid,nodev,noexec,noatime,noload"
        assert "noload" not in mount_options(s, fs, rw=True)  # the report mount
    assert mount_options(s, "ext2") == "ro,nosuid,nodev,noexec,noatime"  # ext2 refuses noload
    assert mount_options(s, "vfat") == (
        "ro,nosuid,nodev,noexec,noatime,uid=0,gid=0,fmask=0133,dmask=0022"
    )
    assert mount_options(AgentSettings(mount_options="ro,noload"), "ext4") == "ro,noload"


# --- identifying a bundle from bounded reads ---


def bundle(root: Path, targets: bytes, snapshot: object = None, bt: bytes | None = None) -> Path:
    (root / "tuf").mkdir(parents=True)
    (root / "tuf" / "targets.json").write_bytes(targets)
    if snapshot is not None:
        data = snapshot if isinstance(snapshot, bytes) else json.dumps(snapshot).encode()
        (root / "tuf" / "snapshot.json").write_bytes(data)
    if bt is not None:
        (root / "tuf" / "bundle-targets.json").write_bytes(bt)
    return root


def snap(version: object) -> dict[str, object]:
    return {"signed": {"meta": {"targets.json": {"version": version}}}}


def test_identity_is_the_stream_hash_of_targets_and_bundle_targets(tmp_path: Path) -> None:
    targets, bt = b'{"signed": {"version": 7}}' * 5000, b'{"bt": 1}'
    b = find_bundle(bundle(tmp_path / "a", targets, snap(7), bt), "U")
    assert b.targets_sha256 == hashlib.sha256(targets).hexdigest()
    assert b.identity == f"U:.:{hashlib.sha256(targets + bt).hexdigest()[:32]}"  # as before
    assert b.targets_version == 7


@pytest.mark.parametrize(
    "snapshot",
    [None, b"not json", snap("7"), snap(True), {"signed": []}, b"[" * 100_000],
)
def test_version_unknown_when_snapshot_absent_or_odd(tmp_path: Path, snapshot: object) -> None:
    assert find_bundle(bundle(tmp_path / "a", b"{}", snapshot)).targets_version is None


def test_oversized_snapshot_is_not_parsed(tmp_path: Path) -> None:
    big = json.dumps(snap(3)).encode() + b" " * MAX_SNAPSHOT_JSON
    assert find_bundle(bundle(tmp_path / "a", b"{}", big)).targets_version is None


def test_oversized_targets_is_refused_without_reading(tmp_path: Path) -> None:
    root = bundle(tmp_path / "a", b"")
    with open(root / "tuf" / "targets.json", "wb") as fh:
        fh.truncate(MAX_TARGETS_JSON + 1)  # sparse
    with pytest.raises(NoBundle, match="more than the"):
        find_bundle(root)


def test_non_utf8_and_control_folder_names(tmp_path: Path) -> None:
    stick = tmp_path / "s"
    stick.mkdir()
    name = os.fsdecode(b"up\x1b[2J\r\ndate\xff\xfe\xe2\x80\xae")
    bundle(stick / name, b"{}", snap(2))
    b = find_bundle(stick, "U")
    assert b.path == stick / name and b.targets_version == 2
    bundle(stick / (name + "2"), b"{}")
    with pytest.raises(NoBundle) as err:
        find_bundle(stick)
    assert printable(str(err.value)) and "\\x1b[2J" in str(err.value)


def vm_hwm_kib(pid: int | str = "self") -> int:
    """Peak resident memory of one process image (VmHWM; unlike wait4's ru_maxrss it is not
    inherited from the forked parent before exec)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def peak_rss_kib(code: str, *args: str) -> tuple[int, str]:
    """Run `code` in a child Python; its output and its peak RSS in KiB."""
    code += "\nfrom tests.agent.test_hygiene import vm_hwm_kib\nprint('HWM', vm_hwm_kib())\n"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    out, _, hwm = proc.stdout.rpartition("HWM ")
    return int(hwm), out


HUGE_TARGETS = 64 << 20


def huge_targets(path: Path) -> None:
    """A valid 64 MiB targets.json of many small objects: json.loads would need over 1 GB."""
    entry = b'"t%09d": {"hashes": {"sha256": "00"}, "length": 1, "custom": {"a": [1, 2]}}, '
    with open(path, "wb") as fh:
        fh.write(b'{"signed": {"_type": "Targets", "targets": {')
        n = 0
        size = 0
        while size < HUGE_TARGETS - 200:
            line = entry % n
            fh.write(line)
            size += len(line)
            n += 1
        fh.write(b'"end": {}}, "version": 9}}')


def test_find_bundle_on_64mib_targets_stays_small(tmp_path: Path) -> None:
    root = tmp_path / "stick"
    (root / "b" / "tuf").mkdir(parents=True)
    huge_targets(root / "b" / "tuf" / "targets.json")
    assert os.path.getsize(root / "b" / "tuf" / "targets.json") <= MAX_TARGETS_JSON
    (root / "b" / "tuf" / "snapshot.json").write_text(json.dumps(snap(9)))
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from usbupdater.agent.media import find_bundle\n"
        "b = find_bundle(Path(sys.argv[1]), 'U')\n"
        "print(b.targets_version, b.targets_sha256)\n"
    )
    base, _ = peak_rss_kib("import usbupdater.agent.media")
    peak, out = peak_rss_kib(code, str(root))
    assert out.split()[0] == "9"
    # The file is 64 MiB: a whole read would add 64 MiB, a parse over 1 GB.
    assert peak < 60 * 1024, f"peak RSS {peak} KiB"
    assert peak - base < 8 * 1024, f"find_bundle added {peak - base} KiB"


# --- report and status: one clean line per item ---


def test_report_escapes_stick_and_core_text(tmp_path: Path) -> None:
    rec = JobRecord(bundle=f"U:{NASTY}:abc", stick={"devnode": "/dev/sdb1", "label": NASTY})
    rec.new_target = NASTY
    rec.outcomes = [
        {"command": "install", "code": 80, "reason": NASTY, "errors": [NASTY], "time": "T"}
    ]
    doc = report.build(rec, AgentSettings(hardware_id="hw", device_serial="p"), "failed", NASTY)
    txt = report.text(doc)
    assert printable(txt.replace("\n", ""))
    lines = txt.splitlines()
    assert lines[1] == safe_text(NASTY) and "\\x1b[2J" in lines[1]
    assert len(lines) == 5 + 1 + 2  # header lines, one step, two distinct errors
    path = report.write(tmp_path, AgentSettings(hardware_id="hw", device_serial="p"), doc)
    data = path.read_bytes()
    data.decode("utf-8")
    back = json.loads(data)
    assert back["stick"]["label"] == safe_text(NASTY)
    shown = (back["message"], back["new_target"], back["bundle"]["identity"])
    assert all(printable(v) for v in shown)
    path.with_suffix(".txt").read_bytes().decode("utf-8")


def test_status_console_and_sd_notify_escape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    console = tmp_path / "console"
    s = AgentSettings(status_file=tmp_path / "status.json", console=str(console))
    ticks = iter(range(0, 1000, 2))  # two seconds a call: the console's 1 s limit never holds back
    b = StatusBoard(s, clock=lambda: float(next(ticks)))
    try:
        b.reset(device="/dev/sdb1", stick={"label": NASTY})
        b.set("installing", f"reading {NASTY}", target=NASTY)
        b.progress(50, NASTY, NASTY)
        b.set("safe-to-remove", f"failed: {NASTY}")
        msgs = [sock.recv(4096) for _ in range(2)]
    finally:
        sock.close()
    for m in msgs:
        text = m.decode("utf-8")
        assert text.startswith("STATUS=") and printable(text) and "\n" not in text
    assert b"\\x1b[2J" in msgs[0]
    raw = console.read_bytes().decode("utf-8")
    lines = raw.splitlines()
    assert len(lines) == 3 and all(ln.startswith("usbupdater: ") for ln in lines)
    assert all(printable(ln) for ln in lines)
    doc = json.loads(s.status_file.read_text())
    assert printable(doc["message"]) and printable(doc["target"]) and printable(doc["step"])
    assert printable(doc["stick"]["label"])
