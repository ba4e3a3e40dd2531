"""A real 3-member etcd cluster (tests/support/etcd_cluster.py) loses one member while a head
leads and works: the member the head's store talks to is SIGKILLed in the middle of a run of
fenced writes (what a boot makes: events, the callback's txn). Nothing visible happens: the
head keeps its lead (one term, its work started once), every write lands exactly once (a write
refused with StoreUnavailable is made again, as the node's iPXE and init retry), and the
cluster answers on with two members."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.errors import StoreUnavailable
from provisioner.ha.election import Election
from provisioner.ha.singletons import Singletons
from provisioner.runtime.supervisor import Supervisor
from provisioner.store.base import TxnOp
from provisioner.store.etcd import EtcdStore
from tests.support.etcd_cluster import EtcdCluster

pytestmark = pytest.mark.etcd

TTL = 5.0  # seconds: the lead's lease, more than the store's timeout (2 s) plus a fail-over
WRITES = 60  # fenced writes in the run; the kill comes after a third of them
BOUND = 60.0  # seconds for the whole run: generous, the machine is shared


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path / "etcd")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def fenced_write(store: EtcdStore, election: Election, key: str) -> int:
    """One create-only write with the leader's fence; made again while the store is away.
    Returns how many tries it took."""
    for attempt in range(1, 100):
        try:
            await store.txn([election.fence(), TxnOp(key, b"once", expect=0)])
            return attempt
        except StoreUnavailable:
            await asyncio.sleep(0.05)
    raise AssertionError(f"{key}: never written")


async def test_losing_one_member_of_three_changes_nothing_visible(cluster: EtcdCluster) -> None:
    store = EtcdStore(cluster.endpoints, namespace="/ha")
    election = Election(store, "singletons", "head1", ttl=TTL)
    starts: list[float] = []

    async def work() -> None:
        starts.append(time.monotonic())
        await asyncio.Event().wait()

    singletons = Singletons(election, Supervisor())
    singletons.add("sweep", work)
    leading = asyncio.create_task(singletons.run())
    try:
        async with asyncio.timeout(BOUND):
            while not starts:
                await asyncio.sleep(0.02)
            began, tries = time.monotonic(), 0
            for index in range(WRITES):
                if index == WRITES // 3:  # the member this head's store uses now
                    cluster.kill(cluster.endpoints.index(store.endpoint))
                tries += await fenced_write(store, election, f"/t/boot/{index:03}")
            took = time.monotonic() - began
        written = await store.range("/t/boot/")
        assert len(written.items) == WRITES and {kv.value for kv in written.items} == {b"once"}
        assert len(singletons.terms) == 1 and len(starts) == 1 and singletons.leading
        assert await election.leader() == "head1"
        print(f"\n{WRITES} fenced writes across the loss of one etcd member of three: "
              f"{took:.2f} s, {tries - WRITES} retried")
    finally:
        leading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leading
        await singletons.supervisor.close()
        await store.close()
