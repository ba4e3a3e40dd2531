"""The contract's `page` on every backend (the `store` fixture of tests/conftest.py)."""

from __future__ import annotations

import pytest

from provisioner.errors import ValidationError
from provisioner.store.base import KeyValueStore, TxnOp


async def _fill(store: KeyValueStore, count: int) -> list[str]:
    keys = [f"/p/k{i:03d}" for i in range(count)]
    for at in range(0, count, 50):
        await store.txn([TxnOp(k, k.encode()) for k in keys[at:at + 50]])
    await store.put("/p", b"outside")  # the prefix itself without its "/" is not under it
    await store.put("/q/k000", b"neighbour")
    return keys


async def _walk(store: KeyValueStore, limit: int, reverse: bool) -> list[list[str]]:
    pages: list[list[str]] = []
    after = ""
    while True:
        page = await store.page("/p/", after=after, limit=limit, reverse=reverse)
        keys = [kv.key for kv in page.items]
        pages.append(keys)
        if len(keys) < limit:
            return pages
        after = keys[-1]


async def test_pages_walk_every_key_once_in_order(store: KeyValueStore) -> None:
    keys = await _fill(store, 125)
    pages = await _walk(store, 50, reverse=False)
    assert [len(p) for p in pages] == [50, 50, 25]
    assert [k for p in pages for k in p] == keys


async def test_reversed_pages_walk_newest_first(store: KeyValueStore) -> None:
    keys = await _fill(store, 120)
    pages = await _walk(store, 40, reverse=True)
    assert [len(p) for p in pages] == [40, 40, 40, 0]
    assert [k for p in pages for k in p] == keys[::-1]


async def test_a_page_carries_values_and_the_store_revision(store: KeyValueStore) -> None:
    await _fill(store, 3)
    page = await store.page("/p/", limit=2)
    assert [(kv.key, kv.value) for kv in page.items] == [("/p/k000", b"/p/k000"),
                                                         ("/p/k001", b"/p/k001")]
    assert page.revision >= max(kv.mod_revision for kv in page.items)


async def test_a_cursor_outside_the_prefix_or_a_bad_limit_is_refused(
        store: KeyValueStore) -> None:
    with pytest.raises(ValidationError, match="cursor"):
        await store.page("/p/", after="/q/k000", limit=10)
    with pytest.raises(ValidationError, match="limit"):
        await store.page("/p/", limit=0)


async def test_deleted_keys_leave_the_pages(store: KeyValueStore) -> None:
    keys = await _fill(store, 10)
    await store.txn([TxnOp(k, None) for k in keys[:7]])
    page = await store.page("/p/", limit=5)
    assert [kv.key for kv in page.items] == keys[7:]
