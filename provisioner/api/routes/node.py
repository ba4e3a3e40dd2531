"""Node plane: `POST /node/v1/booted`, the boot callback from a node's /init.

No bearer token here: the node proves who it is with the one-boot token that was packed into
its overlay. Every refusal answers the same 401 body, whatever the reason (wrong, expired,
replayed, another node's, none issued), and changes nothing but the audit log.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from provisioner.api.context import ApiContext
from provisioner.api.errors import responses
from provisioner.api.schemas import BootedIn, BootedOut
from provisioner.errors import ValidationError
from provisioner.model import MacAddress
from provisioner.tokens import BootTokenRefused


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(prefix="/node/v1", tags=["node plane"])

    @api.post("/booted", response_model=BootedOut,
              responses=responses(400, 401, 404, 409, 413, 422))
    async def booted(body: BootedIn) -> BootedOut:
        """The node booted its image: check its one-boot token (single use), store its
        hardware facts and hand it to the scheduler."""
        try:
            mac = MacAddress(body.mac)
        except ValidationError:
            await ctx.audit.record(f"node:{body.mac[:32]}", "boot_token.redeem", body.mac[:32],
                                   "denied", ctx.clock(), detail={"reason": "not a MAC"})
            raise BootTokenRefused("not a MAC") from None
        who = f"node:{mac.value}"
        try:
            await ctx.boot_tokens.redeem(mac, body.token, ctx.clock())
        except BootTokenRefused as exc:
            await ctx.audit.record(who, "boot_token.redeem", mac.value, "denied", ctx.clock(),
                                   detail={"reason": exc.reason})
            raise
        used = ctx.audit.record(who, "boot_token.redeem", mac.value, "ok", ctx.clock(),
                                detail={"image": body.image, "version": body.version})
        facts = body.facts.model_dump()
        # The audit entry and the state change are written together (one commit, not two).
        node, _ = await asyncio.gather(
            ctx.lifecycle.booted(mac, facts, body.version, body.image or None), used)
        return BootedOut(state=node.state, node=node.name, mac=node.mac.value)

    return api

