"""Facts about the machine usbupdater runs on: the OCI platform its images must be built for."""

from __future__ import annotations

import platform
import struct
from typing import Optional

# `uname -m` -> (OCI architecture, variant). composectl takes its platform from containerd's
# `platforms.DefaultSpec()` (composeapp pkg/compose/v1/config.go, NewDefaultConfig), which for ARM
# reads the variant from the CPU (containerd/platforms cpuinfo_linux.go, getCPUVariantFromArch:
# armv7* -> v7, armv6* -> v6, aarch64 -> v8); here the machine name gives the same answer.
_MACHINES: dict[str, tuple[str, Optional[str]]] = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "i386": ("386", None),
    "i486": ("386", None),
    "i586": ("386", None),
    "i686": ("386", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv8l": ("arm", "v7"),  # 32-bit userland on an ARMv8 CPU runs arm/v7 images
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv6": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "armv5tejl": ("arm", "v5"),
    "armv5l": ("arm", "v5"),
}


def docker_platform(machine: str, pointer_bits: int = 64) -> tuple[str, Optional[str]]:
    """(architecture, variant) of the images a machine runs, from its `uname -m` name.

    `pointer_bits` is the userland's word size: a 32-bit ARM userland on a 64-bit kernel reports
    "aarch64" but its Docker engine is an arm (v7) one. Unknown names pass through lower-cased,
    with no variant.
    """
    m = machine.strip().lower()
    arch, variant = _MACHINES.get(m, (m, None))
    if arch == "arm64" and pointer_bits == 32:
        return "arm", "v7"
    return arch, variant


def machine_platform() -> tuple[str, Optional[str]]:
    """(architecture, variant) of this machine (see `docker_platform`)."""
    return docker_platform(platform.machine(), struct.calcsize("P") * 8)


def machine_arch() -> str:
    """The Docker/OCI architecture name of this machine (amd64, arm64, arm, ...)."""
    return machine_platform()[0]
