"""Composition root: the store, the inventory and the HTTP API on one event loop."""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from provisioner.api.app import create_app
from provisioner.config import Settings
from provisioner.errors import ConfigError
from provisioner.inventory import Inventory
from provisioner.store import open_store

log = logging.getLogger("provisioner")


def run_service(settings: Settings, *, listen: str, port: int) -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(settings, listen, port))


async def _serve(settings: Settings, listen: str, port: int) -> None:
    store = open_store(settings)
    inventory = Inventory(store)
    try:
        await inventory.start()
        status = await store.status()
        log.info("store %s at %s, revision %d, %d keys", status.backend, status.endpoint,
                 status.revision, status.keys)
        config = uvicorn.Config(create_app(inventory), host=listen, port=port, log_level="info",
                                access_log=False)
        server = uvicorn.Server(config)
        log.info("serving the API on http://%s:%d (Ctrl-C to stop)", listen, port)
        await server.serve()
        if not server.started:
            raise ConfigError(f"could not listen on {listen}:{port}; is the port in use? "
                              "choose another with --port")
    finally:
        await inventory.stop()
        await store.close()
