"""The device's OSTree sysroot, driven through the `ostree` CLI.

Why the CLI and not libostree bindings: it keeps the device install light and it is the tool a
person uses to debug the same sysroot. Every call goes through `run_ostree` (`usbupdater.proc`:
a timeout per subcommand, the process group killed with us). ostree's stderr is never quoted:
a failure becomes a fixed message plus, when one can be picked out, a validated object checksum.
The stick's repo is walked by `usbupdater.stick_repo` before ostree opens it (no link, FIFO or
device anywhere in it).

What aktualizr-lite does, and so do we:
- `pull-local --untrusted` from the bundle's archive repo: ostree re-checksums every object.
- Before pulling, the space the new objects need is estimated and compared with the free space
  of the sysroot repo's filesystem (exit 60 with the numbers), so a short device is refused
  before anything is written.
- `admin deploy` without `--karg*`: ostree then copies the kernel arguments of the merge
  deployment (the current default), as libaktualizr does from its bootconfig `options`.
- Which commit booted is asked of a `BootedCommitSource`, so the simulation can stand in for the
  bootloader.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from usbupdater import log, proc, progress, rootfs_space, safeio, stick_repo
from usbupdater.booted import BootedCommitSource, ProcCmdlineBootedCommit, boot_entry_options
from usbupdater.errors import (
    AdapterError,
    ContentMissingError,
    NoSpaceError,
)
from usbupdater.ostree_cli import (
    LS_ENTRY,
    PULL_TIMEOUT,
    Deployment,
    check_commit,
    content_error,
    is_enospc,
    parse_size,
    parse_status,
    run_ostree,
)

logger = log.get_logger("rootfs")

# Estimate overheads: a file object in a bare repo costs its data rounded to the block size plus
# an inode; metadata objects (dirtree/dirmeta/commit) are small files; the deployment itself is
# hard links plus a copied /etc and kernel/initramfs in /boot, covered by a fixed allowance.
DEFAULT_DEPLOY_ALLOWANCE = 1 << 20
_OSTREE_DEFAULT_MIN_FREE_PERCENT = 3  # libostree's default `min-free-space-percent`


@dataclass(frozen=True)
class SpaceEstimate:
    """What pulling a commit will cost the sysroot repo's filesystem, and what it has."""

    needed_bytes: int
    new_objects: int
    free_bytes: int
    reserved_bytes: int
    read_bytes: int = 0  # of the new objects on the stick: what the pull will read

    @property
    def sufficient(self) -> bool:
        return self.needed_bytes + self.reserved_bytes <= self.free_bytes


def statvfs_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class OstreeSysroot:
    """One OSTree sysroot (`[pacman] sysroot`) and one OS name (`[pacman] os`)."""

    def __init__(
        self,
        sysroot: Path,
        osname: str = "lmp",
        *,
        booted_source: Optional[BootedCommitSource] = None,
        ostree_bin: str = "ostree",
        free_space: Callable[[Path], int] = statvfs_free,
        deploy_allowance: int = DEFAULT_DEPLOY_ALLOWANCE,
        pull_timeout: float = PULL_TIMEOUT,
    ) -> None:
        self.sysroot = Path(sysroot)
        self.osname = osname
        self.repo = self.sysroot / "ostree" / "repo"
        self.booted_source = booted_source or ProcCmdlineBootedCommit(
            self.sysroot, ostree_bin=ostree_bin
        )
        self.ostree_bin = ostree_bin
        self._free_space = free_space
        self.deploy_allowance = deploy_allowance
        self.pull_timeout = pull_timeout

    def _ostree(self, *args: str) -> proc.Completed:
        return run_ostree(args, ostree_bin=self.ostree_bin)

    # --- reading ------------------------------------------------------------------------------

    def deployments(self) -> list[Deployment]:
        """This OS's deployments, newest (next to boot) first."""
        done = self._ostree("admin", "status", f"--sysroot={self.sysroot}")
        return [d for d in parse_status(done.stdout) if d.osname == self.osname]

    def has_commit(self, commit: str) -> bool:
        """Whether the commit object is in the sysroot repo (a partial pull does not count)."""
        check_commit(commit)
        obj = self.repo / "objects" / commit[:2] / f"{commit[2:]}.commit"
        partial = self.repo / "state" / f"{commit}.commitpartial"
        return obj.is_file() and not partial.exists()

    def booted_commit(self) -> Optional[str]:
        return self.booted_source.booted_commit()

    def pending_commit(self) -> Optional[str]:
        """The commit that boots next when it is not the booted one (libostree's "pending")."""
        deps = self.deployments()
        if not deps:
            return None
        booted = self.booted_commit()
        return None if deps[0].commit == booted else deps[0].commit

    def deployment_dir(self, deployment: Deployment) -> Path:
        deploy = self.sysroot / "ostree" / "deploy" / deployment.osname / "deploy"
        return deploy / deployment.dirname

    def read_deployment_file(
        self, deployment: Deployment, relpath: str, max_size: int
    ) -> Optional[bytes]:
        """A small file of a deployment's tree (e.g. its boot firmware version), None when it is
        absent. No symbolic link is followed on the way (one could point out of the deployment,
        at the booted one or anywhere on the device); a link, a non-regular file or one larger
        than `max_size` is an AdapterError."""
        where = f"deployment {deployment.dirname[:12]}"
        try:
            root = safeio.open_root(self.deployment_dir(deployment))
        except FileNotFoundError:
            raise AdapterError(f"{where} is not in the sysroot") from None
        except safeio.UnsafePathError as exc:
            raise AdapterError(f"{where}: {exc.reason}") from None
        try:
            return safeio.read_file(root, relpath, max_size)
        except FileNotFoundError:
            return None
        except safeio.UnsafePathError as exc:
            raise AdapterError(f"{relpath} in {where}: {exc.reason}") from None
        finally:
            os.close(root)

    def read_commit_file(self, commit: str, relpath: str, max_size: int) -> Optional[bytes]:
        """A small regular file of a commit in the sysroot repo, before it is deployed (as
        aktualizr-lite's BootloaderLite::getTargetVersion reads `version.txt` from the repo);
        None when absent. Every component is listed first (`ostree ls -d`, one call): a symbolic
        link on the way, a non-regular file or one over `max_size` is an AdapterError."""
        check_commit(commit)
        parts = safeio.split_relpath(relpath)
        prefixes = ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]
        where = f"{relpath} in commit {commit[:12]}"
        listed = run_ostree(
            ["ls", f"--repo={self.repo}", "-d", commit, *prefixes],
            ostree_bin=self.ostree_bin,
            check=False,
            timeout=60.0,
        )
        entries = [m for m in map(LS_ENTRY.match, listed.stdout.splitlines()) if m]
        for i, prefix in enumerate(prefixes):
            if i >= len(entries):  # ostree stops at the first path it cannot find
                if i == 0 or listed.returncode == 0:
                    raise AdapterError(proc.failed_reason("ostree ls", listed.returncode))
                return None
            m = entries[i]
            last = i == len(prefixes) - 1
            if m["path"] != prefix:
                raise AdapterError(f"{where}: unexpected listing from ostree ls")
            if m["type"] == "l":
                raise AdapterError(f"{where}: {prefix} is a symbolic link")
            if m["type"] != ("-" if last else "d"):
                what = "a regular file" if last else "a directory"
                raise AdapterError(f"{where}: {prefix} is not {what}")
            if last and int(m["size"]) > max_size:
                raise AdapterError(
                    f"{where}: is {m['size']} bytes, more than the {max_size} allowed"
                )
        done = run_ostree(
            ["cat", f"--repo={self.repo}", commit, prefixes[-1]],
            ostree_bin=self.ostree_bin,
            timeout=60.0,
            max_stdout=max_size,
            stop_on_overflow=True,
        )
        if done.stdout_truncated:
            raise AdapterError(f"{where}: more than the {max_size} bytes allowed")
        return done.stdout.encode("utf-8", "surrogateescape")

    def kernel_args(self, deployment: Deployment) -> list[str]:
        """Kernel arguments of a deployment's boot entry (the `options` line)."""
        opts = boot_entry_options(self.sysroot, deployment)
        return [a for a in opts if not a.startswith("ostree=")]

    # --- space --------------------------------------------------------------------------------

    def estimate_space(self, src_repo: Path, commit: str) -> SpaceEstimate:
        """Bytes the commit's objects not yet in the sysroot repo will take once pulled.

        The commit's objects come from `rootfs_space.closure` (dirtrees read and checksummed,
        file objects only stat'ed: no second pass over the stick); those already in the sysroot
        repo cost nothing. Each new object's size on the stick (compressed: a lower bound) is
        rounded up to the filesystem block plus one block for its inode/metadata, and a fixed
        allowance covers the deployment (/etc copy, kernel); `PullWatch` guards the rest.
        libostree refuses to write past `min-free-space-*` of the sysroot repo, so that reserve
        is counted too: our refusal then predicts ostree's instead of racing it.
        The stick's repo is checked (`stick_repo`) before ostree opens it.
        """
        check_commit(commit)
        stick_repo.check_repo(src_repo)
        return self._estimate(src_repo, commit)

    def _estimate(self, src_repo: Path, commit: str) -> SpaceEstimate:
        st = os.statvfs(self.repo)
        block = st.f_frsize or 4096
        found = rootfs_space.closure(src_repo, commit, self.repo, block)
        return SpaceEstimate(
            needed_bytes=found.new_blocks_bytes + self.deploy_allowance,
            new_objects=found.new_objects,
            free_bytes=self._free_space(self.repo),
            reserved_bytes=self._min_free_reserve(st.f_blocks * st.f_frsize),
            read_bytes=found.new_bytes,
        )

    def _min_free_reserve(self, fs_size: int) -> int:
        cfg = configparser.ConfigParser()
        try:
            cfg.read(self.repo / "config")
        except configparser.Error:
            return fs_size * _OSTREE_DEFAULT_MIN_FREE_PERCENT // 100
        size = cfg.get("core", "min-free-space-size", fallback="").strip()
        if size:
            return parse_size(size)
        pct = cfg.get("core", "min-free-space-percent", fallback="").strip()
        try:
            percent = int(pct) if pct else _OSTREE_DEFAULT_MIN_FREE_PERCENT
        except ValueError:
            percent = _OSTREE_DEFAULT_MIN_FREE_PERCENT
        return fs_size * percent // 100

    def check_space(self, src_repo: Path, commit: str) -> SpaceEstimate:
        """Raise NoSpaceError (60) with the numbers when the pull would not fit."""
        return self._sufficient(self.estimate_space(src_repo, commit), commit)

    def _sufficient(self, est: SpaceEstimate, commit: str) -> SpaceEstimate:
        if not est.sufficient:
            raise NoSpaceError(
                f"not enough space in {self.repo} for commit {commit[:12]}: need "
                f"{est.needed_bytes} bytes ({est.new_objects} new objects) plus "
                f"{est.reserved_bytes} bytes ostree keeps free, but only {est.free_bytes} "
                "bytes are free"
            )
        return est

    # --- changing -----------------------------------------------------------------------------

    def pull(self, src_repo: Path, commit: str, *, check_space: bool = True) -> None:
        """Copy one commit from the bundle's repo, letting ostree verify every object.

        The stick's repo is walked once (`stick_repo`), before the estimate and the pull. While
        ostree pulls, `PullWatch` counts what it reads into the running progress meter and stops
        it (exit 60) before the filesystem falls under ostree's reserve plus the deployment's.
        """
        check_commit(commit)
        walked = stick_repo.check_repo(src_repo)
        logger.debug("stick repo checked", entries=walked.entries, seconds=walked.seconds)
        est = self._estimate(src_repo, commit)
        if check_space:
            self._sufficient(est, commit)
        progress.expect(est.read_bytes)
        floor = est.reserved_bytes + self.deploy_allowance // 2 if check_space else 0
        watch = rootfs_space.PullWatch(self.repo, self._free_space, floor, progress.active())
        with watch:
            done = run_ostree(
                ["pull-local", "--untrusted", f"--repo={self.repo}", str(src_repo), commit],
                ostree_bin=self.ostree_bin,
                check=False,
                timeout=self.pull_timeout,
            )
        if watch.stopped_for_space and done.returncode != 0:
            raise NoSpaceError(
                f"ostree pull-local stopped: {self.repo} would fall under {floor} bytes free "
                f"for commit {commit[:12]} ({est.needed_bytes} bytes estimated)"
            )
        if done.returncode != 0:
            raise content_error(done, commit)
        if not self.has_commit(commit):
            raise AdapterError(f"ostree pull-local {commit} reported success but it is missing")

    def deploy(self, commit: str) -> Deployment:
        """Make `commit` the next boot, keeping the merge deployment's kernel arguments.

        A commit that already is the newest deployment is not deployed again: ostree would add
        a second deployment of it and prune the one we need to roll back to.
        """
        check_commit(commit)
        current = self.deployments()
        if current and current[0].commit == commit:
            return current[0]
        if not self.has_commit(commit):
            raise ContentMissingError(f"commit {commit} is not in {self.repo}: pull it first")
        done = run_ostree(
            ["admin", "deploy", f"--sysroot={self.sysroot}", f"--os={self.osname}", commit],
            ostree_bin=self.ostree_bin,
            check=False,
        )
        if done.returncode != 0:
            logger.debug("ostree admin deploy failed", code=done.returncode, tail=done.detail)
            if is_enospc(done.stderr):
                raise NoSpaceError(f"not enough space to deploy commit {commit[:12]}")
            raise AdapterError(proc.failed_reason("ostree admin deploy", done.returncode))
        after = self.deployments()
        if not after or after[0].commit != commit:
            raise AdapterError(f"ostree admin deploy {commit}: not the default deployment after")
        return after[0]

    def install(self, src_repo: Path, commit: str) -> Deployment:
        """Pull (space-checked, verified) then deploy."""
        if not self.has_commit(commit):
            self.pull(src_repo, commit)
        return self.deploy(commit)

    def rollback_to(self, commit: str) -> Deployment:
        """Make an older commit (still in the repo) the next boot again.

        When the newest deployment is not the booted one and the next one is `commit` (the
        bootloader already rolled back onto it), dropping the newest is enough: no new
        deployment, no reboot. Otherwise `commit` is deployed again (a reboot finishes it);
        ostree has no `set-default` in every version we meet.
        """
        check_commit(commit)
        deps = self.deployments()
        if deps and deps[0].commit == commit:
            return deps[0]
        if (
            len(deps) > 1
            and deps[1].commit == commit
            and not deps[0].booted
            and self.booted_commit() != deps[0].commit
        ):
            self.undeploy(deps[0].index)
            after = self.deployments()
            if after and after[0].commit == commit:
                return after[0]
            raise AdapterError(f"ostree admin undeploy 0: {commit} is not the default after")
        return self.deploy(commit)

    def undeploy(self, index: int) -> None:
        """Remove one deployment (e.g. a failed one after the bootloader rolled back)."""
        self._ostree("admin", "undeploy", f"--sysroot={self.sysroot}", str(index))

    def prune(self, *, keep_dirs: Optional[frozenset[str]] = None) -> None:
        """Delete deployments ostree no longer tracks and every object no deployment needs.

        With `keep_dirs` (what `object_dirs()` said before a pull), the `objects/XX` fan-out
        directories the pull created and the prune emptied go too: ostree leaves them, and a
        refused install must not leave a fresh repo 1 MiB fuller than it found it.
        """
        self._ostree("admin", "cleanup", f"--sysroot={self.sysroot}")
        if keep_dirs is None:
            return
        for name in self.object_dirs() - keep_dirs:
            try:
                (self.repo / "objects" / name).rmdir()  # only when empty
            except OSError:
                continue

    def object_dirs(self) -> frozenset[str]:
        """The repo's `objects/XX` fan-out directories that exist now."""
        try:
            return frozenset(p.name for p in (self.repo / "objects").iterdir() if p.is_dir())
        except OSError:
            return frozenset()
