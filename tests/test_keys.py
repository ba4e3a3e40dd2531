"""The store key layout lives in inventory/keys.py alone: no other module of provisioner/ spells
a key prefix, every kind of key is in LAYOUT with the module that writes it, and the table the
architecture notes show is generated from LAYOUT."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.inventory import keys

PACKAGE = Path(keys.__file__).resolve().parents[1]
KEYS_PY = Path(keys.__file__).resolve()
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"
ROOTS = (keys.ROOT, keys.SCHED_ROOT)
#: "nodes/", "reimage/", ...: what a module would glue to an imported root
SEGMENTS = {entry.prefix.removeprefix(root) for entry in keys.LAYOUT for root in ROOTS
            if entry.prefix.startswith(root)}
#: a root followed by a path segment, anywhere in the text (code, docstrings, comments)
SPELLED = re.compile("|".join(re.escape(root) + r"[a-z_]" for root in ROOTS))


def spelled_keys(source: str) -> list[str]:
    """The store key spellings in `source`: a root with a segment anywhere in the text, a
    string literal starting with a root, or a literal segment such as "reimage/"."""
    found = [match.group() for match in SPELLED.finditer(source)]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if text.startswith(tuple(root.rstrip("/") for root in ROOTS)) or text in SEGMENTS:
                found.append(text)
    return found


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.resolve() != KEYS_PY)


def test_the_scan_finds_every_way_of_spelling_a_key() -> None:
    spelled = [
        'NODES = "/provisioner/v1/nodes/"',
        'key = f"/provisioner/v1/events/{mac}/{seq}"',
        'REIMAGE = ROOT + "reimage/"',
        'ROOT = "/provisioner/v1/"',
        'JOBS = "/scheduler/v1/jobs/"',
        '"""Writes /provisioner/v1/outbox/<mac>."""',
        "x = 1  # under /scheduler/v1/nodes/<name>",
    ]
    for source in spelled:
        assert spelled_keys(source), source
    for source in ('ROUTE = "/api/v1/nodes"', 'server.route("/boot/nodes/", f)',
                   'NODES = keys.NODES', 'key = keys.event(mac, keys.seq(at))',
                   '"""Keys are absolute paths: `/provisioner/v1/...`."""'):
        assert spelled_keys(source) == [], source


def test_no_module_but_keys_py_spells_a_store_key() -> None:
    scanned = sources()
    assert len(scanned) > 50 and PACKAGE / "inventory" / "repository.py" in scanned
    offenders = {str(path.relative_to(PACKAGE.parent)): spelled
                 for path in scanned if (spelled := spelled_keys(path.read_text()))}
    assert offenders == {}, "build store keys with provisioner.inventory.keys"


def _key_constants() -> dict[str, str]:
    """keys.py's prefix constants (not the roots): NAME -> value."""
    return {name: value for name, value in vars(keys).items()
            if name.isupper() and isinstance(value, str) and value.startswith(ROOTS)
            and value not in ROOTS}


def _key_builders() -> set[str]:
    """keys.py's functions that return a whole key (not a prefix, a sequence, a page cursor,
    a part read back from a key, or the table)."""
    return {name for name, value in vars(keys).items()
            if inspect.isfunction(value) and value.__module__ == keys.__name__
            and name not in {"seq", "events", "markdown_table", "is_seq", "seq_of", "seq_time",
                             "events_past", "event_mac"}}


def test_layout_has_every_prefix_and_builder_once() -> None:
    constants = _key_constants()
    assert sorted(e.prefix for e in keys.LAYOUT) == sorted(constants.values())
    assert sorted(e.builder for e in keys.LAYOUT) == sorted(_key_builders())
    prefixes = [e.prefix for e in keys.LAYOUT]
    for prefix in prefixes:
        # a watch or a range on one prefix must never see another kind of key
        assert [p for p in prefixes if p.startswith(prefix)] == [prefix]


@pytest.mark.parametrize("entry", keys.LAYOUT, ids=lambda e: e.builder)
def test_each_builder_spells_its_pattern(entry: keys.Key) -> None:
    builder = getattr(keys, entry.builder)
    args: list[object] = [f"arg{i}" for i in range(len(inspect.signature(builder).parameters))]
    key = builder(*args)
    assert key.startswith(entry.prefix) and key.count("/") == entry.pattern.count("/")


@pytest.mark.parametrize("entry", keys.LAYOUT, ids=lambda e: e.builder)
def test_each_owner_builds_its_keys_through_keys_py(entry: keys.Key) -> None:
    spec = importlib.util.find_spec(entry.owner)
    assert spec is not None and spec.origin is not None, f"{entry.owner} does not exist"
    tree = ast.parse(Path(spec.origin).read_text())
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "keys"}
    constant = next(name for name, value in _key_constants().items() if value == entry.prefix)
    assert used & {entry.builder, constant}, f"{entry.owner} does not use keys.{entry.builder}"


def test_the_architecture_table_is_generated_from_layout() -> None:
    table = keys.markdown_table()
    rows = table.splitlines()[2:]
    assert len(rows) == len(keys.LAYOUT)
    for row, entry in zip(rows, keys.LAYOUT, strict=True):
        assert f"`{entry.pattern}`" in row and f"`{entry.owner}`" in row
        assert entry.meaning in row
    printed = subprocess.run([sys.executable, "-m", "provisioner.inventory.keys"], check=True,
                             capture_output=True, text=True).stdout
    assert printed == table
    # docs/architecture.md carries the generated table verbatim
    assert table in ARCHITECTURE.read_text(), (
        "regenerate the key table: python -m provisioner.inventory.keys")
