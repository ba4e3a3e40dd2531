"""Admin plane: rolling reimage (`POST /api/v1/reimage`) and its status, over reimage.py.

The rollout runs in the background of the appliance (it takes minutes: drain, wait for idle,
power-cycle, wait for the callback); the answer is 202 with the rollout id, and
`GET /api/v1/reimage/{id}` shows its progress, as `provisioner node reimage --status` does.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, status

from provisioner.api.auth import Authority, Principal
from provisioner.api.context import ApiContext
from provisioner.api.schemas import ReimageAccepted, ReimageRequest, RolloutOut
from provisioner.errors import ProvisionerError
from provisioner.handoff import open_handoff
from provisioner.images.format.catalog import split_ref
from provisioner.nodes.model import Node, setting_values
from provisioner.nodes.rollout import Rollout, RolloutRequest, load_status
from provisioner.power.base import PowerDriver
from provisioner.power.registry import open_power
from provisioner.security.tokens import Role
from provisioner.web.errors import responses

log = logging.getLogger(__name__)


def router(ctx: ApiContext, auth: Authority) -> APIRouter:
    api = APIRouter(prefix="/api/v1", tags=["reimage"])
    viewer, operator = auth.need(Role.VIEWER), auth.need(Role.OPERATOR)

    @api.post("/reimage", response_model=ReimageAccepted, status_code=status.HTTP_202_ACCEPTED,
              responses=responses(400, 401, 403, 404, 409, 413, 422))
    async def reimage(body: ReimageRequest, who: Principal = operator) -> ReimageAccepted:
        """Start a rolling reimage: drain, power-cycle into the new image, wait for its
        callback, resume; in waves, stopping after `max_failures` failed nodes."""
        names = [(await ctx.inventory.get_node(ref)).value.name for ref in body.nodes]
        image = ctx.catalog.resolve(body.image)  # 404 before anything is drained
        _, pinned = split_ref(body.image)
        request = RolloutRequest(nodes=tuple(names), image=body.image,
                                 version=pinned or image.version, wave=body.wave,
                                 max_failures=body.max_failures, force=body.force)
        rollout = await _start(ctx, request)
        await ctx.audit.record(who.who, "reimage.start", rollout, "ok", ctx.clock(),
                               detail={"image": body.image, "nodes": names[:50]})
        return ReimageAccepted(id=rollout, nodes=names, image=body.image, status="running")

    @api.get("/reimage/{rollout_id}", response_model=RolloutOut,
             responses=responses(401, 403, 404, 422))
    async def rollout_status(rollout_id: str, _: Principal = viewer) -> RolloutOut:
        """A rollout's progress; `latest` for the most recent one."""
        found = await load_status(ctx.inventory, None if rollout_id == "latest" else rollout_id)
        return RolloutOut.model_validate(found.to_dict())

    return api


async def _start(ctx: ApiContext, request: RolloutRequest) -> str:
    async def power_for(node: Node) -> PowerDriver:
        effective = await ctx.inventory.effective(node, ctx.settings.defaults)
        return open_power(setting_values(effective), node=node.name)

    handoff = open_handoff(ctx.settings)
    # resumable: the appliance takes it up again after a stop or a crash (nodes/resume.py)
    rollout = Rollout(ctx.inventory, ctx.lifecycle, handoff, power_for, clock=ctx.clock,
                      resumable=True)

    try:
        status = await rollout.start(request)  # LockHeld (409) while another rollout runs
    except BaseException:
        await handoff.close()
        raise

    async def run() -> None:
        try:
            await rollout.execute(request)
        except ProvisionerError as exc:
            log.warning("reimage: %s", exc)
        finally:
            await handoff.close()

    task = asyncio.get_running_loop().create_task(run(), name="reimage")
    ctx.tasks.add(task)
    task.add_done_callback(ctx.tasks.discard)
    return status.id
