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

- schema.py: the tables, the connections, the statements that read and write them.
- writer.py: the writer thread and its group commit.
- store.py: `SqliteStore`, the contract's operations as queued writes, and lease expiry.
- watch.py: the log read forward.
"""

from provisioner.store.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
