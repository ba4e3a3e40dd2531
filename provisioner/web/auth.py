"""Bearer tokens (RFC 6750 section 2.1), read the same way by both apps.

`bearer(description)` is the default of a route or dependency parameter: the request's
credentials, or None when there is no `Authorization: Bearer ...` (the scheme is matched without
regard to case, RFC 9110 section 11.1). It never refuses by itself: the caller raises
Unauthorized with advice of its own, which errors.py answers as 401 with `WWW-Authenticate`.
It also declares the bearer scheme in the OpenAPI schema. `shared_secret()` is the whole check
for a service guarded by one configured token; its refusals are logged with the requester's
address, a line per source a minute (refusals.py), and write nothing.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from provisioner.errors import Unauthorized
from provisioner.metrics import hooks
from provisioner.web.refusals import RefusalLog

log = logging.getLogger(__name__)

Credentials = HTTPAuthorizationCredentials


def bearer(description: str) -> Any:
    return Security(HTTPBearer(auto_error=False, description=description))


def shared_secret(token: str, refusal: str, description: str, plane: str
                  ) -> Callable[..., Awaitable[None]]:
    """A dependency letting through only `Authorization: Bearer TOKEN`, compared in constant
    time; any other request gets Unauthorized(refusal), counted as refused on `plane`."""
    expected = token.encode()
    credentials_parameter = bearer(description)
    refusals = RefusalLog(log)

    async def check(request: Request,
                    credentials: Credentials | None = credentials_parameter) -> None:
        given = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(given, expected):
            hooks.refused(plane, "no_token" if credentials is None else "bad_token")
            client = request.client.host if request.client else "unknown"
            refusals.refused(client, f"{request.method} {request.url.path!r}: no or wrong "
                             "token")
            raise Unauthorized(refusal)

    return check
