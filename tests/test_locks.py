"""The store lock: one holder at a time across clients of one store, renewed while held, free
again once its holder stops renewing past the expiry."""

from __future__ import annotations

import asyncio

import pytest

from provisioner.inventory.locks import LockHeld, LockLost, StoreLock
from provisioner.store.base import KeyValueStore, TxnConflict, TxnOp


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def test_one_holder_at_a_time_and_a_dead_holder_is_taken_over(
        store: KeyValueStore) -> None:
    clock = Clock()
    first = StoreLock(store, "reimage", "head1", ttl=30, clock=clock)
    second = StoreLock(store, "reimage", "head2", ttl=30, clock=clock)
    results = await asyncio.gather(first.acquire(), second.acquire(), return_exceptions=True)
    assert sum(isinstance(r, LockHeld) for r in results) == 1  # one race winner
    winner, loser = (first, second) if first.held else (second, first)
    with pytest.raises(LockHeld, match="held by head"):
        await loser.acquire()
    clock.now += 20
    await winner.renew()  # renewed: still held 20 s later
    clock.now += 20
    with pytest.raises(LockHeld):
        await loser.acquire()
    clock.now += 31  # the winner stopped renewing (it died): the lock is free
    assert await loser.holder() is None
    await loser.acquire()
    with pytest.raises(LockLost):
        await winner.renew()
    await winner.release()  # not ours any more: left alone
    assert (held := await loser.holder()) is not None and held.owner == loser.owner
    await loser.release()
    assert await winner.holder() is None
    await winner.acquire()


async def test_an_effect_fenced_by_the_lock_is_refused_once_it_was_taken_over(
        store: KeyValueStore) -> None:
    clock = Clock()
    first = StoreLock(store, "reimage", "head1", ttl=30, clock=clock)
    second = StoreLock(store, "reimage", "head2", ttl=30, clock=clock)
    await first.acquire()
    await store.txn([await first.fence(), TxnOp("/t/cycle/1", b"head1")])
    await first.renew()  # our own renewal: a fresh fence still holds
    fence = await first.fence()
    await store.txn([fence, TxnOp("/t/cycle/2", b"head1")])
    clock.now += 31  # head1 paused past its expiry; head2 took the lock over
    await second.acquire()
    with pytest.raises(TxnConflict):  # a fence taken before the takeover
        await store.txn([fence, TxnOp("/t/cycle/3", b"head1")])
    with pytest.raises(LockLost):  # and one asked for after it
        await first.fence()
    assert await store.get("/t/cycle/3") is None
