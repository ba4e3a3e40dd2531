"""Membership of the live set (ha/membership.py) on a real etcd: heads see each other, share
the 256 buckets, a head that dies (no revoke, its renewals stop) leaves the set within its ttl
and its buckets go to the others; a head cut from the store fences itself within its ttl and
joins again when the store is back. And on the memory store, one head owns every bucket."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from provisioner.ha.buckets import BUCKETS, assign
from provisioner.ha.membership import Membership
from provisioner.ha.records import HeadRecord
from provisioner.inventory import keys
from provisioner.store.base import KeyValueStore
from provisioner.store.etcd import EtcdStore
from provisioner.store.memory import MemoryStore
from provisioner.store.sqlite import SqliteStore
from tests.support.etcd_server import EtcdServer

TTL = 3.0
BOUND = 15.0  # s: a generous bound on what should take TTL plus a watch delay


async def until(check: Callable[[], bool], what: str, limit: float = BOUND) -> float:
    """Wait for `check` (at most `limit` s); the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > limit:
            pytest.fail(f"not within {limit:g} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def head(store: KeyValueStore, name: str) -> Membership:
    return Membership(store, HeadRecord(name, f"10.0.0.{len(name)}", "http://b", "http://a",
                                        time.time()), TTL)


@pytest.fixture
async def stores(etcd_server: EtcdServer) -> AsyncIterator[Callable[[], EtcdStore]]:
    namespace = f"/ha-{uuid.uuid4().hex[:8]}"
    opened: list[EtcdStore] = []

    def open_one() -> EtcdStore:
        opened.append(EtcdStore([etcd_server.endpoint], namespace=namespace))
        return opened[-1]

    yield open_one
    for store in opened:
        await store.close()


async def test_one_head_on_the_memory_store_owns_every_bucket() -> None:
    store = MemoryStore()
    solo = head(store, "solo")
    await solo.start()
    try:
        assert solo.fenced is None and solo.share() == BUCKETS
        assert set(solo.live) == {"solo"} and solo.live["solo"].server_id == "10.0.0.4"
    finally:
        await solo.stop()
        await store.close()


@pytest.mark.etcd
async def test_two_heads_split_the_buckets_and_a_dead_one_hands_its_share_over(
        stores: Callable[[], EtcdStore]) -> None:
    one, two = head(stores(), "head-one"), head(stores(), "head-two")
    await one.start()
    await two.start()
    try:
        await until(lambda: len(one.live) == 2 and len(two.live) == 2, "both heads live")
        assert one.table == two.table == assign(["head-one", "head-two"])
        assert one.share() + two.share() == BUCKETS and min(one.share(), two.share()) > 0
        # head-two dies: its renewals stop and it revokes nothing (as a SIGKILL leaves it)
        assert two._keeper is not None
        await two._keeper.stop()
        await two.store.close()
        gap = await until(lambda: one.share() == BUCKETS, "head-one takes every bucket")
        print(f"head-one owned every bucket {gap:.2f} s after head-two stopped renewing "
              f"(ttl {TTL:g} s)")
        assert one.fenced is None
    finally:
        await one.stop()


@pytest.mark.etcd
async def test_a_stopped_head_leaves_at_once(stores: Callable[[], EtcdStore]) -> None:
    one, two = head(stores(), "head-one"), head(stores(), "head-two")
    await one.start()
    await two.start()
    try:
        await until(lambda: len(one.live) == 2, "both heads live")
        await two.stop()  # revokes its lease: its entry is gone now, not after the ttl
        assert await one.store.get(keys.head("head-two")) is None
        await until(lambda: one.share() == BUCKETS, "head-one takes every bucket")
    finally:
        await one.stop()


@pytest.mark.etcd
async def test_a_head_cut_from_the_store_fences_itself_and_joins_again(
        tmp_path: Path) -> None:
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    store = EtcdStore([server.endpoint], timeout=1.0)
    member = head(store, "head-one")
    try:
        await member.start()
        assert member.fenced is None
        server.kill()
        took = await until(lambda: member.fenced is not None, "fenced", limit=TTL + 2)
        print(f"fenced {took:.2f} s after the store went away: {member.fenced}")
        server.restart()
        back = await until(lambda: member.fenced is None, "a member again")
        print(f"a member again {back:.2f} s after the store came back")
        await until(lambda: "head-one" in member.live, "its entry back in the live set")
    finally:
        await member.stop()
        await store.close()
        server.stop()


async def test_a_second_head_with_the_same_name_stays_out_until_the_name_is_free() -> None:
    store = MemoryStore()
    first = head(store, "twin")
    second = Membership(store, HeadRecord("twin", "10.0.0.99"), TTL)  # another machine
    await first.start()
    await second.start()
    try:
        assert first.fenced is None
        assert second.fenced is not None and "another live head is named 'twin'" in second.fenced
        assert (await store.get(keys.head("twin"))) is not None
        await first.stop()  # its lease revoked: the name is free
        await until(lambda: second.fenced is None, "the second head joins")
    finally:
        await second.stop()
        await first.stop()
        await store.close()


async def test_a_head_restarted_after_a_crash_takes_its_old_entry_over_at_once(
        tmp_path: Path) -> None:
    """sqlite, no revoke: the entry of the crashed run (same name, same addresses) is taken
    over by the next run, under its own lease, which the old lease's expiry leaves alone."""
    crashed_store = SqliteStore(tmp_path / "store.db")
    crashed = head(crashed_store, "head-one")
    await crashed.start()
    assert crashed._keeper is not None
    await crashed._keeper.stop()  # as a crash: no revoke
    await crashed._follower.stop()
    await crashed_store.close()
    store = SqliteStore(tmp_path / "store.db")
    restarted = head(store, "head-one")
    try:
        await restarted.start()
        assert restarted.fenced is None and restarted.share() == BUCKETS
        await asyncio.sleep(TTL + 1)  # the crashed run's lease has expired by now
        assert restarted.fenced is None and "head-one" in restarted.live
        assert await store.get(keys.head("head-one")) is not None
    finally:
        await restarted.stop()
        await store.close()
