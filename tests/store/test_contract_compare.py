"""The store contract's compare-only txn op (the fencing token of ha/election.py), on every
backend: memory, sqlite and a real etcd server (see conftest.py)."""

from __future__ import annotations

import pytest

from provisioner.errors import ValidationError
from provisioner.store.base import KeyValueStore, TxnConflict, TxnOp


async def test_a_compare_that_holds_lets_the_writes_through(store: KeyValueStore) -> None:
    fence = await store.put("/t/fence", b"holder")
    revisions = await store.txn([TxnOp("/t/fence", None, expect=fence, compare_only=True),
                                 TxnOp("/t/effect", b"done", expect=0)])
    kv, held = await store.get("/t/effect"), await store.get("/t/fence")
    assert kv is not None and kv.value == b"done"
    assert held is not None and (held.mod_revision, held.value) == (fence, b"holder")
    assert revisions[0] == revisions[1] == kv.mod_revision


async def test_a_compare_that_fails_writes_nothing(store: KeyValueStore) -> None:
    fence = await store.put("/t/fence", b"old holder")
    await store.put("/t/fence", b"new holder")
    with pytest.raises(TxnConflict) as refused:
        await store.txn([TxnOp("/t/fence", None, expect=fence, compare_only=True),
                         TxnOp("/t/effect", b"done")])
    assert refused.value.keys == ("/t/fence",)
    assert await store.get("/t/effect") is None


async def test_a_compare_of_a_deleted_key_fails(store: KeyValueStore) -> None:
    fence = await store.put("/t/fence", b"holder")
    await store.delete("/t/fence")
    with pytest.raises(TxnConflict):
        await store.txn([TxnOp("/t/fence", None, expect=fence, compare_only=True),
                         TxnOp("/t/effect", None)])


async def test_a_compare_needs_an_expect_and_no_value(store: KeyValueStore) -> None:
    with pytest.raises(ValidationError):
        await store.txn([TxnOp("/t/fence", None, compare_only=True)])
    with pytest.raises(ValidationError):
        await store.txn([TxnOp("/t/fence", b"x", expect=0, compare_only=True)])
