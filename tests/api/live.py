"""A live appliance API under uvicorn (httptools) on a free loopback port, in its own thread
and event loop, for the schemathesis run and for tests that need a real HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from pathlib import Path

import uvicorn

from provisioner.api.app import create_app
from provisioner.api.context import ApiContext
from provisioner.config import Settings
from provisioner.inventory.repository import Inventory
from provisioner.security.tokens import Role
from provisioner.store.sqlite import SqliteStore

START_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveApi:
    """`start()` returns once uvicorn listens; `url` and `admin` (a bearer token) are set."""

    def __init__(self, settings: Settings, store_path: Path) -> None:
        self.settings = settings
        self.store_path = store_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = ""
        self._ready = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._error: BaseException | None = None

    def start(self) -> LiveApi:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._error is not None:
            raise RuntimeError(f"the live API did not start: {self._error}")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(10)

    async def _main(self) -> None:
        store = SqliteStore(self.store_path)
        inventory = Inventory(store)
        try:
            await inventory.start()
            ctx = ApiContext.build(self.settings, inventory)
            _, self.admin = await ctx.api_tokens.create(Role.ADMIN, "live", 0.0)
            config = uvicorn.Config(create_app(ctx), host="127.0.0.1", port=self.port,
                                    http="httptools", loop="asyncio", log_level="warning")
            self._server = uvicorn.Server(config)
            serving = asyncio.create_task(self._server.serve())
            for _ in range(int(START_TIMEOUT * 100)):
                if self._server.started or serving.done():
                    break
                await asyncio.sleep(0.01)
            self._ready.set()
            await serving
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        finally:
            with contextlib.suppress(Exception):
                await inventory.stop()
            await store.close()
