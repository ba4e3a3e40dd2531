"""`provisioner group ...`: named sets of settings that nodes inherit, in order."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import typer

from provisioner.cli.audit import AdminChange, audited
from provisioner.cli.common import (
    JSON_OPTION,
    parse_assignments,
    print_fields,
    print_json,
    print_table,
    state,
    with_inventory,
)
from provisioner.errors import ValidationError
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import Group, Node, check_power, redact

app = typer.Typer(help="Groups of settings: add, list, show, set, delete.", no_args_is_help=True)

GROUP_ARG = typer.Argument(..., help="Group name.", show_default=False)


def shown(group: Group, members: list[Node] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"name": group.name, "description": group.description,
                            "settings": redact(group.settings)}
    if members is not None:
        data["nodes"] = sorted(n.name for n in members)
    return data


@app.command("add")
def add(
    ctx: typer.Context,
    name: str = GROUP_ARG,
    sets: list[str] = typer.Option([], "--set", help="Setting KEY=VALUE (repeatable)."),
    description: str = typer.Option("", "--description", "-d", help="What the group is for."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a group."""
    group = Group(name, parse_assignments(sets), description)
    check_power({**state(ctx).settings.defaults, **group.settings})

    async def act(inv: Inventory, _: AdminChange) -> None:
        await inv.add_group(group)

    audited(ctx, AdminChange("group.create", group.name), act)
    if as_json:
        print_json(shown(group))
    else:
        typer.echo(f"added group {group.name}")


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """List groups and how many nodes each has."""

    async def act(inv: Inventory) -> list[tuple[Group, list[Node]]]:
        nodes = await inv.list_nodes()
        return [(g, [n for n in nodes if g.name in n.groups]) for g in await inv.list_groups()]

    rows = with_inventory(ctx, act, read=True)
    if as_json:
        print_json([shown(g, members) for g, members in rows])
        return
    print_table(["name", "nodes", "settings", "description"],
                [[g.name, len(m), ", ".join(f"{k}={v}" for k, v in redact(g.settings).items()),
                  g.description] for g, m in rows])


@app.command("show")
def show(ctx: typer.Context, name: str = GROUP_ARG, as_json: bool = JSON_OPTION) -> None:
    """Show a group, its settings and its members."""

    async def act(inv: Inventory) -> tuple[Group, list[Node]]:
        return (await inv.get_group(name)).value, await inv.list_nodes(group=name)

    group, members = with_inventory(ctx, act, read=True)
    if as_json:
        print_json(shown(group, members))
        return
    print_fields([("name", group.name), ("description", group.description),
                  ("nodes", ", ".join(sorted(n.name for n in members)))])
    if group.settings:
        typer.echo("")
        print_table(["setting", "value"], [[k, v] for k, v in redact(group.settings).items()])


@app.command("set")
def set_(
    ctx: typer.Context,
    name: str = GROUP_ARG,
    sets: list[str] = typer.Option([], "--set", help="Setting KEY=VALUE (repeatable)."),
    unsets: list[str] = typer.Option([], "--unset", help="Remove a setting (repeatable)."),
    description: str | None = typer.Option(None, "--description", "-d"),
    as_json: bool = JSON_OPTION,
) -> None:
    """AdminChange a group's settings; its nodes see the change at their next boot."""
    assignments = parse_assignments(sets)
    for key in unsets:
        if key in assignments:
            raise ValidationError(key, "cannot be both --set and --unset")

    defaults = state(ctx).settings.defaults

    def change(group: Group) -> Group:
        settings = {k: v for k, v in {**group.settings, **assignments}.items() if k not in unsets}
        check_power({**defaults, **settings})
        desc = description if description is not None else group.description
        return replace(group, settings=settings, description=desc)

    async def act(inv: Inventory, _: AdminChange) -> Group:
        return await inv.update_group(name, change)

    group = audited(ctx, AdminChange("group.update", name), act)
    if as_json:
        print_json(shown(group))
    else:
        typer.echo(f"updated group {group.name}")


@app.command("delete")
def delete(ctx: typer.Context, name: str = GROUP_ARG) -> None:
    """Delete a group that no node belongs to."""

    async def act(inv: Inventory, _: AdminChange) -> None:
        await inv.delete_group(name)

    audited(ctx, AdminChange("group.delete", name), act)
    typer.echo(f"deleted group {name}")
