"""Tell aktualizr-lite's database what an offline install did (issue 15 item 2), never failing it.

The core calls `record` under the aklite lock at each step's outcome; this module turns usbupdater's
records into `aklite_db` terms: the target as `saveInstalledVersion` stores it, and the verified
Image-repo metadata the device trusts now (usbupdater's trust store, written only after
verification) so aktualizr-lite's rollback floors and roots move with ours.

Ordering (why the core calls it where it does): `state.json` stays THE commit point.
- `install` records PENDING just after its commit point: before it the install may still be taken
  back, and a pending row for an undone install would make aktualizr-lite mark a good target as
  failing. A kill between the two leaves no pending row; the `run` that follows records the
  outcome (CURRENT or a rollback), so the database converges.
- `run` records its outcome just before its commit point: a kill in between re-runs `run`, which
  records the same outcome again (`aklite_db` makes a repeated record a no-op). After the commit
  point `run` is not re-run ("nothing pending"), so recording after it could be lost.
A database that is missing, of an unknown schema, busy or broken is logged and skipped: the
device's update is decided by `state.json`; undoing a confirmed update because another program's
database could not be written would leave the device worse off.
"""

from __future__ import annotations

from typing import Optional

from usbupdater import aklite_write, log
from usbupdater.aklite_write import Mode
from usbupdater.config import Config
from usbupdater.errors import UpdaterError
from usbupdater.target import TargetRecord
from usbupdater.trust import store as trust_store
from usbupdater.trust.dialect import canonical
from usbupdater.trust.session import store_dir

__all__ = ["Mode", "record"]

logger = log.get_logger("aklite-db")


def _target(t: TargetRecord) -> aklite_write.AkTarget:
    """An OSTree target as aktualizr-lite stores it: length 0, the commit as its sha256."""
    return aklite_write.AkTarget(t.name, t.commit, 0, {"sha256": t.commit}, dict(t.custom))


def _metadata(cfg: Config) -> aklite_write.TufUpdate:
    """The verified metadata usbupdater trusts now (its store holds only verified documents)."""
    docs = trust_store.load_docs(store_dir(cfg))
    top = {role: canonical(doc) for role, doc in docs.top.items()}
    return aklite_write.TufUpdate(
        roots=[canonical(doc) for _, doc in sorted(docs.roots.items())],
        timestamp=top.get("timestamp"),
        snapshot=top.get("snapshot"),
        targets=top.get("targets"),
    )


def record(
    cfg: Config, target: TargetRecord, mode: Mode, failed: Optional[TargetRecord] = None
) -> bool:
    """Record `target` (and `failed`) in aktualizr-lite's database; True if it was written.

    The caller holds the aklite lock. Never raises for the database: see the module docstring.
    """
    path = cfg.storage.sqldb_path
    if not path.exists():
        return False
    try:
        done = aklite_write.record_installed(
            path,
            _target(target),
            mode,
            failed=_target(failed) if failed is not None else None,
            metadata=_metadata(cfg),
        )
    except (UpdaterError, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, UpdaterError) else str(exc)
        logger.error(
            "aktualizr-lite's database was not updated; it may not know this update",
            target=target.name,
            mode=mode.value,
            reason=reason,
        )
        return False
    if not done.written:
        logger.warning("aktualizr-lite's database left unchanged", reason=done.reason)
    return done.written
