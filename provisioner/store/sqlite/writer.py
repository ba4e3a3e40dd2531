"""The sqlite store's writer thread: group commit of queued writes, each resolved after its commit.

One thread drains a queue and commits whatever is waiting in one transaction: every write is
durable (synchronous=FULL) before its future resolves, and concurrent writers share one fsync
instead of paying one each. `BEGIN IMMEDIATE` takes sqlite's write lock before the revision is
read, so several processes (the service and the CLI) share one counter and CAS stays correct
between them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import sqlite3
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.errors import Conflict, StoreUnavailable
from provisioner.store.base import KeyValue
from provisioner.store.common import conflict_message, revision_matches
from provisioner.store.sqlite.schema import PUT_KV, PUT_LOG, prune

BATCH = 512  # most operations committed in one transaction
# The writer thread releases the GIL in every sqlite call and must win it back after each; while
# the event loop thread is busy (a DHCP server under load) it only gets it when the loop thread
# is forced to yield, after sys.getswitchinterval() (5 ms by default), so a commit of ~7
# statements took ~35 ms and REQUEST->ACK latency followed. A shorter interval bounds that wait.
SWITCH_INTERVAL = 0.0005

# What a queued write does inside the open transaction: given the store revision, return the
# new revision and the caller's result (an exception is raised to the caller).
Apply = Callable[[sqlite3.Connection, int], tuple[int, Any]]


@dataclass
class _Op:
    """One queued write; `apply` runs in the writer thread inside the open transaction. A plain
    put (no lease) also carries `put` = (key, value, expect): runs of those are applied
    together, with one read and two executemany for the run (_put_run)."""

    apply: Apply
    loop: asyncio.AbstractEventLoop
    put: tuple[str, bytes, int | None] | None = None
    future: asyncio.Future[Any] = field(init=False)

    def __post_init__(self) -> None:
        self.future = self.loop.create_future()


class Writer:
    """The queue, the thread that commits it, and the deadlines of the writes waiting on it."""

    def __init__(self, path: Path, db: sqlite3.Connection, *, timeout: float, history: int,
                 notify: Callable[[], None]) -> None:
        self._path = path
        self._db = db
        self._timeout = timeout
        self._history = history
        self._notify = notify  # wakes this process's watchers after a commit
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._deadlines: collections.deque[tuple[float, asyncio.Future[Any]]] = (
            collections.deque())
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_loop: asyncio.AbstractEventLoop | None = None
        if sys.getswitchinterval() > SWITCH_INTERVAL:  # process-wide; never made longer here
            sys.setswitchinterval(SWITCH_INTERVAL)
        self._thread = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._thread.start()

    async def submit(self, apply: Apply, put: tuple[str, bytes, int | None] | None = None) -> Any:
        """Queue `apply` for the next group commit; its result once committed."""
        loop = asyncio.get_running_loop()
        op = _Op(apply, loop, put)
        self._queue.put(op)
        # Deadlines in a queue checked by one timer, rather than asyncio.timeout + shield (or a
        # timer each): this is the write path of every DHCP bind, and those cost a Timeout, an
        # outer future and two more trips through the loop per write (a timer each, a push onto
        # the loop's heap of thousands). The timeout is the same for every op, so the queue is
        # in deadline order. A commit that lands after its deadline resolves nothing.
        self._deadlines.append((loop.time() + self._timeout, op.future))
        if self._expiry is None or self._expiry_loop is not loop:
            self._expiry_loop = loop
            self._expiry = loop.call_later(self._timeout, self._expire)
        return await op.future

    def _expire(self) -> None:
        loop, pending = self._expiry_loop, self._deadlines
        assert loop is not None
        now = loop.time()
        while pending and (pending[0][1].done() or pending[0][0] <= now):
            _, future = pending.popleft()
            if not future.done() and not future.get_loop().is_closed():
                future.set_exception(StoreUnavailable(
                    f"store {self._path} did not commit within {self._timeout:g}s; "
                    "is another process holding it locked, or is the disk full?"))
        self._expiry = loop.call_at(pending[0][0], self._expire) if pending else None

    async def stop(self) -> None:
        """Commit what is queued, then end the thread and close the connection."""
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join, self._timeout)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._db.close()

    # -- the thread ------------------------------------------------------------------------

    def _write_loop(self) -> None:
        while (op := self._queue.get()) is not None:
            batch = [op]
            while len(batch) < BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch: list[_Op]) -> None:
        db = self._db
        results: list[Any] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            rev = start = db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()[0]
            i = 0
            while i < len(batch):
                if batch[i].put is None:
                    rev, result = batch[i].apply(db, rev)
                    results.append(result)
                    i += 1
                    continue
                j = i + 1
                while j < len(batch) and batch[j].put is not None:
                    j += 1
                rev = _put_run(db, batch[i:j], rev, results)
                i = j
            if rev != start:
                db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (rev,))
                if rev // 1024 != start // 1024:
                    prune(db, rev - self._history)
            db.execute("COMMIT")
        except Exception as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            error = StoreUnavailable(f"store {self._path} write failed: {exc}")
            results = [error] * len(batch)
        # One wake-up per loop for the whole batch: call_soon_threadsafe writes to the loop's
        # self-pipe, and a write per operation cost the loop a syscall and a wake-up each.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for op, result in zip(batch, results, strict=True):
            by_loop.setdefault(op.loop, []).append((op.future, result))
        for loop, done in by_loop.items():
            notify = self._notify if loop is batch[0].loop else None
            with contextlib.suppress(RuntimeError):  # the caller's loop has closed
                loop.call_soon_threadsafe(_resolve_all, done, notify)


def _resolve_all(done: list[tuple[asyncio.Future[Any], Any]],
                 notify: Callable[[], None] | None) -> None:
    for future, result in done:
        if future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
    if notify is not None:
        notify()


def _put_run(db: sqlite3.Connection, ops: list[_Op], rev: int, results: list[Any]) -> int:
    """Consecutive plain puts, applied in order as each op's `apply` would (a later put of the
    same key sees the earlier one), with one SELECT for the current revisions and two
    executemany: the per-statement cost of three statements a put held the GIL against the
    event loop that is waiting for these results."""
    current: dict[str, tuple[int, int]] = {}  # key -> (create_revision, mod_revision)
    keys = list({op.put[0] for op in ops if op.put is not None})
    for at in range(0, len(keys), 500):
        chunk = keys[at:at + 500]
        marks = ",".join("?" * len(chunk))
        for key, created, modified in db.execute(
                f"SELECT key, create_rev, mod_rev FROM kv WHERE key IN ({marks})", chunk):
            current[key] = (created, modified)
    rows: dict[str, tuple[str, bytes, int, int, int]] = {}
    log: list[tuple[int, str, bytes]] = []
    for op in ops:
        assert op.put is not None
        key, data, expect = op.put
        found = current.get(key)
        if not revision_matches(None if found is None else found[1], expect):
            kv = None if found is None else KeyValue(key, b"", found[0], found[1])
            results.append(Conflict(conflict_message(key, kv, expect)))
            continue
        rev += 1
        created = found[0] if found else rev
        current[key] = (created, rev)
        rows[key] = (key, data, created, rev, 0)
        log.append((rev, key, data))
        results.append(rev)
    if rows:
        db.executemany(PUT_KV, rows.values())
        db.executemany(PUT_LOG, log)
    return rev
