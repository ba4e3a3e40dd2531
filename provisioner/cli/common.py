"""What every CLI verb shares: settings from the global options, the store, output formats."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import typer

from provisioner.config import Settings, load_settings
from provisioner.errors import ValidationError
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import SettingValue, check_setting
from provisioner.store import open_store

T = TypeVar("T")

JSON_OPTION = typer.Option(False, "--json", help="Print JSON for scripts instead of a table.")


@dataclass
class CliState:
    config: Path | None = None
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config)
        return self._settings


def state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def with_inventory(ctx: typer.Context, action: Callable[[Inventory], Awaitable[T]]) -> T:
    """Open the configured store, run `action` on an Inventory over it, close the store."""
    settings = state(ctx).settings

    async def run() -> T:
        store = open_store(settings)
        try:
            return await action(Inventory(store))
        finally:
            await store.close()

    return asyncio.run(run())


def parse_assignments(pairs: Sequence[str]) -> dict[str, SettingValue]:
    """`key=value` pairs from --set, validated against the known settings."""
    result: dict[str, SettingValue] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValidationError("--set", f"{pair!r} is not KEY=VALUE")
        result[key.strip()] = check_setting(key.strip(), value)
    return result


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain aligned table: readable in a terminal, greppable, no colours."""
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    sys.stdout.write("\n".join(lines) + "\n")


def print_fields(fields: Sequence[tuple[str, object]]) -> None:
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        shown = "-" if value is None or value in ("", ()) else value
        typer.echo(f"{key + ':':<{width + 1}} {shown}")
