"""Nodes on several images and versions, and what each `--image` filter must select: NAME
selects every version of NAME (and a node whose image has no version), NAME:VERSION only that
version. Shared by the inventory, CLI and API tests so all three read the filter alike."""

from __future__ import annotations

from typing import Final

#: (MAC, name, image) of the nodes the tests register
NODES: Final = [
    ("52:54:00:00:02:01", "plain", "compute"),
    ("52:54:00:00:02:02", "one", "compute:1"),
    ("52:54:00:00:02:03", "two", "compute:2"),
    ("52:54:00:00:02:04", "lookalike", "computex:1"),  # shares a prefix, not the name
    ("52:54:00:00:02:05", "other", "base:2"),
    ("52:54:00:00:02:06", "bare", None),
]


def wanted(image: str) -> list[str]:
    """The names `--image image` selects, sorted: the rule written out from its definition."""
    name, _, version = image.partition(":")
    picked = []
    for _, node, on in NODES:
        if on is None:
            continue
        on_name, _, on_version = on.partition(":")
        if on_name == name and (not version or on_version == version):
            picked.append(node)
    return sorted(picked)


FILTERS: Final = ["compute", "compute:2", "compute:1", "computex", "base:1", "base"]
