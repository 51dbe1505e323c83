"""The one definition of a SHA-256 in hex (64 lowercase digits): OSTree commits and objects,
blob digests, image references. `PATTERN` is for embedding in larger regular expressions."""

from __future__ import annotations

import re

PATTERN = "[0-9a-f]{64}"
_EXACT = re.compile(PATTERN)


def is_sha256_hex(value: str) -> bool:
    """Exactly 64 lowercase hex digits (no prefix, no newline)."""
    return _EXACT.fullmatch(value) is not None
