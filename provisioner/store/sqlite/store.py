"""SqliteStore: the store contract on one sqlite file, its operations as queued writes.

Each write is a function (`apply`) the writer thread runs inside its next group commit
(writer.py); it returns its error rather than raising, so one refused write does not undo the
others committed with it. Point reads and the watch go straight to the read connection, ranges
and pages to a worker thread (schema.py, watch.py). Leases expire in whichever process has the
store open (`_sweep_leases`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from provisioner.errors import ProvisionerError, StoreUnavailable
from provisioner.store.base import KeyValue, RangeResult, StoreStatus, TxnOp, WatchEvent
from provisioner.store.common import (
    Change,
    Changes,
    check_expect,
    check_key,
    check_page,
    check_txn,
    delete_refusal,
    lease_gone,
    plan_txn,
    put_change,
    put_refusal,
    txn_refusal,
)
from provisioner.store.sqlite import schema
from provisioner.store.sqlite.watch import follow_log
from provisioner.store.sqlite.writer import Apply, Writer

HISTORY = 100_000  # log rows kept for watch(start=...); older ones are compacted away
SWEEP = 0.1  # seconds between looks for expired leases


class SqliteStore:
    backend = "sqlite"

    def __init__(self, path: Path | str, *, timeout: float = 5.0, history: int = HISTORY,
                 synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self._timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer_db = schema.connect(self.path, timeout, synchronous)
        writer_db.executescript(schema.SCHEMA)
        self._reader = schema.Reader(self.path, schema.connect(self.path, timeout, synchronous),
                                     lambda: schema.connect(self.path, timeout, synchronous))
        self._changes = Changes()
        self._writer = Writer(self.path, writer_db, timeout=timeout, history=history,
                              notify=self._changes.notify)
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    # -- reads -----------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        self._start()
        return self._reader.get(check_key(key))

    async def range(self, prefix: str) -> RangeResult:
        self._start()
        return await self._reader.range(prefix)

    async def page(self, prefix: str, *, after: str = "", limit: int,
                   reverse: bool = False) -> RangeResult:
        check_page(prefix, after, limit)
        self._start()
        return await self._reader.page(prefix, after, limit, reverse)

    def watch(self, prefix: str, start: int | None = None) -> AsyncIterator[WatchEvent]:
        self._start()
        return follow_log(self._reader, self._changes, prefix, start)

    # -- writes: queued to the writer thread, resolved after commit ------------------------

    async def _submit(self, apply: Apply, put: tuple[str, bytes, int | None] | None = None) -> Any:
        if self._closed:
            raise StoreUnavailable(f"store {self.path} is closed")
        self._start()
        return await self._writer.submit(apply, put)

    async def put(
        self, key: str, value: bytes, *, expect: int | None = None, lease: int = 0
    ) -> int:
        check_key(key)
        check_expect(expect)
        data = bytes(value)

        def apply(db: sqlite3.Connection, rev: int) -> tuple[int, Any]:
            current = schema.current(db, key)
            if (refusal := put_refusal(key, current, expect)) is not None:
                return rev, refusal
            if lease and not db.execute("SELECT 1 FROM leases WHERE id = ?", (lease,)).fetchone():
                return rev, lease_gone(lease)
            schema.write(db, put_change(key, data, current, rev + 1, lease))
            return rev + 1, rev + 1

        result: int = await self._submit(apply, (key, data, expect) if not lease else None)
        return result

    async def delete(self, key: str, *, expect: int | None = None) -> int:
        check_key(key)
        check_expect(expect)

        def apply(db: sqlite3.Connection, rev: int) -> tuple[int, Any]:
            current = schema.current(db, key)
            if (refusal := delete_refusal(key, current, expect)) is not None:
                return rev, refusal
            if current is None:
                return rev, rev  # expect=0 and absent: nothing to do
            schema.write(db, Change(key, rev + 1, None))
            return rev + 1, rev + 1

        result: int = await self._submit(apply)
        return result

    async def txn(self, ops: Sequence[TxnOp]) -> list[int]:
        """All of `ops` in the one transaction of the writer's next group commit."""
        check_txn(ops)

        def apply(db: sqlite3.Connection, rev: int) -> tuple[int, Any]:
            found = [schema.current(db, op.key) for op in ops]
            if (conflict := txn_refusal(ops, found)) is not None:
                return rev, conflict
            changes, revisions = plan_txn(ops, found, rev)
            for change in changes:
                schema.write(db, change)
            return (changes[-1].revision if changes else rev), revisions

        result: list[int] = await self._submit(apply)
        return result

    async def compact(self, revision: int) -> None:
        """Drop history before `revision`: watch(start < revision) raises Compacted."""

        def apply(db: sqlite3.Connection, rev: int) -> tuple[int, Any]:
            schema.prune(db, revision - 1)
            return rev, None

        await self._submit(apply)

    # -- leases ----------------------------------------------------------------------------

    async def grant(self, ttl: float) -> int:
        def apply(db: sqlite3.Connection, rev: int) -> tuple[int, Any]:
            cur = db.execute("INSERT INTO leases (ttl, expires) VALUES (?, ?)",
                             (ttl, time.time() + ttl))
            return rev, cur.lastrowid

        lease: int = await self._submit(apply)
        return lease

    async def keepalive(self, lease: int) -> None:
        def apply(db: sqlite3.Connection, rev: int) -> tuple[int, Any]:
            cur = db.execute("UPDATE leases SET expires = ? + ttl WHERE id = ? AND expires > ?",
                             (time.time(), lease, time.time()))
            return rev, (lease_gone(lease) if cur.rowcount == 0 else None)

        await self._submit(apply)

    async def revoke(self, lease: int) -> None:
        await self._submit(lambda db, rev: (schema.drop_lease(db, lease, rev), None))

    async def _sweep_leases(self) -> None:
        """Expire leases: any process that has the store open does it, so a crashed lease
        holder's keys still go away."""
        while not self._closed:
            await asyncio.sleep(SWEEP)
            rows = self._reader.read("SELECT id FROM leases WHERE expires <= ?", (time.time(),))
            for (lease,) in rows:

                def apply(db: sqlite3.Connection, rev: int, lease: int = lease) -> tuple[int, Any]:
                    row = db.execute("SELECT expires FROM leases WHERE id = ?", (lease,)).fetchone()
                    if row is None or row[0] > time.time():
                        return rev, None  # renewed or already swept by someone else
                    return schema.drop_lease(db, lease, rev), None

                try:
                    await self._submit(apply)
                except ProvisionerError:
                    continue  # retried on the next pass

    # -- lifecycle -------------------------------------------------------------------------

    def _start(self) -> None:
        """Start the lease sweeper on the running loop at first use."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_leases())

    async def status(self) -> StoreStatus:
        compacted, revision = self._reader.meta()
        keys = self._reader.read("SELECT count(*) FROM kv")[0][0]
        size = self.path.stat().st_size if self.path.exists() else 0
        detail = f"{size / 1e6:.1f} MB file, history from revision {compacted + 1}"
        return StoreStatus(self.backend, str(self.path), revision, keys, detail)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._changes.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self._writer.stop()
        self._reader.close()
