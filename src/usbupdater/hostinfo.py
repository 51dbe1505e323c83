"""Facts about the machine usbupdater runs on."""

from __future__ import annotations

import platform


def machine_arch() -> str:
    """The Docker/OCI architecture name of this machine (amd64, arm64, ...)."""
    m = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(m, m)
