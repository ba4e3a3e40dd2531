"""The election on every store backend (memory, sqlite, a real etcd; tests/conftest.py): one
leader at a time, the next one once it goes, and a deposed leader's fenced write refused."""

from __future__ import annotations

import asyncio

import pytest

from provisioner.ha.election import Election, NotLeader
from provisioner.store.base import KeyValueStore, TxnConflict, TxnOp

TTL = 1.0  # seconds: etcd's minimum lease with the test server's raft timings
BOUND = 30.0  # a generous bound on every wait: the machine is shared


async def test_one_leader_and_the_next_once_it_resigns(store: KeyValueStore) -> None:
    first, second = (Election(store, "work", name, ttl=TTL) for name in ("head1", "head2"))
    term = await asyncio.wait_for(first.campaign(), BOUND)
    waiting = asyncio.create_task(second.campaign())
    await asyncio.sleep(0.2)
    assert not waiting.done() and await second.leader() == "head1"
    await first.resign(term)
    won = await asyncio.wait_for(waiting, BOUND)
    assert (won.leader, await first.leader()) == ("head2", "head2")
    assert won.revision > term.revision
    await second.resign(won)
    assert await first.leader() is None


async def test_racing_candidates_elect_exactly_one(store: KeyValueStore) -> None:
    elections = [Election(store, "race", f"head{i}", ttl=TTL) for i in range(3)]
    tasks = [asyncio.create_task(e.campaign()) for e in elections]
    done, pending = await asyncio.wait(tasks, timeout=BOUND, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.sleep(0.2)  # a second winner would have come through by now
    done = {t for t in tasks if t.done()}
    assert len(done) == 1
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    leader = done.pop().result()
    assert await elections[0].leader() == leader.leader


async def test_a_deposed_leader_cannot_write(store: KeyValueStore) -> None:
    old, new = Election(store, "work", "old", ttl=TTL), Election(store, "work", "new", ttl=TTL)
    old_term = await old.campaign()
    stale_fence = old.fence()
    fenced = [stale_fence, TxnOp("/t/effect", b"once", expect=0)]
    await store.revoke(old_term.lease)  # as if it had paused past its lease
    await asyncio.wait_for(new.campaign(), BOUND)
    with pytest.raises(TxnConflict):
        await store.txn(fenced)
    assert await store.get("/t/effect") is None
    await store.txn([new.fence(), TxnOp("/t/effect", b"once", expect=0)])
    await asyncio.wait_for(old.hold(), BOUND)  # it notices, and stops leading
    with pytest.raises(NotLeader):
        old.fence()


async def test_the_leader_holds_while_it_renews_and_steps_down_when_its_lease_goes(
        store: KeyValueStore) -> None:
    election = Election(store, "work", "head1", ttl=TTL)
    term = await election.campaign()
    holding = asyncio.create_task(election.hold())
    await asyncio.sleep(1.5 * TTL)  # past the lease: only the keepalives keep it
    assert not holding.done() and await election.leader() == "head1"
    await store.revoke(term.lease)
    await asyncio.wait_for(holding, BOUND)
    assert election.term is None and await election.leader() is None
