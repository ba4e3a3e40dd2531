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
- A backend that cannot answer within its timeout raises `StoreUnavailable`.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from provisioner.errors import Conflict, ValidationError


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


class Compacted(Conflict):
    """The requested revision is no longer in the store's history; re-read and watch again."""


@runtime_checkable
class KeyValueStore(Protocol):
    """The revisioned key-value contract (see the module docstring)."""

    backend: str

    async def get(self, key: str) -> KeyValue | None: ...

    async def range(self, prefix: str) -> RangeResult: ...

    async def put(
        self, key: str, value: bytes, *, expect: int | None = None, lease: int = 0
    ) -> int:
        """Write `value`; return the new revision. Raises Conflict when `expect` fails."""
        ...

    async def delete(self, key: str, *, expect: int | None = None) -> int:
        """Delete `key`; return the new revision. Raises NotFound when absent (expect=None)
        and Conflict when `expect` fails."""
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


def check_key(key: str) -> str:
    """Keys are absolute, printable paths: `/provisioner/v1/...`."""
    if not key.startswith("/") or not key.isprintable() or len(key) > 1024:
        raise ValidationError("key", f"{key!r} must be a printable path starting with '/'")
    return key


def check_expect(expect: int | None) -> None:
    if expect is not None and expect < 0:
        raise ValidationError("expect", "must be None, 0 (absent) or a revision > 0")


def expect_matches(current: KeyValue | None, expect: int | None) -> bool:
    if expect is None:
        return True
    if expect == 0:
        return current is None
    return current is not None and current.mod_revision == expect


def conflict_message(key: str, current: KeyValue | None, expect: int | None) -> str:
    found = "absent" if current is None else f"at revision {current.mod_revision}"
    wanted = "absent" if expect == 0 else f"at revision {expect}"
    return f"{key} changed: expected it {wanted}, found it {found}; read it again and retry"
