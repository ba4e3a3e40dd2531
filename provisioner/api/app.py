"""create_app(): the appliance's HTTP API over an Inventory that is already started."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI

from provisioner import __version__
from provisioner.api import errors
from provisioner.inventory import Inventory, node_to_dict
from provisioner.model import NodeState, parse_enum, redact

Counters = Callable[[], Mapping[str, Mapping[str, int]]]


def create_app(inventory: Inventory, counters: Counters | None = None) -> FastAPI:
    app = FastAPI(title="provisioner", version=__version__)
    errors.install(app)

    @app.get("/api/v1/counters")
    async def get_counters() -> Mapping[str, Mapping[str, int]]:
        """Per-service counters: DHCP messages by type and drops by reason, TFTP transfers
        and refusals by reason, boot-plane requests."""
        return counters() if counters is not None else {}

    @app.get("/healthz")
    async def health() -> dict[str, Any]:
        status = await inventory.store.status()
        return {"status": "ok", "store": status.backend, "revision": status.revision}

    @app.get("/api/v1/nodes")
    async def list_nodes(state: str | None = None) -> list[dict[str, Any]]:
        wanted = parse_enum(NodeState, state, "state") if state else None
        nodes = sorted(inventory.cached_nodes(), key=lambda n: n.name)
        return [_shown(n) for n in nodes if wanted is None or n.state is wanted]

    @app.get("/api/v1/nodes/{ref}")
    async def get_node(ref: str) -> dict[str, Any]:
        return _shown((await inventory.get_node(ref)).value)

    return app


def _shown(node: Any) -> dict[str, Any]:
    data = node_to_dict(node)
    data["settings"] = redact(node.settings)
    return data
