"""One contract, every backend: memory, sqlite and a real etcd server (see conftest.py)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from provisioner.errors import Conflict, NotFound, ValidationError
from provisioner.store.base import (
    Compacted,
    EventType,
    KeyValueStore,
    TxnConflict,
    TxnOp,
    WatchEvent,
)


async def test_put_get_roundtrip(store: KeyValueStore) -> None:
    rev = await store.put("/t/a", b"one")
    kv = await store.get("/t/a")
    assert kv is not None
    assert (kv.key, kv.value, kv.mod_revision, kv.create_revision) == ("/t/a", b"one", rev, rev)
    assert await store.get("/t/missing") is None


async def test_revisions_increase_and_create_revision_sticks(store: KeyValueStore) -> None:
    first = await store.put("/t/a", b"1")
    second = await store.put("/t/a", b"2")
    assert second > first
    kv = await store.get("/t/a")
    assert kv is not None
    assert (kv.create_revision, kv.mod_revision, kv.value) == (first, second, b"2")


async def test_range_is_prefix_bounded_and_sorted(store: KeyValueStore) -> None:
    for key in ("/t/b", "/t/a", "/t/c/d", "/u/a", "/t"):
        await store.put(key, key.encode())
    result = await store.range("/t/")
    assert [kv.key for kv in result.items] == ["/t/a", "/t/b", "/t/c/d"]
    assert result.revision >= max(kv.mod_revision for kv in result.items)


async def test_cas_create_only_when_absent(store: KeyValueStore) -> None:
    await store.put("/t/x", b"1", expect=0)
    with pytest.raises(Conflict, match="/t/x"):
        await store.put("/t/x", b"2", expect=0)
    kv = await store.get("/t/x")
    assert kv is not None and kv.value == b"1"


async def test_cas_update_requires_current_revision(store: KeyValueStore) -> None:
    rev = await store.put("/t/x", b"1")
    rev2 = await store.put("/t/x", b"2", expect=rev)
    with pytest.raises(Conflict):
        await store.put("/t/x", b"3", expect=rev)
    with pytest.raises(Conflict):
        await store.put("/t/absent", b"3", expect=rev2)
    kv = await store.get("/t/x")
    assert kv is not None and kv.value == b"2"


async def test_cas_two_concurrent_writers_exactly_one_wins(store: KeyValueStore) -> None:
    """The lease-allocation pattern: many writers race a CAS from one read; one wins per round."""
    await store.put("/t/counter", b"0")
    wins = 0
    for _ in range(10):
        kv = await store.get("/t/counter")
        assert kv is not None
        results = await asyncio.gather(
            *(store.put("/t/counter", str(w).encode(), expect=kv.mod_revision) for w in range(2)),
            return_exceptions=True,
        )
        assert sum(isinstance(r, int) for r in results) == 1, results
        assert sum(isinstance(r, Conflict) for r in results) == 1, results
        wins += 1
    assert wins == 10


async def test_cas_increment_under_contention_loses_no_update(store: KeyValueStore) -> None:
    await store.put("/t/n", b"0")

    async def increment(times: int) -> None:
        for _ in range(times):
            while True:
                kv = await store.get("/t/n")
                assert kv is not None
                try:
                    await store.put("/t/n", str(int(kv.value) + 1).encode(), expect=kv.mod_revision)
                    break
                except Conflict:
                    await asyncio.sleep(0)

    await asyncio.gather(*(increment(10) for _ in range(4)))
    kv = await store.get("/t/n")
    assert kv is not None and kv.value == b"40"


async def test_delete_and_delete_cas(store: KeyValueStore) -> None:
    rev = await store.put("/t/d", b"1")
    with pytest.raises(Conflict):
        await store.delete("/t/d", expect=rev + 100)
    await store.delete("/t/d", expect=rev)
    assert await store.get("/t/d") is None
    with pytest.raises(NotFound):
        await store.delete("/t/d")


async def test_delete_expecting_absent_is_a_no_op(store: KeyValueStore) -> None:
    rev = await store.put("/t/other", b"1")
    assert await store.delete("/t/never", expect=0) == rev
    assert (await store.range("/t/")).revision == rev


async def test_bad_keys_are_refused(store: KeyValueStore) -> None:
    with pytest.raises(ValidationError, match="key"):
        await store.put("relative", b"x")
    with pytest.raises(ValidationError, match="key"):
        await store.put("/bad\nkey", b"x")


async def _collect(
    store: KeyValueStore, prefix: str, start: int | None, count: int
) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    async with asyncio.timeout(10):
        async for event in store.watch(prefix, start):
            events.append(event)
            if len(events) == count:
                break
    return events


async def test_watch_sees_live_changes_under_prefix_only(store: KeyValueStore) -> None:
    start = (await store.range("/w/")).revision + 1
    task = asyncio.create_task(_collect(store, "/w/", start, 3))
    await asyncio.sleep(0.05)
    await store.put("/w/a", b"1")
    await store.put("/other", b"x")
    await store.put("/w/a", b"2")
    await store.delete("/w/a")
    events = await task
    assert [(e.type, e.key, e.value) for e in events] == [
        (EventType.PUT, "/w/a", b"1"),
        (EventType.PUT, "/w/a", b"2"),
        (EventType.DELETE, "/w/a", b""),
    ]
    assert events[0].revision < events[1].revision < events[2].revision


async def _busy(store: KeyValueStore, count: int, value: bytes) -> None:
    """`count` writes outside the watched prefix, 100 to a txn (etcd's limit is 128)."""
    for first in range(0, count, 100):
        await store.txn([TxnOp(f"/busy/{i}", value) for i in range(first, first + 100)])


async def test_watch_finds_its_keys_among_many_other_writes(store: KeyValueStore) -> None:
    """A watch on a quiet prefix beside a busy one (nodes/ beside a DHCP server's leases/):
    more unrelated changes than one read of the log takes, before, between and after its
    own, in one transaction and in many; every matching change arrives once, in order."""
    start = (await store.range("/q/")).revision + 1
    task = asyncio.create_task(_collect(store, "/q/", start, 4))
    await asyncio.sleep(0.05)
    await _busy(store, 1200, b"x")
    await store.put("/q/a", b"1")
    for i in range(50):
        await store.put(f"/busy/{i}", b"y")
    await store.txn([TxnOp("/busy/z", b"z"), TxnOp("/q/b", b"2")])
    await _busy(store, 1500, b"w")
    await store.put("/q/a", b"3")
    await store.delete("/q/b")
    events = await asyncio.wait_for(task, 10)
    assert [(e.type, e.key, e.value) for e in events] == [
        (EventType.PUT, "/q/a", b"1"),
        (EventType.PUT, "/q/b", b"2"),
        (EventType.PUT, "/q/a", b"3"),
        (EventType.DELETE, "/q/b", b""),
    ]


async def test_watch_from_a_revision_delivers_a_long_backlog_in_order(
        store: KeyValueStore) -> None:
    """More matching changes than one read of the log takes, all already written."""
    start = (await store.range("/long/")).revision + 1
    for first in range(0, 2500, 100):
        await store.txn([TxnOp(f"/long/{i:05d}", b"v") for i in range(first, first + 100)])
        await store.put("/elsewhere", b"x")
    events = await asyncio.wait_for(_collect(store, "/long/", start, 2500), 20)
    assert [e.key for e in events] == [f"/long/{i:05d}" for i in range(2500)]
    # (etcd gives every op of one txn the txn's revision; sqlite one each)
    assert all(a.revision <= b.revision for a, b in itertools.pairwise(events))


async def test_watch_resumes_from_a_revision(store: KeyValueStore) -> None:
    first = await store.put("/w/r", b"1")
    await store.put("/w/r", b"2")
    await store.put("/w/s", b"3")
    events = await _collect(store, "/w/", first + 1, 2)
    assert [(e.key, e.value) for e in events] == [("/w/r", b"2"), ("/w/s", b"3")]


async def test_watch_from_compacted_revision_is_refused(store: KeyValueStore) -> None:
    for i in range(5):
        last = await store.put("/w/c", str(i).encode())
    await store.compact(last)
    with pytest.raises(Compacted):
        await _collect(store, "/w/", 1, 1)


async def test_lease_expiry_deletes_keys_and_emits_delete(store: KeyValueStore) -> None:
    lease = await store.grant(1)
    start = await store.put("/l/k", b"v", lease=lease)
    kv = await store.get("/l/k")
    assert kv is not None and kv.lease == lease
    events = await _collect(store, "/l/", start + 1, 1)
    assert events[0].type is EventType.DELETE and events[0].key == "/l/k"
    assert await store.get("/l/k") is None


async def test_lease_keepalive_extends_and_revoke_deletes(store: KeyValueStore) -> None:
    lease = await store.grant(1)
    await store.put("/l/kept", b"v", lease=lease)
    for _ in range(4):
        await asyncio.sleep(0.5)
        await store.keepalive(lease)
    assert await store.get("/l/kept") is not None
    await store.revoke(lease)
    assert await store.get("/l/kept") is None


async def test_a_dead_lease_is_refused_and_revoking_it_again_is_fine(
        store: KeyValueStore) -> None:
    lease = await store.grant(5)
    await store.revoke(lease)
    await store.revoke(lease)  # revoking a lease that is already gone is fine
    for expect in (None, 0):  # a plain put and a compare-and-swap alike
        with pytest.raises(NotFound, match=f"lease {lease} "):
            await store.put("/l/x", b"v", expect=expect, lease=lease)
    assert await store.get("/l/x") is None
    with pytest.raises(NotFound, match=f"lease {lease} "):
        await store.keepalive(lease)


async def test_status_reports_revision_and_keys(store: KeyValueStore) -> None:
    await store.put("/s/a", b"1")
    rev = await store.put("/s/b", b"2")
    await store.put("/s/a", b"3")
    status = await store.status()
    assert status.backend == store.backend
    assert status.revision >= rev + 1
    assert status.keys == 2  # each test's store is new (etcd: a namespace of its own)


async def test_range_reads_a_large_prefix_whole_at_one_revision(store: KeyValueStore) -> None:
    """More keys than one read returns (etcd pages them), read while another task writes more:
    the result is the prefix exactly as it stood at the revision it reports."""
    count = 2500
    for first in range(0, count, 100):
        await store.txn([TxnOp(f"/many/{i:05d}", b"v") for i in range(first, first + 100)])
    await store.put("/many-not", b"beside the prefix")
    written: list[tuple[str, int]] = []
    stop = asyncio.Event()

    async def write_more() -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            key = f"/many/{count + i:05d}"
            written.append((key, await store.put(key, b"w")))
            await asyncio.sleep(0)  # (a memory store's put never yields by itself)

    writer = asyncio.create_task(write_more())
    await asyncio.sleep(0.01)
    result = await store.range("/many/")
    stop.set()
    await writer
    expected = [f"/many/{i:05d}" for i in range(count)]
    expected += [key for key, rev in written if rev <= result.revision]
    assert [kv.key for kv in result.items] == expected
    assert all(kv.mod_revision <= result.revision for kv in result.items)


async def test_close_ends_open_watches(store: KeyValueStore) -> None:
    await store.put("/w/a", b"1")
    events: list[WatchEvent] = []

    async def follow() -> None:
        async for event in store.watch("/w/"):
            events.append(event)

    watcher = asyncio.create_task(follow())
    await asyncio.sleep(0.2)  # the watch is open and waiting
    await store.close()
    await store.close()  # closing twice is fine
    async with asyncio.timeout(3):
        await watcher  # ends cleanly: the iteration stops, it does not raise
    assert events == []


# -- txn: several writes, all or none --------------------------------------------------------


async def test_txn_applies_puts_and_deletes_together(store: KeyValueStore) -> None:
    rev = await store.put("/t/token", b"secret")
    await store.put("/t/other", b"keep")
    revisions = await store.txn([
        TxnOp("/t/token", None, expect=rev),
        TxnOp("/t/node", b"booted", expect=0),
        TxnOp("/t/event", b"e", expect=0),
        TxnOp("/t/outbox", b"o"),
        TxnOp("/t/absent", None),  # delete of an absent key without expect: a no-op
    ])
    assert len(revisions) == 5 and min(revisions) > rev
    assert await store.get("/t/token") is None
    node = await store.get("/t/node")
    assert node is not None and node.value == b"booted" and node.mod_revision == revisions[1]
    outbox = await store.get("/t/outbox")
    assert outbox is not None and outbox.mod_revision == revisions[3]
    assert [kv.key for kv in (await store.range("/t/")).items] == [
        "/t/event", "/t/node", "/t/other", "/t/outbox"]


async def test_txn_with_one_failed_expectation_writes_nothing(store: KeyValueStore) -> None:
    rev = await store.put("/t/node", b"1")
    await store.put("/t/node", b"2")  # rev is now stale
    before = await store.put("/t/token", b"t")
    with pytest.raises(TxnConflict) as caught:
        await store.txn([TxnOp("/t/token", None, expect=before),
                         TxnOp("/t/node", b"3", expect=rev),
                         TxnOp("/t/new", b"n", expect=0)])
    assert caught.value.keys == ("/t/node",) and isinstance(caught.value, Conflict)
    node, token = await store.get("/t/node"), await store.get("/t/token")
    assert node is not None and node.value == b"2"
    assert token is not None and await store.get("/t/new") is None
    with pytest.raises(TxnConflict) as caught:
        await store.txn([TxnOp("/t/node", b"4", expect=rev), TxnOp("/t/token", b"x", expect=0)])
    assert caught.value.keys == ("/t/node", "/t/token") and caught.value.key == "/t/node"


async def test_concurrent_txns_deleting_one_key_exactly_one_wins(store: KeyValueStore) -> None:
    """Single-use tokens: two callbacks redeem one token in a txn each; one succeeds."""
    rev = await store.put("/t/token", b"t")
    results = await asyncio.gather(
        *(store.txn([TxnOp("/t/token", None, expect=rev), TxnOp(f"/t/used/{i}", b"1")])
          for i in range(4)), return_exceptions=True)
    assert sum(isinstance(r, list) for r in results) == 1, results
    assert sum(isinstance(r, TxnConflict) for r in results) == 3, results
    assert len((await store.range("/t/used/")).items) == 1


async def test_txn_changes_are_watched(store: KeyValueStore) -> None:
    start = await store.put("/w/a", b"0") + 1
    await store.txn([TxnOp("/w/a", None), TxnOp("/w/b", b"1"), TxnOp("/x/c", b"2")])
    seen: list[tuple[EventType, str]] = []
    async with asyncio.timeout(5):
        async for event in store.watch("/w/", start):
            seen.append((event.type, event.key))
            if len(seen) == 2:
                break
    assert sorted(seen) == [(EventType.DELETE, "/w/a"), (EventType.PUT, "/w/b")]


async def test_txn_refuses_repeated_keys_and_empty(store: KeyValueStore) -> None:
    with pytest.raises(ValidationError):
        await store.txn([TxnOp("/t/a", b"1"), TxnOp("/t/a", None)])
    with pytest.raises(ValidationError):
        await store.txn([])
