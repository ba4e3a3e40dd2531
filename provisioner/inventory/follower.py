"""A watch-fed, in-memory view of one key prefix of the store."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from provisioner.store.base import EventType, KeyValueStore, WatchEvent


class Follower:
    """Keeps an in-memory view of everything under `prefix`: `start()` feeds the current keys to
    `apply` as PUT events, then every later change from `watch`, so the view never misses one.
    Used by the inventory's node cache and by the DHCP lease book."""

    def __init__(self, store: KeyValueStore, prefix: str,
                 apply: Callable[[WatchEvent], None]) -> None:
        self.store, self.prefix, self._apply = store, prefix, apply
        self._task: asyncio.Task[None] | None = None
        #: the newest store revision applied to the view (read-your-writes waits on it)
        self.applied = 0
        self._advanced = asyncio.Event()

    async def start(self) -> None:
        result = await self.store.range(self.prefix)
        for kv in result.items:
            self._apply(WatchEvent(EventType.PUT, kv.key, kv.value, kv.mod_revision))
        self.applied = result.revision
        self._task = asyncio.create_task(self._follow(result.revision + 1))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, start: int) -> None:
        async for event in self.store.watch(self.prefix, start):
            self._apply(event)
            self.applied = max(self.applied, event.revision)
            self._advanced.set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def wait_applied(self, revision: int, timeout: float = 2.0) -> bool:
        """Wait (bounded) until the view includes `revision`; False if it did not in time."""
        if self._task is None:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.applied < revision:
            self._advanced.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), remaining)
        return True
