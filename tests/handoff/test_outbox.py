"""The handoff outbox against a real scheduler on loopback and real stores."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from provisioner.handoff.base import HandoffNode
from provisioner.handoff.builtin import BuiltinHandoff
from provisioner.handoff.outbox import HandoffQueue
from provisioner.inventory import keys
from provisioner.nodes.model import MacAddress
from provisioner.scheduler.service import SchedulerServer
from provisioner.store.base import KeyValueStore
from provisioner.store.sqlite import SqliteStore
from tests.handoff.conftest import Confirmations
from tests.support.etcd_server import free_port
from tests.support.waiting import eventually

MAC = MacAddress("52:54:00:12:34:56")
NODE = HandoffNode("node007", MAC, cpus=2, memory_mib=1024, features=("ib",), partition="batch")


async def test_handoff_waits_out_a_stopped_scheduler_and_an_appliance_restart(
        tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    store = SqliteStore(tmp_path / "store.db")
    handoff, confirmed = BuiltinHandoff(url, timeout=1.0), Confirmations()
    queue = HandoffQueue(store, handoff, confirmed)
    await queue.start()
    await queue.submit(NODE)
    await asyncio.sleep(0.8)  # the scheduler is down: several attempts, all refused
    assert queue.deliveries[str(MAC)].attempts >= 2
    assert "not answering" in queue.deliveries[str(MAC)].last_error
    assert [n.name for n in await queue.queued()] == ["node007"]
    assert confirmed.macs == []
    await queue.stop()  # the appliance goes away with the entry still queued
    await handoff.close()
    await store.close()

    store = SqliteStore(tmp_path / "store.db")
    handoff, confirmed = BuiltinHandoff(url, timeout=1.0), Confirmations()
    queue = HandoffQueue(store, handoff, confirmed)
    await queue.start()
    scheduler = SchedulerServer(store, "127.0.0.1", port)
    await scheduler.start()
    try:
        await eventually(lambda: _true(confirmed.macs == [MAC]))
        node = scheduler.state.node("node007")
        assert (node.cpus, node.features, node.partition, node.mac) == (
            2, ("ib",), "batch", str(MAC))
        await eventually(lambda: _empty(store))
    finally:
        await queue.stop()
        await handoff.close()
        await scheduler.stop()
        await store.close()


@contextlib.asynccontextmanager
async def _delivering(
        store: KeyValueStore) -> AsyncIterator[tuple[SchedulerServer, HandoffQueue, Confirmations]]:
    """A live scheduler on loopback and a started outbox on `store` delivering to it."""
    scheduler = SchedulerServer(store, "127.0.0.1", 0)
    await scheduler.start()
    handoff, confirmed = BuiltinHandoff(scheduler.url), Confirmations()
    queue = HandoffQueue(store, handoff, confirmed)
    try:
        await queue.start()
        yield scheduler, queue, confirmed
    finally:
        await queue.stop()
        await handoff.close()
        await scheduler.stop()


async def test_delivery_on_every_store_backend(store: KeyValueStore) -> None:
    async with _delivering(store) as (scheduler, queue, confirmed):
        await queue.submit(NODE)
        await queue.submit(NODE)  # a duplicate submit is harmless
        await eventually(lambda: _empty(store))
        assert set(confirmed.macs) == {MAC}
        assert scheduler.state.node("node007").memory_mib == 1024


async def test_an_entry_submitted_before_delivery_starts_is_delivered_once_it_does(
        tmp_path: Path) -> None:
    """A head that does not lead takes a callback (its outbox is not delivering), then takes
    the lead: the entry it wrote itself must be delivered, not taken for one already handed to
    a worker."""
    store = SqliteStore(tmp_path / "store.db")
    scheduler = SchedulerServer(store, "127.0.0.1", 0)
    await scheduler.start()
    handoff, confirmed = BuiltinHandoff(scheduler.url), Confirmations()
    queue = HandoffQueue(store, handoff, confirmed)
    try:
        await queue.submit(NODE)  # delivery is off: the entry only goes to the store
        assert [n.name for n in await queue.queued()] == ["node007"]
        assert confirmed.macs == []
        await queue.start()  # this head now leads
        await eventually(lambda: _empty(store))
        assert confirmed.macs == [MAC]
    finally:
        await queue.stop()
        await handoff.close()
        await scheduler.stop()
        await store.close()


async def test_retries_back_off(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    handoff = BuiltinHandoff(f"http://127.0.0.1:{free_port()}", timeout=0.5)
    queue = HandoffQueue(store, handoff, Confirmations(), first_delay=0.1, max_delay=0.4)
    try:
        await queue.start()
        started = time.monotonic()
        await queue.submit(NODE)
        await asyncio.sleep(1.5)
        attempts = queue.deliveries[str(MAC)].attempts
        # Waits of 0.05-0.1, 0.1-0.2, then 0.2-0.4 each: 5 to 10 attempts in 1.5 s; without
        # backoff a refused connection would be retried hundreds of times.
        assert 4 <= attempts <= 11, attempts
        assert time.monotonic() - started < 3
    finally:
        await queue.stop()
        await handoff.close()
        await store.close()


async def test_a_rejected_registration_stays_queued_with_the_reason(
        store: KeyValueStore) -> None:
    scheduler = SchedulerServer(store, "127.0.0.1", 0)
    await scheduler.start()
    handoff = BuiltinHandoff(scheduler.url)
    queue = HandoffQueue(store, handoff, Confirmations())
    bad = HandoffNode("Not A Hostname", MAC, cpus=1, memory_mib=1)
    try:
        await queue.start()
        await queue.submit(bad)
        await eventually(lambda: _true(bool(queue.deliveries.get(str(MAC)))
                                       and bool(queue.deliveries[str(MAC)].last_error)))
        assert "refused" in queue.deliveries[str(MAC)].last_error
        assert [n.name for n in await queue.queued()] == ["Not A Hostname"]
    finally:
        await queue.stop()
        await handoff.close()
        await scheduler.stop()


async def _true(value: bool) -> bool:
    return value


async def _empty(store: KeyValueStore) -> bool:
    return not (await store.range(keys.OUTBOX)).items


async def test_a_submit_racing_the_end_of_a_delivery_is_not_lost() -> None:
    """A newer submit landing during a delivery (before or after its delete) is delivered too."""
    from provisioner.store.memory import MemoryStore

    newer = HandoffNode("node007", MAC, cpus=8, memory_mib=1024)

    class ResubmitOnDelete(MemoryStore):
        resubmit = True

        async def delete(self, key: str, *, expect: int | None = None) -> int:
            revision = await super().delete(key, expect=expect)
            if self.resubmit:  # the node rebooted just as its first handoff ended
                self.resubmit = False
                await queue.submit(newer)
            return revision

    store = ResubmitOnDelete()
    async with _delivering(store) as (scheduler, queue, confirmed):
        await queue.submit(NODE)
        await eventually(lambda: _true(len(confirmed.macs) == 2))
        await eventually(lambda: _empty(store))
        assert scheduler.state.node("node007").cpus == 8
