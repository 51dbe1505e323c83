"""Parsing ostree output: robust to markers, other OSes and lines we do not know."""

from __future__ import annotations

from usbupdater.ostree_cli import parse_deploy_dir, parse_ls, parse_status

A = "a" * 64
B = "b" * 64
C = "c" * 64

STATUS = f"""\
  lmp {A}.1 (pending)
    Version: 3
    origin refspec: {A}
* lmp {B}.0
    Version: 2
    Unlocked: development
    GPG: Signature made ...
  other {C}.0 (rollback)
    origin refspec: {C}
  lmp {C}.2 (rollback)
"""


def test_parse_status() -> None:
    deps = parse_status(STATUS)
    assert [(d.osname, d.commit, d.serial, d.booted) for d in deps] == [
        ("lmp", A, 1, False),
        ("lmp", B, 0, True),
        ("other", C, 0, False),
        ("lmp", C, 2, False),
    ]
    assert [d.index for d in deps] == [0, 1, 2, 3]
    assert deps[1].dirname == f"{B}.0"
    assert parse_status("No deployments.\n") == []
    assert parse_status("") == []


def test_parse_ls_skips_directories_and_dedups() -> None:
    text = f"""\
d00755 0 0      0 {A} {B} /
-00644 0 0 100000 {B} /usr/big
-00644 0 0 100000 {B} /usr/big-copy
l00777 0 0      0 {C} /usr/lib/osr -> os-release
garbage line
"""
    assert parse_ls(text) == {B: ("-", 100000), C: ("l", 0)}


def test_parse_deploy_dir() -> None:
    assert parse_deploy_dir(f"{A}.12") == (A, 12)
    assert parse_deploy_dir(f"{A}.origin") is None
    assert parse_deploy_dir("0") is None
