"""`expanded_nodes`: a compose file's size once YAML aliases are expanded, measured without
expanding them (a "billion laughs" file is refused at verification, before compose sees it)."""

from __future__ import annotations

import time

import yaml

from usbupdater.apps.project import MAX_COMPOSE_NODES, expanded_nodes


def laughs(levels: int) -> str:
    lines = ["l0: &l0 [ha, ha, ha, ha, ha, ha, ha, ha, ha, ha]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\nservices: {s: {image: x}}\n"


def test_a_billion_laughs_is_measured_quickly_and_over_the_limit() -> None:
    doc = yaml.safe_load(laughs(9))
    t0 = time.monotonic()
    assert expanded_nodes(doc, MAX_COMPOSE_NODES) > MAX_COMPOSE_NODES
    assert time.monotonic() - t0 < 1.0


def test_anchors_of_an_ordinary_compose_file_are_fine() -> None:
    text = (
        "x-common: &common {restart: always, labels: [a=1, b=2]}\n"
        "services:\n"
        "  web: {<<: *common, image: 'h/f/web@sha256:" + "0" * 64 + "'}\n"
        "  db: {<<: *common, image: 'h/f/db@sha256:" + "1" * 64 + "'}\n"
    )
    assert expanded_nodes(yaml.safe_load(text), MAX_COMPOSE_NODES) < 100


def test_exact_counts() -> None:
    assert expanded_nodes("x", 10) == 1
    assert expanded_nodes([], 10) == 1
    assert expanded_nodes({"a": [1, 2]}, 10) == 5  # dict, key, list, two items
    shared = [1, 2, 3]
    assert expanded_nodes([shared, shared], 100) == 9  # each use counts in full
    assert expanded_nodes(yaml.safe_load(laughs(2)), 10) > 10  # stops past the limit
