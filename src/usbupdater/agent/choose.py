"""Which bundle of a stick with several the service installs: the core decides, the agent asks.

Whether a bundle is for this device is a question for verified metadata, and the agent knows the
core only through its command line. So the service runs `usbupdater pick -s MOUNTPOINT --json`
(stick_choice.py decides, from each directory's metadata verified with the device's trust) and
takes the directory it names only if it is one the agent itself found on the stick. Cores that
have no `pick` (aklite-offline) keep the one-bundle rule: a stick with several is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from usbupdater import log
from usbupdater.agent import dialect as dialects
from usbupdater.agent.backend import Updater
from usbupdater.agent.media import NoBundle
from usbupdater.textsafe import safe_text

MAX_MESSAGE = 600


def interpret(
    code: Optional[int], stdout: str, names: list[str], reason: str = ""
) -> tuple[Optional[str], str]:
    """(the directory to use or None, the message for people) from what `pick` returned."""
    try:
        doc = json.loads(stdout) if stdout.strip() else None
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        doc = {}
    chosen, message = doc.get("chosen"), doc.get("message")
    text = safe_text(message, MAX_MESSAGE) if isinstance(message, str) and message else ""
    if code is None:
        return None, safe_text(f"cannot choose a bundle: {reason or 'the updater did not finish'}")
    if code == 0 and isinstance(chosen, str) and chosen in names:
        return chosen, text or f"bundle {safe_text(chosen, 80)}"
    if code == 0:
        return None, "the updater chose no bundle found on the stick"
    return None, text or safe_text(reason, MAX_MESSAGE) or f"choosing a bundle failed ({code})"


class CoreChooser:
    """media.find_bundle's `choose` for the service: asks the core, raises NoBundle if none."""

    def __init__(self, updater: Updater) -> None:
        self.updater = updater
        self._log = log.get_logger("choose")

    def __call__(self, root: Path, names: list[str]) -> str:
        shown = safe_text(", ".join(names), 300)
        dialect = self.updater.dialect_now()
        if dialect != dialects.USBUPDATER:
            raise NoBundle(
                f"several bundles on the stick ({shown}): keep one ({dialect} cannot choose)"
            )
        out = self.updater.call(["pick", "-s", str(root), "--json"])
        chosen, message = interpret(out.code, out.stdout, names, out.reason)
        self._log.info(
            "bundle chosen" if chosen else "no bundle chosen", bundles=shown, why=message
        )
        if chosen is None:
            raise NoBundle(message)
        return chosen
