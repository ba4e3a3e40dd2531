"""In-memory store: the contract with nothing behind it. For unit tests and `--store memory`."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence

from provisioner.store.base import KeyValue, RangeResult, StoreStatus, TxnOp, WatchEvent
from provisioner.store.common import (
    Change,
    Changes,
    check_expect,
    check_key,
    check_page,
    check_txn,
    delete_refusal,
    first_revision,
    lease_gone,
    plan_txn,
    put_change,
    put_refusal,
    txn_refusal,
    watch_compacted,
)

HISTORY = 100_000  # watch events kept for `watch(start=...)`


class MemoryStore:
    backend = "memory"

    def __init__(self, history: int = HISTORY) -> None:
        self._data: dict[str, KeyValue] = {}
        self._revision = 0
        self._history: deque[WatchEvent] = deque(maxlen=history)
        self._changes = Changes()
        self._leases: dict[int, tuple[float, asyncio.TimerHandle | None]] = {}
        self._lease_ids = itertools.count(1)
        self._compacted = 0

    async def get(self, key: str) -> KeyValue | None:
        return self._data.get(check_key(key))

    async def range(self, prefix: str) -> RangeResult:
        items = [kv for k, kv in sorted(self._data.items()) if k.startswith(prefix)]
        return RangeResult(items, self._revision)

    async def page(self, prefix: str, *, after: str = "", limit: int,
                   reverse: bool = False) -> RangeResult:
        check_page(prefix, after, limit)
        found = sorted((k for k in self._data if k.startswith(prefix)
                        and (not after or (k < after if reverse else k > after))),
                       reverse=reverse)
        return RangeResult([self._data[k] for k in found[:limit]], self._revision)

    async def put(
        self, key: str, value: bytes, *, expect: int | None = None, lease: int = 0
    ) -> int:
        check_key(key)
        check_expect(expect)
        current = self._data.get(key)
        if (refusal := put_refusal(key, current, expect)) is not None:
            raise refusal
        if lease and lease not in self._leases:
            raise lease_gone(lease)
        self._apply(put_change(key, value, current, self._revision + 1, lease))
        return self._revision

    async def delete(self, key: str, *, expect: int | None = None) -> int:
        check_key(key)
        check_expect(expect)
        current = self._data.get(key)
        if (refusal := delete_refusal(key, current, expect)) is not None:
            raise refusal
        if current is not None:  # (expect=0 and absent: nothing to do)
            self._apply(Change(key, self._revision + 1, None))
        return self._revision

    async def txn(self, ops: Sequence[TxnOp]) -> list[int]:
        check_txn(ops)
        found = [self._data.get(op.key) for op in ops]
        if (conflict := txn_refusal(ops, found)) is not None:
            raise conflict
        changes, revisions = plan_txn(ops, found, self._revision)
        for change in changes:
            self._apply(change)
        return revisions

    def _apply(self, change: Change) -> None:
        if change.kv is None:
            del self._data[change.key]
        else:
            self._data[change.key] = change.kv
        self._revision = change.revision
        self._history.append(change.event)
        self._changes.notify()

    async def watch(self, prefix: str, start: int | None = None) -> AsyncIterator[WatchEvent]:
        next_rev = first_revision(start, self._revision)
        oldest = self._history[0].revision if self._history else self._revision + 1
        if next_rev <= self._compacted or (next_rev < oldest and next_rev <= self._revision):
            raise watch_compacted(prefix, next_rev, max(oldest, self._compacted + 1))
        while not self._changes.closed:
            ticket = self._changes.ticket()
            # One event per revision, so the history is indexed by revision - oldest.
            oldest = self._history[0].revision if self._history else self._revision + 1
            for index in range(max(next_rev - oldest, 0), len(self._history)):
                event = self._history[index]
                next_rev = event.revision + 1
                if event.key.startswith(prefix):
                    yield event
            await ticket.wait()

    async def compact(self, revision: int) -> None:
        while self._history and self._history[0].revision < revision:
            self._history.popleft()
        self._compacted = max(self._compacted, revision - 1)

    async def grant(self, ttl: float) -> int:
        lease = next(self._lease_ids)
        self._leases[lease] = (ttl, None)
        self._arm(lease, ttl)
        return lease

    def _arm(self, lease: int, ttl: float) -> None:
        handle = asyncio.get_running_loop().call_later(ttl, self._expire, lease)
        self._leases[lease] = (ttl, handle)

    def _expire(self, lease: int) -> None:
        self._leases.pop(lease, None)
        for key in [k for k, kv in self._data.items() if kv.lease == lease]:
            self._apply(Change(key, self._revision + 1, None))

    async def keepalive(self, lease: int) -> None:
        entry = self._leases.get(lease)
        if entry is None:
            raise lease_gone(lease)
        ttl, handle = entry
        if handle is not None:
            handle.cancel()
        self._arm(lease, ttl)

    async def revoke(self, lease: int) -> None:
        entry = self._leases.get(lease)
        if entry is not None and entry[1] is not None:
            entry[1].cancel()
        self._expire(lease)

    async def status(self) -> StoreStatus:
        return StoreStatus(self.backend, "memory", self._revision, len(self._data),
                           f"{len(self._leases)} leases, checked {time.strftime('%H:%M:%S')}")

    async def close(self) -> None:
        self._changes.close()
        for _, handle in self._leases.values():
            if handle is not None:
                handle.cancel()
        self._leases.clear()
