"""The sqlite store's tables, its connections, and the statements that read and write them.

`kv` holds the keys, `log` every change by revision (what `watch` reads forward), `leases` the
leases and their deadlines, `meta` the revision counter and how far the log was compacted. The
write statements run in the writer thread inside its open transaction (writer.py); the reads
on connections of their own (`Reader`).
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provisioner.errors import StoreUnavailable
from provisioner.store.base import KeyValue, RangeResult
from provisioner.store.common import Change, prefix_end

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
PUT_KV = "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?)"
PUT_LOG = "INSERT INTO log VALUES (?, ?, ?, 0)"
IDLE_READERS = 4  # range connections kept open between reads; more concurrent ones are closed


def connect(path: Path, timeout: float, synchronous: str) -> sqlite3.Connection:
    """A connection in WAL mode (readers never block the writer) in autocommit: transactions
    are begun explicitly. A new store file is created 0600 (it holds power passwords and token
    hashes), whatever the umask; SQLite gives its -wal and -shm files the database's mode."""
    try:
        _create_private(path)
        db = sqlite3.connect(path, timeout=timeout, isolation_level=None,
                             check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot open the store at {path}: {exc}") from exc
    return db


def _create_private(path: Path) -> None:
    if str(path) == ":memory:" or path.exists():
        return
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:  # another process created it meanwhile
        pass
    except OSError as exc:
        raise StoreUnavailable(f"cannot create the store at {path}: {exc.strerror}") from exc


# -- writes: in the writer thread, inside its transaction ------------------------------------


def current(db: sqlite3.Connection, key: str) -> KeyValue | None:
    row = db.execute("SELECT * FROM kv WHERE key = ?", (key,)).fetchone()
    return KeyValue(*row) if row else None


def write(db: sqlite3.Connection, change: Change) -> None:
    """Apply `change` to `kv` and append it to the `log`."""
    kv = change.kv
    if kv is None:
        db.execute("DELETE FROM kv WHERE key = ?", (change.key,))
        db.execute("INSERT INTO log VALUES (?, ?, x'', 1)", (change.revision, change.key))
        return
    db.execute(PUT_KV, (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease))
    db.execute(PUT_LOG, (change.revision, kv.key, kv.value))


def drop_lease(db: sqlite3.Connection, lease: int, rev: int) -> int:
    """Forget `lease` and delete its keys from revision `rev` on; the new revision."""
    db.execute("DELETE FROM leases WHERE id = ?", (lease,))
    keys = db.execute("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease,)).fetchall()
    for (key,) in keys:
        rev += 1
        write(db, Change(key, rev, None))
    return rev


def prune(db: sqlite3.Connection, upto: int) -> None:
    """Drop the log up to revision `upto`: a watch from there on raises Compacted."""
    if upto <= 0:
        return
    db.execute("DELETE FROM log WHERE rev <= ?", (upto,))
    db.execute("UPDATE meta SET value = max(value, ?) WHERE name = 'compacted'", (upto,))


# -- reads ---------------------------------------------------------------------------------


class Reader:
    """The read connections. A point read costs tens of microseconds, less than a hop to a
    thread pool would, so `read` and `get` run inline on the caller's thread; a range may be
    100k rows (a second or more), so `range` and `page` run in a worker thread on a connection
    of their own, and the event loop (DHCP, TFTP) keeps running meanwhile. WAL lets them read
    while the writer thread commits."""

    def __init__(self, path: Path, db: sqlite3.Connection,
                 opener: Callable[[], sqlite3.Connection]) -> None:
        self._path = path
        self._db = db
        self._opener = opener
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._closed = False

    def read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store {self._path} read failed: {exc}") from exc

    def get(self, key: str) -> KeyValue | None:
        rows = self.read("SELECT * FROM kv WHERE key = ?", (key,))
        return KeyValue(*rows[0]) if rows else None

    async def range(self, prefix: str) -> RangeResult:
        sql = "SELECT * FROM kv WHERE key >= ? AND key < ? ORDER BY key"
        return await self._off_loop(sql, (prefix, prefix_end(prefix)))

    async def page(self, prefix: str, after: str, limit: int, reverse: bool) -> RangeResult:
        end = prefix_end(prefix)
        if reverse:  # keys under the prefix below the cursor, newest first
            sql = "SELECT * FROM kv WHERE key >= ? AND key < ? ORDER BY key DESC LIMIT ?"
            return await self._off_loop(sql, (prefix, min(after or end, end), limit))
        sql = "SELECT * FROM kv WHERE key >= ? AND key > ? AND key < ? ORDER BY key LIMIT ?"
        return await self._off_loop(sql, (prefix, after, end, limit))

    async def _off_loop(self, sql: str, args: tuple[Any, ...]) -> RangeResult:
        """`sql`'s rows and the revision they were read at, in a worker thread."""
        try:
            db = self._idle.get_nowait()
        except queue.Empty:
            db = self._opener()
        try:
            return await asyncio.to_thread(_snapshot, db, sql, args)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"store {self._path} read failed: {exc}") from exc
        finally:
            if self._closed or self._idle.qsize() >= IDLE_READERS:
                db.close()
            else:
                self._idle.put(db)

    def meta(self) -> tuple[int, int]:
        """(the revision the log was compacted to, the store's revision)."""
        rows = dict(self.read("SELECT name, value FROM meta"))
        return rows["compacted"], rows["revision"]

    def close(self) -> None:
        self._closed = True
        self._db.close()
        while not self._idle.empty():
            self._idle.get_nowait().close()


def _snapshot(db: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> RangeResult:
    """One read transaction, so the revision matches the rows (watch from revision + 1)."""
    db.execute("BEGIN")
    try:
        rows = db.execute(sql, args).fetchall()
        revision = db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
    finally:
        db.execute("COMMIT")
    return RangeResult([KeyValue(*row) for row in rows], revision)
