"""Bearer tokens with roles on the admin plane: viewer reads, operator changes nodes, power and
reimage, admin manages groups, images, tokens, settings and the audit log.

`Authority.need(role)` is a FastAPI dependency returning the caller (a Principal); it is also
what puts the bearer security scheme into the OpenAPI schema. Every refusal is audited, a flood
of them from one address as one summary entry a minute (security/refusals.py). With
`[api] auth = false` (allowed on loopback only, service.py checks) every caller is an admin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request

from provisioner.errors import Forbidden, Unauthorized
from provisioner.metrics import hooks
from provisioner.security.refusals import RefusalRecorder
from provisioner.security.tokens import API_TOKEN_REFUSED, ApiTokens, Role
from provisioner.web.auth import Credentials, bearer

_CREDENTIALS = bearer("a token from `provisioner token create`")
NO_TOKEN = ("this API needs a bearer token: create one with `provisioner token create --role "
            "viewer` and send `Authorization: Bearer TOKEN`")


@dataclass(frozen=True, slots=True)
class Principal:
    who: str  # for the audit log: "token:NAME(ID)" or "anonymous"
    role: Role


class Authority:
    def __init__(self, tokens: ApiTokens, refused: RefusalRecorder, *, enabled: bool) -> None:
        self.tokens, self.refused, self.enabled = tokens, refused, enabled

    def need(self, role: Role) -> Any:
        async def check(request: Request, credentials: Credentials | None = _CREDENTIALS
                        ) -> Principal:
            return await self.authorise(request, credentials, role)

        return Depends(check)

    async def authorise(self, request: Request,
                        credentials: Credentials | None,
                        role: Role) -> Principal:
        if not self.enabled:
            return Principal("anonymous", Role.ADMIN)
        target = f"{request.method} {request.url.path}"
        client = request.client.host if request.client else "?"
        if credentials is None:
            hooks.refused("api", "no_token")
            await self.refused.refuse(client, f"client:{client}", "auth", target,
                                      "no bearer token")
            raise Unauthorized(NO_TOKEN)
        try:
            token = await self.tokens.authenticate(credentials.credentials)
        except Unauthorized:
            hooks.refused("api", "bad_token")
            await self.refused.refuse(client, f"client:{client}", "auth", target,
                                      "bad bearer token")
            raise Unauthorized(API_TOKEN_REFUSED) from None
        principal = Principal(f"token:{token.name}({token.id})", token.role)
        if token.role < role:
            hooks.refused("api", "role")
            await self.refused.refuse(client, principal.who, "auth", target,
                                      f"role {token.role.label} < {role.label}")
            raise Forbidden(f"this needs the {role.label} role and token {token.name!r} is "
                            f"{token.role.label}; use a token created with --role {role.label}")
        return principal
