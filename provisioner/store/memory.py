"""In-memory store: the contract with nothing behind it. For unit tests and `--store memory`."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence

from provisioner.errors import Conflict, NotFound
from provisioner.store.base import (
    Compacted,
    EventType,
    KeyValue,
    RangeResult,
    StoreStatus,
    TxnOp,
    WatchEvent,
    check_expect,
    check_key,
    check_txn,
    conflict_message,
    expect_matches,
    txn_conflict,
)

HISTORY = 100_000  # watch events kept for `watch(start=...)`


class MemoryStore:
    backend = "memory"

    def __init__(self, history: int = HISTORY) -> None:
        self._data: dict[str, KeyValue] = {}
        self._revision = 0
        self._history: deque[WatchEvent] = deque(maxlen=history)
        self._changed = asyncio.Event()
        self._leases: dict[int, tuple[float, asyncio.TimerHandle | None]] = {}
        self._lease_ids = itertools.count(1)
        self._compacted = 0

    async def get(self, key: str) -> KeyValue | None:
        return self._data.get(check_key(key))

    async def range(self, prefix: str) -> RangeResult:
        items = [kv for k, kv in sorted(self._data.items()) if k.startswith(prefix)]
        return RangeResult(items, self._revision)

    async def put(
        self, key: str, value: bytes, *, expect: int | None = None, lease: int = 0
    ) -> int:
        check_key(key)
        check_expect(expect)
        current = self._data.get(key)
        if not expect_matches(current, expect):
            raise Conflict(conflict_message(key, current, expect))
        if lease and lease not in self._leases:
            raise NotFound(f"lease {lease} has expired or was revoked; grant a new one")
        self._revision += 1
        created = current.create_revision if current else self._revision
        self._data[key] = KeyValue(key, bytes(value), created, self._revision, lease)
        self._emit(WatchEvent(EventType.PUT, key, bytes(value), self._revision))
        return self._revision

    async def delete(self, key: str, *, expect: int | None = None) -> int:
        check_key(key)
        check_expect(expect)
        current = self._data.get(key)
        if expect is None and current is None:
            raise NotFound(f"{key} does not exist")
        if not expect_matches(current, expect):
            raise Conflict(conflict_message(key, current, expect))
        if current is None:
            return self._revision  # expect=0 and absent: nothing to do
        return self._remove(key)

    async def txn(self, ops: Sequence[TxnOp]) -> list[int]:
        check_txn(ops)
        failed = [(op.key, self._data.get(op.key), op.expect) for op in ops
                  if not expect_matches(self._data.get(op.key), op.expect)]
        if failed:
            raise txn_conflict(failed)
        revisions: list[int] = []
        for op in ops:
            current = self._data.get(op.key)
            if op.value is None:
                revisions.append(self._remove(op.key) if current else self._revision)
                continue
            self._revision += 1
            created = current.create_revision if current else self._revision
            self._data[op.key] = KeyValue(op.key, bytes(op.value), created, self._revision)
            self._emit(WatchEvent(EventType.PUT, op.key, bytes(op.value), self._revision))
            revisions.append(self._revision)
        return revisions

    def _remove(self, key: str) -> int:
        del self._data[key]
        self._revision += 1
        self._emit(WatchEvent(EventType.DELETE, key, b"", self._revision))
        return self._revision

    def _emit(self, event: WatchEvent) -> None:
        self._history.append(event)
        self._changed.set()
        self._changed = asyncio.Event()

    async def watch(self, prefix: str, start: int | None = None) -> AsyncIterator[WatchEvent]:
        next_rev = self._revision + 1 if start is None else start
        oldest = self._history[0].revision if self._history else self._revision + 1
        if next_rev <= self._compacted or (next_rev < oldest and next_rev <= self._revision):
            raise Compacted(f"revision {next_rev} was compacted; the oldest kept is {oldest}")
        while True:
            waiter = self._changed
            # One event per revision, so the history is indexed by revision - oldest.
            oldest = self._history[0].revision if self._history else self._revision + 1
            for index in range(max(next_rev - oldest, 0), len(self._history)):
                event = self._history[index]
                next_rev = event.revision + 1
                if event.key.startswith(prefix):
                    yield event
            await waiter.wait()

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
            self._remove(key)

    async def keepalive(self, lease: int) -> None:
        entry = self._leases.get(lease)
        if entry is None:
            raise NotFound(f"lease {lease} has expired or was revoked; grant a new one")
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
        for _, handle in self._leases.values():
            if handle is not None:
                handle.cancel()
        self._leases.clear()
