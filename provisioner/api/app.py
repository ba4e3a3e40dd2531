"""create_app(): the FastAPI app with the admin plane (/api/v1/) and the node plane (/node/v1/).

The boot plane (/boot/) is not here: it is served by boot/server.py with sendfile, and its
rendered routes live in boot/routes.py. Request bodies are capped and depth-checked by
web/limits.py before any route runs; errors are translated once by web/errors.py.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI

from provisioner import __version__
from provisioner.api.auth import Authority
from provisioner.api.context import ApiContext
from provisioner.api.routes import config, node, nodes, reimage
from provisioner.metrics.collectors import (
    DhcpCollector,
    Exposition,
    NodesCollector,
    TasksCollector,
)
from provisioner.metrics.registry import APPLIANCE
from provisioner.security.tokens import Role
from provisioner.web import errors
from provisioner.web.limits import MAX_DEPTH, BodyLimit
from provisioner.web.metrics import metrics_router

DESCRIPTION = """Bare-metal provisioning appliance.

* **Admin plane** `/api/v1/`: bearer tokens with roles viewer < operator < admin
  (`provisioner token create --role ...`).
* **Node plane** `/node/v1/`: boot callbacks, authenticated by each node's one-boot token.
* **Metrics** `/metrics`: Prometheus text format; open to loopback, else a token of any role.

Every error answers `{"error": CODE, "message": ...}`; the message says what to do next.
"""


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(title="provisioner", version=__version__, description=DESCRIPTION)
    app.add_middleware(BodyLimit, max_body=ctx.settings.api.max_body, setting="[api] max_body",
                       max_depth=MAX_DEPTH)
    errors.install(app)
    auth = Authority(ctx.api_tokens, ctx.refused, enabled=ctx.settings.api.auth)
    app.include_router(config.health_router(ctx))
    app.include_router(nodes.router(ctx, auth))
    app.include_router(reimage.router(ctx, auth))
    app.include_router(config.router(ctx, auth))
    app.include_router(node.router(ctx))
    app.include_router(metrics_router(
        exposition(ctx).render, lambda request, credentials: auth.authorise(
            request, credentials, Role.VIEWER), "a token of any role (viewer and up)"))
    app.state.context = ctx
    return app


def exposition(ctx: ApiContext) -> Exposition:
    """The appliance's metrics: its registry's (every plane's hooks) and what is read at
    scrape time from the DHCP counters, the inventory cache and the supervisor."""
    def dhcp() -> Mapping[str, int] | None:
        return ctx.counters().get("dhcp") if ctx.counters is not None else None

    supervisor = ctx.supervisor
    return Exposition(
        APPLIANCE, DhcpCollector(dhcp),
        NodesCollector(lambda: (n.state.value for n in ctx.inventory.cached_nodes())),
        TasksCollector(supervisor.states if supervisor is not None else list))
