"""Admin plane: nodes (list, show, create, change, delete, accept), their timeline and power."""

from __future__ import annotations

import ipaddress
from typing import Any

from fastapi import APIRouter, Query, status

from provisioner.api.auth import Authority, Principal
from provisioner.api.context import ApiContext
from provisioner.api.paging import CURSOR, checked_cursor
from provisioner.api.routes.guard import admin_for_power, safe_power
from provisioner.api.schemas import (
    EventOut,
    NodeCreate,
    NodeOut,
    NodePage,
    NodePatch,
    PowerRequest,
    PowerResult,
    Timeline,
    node_out,
)
from provisioner.nodes.model import (
    Firmware,
    MacAddress,
    Node,
    NodeState,
    check_ipv4,
    setting_values,
)
from provisioner.nodes.retries import power_cycled
from provisioner.nodes.timeline import timeline
from provisioner.power.base import power_action
from provisioner.power.registry import open_power
from provisioner.security.tokens import Role
from provisioner.web.errors import responses

READ = responses(401, 403, 404, 422)
WRITE = responses(400, 401, 403, 404, 409, 413, 422)


def router(ctx: ApiContext, auth: Authority) -> APIRouter:
    api = APIRouter(prefix="/api/v1", tags=["nodes"])
    viewer, operator = auth.need(Role.VIEWER), auth.need(Role.OPERATOR)
    inv = ctx.inventory

    @api.get("/nodes", response_model=NodePage, responses=responses(401, 403, 422))
    async def list_nodes(
        limit: int = Query(100, ge=1, le=1000, description="nodes per page"),
        cursor: str | None = Query(None, max_length=64, description="next_cursor of the "
                                   "previous page"),
        state: NodeState | None = None,
        group: str | None = Query(None, max_length=63),
        image: str | None = Query(None, max_length=128, description="NAME or NAME:VERSION"),
        _: Principal = viewer,
    ) -> NodePage:
        """Nodes sorted by name, a page at a time, filtered by state, group or image."""
        page, after = inv.page_nodes(limit=limit, cursor=cursor, state=state, group=group,
                                     image=image)
        return NodePage(items=[node_out(n) for n in page], next_cursor=after)

    @api.get("/nodes/{ref}", response_model=NodeOut, responses=READ)
    async def get_node(ref: str, _: Principal = viewer) -> NodeOut:
        """One node by MAC (any common form) or name."""
        return node_out((await inv.get_node(ref)).value)

    @api.post("/nodes", response_model=NodeOut, status_code=status.HTTP_201_CREATED,
              responses=WRITE)
    async def create_node(body: NodeCreate, who: Principal = operator) -> NodeOut:
        """Register a node by the MAC of its provisioning interface."""
        node = Node(MacAddress(body.mac), body.name, ip=check_ipv4(body.ip) if body.ip else None,
                    groups=tuple(body.groups), image=body.image,
                    firmware=Firmware(body.firmware), settings=body.settings)
        await admin_for_power(ctx, who, "node.create", node.mac.value, before={},
                              after=node.settings)
        for group in node.groups:
            await inv.get_group(group)
        await safe_power(ctx, node)
        revision = await inv.add_node(node)
        await inv.settle(revision)
        await ctx.audit.record(who.who, "node.create", node.mac.value, "ok", ctx.clock(),
                               detail={"name": node.name})
        return node_out(node)

    @api.patch("/nodes/{ref}", response_model=NodeOut, responses=WRITE)
    async def patch_node(ref: str, body: NodePatch, who: Principal = operator) -> NodeOut:
        """Change a node; only the fields given change. `state` is checked against the
        lifecycle table (409 names the states allowed from the current one)."""
        for group in body.groups or ():
            await inv.get_group(group)
        fields = body.model_dump(exclude_unset=True, exclude={"state"})
        before = (await inv.get_node(ref)).value
        after = _patched(before, fields)
        await admin_for_power(ctx, who, "node.update", before.mac.value,
                              before=before.settings, after=after.settings)
        await safe_power(ctx, after)
        versioned = await inv.update_node_versioned(ref, lambda n: _patched(n, fields))
        node = versioned.value
        if body.state is not None and body.state is not node.state:
            node = await ctx.lifecycle.set_state(node.mac, body.state,
                                                 reason=f"set by {who.who}")
        await inv.settle(versioned.revision)
        await ctx.audit.record(who.who, "node.update", node.mac.value, "ok", ctx.clock(),
                               detail={"fields": sorted(body.model_dump(exclude_unset=True))})
        return node_out(node)

    @api.delete("/nodes/{ref}", response_model=NodeOut,
                responses=responses(401, 403, 404, 409, 422))
    async def delete_node(ref: str, who: Principal = operator) -> NodeOut:
        """Delete a node; its leases and events stay until they expire."""
        node = await inv.delete_node(ref)
        await ctx.audit.record(who.who, "node.delete", node.mac.value, "ok", ctx.clock(),
                               detail={"name": node.name})
        return node_out(node)

    _actions(api, ctx, auth)
    return api


def _actions(api: APIRouter, ctx: ApiContext, auth: Authority) -> None:
    viewer, operator = auth.need(Role.VIEWER), auth.need(Role.OPERATOR)
    admin = auth.need(Role.ADMIN)
    inv = ctx.inventory

    @api.get("/nodes/{ref}/events", response_model=Timeline,
             responses=responses(400, 401, 403, 404, 422))
    async def node_events(ref: str, limit: int = Query(200, ge=1, le=1000,
                                                       description="events per page"),
                          cursor: str | None = CURSOR, _: Principal = viewer) -> Timeline:
        """The node's timeline, oldest first, a page at a time: its events and the time spent
        in each state (on a page with a next one, the last state's duration is null)."""
        after = checked_cursor(cursor)
        node = (await inv.get_node(ref)).value
        found, after = await inv.events_page(node.mac, after=after, limit=limit)
        entries = timeline(found, None if after else ctx.clock())
        events = [EventOut(kind=e.event.kind, at=e.event.at, offset=e.offset,
                           state=NodeState(e.state) if e.state else None, duration=e.duration,
                           detail=dict(e.event.detail)) for e in entries]
        return Timeline(mac=node.mac.value, name=node.name, state=node.state, events=events,
                        next_cursor=after or None)

    @api.post("/nodes/{ref}/accept", response_model=NodeOut, responses=WRITE)
    async def accept(ref: str, who: Principal = admin) -> NodeOut:
        """Accept a discovered node: it is registered and boots its image from its next boot
        script on. Until then it only gets a script that waits (409 for any other state)."""
        node = await ctx.lifecycle.accept(ref, by=who.who)
        await ctx.audit.record(who.who, "node.accept", node.mac.value, "ok", ctx.clock(),
                               detail={"name": node.name})
        return node_out(node)

    @api.post("/nodes/{ref}/power", response_model=PowerResult,
              responses=responses(400, 401, 403, 404, 413, 422, 502))
    async def power(ref: str, body: PowerRequest, who: Principal = operator) -> PowerResult:
        """Power on, off, cycle (hard reset) or read the state, through the node's
        power_driver setting."""
        node = (await inv.get_node(ref)).value
        effective = await inv.effective(node, ctx.settings.defaults)
        driver = open_power(setting_values(effective), node=node.name)
        try:
            state = await power_action(driver, body.action)
            if body.action == "cycle":  # its boot is watched from now on (nodes/retries.py)
                await inv.add_event(power_cycled(node.mac, ctx.clock(), by=who.who))
        finally:
            if body.action != "status":
                await ctx.audit.record(who.who, f"power.{body.action}", node.mac.value, "ok",
                                       ctx.clock())
        return PowerResult(node=node.name, action=body.action, power=str(state))


def _patched(node: Node, fields: dict[str, Any]) -> Node:
    changes: dict[str, Any] = {}
    if "name" in fields and fields["name"] is not None:
        changes["name"] = fields["name"]
    if "ip" in fields:
        changes["ip"] = ipaddress.IPv4Address(check_ipv4(fields["ip"])) if fields["ip"] else None
    if fields.get("groups") is not None:
        changes["groups"] = tuple(fields["groups"])
    if "image" in fields:
        changes["image"] = fields["image"] or None
    if fields.get("settings") is not None:
        changes["settings"] = fields["settings"]
    return node.with_changes(**changes)
