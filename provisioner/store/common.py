"""What the memory, sqlite and etcd backends share: checking arguments, comparing expectations,
wording conflicts, working out a write's new key and event, prefix bounds and waking watchers.

The contract itself (the types, the errors, the `KeyValueStore` protocol) is in base.py; this
module is how the backends implement it alike, so a rule of the contract is written once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from provisioner.errors import Conflict, NotFound, ProvisionerError, ValidationError
from provisioner.store.base import (
    Compacted,
    EventType,
    KeyValue,
    TxnConflict,
    TxnOp,
    WatchEvent,
)

# -- arguments ---------------------------------------------------------------------------------


def check_key(key: str) -> str:
    """Keys are absolute, printable paths: `/provisioner/v1/...`."""
    if not key.startswith("/") or not key.isprintable() or len(key) > 1024:
        raise ValidationError("key", f"{key!r} must be a printable path starting with '/'")
    return key


def check_expect(expect: int | None) -> None:
    if expect is not None and expect < 0:
        raise ValidationError("expect", "must be None, 0 (absent) or a revision > 0")


def check_txn(ops: Sequence[TxnOp]) -> None:
    """Validate a txn's ops: keys well formed and distinct, expectations sane."""
    if not ops:
        raise ValidationError("ops", "a txn needs at least one operation")
    seen: set[str] = set()
    for op in ops:
        check_key(op.key)
        check_expect(op.expect)
        if op.compare_only and (op.expect is None or op.value is not None):
            raise ValidationError("ops", f"{op.key}: a compare needs an expect and no value")
        if op.key in seen:
            raise ValidationError("ops", f"{op.key} appears twice in one txn")
        seen.add(op.key)


def check_page(prefix: str, after: str, limit: int) -> None:
    """A page's arguments: a positive limit, and a cursor that is a key under the prefix."""
    if limit < 1:
        raise ValidationError("limit", "must be 1 or more")
    if after and (not after.startswith(prefix) or not after.isprintable()):
        raise ValidationError("after", f"{after[:80]!r} is not a key under {prefix}; start "
                              "again without a cursor")


def prefix_end(prefix: str) -> str:
    """The smallest key above every key that starts with `prefix`: [prefix, end) is the prefix's
    range. Keys are printable (check_key) and U+10FFFF is not, so no key reaches `end`; UTF-8
    keeps code point order, so the encoded bounds select the same keys in etcd's byte order."""
    return prefix + "\U0010ffff"


# -- expectations and their failures --------------------------------------------------------


def revision_matches(mod_revision: int | None, expect: int | None) -> bool:
    """Whether a key at `mod_revision` (None: absent) meets `expect` (see base.py)."""
    if expect is None:
        return True
    if expect == 0:
        return mod_revision is None
    return mod_revision == expect


def expect_matches(current: KeyValue | None, expect: int | None) -> bool:
    return revision_matches(None if current is None else current.mod_revision, expect)


def conflict_message(key: str, current: KeyValue | None, expect: int | None) -> str:
    found = "absent" if current is None else f"at revision {current.mod_revision}"
    wanted = "absent" if expect == 0 else f"at revision {expect}"
    return f"{key} changed: expected it {wanted}, found it {found}; read it again and retry"


def put_refusal(key: str, current: KeyValue | None, expect: int | None) -> Conflict | None:
    """Why a put of `key`, found as `current`, must not happen (None: it may)."""
    if expect_matches(current, expect):
        return None
    return Conflict(conflict_message(key, current, expect))


def delete_refusal(
    key: str, current: KeyValue | None, expect: int | None
) -> ProvisionerError | None:
    """Why a delete of `key` must not happen (None: it may; with `current` None it then deletes
    nothing, as `expect=0` on an absent key asks)."""
    if expect is None and current is None:
        return missing(key)
    return put_refusal(key, current, expect)


def txn_conflict(failed: Sequence[tuple[str, KeyValue | None, int | None]]) -> TxnConflict:
    """The TxnConflict for (key, what was found, what was expected) of each failed op."""
    message = "; ".join(conflict_message(key, found, expect) for key, found, expect in failed)
    return TxnConflict(message, [key for key, _, _ in failed])


def txn_refusal(ops: Sequence[TxnOp], found: Sequence[KeyValue | None]) -> TxnConflict | None:
    """The TxnConflict naming every op whose key, found as `found[i]`, fails its `expect`."""
    failed = [(op.key, current, op.expect) for op, current in zip(ops, found, strict=True)
              if not expect_matches(current, op.expect)]
    return txn_conflict(failed) if failed else None


def missing(key: str) -> NotFound:
    return NotFound(f"{key} does not exist")


def lease_gone(lease: int) -> NotFound:
    return NotFound(f"lease {lease} has expired or was revoked; grant a new one")


def watch_compacted(prefix: str, start: int, oldest: int) -> Compacted:
    return Compacted(
        f"watch on {prefix} from revision {start}: history before revision {oldest} was "
        "compacted; read again with range() and watch from its revision + 1"
    )


# -- writes: the new key and its event ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One key written at `revision`: `kv` is what it now holds, None once it is deleted."""

    key: str
    revision: int
    kv: KeyValue | None

    @property
    def event(self) -> WatchEvent:
        return watch_event(self.key, self.revision, None if self.kv is None else self.kv.value)


def watch_event(key: str, revision: int, value: bytes | None) -> WatchEvent:
    """The event of a write at `revision`: a PUT of `value`, or a DELETE (None), which carries
    no value."""
    if value is None:
        return WatchEvent(EventType.DELETE, key, b"", revision)
    return WatchEvent(EventType.PUT, key, value, revision)


def put_change(
    key: str, value: bytes, current: KeyValue | None, revision: int, lease: int = 0
) -> Change:
    """A put at `revision`; the key keeps the revision that created it."""
    created = current.create_revision if current is not None else revision
    return Change(key, revision, KeyValue(key, bytes(value), created, revision, lease))


def plan_txn(
    ops: Sequence[TxnOp], found: Sequence[KeyValue | None], revision: int
) -> tuple[list[Change], list[int]]:
    """The changes of a txn whose expectations held, from store `revision` on, one revision per
    op (as memory and sqlite number them), and each op's revision. A delete of an absent key
    changes nothing and reports the revision before it."""
    changes: list[Change] = []
    revisions: list[int] = []
    for op, current in zip(ops, found, strict=True):
        if op.compare_only:
            pass  # checked with the others by txn_refusal; nothing to write
        elif op.value is not None:
            revision += 1
            changes.append(put_change(op.key, op.value, current, revision))
        elif current is not None:
            revision += 1
            changes.append(Change(op.key, revision, None))
        revisions.append(revision)
    # A compare writes nothing: it reports the txn's last revision (as etcd stamps every op)
    return changes, [revision if op.compare_only else r
                     for op, r in zip(ops, revisions, strict=True)]


# -- watchers ----------------------------------------------------------------------------------


class Changes:
    """Wakes this process's watchers when a write lands, and ends them when the store closes.

    A watcher takes `ticket()` before it reads, reads, then awaits the ticket: a write between
    the read and the wait has already set that ticket, so it is never missed. It stops once
    `closed` is set.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.closed = False

    def ticket(self) -> asyncio.Event:
        return self._event

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def close(self) -> None:
        self.closed = True
        self.notify()


def first_revision(start: int | None, revision: int) -> int:
    """The revision a watch begins at: `start`, or the next one after the store's `revision`."""
    return revision + 1 if start is None else start
