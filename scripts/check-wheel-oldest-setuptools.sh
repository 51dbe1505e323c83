#!/usr/bin/env bash
# Build the wheel with the oldest setuptools pyproject.toml claims (`requires`), as a Yocto/LmP
# build does: no build isolation, the build backend from the environment. Yocto ships setuptools
# 69.1.1 (scarthgap), 72.1.0 (styhead), 76.0.0 (walnascar); [project] metadata needs >= 61.
# Needs PyPI (or a pip mirror) for setuptools and wheel. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
oldest=$(sed -n 's/^requires = \["setuptools>=\([0-9.]*\)"\]$/\1/p' pyproject.toml)
[ -n "$oldest" ] || { echo "cannot read the setuptools floor from pyproject.toml" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "setuptools==$oldest" wheel
# A clean copy of what is committed: no build/ or egg-info of an earlier build leaks in.
git archive --format=tar HEAD | tar -C "$work" -x --one-top-level=tree
cp pyproject.toml "$work/tree/"  # the working tree's, so an uncommitted change is tested too
(cd "$work/tree" && "$work/venv/bin/pip" wheel -q --no-deps --no-build-isolation -w "$work/dist" .)
wheel=$(ls "$work"/dist/usbupdater-*.whl)
"$work/venv/bin/python" - "$wheel" "$oldest" <<'PY'
import sys, zipfile
wheel, oldest = sys.argv[1], sys.argv[2]
names = zipfile.ZipFile(wheel).namelist()
meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA")))
text = meta.decode()
assert "License: Apache-2.0" in text, "the license is not in the metadata"
assert any(n.endswith(".dist-info/LICENSE") for n in names), "LICENSE is not in the wheel"
missing = {"usbupdater/cli.py", "usbupdater/py.typed"} - set(names)
assert not missing, f"not in the wheel: {sorted(missing)}"
print(f"wheel built with setuptools {oldest}: {wheel.rsplit('/', 1)[-1]}, {len(names)} files")
PY
