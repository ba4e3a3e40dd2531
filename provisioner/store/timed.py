"""A store that times every operation of the one it wraps, for the store latency histogram
(provisioner_store_op_seconds, by backend and operation).

service.py wraps the store it opens, once: every backend is timed the same way, and none of
them knows about metrics. A watch is a stream, not an operation: it passes through untimed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from provisioner.metrics.hooks import timed
from provisioner.store.base import (
    KeyValue,
    KeyValueStore,
    RangeResult,
    StoreStatus,
    TxnOp,
    WatchEvent,
)


class TimedStore:
    def __init__(self, inner: KeyValueStore) -> None:
        self.inner = inner
        self.backend = inner.backend

    async def get(self, key: str) -> KeyValue | None:
        return await timed(self.backend, "get", self.inner.get(key))

    async def range(self, prefix: str) -> RangeResult:
        return await timed(self.backend, "range", self.inner.range(prefix))

    async def page(self, prefix: str, *, after: str = "", limit: int,
                   reverse: bool = False) -> RangeResult:
        return await timed(self.backend, "page", self.inner.page(
            prefix, after=after, limit=limit, reverse=reverse))

    async def put(self, key: str, value: bytes, *, expect: int | None = None,
                  lease: int = 0) -> int:
        return await timed(self.backend, "put", self.inner.put(key, value, expect=expect,
                                                               lease=lease))

    async def delete(self, key: str, *, expect: int | None = None) -> int:
        return await timed(self.backend, "delete", self.inner.delete(key, expect=expect))

    async def txn(self, ops: Sequence[TxnOp]) -> list[int]:
        return await timed(self.backend, "txn", self.inner.txn(ops))

    def watch(self, prefix: str, start: int | None = None) -> AsyncIterator[WatchEvent]:
        return self.inner.watch(prefix, start)

    async def compact(self, revision: int) -> None:
        await timed(self.backend, "compact", self.inner.compact(revision))

    async def grant(self, ttl: float) -> int:
        return await timed(self.backend, "grant", self.inner.grant(ttl))

    async def keepalive(self, lease: int) -> None:
        await timed(self.backend, "keepalive", self.inner.keepalive(lease))

    async def revoke(self, lease: int) -> None:
        await timed(self.backend, "revoke", self.inner.revoke(lease))

    async def status(self) -> StoreStatus:
        return await timed(self.backend, "status", self.inner.status())

    async def close(self) -> None:
        await self.inner.close()
