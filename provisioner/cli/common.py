"""What every CLI verb shares: the target (settings, chosen by the rule in target.py), the store,
output formats."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import typer

from provisioner.cli.target import Target, resolve
from provisioner.config import Settings
from provisioner.errors import StoreError, ValidationError
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import SettingValue, check_setting
from provisioner.store import open_store
from provisioner.store.base import KeyValueStore

T = TypeVar("T")

JSON_OPTION = typer.Option(False, "--json", help="Print JSON for scripts instead of a table.")


@dataclass
class CliState:
    config: Path | None = None
    _target: Target | None = None

    @property
    def target(self) -> Target:
        if self._target is None:
            self._target = resolve(self.config)
        return self._target

    @property
    def settings(self) -> Settings:
        return self.target.settings

    @property
    def serving_settings(self) -> Settings:
        """The settings a server (`serve`, `scheduler serve`) runs with: never a lab's by
        the lab rule (see target.py)."""
        return resolve(self.config, serving=True).settings


def state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def store_missing(target: Target) -> bool:
    """True when the target's store is an embedded sqlite file not created yet."""
    settings = target.settings
    return settings.store.backend == "sqlite" and not settings.store_path.exists()


def with_store(ctx: typer.Context, action: Callable[[KeyValueStore], Awaitable[T]], *,
               read: bool = False) -> T:
    """Open the target's store, run `action` on it, close it; where the target's servers are
    (inside a lab's namespace for a lab). A read never creates an empty store: it says
    which settings it used instead."""
    target = state(ctx).target
    if read and store_missing(target):
        raise StoreError(f"no store at {target.settings.store_path}: nothing was ever added "
                         f"with these settings ({target.reason}); `provisioner status` shows "
                         "what the CLI uses, -c/--config chooses other settings")

    async def run() -> T:
        store = open_store(target.settings)
        try:
            return await action(store)
        finally:
            await store.close()

    return target.run(run)


def with_inventory(ctx: typer.Context, action: Callable[[Inventory], Awaitable[T]], *,
                   read: bool = False) -> T:
    """`with_store`, with an Inventory over the store."""
    return with_store(ctx, lambda store: action(Inventory(store)), read=read)


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
