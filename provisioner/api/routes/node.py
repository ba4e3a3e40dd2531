"""Node plane: `POST /node/v1/booted`, the boot callback from a node's image, and
`POST /node/v1/init-started`, the step before it in an image whose init is systemd.

No bearer token here: the node proves who it is with the one-boot token that was packed into
its overlay, and by calling from its own address (boot/binding.py): a token copied off a node
is refused from anywhere else with 403, logged once per source per minute, and nothing is
written. Every token refusal answers the same 401 body, whatever the reason (wrong, expired,
replayed, another node's, none issued), and changes nothing but the audit log: the first
refusal from an address at once, the rest of that minute's as one summary entry
(security/refusals.py), so a flood of bad callbacks does not grow the store.

An accepted callback is one read (the token) and one txn: the token's redemption (a CAS delete,
so of two callbacks with one token exactly one commits), the audit entry, the node's move to
booted with its facts, its timeline event and the handoff outbox entry, all or none.

With the builtin scheduler, the answer also carries the node agent's credential of this boot
(`agent_token`, handoff/agent.py): made here, answered once, and never stored or logged in
clear; only its hash goes into the outbox entry, on to the scheduler's record of the node.
The answer waits until the outbox has tried that delivery once (`[handoff] answer_wait`, 2 s at
most by default; the outbox goes on delivering after it): answered at once, the agent's first
poll would reach the scheduler before the hash and be refused (401), and the node would wait
out the agent's backoff (1 s or more) before it could be given work.

`init-started` comes from /init just before it execs systemd; the callback then comes from the
image's provisioner-booted.service once multi-user.target is reached, so `ready` means the
image's services are up. It follows the same trust rules (the node's own address, its one-boot
token, the same refusals) but does not use the token up: it only puts `init_started` on the
timeline of a provisioning node (nodes/lifecycle.py), and a node in any other state gets 409.

`CallbackFastPath` answers this one route without the FastAPI stack (routing, dependency
solving, response-model validation: about two thirds of the CPU of a callback, measured with
bench/api.py at 200 callbacks/s). It runs the same `accept_callback` and translates errors with
the same web/errors.py; any request that is not a plain, bounded, valid JSON body goes to the
full app with its body replayed, so 400, 413 and 422 keep coming from the one place.
"""

from __future__ import annotations

import logging
from typing import Final, NoReturn

import pydantic
from fastapi import APIRouter, Request

from provisioner.api.context import ApiContext
from provisioner.api.schemas import BootedIn, BootedOut, InitStartedIn, InitStartedOut
from provisioner.errors import (
    Forbidden,
    InvalidTransition,
    NotFound,
    ProvisionerError,
    ValidationError,
)
from provisioner.handoff.agent import agent_hash, new_agent_token
from provisioner.nodes.model import MacAddress, Node
from provisioner.security.tokens import BootTokenRefused
from provisioner.store.base import TxnConflict, TxnOp
from provisioner.web.asgi import App, Receive, Scope, Send, send_json
from provisioner.web.errors import INTERNAL, responses, translate
from provisioner.web.limits import MAX_DEPTH, json_depth, replay_body

log = logging.getLogger(__name__)
PATH: Final = "/node/v1/booted"
INIT_PATH: Final = "/node/v1/init-started"


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(prefix="/node/v1", tags=["node plane"])

    @api.post("/booted", response_model=BootedOut,
              responses=responses(400, 401, 403, 404, 409, 413, 422))
    async def booted(body: BootedIn, request: Request) -> BootedOut:
        """The node booted its image: check its one-boot token (single use), store its
        hardware facts and hand it to the scheduler."""
        return await accept_callback(ctx, body, request.client.host if request.client else "")

    @api.post("/init-started", response_model=InitStartedOut,
              responses=responses(400, 401, 403, 404, 409, 413, 422))
    async def init_started(body: InitStartedIn, request: Request) -> InitStartedOut:
        """The node's /init is up and starts the image's systemd: check its one-boot token
        (not used up) and put `init_started` on its timeline."""
        return await accept_init_started(ctx, body,
                                         request.client.host if request.client else "")

    return api


async def accept_init_started(ctx: ApiContext, body: InitStartedIn,
                              client: str) -> InitStartedOut:
    """`init-started` from address `client` (see the module docstring)."""
    mac = await _mac(ctx, body.mac, client, "boot_token.check")
    await _check_address(ctx, mac, client, INIT_PATH)
    try:
        await ctx.boot_tokens.check(mac, body.token, ctx.clock())
    except BootTokenRefused as exc:
        await ctx.refused.refuse(client, f"node:{mac.value}", "boot_token.check", mac.value,
                                 exc.reason)
        raise
    node = await ctx.lifecycle.init_started(mac, body.image or None, body.version)
    return InitStartedOut(state=node.state, node=node.name, mac=node.mac.value)


async def _mac(ctx: ApiContext, text: str, client: str, action: str) -> MacAddress:
    try:
        return MacAddress(text)
    except ValidationError:
        await ctx.refused.refuse(client, f"node:{text[:32]}", action, text[:32], "not a MAC")
        raise BootTokenRefused("not a MAC") from None


async def accept_callback(ctx: ApiContext, body: BootedIn, client: str) -> BootedOut:
    """The boot callback (see the module docstring) from address `client`; raises
    ProvisionerError to refuse."""
    mac = await _mac(ctx, body.mac, client, "boot_token.redeem")
    await _check_address(ctx, mac, client, PATH)
    who = f"node:{mac.value}"
    try:
        redeem = await ctx.boot_tokens.check(mac, body.token, ctx.clock())
    except BootTokenRefused as exc:
        await ctx.refused.refuse(client, who, "boot_token.redeem", mac.value, exc.reason)
        raise

    def writes(node: Node, attempt: int) -> list[TxnOp]:
        used = ctx.audit.op(who, "boot_token.redeem", mac.value, "ok", ctx.clock(),
                            detail={"image": body.image, "version": body.version},
                            bump=attempt)
        return [redeem, used]

    agent_token = new_agent_token() if ctx.settings.handoff.kind == "builtin" else ""
    try:
        node = await ctx.lifecycle.booted(mac, body.facts.model_dump(), body.version,
                                          body.image or None, also=writes,
                                          agent_hash=agent_hash(agent_token) if agent_token
                                          else "")
    except TxnConflict as exc:
        if redeem.key not in exc.keys:
            raise
        await _refuse(ctx, who, mac, client)
    except (InvalidTransition, NotFound) as exc:
        # Nothing was written. A retry that found the node booted by a concurrent callback
        # with this same token is a replay (401), not a state conflict (409).
        if not await ctx.boot_tokens.unused(redeem):
            await _refuse(ctx, who, mac, client)
        await ctx.audit.record(who, "boot_token.redeem", mac.value, "failed", ctx.clock(),
                               detail={"reason": str(exc)})
        raise
    handoff, wait = ctx.lifecycle.handoff, ctx.settings.handoff.answer_wait
    if agent_token and handoff is not None and wait > 0:
        await handoff.tried(mac.value, wait)
    return BootedOut(state=node.state, node=node.name, mac=node.mac.value,
                     agent_token=agent_token)


async def _check_address(ctx: ApiContext, mac: MacAddress, client: str, path: str) -> None:
    if ctx.binding is None:
        return
    node = ctx.inventory.node_by_mac(mac)
    if node is None:  # not in the cache yet: ask the store (an unknown MAC is refused later)
        try:
            node = (await ctx.inventory.get_node(mac.value)).value
        except NotFound:
            return
    if ctx.binding.allows(node, client):
        return
    ctx.refusals.refuse(client, path, f"a callback for {mac} from another address")
    raise Forbidden(f"{path} for node {node.name} is accepted only from its own address; "
                    f"{client} is not it")


async def _refuse(ctx: ApiContext, who: str, mac: MacAddress, client: str) -> NoReturn:
    refused = ctx.boot_tokens.refused_concurrently()
    await ctx.refused.refuse(client, who, "boot_token.redeem", mac.value, refused.reason)
    raise refused from None


class CallbackFastPath:
    """ASGI: `POST /node/v1/booted` straight to accept_callback, everything else to `app`."""

    def __init__(self, app: App, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx
        self.max_body = ctx.settings.api.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        length, json_type = _headers(scope)
        if length is None or length > self.max_body or not json_type:
            await self.app(scope, receive, send)  # the app answers 413 / 422 as usual
            return
        raw = await _read(receive, length)
        try:
            if raw is None or json_depth(raw) > MAX_DEPTH:
                raise ValueError("not a plain body")
            body = BootedIn.model_validate_json(raw)
        except (ValueError, pydantic.ValidationError):
            await self.app(scope, replay_body(raw or b"", receive), send)
            return
        try:
            client = scope.get("client") or ("", 0)
            out = await accept_callback(self.ctx, body, str(client[0]))
        except ProvisionerError as exc:
            response = translate(exc)
            if response.status_code >= 500:
                log.warning("POST %s: %s", PATH, exc)
            await response(scope, receive, send)
            return
        except Exception:
            log.exception("POST %s failed", PATH)
            await send_json(send, 500, INTERNAL)
            return
        await send_json(send, 200, out.model_dump(mode="json"))


def _headers(scope: Scope) -> tuple[int | None, bool]:
    length, json_type = None, False
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.isdigit():
            length = int(value)
        elif name == b"content-type":
            json_type = value.split(b";")[0].strip().lower() == b"application/json"
    return length, json_type


async def _read(receive: Receive, length: int) -> bytes | None:
    """The body, if it is exactly the declared length (else None: let the app judge it)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > length:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks) if size == length else None
