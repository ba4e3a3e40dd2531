"""The embedded store: one sqlite file in WAL mode, one revision counter, watch across processes.

Why this shape:
- Writes go through one writer thread that drains a queue and commits whatever is waiting in one
  transaction (group commit): every put is durable (synchronous=FULL) before its future
  resolves, and concurrent writers share one fsync instead of paying one each.
- `BEGIN IMMEDIATE` takes sqlite's write lock before the revision is read, so several processes
  (the service and the CLI) share one counter and CAS stays correct between them.
- Reads run inline on the caller's thread on a second connection: a point read costs tens of
  microseconds, less than a hop to a thread pool would.
- Every change is appended to a `log` table keyed by revision; `watch` reads it forward. In this
  process a commit wakes watchers at once; other processes' commits are seen within POLL
  seconds (an indexed read of the log from the next revision).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.errors import Conflict, NotFound, ProvisionerError, StoreUnavailable
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

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value BLOB NOT NULL,
    create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, lease INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_lease ON kv(lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS log (
    rev INTEGER PRIMARY KEY, key TEXT NOT NULL, value BLOB NOT NULL, deleted INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY, ttl REAL NOT NULL, expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compacted', 0);
"""
HISTORY = 100_000  # log rows kept for watch(start=...); older ones are compacted away
POLL = 0.05  # seconds between checks for other processes' commits
BATCH = 512  # most operations committed in one transaction
WATCH_BATCH = 1000  # most log rows one watch reads at a time
# The writer thread releases the GIL in every sqlite call and must win it back after each; while
# the event loop thread is busy (a DHCP server under load) it only gets it when the loop thread
# is forced to yield, after sys.getswitchinterval() (5 ms by default), so a commit of ~7
# statements took ~35 ms and REQUEST->ACK latency followed. A shorter interval bounds that wait.
SWITCH_INTERVAL = 0.0005


@dataclass
class _Op:
    """One queued write; `apply` runs in the writer thread inside the open transaction. A plain
    put (no lease) also carries `put` = (key, value, expect): runs of those are applied
    together, with one read and two executemany for the run (_put_run)."""

    apply: Callable[[sqlite3.Connection, int], tuple[int, Any]]
    loop: asyncio.AbstractEventLoop
    put: tuple[str, bytes, int | None] | None = None
    future: asyncio.Future[Any] = field(init=False)

    def __post_init__(self) -> None:
        self.future = self.loop.create_future()


class SqliteStore:
    backend = "sqlite"

    def __init__(self, path: Path | str, *, timeout: float = 5.0, history: int = HISTORY,
                 synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self._timeout = timeout
        self._history = history
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer_db = self._connect(synchronous)
        self._writer_db.executescript(SCHEMA)
        self._reader = self._connect(synchronous)
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._changed: asyncio.Event | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False
        self._deadlines: collections.deque[tuple[float, asyncio.Future[Any]]] = (
            collections.deque())
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_loop: asyncio.AbstractEventLoop | None = None
        if sys.getswitchinterval() > SWITCH_INTERVAL:  # process-wide; never made longer here
            sys.setswitchinterval(SWITCH_INTERVAL)
        self._thread = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._thread.start()

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the store at {self.path}: {exc}") from exc
        return db

    # -- reads: inline, on the caller's thread -------------------------------------------

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._reader.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store {self.path} read failed: {exc}") from exc

    async def get(self, key: str) -> KeyValue | None:
        self._start()
        rows = self._read("SELECT * FROM kv WHERE key = ?", (check_key(key),))
        return KeyValue(*rows[0]) if rows else None

    async def range(self, prefix: str) -> RangeResult:
        self._start()
        # One read transaction so the revision matches the rows (watch from revision + 1).
        try:
            self._reader.execute("BEGIN")
            rows = self._reader.execute(
                "SELECT * FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, _prefix_end(prefix)),
            ).fetchall()
            revision = self._reader.execute(
                "SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
            self._reader.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store {self.path} read failed: {exc}") from exc
        return RangeResult([KeyValue(*row) for row in rows], revision)

    # -- writes: queued to the writer thread, resolved after commit ------------------------

    async def _submit(self, apply: Callable[[sqlite3.Connection, int], tuple[int, Any]],
                      put: tuple[str, bytes, int | None] | None = None) -> Any:
        if self._closed:
            raise StoreUnavailable(f"store {self.path} is closed")
        self._start()
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
                    f"store {self.path} did not commit within {self._timeout:g}s; "
                    "is another process holding it locked, or is the disk full?"))
        self._expiry = loop.call_at(pending[0][0], self._expire) if pending else None

    async def put(
        self, key: str, value: bytes, *, expect: int | None = None, lease: int = 0
    ) -> int:
        check_key(key)
        check_expect(expect)
        data = bytes(value)

        def apply(db: sqlite3.Connection, rev: int) -> tuple[int, Any]:
            current = _current(db, key)
            if not expect_matches(current, expect):
                return rev, Conflict(conflict_message(key, current, expect))
            if lease and not db.execute("SELECT 1 FROM leases WHERE id = ?", (lease,)).fetchone():
                return rev, NotFound(f"lease {lease} has expired or was revoked; grant a new one")
            rev += 1
            created = current.create_revision if current else rev
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?)",
                       (key, data, created, rev, lease))
            db.execute("INSERT INTO log VALUES (?, ?, ?, 0)", (rev, key, data))
            return rev, rev

        result: int = await self._submit(apply, (key, data, expect) if not lease else None)
        return result

    async def delete(self, key: str, *, expect: int | None = None) -> int:
        check_key(key)
        check_expect(expect)

        def apply(db: sqlite3.Connection, rev: int) -> tuple[int, Any]:
            current = _current(db, key)
            if expect is None and current is None:
                return rev, NotFound(f"{key} does not exist")
            if not expect_matches(current, expect):
                return rev, Conflict(conflict_message(key, current, expect))
            if current is None:
                return rev, rev  # expect=0 and absent: nothing to do
            return _delete(db, key, rev), rev + 1

        result: int = await self._submit(apply)
        return result

    async def txn(self, ops: Sequence[TxnOp]) -> list[int]:
        """All of `ops` in the one transaction of the writer's next group commit."""
        check_txn(ops)
        writes = [(op.key, None if op.value is None else bytes(op.value), op.expect)
                  for op in ops]

        def apply(db: sqlite3.Connection, rev: int) -> tuple[int, Any]:
            found = [_current(db, key) for key, _, _ in writes]
            failed = [(key, current, expect) for (key, _, expect), current
                      in zip(writes, found, strict=True) if not expect_matches(current, expect)]
            if failed:
                return rev, txn_conflict(failed)
            revisions: list[int] = []
            for (key, data, _), current in zip(writes, found, strict=True):
                if data is None:
                    if current is not None:
                        rev = _delete(db, key, rev)
                    revisions.append(rev)
                    continue
                rev += 1
                created = current.create_revision if current else rev
                db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, 0)",
                           (key, data, created, rev))
                db.execute("INSERT INTO log VALUES (?, ?, ?, 0)", (rev, key, data))
                revisions.append(rev)
            return rev, revisions

        result: list[int] = await self._submit(apply)
        return result

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
        db = self._writer_db
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
                    _prune(db, rev - self._history)
            db.execute("COMMIT")
        except Exception as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            error = StoreUnavailable(f"store {self.path} write failed: {exc}")
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

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    # -- watch ---------------------------------------------------------------------------

    async def watch(self, prefix: str, start: int | None = None) -> AsyncIterator[WatchEvent]:
        self._start()
        compacted, revision = self._meta()
        next_rev = revision + 1 if start is None else start
        if next_rev <= compacted:
            raise Compacted(
                f"revision {next_rev} was compacted; the oldest kept is {compacted + 1}")
        end = _prefix_end(prefix)
        while True:
            changed = self._changed
            assert changed is not None
            # The prefix is matched by sqlite, between next_rev and the newest revision read
            # first: a watch on nodes/ then never fetches (or wakes Python for) the rows of a
            # DHCP server's lease writes, and next_rev still moves past them.
            head = self._read("SELECT max(rev) FROM log")[0][0] or 0
            if head >= next_rev:
                rows = self._read(
                    "SELECT rev, key, value, deleted FROM log WHERE rev BETWEEN ? AND ? "
                    "AND key >= ? AND key < ? ORDER BY rev LIMIT ?",
                    (next_rev, head, prefix, end, WATCH_BATCH))
                for rev, key, value, deleted in rows:
                    kind = EventType.DELETE if deleted else EventType.PUT
                    yield WatchEvent(kind, key, b"" if deleted else value, rev)
                next_rev = rows[-1][0] + 1 if len(rows) == WATCH_BATCH else head + 1
            else:
                # Our own commits wake us at once; another process's are seen at the next poll.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL):
                        await changed.wait()

    def _meta(self) -> tuple[int, int]:
        rows = dict(self._read("SELECT name, value FROM meta"))
        return rows["compacted"], rows["revision"]

    async def compact(self, revision: int) -> None:
        """Drop history before `revision`: watch(start < revision) raises Compacted."""

        def apply(db: sqlite3.Connection, rev: int) -> tuple[int, Any]:
            _prune(db, revision - 1)
            return rev, None

        await self._submit(apply)

    # -- leases --------------------------------------------------------------------------

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
            if cur.rowcount == 0:
                return rev, NotFound(f"lease {lease} has expired or was revoked; grant a new one")
            return rev, None

        await self._submit(apply)

    async def revoke(self, lease: int) -> None:
        await self._submit(lambda db, rev: (_drop_lease(db, lease, rev), None))

    async def _sweep_leases(self) -> None:
        """Expire leases: any process that has the store open does it, so a crashed lease
        holder's keys still go away."""
        while not self._closed:
            await asyncio.sleep(0.1)
            rows = self._read("SELECT id FROM leases WHERE expires <= ?", (time.time(),))
            for (lease,) in rows:

                def apply(db: sqlite3.Connection, rev: int, lease: int = lease) -> tuple[int, Any]:
                    row = db.execute("SELECT expires FROM leases WHERE id = ?", (lease,)).fetchone()
                    if row is None or row[0] > time.time():
                        return rev, None  # renewed or already swept by someone else
                    return _drop_lease(db, lease, rev), None

                try:
                    await self._submit(apply)
                except ProvisionerError:
                    continue  # retried on the next pass

    # -- lifecycle -----------------------------------------------------------------------

    def _start(self) -> None:
        """Bind to the running loop on first use: the change event and the lease sweeper."""
        if self._changed is None:
            self._changed = asyncio.Event()
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_leases())

    async def status(self) -> StoreStatus:
        compacted, revision = self._meta()
        keys = self._read("SELECT count(*) FROM kv")[0][0]
        size = self.path.stat().st_size if self.path.exists() else 0
        detail = f"{size / 1e6:.1f} MB file, history from revision {compacted + 1}"
        return StoreStatus(self.backend, str(self.path), revision, keys, detail)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join, self._timeout)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._writer_db.close()
        self._reader.close()


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _resolve_all(done: list[tuple[asyncio.Future[Any], Any]],
                 notify: Callable[[], None] | None) -> None:
    for future, result in done:
        _resolve(future, result)
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
        if not _matches(found, expect):
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
        db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?)", rows.values())
        db.executemany("INSERT INTO log VALUES (?, ?, ?, 0)", log)
    return rev


def _matches(found: tuple[int, int] | None, expect: int | None) -> bool:
    """expect_matches() on (create_revision, mod_revision)."""
    if expect is None:
        return True
    if expect == 0:
        return found is None
    return found is not None and found[1] == expect


def _current(db: sqlite3.Connection, key: str) -> KeyValue | None:
    row = db.execute("SELECT * FROM kv WHERE key = ?", (key,)).fetchone()
    return KeyValue(*row) if row else None


def _delete(db: sqlite3.Connection, key: str, rev: int) -> int:
    rev += 1
    db.execute("DELETE FROM kv WHERE key = ?", (key,))
    db.execute("INSERT INTO log VALUES (?, ?, x'', 1)", (rev, key))
    return rev


def _drop_lease(db: sqlite3.Connection, lease: int, rev: int) -> int:
    db.execute("DELETE FROM leases WHERE id = ?", (lease,))
    keys = db.execute("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease,)).fetchall()
    for (key,) in keys:
        rev = _delete(db, key, rev)
    return rev


def _prune(db: sqlite3.Connection, upto: int) -> None:
    if upto <= 0:
        return
    db.execute("DELETE FROM log WHERE rev <= ?", (upto,))
    db.execute("UPDATE meta SET value = max(value, ?) WHERE name = 'compacted'", (upto,))


def _prefix_end(prefix: str) -> str:
    """The smallest key greater than every key that starts with `prefix`."""
    return prefix + "\U0010ffff"
