"""The audit log: append-only entries in time order, never overwritten, paged newest first."""

from __future__ import annotations

import json

from provisioner.inventory import keys
from provisioner.security.audit import AuditLog
from provisioner.store.base import KeyValueStore


async def test_entries_are_appended_and_listed_newest_first(store: KeyValueStore) -> None:
    log = AuditLog(store)
    for i in range(5):
        await log.record("token:ci(abc)", "node.create", f"node{i}", "ok", 100.0 + i,
                         detail={"i": i})
    entries, cursor = await log.page(limit=3)
    assert [e.target for e in entries] == ["node4", "node3", "node2"]
    older, end = await log.page(limit=3, after=cursor)
    assert [e.target for e in older] == ["node1", "node0"] and end == ""
    assert older[0].detail == {"i": 1} and older[0].who == "token:ci(abc)"


async def test_entries_at_the_same_instant_never_overwrite_each_other(
        store: KeyValueStore) -> None:
    log = AuditLog(store)
    for outcome in ("ok", "denied", "failed"):
        await log.record("local:root", "auth", "GET /api/v1/nodes", outcome, 42.0)
    stored = (await store.range(keys.AUDIT)).items
    assert sorted(json.loads(kv.value)["outcome"] for kv in stored) == ["denied", "failed", "ok"]
    assert len({kv.key for kv in stored}) == 3


async def test_entries_filter_by_action(store: KeyValueStore) -> None:
    log = AuditLog(store)
    await log.record("a", "auth", "x", "denied", 1.0)
    await log.record("b", "node.delete", "y", "ok", 2.0)
    found, _ = await log.page(action="auth")
    assert [e.who for e in found] == ["a"]


async def test_a_page_that_reaches_the_end_has_no_cursor(store: KeyValueStore) -> None:
    log = AuditLog(store)
    for i in range(6):
        await log.record("local:root", "node.update", f"n{i}", "ok", 10.0 + i)
    first, cursor = await log.page(limit=3)
    second, end = await log.page(limit=3, after=cursor)
    assert [e.target for e in first + second] == [f"n{i}" for i in range(5, -1, -1)]
    assert cursor and end == ""
