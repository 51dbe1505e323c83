"""Trust: turn a bundle's `tuf/` directory into verified metadata (Foundries' TUF dialect).

Trust anchor: the roots shipped in the device image (`<uptane_metadata_path>/{ci,prod}/N.root.json`)
plus the roots the device accepted before (`<state_dir>/tuf/trusted.json`). Signatures are checked
over the original signed JSON (`dialect`), the chain root -> timestamp -> snapshot -> targets and
bundle-targets.json by `trusted_set` (pure), persistence by `store`.

Use::

    session = TrustSession.from_config(config, bundle / "tuf")  # or TrustSession(tuf_dir, ...)
    trusted = session.verify()  # raises SecurityError 11, ExpiredError 12,
    #                             MetadataMissingError 14, BundleMetadataError 15; writes nothing
    ...                         # decide, install
    session.commit()            # persist accepted roots/metadata atomically, advance time floor

The clock is `now` (default: the system clock), raised to
the persisted time floor so that a device booting in 1970 cannot accept long-expired metadata;
`commit()` advances the floor, and `advance_time_floor(store_dir, when)` lets the core record
another time it knows to be true (e.g. a successful `run`).
"""

from __future__ import annotations

from usbupdater.trust.session import (
    TrustedMetadata,
    TrustSession,
    effective_now,
    shipped_roots_dir,
    store_dir,
)
from usbupdater.trust.store import save_time_floor as advance_time_floor
from usbupdater.trust.trusted_set import BundleTargets

__all__ = [
    "BundleTargets",
    "TrustSession",
    "TrustedMetadata",
    "advance_time_floor",
    "effective_now",
    "shipped_roots_dir",
    "store_dir",
]
