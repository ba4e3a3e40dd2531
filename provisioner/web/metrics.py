"""GET /metrics for both apps, in the Prometheus text format (metrics/collectors.py renders it).

Open to loopback: Prometheus usually runs on the appliance itself, and whoever is on this
machine can read the store anyway. From any other address a scrape needs a token, checked by
the app's own `guard` (the admin API: a token of any role, viewer and up; the scheduler: its
[scheduler] token), which counts its refusals. A refusal is logged here with the requester's
address, a line per source a minute (refusals.py), and answers 401 or 403 with what to do.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, Response

from provisioner.errors import Forbidden, Unauthorized
from provisioner.metrics.collectors import CONTENT_TYPE
from provisioner.web import errors
from provisioner.web.auth import Credentials, bearer
from provisioner.web.refusals import RefusalLog

log = logging.getLogger(__name__)
Guard = Callable[[Request, Credentials | None], Awaitable[object]]
PATH = "/metrics"


def loopback(host: str) -> bool:
    """Whether `host` (the peer's address) is this machine's loopback, IPv4-mapped too."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def metrics_router(render: Callable[[], bytes], guard: Guard, description: str) -> APIRouter:
    """The /metrics route over `render` (an Exposition's), `guard` checking non-loopback
    scrapes; `description` says which token it takes (OpenAPI)."""
    router = APIRouter()
    credentials_parameter = bearer(description)
    refusals = RefusalLog(log)

    @router.get(PATH, response_class=Response, responses={
        200: {"content": {CONTENT_TYPE: {}}, "description": "The Prometheus text format"},
        **errors.responses(401, 403)})
    async def metrics(request: Request,
                      credentials: Credentials | None = credentials_parameter) -> Response:
        """Prometheus metrics; a token is needed unless the scrape comes from loopback."""
        client = request.client.host if request.client else "unknown"
        if not loopback(client):
            try:
                await guard(request, credentials)
            except (Unauthorized, Forbidden) as exc:
                refusals.refused(client, f"GET {PATH!r} from outside loopback: {exc.message}")
                raise
        return Response(render(), media_type=CONTENT_TYPE)

    return router
