"""The layout holds: modules stay small, imports form no circle, docs/architecture.md is true.

A module over MAX_LINES does more than one job; a circle between two modules means neither
can be read (or tested) without the other. Both are cheap to check and easy to let slip.
"""

from __future__ import annotations

from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "provisioner"
MAX_LINES = 450
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_the_line_limit() -> None:
    too_long = {str(p.relative_to(ROOT)): n for p in _modules()
                if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines (split them by job): {too_long}"


def _circles() -> set[tuple[str, str]]:
    """Pairs of modules that import each other, directly or through others."""
    graph = grimp.build_graph("provisioner", exclude_type_checking_imports=True)
    circles: set[tuple[str, str]] = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if not imported.startswith("provisioner"):
                continue
            if graph.find_shortest_chain(importer=imported, imported=module):
                a, b = sorted((module, imported))
                circles.add((a, b))
    return circles


def test_no_import_circle() -> None:
    assert not _circles(), f"modules that import each other: {sorted(_circles())}"


def test_every_package_is_described_in_the_architecture() -> None:
    text = ARCHITECTURE.read_text()
    packages = sorted(p.parent.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("__init__.py"))
    missing = [pkg for pkg in packages if f"`{pkg}/`" not in text]
    assert not missing, f"packages docs/architecture.md does not describe: {missing}"


def test_every_module_the_architecture_names_exists() -> None:
    text = ARCHITECTURE.read_text()
    named = {word.strip("`") for word in text.split() if word.startswith("`provisioner/")
             and word.rstrip("`,.;:)").endswith(".py`")}
    named = {w.rstrip("`,.;:)") for w in named}
    absent = sorted(w for w in named if not (ROOT / w).exists())
    assert not absent, f"docs/architecture.md names modules that do not exist: {absent}"


def test_a_class_name_means_one_thing() -> None:
    """Two classes of one name in two modules make a grep (and a reader) find the wrong one."""
    seen: dict[str, list[str]] = {}
    for path in _modules():
        for line in path.read_text().splitlines():
            if line.startswith("class "):
                name = line[6:].split("(")[0].split(":")[0].strip()
                seen.setdefault(name, []).append(str(path.relative_to(ROOT)))
    twice = {name: where for name, where in seen.items() if len(where) > 1}
    assert not twice, f"class names defined in more than one module: {twice}"
