"""A store that times every operation of the one it wraps, for the store latency histogram
(provisioner_store_op_seconds, by backend and operation).

service.py wraps the store it opens, once: every backend is timed the same way, and none of
them knows about metrics. A watch is a stream, not an operation: it passes through untimed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Final, TypeVar

from prometheus_client import Histogram

from provisioner.metrics.registry import STORE_OP
from provisioner.store.base import (
    KeyValue,
    KeyValueStore,
    RangeResult,
    StoreStatus,
    TxnOp,
    WatchEvent,
)

T = TypeVar("T")
OPS: Final = ("get", "range", "page", "put", "delete", "txn", "compact", "grant", "keepalive",
              "revoke", "status")


class TimedStore:
    def __init__(self, inner: KeyValueStore) -> None:
        self.inner = inner
        self.backend = inner.backend
        # the labelled histograms looked up once: per operation, only the clock and observe
        self._histograms = {op: STORE_OP.labels(self.backend, op) for op in OPS}

    async def _timed(self, op: str, call: Awaitable[T]) -> T:
        """`call`'s result; its time observed, failed ones too (a timeout is exactly what the
        histogram is for)."""
        histogram: Histogram = self._histograms[op]
        started = time.perf_counter()
        try:
            return await call
        finally:
            histogram.observe(time.perf_counter() - started)

    async def get(self, key: str) -> KeyValue | None:
        return await self._timed("get", self.inner.get(key))

    async def range(self, prefix: str) -> RangeResult:
        return await self._timed("range", self.inner.range(prefix))

    async def page(self, prefix: str, *, after: str = "", limit: int,
                   reverse: bool = False) -> RangeResult:
        return await self._timed("page", self.inner.page(
            prefix, after=after, limit=limit, reverse=reverse))

    async def put(self, key: str, value: bytes, *, expect: int | None = None,
                  lease: int = 0) -> int:
        return await self._timed("put", self.inner.put(key, value, expect=expect,
                                                               lease=lease))

    async def delete(self, key: str, *, expect: int | None = None) -> int:
        return await self._timed("delete", self.inner.delete(key, expect=expect))

    async def txn(self, ops: Sequence[TxnOp]) -> list[int]:
        return await self._timed("txn", self.inner.txn(ops))

    def watch(self, prefix: str, start: int | None = None) -> AsyncIterator[WatchEvent]:
        return self.inner.watch(prefix, start)

    async def compact(self, revision: int) -> None:
        await self._timed("compact", self.inner.compact(revision))

    async def grant(self, ttl: float) -> int:
        return await self._timed("grant", self.inner.grant(ttl))

    async def keepalive(self, lease: int) -> None:
        await self._timed("keepalive", self.inner.keepalive(lease))

    async def revoke(self, lease: int) -> None:
        await self._timed("revoke", self.inner.revoke(lease))

    async def status(self) -> StoreStatus:
        return await self._timed("status", self.inner.status())

    async def close(self) -> None:
        await self.inner.close()
