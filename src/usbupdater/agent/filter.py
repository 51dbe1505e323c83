"""Which block devices count as update sticks, decided from udev properties alone.

A pure function over the property mapping udev gives (`ID_BUS`, `ID_FS_USAGE`, `ID_FS_TYPE`,
`DEVTYPE`, ...), so the same decision is unit-tested, exercised through umockdev, and applied to
real uevents. Every refusal carries a reason for the debug log.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

from usbupdater.agent.settings import AgentSettings


@dataclass(frozen=True)
class Stick:
    """What the agent knows of a candidate device, copied out of udev's properties."""

    key: str  # DEVPATH: stable while the device exists
    devnode: str
    fs_type: str
    fs_uuid: str = ""
    label: str = ""
    serial: str = ""
    vendor: str = ""
    model: str = ""
    bus: str = ""

    @classmethod
    def from_properties(cls, props: Mapping[str, str]) -> Stick:
        return cls(
            key=props.get("DEVPATH", ""),
            devnode=props.get("DEVNAME", ""),
            fs_type=props.get("ID_FS_TYPE", ""),
            fs_uuid=props.get("ID_FS_UUID", ""),
            label=props.get("ID_FS_LABEL", ""),
            serial=props.get("ID_SERIAL_SHORT", "") or props.get("ID_SERIAL", ""),
            vendor=props.get("ID_VENDOR", ""),
            model=props.get("ID_MODEL", ""),
            bus=props.get("ID_BUS", ""),
        )

    def describe(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v and k != "key"}


def refusal(props: Mapping[str, str], s: AgentSettings) -> Optional[str]:
    """None when the device is an update stick candidate, else why not."""
    if props.get("SUBSYSTEM", "block") != "block":
        return "not a block device"
    if not props.get("DEVNAME"):
        return "no device node"
    devtype = props.get("DEVTYPE", "")
    if s.match_devtypes and devtype not in s.match_devtypes:
        return f"device type {devtype or 'unknown'!r} not in {','.join(s.match_devtypes)}"
    if props.get("ID_CDROM") == "1":
        return "optical drive"
    bus = props.get("ID_BUS", "")
    if s.match_buses and bus not in s.match_buses:
        return f"bus {bus or 'unknown'!r} not in {','.join(s.match_buses)}"
    if props.get("ID_FS_USAGE") != "filesystem":
        return "no filesystem"
    fs = props.get("ID_FS_TYPE", "")
    if s.match_fs_types and fs not in s.match_fs_types:
        return f"filesystem {fs or 'unknown'!r} not in {','.join(s.match_fs_types)}"
    for key, pattern in s.match_properties:
        value = props.get(key, "")
        if not fnmatch.fnmatchcase(value, pattern):
            return f"{key}={value!r} does not match {pattern!r}"
    return None
