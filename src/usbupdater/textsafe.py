"""Text from the stick (folder and target names, a tool's reason) made safe to show people.

A name on the stick may hold terminal escapes (`ESC [2J` clears a technician's console), carriage
returns and newlines (a forged second status line), bidi overrides (U+202E shows `exe.txt` as
`txt.exe`) or bytes that are not UTF-8 (`os.fsdecode` turns them into lone surrogates, which
cannot be encoded and used to end the job with an internal error). `safe_text` turns all of those
into visible escapes and bounds the length, so every output point (console, status file,
sd_notify, report) prints one clean line. Plain text, also non-ASCII letters, is unchanged, and
so is text already made safe (a backslash is kept as it is), so escaping twice on the way to an
output never shows `\\x1b`.
"""

from __future__ import annotations

import unicodedata
from typing import Any

# Unicode categories shown as escapes: controls (C0, DEL, C1), format characters (bidi
# embeddings, overrides and isolates, zero-width characters, BOM), surrogates, unassigned code
# points, and the line/paragraph separators some terminals treat as newlines.
_ESCAPED = frozenset(("Cc", "Cf", "Cs", "Cn", "Zl", "Zp"))
ELLIPSIS = "..."
DEFAULT_MAX = 500


def _escape(ch: str) -> str:
    cp = ord(ch)
    if 0xDC80 <= cp <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape): show the byte
        return f"\\x{cp - 0xDC00:02x}"
    if cp <= 0xFF:
        return f"\\x{cp:02x}"
    return f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}"


def _needs_escape(ch: str) -> bool:
    return unicodedata.category(ch) in _ESCAPED


def safe_text(value: Any, max_len: int = DEFAULT_MAX) -> str:
    """`value` as one printable line: controls, bidi and bad bytes escaped, at most `max_len`
    characters (an escape is never cut in half; "..." marks a cut)."""
    text = value if isinstance(value, str) else str(value)
    max_len = max(max_len, len(ELLIPSIS))
    # Every piece is at least one character: the first max_len + 1 decide everything.
    pieces = [_escape(ch) if _needs_escape(ch) else ch for ch in text[: max_len + 1]]
    if len(text) <= max_len and sum(map(len, pieces)) <= max_len:
        return "".join(pieces)
    out: list[str] = []
    size = 0
    for piece in pieces:
        if size + len(piece) > max_len - len(ELLIPSIS):
            break
        out.append(piece)
        size += len(piece)
    return "".join(out) + ELLIPSIS


def clean(value: Any, max_len: int = DEFAULT_MAX) -> Any:
    """`safe_text` applied to every string in a JSON-like value (dict keys too); numbers, None
    and booleans are kept as they are."""
    if isinstance(value, str):
        return safe_text(value, max_len)
    if isinstance(value, dict):
        return {safe_text(k, max_len): clean(v, max_len) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v, max_len) for v in value]
    return value
