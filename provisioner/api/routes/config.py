"""Admin plane: groups, images, leases, settings, counters, audit log, API tokens, health."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, status
from fastapi.responses import JSONResponse

from provisioner.api.auth import Authority, Principal
from provisioner.api.context import ApiContext
from provisioner.api.paging import CURSOR, checked_cursor
from provisioner.api.schemas import (
    AuditOut,
    AuditPage,
    GroupCreate,
    GroupOut,
    GroupPatch,
    Health,
    ImageOut,
    ImageVersionOut,
    LeaseOut,
    SetCurrent,
    TaskHealth,
    TokenCreate,
    TokenCreated,
    TokenOut,
    group_out,
    lease_out,
)
from provisioner.errors import StoreUnavailable
from provisioner.images.format.catalog import ImageCatalog, ImageInfo, ImageVersion, pins
from provisioner.nodes.model import REDACTED, Group, check_power, redact
from provisioner.runtime.supervisor import TaskState
from provisioner.security.tokens import ApiToken, Role
from provisioner.web.errors import error_body, responses

WRITE = responses(400, 401, 403, 404, 409, 413, 422)
#: how long /healthz waits for the store's status: a load balancer's probe must not hang
HEALTH_STORE_TIMEOUT = 2.0
_SECRET_WORDS = ("password", "secret")


def router(ctx: ApiContext, auth: Authority) -> APIRouter:
    api = APIRouter(prefix="/api/v1")
    _groups(api, ctx, auth)
    _images(api, ctx, auth)
    _admin(api, ctx, auth)
    return api


def _groups(api: APIRouter, ctx: ApiContext, auth: Authority) -> None:
    viewer, admin = auth.need(Role.VIEWER), auth.need(Role.ADMIN)
    inv = ctx.inventory
    tags: list[str | enum.Enum] = ["groups"]

    @api.get("/groups", response_model=list[GroupOut], tags=tags,
             responses=responses(401, 403))
    async def list_groups(_: Principal = viewer) -> list[GroupOut]:
        return [group_out(g) for g in sorted(await inv.list_groups(), key=lambda g: g.name)]

    @api.get("/groups/{name}", response_model=GroupOut, tags=tags,
             responses=responses(401, 403, 404, 422))
    async def get_group(name: str, _: Principal = viewer) -> GroupOut:
        return group_out((await inv.get_group(name)).value)

    @api.post("/groups", response_model=GroupOut, status_code=status.HTTP_201_CREATED,
              tags=tags, responses=WRITE)
    async def create_group(body: GroupCreate, who: Principal = admin) -> GroupOut:
        group = Group(body.name, body.settings, body.description)
        check_power({**ctx.settings.defaults, **group.settings})
        await inv.add_group(group)
        await ctx.audit.record(who.who, "group.create", group.name, "ok", ctx.clock())
        return group_out(group)

    @api.patch("/groups/{name}", response_model=GroupOut, tags=tags, responses=WRITE)
    async def patch_group(name: str, body: GroupPatch, who: Principal = admin) -> GroupOut:
        def change(group: Group) -> Group:
            changed = Group(group.name,
                            body.settings if body.settings is not None else group.settings,
                            body.description if body.description is not None
                            else group.description)
            check_power({**ctx.settings.defaults, **changed.settings})
            return changed

        group = await inv.update_group(name, change)
        await ctx.audit.record(who.who, "group.update", name, "ok", ctx.clock())
        return group_out(group)

    @api.delete("/groups/{name}", status_code=status.HTTP_204_NO_CONTENT, tags=tags,
                responses=responses(401, 403, 404, 409, 422))
    async def delete_group(name: str, who: Principal = admin) -> None:
        """Delete an empty group (409 lists the nodes still in it)."""
        await inv.delete_group(name)
        await ctx.audit.record(who.who, "group.delete", name, "ok", ctx.clock())


def _version_out(image: ImageVersion, nodes: int) -> ImageVersionOut:
    manifest: Mapping[str, Any] = image.manifest
    files = manifest.get("files", {})
    return ImageVersionOut(
        name=image.name, version=image.version, current=image.current,
        kernel_release=manifest.get("kernel_release"), created=manifest.get("created"),
        files={k: dict(v) for k, v in files.items()} if isinstance(files, dict) else {},
        nodes=nodes)


def _image_out(ctx: ApiContext, info: ImageInfo) -> ImageOut:
    images = [n.image for n in ctx.inventory.cached_nodes() if n.image]

    def users(version: ImageVersion) -> int:
        refs = {version.ref} | ({version.name} if version.current else set())
        return sum(1 for ref in images if ref in refs)

    return ImageOut(name=info.name, current=info.current,
                    versions=[_version_out(v, users(v)) for v in info.versions])


def _images(api: APIRouter, ctx: ApiContext, auth: Authority) -> None:
    viewer, admin = auth.need(Role.VIEWER), auth.need(Role.ADMIN)
    tags: list[str | enum.Enum] = ["images"]

    @api.get("/images", response_model=list[ImageOut], tags=tags,
             responses=responses(401, 403))
    async def list_images(_: Principal = viewer) -> list[ImageOut]:
        """Built images and their versions (build them with `provisioner image build`)."""
        return [_image_out(ctx, ctx.catalog.show(name)) for name in ctx.catalog.names()]

    @api.get("/images/{name}", response_model=ImageOut, tags=tags,
             responses=responses(401, 403, 404, 422))
    async def show_image(name: str, _: Principal = viewer) -> ImageOut:
        return _image_out(ctx, ctx.catalog.show(name))

    @api.put("/images/{name}/current", response_model=ImageOut, tags=tags, responses=WRITE)
    async def set_current(name: str, body: SetCurrent, who: Principal = admin) -> ImageOut:
        """Make VERSION the one nodes with image NAME boot next."""
        ctx.catalog.set_current(name, body.version)
        await ctx.audit.record(who.who, "image.set_current", f"{name}:{body.version}", "ok",
                               ctx.clock())
        return _image_out(ctx, ctx.catalog.show(name))

    @api.post("/images/{name}/prune", tags=tags, responses=WRITE)
    async def prune(name: str, who: Principal = admin) -> dict[str, Any]:
        """Delete versions beyond the newest [images] keep; never the current one, nor one
        that a node, a group or the defaults pin (`image=NAME:VERSION`). `kept` says why."""
        inv = ctx.inventory  # the store, not the cache: a pin just set must hold
        found = pins(await inv.list_nodes(), await inv.list_groups(), ctx.settings.defaults)
        done = ImageCatalog(ctx.catalog.root, ctx.catalog.keep, pinned=found).prune(name)
        result = {"name": name, "pruned": done.deleted, "kept": done.kept}
        await ctx.audit.record(who.who, "image.prune", name, "ok", ctx.clock(), detail=result)
        return result


def _admin(api: APIRouter, ctx: ApiContext, auth: Authority) -> None:
    viewer, admin = auth.need(Role.VIEWER), auth.need(Role.ADMIN)

    @api.get("/leases", response_model=list[LeaseOut], tags=["leases"],
             responses=responses(401, 403))
    async def list_leases(_: Principal = viewer) -> list[LeaseOut]:
        leases = sorted(await ctx.inventory.list_leases(), key=lambda lease: lease.ip)
        return [lease_out(lease) for lease in leases]

    @api.get("/settings", tags=["settings"], responses=responses(401, 403))
    async def settings_view(_: Principal = viewer) -> dict[str, Any]:
        """The appliance's effective settings, secrets redacted."""
        return settings_shown(ctx)

    @api.get("/counters", tags=["settings"], responses=responses(401, 403))
    async def counters(_: Principal = viewer) -> dict[str, dict[str, int]]:
        """Per-service counters: DHCP messages and drops, TFTP transfers, boot requests."""
        found = ctx.counters() if ctx.counters is not None else {}
        return {name: dict(values) for name, values in found.items()}

    @api.get("/audit", response_model=AuditPage, tags=["audit"],
             responses=responses(400, 401, 403, 422))
    async def audit(limit: int = Query(100, ge=1, le=1000, description="entries per page"),
                    cursor: str | None = CURSOR,
                    action: str | None = Query(None, max_length=64),
                    _: Principal = admin) -> AuditPage:
        """The audit log, newest first, a page at a time."""
        entries, after = await ctx.audit.page(limit=limit, after=checked_cursor(cursor),
                                              action=action)
        return AuditPage(items=[AuditOut.model_validate(e.to_dict()) for e in entries],
                         next_cursor=after or None)

    _tokens(api, ctx, admin)


def _token_out(token: ApiToken) -> TokenOut:
    return TokenOut(id=token.id, name=token.name, role=token.role.label, created=token.created)


def _tokens(api: APIRouter, ctx: ApiContext, admin: Any) -> None:
    tags: list[str | enum.Enum] = ["tokens"]

    @api.get("/tokens", response_model=list[TokenOut], tags=tags,
             responses=responses(401, 403))
    async def list_tokens(_: Principal = admin) -> list[TokenOut]:
        return [_token_out(t) for t in await ctx.api_tokens.list()]

    @api.post("/tokens", response_model=TokenCreated, status_code=status.HTTP_201_CREATED,
              tags=tags, responses=responses(400, 401, 403, 413, 422))
    async def create_token(body: TokenCreate, who: Principal = admin) -> TokenCreated:
        """A new bearer token; the secret is in this answer only."""
        token, secret = await ctx.api_tokens.create(Role.parse(body.role), body.name,
                                                    ctx.clock())
        await ctx.audit.record(who.who, "token.create", token.id, "ok", ctx.clock(),
                               detail={"role": body.role, "name": body.name})
        return TokenCreated(**_token_out(token).model_dump(), token=secret)

    @api.delete("/tokens/{token_id}", response_model=TokenOut, tags=tags,
                responses=responses(401, 403, 404, 422))
    async def revoke_token(token_id: str, who: Principal = admin) -> TokenOut:
        token = await ctx.api_tokens.revoke(token_id)
        await ctx.audit.record(who.who, "token.revoke", token.id, "ok", ctx.clock())
        return _token_out(token)


def settings_shown(ctx: ApiContext) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for f in dataclasses.fields(ctx.settings):
        value = getattr(ctx.settings, f.name)
        data[f.name] = (dataclasses.asdict(value) if dataclasses.is_dataclass(value)
                       and not isinstance(value, type) else value)
    data["defaults"] = redact(dict(ctx.settings.defaults))
    shown: dict[str, Any] = _scrub(data)
    return shown


def _scrub(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if (key.endswith(_SECRET_WORDS) or key == "token") and value not in ("", None):
        return REDACTED
    return value


def health_router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["health"])

    @api.get("/healthz", response_model=Health, responses=responses(503))
    async def health() -> Health | JSONResponse:
        """No auth: for load balancers and `provisioner serve` checks. 503 while the store
        does not answer in time, this head is fenced (ha/membership.py) or a background task is
        down (restarting)."""
        try:
            found = await asyncio.wait_for(ctx.inventory.store.status(), HEALTH_STORE_TIMEOUT)
        except (TimeoutError, StoreUnavailable, OSError) as exc:
            reason = str(exc) or f"no answer in {HEALTH_STORE_TIMEOUT:g} s"
            return JSONResponse(error_body("store_unavailable", f"the store is unreachable "
                                           f"({reason}); check the [store] settings and that "
                                           "the store runs"), status_code=503)
        if fence := ctx.fenced():
            return JSONResponse(error_body("fenced", f"this head is fenced: {fence}; it "
                                           "offers no new DHCP lease and issues no boot token "
                                           "until its store session is back (check that the "
                                           "store is reachable from this head)"),
                                status_code=503)
        tasks = ctx.supervisor.states() if ctx.supervisor is not None else []
        down = [t for t in tasks if t.down]
        if down:
            return JSONResponse(error_body("task_down", _down_message(down)), status_code=503)
        return Health(status="ok", store=found.backend, revision=found.revision,
                      tasks=[_task_health(t) for t in tasks])

    return api


def _task_health(task: TaskState) -> TaskHealth:
    return TaskHealth(name=task.name, status=task.status, since=task.since,
                      restarts=task.restarts, last_error=task.last_error)


def _down_message(down: list[TaskState]) -> str:
    parts = [f"{t.name} restarting since {t.since:.0f} after {t.restarts} restart(s), last "
             f"error: {t.last_error}" for t in down]
    return ("background task(s) down: " + "; ".join(parts)
            + "; the appliance log has the traceback")
