"""The stick's bundle (`<src>/tuf`, `<src>/ostree_repo`, `<src>/apps`), read as untrusted input.

Everything goes through `safeio` from one directory fd opened on `<src>`: no symlink is followed
(so nothing outside the bundle is ever read), device nodes and FIFOs are refused, names are
checked, sizes are bounded before reading, and macOS `._*` sidecars and other strays are
ignored. A piece that is unsafe counts as absent and its reason is kept, so a person learns why
a target's content "is missing" (for example "apps: is a symbolic link").

Only presence is decided here; the content itself is verified by `usbupdater.apps.verify` (blobs)
and by `ostree pull-local --untrusted` (the commit); `tuf/` is read by `usbupdater.trust`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Optional

from usbupdater import safeio
from usbupdater.errors import MetadataMissingError
from usbupdater.hexdigest import is_sha256_hex
from usbupdater.safeio import UnsafePathError
from usbupdater.target import InvalidTargetError, parse_ref

MAX_URI = 1024  # an app URI file: "<host>/<factory>/<app>@sha256:<64 hex>"
MAX_COMMIT_OBJECT = 1 << 20  # an OSTree commit object is a few hundred bytes
MAX_BLOB_ENTRIES = 100_000  # blobs summed for a progress estimate (a real bundle has hundreds)


@dataclass(frozen=True)
class AppEntry:
    """An app found in `apps/apps/<app>/<H>/uri`, whose content names that same app and H."""

    app: str
    hex: str
    uri: str


class Bundle:
    """An opened bundle directory; use as a context manager (it holds directory fds)."""

    def __init__(self, root_fd: int, path: Path) -> None:
        self._root = root_fd
        self.path = path
        self._dirs: dict[str, int] = {}
        self._apps: Optional[dict[str, AppEntry]] = None
        self.problems: dict[str, str] = {}  # bundle-relative path -> why it was ignored

    @classmethod
    def open(cls, src: str | os.PathLike[str]) -> Bundle:
        path = Path(src)
        try:
            fd = safeio.open_root(path)
        except (OSError, UnsafePathError) as exc:
            reason = exc.reason if isinstance(exc, UnsafePathError) else exc.strerror
            raise MetadataMissingError(f"no bundle at {path}: {reason}") from exc
        return cls(fd, path)

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        if self._root >= 0:
            os.close(self._root)
            self._root = -1

    def __enter__(self) -> Bundle:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def _dir(self, relpath: str) -> int:
        """A cached fd for a bundle subdirectory; FileNotFoundError or UnsafePathError."""
        if relpath not in self._dirs:
            parent, _, name = relpath.rpartition("/")
            pfd = self._dir(parent) if parent else self._root
            try:  # one component at a time, so a refusal names the very component
                self._dirs[relpath] = safeio.open_dir(pfd, name)
            except UnsafePathError as exc:
                raise UnsafePathError(relpath, exc.reason) from None
        return self._dirs[relpath]

    # --- ostree_repo/ --------------------------------------------------------------------------

    @property
    def ostree_repo(self) -> Path:
        """For `ostree pull-local --untrusted`, which verifies every object it copies."""
        return self.path / "ostree_repo"

    def commit_problem(self, commit: str) -> Optional[str]:
        """None when the commit object is in `ostree_repo/objects/`, else why it is not."""
        if not is_sha256_hex(commit):
            return f"{commit!r} is not an OSTree commit hash"
        rel = f"ostree_repo/objects/{commit[:2]}/{commit[2:]}.commit"
        try:
            with safeio.open_file(self._root, rel, MAX_COMMIT_OBJECT):
                return None
        except FileNotFoundError:
            return f"commit {commit} is not in ostree_repo"
        except UnsafePathError as exc:
            return f"commit {commit}: {exc}"

    # --- apps/ ---------------------------------------------------------------------------------

    def apps_present(self) -> Mapping[str, AppEntry]:
        """Apps in `apps/apps/*/*/uri` by URI; scanned once, unsafe entries in `problems`."""
        if self._apps is None:
            self._apps = self._scan_apps()
        return self._apps

    def _scan_apps(self) -> dict[str, AppEntry]:
        found: dict[str, AppEntry] = {}
        try:
            top = self._dir("apps/apps")
            apps = safeio.list_dir(top, ".")
        except FileNotFoundError:
            return found
        except UnsafePathError as exc:
            self.problems["apps"] = str(exc)
            return found
        for app in apps:
            try:
                hexes = safeio.list_dir(top, app)
            except UnsafePathError as exc:
                self.problems[f"apps/apps/{app}"] = exc.reason
                continue
            for h in hexes:
                rel = f"apps/apps/{app}/{h}"
                if not is_sha256_hex(h):
                    continue  # a stray directory or file
                try:
                    raw = safeio.read_file(top, f"{app}/{h}/uri", MAX_URI)
                    ref = parse_ref(raw.decode("utf-8"))
                except FileNotFoundError:
                    continue  # not (completely) present: no uri, no app
                except (UnsafePathError, InvalidTargetError, UnicodeDecodeError) as exc:
                    self.problems[f"{rel}/uri"] = getattr(exc, "reason", str(exc))
                    continue
                if ref.hex != h or ref.name != app:
                    self.problems[f"{rel}/uri"] = f"names {ref}, not app {app} at {h}"
                    continue
                found[str(ref)] = AppEntry(app, h, str(ref))
        return found

    def app_problem(self, name: str, uri: str) -> Optional[str]:
        """None when the app is present by URI, else why not (in a person's words)."""
        if uri in self.apps_present():
            return None
        if "apps" in self.problems:
            return f"app {name}: {self.problems['apps']}"
        try:
            ref = parse_ref(uri)
        except InvalidTargetError as exc:
            return f"app {name}: {exc}"
        for rel in (f"apps/apps/{ref.name}", f"apps/apps/{ref.name}/{ref.hex}/uri"):
            if rel in self.problems:
                return f"app {name}: {rel}: {self.problems[rel]}"
        return f"app {name} ({uri}) is not in the bundle"

    def blob_bytes(self, limit: int = MAX_BLOB_ENTRIES) -> int:
        """The sizes of the app blobs on the stick, summed from `fstatat` (no data read, no link
        followed, at most `limit` entries): what a progress meter can expect before the apps'
        manifests are read. 0 when there is no blob directory."""
        try:
            dfd = self._dir("apps/blobs/sha256")
        except (OSError, UnsafePathError):
            return 0
        total = 0
        with os.scandir(dfd) as entries:
            for count, entry in enumerate(entries):
                if count >= limit:
                    break
                try:
                    st = os.stat(entry.name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and is_sha256_hex(entry.name):
                    total += st.st_size
        return total

    def open_blob(self, hexdigest: str, max_size: int) -> BinaryIO:
        """Open `apps/blobs/sha256/<hex>` (a regular file of at most `max_size` bytes).

        Raises FileNotFoundError when absent, UnsafePathError when it (or a directory on the
        way) is a link, device, FIFO or too large, or when `hexdigest` is not 64 lowercase hex.
        """
        if not is_sha256_hex(hexdigest):
            raise UnsafePathError(hexdigest, "is not a sha256 hex digest")
        return safeio.open_file(self._dir("apps/blobs/sha256"), hexdigest, max_size)
