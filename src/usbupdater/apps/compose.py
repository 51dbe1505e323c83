"""Compose projects: safe extraction of the verified bundle, the image override, up and down.

Digest-pinned `image:` references cannot resolve on stock dockerd (it registers tags only, and
writing its `repositories.json` needs an engine restart). The signed `docker-compose.yml` is
therefore extracted unchanged, and a generated override file beside it,
`.usbupdater-images.yml`, maps each service to the local tag its verified image was loaded under
(engine.local_tag). Compose merges `-f docker-compose.yml -f .usbupdater-images.yml`; nothing
else in the service changes, so the config-hash label and everything the user wrote stay as
signed. The same arguments work with `docker compose` (v2) and `docker-compose` (v1).

Extraction reads the tgz from the store through its digest check and writes into a temporary
directory, swapped in only once the whole archive matched; members must be plain names (no
absolute paths, no `..`), regular files or directories (links must stay inside, devices and
FIFOs are refused), with limits on each member, the total and the member count.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from usbupdater import proc
from usbupdater.apps.engine import local_tag
from usbupdater.apps.health import CONFIG_HASH_LABEL, ServiceExpectation
from usbupdater.apps.store import AppContent, AppStore
from usbupdater.errors import VerificationError
from usbupdater.fsutil import fsync_dir

COMPOSE_FILE = "docker-compose.yml"
OVERRIDE_FILE = ".usbupdater-images.yml"
MAX_COMPOSE = 1 << 20  # composectl's limits
MAX_MEMBER = (1 << 30) - (1 << 20)
MAX_TOTAL = 2 << 30
MAX_MEMBERS = 10000
COMPOSE_TIMEOUT = 600.0


class _VerifyingReader(io.RawIOBase):
    """A file-like over a stored blob's verified chunks (raises at the end on a mismatch)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf = nxt
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


@dataclass(frozen=True)
class Limits:
    """Bounds on what a bundle may unpack to (composectl's per-file limits by default)."""

    member: int = MAX_MEMBER
    compose: int = MAX_COMPOSE
    total: int = MAX_TOTAL
    members: int = MAX_MEMBERS


def _safe_member(m: tarfile.TarInfo, limits: Limits) -> str:
    name = m.name
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    if not name or name.startswith("/") or "\0" in name:
        raise VerificationError(f"bundle member {m.name!r}: absolute or empty name")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise VerificationError(f"bundle member {m.name!r}: unsafe path")
    if m.issym():
        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), m.linkname))
        if m.linkname.startswith("/") or target == ".." or target.startswith("../"):
            raise VerificationError(f"bundle member {m.name!r}: link points outside the app")
    elif not (m.isreg() or m.isdir()):
        raise VerificationError(f"bundle member {m.name!r}: type {m.type!r} is not allowed")
    if m.size > limits.member or (name == COMPOSE_FILE and m.size > limits.compose):
        raise VerificationError(f"bundle member {m.name!r}: {m.size} bytes is too large")
    return name


def extract_bundle(
    store: AppStore, app: AppContent, dest: Path, limits: Limits = Limits()
) -> bytes:
    """Extract the app's verified bundle into `dest` (replacing it); return the compose bytes."""
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{dest.name}.new"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o755)
    total = 0
    try:
        raw = io.BufferedReader(_VerifyingReader(store.read_verified(app.bundle)), 1 << 16)
        try:
            with tarfile.open(fileobj=raw, mode="r|gz") as tar:
                for count, m in enumerate(tar, 1):
                    if count > limits.members:
                        raise VerificationError(
                            f"app {app.name}: bundle has over {limits.members} members"
                        )
                    name = _safe_member(m, limits)
                    total += m.size
                    if total > limits.total:
                        raise VerificationError(
                            f"app {app.name}: bundle unpacks to over {limits.total} bytes"
                        )
                    out = tmp / name
                    if m.isdir():
                        out.mkdir(parents=True, exist_ok=True)
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    if out.is_symlink() or out.exists():
                        raise VerificationError(f"app {app.name}: bundle member {name!r} repeats")
                    if m.issym():
                        os.symlink(m.linkname, out)
                        continue
                    src = tar.extractfile(m)
                    assert src is not None
                    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                    with os.fdopen(fd, "wb") as fh:
                        shutil.copyfileobj(src, fh, 1 << 20)
                # drain: the digest is checked only once every byte has been read
                while raw.read(1 << 16):
                    pass
        except (tarfile.TarError, EOFError, OSError) as exc:
            if isinstance(exc.__context__, VerificationError):
                raise exc.__context__ from None
            raise VerificationError(f"app {app.name}: bundle is not a valid tgz: {exc}") from None
        compose_path = tmp / COMPOSE_FILE
        if compose_path.is_symlink() or not compose_path.is_file():
            raise VerificationError(f"app {app.name}: bundle has no {COMPOSE_FILE}")
        compose = compose_path.read_bytes()
        old = parent / f".{dest.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        fsync_dir(parent)
        shutil.rmtree(old, ignore_errors=True)
        return compose
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass(frozen=True)
class ComposeService:
    name: str
    image: str
    config_hash: Optional[str]


def parse_compose(data: bytes) -> tuple[str, list[ComposeService]]:
    """(version or "", services) of a compose file."""
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise VerificationError(f"{COMPOSE_FILE} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise VerificationError(f"{COMPOSE_FILE} has no services")
    out = []
    for name, body in doc["services"].items():
        body = body if isinstance(body, dict) else {}
        labels = body.get("labels") or {}
        if isinstance(labels, list):
            labels = dict(str(x).partition("=")[::2] for x in labels)
        h = labels.get(CONFIG_HASH_LABEL) if isinstance(labels, dict) else None
        out.append(
            ComposeService(str(name), str(body.get("image", "")), None if h is None else str(h))
        )
    version = doc.get("version")
    return ("" if version is None else str(version)), out


def expectations(app: AppContent, compose: bytes) -> list[ServiceExpectation]:
    """What each service must run, checking that the compose file and the verified images agree."""
    _, services = parse_compose(compose)
    by_ref = {img.ref: img for img in app.images}
    out = []
    for s in services:
        img = by_ref.get(s.image)
        if img is None:
            raise VerificationError(
                f"app {app.name}: service {s.name} image {s.image!r} was not verified"
            )
        out.append(ServiceExpectation(s.name, img.image_id, s.config_hash))
    return out


def write_override(app: AppContent, compose: bytes, project_dir: Path) -> Path:
    """Write the override mapping each service to its image's local tag (JSON is YAML)."""
    version, services = parse_compose(compose)
    by_ref = {img.ref: img for img in app.images}
    doc: dict[str, Any] = {}
    if version:
        doc["version"] = version  # compose v1 refuses files of different versions
    doc["services"] = {s.name: {"image": local_tag(by_ref[s.image])} for s in services}
    path = project_dir / OVERRIDE_FILE
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


class Compose:
    """`docker compose` / `docker-compose` for one project directory (project name = app)."""

    def __init__(
        self,
        command: Sequence[str],
        project_dir: Path,
        env: Optional[Mapping[str, str]] = None,
        timeout: float = COMPOSE_TIMEOUT,
    ) -> None:
        self.command = tuple(command)
        self.project_dir = project_dir
        self.project = project_dir.name
        self.env = dict(env) if env is not None else None
        self.timeout = timeout

    def args(self, *sub: str) -> list[str]:
        files = ["-f", str(self.project_dir / COMPOSE_FILE)]
        if (self.project_dir / OVERRIDE_FILE).exists():
            files += ["-f", str(self.project_dir / OVERRIDE_FILE)]
        return [
            *self.command,
            "--project-name",
            self.project,
            "--project-directory",
            str(self.project_dir),
            *files,
            *sub,
        ]

    def run(self, *sub: str) -> str:
        """stdout of one compose call; a failure is "<compose> <sub> <app> failed (exit N)"
        (its stderr only in the debug log), a timeout kills compose's whole process group."""
        what = f"{' '.join(self.command)} {sub[0]} {self.project}"
        done = proc.run(self.args(*sub), what, self.timeout, env=self.env, cwd=self.project_dir)
        return done.stdout

    def up(self) -> None:
        self.run("up", "-d", "--remove-orphans", "--no-build")

    def down(self) -> None:
        self.run("down", "--remove-orphans")
