"""`provisioner node ...`: add, list, show, set, accept and delete compute nodes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import typer

from provisioner.cli import power as power_cli
from provisioner.cli import reimage as reimage_cli
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
from provisioner.nodes.model import (
    BootEvent,
    Effective,
    Firmware,
    MacAddress,
    Node,
    NodeState,
    check_ipv4,
    parse_enum,
    redact,
    unique,
)

app = typer.Typer(help="Compute nodes: add, list, show, set, accept, delete.", no_args_is_help=True)
app.command("power")(power_cli.power)
app.command("reimage")(reimage_cli.reimage)

NODE_ARG = typer.Argument(..., help="Node name or MAC address.", show_default=False)


def shown(node: Node) -> dict[str, Any]:
    """A node as the CLI shows it (the fields of the API's NodeOut): secrets redacted."""
    return {"mac": node.mac.value, "name": node.name, "ip": str(node.ip) if node.ip else None,
            "groups": list(node.groups), "image": node.image, "firmware": node.firmware.value,
            "state": node.state.value, "settings": redact(node.settings),
            "hardware": dict(node.hardware)}


@app.command("add")
def add(
    ctx: typer.Context,
    mac: str = typer.Argument(..., help="MAC of the provisioning interface (aa:bb:.., AA-BB-.., "
                              "aabb.ccdd.eeff).", show_default=False),
    name: str = typer.Option(..., "--name", "-n", help="Host name (RFC 1123 label).",
                             show_default=False),
    ip: str | None = typer.Option(None, "--ip", help="Reserved IPv4 address."),
    groups: list[str] = typer.Option([], "--group", "-g", help="Group, in order (repeatable)."),
    image: str | None = typer.Option(None, "--image", help="Image NAME or NAME:VERSION."),
    firmware: str = typer.Option("unknown", "--firmware", help="bios, uefi, ... (DHCP learns it)."),
    sets: list[str] = typer.Option([], "--set", help="Setting KEY=VALUE (repeatable)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Register a node by the MAC of its provisioning interface."""
    node = Node(MacAddress(mac), name, ip=check_ipv4(ip) if ip else None, groups=tuple(groups),
                image=image, firmware=parse_enum(Firmware, firmware, "firmware"),
                settings=parse_assignments(sets))

    async def act(inv: Inventory) -> None:
        for group in node.groups:
            await inv.get_group(group)  # refuse a node in a group that does not exist
        await inv.add_node(node)

    with_inventory(ctx, act)
    if as_json:
        print_json(shown(node))
    else:
        typer.echo(f"added node {node.name} ({node.mac})")


@app.command("list")
def list_(
    ctx: typer.Context,
    node_state: str | None = typer.Option(None, "--state", help="Only nodes in this state."),
    group: str | None = typer.Option(None, "--group", help="Only members of this group."),
    image: str | None = typer.Option(None, "--image", help="Only nodes with this image."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List nodes, sorted by name."""
    wanted = parse_enum(NodeState, node_state, "state") if node_state else None
    nodes = with_inventory(ctx, lambda inv: inv.list_nodes(state=wanted, group=group, image=image))
    nodes.sort(key=lambda n: n.name)
    if as_json:
        print_json([shown(n) for n in nodes])
        return
    print_table(["name", "mac", "ip", "state", "image", "groups", "firmware"],
                [[n.name, n.mac, n.ip, n.state, n.image, ",".join(n.groups), n.firmware]
                 for n in nodes])


@app.command("show")
def show(
    ctx: typer.Context,
    ref: str = NODE_ARG,
    effective: bool = typer.Option(False, "--effective", help="Resolve settings through the "
                                   "defaults and groups, and say where each value came from."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show one node."""
    defaults = state(ctx).settings.defaults

    async def act(inv: Inventory) -> tuple[Node, dict[str, Effective]]:
        node = (await inv.get_node(ref)).value
        return node, (await inv.effective(node, defaults) if effective else {})

    node, resolved = with_inventory(ctx, act)
    if as_json:
        data = shown(node)
        if effective:
            values = redact({k: e.value for k, e in resolved.items()})
            data["effective"] = {k: {"value": values[k], "source": e.source}
                                 for k, e in resolved.items()}
        print_json(data)
        return
    print_fields([("name", node.name), ("mac", node.mac), ("ip", node.ip),
                  ("state", node.state), ("firmware", node.firmware), ("image", node.image),
                  ("groups", ", ".join(node.groups))])
    _show_settings(node, resolved, effective)


def _show_settings(node: Node, resolved: dict[str, Effective], effective: bool) -> None:
    if effective:
        values = redact({k: e.value for k, e in resolved.items()})
        rows: list[list[object]] = [[k, values[k], e.source] for k, e in resolved.items()]
        typer.echo("")
        print_table(["setting", "value", "from"], rows)
    elif node.settings:
        typer.echo("")
        print_table(["setting", "value"], [[k, v] for k, v in redact(node.settings).items()])
    if node.hardware:
        typer.echo("")
        print_table(["fact", "value"], [[k, v] for k, v in sorted(node.hardware.items())])


@app.command("set")
def set_(
    ctx: typer.Context,
    ref: str = NODE_ARG,
    name: str | None = typer.Option(None, "--name", help="New host name."),
    ip: str | None = typer.Option(None, "--ip", help="New reserved address ('' to clear)."),
    groups: list[str] | None = typer.Option(None, "--group", "-g",
                                            help="Replace the group list (repeatable)."),
    add_groups: list[str] = typer.Option([], "--add-group", help="Append a group."),
    remove_groups: list[str] = typer.Option([], "--remove-group", help="Remove a group."),
    image: str | None = typer.Option(None, "--image", help="Image ('' to clear)."),
    node_state: str | None = typer.Option(None, "--state", help="Force a state."),
    sets: list[str] = typer.Option([], "--set", help="Setting KEY=VALUE (repeatable)."),
    unsets: list[str] = typer.Option([], "--unset", help="Remove a setting (repeatable)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Change a node; only the options given change."""
    assignments = parse_assignments(sets)
    new_state = parse_enum(NodeState, node_state, "state") if node_state else None

    def change(node: Node) -> Node:
        group_list = list(groups) if groups else list(node.groups)
        group_list = [g for g in unique(group_list + add_groups) if g not in remove_groups]
        settings = {k: v for k, v in {**node.settings, **assignments}.items() if k not in unsets}
        return node.with_changes(
            name=name if name is not None else node.name,
            ip=(check_ipv4(ip) if ip else None) if ip is not None else node.ip,
            groups=tuple(group_list),
            image=(image or None) if image is not None else node.image,
            state=new_state or node.state,
            settings=settings,
        )

    async def act(inv: Inventory) -> Node:
        for group in unique(list(groups or []) + add_groups):
            await inv.get_group(group)
        return await inv.update_node(ref, change)

    for key in unsets:
        if key in assignments:
            raise ValidationError(key, "cannot be both --set and --unset")
    node = with_inventory(ctx, act)
    if as_json:
        print_json(shown(node))
    else:
        typer.echo(f"updated node {node.name} ({node.mac})")


@app.command("delete")
def delete(ctx: typer.Context, refs: list[str] = typer.Argument(..., help="Names or MACs.",
                                                                show_default=False)) -> None:
    """Delete nodes. Their leases and events stay until they expire."""

    async def act(inv: Inventory) -> list[Node]:
        return [await inv.delete_node(ref) for ref in refs]

    for node in with_inventory(ctx, act):
        typer.echo(f"deleted node {node.name} ({node.mac})")


@app.command("accept")
def accept(ctx: typer.Context, refs: list[str] = typer.Argument(..., help="Names or MACs.",
                                                                show_default=False)) -> None:
    """Accept discovered nodes: they are registered and boot their image from their next
    boot script on (until then they only wait)."""
    import getpass

    from provisioner.nodes.lifecycle import Lifecycle

    try:
        who = f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        who = "cli:?"

    async def act(inv: Inventory) -> list[Node]:
        lifecycle = Lifecycle(inv)
        return [await lifecycle.accept(ref, by=who) for ref in refs]

    for node in with_inventory(ctx, act):
        typer.echo(f"accepted node {node.name} ({node.mac}): it boots from its next script")


@app.command("events")
def events(ctx: typer.Context, ref: str = NODE_ARG, as_json: bool = JSON_OPTION) -> None:
    """The node's timeline: every event, and how long it stayed in each state."""
    import time

    from provisioner.nodes.lifecycle import timeline

    async def act(inv: Inventory) -> tuple[Node, list[BootEvent]]:
        node = (await inv.get_node(ref)).value
        return node, await inv.list_events(node.mac)

    node, found = with_inventory(ctx, act)
    entries = timeline(found, time.time())
    if as_json:
        print_json([{"kind": e.event.kind, "at": e.event.at, "offset": e.offset,
                     "state": e.state, "duration": e.duration, "detail": dict(e.event.detail)}
                    for e in entries])
        return
    typer.echo(f"{node.name} ({node.mac}) is {node.state}")
    print_table(["time", "offset", "event", "in state", "detail"],
                [[_clock(e.event.at), f"+{e.offset:.3f}s", e.event.kind,
                  _span(e.duration), _detail(e.event.detail)] for e in entries])


def _clock(at: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def _span(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.3f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m{rest:02d}s" if minutes >= 60 \
        else f"{minutes}m{rest:02d}s"


def _detail(detail: Mapping[str, Any]) -> str:
    text = " ".join(f"{k}={v}" for k, v in detail.items() if v not in (None, "", [], {}))
    return text if len(text) <= 80 else text[:77] + "..."
