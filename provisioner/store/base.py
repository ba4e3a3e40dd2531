"""The store contract: a small revisioned key-value store modelled on etcd v3.

Every backend (memory, sqlite, etcd) implements `KeyValueStore` and passes the one contract suite
in tests/store/test_contract.py. The rules:

- One revision counter per store. Every put or delete bumps it by one and stamps the key with
  it (`mod_revision`); `create_revision` is the revision that created the key.
- `expect` is a compare-and-swap: `None` writes unconditionally, `0` requires the key to be
  absent, `N > 0` requires the key's `mod_revision == N`. A mismatch raises `Conflict`.
  `delete(key, expect=0)` of an absent key is a no-op that returns the current revision.
- `watch(prefix, start)` (start >= 1) yields every change under the prefix with revision >=
  start, in revision order, then follows new changes. A start older than the retained history
  raises `Compacted` (a `Conflict`): the caller re-reads with `range` and watches from there.
- Leases: `grant(ttl)` returns an id; keys put with `lease=id` are deleted when the lease
  expires or is revoked (a DELETE event is emitted). `keepalive(id)` renews it. A lease lasts
  at least `ttl` seconds: etcd rounds up to whole seconds and to its minimum TTL.
- `txn(ops)` applies several puts and deletes atomically: every `expect` is checked first and
  either all ops are applied or none (a mismatch raises `TxnConflict` naming every key whose
  expectation failed, in op order). Keys in one txn are distinct. It returns each op's
  revision: etcd stamps every key of a txn with one revision, sqlite and memory give each op
  its own. A delete of an absent key with `expect=None` is a no-op inside a txn. One txn is one
  round trip (etcd Txn, one sqlite transaction): the boot callback writes its five keys in one.
  An op with `compare_only` writes nothing: its `expect` is checked with the others (a fencing
  token: an effect commits only while its writer still holds an election key, ha/election.py);
  its revision is the one the txn's writes got, or the store's when there are none.
- `page(prefix, after=, limit=, reverse=)` reads at most `limit` keys under the prefix in key
  order (descending with `reverse`), past `after` (the last key of the previous page; "" starts
  at the first key, or the last when reversed). A full page may have more after it; a short one
  is the end. Retention walks the store with it and the API pages events and audit entries.
- A backend that cannot answer within its timeout raises `StoreUnavailable`.
- `close()` ends every open watch: its iteration stops without an error. Closing twice is fine.

The backends share their implementation of these rules through common.py.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from provisioner.errors import Conflict


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


class EventType(enum.StrEnum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    key: str
    value: bytes  # empty for DELETE
    revision: int


@dataclass(frozen=True, slots=True)
class RangeResult:
    """The keys under a prefix and the store revision they were read at (watch from +1)."""

    items: Sequence[KeyValue]
    revision: int


@dataclass(frozen=True, slots=True)
class StoreStatus:
    backend: str
    endpoint: str
    revision: int
    keys: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TxnOp:
    """One write in a txn: put `value` (bytes) or delete (`value=None`), with `expect` as in
    put/delete; or, with `compare_only`, no write but the check of `expect` (value None)."""

    key: str
    value: bytes | None
    expect: int | None = None
    compare_only: bool = False


class TxnConflict(Conflict):
    """A txn's expectations failed for `keys` (in op order; `key` is the first); nothing was
    written."""

    def __init__(self, message: str, keys: Sequence[str]) -> None:
        super().__init__(message)
        self.keys = tuple(keys)
        self.key = self.keys[0]


class Compacted(Conflict):
    """The requested revision is no longer in the store's history; re-read and watch again."""


@runtime_checkable
class KeyValueStore(Protocol):
    """The revisioned key-value contract (see the module docstring)."""

    backend: str

    async def get(self, key: str) -> KeyValue | None: ...

    async def range(self, prefix: str) -> RangeResult: ...

    async def page(self, prefix: str, *, after: str = "", limit: int,
                   reverse: bool = False) -> RangeResult:
        """At most `limit` keys under `prefix` past `after`, in key order (descending when
        `reverse`). Raises ValidationError when `after` is not under `prefix`."""
        ...

    async def put(
        self, key: str, value: bytes, *, expect: int | None = None, lease: int = 0
    ) -> int:
        """Write `value`; return the new revision. Raises Conflict when `expect` fails."""
        ...

    async def delete(self, key: str, *, expect: int | None = None) -> int:
        """Delete `key`; return the new revision. Raises NotFound when absent (expect=None)
        and Conflict when `expect` fails."""
        ...

    async def txn(self, ops: Sequence[TxnOp]) -> list[int]:
        """Apply `ops` atomically (all or none); return each op's revision. Raises
        TxnConflict when an `expect` fails."""
        ...

    def watch(self, prefix: str, start: int | None = None) -> AsyncIterator[WatchEvent]:
        """Changes under `prefix` from revision `start` (default: the next one)."""
        ...

    async def compact(self, revision: int) -> None:
        """Drop history before `revision`: watch(start < revision) then raises Compacted."""
        ...

    async def grant(self, ttl: float) -> int: ...

    async def keepalive(self, lease: int) -> None: ...

    async def revoke(self, lease: int) -> None: ...

    async def status(self) -> StoreStatus: ...

    async def close(self) -> None: ...

