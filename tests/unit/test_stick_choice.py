"""Choosing the bundle of a stick with several: the core decides, the agent reads its answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pytest

from usbupdater.agent.choose import interpret
from usbupdater.agent.media import NoBundle, find_bundle
from usbupdater.errors import ExitCode
from usbupdater.stick_choice import Verdict, choose


def fit(name: str, version: int) -> Verdict:
    return Verdict(name, version, f"t-{version}")


def no(name: str, why: str = "") -> Verdict:
    return Verdict(name, why=why)


@pytest.mark.parametrize(
    ("verdicts", "chosen", "code", "words"),
    [
        ([], None, ExitCode.NO_TARGET, "no bundle for this device (none seen)"),
        ([fit("a", 2)], "a", ExitCode.OK, "bundle a: target t-2 (version 2)"),
        ([no("a", "for hardware ids x, not y"), fit("b", 1)], "b", ExitCode.OK, "bundle b"),
        ([fit("a", 1), fit("b", 3), fit("c", 2)], "b", ExitCode.OK, "2 other bundle(s) fit"),
        (
            [no("a", "for hardware ids x, not y"), no("b", "bundle tag 'beta' is not one")],
            None,
            ExitCode.NO_TARGET,
            "2 bundle(s) seen: a: for hardware ids x, not y; b: bundle tag 'beta' is not one",
        ),
        ([no("a")], None, ExitCode.NO_TARGET, "a: no target for this device"),
        ([fit("a", 2), fit("b", 2), fit("c", 1)], None, ExitCode.ERROR, "same version 2 (a, b)"),
        ([fit("a\x1b]0;x\x07", 2), fit("b", 2)], None, ExitCode.ERROR, "a\\x1b]0;x\\x07, b"),
        ([no("\u202eevil", "x\ny")], None, ExitCode.NO_TARGET, "\\u202eevil: x\\x0ay"),
    ],
)
def test_choose(verdicts: list[Verdict], chosen: Optional[str], code: ExitCode, words: str) -> None:
    c = choose(verdicts)
    assert (c.chosen, c.code) == (chosen, code)
    assert words in c.message
    assert all(ch.isprintable() for ch in c.message)


def test_choose_bounds_the_names_listed() -> None:
    c = choose([no(f"b{i}", "x") for i in range(100)])
    assert "and 80 more" in c.message and "b99" not in c.message


NAMES = ["a", "b"]


@pytest.mark.parametrize(
    ("code", "stdout", "chosen", "words"),
    [
        (0, json.dumps({"chosen": "a", "message": "bundle a: target t"}), "a", "bundle a"),
        (0, json.dumps({"chosen": "../etc", "message": "m"}), None, "no bundle found"),
        (0, json.dumps({"chosen": "c"}), None, "no bundle found on the stick"),
        (0, "not json", None, "no bundle found"),
        (
            6,
            json.dumps({"chosen": None, "message": "no bundle for this device (...)"}),
            None,
            "no bundle for this device",
        ),
        (1, json.dumps({"message": "2 bundles offer \x1b[2J"}), None, "2 bundles offer \\x1b[2J"),
        (1, "", None, "the reason"),
        (None, "", None, "cannot choose a bundle: the reason"),
        (2, "[" * 100_000, None, "the reason"),
    ],
)
def test_agent_reads_pick(
    code: Optional[int], stdout: str, chosen: Optional[str], words: str
) -> None:
    got, message = interpret(code, stdout, NAMES, "the reason")
    assert got == chosen
    assert words in message
    assert "\x1b" not in message


def bundle(root: Path, name: str) -> None:
    (root / name / "tuf").mkdir(parents=True)
    (root / name / "tuf" / "targets.json").write_text("{}")


def test_find_bundle_asks_the_chooser_only_for_several(tmp_path: Path) -> None:
    bundle(tmp_path, "one")
    asked: list[list[str]] = []

    def chooser(root: Path, names: list[str]) -> str:
        asked.append(names)
        return names[-1]

    assert find_bundle(tmp_path, "u", chooser).path == tmp_path / "one"
    assert asked == []
    bundle(tmp_path, "two")
    with pytest.raises(NoBundle, match="several bundles"):
        find_bundle(tmp_path, "u")  # no chooser (aklite-offline): today's refusal
    found = find_bundle(tmp_path, "u", chooser)
    assert asked == [["one", "two"]] and found.path == tmp_path / "two"
    assert ":two:" in found.identity
    with pytest.raises(NoBundle, match="not on the stick"):
        find_bundle(tmp_path, "u", lambda root, names: "..")


def test_aklite_offline_cannot_choose_so_several_bundles_are_refused(tmp_path: Path) -> None:
    from usbupdater.agent import dialect as d
    from usbupdater.agent.backend import Updater
    from usbupdater.agent.choose import CoreChooser
    from usbupdater.agent.settings import AgentSettings

    bundle(tmp_path, "one")
    bundle(tmp_path, "two")
    marker = tmp_path / "called"
    argv = ("/bin/sh", "-c", f"touch {marker}", "sh")  # would record any call of the core
    chooser = CoreChooser(Updater(AgentSettings(updater_command=argv, updater_dialect=d.AKLITE_V2)))
    with pytest.raises(NoBundle, match=r"several bundles on the stick \(one, two\).*cannot choose"):
        find_bundle(tmp_path, "u", chooser)
    assert not marker.exists()


def test_the_core_is_asked_with_the_mount_point(tmp_path: Path) -> None:
    from usbupdater.agent.backend import Updater
    from usbupdater.agent.choose import CoreChooser
    from usbupdater.agent.settings import AgentSettings

    bundle(tmp_path / "stick", "one")
    bundle(tmp_path / "stick", "two")
    args = tmp_path / "args"
    answer = json.dumps({"chosen": "two", "code": 0, "message": "bundle two: target t"})
    script = tmp_path / "core.sh"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {args}\necho '{answer}'\n")
    script.chmod(0o755)
    chooser = CoreChooser(Updater(AgentSettings(updater_command=(str(script),))))
    found = find_bundle(tmp_path / "stick", "u", chooser)
    assert found.path == tmp_path / "stick" / "two"
    assert args.read_text().split()[:4] == ["pick", "-s", str(tmp_path / "stick"), "--json"]
