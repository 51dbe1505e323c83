"""Which bundle of a stick that holds several is for this device: a pure decision.

A stick may carry one bundle per kind of device, each in its own top-level directory (several
`fioctl targets offline-update` runs). Each directory gets a verdict from its verified metadata
(stick_bundles.py): it fits when a target there is installable on this device, and then offers
that target's version. The decision: no fit, "no bundle for this device" with each directory's
reason; one fit or one with the newest offer, that one; several with the same newest offer, a
refusal (which is newer is the question the technician must answer, not us).

Directory names come from the stick: they are escaped (`textsafe`) wherever they are shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from usbupdater.errors import ExitCode
from usbupdater.textsafe import safe_text

MAX_SHOWN = 20  # directories named in one message


@dataclass(frozen=True)
class Verdict:
    """What one bundle directory offers this device. `version` is None when it does not fit."""

    name: str
    version: Optional[int] = None  # the newest installable target's version
    target: Optional[str] = None  # and its name
    why: str = ""  # why it does not fit (a verification failure or no target for this device)

    @property
    def fits(self) -> bool:
        return self.version is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": safe_text(self.name, 200),
            "fits": self.fits,
            "version": self.version,
            "target": self.target,
            "why": safe_text(self.why, 300) if self.why else None,
        }


@dataclass(frozen=True)
class Choice:
    chosen: Optional[str]  # the directory to use (a name from the stick, raw)
    code: ExitCode  # 0 chosen, 6 no bundle fits, 1 a tie
    message: str  # for people; every name escaped


def _name(n: str) -> str:
    return safe_text(n, 80) or "(empty name)"


def choose(verdicts: Sequence[Verdict]) -> Choice:
    fitting = [v for v in verdicts if v.version is not None]
    if not fitting:
        listed = "; ".join(
            f"{_name(v.name)}: {safe_text(v.why or 'no target for this device', 200)}"
            for v in verdicts[:MAX_SHOWN]
        )
        more = f"; and {len(verdicts) - MAX_SHOWN} more" if len(verdicts) > MAX_SHOWN else ""
        seen = f"{len(verdicts)} bundle(s) seen: {listed}{more}" if verdicts else "none seen"
        return Choice(None, ExitCode.NO_TARGET, f"no bundle for this device ({seen})")
    best = max(v.version for v in fitting if v.version is not None)
    top = [v for v in fitting if v.version == best]
    if len(top) > 1:
        names = ", ".join(_name(v.name) for v in top[:MAX_SHOWN])
        return Choice(
            None,
            ExitCode.ERROR,
            f"{len(top)} bundles offer this device a target of the same version {best} "
            f"({names}): keep only one of them on the stick",
        )
    v = top[0]
    others = len(fitting) - 1
    also = f"; {others} other bundle(s) fit with older targets" if others else ""
    return Choice(
        v.name,
        ExitCode.OK,
        f"bundle {_name(v.name)}: target {safe_text(v.target or '?', 200)} (version {best}) "
        f"for this device{also}",
    )
