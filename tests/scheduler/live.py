"""The scheduler under uvicorn on a free loopback port in its own thread and event loop, for
synchronous clients (schemathesis)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from provisioner.scheduler.service import SchedulerServer
from provisioner.store.sqlite import SqliteStore

START_TIMEOUT = 15.0


class LiveScheduler:
    def __init__(self, store_path: Path) -> None:
        self.store_path = store_path
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> LiveScheduler:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or not self.url:
            raise RuntimeError("the live scheduler did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        store = SqliteStore(self.store_path)
        server = SchedulerServer(store, "127.0.0.1", 0, interval=0.05)
        try:
            await server.start()
            self.url = server.url
            self._ready.set()
            await self._stop.wait()
        finally:
            self._ready.set()
            await server.stop()
            await store.close()
