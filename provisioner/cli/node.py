"""`provisioner node ...`: add, list, show, set, accept and delete compute nodes."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import typer

from provisioner.cli import power as power_cli
from provisioner.cli import reimage as reimage_cli
from provisioner.cli.audit import AdminChange, audited, audited_many, local_who
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
from provisioner.nodes.lifecycle import Lifecycle, event_between
from provisioner.nodes.model import (
    BootEvent,
    Effective,
    Firmware,
    Group,
    Lease,
    MacAddress,
    Node,
    NodeState,
    SettingValue,
    check_ipv4,
    check_power,
    effective_settings,
    effective_values,
    parse_enum,
    redact,
    setting_values,
    unique,
)

app = typer.Typer(help="Compute nodes: add, list, show, set, accept, delete.", no_args_is_help=True)
app.command("power")(power_cli.power)
app.command("reimage")(reimage_cli.reimage)

NODE_ARG = typer.Argument(..., help="Node name or MAC address.", show_default=False)


@dataclass(frozen=True)
class Around:
    """What `current` reads once for many nodes: the leases, the groups, the defaults."""

    leases: Sequence[Lease]
    groups: Mapping[str, Group]
    defaults: Mapping[str, SettingValue]
    now: float

    @classmethod
    async def read(cls, inv: Inventory, defaults: Mapping[str, SettingValue]) -> Around:
        groups = {g.name: g for g in await inv.list_groups()}
        return cls(await inv.list_leases(), groups, defaults, time.time())


@dataclass(frozen=True)
class Current:
    """What the store knows of a node beyond its record: the address it has now, the image it
    boots (its own, a group's or the default) and the version it last booted (None: none)."""

    ip: str | None = None
    #: "lease" (DHCP, until `expires`) or "reserved" (the node's own ip, no active lease)
    ip_source: str | None = None
    expires: float | None = None
    image: str | None = None
    image_source: str | None = None  # "node", "group:NAME" or "default"
    version: str | None = None


async def current(inv: Inventory, node: Node, around: Around) -> Current:
    """The node's active bound lease (a reserved address is leased too), else its reserved
    address; its effective image; and the image version of its last boot (the boot plane
    records it in the events of the boot script it served and of the callback)."""
    lease = max((le for le in around.leases if le.mac == node.mac and le.state == "bound"
                 and le.active(around.now)), key=lambda le: le.expires, default=None)
    version = next((str(e.detail["version"]) for e in reversed(await inv.list_events(node.mac))
                    if e.detail.get("version")), None)
    image = effective_settings(node, around.groups, around.defaults).get("image")
    booted = Current(image=str(image.value) if image else None,
                     image_source=image.source if image else None, version=version)
    if lease is not None:
        return dataclasses.replace(booted, ip=str(lease.ip), ip_source="lease",
                                   expires=lease.expires)
    if node.ip is not None:
        return dataclasses.replace(booted, ip=str(node.ip), ip_source="reserved")
    return booted


def shown(node: Node, now: Current | None = None) -> dict[str, Any]:
    """A node as the CLI shows it (the fields of the API's NodeOut, built here: importing the
    API schemas costs the CLI 360 ms): secrets redacted; with `now`, its current address and
    image version too."""
    data: dict[str, Any] = {
        "mac": node.mac.value, "name": node.name, "ip": str(node.ip) if node.ip else None,
        "groups": list(node.groups), "image": node.image, "firmware": node.firmware.value,
        "state": node.state.value, "settings": redact(node.settings),
        "hardware": dict(node.hardware)}
    if now is not None:
        data |= {"current_ip": now.ip, "current_ip_source": now.ip_source,
                 "lease_expires": now.expires, "effective_image": now.image,
                 "image_source": now.image_source, "image_version": now.version}
    return data


def _ip_text(now: Current) -> str | None:
    if now.ip_source == "lease" and now.expires is not None:
        until = time.strftime("%H:%M:%S", time.localtime(now.expires))
        return f"{now.ip} (DHCP lease until {until})"
    return f"{now.ip} (reserved, no active lease)" if now.ip else None


def _image_text(now: Current) -> str | None:
    if now.image is None or now.image_source == "node":
        return now.image
    return f"{now.image} (from {now.image_source})"


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
    defaults = state(ctx).settings.defaults

    async def act(inv: Inventory, _: AdminChange) -> None:
        for group in node.groups:
            await inv.get_group(group)  # refuse a node in a group that does not exist
        check_power(setting_values(await inv.effective(node, defaults)))
        await inv.add_node(node)

    audited(ctx, AdminChange("node.create", node.mac.value, {"name": node.name}), act)
    if as_json:
        print_json(shown(node))
    else:
        typer.echo(f"added node {node.name} ({node.mac})")


@app.command("list")
def list_(
    ctx: typer.Context,
    node_state: str | None = typer.Option(None, "--state", help="Only nodes in this state."),
    group: str | None = typer.Option(None, "--group", help="Only members of this group."),
    image: str | None = typer.Option(None, "--image", help="Only nodes on this image: NAME "
                                     "(any version) or NAME:VERSION."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List nodes, sorted by name, with each one's current address and image version."""
    wanted = parse_enum(NodeState, node_state, "state") if node_state else None

    defaults = state(ctx).settings.defaults

    async def act(inv: Inventory) -> list[tuple[Node, Current]]:
        found = await inv.list_nodes(state=wanted, group=group, image=image)
        around = await Around.read(inv, defaults)
        return [(n, await current(inv, n, around)) for n in found]

    rows = with_inventory(ctx, act, read=True)
    rows.sort(key=lambda row: row[0].name)
    if as_json:
        print_json([shown(n, c) for n, c in rows])
        return
    print_table(["name", "mac", "ip", "state", "image", "version", "groups", "firmware"],
                [[n.name, n.mac, c.ip, n.state, c.image, c.version, ",".join(n.groups),
                  n.firmware] for n, c in rows])


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

    async def act(inv: Inventory) -> tuple[Node, Current, dict[str, Effective]]:
        node = (await inv.get_node(ref)).value
        now = await current(inv, node, await Around.read(inv, defaults))
        return node, now, (await inv.effective(node, defaults) if effective else {})

    node, now, resolved = with_inventory(ctx, act, read=True)
    if as_json:
        data = shown(node, now)
        if effective:
            values = redact(setting_values(resolved))
            data["effective"] = {k: {"value": values[k], "source": e.source}
                                 for k, e in resolved.items()}
        print_json(data)
        return
    print_fields([("name", node.name), ("mac", node.mac), ("ip", _ip_text(now)),
                  ("state", node.state), ("firmware", node.firmware), ("image", _image_text(now)),
                  ("version", now.version), ("groups", ", ".join(node.groups))])
    _show_settings(node, resolved, effective)


def _show_settings(node: Node, resolved: dict[str, Effective], effective: bool) -> None:
    if effective:
        values = redact(setting_values(resolved))
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
    node_state: str | None = typer.Option(None, "--state", help="Move to this state, as the "
                                          "lifecycle allows from the current one."),
    sets: list[str] = typer.Option([], "--set", help="Setting KEY=VALUE (repeatable)."),
    unsets: list[str] = typer.Option([], "--unset", help="Remove a setting (repeatable)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """AdminChange a node; only the options given change."""
    assignments = parse_assignments(sets)
    new_state = parse_enum(NodeState, node_state, "state") if node_state else None
    defaults = state(ctx).settings.defaults
    given = {"name": name, "ip": ip, "groups": groups or None, "add_groups": add_groups,
             "remove_groups": remove_groups, "image": image, "state": node_state,
             "settings": sets, "unset": unsets}

    def changed(node: Node, known: Mapping[str, Group]) -> Node:
        group_list = list(groups) if groups else list(node.groups)
        group_list = [g for g in unique(group_list + add_groups) if g not in remove_groups]
        settings = {k: v for k, v in {**node.settings, **assignments}.items() if k not in unsets}
        moved = node.with_changes(
            name=name if name is not None else node.name,
            ip=(check_ipv4(ip) if ip else None) if ip is not None else node.ip,
            groups=tuple(group_list),
            image=(image or None) if image is not None else node.image,
            settings=settings,
        )
        check_power(effective_values(moved, known, defaults))
        return moved

    async def act(inv: Inventory, change: AdminChange) -> Node:
        for group in unique(list(groups or []) + add_groups):
            await inv.get_group(group)
        before = (await inv.get_node(ref)).value
        change.target = before.mac.value
        if new_state is not None and new_state is not before.state:
            event_between(before, new_state)  # refuse an illegal move before changing anything
        known = {g.name: g for g in await inv.list_groups()}
        node = await inv.update_node(ref, lambda n: changed(n, known))
        if new_state is not None and new_state is not node.state:
            node = await Lifecycle(inv, defaults=defaults).set_state(
                node.mac, new_state, reason=f"set by {local_who()}")
        return node

    for key in unsets:
        if key in assignments:
            raise ValidationError(key, "cannot be both --set and --unset")
    node = audited(ctx, AdminChange("node.update", ref,
                               {"fields": sorted(k for k, v in given.items() if v)}), act)
    if as_json:
        print_json(shown(node))
    else:
        typer.echo(f"updated node {node.name} ({node.mac})")


@app.command("delete")
def delete(ctx: typer.Context, refs: list[str] = typer.Argument(..., help="Names or MACs.",
                                                                show_default=False)) -> None:
    """Delete nodes. Their leases and events stay until they expire."""

    async def act(inv: Inventory, change: AdminChange) -> Node:
        node = await inv.delete_node(change.target)
        change.target, change.detail["name"] = node.mac.value, node.name
        return node

    for node in audited_many(ctx, [AdminChange("node.delete", ref) for ref in refs], act):
        typer.echo(f"deleted node {node.name} ({node.mac})")


@app.command("accept")
def accept(ctx: typer.Context, refs: list[str] = typer.Argument(..., help="Names or MACs.",
                                                                show_default=False)) -> None:
    """Accept discovered nodes: they are registered and boot their image from their next
    boot script on (until then they only wait)."""
    who = local_who()

    async def act(inv: Inventory, change: AdminChange) -> Node:
        node = await Lifecycle(inv).accept(change.target, by=who)
        change.target, change.detail["name"] = node.mac.value, node.name
        return node

    for node in audited_many(ctx, [AdminChange("node.accept", ref) for ref in refs], act):
        typer.echo(f"accepted node {node.name} ({node.mac}): it boots from its next script")


@app.command("events")
def events(ctx: typer.Context, ref: str = NODE_ARG,
           limit: int = typer.Option(200, "--limit", "-n", min=1, max=100_000,
                                     help="Show the newest N events."),
           every: bool = typer.Option(False, "--all", help="Show every event kept."),
           as_json: bool = JSON_OPTION) -> None:
    """The node's timeline: its newest events, and how long it stayed in each state."""
    from provisioner.nodes.timeline import timeline

    async def act(inv: Inventory) -> tuple[Node, list[BootEvent], bool]:
        node = (await inv.get_node(ref)).value
        if every:
            return node, await inv.list_events(node.mac), False
        return node, *await inv.latest_events(node.mac, limit)

    node, found, older = with_inventory(ctx, act, read=True)
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
    if older:
        typer.echo(f"(the newest {limit} events; older ones: --limit N or --all)")


def _clock(at: float) -> str:
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
