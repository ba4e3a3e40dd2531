"""A watch-fed, in-memory view of one key prefix of the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable

from provisioner.runtime import supervisor
from provisioner.store.base import Compacted, EventType, KeyValueStore, WatchEvent

log = logging.getLogger(__name__)

#: the followers of this process that are running, for the etcd compaction (runtime/retention.py)
_RUNNING: weakref.WeakSet[Follower] = weakref.WeakSet()


def running_on(store: KeyValueStore) -> list[Follower]:
    """This process's running followers of `store`."""
    return [f for f in list(_RUNNING) if f.store is store and f.running]


class Follower:
    """Keeps an in-memory view of everything under `prefix`: `start()` feeds the current keys to
    `apply` as PUT events, then every later change from `watch`, so the view never misses one.
    Used by the inventory's node cache and by the DHCP lease book.

    The watch runs as a supervised task (runtime/supervisor.py). When the store has compacted
    the history the watch needs (base.py: `Compacted`), or when the task is restarted after a
    fault, the follower relists: it ranges the prefix again and applies only what changed
    (PUTs for new or changed keys, DELETEs for keys gone), in one step with no await between,
    then watches from the revision of that range. A compaction is not a failure."""

    def __init__(self, store: KeyValueStore, prefix: str,
                 apply: Callable[[WatchEvent], None]) -> None:
        self.store, self.prefix, self._apply = store, prefix, apply
        self._task: supervisor.Supervised | None = None
        #: the newest store revision applied to the view (read-your-writes waits on it)
        self.applied = 0
        self._advanced = asyncio.Event()
        #: every key in the view and the revision it was last changed at (for relists)
        self._keys: dict[str, int] = {}
        self._listed = False  # the view is current as of `applied`: watch from applied + 1
        #: how many times the view was relisted (after a compaction or a restart)
        self.relists = 0

    async def start(self) -> None:
        await self._relist()
        self.relists = 0
        self._task = supervisor.ambient().spawn(f"follower {self.prefix}", self._follow)
        _RUNNING.add(self)

    async def stop(self) -> None:
        _RUNNING.discard(self)
        if self._task is not None:
            await self._task.stop()

    async def catch_up(self) -> None:
        """Move `applied` up to the store's revision when the view already holds what the store
        holds under the prefix. A quiet prefix (groups) gets no events, so `applied` would stay
        where it was and hold the compaction back; a view equal to a range at revision R is
        the prefix as of R (mod revisions only grow), so a watch may resume from R + 1."""
        result = await self.store.range(self.prefix)
        if {kv.key: kv.mod_revision for kv in result.items} == self._keys:
            self.applied = max(self.applied, result.revision)

    async def _follow(self) -> None:
        if not self._listed:  # restarted after a fault: the view may have missed changes
            await self._relist()
        self._listed = False
        while True:
            try:
                async for event in self.store.watch(self.prefix, self.applied + 1):
                    self._deliver(event)
                return  # the store was closed
            except Compacted as exc:
                log.warning("watch on %s: %s; reading it again", self.prefix, exc)
                await self._relist()
                self._listed = False

    def _deliver(self, event: WatchEvent) -> None:
        self._apply(event)
        if event.type is EventType.DELETE:
            self._keys.pop(event.key, None)
        else:
            self._keys[event.key] = event.revision
        self.applied = max(self.applied, event.revision)
        self._advanced.set()

    async def _relist(self) -> None:
        """Range the prefix and apply the difference to the view at once."""
        result = await self.store.range(self.prefix)
        listed = {kv.key: kv for kv in result.items}
        for key in [k for k in self._keys if k not in listed]:
            self._deliver(WatchEvent(EventType.DELETE, key, b"", result.revision))
        for kv in result.items:
            if self._keys.get(kv.key) != kv.mod_revision:
                self._deliver(WatchEvent(EventType.PUT, kv.key, kv.value, kv.mod_revision))
        self.applied = max(self.applied, result.revision)
        self._advanced.set()
        self._listed = True
        self.relists += 1

    @property
    def running(self) -> bool:
        return self._task is not None and self._task.status is not supervisor.TaskStatus.FINISHED

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
